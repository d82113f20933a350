"""Two launch options of the MoE expert kernels, on the CPU SIMT emulator:

- the L2 prefetch (``quant_kernels.PREFETCH``): the gate/up kernel hints the down
  projection's rows of the selected experts into L2 (``gather_qmv_swiglu(prefetch=...)``);
  a hint changes no result, so outputs are bit-identical with and without it;
- the combine in two launches (``moe_kernels.COMBINE_TWO_PASS_BELOW``): each expert's
  projection by the split-row gathered matvec, then the exact combine; within last-place
  differences of the fused kernel (float32 sums in another order before the same roundings),
  with a bias, a gated shared expert and the residual stream.
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from kernel_checks import assert_compiles, zero_experts
from test_batched_loads import DTYPES, IDS, assert_close, assert_identical, both
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


def _experts(rng, name, dtype, e=7, i=13, d=512, oai=False):
    gs, bits, mode = fmt(name)
    g = random_qweight(rng, (e, i, d), dtype, bits, gs, mode)
    u = random_qweight(rng, (e, i, d), dtype, bits, gs, mode)
    dn = random_qweight(rng, (e, d, 256), dtype, bits, gs, mode)  # the next projection
    bias = [random_x(rng, (e, i), dtype) for _ in range(2)] if oai else [None, None]
    dbias = random_x(rng, (e, d), dtype) if oai else None
    return (gs, bits, mode), g, u, bias, dn, dbias


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, oai", [("a4g64", False), ("a8g32", False), ("mxfp4", True)])
@pytest.mark.parametrize("at", ["start", "end"])
@pytest.mark.parametrize("t", [1, 3])
def test_prefetch_changes_nothing(name, oai, at, t, dtype, monkeypatch, rng):
    (gs, bits, mode), g, u, bias, dn, dbias = _experts(rng, name, dtype, oai=oai)
    x = random_x(rng, (t, 512), dtype)
    idx = random_indices(rng, (t,), 4, 7)
    act = "swiglu_oai" if oai else "swiglu"
    pf = (*dn, dbias)
    monkeypatch.setattr(qk, "PREFETCH", at)
    with capture("cuda") as caught:
        moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, mode, *bias, act, prefetch=pf)
    n = sum(a is not None for a in pf)
    assert caught[0].kernel.name.endswith(f"_pf{n}{at}")
    assert_identical(*both(monkeypatch, moe.gather_qmv_swiglu, x, *g, *u, idx, gs, bits, mode,
                           *bias, act, prefetch=pf, attr="PREFETCH", values=("", at)))  # fmt: skip


def test_prefetch_off_and_bad_arrays(monkeypatch, rng):
    (gs, bits, mode), g, u, _, dn, _ = _experts(rng, "a4g64", mx.bfloat16)
    x = random_x(rng, (1, 512), mx.bfloat16)
    idx = random_indices(rng, (1,), 4, 7)
    monkeypatch.setattr(qk, "PREFETCH", "")
    with capture("cuda") as caught:
        moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, mode, prefetch=dn)
    assert "_pf" not in caught[0].kernel.name
    with pytest.raises(
        ValueError, match=r"\[gather_qmv_swiglu\] expected prefetch arrays of shape \(7"
    ):
        moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, mode, prefetch=(dn[0][:3],))
    with pytest.raises(TypeError, match=r"\[gather_qmv_swiglu\] expected 'prefetch' as a tuple"):
        moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, mode, prefetch=dn[0])
    with pytest.raises(ValueError, match="gathered split kernel"):
        qk.split_matvec_kernel("plain", "affine", False, gather=False, prefetch=1)
    with pytest.raises(ValueError, match="prefetch_at"):
        qk.split_matvec_kernel("plain", "affine", False, prefetch=1, prefetch_at="middle")


@pytest.mark.parametrize("at", ["start", "end"])
def test_qwen3_gate_up_with_prefetch_compiles(at, monkeypatch):
    """Qwen3-30B-A3B's gate/up (8 warps a row) hinting its down projection's words, scales and
    biases into L2 compiles for CUDA."""
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    monkeypatch.setattr(qk, "PREFETCH", at)
    e, d, i = 128, 2048, 768
    g, u = zero_experts(e, i, d, 4, 64, "affine"), zero_experts(e, i, d, 4, 64, "affine")
    dn = zero_experts(e, d, i, 4, 64, "affine")
    idx = mx.zeros((1, 8), dtype=mx.uint32)
    x = mx.zeros((1, d), dtype=mx.bfloat16)
    assert_compiles(lambda x: moe.gather_qmv_swiglu(x, *g, *u, idx, 64, 4, "affine",
                                                    prefetch=dn), x)  # fmt: skip


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
