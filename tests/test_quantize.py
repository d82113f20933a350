"""quantize: bit-exact against mx.quantize on random and adversarial groups, both backends' rules.

The kernel runs on the CPU SIMT emulator. With ``like="cpu"`` (the default there) it must equal
MLX's CPU ``mx.quantize`` bit for bit; with ``like="gpu"`` it must equal a numpy transcription
of MLX's CUDA/Metal quantize kernels (the rules differ, see ``zmlx.kernels.quantize``). On a GPU
the catalog test and ``test_gpu_matches_mx_quantize_adversarial`` compare with MLX's own GPU
``mx.quantize``.
"""

from __future__ import annotations

import contextlib

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.core import fallback
from zmlx.core.kernel import launch_count
from zmlx.kernels import quant
from zmlx.kernels import quant_kernels as qk
from zmlx.kernels.quantize import quantize, quantize_ref

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
IDS = ["f32", "f16", "bf16"]
FORMATS = [("affine", g, b) for b in (2, 4, 8) for g in (32, 64, 128)] + [("mxfp4", 32, 4)]
FMT_IDS = [f"{m[0]}{b}g{g}" for m, g, b in FORMATS]


def adversarial(rng, dtype, d=256) -> mx.array:
    """Rows of random groups plus the groups where rounding rules show: zeros, -0, constants,
    all-negative, huge and tiny magnitudes, values on e2m1 and affine rounding ties."""
    x = rng.normal(size=(12, d)).astype(np.float32)
    x[0] = 0.0
    x[1] = 1.5  # a constant group (range 0); 1.5 / 6 is a power of two
    x[2, :128] = -np.abs(x[2, :128])  # all-negative groups
    x[3] *= 1e4 if dtype == mx.float16 else 1e30  # huge (finite in the dtype)
    x[4, :32] = np.arange(32) * 0.25 - 4.0  # every e2m1 tie at scale 1
    x[5, :64] = -1e-3  # negative constant
    x[6] *= 1e-5  # tiny
    x[7, :64] = -0.0
    x[8, :32] = np.arange(32) % 16  # affine: q0 exact, values on .5 ties after scaling
    x[9, :32] = 2.0**-24 * np.arange(32)  # float16 subnormals (amax / 6 underflows in f16)
    x[10] = np.round(x[10] * 8) / 8  # few mantissa bits: ties at every format
    x[11, ::2] = 0.0  # sparse
    return mx.array(x).astype(dtype)


def cpu_ref(*args):
    """``mx.quantize`` on MLX's CPU stream: the rules the emulated kernel (``run``) follows."""
    with mx.stream(mx.cpu):
        out = quantize_ref(*args)
        mx.eval(out)
    return out


def run(w, gs, bits, mode, like=None):
    with emulator():
        before = launch_count()
        out = quantize(w, gs, bits, mode, like=like)
        mx.eval(out)
        assert launch_count() > before, "the kernel path did not run"
    return out


def assert_equal_bits(got, want, what=""):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, (what, i, g.dtype, w.dtype)
        a, b = (
            np.array(g.view(mx.uint16) if g.dtype == mx.bfloat16 else g),
            np.array(w.view(mx.uint16) if w.dtype == mx.bfloat16 else w),
        )
        if a.dtype.kind == "f":
            a, b = a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")
        bad = np.argwhere(a != b)
        assert bad.size == 0, f"{what} output {i}: {len(bad)} differ, first {bad[:4].tolist()}"


# ---------------------------------------------------------------------------------------
# numpy transcription of MLX's CUDA and Metal quantize kernels (affine_quantize,
# fp_quantize_rowwise + CUTLASS's float_ue8m0_t / float_e2m1_t; Metal's fp_quantize)


def _round_away(x):
    x = x.astype(np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.float32)


def _pack(codes, bits):
    epw = 32 // bits
    c = codes.astype(np.uint64).reshape(-1, epw)
    return (c << (np.arange(epw, dtype=np.uint64) * bits)).sum(1).astype(np.uint32)


