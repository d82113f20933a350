"""The split-row matvecs (``quant_kernels.SPLIT_WARPS``, 8 by default): each row's words
shared by the warps of a group, partial sums added in shared memory; gathered (MoE gate/up,
with biases and GPT-OSS's clamped SwiGLU), dense (``qmv`` and its fused forms, the q/k/v
projection) and the combine with each expert split across warps (``COMBINE_WARPS``).

The sums run in another order than the one-warp-a-row kernel's, so the two are compared within
a few units in the last place of the output dtype (kernels on the CPU SIMT emulator), in 4- and
8-bit affine and mxfp4, with row counts that leave the last group's rows partly empty, rows
that fill the last round of lanes only partly, one and several tokens, and x per token or per
slot. Settings that change only the order of loads are bit-identical. Shapes the split does
not divide run the usual kernel; the real shapes of the four decode families compile.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, zero_experts
from test_batched_loads import DTYPES, IDS, assert_close, assert_identical, both
from test_quant import deq64, f64, fmt, run_kernel
from zmlx.core import syntax
from zmlx.core.kernel import capture
from zmlx.kernels import moe, quant
from zmlx.kernels import moe_kernels as mk
from zmlx.kernels import quant_kernels as qk
from zmlx.kernels.moe_specs import random_indices
from zmlx.kernels.quant_specs import random_qweight, random_x


def gate_up_case(rng, dtype, fmt_, e, t, k, d, n):
    """Random ``x (t, d)``, gate and up experts ``(e, n, d)`` in format ``fmt_`` (group size,
    bits, mode) and ``k`` experts a token: the inputs of ``gather_qmv_swiglu``."""
    gs, bits, mode = fmt_
    x = random_x(rng, (t, d), dtype)
    g = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    u = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    return x, g, u, random_indices(rng, (t,), k, e)


def split(monkeypatch, fn, *args, warps=4, **kw):
    """``fn`` with one warp a row and with rows split across ``warps`` warps."""
    return both(monkeypatch, fn, *args, attr="SPLIT_WARPS", values=(0, warps), **kw)


@pytest.fixture(autouse=True)
def _word_kernels(monkeypatch):
    """These kernels are what the tile kernel replaces where it applies (TILE): off here."""
    monkeypatch.setattr(qk, "TILE", False)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, d, warps", [("a4g64", 1024, 4), ("a8g64", 512, 4),
                                            ("mxfp4", 1024, 4), ("a4g32", 512, 2),
                                            ("a4g64", 2048, 8), ("mxfp4", 1920, 4),
                                            ("a4g64", 1920, 2)])  # fmt: skip
@pytest.mark.parametrize("t", [1, 3])
def test_split_rows_match_one_warp_a_row(name, d, warps, t, dtype, monkeypatch, rng):
    gs, bits, mode = fmt(name)
    monkeypatch.setattr(qk, "SPLIT_WARPS", warps)
    assert qk.split_warps(d, bits, gs) == warps
    e, k, n = 6, 4, 13  # 13 rows: the last group of 4 has one
    x = random_x(rng, (t, d), dtype)
    wg = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    assert_close(*split(monkeypatch, moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode,
                        warps=warps))  # fmt: skip
    assert_close(*split(monkeypatch, moe.gather_qmv, x, *wg, idx, gs, bits, mode, warps=warps))
    xs = random_x(rng, (t, k, d), dtype)  # one x row per slot
    assert_close(*split(monkeypatch, moe.gather_qmv, xs, *wg, idx, gs, bits, mode, warps=warps))


def test_split_needs_whole_groups_and_mostly_full_rounds(monkeypatch):
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)
    assert qk.split_warps(2048, 4, 64) == 4
    monkeypatch.setattr(qk, "SPLIT_WARPS", 0)
    assert qk.split_warps(2048, 4, 64) == 0  # off
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)
    assert qk.split_warps(768, 4, 64) == 3  # 96 words: 4 parts fill 24 of 32 lanes, 3 fill 32
    assert qk.split_warps(192, 4, 64) == 0  # 3 parts: 8 words of 32; 2 parts: half groups
    assert qk.split_warps(1920, 4, 64) == 2  # 3 parts: 80 words, 83% of 3 rounds
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    assert qk.split_warps(2880, 4, 32) == 6  # GPT-OSS: 60 words a part, 94% of 2 rounds
    assert qk.split_ways(192, 4, 64, 4, least=1) == 1
    monkeypatch.setattr(qk, "SPLIT_MIN_FILL", 1.0)
    assert qk.split_warps(2880, 4, 32) == 0
    with pytest.raises(ValueError, match="no split-row kernel"):
        qk.split_matvec_kernel("qkv", "affine", False)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("t", [1, 2])
def test_split_rows_with_bias_and_clamped_swiglu(t, dtype, monkeypatch, rng):
    """GPT-OSS's experts: mxfp4, a bias per expert and row, the clamped SwiGLU, and rows that
    fill the last round of lanes only partly (1920 inputs in 4 parts of 60 words)."""
    gs, bits, mode = fmt("mxfp4")
    e, k, n, d = 5, 4, 7, 1920
    x = random_x(rng, (t, d), dtype)
    wg = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    bg, bu = random_x(rng, (e, n), dtype), random_x(rng, (e, n), dtype)
    idx = random_indices(rng, (t,), k, e)
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    assert qk.split_warps(d, bits, gs) == 4
    with capture("cuda") as caught:
        moe.gather_qmv_swiglu(x, *wg, *wu, idx, gs, bits, mode, bg, bu, "swiglu_oai")
    assert caught[0].kernel.name == "qmv_swiglu_oai_mxfp4_gather_split_bias"
    for act in ("swiglu_oai", "swiglu"):
        assert_close(*split(monkeypatch, moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode,
                            bg, bu, act, warps=8))  # fmt: skip
    assert_close(*split(monkeypatch, moe.gather_qmv, x, *wg, idx, gs, bits, mode, bg, warps=8))


@pytest.mark.parametrize("name", ["a4g64", "mxfp4"])
def test_loads_of_all_rows_first_change_nothing(name, monkeypatch, rng):
    """``SPLIT_ALL_ROWS``: the loads of a group's rows before the math, or a row at a time:
    the same sums in the same order, bit-identical (gate/up and the combine, split in two)."""
    gs, bits, mode = fmt(name)
    e, k, t, d, i = 6, 4, 2, 1024, 512
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)
    monkeypatch.setattr(mk, "COMBINE_WARPS", 8)
    x = random_x(rng, (t, d), mx.bfloat16)
    wg = random_qweight(rng, (e, 13, d), mx.bfloat16, bits, gs, mode)
    wu = random_qweight(rng, (e, 13, d), mx.bfloat16, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    assert_identical(*both(monkeypatch, moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode,
                           attr="SPLIT_ALL_ROWS", values=(True, False)))  # fmt: skip
    h = random_x(rng, (t, k, i), mx.bfloat16)
    wd = random_qweight(rng, (e, 37, i), mx.bfloat16, bits, gs, mode)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(mx.bfloat16)
    assert_identical(*both(monkeypatch, moe.gather_qmv_combine, h, *wd, idx, wts, gs, bits, mode,
                           attr="SPLIT_ALL_ROWS", values=(True, False)))  # fmt: skip


@pytest.mark.parametrize("warps", [4, 8])
def test_qwen3_gate_up_compiles(warps, monkeypatch):
    monkeypatch.setattr(qk, "SPLIT_WARPS", warps)
    d, i_dim, e, k, gs, bits = 2048, 768, 128, 8, 64, 4
    x = mx.zeros((1, d), dtype=mx.bfloat16)
    idx = mx.zeros((1, k), dtype=mx.uint32)
    g, u = zero_experts(e, i_dim, d, bits, gs), zero_experts(e, i_dim, d, bits, gs)
    assert_compiles(lambda x: moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, "affine"), x)


def test_qwen3_down_combine_compiles(monkeypatch):
    monkeypatch.setattr(mk, "SPLIT_EXPERTS", True)
    d, i_dim, e, k, gs, bits = 2048, 768, 128, 8, 64, 4
    h = mx.zeros((1, k, i_dim), dtype=mx.bfloat16)
    idx = mx.zeros((1, k), dtype=mx.uint32)
    wts = mx.zeros((1, k), dtype=mx.bfloat16)
    dn = zero_experts(e, d, i_dim, bits, gs)
    with capture("cuda") as caught:
        moe.gather_qmv_combine(h, *dn, idx, wts, gs, bits, "affine")
    assert [c.kernel.name for c in caught] == ["qmv_combine_affine_exact_split"]
    assert caught[0].threadgroup == (32 * k, 1, 1)
    assert_compiles(lambda h: moe.gather_qmv_combine(h, *dn, idx, wts, gs, bits, "affine"), h)


# (hidden, moe intermediate, experts, top-k, format): LFM2-8B-A1B, GLM-4.7-Flash, GPT-OSS-20B
FAMILIES = {"lfm2": (2048, 1792, 32, 4, "a4g64"), "glm": (2048, 1536, 64, 4, "a4g64"),
            "gpt_oss": (2880, 2880, 32, 4, "mxfp4")}  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
def test_top4_families_split_and_compile(family, monkeypatch):
    """The real shapes of the top-4 families: gate/up split (GPT-OSS: 6 parts of 2880, bias,
    clamped SwiGLU) and each expert's down projection split in two; both compile."""
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    monkeypatch.setattr(mk, "COMBINE_WARPS", 8)
    d, i_dim, e, k, name = FAMILIES[family]
    gs, bits, mode = fmt(name)
    oai = family == "gpt_oss"
    x = mx.zeros((1, d), dtype=mx.bfloat16)
    idx = mx.zeros((1, k), dtype=mx.uint32)
    g, u = zero_experts(e, i_dim, d, bits, gs, mode), zero_experts(e, i_dim, d, bits, gs, mode)
    bias = [mx.zeros((e, i_dim), dtype=mx.bfloat16)] * 2 if oai else [None, None]
    act = "swiglu_oai" if oai else "swiglu"

    def gate_up(x):
        return moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, mode, *bias, act)

    h = mx.zeros((1, k, i_dim), dtype=mx.bfloat16)
    wts = mx.zeros((1, k), dtype=mx.bfloat16)
    dn = zero_experts(e, d, i_dim, bits, gs, mode)
    dbias = mx.zeros((e, d), dtype=mx.bfloat16) if oai else None

    def down(h):
        return moe.gather_qmv_combine(h, *dn, idx, wts, gs, bits, mode, dbias)

    with capture("cuda") as caught:
        gate_up(x)
        down(h)
    assert [c.kernel.name.split("_gather")[0].split("_exact")[0] for c in caught] == [
        f"qmv_{act}_{mode}",
        f"qmv_combine_{mode}",
    ]
    assert caught[0].threadgroup == (32 * (6 if oai else 8), 1, 1)
    assert caught[1].threadgroup == (32 * k * 2, 1, 1)
    assert_compiles(gate_up, x)
    assert_compiles(down, h)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", ["a4g64", "a8g32", "mxfp4"])
