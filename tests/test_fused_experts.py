"""``moe_experts`` in ONE launch (:mod:`zmlx.kernels.fused_experts`): gate/up + activation and
the down projection + exact combine in one grid, groups ordered by tickets.

On the CPU SIMT emulator (groups run one after another, last to first) the fused kernel must
give the two-launch path's output bit for bit, in every prefetch form, with a shared expert,
its gate, the residual stream, GPT-OSS's clamped activation and biases; ordering by group
index must fail there (a combine group waits for gate/up groups not yet run). The ticket and
wait primitives get their own small kernel. NVRTC compiles the kernel at Qwen3-30B-A3B's
shape where available, and on CUDA the fused kernel matches the two launches exactly and
leaves its counters at zero.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator, launches, zero_experts
from zmlx.core import Kernel, emulate, syntax
from zmlx.core.kernel import launch_count
from zmlx.kernels import fused_experts as fe
from zmlx.kernels import moe
from zmlx.kernels import moe_kernels as mk
from zmlx.kernels import quant_kernels as qk
from zmlx.testing import assert_close

# Each test enters the emulator itself, or records launches (which the emulator would run).
pytestmark = pytest.mark.no_emulate

needs_emulator = pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
needs_nvrtc = pytest.mark.skipif(
    not syntax.cuda_available(), reason="needs NVRTC, CUDA headers and ZMLX_MLX_CUDA_INCLUDE"
)

# Qwen3-30B-A3B: D, I, E, K (4-bit affine, groups of 64).
QWEN3 = (2048, 768, 128, 8)


@pytest.fixture(autouse=True)
def _settings(monkeypatch):
    """The settings the fused path depends on, at their defaults (a sweep elsewhere in the
    process must not change which path a shape takes), the fused kernel switched on."""
    monkeypatch.setattr(fe, "FUSED_EXPERTS", True)
    monkeypatch.setattr(fe, "FUSED_PREFETCH", "l2")
    monkeypatch.setattr(fe, "FUSED_ORDER", "tickets")
    monkeypatch.setattr(qk, "SPLIT_WARPS", 8)
    monkeypatch.setattr(qk, "SPLIT_ALL_ROWS", True)
    monkeypatch.setattr(qk, "TILE", False)
    monkeypatch.setattr(qk, "MMA_GATE_UP", False)
    monkeypatch.setattr(mk, "SPLIT_EXPERTS", True)
    monkeypatch.setattr(mk, "COMBINE_TWO_PASS_BELOW", 0)
    monkeypatch.delenv("ZMLX_EMULATOR_ORDER", raising=False)


def _experts(e, n, m, bits, gs, mode):
    """``e`` random experts ``(n, m)`` quantized from bfloat16 (bfloat16 scales and biases;
    mxfp4: uint8 scales, no biases)."""
    w = (mx.random.normal((e, n, m)) * m**-0.5).astype(mx.bfloat16)
    q = mx.quantize(w, group_size=gs, bits=bits, mode=mode)
    return (q[0], q[1], q[2]) if mode == "affine" else (q[0], q[1], None)


def _block(rng, t, k, e, d, n, bits=4, gs=64, mode="affine", extra=""):
    """Arguments of ``moe.moe_experts`` for one block of random inputs, and its keywords:
    ``extra`` "residual" (shared expert and residual stream), "sgate" (gated shared expert)
    or "oai" (GPT-OSS's clamped SwiGLU with gate, up and down biases)."""
    bf = mx.bfloat16

    def normal(*shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32)).astype(bf)

    x = normal(t, d)
    g, u = _experts(e, n, d, bits, gs, mode), _experts(e, n, d, bits, gs, mode)
    dn = _experts(e, d, n, bits, gs, mode)
    idx = mx.array(np.stack([rng.choice(e, k, replace=False) for _ in range(t)]), mx.uint32)
    wts = mx.softmax(mx.array(rng.standard_normal((t, k)).astype(np.float32)), -1).astype(bf)
    kw = {}
    if extra == "residual":
        kw = {"shared": normal(t, d), "residual": (normal(t, d), normal(t, d))}
    elif extra == "sgate":
        kw = {"shared": normal(t, d), "shared_gate": normal(t, 1)}
    elif extra == "oai":  # inputs that reach the clamps (see test_fused_is_bitwise_...)
        x = x * 4.0
        kw = {"activation": "swiglu_oai", "alpha": 1.5, "limit": 5.0, "bias_gate": normal(e, n),
              "bias_up": normal(e, n), "bias": normal(e, d)}  # fmt: skip
    return (x, *g, *u, *dn, idx, wts, gs, bits, mode), kw