def gpu_rules_np(w: mx.array, gs, bits, mode):
    x = np.array(w.astype(mx.float32)).reshape(-1, gs)
    lead = tuple(w.shape[:-1])
    nb = w.shape[-1] // gs
    if mode == "affine":
        f32 = np.float32
        lo = np.minimum(np.finfo(np.float32).max, x.min(1))
        hi = np.maximum(f32(0), x.max(1))
        nbins = f32((1 << bits) - 1)
        scale = np.maximum((hi - lo) / nbins, f32(1e-7)).astype(f32)
        side = np.abs(lo) > np.abs(hi)
        scale = np.where(side, scale, -scale).astype(f32)
        edge = np.where(side, lo, hi).astype(f32)
        q0 = _round_away(edge / scale)
        zero = q0 == 0
        scale = np.where(zero, scale, edge / np.where(zero, f32(1), q0)).astype(f32)
        bias = np.where(zero, f32(0), edge).astype(f32)
        q = _round_away((x - bias[:, None]) / scale[:, None])
        q = np.clip(q, 0, nbins).astype(np.uint32)
        words = _pack(q, bits).reshape(*lead, -1)
        to = lambda a: mx.array(a.reshape(*lead, nb)).astype(w.dtype)  # noqa: E731
        return mx.array(words), to(scale), to(bias)
    sd = (np.abs(x).max(1) / np.float32(6)).astype(np.float32)
    u = sd.view(np.uint32)
    e, m = (u >> 23) & 0xFF, u & 0x7FFFFF
    up = (m > 0) & (e != 0xFE) & ~((e == 0) & (m <= 0x400000))
    e = (e + up).astype(np.uint32)
    scale = np.where(e == 0, np.uint32(0x400000), e << 23).astype(np.uint32).view(np.float32)
    v = (x * (np.float32(1) / scale)[:, None]).astype(np.float32)
    a = np.abs(v)
    c = sum((a > t if strict else a >= t).astype(np.uint32) for t, strict in (
        (0.25, True), (0.75, False), (1.25, True), (1.75, False), (2.5, True), (3.5, False),
        (5.0, True)))  # fmt: skip
    c = np.where(np.signbit(v), c | 8, c)
    words = _pack(c, 4).reshape(*lead, -1)
    return mx.array(words), mx.array(e.astype(np.uint8).reshape(*lead, nb))


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,gs,bits", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_cpu_rules_match_mx_quantize(dtype, mode, gs, bits, rng):
    w = adversarial(rng, dtype)
    got = run(w, gs, bits, mode)
    assert_equal_bits(got, cpu_ref(w, gs, bits, mode), f"{mode} {bits}b g{gs}")


@pytest.mark.parametrize("mode,gs,bits", [FORMATS[4], FORMATS[7], FORMATS[-1]],
                         ids=[FMT_IDS[4], FMT_IDS[7], FMT_IDS[-1]])  # fmt: skip
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_gpu_rules_match_transcription(dtype, mode, gs, bits, rng):
    w = adversarial(rng, dtype)
    got = run(w, gs, bits, mode, like="gpu")
    assert_equal_bits(got, gpu_rules_np(w, gs, bits, mode), f"{mode} {bits}b g{gs} gpu rules")


def test_rules_differ_where_mlx_backends_do():
    """All-negative affine groups and small negative / tied mxfp4 values: MLX's CPU and GPU
    kernels disagree there, and ``like`` picks which one is reproduced."""
    w = mx.array([[-1.0 - i / 64 for i in range(64)]])
    cpu, gpu = run(w, 64, 4, "affine", "cpu"), run(w, 64, 4, "affine", "gpu")
    assert not mx.array_equal(cpu[1], gpu[1]).item()  # the GPU's range reaches up to 0
    assert_equal_bits(cpu, cpu_ref(w, 64, 4, "affine"))
    v = mx.array([[4.0, -0.1, 0.75, 2.5] + [0.0] * 28])
    cpu, gpu = run(v, 32, 4, "mxfp4", "cpu"), run(v, 32, 4, "mxfp4", "gpu")
    codes = lambda q: [(int(q[0].item()) >> (4 * k)) & 0xF for k in range(4)]  # noqa: E731
    assert codes(cpu[0][0]) == [6, 0, 1, 4]  # -0.1 -> +0; ties to the smaller magnitude
    assert codes(gpu[0][0]) == [6, 8, 2, 4]  # -0.1 -> -0; ties to even
    z = mx.zeros((1, 32))
    assert run(z, 32, 4, "mxfp4", "cpu")[1].item() == 127
    assert run(z, 32, 4, "mxfp4", "gpu")[1].item() == 0


@pytest.mark.parametrize("mode,gs,bits", [FORMATS[1], FORMATS[6], FORMATS[-1]],
                         ids=[FMT_IDS[1], FMT_IDS[6], FMT_IDS[-1]])  # fmt: skip
