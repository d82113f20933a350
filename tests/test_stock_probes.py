"""benchmarks/stock_probes.py on the CPU: a valid capsule, and zmlx's quantize reads strides."""

from __future__ import annotations

from scripts import load_benchmark
from zmlx.bench import capsule


def test_writes_a_capsule_of_every_probe(tmp_path):
    out = tmp_path / "probes.json"
    assert load_benchmark("stock_probes").main(["--json", str(out)]) == 0
    res = capsule.load(out)["results"]
    assert len(res["qmv_tiny"]) == 12 and all("error" not in r for r in res["qmv_tiny"])
    assert {r["fn"] for r in res["quantize_transposed"]} == {"mx.quantize", "zmlx.quantize"}
    zmlx = [r for r in res["quantize_transposed"] if r["fn"] == "zmlx.quantize"]
    assert all(r["words_equal"] and r["scales_equal"] for r in zmlx)