def _reference(args, kw):
    """Plain MLX (stock mlx-lm's ops, :func:`moe.moe_experts_ref` where no extra applies) in
    float32: the same quantized values (bfloat16 converts exactly), float32 activations (MLX's
    CPU ``gather_qmm`` sums bfloat16 inputs far less exactly than the kernels do)."""

    def f32(a):
        if isinstance(a, (tuple, list)):
            return tuple(f32(b) for b in a)
        return a.astype(mx.float32) if isinstance(a, mx.array) and a.dtype == mx.bfloat16 else a

    x, wg, sg, bg, wu, su, bu, wd, sd, bd, idx, wts, gs, bits, mode = f32(args)
    kw = {name: f32(v) for name, v in kw.items()}
    if not kw:
        y = moe.moe_experts_ref(x, wg, sg, bg, wu, su, bu, wd, sd, bd, idx, wts, gs, bits, mode)
        return y.astype(mx.bfloat16)
    h = moe.gather_qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, idx, gs, bits, mode,
                                  kw.get("bias_gate"), kw.get("bias_up"),
                                  kw.get("activation", "swiglu"), kw.get("alpha", 1.702),
                                  kw.get("limit", 7.0))  # fmt: skip
    y = moe.gather_qmv_combine_ref(h, wd, sd, bd, idx, wts, gs, bits, mode, kw.get("bias"),
                                   kw.get("shared"), kw.get("shared_gate"))  # fmt: skip
    res = kw.get("residual")
    return (y if res is None else (res[0] + res[1]) + y).astype(mx.bfloat16)


def _emulated(monkeypatch, args, kw, fused):
    """``moe_experts`` on the emulator with FUSED_EXPERTS = ``fused``; returns the output and
    how many kernels launched."""
    monkeypatch.setattr(fe, "FUSED_EXPERTS", fused)
    with emulator():
        before = launch_count()
        y = moe.moe_experts(*args, **kw)
        mx.eval(y)
        return y, launch_count() - before


def _bits(y):
    return np.array(y.astype(mx.float32))


def assert_identical(got, want):
    a, b = _bits(got), _bits(want)
    assert got.dtype == want.dtype and a.shape == b.shape
    assert not np.isnan(a).any(), "NaN in the output"
    diff = np.abs(a - b)
    assert np.array_equal(a, b), f"{int((diff > 0).sum())} differ, by up to {diff.max()}"


def _kernel_names(args, kw, backend_name="cuda"):
    return [c.kernel.name for c in launches(backend_name, lambda *a: moe.moe_experts(*a, **kw),
                                            *args)]  # fmt: skip


# t, k, e, d, n, bits, group size, mode, extra (see _block)
CASES = {
    "t1-k8-a4g64": (1, 8, 16, 2048, 128, 4, 64, "affine", ""),
    "t2-k4-a4g64-shared-residual": (2, 4, 8, 1024, 256, 4, 64, "affine", "residual"),
    "t3-k4-a8g32-shared-gate": (3, 4, 8, 1024, 256, 8, 32, "affine", "sgate"),
    "t1-k4-mxfp4": (1, 4, 8, 1024, 256, 4, 32, "mxfp4", ""),
    "t1-k4-mxfp4-oai-biases": (1, 4, 8, 1024, 256, 4, 32, "mxfp4", "oai"),
}


@needs_emulator
@pytest.mark.parametrize("case", list(CASES))
def test_fused_is_bitwise_the_two_launches(case, monkeypatch, rng):
    t, k, e, d, n, bits, gs, mode, extra = CASES[case]
    args, kw = _block(rng, t, k, e, d, n, bits, gs, mode, extra)
    if extra == "oai":  # GPT-OSS's clamps, at other alpha and limit than the defaults, reached
        x, wg, sg, bg, wu, su, bu, *_, idx, _, gs, bits, mode = args
        g = moe.gather_qmv_ref(x, wg, sg, bg, idx, gs, bits, mode, kw["bias_gate"])
        u = moe.gather_qmv_ref(x, wu, su, bu, idx, gs, bits, mode, kw["bias_up"])
        assert (g > kw["limit"]).any() and (mx.abs(u) > kw["limit"]).any()
    names = _kernel_names(args, kw)
    assert len(names) == 1 and "_fused_" in names[0], names
    got, n_fused = _emulated(monkeypatch, args, kw, True)
    want, n_two = _emulated(monkeypatch, args, kw, False)
    assert (n_fused, n_two) == (1, 2)
    assert got.shape == (t, d)
    assert_identical(got, want)
    # bfloat16 tolerances at the output's scale: the kernels round h to bfloat16 and sum
    # in other orders.
    ref = _reference(args, kw)
    scale = max(1.0, float(np.abs(_bits(ref)).max()))
    assert_close(got, ref, atol=1.6e-2 * scale, rtol=1.6e-2)


