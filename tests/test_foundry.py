"""zmlx.foundry: knob grids evaluated like search candidates, exported as mlx-lm chat data."""

from __future__ import annotations

import copy
import json

import pytest

from zmlx.core import emulate
from zmlx.core.backend import gpu_backend
from zmlx.discover.evaluator import Evaluator
from zmlx.discover.target import Target
from zmlx.foundry import dataset, sweep
from zmlx.foundry.__main__ import main

needs_emulator = pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
pytestmark = pytest.mark.no_emulate  # the worker runs kernels on the emulator itself


def test_grid_parsing_and_points():
    assert sweep.parse_grid(["group=64, 128", "warp=true,false"]) == {
        "group": [64, 128],
        "warp": [True, False],
    }
    with pytest.raises(ValueError, match="KNOB=V1"):
        sweep.parse_grid(["group"])
    with pytest.raises(ValueError, match="not an integer or bool"):
        sweep.parse_grid(["group=big"])
    relu = Target("relu", None, "float32")
    assert len(sweep.points(relu, None)) == 6 * 4  # the whole space
    assert sweep.points(relu, {"group": [64, 128], "warp": [True]}) == [
        {"group": 64, "vec": 4},
        {"group": 128, "vec": 4},
    ]  # vec keeps its default; knobs the op lacks are ignored
    with pytest.raises(ValueError, match="has none of the cases"):
        sweep._targets("relu", "float32", True, ["nope"])
    assert [t.case for t in sweep._targets("rms_norm", "float32", True, [])] == ["decode-2048"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if not emulate.available():
        pytest.skip("needs a C++ compiler")
    out = tmp_path_factory.mktemp("run")
    grid = {"group": [64, 256], "vec": [2], "warp": [False, True]}
    with Evaluator(compile_timeout=60, run_timeout=120) as ev:
        manifest = sweep.run(["relu", "rms_norm"], out, grid=grid, check_dtypes=["float32"],
                             runner="emulator", evaluator=ev)  # fmt: skip
    return out, manifest


def test_run_records_every_grid_point(run_dir):
    out, manifest = run_dir
    assert manifest["records"] == 2 + 4 and manifest["timed"] is False
    recs = sweep.read([out])
    relu = [r for r in recs if r["op"] == "relu"]
    assert [r["template"]["VEC"] for r in relu] == [2, 2]
    assert [r["threadgroup"][0] for r in relu] == [64, 256]
    for r in relu:
        assert r["status"] == "ok" and r["checks"] and all(c["ok"] for c in r["checks"])
        assert "VEC" in r["body"] and "emulator" in r["timing"]["skipped"]
    norm = {(r["knobs"]["warp"], r["knobs"]["group"]): r for r in recs if r["op"] == "rms_norm"}
    assert norm[(False, 64)]["status"] == "ok" and norm[(False, 64)]["template"]["C"] == 32
    # One warp cannot hold a row of 2048 elements: rejected before compiling.
    bad = norm[(True, 64)]
    assert bad["status"] == "rejected" and "do not apply" in bad["reasons"][0]
    assert json.loads((out / sweep.MANIFEST).read_text())["counts"] == {"ok": 4, "rejected": 2}


def test_export_writes_valid_chat_data(run_dir, tmp_path):
    out, _ = run_dir
    exs = dataset.examples(sweep.read([out]))
    assert len(exs) == 4  # the passing points (untimed: one example each)
    res = dataset.write(exs, tmp_path / "data", valid_fraction=0.25)
    assert (res["train"], res["valid"]) == (3, 1)
    assert dataset.validate(tmp_path / "data" / "train.jsonl") == 3
    ex = exs[0]["messages"]
    assert [m["role"] for m in ex] == ["system", "user", "assistant"]
    assert "Op: relu" in ex[1]["content"] and "Rules:" in ex[1]["content"]
    assert '"knobs"' in ex[2]["content"] and "```cpp" in ex[2]["content"]
    assert "Not timed" in ex[2]["content"]
    # mlx-lm reads it as chat data; a tokenizer without a chat template gets plain lines.
    pytest.importorskip("mlx_lm")
    from mlx_lm.tuner.datasets import ChatDataset

    from zmlx.models import fixtures
    from zmlx.train import data

    _, tok = fixtures.load("qwen3_moe")
    train, valid = data.load(str(tmp_path / "data"), tok)
    assert isinstance(train._data, ChatDataset) and len(valid) == 1
    tokens, offset = train[0]
    assert len(tokens) > 50 and offset == 0


def _rec(speedup=None, status="ok", knobs=None):
    return {
        "op": "silu", "family": "activations", "description": "x * sigmoid(x)", "case": "decode",
        "shapes": [[1, 4096]], "dtype": "float16", "backend": "cuda", "runner": "cuda",
        "device": "NVIDIA H100", "knobs": knobs or {"group": 256, "vec": 4},
        "defaults": {"group": 256, "vec": 4}, "knob_space": {"group": [256], "vec": [4]},
        "knob_notes": "n", "template": {"VEC": 4}, "body": "  body;", "status": status,
        "checks": [{"case": "decode", "dtype": "float16", "ok": status == "ok"}],
        "timing": {"speedup": speedup, "vs_stock": 1.1,
                   "timings": {"variant": {"median_eval_us": 3.0}}} if speedup else {},
    }  # fmt: skip


def test_timed_records_give_the_fastest_knobs():
    recs = [_rec(1.1, knobs={"group": 128, "vec": 4}), _rec(1.4, knobs={"group": 512, "vec": 4}),
            _rec(2.0, "incorrect", knobs={"group": 64, "vec": 4})]  # fmt: skip
    (ex,) = dataset.examples(recs)
    text = ex["messages"][2]["content"]
    assert '"group": 512' in text and "1.40x the catalog kernel" in text
    assert "on NVIDIA H100" in text and "1.10x stock MLX" in text
    assert dataset.examples([_rec(status="rejected")]) == []


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda e: e.pop("messages"), "expected"),
        (lambda e: e["messages"].pop(), "at least a user and an assistant"),
        (lambda e: e["messages"][0].update(role="tool"), "role 'tool'"),
        (lambda e: e["messages"][1].update(content=" "), "empty content"),
        (lambda e: e["messages"][0].update(extra=1), "exactly 'role' and 'content'"),
        (lambda e: e["messages"].reverse(), "alternating user/assistant"),
    ],
)
def test_schema_check_rejects_malformed_examples(edit, message, tmp_path):
    dataset.check_example(GOOD)
    bad = copy.deepcopy(GOOD)
    edit(bad)
    with pytest.raises(ValueError, match=message):
        dataset.check_example(bad)
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        dataset.validate(p)


@needs_emulator
def test_cli(tmp_path, capsys):
    run, data = str(tmp_path / "run"), str(tmp_path / "data")
    argv = ["run", "--ops", "silu", "--grid", "group=64", "vec=8", "--check-dtypes", "float32",
            "--out", run]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert ("timing skipped: no GPU" in out) == (gpu_backend() == "cpu"), out
    assert main(["export", "--format", "chat", "--runs", run, "--out", data]) == 0
    # One run: the training example, plus (timed on a GPU) the validation one.
    want = "1 train / 0 valid" if gpu_backend() == "cpu" else "1 train / 1 valid"
    assert want in capsys.readouterr().out
    assert main(["check", f"{data}/train.jsonl"]) == 0
    assert main(["run", "--ops", "silu", "--grid", "group", "--out", run]) == 2
    assert main(["export", "--runs", str(tmp_path / "none")]) == 2
