"""benchmarks/fixture_layers.py on the CPU: every module recorded, the model left as it was."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from scripts import load_benchmark
from zmlx.core.backend import gpu_backend

pytest.importorskip("mlx_lm")


def _script():
    return load_benchmark("fixture_layers")


@pytest.mark.skipif(gpu_backend() != "cpu", reason="one backend: the stock run is the CPU run")
def test_records_every_layer_and_moe_block(tmp_path):
    fl = _script()
    out = tmp_path / "layers.json"
    assert fl.main(["--families", "mixtral", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]["rows"]
    names = [m["module"] for m in row["modules"]]
    decode = [f"layer {i} {m}" for i in (0, 1) for m in ("self_attn", "block_sparse_moe", "")]
    decode = [n.strip() for n in decode] + ["logits"]
    assert names == decode + [f"prefill {n}" for n in decode]
    # One backend here: the stock run is the CPU run, and zmlx's references equal it.
    assert all(m["stock_vs_cpu"] == 0 and m["zmlx_vs_cpu"] == 0 for m in row["modules"])
    assert row["patched"].get("moe_block", 0) > 0


def test_wrap_and_unwrap_leave_the_model_as_it_was():
    from zmlx.models import fixtures

    fl = _script()
    model, _ = fixtures.load_quantized("qwen3_moe")
    before = [type(layer) for layer in model.model.layers]
    mlps = [type(layer.mlp) for layer in model.model.layers]
    fl.wrap(model, {})
    assert all(isinstance(layer, fl.Recorder) for layer in model.model.layers)
    fl.unwrap(model)
    assert [type(layer) for layer in model.model.layers] == before
    assert [type(layer.mlp) for layer in model.model.layers] == mlps


def test_cpu_reference_in_a_child_process_matches_in_process():
    fl = _script()
    child = fl.cpu_reference("qwen3_moe", "float32", child=True)
    here = fl.cpu_reference("qwen3_moe", "float32", child=False)
    assert child.keys() == here.keys() and "logits" in child
    assert all(mx.array_equal(child[k], here[k]).item() for k in here)