def test_one_launch_when_on_two_when_off(monkeypatch):
    t, k, e, d, n = 2, 8, 16, 2048, 128
    g, u, dn = zero_experts(e, n, d), zero_experts(e, n, d), zero_experts(e, d, n)
    x = mx.zeros((t, d), dtype=mx.bfloat16)
    idx, wts = mx.zeros((t, k), dtype=mx.uint32), mx.zeros((t, k), dtype=mx.bfloat16)
    args = (x, *g, *u, *dn, idx, wts)
    (on,) = launches("cuda", moe.moe_experts, *args)
    assert on.kernel.name == "moe_experts_swiglu_affine_affine_fused_l2_tickets"
    tmpl = dict(on.template)
    # One group size for both parts; one group per row block of each slot, then per token.
    assert tmpl["G_W"] == tmpl["K"] * tmpl["C_S"] and on.threadgroup == (32 * tmpl["G_W"], 1, 1)
    groups = t * (k * tmpl["G_NB"] + tmpl["C_NB"])
    assert on.grid == (groups * on.threadgroup[0], 1, 1)
    assert on.output_shapes == [(t, k, n), (t, d)]
    monkeypatch.setattr(fe, "FUSED_EXPERTS", False)
    off = [c.kernel.name for c in launches("cuda", moe.moe_experts, *args)]
    assert off == ["qmv_swiglu_affine_gather_split", "qmv_combine_affine_exact_split"]


@pytest.mark.parametrize(
    "d, n, setting",
    [(512, 128, None), (2048, 128, (qk, "MMA_GATE_UP", True)), (2048, 128, (qk, "TILE", True)),
     (2048, 128, (mk, "SPLIT_EXPERTS", False)), (2048, 128, (qk, "SPLIT_ALL_ROWS", False)),
     (2048, 128, "metal")],
    ids=["d512-warps-differ", "mma-gate-up", "tile", "no-split-experts", "split-r1", "metal"],
)  # fmt: skip
def test_falls_back_to_two_launches(d, n, setting, monkeypatch):
    """Where the gate/up groups' warps differ from the combine's K * S (D = 512: 2 warps a row
    against 8 experts x 1), another kernel form is set, or the backend is not CUDA."""
    t, k, e = 1, 8, 16
    g, u, dn = zero_experts(e, n, d), zero_experts(e, n, d), zero_experts(e, d, n)
    args = (mx.zeros((t, d), dtype=mx.bfloat16), *g, *u, *dn, mx.zeros((t, k), dtype=mx.uint32),
            mx.zeros((t, k), dtype=mx.bfloat16))  # fmt: skip
    backend_name = "metal" if setting == "metal" else "cuda"
    if isinstance(setting, tuple):
        monkeypatch.setattr(*setting)
    names = _kernel_names(args, {}, backend_name)
    assert len(names) == 2 and not any("fused" in s for s in names), names


@needs_emulator
@pytest.mark.parametrize("prefetch", ["l2", "registers", "none"])
def test_every_prefetch_form_is_bitwise(prefetch, monkeypatch, rng):
    args, kw = _block(rng, 2, 4, 8, 1024, 256, extra="residual")
    monkeypatch.setattr(fe, "FUSED_PREFETCH", prefetch)
    assert _kernel_names(args, kw) == [
        f"moe_experts_swiglu_affine_affine_shared_res_fused_{prefetch}_tickets"
    ]
    got, launched = _emulated(monkeypatch, args, kw, True)
    assert launched == 1
    assert_identical(got, _emulated(monkeypatch, args, kw, False)[0])


@needs_emulator
def test_group_index_order_waits_for_groups_not_yet_run(monkeypatch, rng):
    """FUSED_ORDER = "index": the emulator runs groups last to first, so the last group (a
    combine group by its index) waits for gate/up groups that have not run. First to last,
    the same kernel gives the two launches' output."""
    args, kw = _block(rng, 1, 8, 16, 2048, 128)
    monkeypatch.setattr(fe, "FUSED_ORDER", "index")
    assert _kernel_names(args, kw) == ["moe_experts_swiglu_affine_affine_fused_l2_index"]
    with pytest.raises(RuntimeError, match=r"fused_l2_index: a group waits for a count"):
        _emulated(monkeypatch, args, kw, True)
    monkeypatch.setenv("ZMLX_EMULATOR_ORDER", "forward")
    got, launched = _emulated(monkeypatch, args, kw, True)
    assert launched == 1
    assert_identical(got, _emulated(monkeypatch, args, kw, False)[0])


def test_bad_prefetch_or_order_raises(monkeypatch, rng):
    flags = ("swiglu", "affine", "affine", False, False, False, False, False, False)
    with pytest.raises(ValueError, match=r"\[fused_experts\] expected prefetch"):
        fe.fused_experts_kernel(*flags, prefetch="L2")
    with pytest.raises(ValueError, match=r"\[fused_experts\] expected order"):
        fe.fused_experts_kernel(*flags, order="gid")
    assert "_fused_none_index" in fe.fused_experts_kernel(*flags, "none", "index").name
    # A bad setting is an error at the call, not a silent fallback.
    args, kw = _block(rng, 1, 8, 16, 2048, 128)
    monkeypatch.setattr(fe, "FUSED_PREFETCH", "shared")
    with pytest.raises(ValueError, match=r"expected prefetch"):
        _kernel_names(args, kw)


