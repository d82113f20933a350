"""The MoE down projection and combine in two launches (``moe_kernels.COMBINE_TWO_PASS_BELOW``),
on the CPU SIMT emulator: each expert's projection by the split-row gathered matvec, then the
exact combine; within last-place differences of the fused kernel (float32 sums in another
order before the same roundings), with a bias, a gated shared expert and the residual stream.
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from kernel_checks import assert_compiles, zero_experts
from test_batched_loads import DTYPES, IDS, assert_close, both
from test_quant import fmt
from zmlx.core.kernel import capture
from zmlx.kernels import moe
from zmlx.kernels import moe_kernels as mk
from zmlx.kernels import quant_kernels as qk
from zmlx.kernels.moe_specs import random_indices
from zmlx.kernels.quant_specs import random_qweight, random_x


@pytest.fixture(autouse=True)
def _split(monkeypatch):
    monkeypatch.setattr(qk, "TILE", False)
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", ["a4g64", "mxfp4"])
@pytest.mark.parametrize("t, k", [(1, 4), (3, 2)])
def test_combine_in_two_launches(name, t, k, dtype, monkeypatch, rng):
    gs, bits, mode = fmt(name)
    e, d, i = 9, 37, 512
    h = random_x(rng, (t, k, i), dtype)
    wd = random_qweight(rng, (e, d, i), dtype, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(dtype)
    monkeypatch.setattr(mk, "COMBINE_TWO_PASS_BELOW", 8)
    res = (random_x(rng, (t, d), dtype), random_x(rng, (t, d), dtype))
    with capture("cuda") as caught:
        moe.gather_qmv_combine(h, *wd, idx, wts, gs, bits, mode, residual=res)
    names = [c.kernel.name for c in caught]
    assert (
        names[0].startswith(f"qmv_plain_{mode}_gather_split")
        and names[1] == "moe_combine_exact_res"
    )
    extra = [{}, {"bias": random_x(rng, (e, d), dtype)},
             {"shared": random_x(rng, (t, d), dtype), "shared_gate": random_x(rng, (t, 1), dtype)},
             {"residual": res},
             {"shared": random_x(rng, (t, d), dtype), "residual": res}]  # fmt: skip
    for kw in extra:
        assert_close(*both(monkeypatch, moe.gather_qmv_combine, h, *wd, idx, wts, gs, bits, mode,
                           attr="COMBINE_TWO_PASS_BELOW", values=(0, 8), module=mk, **kw))  # fmt: skip


def test_two_launches_only_below_the_bound(monkeypatch, rng):
    """K = 8 (at the bound) keeps the fused kernel; rows the split does not divide keep it too."""
    gs, bits, mode = fmt("a4g64")
    monkeypatch.setattr(mk, "COMBINE_TWO_PASS_BELOW", 8)
    wd = random_qweight(rng, (9, 37, 512), mx.bfloat16, bits, gs, mode)
    for k, i in ((8, 512), (4, 64)):
        h = random_x(rng, (1, k, i), mx.bfloat16)
        w = wd if i == 512 else random_qweight(rng, (9, 37, i), mx.bfloat16, bits, gs, mode)
        idx = random_indices(rng, (1,), k, 9)
        wts = mx.full((1, k), 1.0 / k, dtype=mx.bfloat16)
        with capture("cuda") as caught:
            moe.gather_qmv_combine(h, *w, idx, wts, gs, bits, mode)
        assert len(caught) == 1 and caught[0].kernel.name.startswith("qmv_combine_")


def test_glm_two_launches_compile(monkeypatch):
    """GLM-4.7-Flash's down projection (1536 inputs, 6 warps a row) and the combine with the
    residual stream, in two launches, compile for CUDA."""
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    monkeypatch.setattr(mk, "COMBINE_TWO_PASS_BELOW", 8)
    e, d, i, k = 64, 2048, 1536, 4
    dn = zero_experts(e, d, i, 4, 64, "affine")
    idx = mx.zeros((1, k), dtype=mx.uint32)
    wts = mx.zeros((1, k), dtype=mx.float32)
    res = (mx.zeros((1, d), dtype=mx.bfloat16), mx.zeros((1, d), dtype=mx.bfloat16))
    h = mx.zeros((1, k, i), dtype=mx.bfloat16)

    def down(h):
        return moe.gather_qmv_combine(h, *dn, idx, wts, 64, 4, "affine", residual=res)

    with capture("cuda") as caught:
        down(h)
    assert [c.kernel.name for c in caught][1] == "moe_combine_exact_res"
    assert_compiles(down, h)
