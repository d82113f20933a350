"""Stock routes: from a catalog benchmark capsule to ops that call stock MLX where it is faster."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest

from capsule_samples import timing
from kernel_checks import emulator
from zmlx.bench import capsule
from zmlx.bench.__main__ import main as bench_main
from zmlx.core.kernel import launch_count
from zmlx.kernels import catalog, norms, routes
from zmlx.testing import assert_close


def _row(op, case, elements, speedup, path="kernel", dtype="float32"):
    return {"op": op, "family": "norms", "case": case, "dtype": dtype, "path": path,
            "bytes": 4 * elements, "elements": elements, "speedup": speedup,
            "timings": {"stock": timing(10.0), "zmlx": timing(10.0 / speedup, speedup)}}  # fmt: skip


def _capsule(rows, backend="cuda"):
    cap = capsule.make("catalog_bench", {"backend": backend, "path": "kernel",
                                         "dtype": "float32", "rows": rows, "errors": []})  # fmt: skip
    cap["env"]["device"] = "test device"
    return cap


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A table file the ops read for one test; every wrapped function is put back after."""
    path = tmp_path / "routes.json"
    routes.uninstall_all()  # the shipped table's wrappers
    monkeypatch.setenv("ZMLX_STOCK_ROUTES", str(path))
    routes.reload()
    yield path
    routes.uninstall_all()
    monkeypatch.delenv("ZMLX_STOCK_ROUTES")
    routes.reload()
    for spec in catalog.specs():  # the shipped table's wrappers again
        routes.install(spec)


def test_derive_routes_the_slower_cases_with_their_ranges():
    rows = [
        _row("rms_norm", "decode", 4096, 0.6),
        _row("rms_norm", "mid", 65536, 0.9),
        _row("rms_norm", "prefill", 4194304, 1.4),
        _row("softmax", "decode", 1000, 0.5, path="reference"),  # no kernel ran: no route
        _row("softmax", "prefill", 10**6, 0.99),  # within the margin of noise
        _row("rope", "prefill", 10**6, 0.5),
    ]
    got = routes.derive(_capsule(rows), evidence="cap.json")
    assert [(r["op"], r["min_elements"], r["max_elements"]) for r in got] == [
        ("rms_norm", 0, 524288),  # decode and mid merged, up to halfway (geometric) to prefill
        ("rope", 0, None),  # its only case: every size
    ]
    assert got[0]["case"] == "decode+mid" and got[0]["speedup"] == 0.6
    assert got[0]["evidence"] == "cap.json" and got[0]["device"] == "test device"


def test_write_keeps_other_backends_and_read_checks_the_file(tmp_path):
    path = tmp_path / "t.json"
    routes.write(routes.derive(_capsule([_row("rope", "d", 10, 0.5)], "metal")), path)
    routes.write(routes.derive(_capsule([_row("rms_norm", "d", 10, 0.5)], "cuda")), path)
    assert sorted(r["backend"] for r in routes.read(path)) == ["cuda", "metal"]
    routes.write([], path)  # no new routes: the others stay
    assert len(routes.read(path)) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "zmlx.stock_routes", "routes": [{"op": "x"}]}))
    with pytest.raises(ValueError, match="lacks"):
        routes.read(bad)
    bad.write_text("{}")
    with pytest.raises(ValueError, match="expected a 'zmlx.stock_routes' file"):
        routes.read(bad)


def test_a_routed_op_calls_stock_inside_its_range_only(table, rng):
    spec = next(s for s in catalog.specs("norms") if s.name == "rms_norm")
    routes.write([{"op": "rms_norm", "backend": "cuda", "dtype": "float32", "min_elements": 0,
                   "max_elements": 1000}], table)  # fmt: skip
    assert routes.install(spec)
    assert norms.rms_norm is not spec.op  # the module's function is wrapped, the spec's is not
    w = mx.ones((64,))
    small = mx.array(rng.normal(size=(2, 64)).astype("float32"))
    large = mx.array(rng.normal(size=(32, 64)).astype("float32"))
    with emulator():  # the backend reads "cuda": kernels run on the emulator
        before = launch_count()
        got = norms.rms_norm(small, w, 1e-5)
        mx.eval(got)
        assert launch_count() == before  # routed: stock MLX ran
        assert_close(got, mx.fast.rms_norm(small, w, 1e-5))
        before = launch_count()
        mx.eval(norms.rms_norm(large, w, 1e-5))
        assert launch_count() > before  # outside the range: the kernel
        before = launch_count()
        mx.eval(norms.rms_norm(small.astype(mx.float16), w.astype(mx.float16), 1e-5))
        assert launch_count() > before  # another dtype: the kernel
    routes.uninstall_all()
    assert norms.rms_norm is spec.op


def test_patched_modules_and_bypass_always_run_the_kernel(table, rng):
    from zmlx.patch.patterns.norms import FusedRMSNorm

    spec = next(s for s in catalog.specs("norms") if s.name == "rms_norm")
    routes.write([{"op": "rms_norm", "backend": "cuda", "dtype": "float32", "min_elements": 0,
                   "max_elements": None}], table)  # fmt: skip
    assert routes.install(spec)
    x = mx.array(rng.normal(size=(3, 64)).astype("float32"))
    norm = nn.RMSNorm(64)
    fused = FusedRMSNorm.from_module(norm)
    with emulator():
        for call, kernel in [(lambda: norms.rms_norm(x, norm.weight, norm.eps), False),
                             (lambda: fused(x), True), (lambda: norm(x), False)]:  # fmt: skip
            before = launch_count()
            got = call()
            mx.eval(got)
            assert (launch_count() > before) is kernel
            assert_close(got, mx.fast.rms_norm(x, norm.weight, norm.eps), atol=1e-5, rtol=1e-5)
        with routes.bypass():
            before = launch_count()
            mx.eval(norms.rms_norm(x, norm.weight, norm.eps))
            assert launch_count() > before
        assert routes.routed("rms_norm", "cuda", [x]) is not None  # bypass ended with its block