@pytest.mark.parametrize("t, k", [(1, 8), (3, 4)])
def test_combine_with_experts_side_by_side_is_identical(name, t, k, dtype, monkeypatch, rng):
    """``moe_kernels.SPLIT_EXPERTS``: each expert's projection is the same warp sum as in the
    one-warp kernel and the weighted sum runs in the same order, so results are bit-identical,
    with a bias, a gated shared expert and the residual stream too."""
    gs, bits, mode = fmt(name)
    e, d, i = 9, 37, 192  # 37 rows: the last group of 4 has one; 24 or 48 words a row
    h = random_x(rng, (t, k, i), dtype)
    wd = random_qweight(rng, (e, d, i), dtype, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(dtype)
    extra = [{}, {"bias": random_x(rng, (e, d), dtype)},
             {"shared": random_x(rng, (t, d), dtype), "shared_gate": random_x(rng, (t, 1), dtype)},
             {"residual": (random_x(rng, (t, d), dtype), random_x(rng, (t, d), dtype))}]  # fmt: skip
    monkeypatch.setattr(mk, "COMBINE_WARPS", 0)  # one warp an expert
    for kw in extra:
        got = both(monkeypatch, moe.gather_qmv_combine, h, *wd, idx, wts, gs, bits, mode,
                   attr="SPLIT_EXPERTS", values=(False, True), module=mk, **kw)  # fmt: skip
        assert_identical(*got)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", ["a4g64", "mxfp4"])
@pytest.mark.parametrize("t, k", [(1, 4), (3, 2)])
def test_combine_with_each_expert_split_across_warps(name, t, k, dtype, monkeypatch, rng):
    """``moe_kernels.COMBINE_WARPS`` = 8 with K = 4 (2) experts: each expert's 512 inputs in 2
    slices of one warp each (4 slices of 16 words would leave half the lanes idle), the
    partial sums added in order, then rounded as before:
    within last-place differences of the one-warp kernel, with a bias, a gated shared expert
    and the residual stream."""
    gs, bits, mode = fmt(name)
    e, d, i = 9, 37, 512
    monkeypatch.setattr(mk, "COMBINE_WARPS", 8)
    h = random_x(rng, (t, k, i), dtype)
    wd = random_qweight(rng, (e, d, i), dtype, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(dtype)
    with capture("cuda") as caught:
        moe.gather_qmv_combine(h, *wd, idx, wts, gs, bits, mode)
    assert caught[0].threadgroup == (32 * k * 2, 1, 1)
    extra = [{}, {"bias": random_x(rng, (e, d), dtype)},
             {"shared": random_x(rng, (t, d), dtype), "shared_gate": random_x(rng, (t, 1), dtype)},
             {"residual": (random_x(rng, (t, d), dtype), random_x(rng, (t, d), dtype))}]  # fmt: skip
    for kw in extra:
        assert_close(*both(monkeypatch, moe.gather_qmv_combine, h, *wd, idx, wts, gs, bits, mode,
                           attr="SPLIT_EXPERTS", values=(False, True), module=mk, **kw))  # fmt: skip


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_other_rows_per_group(rows, monkeypatch, rng):
    """The rows a group owns (``SPLIT_ROWS`` of both kernels) change nothing but the launch."""
    gs, bits, mode = fmt("a4g64")
    e, k, t, d, i = 6, 4, 2, 1024, 192
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)
    x = random_x(rng, (t, d), mx.bfloat16)
    wg = random_qweight(rng, (e, 13, d), mx.bfloat16, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    assert_identical(*both(monkeypatch, moe.gather_qmv, x, *wg, idx, gs, bits, mode,
                           attr="SPLIT_ROWS", values=(4, rows)))  # fmt: skip
    h = random_x(rng, (t, k, i), mx.bfloat16)
    wd = random_qweight(rng, (e, 37, i), mx.bfloat16, bits, gs, mode)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(mx.bfloat16)
    for attr in ("SPLIT_ROWS", "SPLIT_ROWS_FEW"):  # K = 4 takes the second
        assert_identical(*both(monkeypatch, moe.gather_qmv_combine, h, *wd, idx, wts, gs, bits,
                               mode, attr=attr, values=(4, rows), module=mk))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, d", [("a4g64", 1024), ("a8g32", 512), ("mxfp4", 1920)])
@pytest.mark.parametrize("t", [1, 3])
def test_dense_matvecs_split_rows(name, d, t, dtype, monkeypatch, rng):
    """``SPLIT_DENSE``: ``qmv`` and its fused forms (bias, residual, SwiGLU) on the split
    kernel with ``ex = 0``, within last-place differences of the one-warp kernel."""
    gs, bits, mode = fmt(name)
    n = 13
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    assert qk.split_warps(d, bits, gs) > 1
    x = random_x(rng, (t, d), dtype)
    w = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    wu = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    bias, res = random_x(rng, (n,), dtype), random_x(rng, (t, n), dtype)
    calls = {"qmv": (quant.qmv, (x, *w, gs, bits, mode)),
             "qmv_bias": (quant.qmv_bias, (x, *w, bias, gs, bits, mode)),
             "qmv_residual": (quant.qmv_residual, (x, *w, res, gs, bits, mode)),
             "qmv_swiglu": (quant.qmv_swiglu, (x, *w, *wu, gs, bits, mode))}  # fmt: skip
    names = {"qmv": "_split", "qmv_bias": "_split_bias", "qmv_residual": "_split_res",
             "qmv_swiglu": "_split"}  # fmt: skip
    for op, (fn, args) in calls.items():
        with capture("cuda") as caught:
            fn(*args)
        assert names[op] in caught[0].kernel.name and "gather" not in caught[0].kernel.name
        assert_close(*both(monkeypatch, fn, *args, attr="SPLIT_DENSE", values=(False, True)))


@pytest.mark.parametrize("n, d", [(4096, 2048), (2048, 4096), (512, 2048)])
def test_qwen3_attention_projections_split_and_compile(n, d, monkeypatch):
    """Qwen3-30B-A3B's q, o and k/v projections: the dense split kernel compiles."""
    monkeypatch.setattr(qk, "SPLIT_DENSE", True)
    x = mx.zeros((1, d), dtype=mx.bfloat16)
    w = zero_experts(1, n, d)
    w = tuple(a[0] for a in w)
    assert assert_compiles(lambda x: quant.qmv(x, *w, 64, 4, "affine"), x, only="split")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, d", [("a4g64", 1024), ("mxfp4", 1920)])
@pytest.mark.parametrize("bias", [False, True])
def test_qkv_projection_split_rows(name, d, bias, dtype, monkeypatch, rng):
    """``qkv_proj`` on the split kernel (q's, k's and v's rows in one launch, 13, 5 and 6
    rows: last groups partly empty), within last-place differences of the one-warp kernel."""
    gs, bits, mode = fmt(name)
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    x = random_x(rng, (2, d), dtype)
    ws = [random_qweight(rng, (n, d), dtype, bits, gs, mode) for n in (13, 5, 6)]
    lins = [random_x(rng, (n,), dtype) for n in (13, 5, 6)] if bias else [None] * 3
    args = (x, *ws[0], *ws[1], *ws[2], gs, bits, mode, *lins)
    with capture("cuda") as caught:
        quant.qkv_proj(*args)
    assert caught[0].kernel.name == f"qmv_qkv_{mode}_split" + ("_bias" if bias else "")
    assert_close(*both(monkeypatch, quant.qkv_proj, *args, attr="SPLIT_DENSE",
                       values=(False, True)))  # fmt: skip


def test_qwen3_qkv_projection_split_compiles(monkeypatch):
    monkeypatch.setattr(qk, "SPLIT_DENSE", True)
    x = mx.zeros((1, 2048), dtype=mx.bfloat16)
    ws = [tuple(a[0] for a in zero_experts(1, n, 2048)) for n in (4096, 512, 512)]
    assert assert_compiles(lambda x: quant.qkv_proj(x, *ws[0], *ws[1], *ws[2], 64, 4, "affine"),
                           x, only="split")  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, rows", [("a4g64", 4), ("a8g32", 2), ("mxfp4", 8)])
def test_transposed_warp_sums_are_bit_identical(name, rows, dtype, monkeypatch, rng):
    """``quant_kernels.TRANSPOSED_SUMS``: the split kernels' per-warp sums of R rows (x 2 for
    gate and up; 16 values at R = 8) in one butterfly add the same lanes in the same tree as
    a warp sum per value: gate/up and the combine are bit-identical either way."""
    gs, bits, mode = fmt(name)
    monkeypatch.setattr(qk, "MMA_GATE_UP", False)  # gate/up on the split kernel
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)
    monkeypatch.setattr(qk, "SPLIT_ROWS", rows)
    monkeypatch.setattr(mk, "SPLIT_ROWS", rows)
    e, t, k, d, i = 6, 2, 3, 512, 37  # 37 rows: the last group partly empty
    x, g, u, idx = gate_up_case(rng, dtype, (gs, bits, mode), e, t, k, d, i)
    got = both(monkeypatch, moe.gather_qmv_swiglu, x, *g, *u, idx, gs, bits, mode,
               attr="TRANSPOSED_SUMS", values=(False, True))  # fmt: skip
    assert_identical(*got)
    h = random_x(rng, (t, k, d), dtype)
    dn = random_qweight(rng, (e, i, d), dtype, bits, gs, mode)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(dtype)
    got = both(monkeypatch, moe.gather_qmv_combine, h, *dn, idx, wts, gs, bits, mode,
               attr="TRANSPOSED_SUMS", values=(False, True))  # fmt: skip
    assert_identical(*got)
    names = set()
    for v in (False, True):  # the setting reaches the cached kernels' text
        monkeypatch.setattr(qk, "TRANSPOSED_SUMS", v)
        with capture("cuda") as caught:
            moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, mode)
        names.add(caught[0].kernel.mlx_name("cuda"))
    assert len(names) == 2


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", ["a4g64", "a4g32", "a8g64"])
def test_paired_units_match_the_single_element_decoding(name, dtype, monkeypatch, rng):
    """``quant_kernels.PAIRED_UNITS``: words decoded as ``C + q`` two elements a shift (4 bits)
    agree with ``1 + q / 2^BITS`` within a few units in the last place, in the split gate/up,
    the one-warp matvec and the combine; the setting reaches the cached kernels."""
    gs, bits, mode = fmt(name)
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)
    e, t, k, d, i = 5, 2, 2, 512, 24
    x, g, u, idx = gate_up_case(rng, dtype, (gs, bits, mode), e, t, k, d, i)
    assert_close(*both(monkeypatch, moe.gather_qmv_swiglu, x, *g, *u, idx, gs, bits, mode,
                       attr="PAIRED_UNITS", values=(False, True)))  # fmt: skip
    w = random_qweight(rng, (i, d), dtype, bits, gs, mode)
    assert_close(*both(monkeypatch, quant.qmv, x, *w, gs, bits, mode, attr="PAIRED_UNITS",
                       values=(False, True)))  # fmt: skip
    h = random_x(rng, (t, k, d), dtype)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(dtype)
    assert_close(*both(monkeypatch, moe.gather_qmv_combine, h, *g, idx, wts, gs, bits, mode,
                       attr="PAIRED_UNITS", values=(False, True)))  # fmt: skip


