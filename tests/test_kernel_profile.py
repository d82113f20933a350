"""benchmarks/kernel_profile.py's bookkeeping (the CUPTI records themselves need a GPU) and
moe_decode's ``--set``."""

from __future__ import annotations

import pytest

from scripts import load_benchmark

kp = load_benchmark("kernel_profile")


def test_kernel_names_lose_templates_and_arguments():
    assert kp._short("void mlx::core::cu::gemv<__nv_bfloat16, 32, 4>(float const*, int)") == (
        "mlx::core::cu::gemv"
    )
    assert kp._short("custom_kernel_zx_qmv_split_ab12_bfloat16_t_2048") == (
        "custom_kernel_zx_qmv_split_ab12_bfloat16_t_2048"
    )


def test_records_split_into_evaluations_at_the_host_syncs():
    # Two evaluations of three kernels, 100 us apart; the second has a 2 us gap between its
    # first two kernels and two overlapping kernels.
    recs = [(0.0, 5.0, "a<1>(int)"), (5.5, 8.0, "b"), (8.0, 9.0, "a<2>(int)"),
            (109.0, 114.0, "a<1>(int)"), (116.0, 120.0, "b"), (118.0, 121.0, "c")]  # fmt: skip
    p = kp.summarize(recs, 2)
    assert [e["kernels"] for e in p["evals"]] == [3, 3]
    assert [e["span_us"] for e in p["evals"]] == [9.0, 12.0]
    assert [e["busy_us"] for e in p["evals"]] == [8.5, 10.0]  # the overlap counted once
    assert p["busy_us"] == 9.25 and p["kernels"] == 3
    top = p["by_name"][0]
    assert top["name"] == "a" and top["per_eval"] == 1.5 and top["total_us"] == 5.5
    # idle before: b 0.5 and 2.0 us, c overlapping b none, a's second launch none
    idle = {r["name"]: r["idle_before_us"] for r in p["by_name"]}
    assert idle == {"a": 0.0, "b": 1.25, "c": 0.0}


def test_moe_decode_holds_a_variants_settings_until_the_next():
    """moe_decode's variants (zmlx.bench.variants): a variant's settings hold while it runs
    and give way to the next variant's; the patterns it adds reach patch()."""
    import contextlib

    from zmlx.kernels import quant_kernels as qk
    from zmlx.models import build
    from zmlx.patch import unpatch

    md = load_benchmark("moe_decode")
    model = build("qwen3_moe", "tiny")
    held, before = contextlib.ExitStack(), qk.LANE_ROWS
    md.setup_variant(model, "zmlx_row_at_lane0", ["moe_block"], held)
    assert qk.LANE_ROWS is False
    unpatch(model)
    assert md.setup_variant(model, "stock", ["moe_block"], held) is model
    assert qk.LANE_ROWS == before
    held.close()


def test_moe_decode_set_parses_and_refuses_bad_settings(monkeypatch):
    md = load_benchmark("moe_decode")
    from zmlx.kernels import moe_kernels as mk
    from zmlx.kernels import quant_kernels as qk

    monkeypatch.setattr(mk, "SPLIT_EXPERTS", True)
    monkeypatch.setattr(qk, "SPLIT_ROWS", 4)
    md.apply_settings(["zmlx.kernels.moe_kernels.SPLIT_EXPERTS=false",
                       "zmlx.kernels.quant_kernels.SPLIT_ROWS=2"])  # fmt: skip
    assert mk.SPLIT_EXPERTS is False and qk.SPLIT_ROWS == 2
    with pytest.raises(SystemExit, match="no setting"):
        md.apply_settings(["zmlx.kernels.moe_kernels.NOPE=1"])
    with pytest.raises(SystemExit, match="expected --set"):
        md.apply_settings(["numpy.pi=3"])


def test_moe_block_device_time_bookkeeping(monkeypatch):
    """``moe_block.py --device-time``: the chain runs both forms (checked against each other
    first) and per-block figures are the chain's divided by its length."""
    import numpy as np

    from zmlx.kernels import quant_kernels as qk

    mb = load_benchmark("moe_block")
    calls = []

    def fake_profile(run, repeats):
        calls.append(repeats)
        run()
        busy = 600.0 if len(calls) % 2 else 200.0  # stock's chain, then zmlx's
        return {"busy_us": busy, "span_us": busy + 30.0, "kernels": 9.0, "by_name": []}

    monkeypatch.setattr(mb, "_profiler", lambda: fake_profile)
    r = mb.device_time_case("qwen3_30b_a3b", 128, 64, 16, 4, "4bit", 1, 3, 2,
                            np.random.default_rng(1))  # fmt: skip
    dt = r["device_time"]
    assert calls == [2, 2] and r["blocks"] == 3 and r["unique_experts"] == 4
    assert dt["mlx_switchglu"]["block_us"] == 200.0 and dt["zmlx"]["block_us"] == 200.0 / 3
    assert dt["zmlx"]["speedup"] == 3.0
    assert dt["zmlx"]["gbps"] == r["weight_bytes"] / (200.0 / 3 * 1e-6) / 1e9
    # one expert's gate, up (64 x 128) and down (128 x 64), 4-bit, group 64, with scales and biases
    assert r["weight_bytes"] == 4 * 3 * (64 * 128 // 2 + 2 * 2 * 64 * 128 // 64)
    # --sweep: zmlx again under each setting, the setting restored after it
    calls.clear()
    seen = []
    monkeypatch.setattr(mb, "_profiler", lambda: lambda run, repeats: (
        seen.append(qk.SPLIT_ROWS), fake_profile(run, repeats))[-1])  # fmt: skip
    before = qk.SPLIT_ROWS
    r = mb.device_time_case("qwen3_30b_a3b", 128, 64, 16, 4, "4bit", 1, 3, 2,
                            np.random.default_rng(1),
                            {"r2": {"zmlx.kernels.quant_kernels.SPLIT_ROWS": 2}})  # fmt: skip
    assert seen == [before, before, 2] and qk.SPLIT_ROWS == before
    assert r["device_time"]["r2"]["settings"] == {"zmlx.kernels.quant_kernels.SPLIT_ROWS": 2}
    assert r["device_time"]["r2"]["speedup"] == 1.0  # 600 us a chain, as stock's