def test_off_and_an_empty_table_route_nothing(table, monkeypatch):
    spec = next(s for s in catalog.specs("norms") if s.name == "rms_norm")
    assert not routes.install(spec)  # no table file: nothing to wrap
    routes.write([{"op": "rms_norm", "backend": "cuda", "dtype": "float32", "min_elements": 0,
                   "max_elements": None}], table)  # fmt: skip
    monkeypatch.setenv("ZMLX_STOCK_ROUTES", "off")
    routes.reload()
    assert routes.routed("rms_norm", "cuda", [mx.zeros((4, 4))]) is None
    assert not routes.install(spec)


def test_shipped_table_is_valid_and_names_catalog_ops():
    names = {s.name for s in catalog.specs()}
    for r in routes.read(routes.DEFAULT_TABLE):
        assert r["op"] in names, r
        assert r.get("evidence"), f"route {r} has no evidence capsule"


def test_cli_writes_routes_from_a_capsule(tmp_path, capsys):
    cap = tmp_path / "cat.json"
    capsule.write(_capsule([_row("rms_norm", "decode", 4096, 0.5)]), cap)
    out = tmp_path / "table.json"
    assert bench_main(["routes", str(cap), "--write", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 stock route(s)" in text and "rms_norm" in text
    assert routes.read(out)[0]["evidence"] == str(cap)
    other = tmp_path / "other.json"
    capsule.write(capsule.make("gpu_tests", {"passed": 1, "failed": 0, "skipped": 0,
                                             "duration_s": 1.0}), other)  # fmt: skip
    assert bench_main(["routes", str(other)]) == 2  # not a catalog_bench capsule


def test_cli_takes_an_op_measured_twice_from_the_later_capsule(tmp_path):
    first, later = tmp_path / "a.json", tmp_path / "b.json"
    capsule.write(_capsule([_row("rms_norm", "decode", 4096, 0.5),
                            _row("softmax", "decode", 4096, 0.5)]), first)  # fmt: skip
    capsule.write(_capsule([_row("rms_norm", "decode", 4096, 1.5)]), later)
    out = tmp_path / "table.json"
    assert bench_main(["routes", str(first), str(later), "--write", str(out)]) == 0
    assert [(r["op"], r["evidence"]) for r in routes.read(out)] == [("softmax", str(first))]


def test_a_call_shaped_unlike_the_routed_specs_stock_runs_the_kernel(table, rng):
    from zmlx.kernels import gated

    spec = next(s for s in catalog.specs("gated") if s.name == "swiglu")
    routes.write([{"op": "swiglu", "backend": "cuda", "dtype": "float32", "min_elements": 0,
                   "max_elements": None}], table)  # fmt: skip
    assert routes.install(spec)
    g, u, bg, bu = (mx.array(rng.normal(size=shape).astype("float32"))
                    for shape in ((2, 64), (2, 64), (64,), (64,)))  # fmt: skip
    with emulator():
        before = launch_count()
        mx.eval(gated.swiglu(g, u))
        assert launch_count() == before  # the measured call's shape: stock
        got = gated.swiglu(g, u, bg, bu)  # swiglu_bias's shape: stock's signature lacks it
        mx.eval(got)
        assert launch_count() > before
        assert_close(got, gated.swiglu_ref(g, u, bg, bu), atol=1e-5, rtol=1e-5)


def test_a_routed_call_still_gets_the_ops_own_errors(table, rng):
    """Stock MLX does not check what zmlx checks (``mx.gather_qmm`` takes a 2-d weight for a
    stacked one): a routed call runs the op's checks first, without launching anything."""
    from test_quant import fmt
    from zmlx.kernels import moe
    from zmlx.kernels.moe_specs import random_indices
    from zmlx.kernels.quant_specs import random_qweight, random_x

    spec = next(s for s in catalog.specs() if s.name == "gather_qmv")
    routes.write([{"op": "gather_qmv", "backend": "cuda", "dtype": "bfloat16",
                   "min_elements": 0, "max_elements": None}], table)  # fmt: skip
    assert routes.install(spec)
    gs, bits, mode = fmt("a4g64")
    w = random_qweight(rng, (4, 16, 64), mx.bfloat16, bits, gs, mode)
    x = random_x(rng, (2, 64), mx.bfloat16)
    idx = random_indices(rng, (2,), 2, 4)
    with emulator():
        before = launch_count()
        for _ in range(2):  # the second call of a shape is not checked again
            got = moe.gather_qmv(x, *w, idx, gs, bits, mode)
            mx.eval(got)
        assert launch_count() == before  # routed: stock ran, the check launched nothing
        assert_close(got, moe.gather_qmv_ref(x, *w, idx, gs, bits, mode))
        with pytest.raises(ValueError, match=r"\[gather_qmv\] expected 'w' to be a 3-d uint32"):
            moe.gather_qmv(x, w[0][0], w[1][0], w[2][0], idx)
        assert launch_count() == before