def test_launch_bounds_compile_and_name_the_kernel(monkeypatch):
    """``SPLIT_MIN_GROUPS`` / ``COMBINE_MIN_GROUPS``: the launch records the bound, and the
    CUDA unit MLX would build (the kernel's name defined as ``__launch_bounds__`` plus the
    name, undefined in the body before MLX takes the kernel's address) compiles."""
    monkeypatch.setattr(qk, "MMA_GATE_UP", False)  # gate/up on the split kernel
    monkeypatch.setattr(qk, "SPLIT_MIN_GROUPS", 5)
    monkeypatch.setattr(mk, "COMBINE_MIN_GROUPS", 4)
    d, i_dim, e, k = 2048, 768, 128, 8
    x = mx.zeros((1, d), dtype=mx.bfloat16)
    idx = mx.zeros((1, k), dtype=mx.uint32)
    g, u = zero_experts(e, i_dim, d, 4, 64, "affine"), zero_experts(e, i_dim, d, 4, 64, "affine")
    dn = zero_experts(e, d, i_dim, 4, 64, "affine")
    h = mx.zeros((1, k, i_dim), dtype=mx.bfloat16)
    wts = mx.zeros((1, k), dtype=mx.bfloat16)

    def block(x, h):
        moe.gather_qmv_swiglu(x, *g, *u, idx, 64, 4, "affine")
        return moe.gather_qmv_combine(h, *dn, idx, wts, 64, 4, "affine")

    with capture("cuda") as caught:
        block(x, h)
    assert [c.min_groups for c in caught] == [5, 4]
    src = syntax.cuda_source(caught[0])
    assert "__launch_bounds__(256, 5)" in src and "#undef custom_kernel_" in src
    assert_compiles(block, x, h)