def test_round_trip_through_dequantize(mode, gs, bits, rng):
    """zmlx's dequantize of zmlx's quantize equals MLX's round trip, and is within a step of w
    (affine: MLX snaps the scale so the group's edge is exact, which can leave the far end up to
    a step away; mxfp4: the largest e2m1 gap), plus the rounding of scale and bias to bf16."""
    w = mx.array(rng.normal(size=(16, 256)).astype(np.float32)).astype(mx.bfloat16)
    q = run(w, gs, bits, mode)
    with emulator():
        back = quant.dequantize(*q, *(() if mode == "affine" else (None,)), gs, bits, mode,
                                mx.bfloat16 if mode == "mxfp4" else None)  # fmt: skip
        mx.eval(back)
    # zmlx's dequantize kernel rounds as MLX's CPU; without a kernel (2-bit) it is mx.dequantize.
    kernel = qk.kernel_covers(mode, bits, gs)
    with mx.stream(mx.cpu) if kernel else contextlib.nullcontext():
        want = mx.dequantize(*cpu_ref(w, gs, bits, mode), group_size=gs, bits=bits,
                             mode=mode, dtype=mx.bfloat16)  # fmt: skip
    assert mx.array_equal(back, want).item()
    wf = np.array(w.astype(mx.float32)).reshape(-1, gs)
    err = np.abs(np.array(back.astype(mx.float32)).reshape(-1, gs) - wf)
    if mode == "affine":
        bound = np.abs(np.array(q[1].astype(mx.float32))).reshape(-1, 1)
    else:
        bound = 2.0 ** (np.array(q[1]).astype(np.float64) - 127).reshape(-1, 1)  # e2m1 step <= 2
    amax = np.abs(wf).max(1, keepdims=True)
    assert (err <= bound + 2.0**-6 * amax).all()


@pytest.mark.gpu
@pytest.mark.parametrize("mode,gs,bits", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_gpu_matches_mx_quantize_adversarial(dtype, mode, gs, bits, rng):
    """On a GPU: the kernel against MLX's own GPU mx.quantize, adversarial groups included."""
    w = adversarial(rng, dtype)
    before = launch_count()
    got = quantize(w, gs, bits, mode)
    mx.eval(got)
    assert launch_count() > before
    assert_equal_bits(got, quantize_ref(w, gs, bits, mode), f"{mode} {bits}b g{gs}")


def test_fallbacks_note_and_match(rng):
    w = mx.array(rng.normal(size=(4, 64)).astype(np.float32))
    with emulator():
        for args, why in (((w, 64, 3, "affine"), "3-bit"), ((w, 32, 8, "mxfp8"), "mxfp8")):
            before, notes = launch_count(), fallback.counts().get("quantize", 0)
            got = quantize(*args)
            mx.eval(got)
            assert launch_count() == before, why
            assert fallback.counts().get("quantize", 0) == notes + 1, why
            assert_equal_bits(got, cpu_ref(*args), why)


def test_errors():
    w = mx.zeros((4, 64))
    with pytest.raises(ValueError, match=r"\[quantize\] expected 'w' with at least 2 axes"):
        quantize(mx.zeros((64,)))
    with pytest.raises(TypeError, match=r"\[quantize\] expected 'w' to be float32"):
        quantize(w.astype(mx.int32))
    with pytest.raises(ValueError, match=r"\[quantize\] expected group_size 32 and bits 4"):
        quantize(w, 64, 4, "mxfp4")
    with pytest.raises(ValueError, match=r"\[quantize\] expected group_size in \(32, 64, 128\)"):
        quantize(w, 16, 4)
    with pytest.raises(ValueError, match=r"multiple of group_size 128"):
        quantize(w, 128, 4)
    with pytest.raises(ValueError, match=r"\[quantize\] expected like in"):
        quantize(w, like="metal")


@pytest.mark.no_emulate  # compile checks capture launches; the emulator would run them
@pytest.mark.parametrize("like", ["cpu", "gpu"])
def test_compiles_at_real_shapes(like):
    """NVRTC (when available) and the Metal shim, both rule sets, every format."""
    combos = [("affine", 64, 4, mx.bfloat16), ("affine", 128, 8, mx.float16),
              ("affine", 32, 2, mx.float32), ("mxfp4", 32, 4, mx.bfloat16)]  # fmt: skip
    for mode, gs, bits, dt in combos:
        w = mx.zeros((8, 2048), dtype=dt)
        assert_compiles(lambda a, g=gs, b=bits, m=mode: quantize(a, g, b, m, like=like), w)
