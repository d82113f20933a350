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


def test_sdpa_and_fixture_probes_agree_on_one_backend(tmp_path):
    out = tmp_path / "probes.json"
    main = load_benchmark("stock_probes").main
    assert main(["--probes", "sdpa_tiny", "fixture_repeat", "--json", str(out)]) == 0
    res = capsule.load(out)["results"]
    assert {(r["mask"], r["kv"]) for r in res["sdpa_tiny"]} == {
        (m, k) for m in ("none", "causal", "bool") for k in ("contiguous", "sliced")
    }
    # The CPU is the default device here: every comparison is of a backend with itself.
    assert all(r["gpu_vs_cpu"] == 0 for r in res["sdpa_tiny"])
    assert [(r["family"], r["quantized"]) for r in res["fixture_repeat"]] == [
        (f, q) for f in ("qwen3_moe", "mixtral", "gpt_oss") for q in (False, True)
    ]
    assert all(r["gpu_vs_gpu"] == 0 == r["gpu_vs_cpu"] for r in res["fixture_repeat"])