@pytest.mark.parametrize("name", ["a4g64", "a4g128", "a8g64"])
def test_paired_units_are_as_accurate(name, monkeypatch, rng):
    """Against a float64 reference (float32 x and scales, a 2048-input row as in Qwen3), the
    paired decoding's error is no larger than the single-element decoding's: the even 4-bit
    elements enter as q exactly, the odd ones as 16 + q (a first form with 256 + q had 7x
    the error)."""
    gs, bits, mode = fmt(name)
    d, n = 2048, 48
    x = random_x(rng, (1, d), mx.float32)
    w, s, b = random_qweight(rng, (n, d), mx.bfloat16, bits, gs, mode)
    s, b = s.astype(mx.float32), b.astype(mx.float32)
    want = f64(x) @ deq64(w, s, b, gs, bits, mode).T
    rms = []
    for paired in (False, True):
        monkeypatch.setattr(qk, "PAIRED_UNITS", paired)
        got = np.array(run_kernel(quant.qmv, x, w, s, b, gs, bits, mode), dtype=np.float64)
        rms.append(float(np.sqrt(np.mean((got - want) ** 2))))
    assert rms[1] <= 1.25 * rms[0], rms


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, rows", [("a4g64", 4), ("mxfp4", 2)])
def test_lane_rows_are_bit_identical(name, rows, dtype, monkeypatch, rng):
    """``quant_kernels.LANE_ROWS``: lane r of the first warp finishing row r (partial sums
    added in warp order; the combine's experts in expert order, with a bias, the residual)
    gives what lane 0 finishing every row gives, in gate/up, the dense q/k/v projection and
    the combine; the setting reaches the cached kernels."""
    gs, bits, mode = fmt(name)
    monkeypatch.setattr(qk, "SPLIT_WARPS", 4)
    monkeypatch.setattr(qk, "SPLIT_ROWS", rows)
    monkeypatch.setattr(mk, "SPLIT_ROWS", rows)
    monkeypatch.setattr(mk, "SPLIT_ROWS_FEW", rows)
    e, t, k, d, i = 6, 2, 3, 512, 37
    x, g, u, idx = gate_up_case(rng, dtype, (gs, bits, mode), e, t, k, d, i)
    assert_identical(*both(monkeypatch, moe.gather_qmv_swiglu, x, *g, *u, idx, gs, bits, mode,
                           attr="LANE_ROWS", values=(False, True)))  # fmt: skip
    h = random_x(rng, (t, k, 192), dtype)  # 37 rows of 192 inputs
    dn = random_qweight(rng, (e, i, 192), dtype, bits, gs, mode)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(dtype)
    res = (random_x(rng, (t, i), dtype), random_x(rng, (t, i), dtype))
    for kw in ({}, {"bias": random_x(rng, (e, i), dtype)}, {"residual": res}):
        assert_identical(*both(monkeypatch, moe.gather_qmv_combine, h, *dn, idx, wts, gs, bits,
                               mode, attr="LANE_ROWS", values=(False, True), **kw))  # fmt: skip
    ws = [random_qweight(rng, (n, d), dtype, bits, gs, mode) for n in (13, 5, 6)]
    lins = [random_x(rng, (n,), dtype) for n in (13, 5, 6)]
    assert_identical(*both(monkeypatch, quant.qkv_proj, x, *ws[0], *ws[1], *ws[2], gs, bits,
                           mode, *lins, attr="LANE_ROWS", values=(False, True)))  # fmt: skip
    names = set()
    for v in (False, True):
        monkeypatch.setattr(qk, "LANE_ROWS", v)
        with capture("cuda") as caught:
            moe.gather_qmv_combine(h, *dn, idx, wts, gs, bits, mode)
        names.add(caught[0].kernel.mlx_name("cuda"))
    assert len(names) == 2
