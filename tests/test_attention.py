"""Decode attention: float64 oracles, mlx-lm's MLA step, the multi-chunk path, errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from zmlx.core import emulate, fallback
from zmlx.core.backend import backend
from zmlx.core.kernel import launch_count
from zmlx.kernels import attention as A
from zmlx.kernels import attention_kernels as AK
from zmlx.testing import assert_close


def _arr(rng, *shape, dtype=mx.float32, scale=1.0):
    return mx.array(rng.normal(0, scale, size=shape).astype(np.float32)).astype(dtype)


def _f64(x):
    return np.array(x.astype(mx.float32), dtype=np.float64)


def _oracle(q, k, v, scale, mask=None, sinks=None, window=None):
    """Float64 decode attention with GQA, sinks, windows and masks, in numpy."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    b, hq, _, _ = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    sc = np.einsum("bhqd,bhsd->bhqs", q, k) * scale
    if mask is not None:
        m = np.broadcast_to(np.array(mask), (b, hq, 1, s))
        sc = np.where(m, sc, -np.inf) if m.dtype == np.bool_ else sc + m
    if window is not None and window < s:
        sc[..., : s - window] = -np.inf
    cols = [sc]
    if sinks is not None:
        cols.insert(0, np.broadcast_to(_f64(sinks)[None, :, None, None], (b, hq, 1, 1)))
    full = np.concatenate(cols, axis=-1)
    p = np.exp(full - full.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhqs,bhsd->bhqd", p[..., -s:], v)


CASES = [
    dict(b=1, hq=32, hkv=4, s=31, d=64),
    dict(b=2, hq=8, hkv=8, s=33, d=128, mask=True),
    dict(b=1, hq=16, hkv=2, s=45, d=64, sinks=True, window=20),
    dict(b=1, hq=12, hkv=4, s=7, d=64, sinks=True),
]


@pytest.mark.parametrize("c", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_float64_oracle(c, rng):
    q = _arr(rng, c["b"], c["hq"], 1, c["d"])
    k = _arr(rng, c["b"], c["hkv"], c["s"], c["d"])
    v = _arr(rng, c["b"], c["hkv"], c["s"], c["d"])
    mask = mx.array(rng.random((c["b"], 1, 1, c["s"])) < 0.7) if c.get("mask") else None
    sinks = _arr(rng, c["hq"], scale=2.0) if c.get("sinks") else None
    scale = c["d"] ** -0.5
    got = A.decode_attention(q, k, v, scale, mask, sinks, c.get("window"))
    want = _oracle(q, k, v, scale, mask, sinks, c.get("window"))
    np.testing.assert_allclose(_f64(got), want, atol=2e-5, rtol=2e-4)


def _many_chunks(monkeypatch):
    """Force the split path (several chunks and the combine kernel) at small sizes."""
    monkeypatch.setattr(AK, "SINGLE_CHUNK_KEYS", 0)
    monkeypatch.setattr(AK, "MIN_CHUNK", 32)
    monkeypatch.setattr(AK, "TARGET_GROUPS", 4096)


@pytest.mark.no_emulate  # it enters the emulator itself
@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("forced", [True, False], ids=["chunks32", "default"])
def test_split_k_path_on_emulator(dtype, forced, monkeypatch, rng):
    if forced:
        _many_chunks(monkeypatch)
    assert AK.chunking(100, 2, 8, 0) == ((32, 4) if forced else (16, 7))
    q, k, v = _arr(rng, 1, 8, 1, 64, dtype=dtype), _arr(rng, 1, 2, 100, 64, dtype=dtype), None
    v = _arr(rng, 1, 2, 100, 64, dtype=dtype)
    mask = mx.array(rng.random((1, 8, 1, 100)) < 0.8)
    sinks = _arr(rng, 8, dtype=dtype)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == mx.float32 else dict(atol=1.6e-2, rtol=1.6e-2)
    for args in ((None, None, None), (mask, sinks, None), (None, sinks, 70)):
        with emulate.emulate():
            got = A.decode_attention(q, k, v, 0.125, *args)
            mx.eval(got)
        assert_close(got, A.decode_attention_ref(q, k, v, 0.125, *args), **tol)
    ql, qp = _arr(rng, 1, 4, 1, 256, dtype=dtype, scale=0.5), _arr(rng, 1, 4, 1, 64, dtype=dtype)
    kv, kp = _arr(rng, 1, 1, 70, 256, dtype=dtype), _arr(rng, 1, 1, 70, 64, dtype=dtype)
    with emulate.emulate():
        got = A.mla_decode_attention(ql, qp, kv, kp, 0.1)
        mx.eval(got)
    assert_close(got, A.mla_decode_attention_ref(ql, qp, kv, kp, 0.1), **tol)


@pytest.mark.no_emulate  # it enters the emulator itself
@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
def test_fused_combine_equals_the_combine_launch(dtype, monkeypatch, rng):
    """With the combine folded into the partial launch (the group that sees every chunk's
    flag merges its heads), the output is bit for bit the two-launch one: GQA with a mask, a
    sink and a window, two batch rows, and MLA, on the emulator."""
    _many_chunks(monkeypatch)
    q = _arr(rng, 2, 8, 1, 64, dtype=dtype)
    k, v = _arr(rng, 2, 2, 100, 64, dtype=dtype), _arr(rng, 2, 2, 100, 64, dtype=dtype)
    mask = mx.array(rng.random((2, 8, 1, 100)) < 0.8)
    sinks = _arr(rng, 8, dtype=dtype)
    ql, qp = _arr(rng, 1, 4, 1, 256, dtype=dtype, scale=0.5), _arr(rng, 1, 4, 1, 48, dtype=dtype)
    kv, kp = _arr(rng, 1, 1, 70, 256, dtype=dtype), _arr(rng, 1, 1, 70, 48, dtype=dtype)
    calls = [lambda a=a: A.decode_attention(q, k, v, 0.125, *a)
             for a in ((None, None, None), (mask, sinks, None), (None, sinks, 70))]  # fmt: skip
    calls.append(lambda: A.mla_decode_attention(ql, qp, kv, kp, 0.1))
    for call in calls:
        outs = {}
        for fused in (False, True):
            monkeypatch.setattr(AK, "FUSED_COMBINE", fused)
            with emulate.emulate():
                before = launch_count()
                outs[fused] = call()
                mx.eval(outs[fused])
                launches = launch_count() - before
            assert launches == (1 if fused else 2)
        assert outs[True].dtype == outs[False].dtype
        assert (np.array(outs[True].astype(mx.float32))
                == np.array(outs[False].astype(mx.float32))).all()  # fmt: skip


def test_chunking_choices():
    # Qwen3-30B (4 kv heads): 512 groups at S = 4096 (128 chunks of 32 keys) and 16384
    # (128 of 128); short caches are split too (32 chunks of 16 at S = 512), as 4 groups
    # would leave most of the GPU idle.
    assert AK.chunking(4096, 4, 8, 0) == (32, 128)
    assert AK.chunking(16384, 4, 8, 0) == (128, 128)
    assert AK.chunking(512, 4, 8, 0) == (16, 32)
    # One chunk (no combine launch) where the heads alone give groups enough, or few keys.
    assert AK.chunking(128, 64, 8, 0) == (128, 1)
    assert AK.chunking(128, 8, 8, 0) == (16, 8)
    assert AK.chunking(1, 1, 8, 0) == (32, 1)
    assert AK.chunking(16, 1, 8, 0) == (32, 1)
    # MLA: q in shared memory limits the tile.
    gp, hb = AK.head_block(20, 18, True)
    assert (gp, hb) == (8, 8)


@pytest.mark.parametrize("model", ["deepseek_v3", "glm4_moe_lite"])
def test_mla_matches_mlx_lm_decode_step(model, rng, monkeypatch):
    """Spy on mlx-lm's MLA attention at L == 1 and redo its SDPA call with our op."""
    import importlib

    from mlx_lm.models.cache import KVCache

    mod = importlib.import_module(f"mlx_lm.models.{model}")
    args = mod.ModelArgs.from_dict(dict(
        model_type=model, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
        kv_lora_rank=64, q_lora_rank=None, qk_rope_head_dim=32, v_head_dim=16,
        qk_nope_head_dim=16, rope_scaling=None, max_position_embeddings=512,
    ))  # fmt: skip
    attn_cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("Attention"))
    attn = attn_cls(args)
    seen = {}
    rope = attn.rope

    def spy_rope(x, offset):
        y = rope(x, offset)
        seen.setdefault("rope", []).append(y)
        return y

    attn.rope = spy_rope
    real_sdpa = mod.scaled_dot_product_attention

    def spy_sdpa(q, k, v, cache, scale, mask):
        seen["sdpa"] = (q, k, scale, real_sdpa(q, k, v, cache, scale, mask))
        return seen["sdpa"][-1]

    monkeypatch.setattr(mod, "scaled_dot_product_attention", spy_sdpa)

    class SpyCache(KVCache):
        def update_and_fetch(self, keys, values):
            k, v = super().update_and_fetch(keys, values)
            seen["cache"] = (k, v)
            return k, v

    cache = SpyCache()
    x = _arr(rng, 1, 6, 64)
    attn(x, mask=None, cache=cache)  # prefill fills the cache (its own output is unused)
    seen.clear()
    attn(_arr(rng, 1, 1, 64), mask=None, cache=cache)
    q_latent, kv_latent, scale, want = seen["sdpa"]
    q_pe = seen["rope"][0]
    assert kv_latent is seen["cache"][0]
    got = A.mla_decode_attention(q_latent, q_pe, kv_latent, seen["cache"][1], scale)
    assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("p", [16, 48])
def test_mla_rope_part_of_a_partial_round_of_lanes(p, rng):
    """Rope parts that are not a multiple of 32 (the trained fixtures' 16): the last round of
    lanes is partly idle; on the kernel emulator, against mlx-lm's step, with a mask."""
    ql, qp = _arr(rng, 1, 4, 1, 64, scale=0.5), _arr(rng, 1, 4, 1, p)
    kv, kp = _arr(rng, 1, 1, 40, 64), _arr(rng, 1, 1, 40, p)
    mask = mx.array(rng.random((1, 1, 1, 40)) < 0.8)
    for m in (None, mask):
        with emulate.emulate():
            got = A.mla_decode_attention(ql, qp, kv, kp, 0.15, m)
            mx.eval(got)
        assert_close(got, A.mla_decode_attention_ref(ql, qp, kv, kp, 0.15, m), atol=1e-5,
                     rtol=1e-4)  # fmt: skip


def test_mla_float64_oracle_with_mask(rng):
    ql, qp = _arr(rng, 2, 4, 1, 64), _arr(rng, 2, 4, 1, 32)
    kv, kp = _arr(rng, 2, 1, 9, 64), _arr(rng, 2, 1, 9, 32)
    mask = mx.array(rng.random((2, 1, 1, 9)) < 0.7)
    got = A.mla_decode_attention(ql, qp, kv, kp, 0.2, mask)
    sc = 0.2 * (np.einsum("bhqr,bsr->bhqs", _f64(ql), _f64(kv)[:, 0])
                + np.einsum("bhqp,bsp->bhqs", _f64(qp), _f64(kp)[:, 0]))  # fmt: skip
    sc = np.where(np.array(mask), sc, -np.inf)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    want = np.einsum("bhqs,bsr->bhqr", p / p.sum(-1, keepdims=True), _f64(kv)[:, 0])
    np.testing.assert_allclose(_f64(got), want, atol=2e-5, rtol=2e-4)


def test_causal_and_window_edge_cases(rng):
    q, k, v = _arr(rng, 1, 4, 1, 64), _arr(rng, 1, 2, 5, 64), _arr(rng, 1, 2, 5, 64)
    base = A.decode_attention(q, k, v, 0.125)
    assert_close(A.decode_attention(q, k, v, 0.125, "causal"), base)
    assert_close(A.decode_attention(q, k, v, 0.125, window=5), base)
    assert_close(A.decode_attention(q, k, v, 0.125, window=100), base)
    one = A.decode_attention(q, k, v, 0.125, window=1)
    want = np.repeat(_f64(v)[:, :, -1:], 2, axis=1)
    np.testing.assert_allclose(_f64(one), want, atol=1e-6)


def test_uncovered_head_dim_takes_the_reference_path(rng):
    q, k, v = _arr(rng, 1, 4, 1, 96), _arr(rng, 1, 2, 5, 96), _arr(rng, 1, 2, 5, 96)
    before = fallback.counts().get("decode_attention", 0)
    out = A.decode_attention(q, k, v, 0.1)
    assert_close(out, A.decode_attention_ref(q, k, v, 0.1))
    if backend() != "cpu":
        assert fallback.counts().get("decode_attention", 0) == before + 1


def test_errors():
    q, k = mx.zeros((1, 4, 1, 64)), mx.zeros((1, 3, 5, 64))
    with pytest.raises(ValueError, match=r"\[decode_attention\] expected k \(B, Hkv, S, D\)"):
        A.decode_attention(q, k, k, 0.1)
    with pytest.raises(ValueError, match=r"\[decode_attention\] expected 'q' of shape"):
        A.decode_attention(mx.zeros((4, 1, 64)), k, k, 0.1)
    k = mx.zeros((1, 2, 5, 64))
    with pytest.raises(ValueError, match=r"expected sinks of shape \(4,\)"):
        A.decode_attention(q, k, k, 0.1, sinks=mx.zeros((2,)))
    with pytest.raises(ValueError, match=r"expected window >= 1"):
        A.decode_attention(q, k, k, 0.1, window=0)
    with pytest.raises(ValueError, match=r"expected a mask broadcastable to \(1, 4, 1, 5\)"):
        A.decode_attention(q, k, k, 0.1, mx.zeros((1, 1, 1, 6)))
    with pytest.raises(TypeError, match=r"\[decode_attention\] expected 'k' to be float32"):
        A.decode_attention(q, k.astype(mx.int32), k, 0.1)
    ql, kv = mx.zeros((1, 4, 1, 64)), mx.zeros((1, 1, 5, 64))
    with pytest.raises(ValueError, match=r"\[mla_decode_attention\] expected a boolean mask"):
        A.mla_decode_attention(ql, mx.zeros((1, 4, 1, 32)), kv, mx.zeros((1, 1, 5, 32)), 0.1,
                               mx.zeros((1, 1, 1, 5)))  # fmt: skip
    with pytest.raises(ValueError, match=r"\[mla_decode_attention\] expected q_latent"):
        A.mla_decode_attention(ql, mx.zeros((1, 4, 1, 32)), kv, mx.zeros((1, 2, 5, 32)), 0.1)


@pytest.mark.parametrize("r, p", [(512, 64), (64, 16)])
def test_mla_kernels_compile(r, p):
    """GLM-4.7-Flash's MLA shape (latent 512, rope 64) and the fixtures' (64, 16) compile
    for CUDA (NVRTC) and the Metal shim, the partial and the combine kernels."""
    from kernel_checks import assert_compiles
    from zmlx.core import syntax

    ql, qp = mx.zeros((1, 4, 1, r)), mx.zeros((1, 4, 1, p))
    kv, kp = mx.zeros((1, 1, 300, r)), mx.zeros((1, 1, 300, p))
    mask = mx.ones((1, 1, 1, 300), dtype=mx.bool_)

    def step(ql):
        return A.mla_decode_attention(ql, qp, kv, kp, 0.1, mask)

    checked = assert_compiles(step, ql)
    assert checked >= 2 or not (syntax.cuda_available() or syntax.metal_available())


@pytest.mark.parametrize("mla", [False, True], ids=["gqa", "mla"])
def test_fused_combine_compiles(mla, monkeypatch):
    """The partial launch with the combine folded in, at Qwen3-30B-A3B's GQA shape (4 kv
    heads, 512 keys) and GLM-4.7-Flash's MLA shape, compiles with NVRTC (CUDA only: Metal
    keeps the combine launch)."""
    from kernel_checks import assert_compiles
    from zmlx.core import syntax

    monkeypatch.setattr(AK, "FUSED_COMBINE", True)
    if mla:
        ql, qp = mx.zeros((1, 20, 1, 512), mx.bfloat16), mx.zeros((1, 20, 1, 64), mx.bfloat16)
        kv, kp = mx.zeros((1, 1, 512, 512), mx.bfloat16), mx.zeros((1, 1, 512, 64), mx.bfloat16)

        def step(x):
            return A.mla_decode_attention(x, qp, kv, kp, 0.1)

        x = ql
    else:
        x, k = mx.zeros((1, 32, 1, 128), mx.bfloat16), mx.zeros((1, 4, 512, 128), mx.bfloat16)

        def step(x):
            return A.decode_attention(x, k, k, 0.1)

    checked = assert_compiles(step, x, backends=("cuda",), only="fused")
    assert checked == 1 or not syntax.cuda_available()
