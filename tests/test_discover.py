"""zmlx.discover: static rules, knobs and overrides, PUCT, the worker, proposers, export.

On the CPU the candidates' kernels run on the SIMT emulator (correctness), timing is skipped
and recorded as such; the timing record itself is checked with the CPU's reference paths.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import mlx.core as mx
import numpy as np
import pytest

from zmlx.bench import capsule
from zmlx.core import emulate, overrides
from zmlx.core.backend import gpu_backend
from zmlx.core.kernel import Kernel, Launch, capture
from zmlx.discover import safety, search
from zmlx.discover.__main__ import main
from zmlx.discover.evaluator import Evaluator
from zmlx.discover.proposers import LLMProposer, MutationProposer, chat_url, parse_reply
from zmlx.discover.report import export, table
from zmlx.discover.session import Node, Session
from zmlx.discover.target import Target
from zmlx.discover.worker import TIMING_SKIPPED, _timing
from zmlx.kernels import catalog

needs_emulator = pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
pytestmark = pytest.mark.no_emulate  # the worker runs kernels on the emulator itself

SAFE = """  const uint i = tid;
  if (i < zx_n[0]) { out_0[i] = static_cast<O>(static_cast<float>(in_0[i]) * 2.0f); }
"""


@pytest.fixture(scope="module")
def relu():
    return Target("relu", None, "float32")


@pytest.fixture(scope="module")
def evaluator():
    with Evaluator(compile_timeout=60, run_timeout=120) as ev:
        yield ev


def _check(body: str) -> list[str]:
    return safety.check_source(body, inputs=("in_0", "zx_n"), outputs=("out_0",))


@pytest.mark.parametrize(
    "edit,reason",
    [
        (lambda b: "  while (true) { }\n" + b, "unbounded loop: while (true)"),
        (lambda b: "  while(1){}\n" + b, "unbounded loop: while (true)"),
        (lambda b: "  for (;;) { break; }\n" + b, "unbounded loop: for without a condition"),
        (lambda b: "  for (int k = 0; ; ++k) { }\n" + b, "unbounded loop: for without a condition"),
        (lambda b: "  ZX_SHARED float big[16384];\n" + b, None),  # rejected by check_launch
        (lambda b: '  asm("trap;");\n' + b, "banned token 'asm'"),
        (lambda b: '  printf("%d", 1);\n' + b, "banned token 'printf'"),
        (lambda b: "  __syncthreads();\n" + b, "banned token '__syncthreads'"),
        (lambda b: "  __shared__ float s[4];\n" + b, "banned token '__shared__'"),
        (lambda b: "#include <cstdio>\n" + b, "preprocessor directive #include"),
        (lambda b: "#define P 1\n" + b, "preprocessor directive #define"),
        (lambda b: "  ((float*)in_0)[0] = 1.0f;\n" + b, "cast of 'in_0' to a non-const pointer"),
        (lambda b: "  float* q = reinterpret_cast<float*>(in_0);\n" + b, "cast of 'in_0'"),
        (lambda b: "  in_0[0] = 0;\n" + b, "writes into input 'in_0'"),
        (lambda b: "  const_cast<float*>(in_0)[0] = 1;\n" + b, "banned token 'const_cast'"),
    ],
)
def test_source_rules_reject_unsafe_bodies(edit, reason):
    assert _check(SAFE) == []
    got = _check(edit(SAFE))
    if reason is None:
        assert got == []
    else:
        assert any(reason in r for r in got), got


def test_source_rules_allow_what_is_safe():
    ok = SAFE + (
        '  // while (true) in a comment, printf in "a string"\n'
        "  for (uint k = 0; k < 4u; ++k) { }\n  #pragma unroll\n"
        "  const float* p = (const float*)in_0;\n  float* o = (float*)out_0;\n"
        "  if (in_0[0] == 1 || in_0[1] <= 2) { }\n"
    )
    assert _check(ok) == []
    # A directive the op's own body already has is accepted; a new one is not.
    assert _check("#define K 4\n" + SAFE) != []
    assert safety.check_source("#define K 4\n" + SAFE, original="#define K 4\n") == []
    assert safety.check_source("extern int k;" + SAFE, original="extern int k;") == []


def _launch(body="", group=(256, 1, 1), template=(), shared=0) -> Launch:
    k = Kernel("t", ["in_0"], ["out_0"], body or SAFE, shared_memory=shared)
    return Launch(k, "cuda", [], [(1,)], [mx.float32], (group[0] * 4, 1, 1), group,
                  list(template))  # fmt: skip


def test_launch_rules():
    assert safety.check_launch(_launch()) == []
    assert "48 threads per group is not a multiple of 32" in safety.check_launch(
        _launch(group=(48, 1, 1))
    )
    assert "2048 threads per group (at most 1024)" in safety.check_launch(
        _launch(group=(2048, 1, 1))
    )
    assert safety.check_launch(_launch(group=(32, 2, 1))) == []  # 64 threads in 2-D
    big = "  ZX_SHARED float tile[VEC * 4096];\n" + SAFE
    assert safety.check_launch(_launch(big, template=[("VEC", 2)])) == []  # 32 KB
    assert any("65536 bytes" in r for r in safety.check_launch(_launch(big, template=[("VEC", 4)])))
    assert any("49200 bytes" in r for r in safety.check_launch(_launch(shared=49200)))
    typed = "  ZX_SHARED O buf[QSH ? C * 1024 : 1];\n" + SAFE
    t = [("O", mx.float16), ("C", 8), ("QSH", True)]
    assert safety.shared_bytes(typed, dict(t)) == (16384, [])
    assert "size is not a constant" in safety.shared_bytes("ZX_SHARED float a[n];", {})[1][0]


def test_every_catalog_kernel_passes_the_static_rules():
    rng = np.random.default_rng(0)
    bad, seen = [], set()
    for spec in catalog.specs():
        for case in spec.cases[:3]:
            with capture("cuda") as got, mx.stream(mx.cpu):
                spec.op(*spec.make_inputs(case, spec.dtypes[-1], rng))
            for lc in got:
                reasons = safety.check_launch(lc)
                if lc.kernel.body not in seen:
                    seen.add(lc.kernel.body)
                    k = lc.kernel
                    reasons += safety.check_source(
                        k.body, inputs=k.inputs, outputs=k.outputs, original=k.body
                    )
                bad += [f"{spec.name}/{case['id']}: {r}" for r in reasons]
    assert len(seen) > 50 and not bad, bad


def _geometry(op, args, knobs=None):
    with capture("cuda") as got, mx.stream(mx.cpu), overrides.forcing({op: knobs or {}}):
        catalog.get(op).op(*args)
    return got[0].threadgroup[0], dict(got[0].template)


def test_knobs_reach_the_launch_and_bad_ones_fall_back(relu):
    x = relu.args0
    assert _geometry("relu", x) == (256, {"O": mx.float32, "VEC": 4})  # defaults
    assert _geometry("relu", x, {"group": 64, "vec": 1}) == (64, {"O": mx.float32, "VEC": 1})
    assert _geometry("relu", x, {"group": 48})[0] == 256  # not in the space: defaults
    space = overrides.space_of("relu")
    assert "not one of" in space.invalid({"group": 48})
    assert "unknown knob" in space.invalid({"rows": 2})
    norm = Target("rms_norm", "decode-2048", "float32")
    args = norm.args0
    assert norm.defaults == {"warp": False, "group": 512}
    assert _geometry("rms_norm", args)[1]["C"] == 4
    assert _geometry("rms_norm", args, {"group": 128})[0:1] == (128,)
    assert _geometry("rms_norm", args, {"group": 128})[1]["C"] == 16
    # 2048 elements in one warp would be 64 per lane (more than the kernel keeps): defaults.
    assert norm.space.check(args, {"warp": True, "group": 256}) is not None
    assert _geometry("rms_norm", args, {"warp": True, "group": 256})[0] == 512


def test_registry_entries_are_consulted(tmp_path, relu):
    reg = tmp_path / "overrides.json"
    overrides.add_entry({"op": "relu", "backend": "cuda", "shape_class": "small",
                         "knobs": {"group": 128, "vec": 2}, "evidence": "x.json"}, reg)  # fmt: skip
    try:
        assert overrides.reload(reg) == 1
        small = relu.args0
        large = (mx.zeros((1 << 17,)),)
        with capture("cuda") as got, mx.stream(mx.cpu):
            catalog.get("relu").op(*small)
            catalog.get("relu").op(*large)
        assert [g.threadgroup[0] for g in got] == [128, 256]
        assert overrides.lookup("relu", "small", "metal") is None  # other backend
    finally:
        overrides.reload()
    assert overrides.lookup("relu", "small", "cuda") is None


class _NoEval:
    calls = 0

    def evaluate(self, request):
        self.calls += 1
        raise AssertionError("a rejected candidate must never reach the evaluator")


def test_rejected_candidates_are_never_compiled(relu):
    s = search.new_session(relu, "emulator", cases=[relu.case_dict], dtypes=["float32"])
    ev = _NoEval()
    cases = [
        ({**relu.defaults}, "  while (true) { }\n" + relu.body, "unbounded loop"),
        ({"group": 48, "vec": 4}, None, "not one of"),
        ({"group": 64, "vec": 4, "unroll": 2}, None, "unknown knob"),
    ]
    for knobs, body, why in cases:
        node = s.add(s.root, knobs, body)
        search.evaluate_node(s, relu, node, ev)
        assert node.status == "rejected" and any(why in r for r in node.reasons), node.reasons
    norm = Target("rms_norm", "decode-2048", "float32")
    reasons = norm.static_check({"warp": True, "group": 256}, None)
    assert "do not apply at the target shape" in reasons[0]
    assert ev.calls == 0


@needs_emulator
def test_wrong_rewrite_fails_its_checks_and_endless_one_times_out(relu, evaluator):
    wrong = relu.body.replace("static_cast<O>(", "static_cast<O>(1.0f + ")
    s = search.new_session(relu, "emulator", cases=[relu.case_dict], dtypes=["float32"])
    node = s.add(s.root, relu.defaults, wrong)
    search.evaluate_node(s, relu, node, evaluator)
    assert node.status == "incorrect" and not node.checks[0]["ok"]
    assert "differ beyond" in node.checks[0]["message"]
    assert node.timing == {"skipped": "failed a correctness check"}
    # A loop the static rules cannot see as endless: the time limit ends it.
    endless = relu.body.replace(
        "if (i < n) {", "for (uint z = 0; z < 1u; z += 0u) { }\n if (i < n) {"
    )
    node = s.add(s.root, relu.defaults, endless)
    with Evaluator(compile_timeout=4, run_timeout=4) as quick:
        search.evaluate_node(s, relu, node, quick)
    assert node.status == "timeout" and "longer than 4 s" in node.error


@needs_emulator
def test_search_cli_end_to_end(tmp_path, capsys):
    path = tmp_path / "s.json"
    argv = ["search", "relu", "--dtype", "float32", "--check-dtypes", "float32",
            "--check-cases", "31", "33x3", "--session", str(path)]  # fmt: skip
    assert main(argv + ["--steps", "3"]) == 0
    out = capsys.readouterr().out
    # Timing needs a GPU; the emulator checks correctness only.
    assert ("timing skipped" in out) == (gpu_backend() == "cpu"), out
    s = Session.load(path)
    assert len(s.nodes) == 4 and s.root.knobs == {"group": 256, "vec": 4}
    for n in s.nodes:
        assert n.status == "ok", (n.status, n.reasons, n.error)
        assert [c["case"] for c in n.checks] == ["decode", "31", "33x3"]
        assert all(c["path"] == "kernel" and c["ok"] for c in n.checks)
        if gpu_backend() == "cpu":
            assert n.timing == {"skipped": TIMING_SKIPPED}
        else:  # timed against the catalog kernel on this GPU
            assert n.timing["speedup"] > 0, n.timing
    assert len({n.key for n in s.nodes}) == 4 and s.root.visits == 4
    assert main(argv + ["--steps", "2"]) == 0  # resumes the same session
    capsys.readouterr()
    assert len(Session.load(path).nodes) == 6
    assert main(["report", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    if gpu_backend() != "cpu":  # timed on this GPU: the untimed export below is the CPU's case
        assert rep["timed"] is True and rep["status"] == {"ok": 6}
        return
    assert rep["timed"] is False and "emulator" in rep["timing_note"]
    assert rep["status"] == {"ok": 6} and rep["best"]["node"] == 0
    # Untimed candidates are exported only on request; the op then uses the knobs.
    assert main(["export", str(path)]) == 0 and "nothing to export" in capsys.readouterr().out
    assert main(["export", str(path), "--node", "1"]) == 2
    assert "was not timed" in capsys.readouterr().err
    reg, cap = tmp_path / "reg.json", tmp_path / "cap.json"
    entry = export(path, node_id=1, registry=reg, capsule_path=cap, allow_untimed=True)
    assert entry["timed"] is False and entry["shape_class"] == "small"
    assert capsule.load(cap)["results"]["discover"]["knobs"] == s.nodes[1].knobs
    try:
        overrides.reload(reg)
        group, template = _geometry_registry("relu", Target("relu", None, "float32").args0)
        assert (group, template["VEC"]) == (s.nodes[1].knobs["group"], s.nodes[1].knobs["vec"])
    finally:
        overrides.reload()


def _geometry_registry(op, args):
    with capture("cuda") as got, mx.stream(mx.cpu):
        catalog.get(op).op(*args)
    return got[0].threadgroup[0], dict(got[0].template)


class _FakeLLM(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        srv.requests.append((self.path, req))
        reply = srv.replies[min(len(srv.requests), len(srv.replies)) - 1]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@needs_emulator
def test_llm_proposer_with_a_loopback_endpoint(tmp_path, relu, evaluator):
    rewrite = relu.body.replace("zx_max(v_0, 0.0f)", "(v_0 > 0.0f ? v_0 : 0.0f)")
    assert rewrite != relu.body
    good = "Here:\n```json\n" + json.dumps({"knobs": {"group": 128}, "body": rewrite,
                                            "reason": "branch"}) + "\n```"  # fmt: skip
    unsafe = json.dumps({"knobs": {"vec": 2}, "body": "  while (true) { }\n" + relu.body})
    server = HTTPServer(("127.0.0.1", 0), _FakeLLM)
    server.requests, server.replies = [], [good, unsafe, "no idea, sorry", good]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        prop = LLMProposer(url, model="fake", timeout=10, fallback=MutationProposer(1))
        s = search.new_session(relu, "emulator", proposer={"kind": "llm"},
                               cases=[relu.case_dict], dtypes=["float32"])  # fmt: skip
        search.run(s, relu, prop, evaluator, 4)
    finally:
        server.shutdown()
        server.server_close()
    assert len(server.requests) == 4
    path, req = server.requests[0]
    assert path == "/v1/chat/completions" and req["model"] == "fake"
    user = json.loads(req["messages"][1]["content"])
    assert user["current"]["body"] == relu.body and "vec" in user["target"]["knob_space"]
    by_source = {(n.source, n.status) for n in s.nodes}
    assert ("llm", "ok") in by_source and ("llm", "rejected") in by_source
    llm_ok = next(n for n in s.nodes if n.source == "llm" and n.status == "ok")
    assert llm_ok.body == rewrite and llm_ok.knobs == {"group": 128, "vec": 4}
    assert llm_ok.note == "branch" and llm_ok.checks[0]["path"] == "kernel"
    bad = next(n for n in s.nodes if n.status == "rejected")
    assert bad.reasons == ["unbounded loop: while (true)"] and bad.checks == []
    kinds = [e["kind"] for e in s.events]
    assert "llm_unusable" in kinds and "llm_duplicate" in kinds
    assert sum(n.source == "mutate" for n in s.nodes) == 2  # the two fallbacks
    # Later requests show what was tried, with the rejection's reason.
    tried = json.loads(server.requests[-1][1]["messages"][1]["content"])["tried"]
    assert any(t["status"] == "rejected" and "unbounded" in t["why"] for t in tried)
    path = s.save(tmp_path / "llm.json")
    with pytest.raises(ValueError, match="rewrites the kernel body"):
        export(path, node_id=llm_ok.id, allow_untimed=True)


def test_reply_parsing_and_urls():
    node = Node(3, 0, {"group": 256, "vec": 4})
    p = parse_reply('{"knobs": {"vec": 8}}', node)
    assert p.knobs == {"group": 256, "vec": 8} and p.body is None and p.source == "llm"
    with pytest.raises(ValueError, match="no JSON object"):
        parse_reply("nothing", node)
    with pytest.raises(ValueError, match="'knobs' to be an object"):
        parse_reply('{"knobs": [1]}', node)
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h/x/chat/completions") == "http://h/x/chat/completions"
    with pytest.raises(ValueError, match="needs --llm-url"):
        LLMProposer()


def _tree(values):
    s = Session("relu", "decode", "float32", "emulator", "cuda", "cpu", "small",
                {"group": 256, "vec": 4})  # fmt: skip
    root = s.add(None, {"group": 256, "vec": 4})
    root.status, root.visits, root.value_sum = "ok", 1 + len(values), 0.5 * (1 + len(values))
    for i, (q, visits, prior) in enumerate(values):
        k = s.add(root, {"group": 32 * (i + 1), "vec": 4}, prior=prior)
        k.status, k.visits, k.value_sum = "ok", visits, q * visits
    return s


def test_puct_selection_and_widening():
    s = _tree([(0.9, 3, 1.0), (0.4, 3, 1.0)])
    root = s.root
    root.visits = 4  # sqrt(4) = 2 children allowed: the best child is descended into
    assert [n.id for n in search.select(s)] == [0, 1]
    root.visits = 5  # 3 allowed: the root takes another child
    assert [n.id for n in search.select(s)] == [0]
    s = _tree([(0.5, 1, 1.0), (0.5, 9, 1.0)])
    s.root.visits, s.root.exhausted = 10, True  # equal Q: the less visited child explores
    assert [n.id for n in search.select(s)] == [0, 1]
    for n in s.nodes:
        n.exhausted = True
    assert search.select(s) is None  # nothing left anywhere
    node = s.nodes[1]
    node.status, node.timing = "ok", {"speedup": 1.5}
    assert node.value() == 0.75
    node.status = "incorrect"
    assert node.value() == 0.0


def test_timing_record_and_timed_export(tmp_path, relu):
    # The GPU timing path, run here on the CPU's reference ops (structure, not speed).
    t = _timing(relu, {"seed": 0, "warmup": 1, "repeats": 2, "batch": 2}, relu.spec.op)
    assert set(t["timings"]) == {"current", "variant", "stock"}
    assert t["speedup"] > 0 and t["vs_stock"] > 0 and t["case"] == "decode"
    s = search.new_session(relu, "emulator", cases=[relu.case_dict], dtypes=["float32"])
    s.root.status = "ok"
    faster = s.add(s.root, {"group": 512, "vec": 8})
    faster.status, faster.timing = "ok", {**t, "speedup": 1.25}
    slower = s.add(s.root, {"group": 64, "vec": 1})
    slower.status, slower.timing = "ok", {**t, "speedup": 0.8}
    path = s.save(tmp_path / "timed.json")
    text = "\n".join(" ".join(r) for r in table(Session.load(path)).rows)
    assert "1.25x" in text and "0.80x" in text
    reg, cap = tmp_path / "reg.json", tmp_path / "cap.json"
    entry = export(path, registry=reg, capsule_path=cap)
    assert (
        entry["knobs"] == {"group": 512, "vec": 8} and entry["timed"] and entry["speedup"] == 1.25
    )
    assert set(capsule.load(cap)["results"]["timings"]) == {"current", "variant", "stock"}
    with pytest.raises(ValueError, match="below --min-speedup"):
        export(path, node_id=slower.id, registry=reg, capsule_path=cap)


def test_local_mlx_lm_model_as_proposer(relu):
    # A tiny fixture model cannot write kernels: its reply is logged and a mutation is used.
    pytest.importorskip("mlx_lm")
    from zmlx.models import fixtures

    s = search.new_session(relu, "emulator", cases=[relu.case_dict], dtypes=["float32"])
    s.root.status = "ok"
    prop = LLMProposer(local_model=str(fixtures.path()), max_tokens=8, fallback=MutationProposer())
    assert isinstance(prop.complete([{"role": "user", "content": "hi"}]), str)
    got = prop.propose(s, relu, s.root)
    assert got.source == "mutate" and s.events[-1]["kind"] == "llm_unusable"