def test_counters_are_kept_per_stream():
    c = fe.counters()
    assert c.dtype == mx.uint32 and c.shape == (3 * 32,) and fe.counters() is c
    assert not np.array(c).any()
    with mx.stream(mx.new_stream(mx.default_device())):
        other = fe.counters()
    assert other is not c and fe.counters() is c


# ---------------------------------------------------------------------------------------
# The dialect's tickets and counted waits

_TICKETS = Kernel(
    "ticket_wait_check",
    ["ctr", "ahead"],
    ["out", "left"],
    """
  ZX_SHARED uint tk[1];
  uint* c = const_cast<uint*>(reinterpret_cast<const uint*>(ctr));
  if (lid == 0u) {
    tk[0] = zx_ticket(&c[0]);
  }
  zx_barrier();
  if (lid == 0u) {
    zx_wait_count(&c[0], tk[0] + ahead[0]);
  }
  zx_barrier();
  out[gid * lsize + lid] = tk[0];
  if (lid == 0u && tk[0] == ngroups - 1u) {
    zx_counter_reset(&c[0]);
    left[0] = c[0];
  }
""",
)


def _tickets(ahead, groups=4, size=64):
    return _TICKETS(mx.zeros((1,), dtype=mx.uint32), mx.array([ahead], dtype=mx.uint32),
                    output_shapes=[(groups, size), (1,)], output_dtypes=[mx.uint32, mx.uint32],
                    grid=(groups * size, 1, 1), threadgroup=(size, 1, 1))  # fmt: skip


@needs_emulator
@pytest.mark.parametrize("order", ["reverse", "forward"])
def test_tickets_and_counted_waits_on_the_emulator(order, monkeypatch):
    """Each group takes the next ticket in the order groups start (the emulator's order), a
    wait for a count already reached (its own ticket) passes, the last ticket's group puts
    the counter back to zero; a wait for the next group's ticket never ends (an error)."""
    monkeypatch.setenv("ZMLX_EMULATOR_ORDER", order)
    with emulator():
        out, left = _tickets(1)
        mx.eval(out, left)
    out = np.array(out)
    start = np.arange(4)[::-1] if order == "reverse" else np.arange(4)
    np.testing.assert_array_equal(out, np.repeat(np.argsort(start)[:, None], 64, 1))
    assert int(np.array(left)[0]) == 0
    with (
        emulator(),
        pytest.raises(RuntimeError, match=r"\[emulate\] ticket_wait_check: a group waits"),
    ):
        mx.eval(*_tickets(2))


# ---------------------------------------------------------------------------------------
# NVRTC and the GPU


@needs_nvrtc
@pytest.mark.parametrize("order", ["tickets", "index"])
@pytest.mark.parametrize("prefetch", ["l2", "registers", "none"])
def test_compiles_at_qwen3s_shape(prefetch, order, monkeypatch):
    d, n, e, k = QWEN3
    monkeypatch.setattr(fe, "FUSED_PREFETCH", prefetch)
    monkeypatch.setattr(fe, "FUSED_ORDER", order)
    g, u, dn = zero_experts(e, n, d), zero_experts(e, n, d), zero_experts(e, d, n)
    args = (mx.zeros((1, d), dtype=mx.bfloat16), *g, *u, *dn, mx.zeros((1, k), dtype=mx.uint32),
            mx.zeros((1, k), dtype=mx.bfloat16))  # fmt: skip
    assert assert_compiles(moe.moe_experts, *args, backends=("cuda",), only="_fused_") == 1


@pytest.mark.cuda
@pytest.mark.parametrize("t", [1, 4])
def test_fused_is_bitwise_on_cuda(t, monkeypatch, rng):
    """Qwen3-30B-A3B's experts, random weights: three fused launches in a row (the counters
    back at zero after each, or the next would wait or misassign) against the two kernels."""
    d, n, e, k = QWEN3
    args, kw = _block(rng, t, k, e, d, n)
    assert len(_kernel_names(args, kw)) == 1
    monkeypatch.setattr(fe, "FUSED_EXPERTS", False)
    want = moe.moe_experts(*args)
    mx.eval(want)
    monkeypatch.setattr(fe, "FUSED_EXPERTS", True)
    for _ in range(3):
        got = moe.moe_experts(*args)
        mx.eval(got)
        assert_identical(got, want)
    ctr = fe.counters()
    mx.eval(ctr)
    assert not np.array(ctr).any(), np.nonzero(np.array(ctr))
