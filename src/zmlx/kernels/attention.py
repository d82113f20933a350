"""Decode attention: one query per sequence over a KV cache (GQA, sinks, windows, MLA).

* :func:`decode_attention`: ``softmax(q k^T * scale + mask) v`` for ``q`` of one position,
  with grouped-query heads, GPT-OSS attention sinks (a learned logit per head that joins the
  softmax denominator and then is dropped) and sliding windows (only the last ``window``
  keys). Matches ``mx.fast.scaled_dot_product_attention`` (its reference).
* :func:`mla_decode_attention`: DeepSeek-V3 / GLM-4.7-Flash multi-head latent attention at
  decode as mlx-lm computes it (``deepseek_v3.py``/``glm4_moe_lite.py``, ``L == 1``): queries
  already absorbed into the latent space (``embed_q``), one latent cache shared by all heads
  serving as both keys and values, plus a rope part whose scores mlx-lm rounds to the
  activation dtype and passes to SDPA as an additive mask. The caller applies
  ``unembed_out`` to the result.

Both run the split-K kernel of :mod:`.attention_kernels` (float32 accumulation); the chunk
count follows the number of keys and of (batch, kv head) pairs.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..core.backend import backend
from ..core.dtypes import check_float, promote
from ..core.fallback import note
from . import attention_kernels as AK
from .catalog import KernelSpec, register

# ---------------------------------------------------------------------------------------
# References


def _windowed(k, v, mask, window):
    s = k.shape[2]
    if window is None or window >= s:
        return k, v, mask
    if isinstance(mask, mx.array) and mask.ndim > 0 and mask.shape[-1] == s:
        mask = mask[..., s - window :]
    return k[:, :, s - window :], v[:, :, s - window :], mask


def decode_attention_ref(q, k, v, scale, mask=None, sinks=None, window=None):
    """``mx.fast.scaled_dot_product_attention`` over the last ``window`` keys.

    Shapes:
        q: ``(B, Hq, 1, D)``; k: ``(B, Hkv, S, D)``; v: ``(B, Hkv, S, Dv)``; mask:
        broadcastable to ``(B, Hq, 1, S)``; sinks: ``(Hq,)`` -> ``(B, Hq, 1, Dv)``.
    """
    k, v, mask = _windowed(k, v, mask, window)
    if sinks is not None:
        sinks = sinks.astype(promote((q.dtype, k.dtype, v.dtype)))
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask, sinks=sinks)


def mla_decode_attention_ref(q_latent, q_pe, kv_latent, k_pe, scale, mask=None):
    """mlx-lm's MLA decode step (``L == 1``) between ``embed_q`` and ``unembed_out``.

    Shapes:
        q_latent: ``(B, H, 1, R)``; q_pe: ``(B, H, 1, P)``; kv_latent: ``(B, 1, S, R)``;
        k_pe: ``(B, 1, S, P)``; mask: boolean, broadcastable to ``(B, H, 1, S)``
        -> ``(B, H, 1, R)``.
    """
    pe_scores = (q_pe * scale) @ k_pe.swapaxes(-1, -2)
    if mask is not None:
        low = mx.array(mx.finfo(pe_scores.dtype).min, pe_scores.dtype)
        pe_scores = mx.where(mask, pe_scores, low)
    return mx.fast.scaled_dot_product_attention(
        q_latent, kv_latent, kv_latent, scale=scale, mask=pe_scores
    )


# ---------------------------------------------------------------------------------------
# Ops


def _check4(op, name, x, dims):
    check_float(op, name, x)
    if x.ndim != 4:
        raise ValueError(f"[{op}] expected '{name}' of shape {dims}, got {tuple(x.shape)}")


def _mask(op, mask, b, h, s):
    """``(array broadcast to (b, h, 1, s) without a copy, mode)``; mode 1 additive, 2 boolean."""
    if mask is None or (isinstance(mask, str) and mask == "causal"):
        return None, 0  # one query aligned with the last key: causal masks nothing
    if not isinstance(mask, mx.array) or mask.ndim > 4:
        raise ValueError(f"[{op}] expected mask None, 'causal' or an array of at most 4 dims")
    try:
        m = mx.broadcast_to(mask, (b, h, 1, s))
    except ValueError:
        raise ValueError(
            f"[{op}] expected a mask broadcastable to {(b, h, 1, s)}, got {tuple(mask.shape)}"
        ) from None
    return m, 2 if mask.dtype == mx.bool_ else 1


def _covered(dk: int, dp: int, dv: int) -> str | None:
    if dk % 32 or dk > 512 or dp > 128:
        return f"key dims {dk} + {dp} (need a multiple of 32, at most 512, + at most 128)"
    if dv not in (64, 128, 256) and dv % 256:
        return f"value dim {dv} (need 64, 128, 256 or a multiple of 256)"
    return None


_FNS: dict[tuple, object] = {}


def _differentiable(key, forward, reference):
    """A cached ``custom_function`` (per static configuration ``key``; ``forward`` and
    ``reference`` read shapes from their arguments) whose VJP differentiates the reference."""
    fn = _FNS.get(key)
    if fn is None:

        @mx.custom_function
        def fn(*arrays):
            return forward(*arrays)

        @fn.vjp
        def fn_vjp(primals, cotangent, output):
            prims = [primals] if isinstance(primals, mx.array) else list(primals)
            cot = cotangent[0] if isinstance(cotangent, (list, tuple)) else cotangent
            idx = [i for i, a in enumerate(prims) if mx.issubdtype(a.dtype, mx.floating)]

            def f(*diff):  # a boolean mask gets no gradient
                args = list(prims)
                for i, a in zip(idx, diff):
                    args[i] = a
                return reference(*args)

            _, grads = mx.vjp(f, [prims[i] for i in idx], [cot])
            out = [mx.zeros_like(a) for a in prims]
            for i, g in zip(idx, grads):
                out[i] = g
            return tuple(out)

        fn = _FNS[key] = fn
    return fn


def _launch(op, q, kk, vv, qpe, kpe, mask, sinks, scale, mode, s0, reference, args):
    b, hq = q.shape[:2]
    dims = dict(b=b, hq=hq, hkv=kk.shape[1], s=kk.shape[2], s0=s0, dm=kk.shape[3],
                dp=0 if kpe is None else kpe.shape[3], dv=vv.shape[3],
                out_dtype=promote((q.dtype, kk.dtype, vv.dtype)), mask_mode=mode)  # fmt: skip
    out = AK.launch(q, kk, vv, qpe, kpe, mask, sinks, scale, **dims)
    if out is None:
        note(op, f"{dims['s'] - s0} keys need more than {AK.MAX_CHUNKS} chunks")
        return reference(*args)
    return out


def _gqa_fn(scale: float, window, mode: int, has_sinks: bool):
    def split(rest):
        return (rest[0] if mode else None), (rest[-1] if has_sinks else None)

    def reference(q, k, v, *rest):
        m, sk = split(rest)
        return decode_attention_ref(q, k, v, scale, m, sk, window)

    def forward(q, k, v, *rest):
        m, sk = split(rest)
        s = k.shape[2]
        s0 = max(0, s - int(window)) if window is not None else 0
        args = (q, k, v, *rest)
        return _launch("decode_attention", q, k, v, None, None, m, sk, scale, mode, s0,
                       reference, args)  # fmt: skip

    return _differentiable(("gqa", float(scale), window, mode, has_sinks), forward, reference)


def _mla_fn(scale: float, mode: int):
    def reference(ql, qp, kv, kp, *rest):
        return mla_decode_attention_ref(ql, qp, kv, kp, scale, rest[0] if mode else None)

    def forward(ql, qp, kv, kp, *rest):
        m = rest[0] if mode else None
        return _launch("mla_decode_attention", ql, kv, kv, qp, kp, m, None, scale, mode, 0,
                       reference, (ql, qp, kv, kp, *rest))  # fmt: skip

    return _differentiable(("mla", float(scale), mode), forward, reference)


def decode_attention(q, k, v, scale: float, mask=None, sinks=None, window: int | None = None,
                     *, verbose: bool = False):  # fmt: skip
    """Attention of one query position over a KV cache, split over chunks of keys.

    Args:
        q: queries.
        k, v: the cache (any strides, e.g. a slice of a preallocated buffer).
        scale: score scale (usually ``D ** -0.5``).
        mask: None, ``"causal"`` (a no-op for one query), or a boolean (True keeps) or
            additive array broadcastable to ``(B, Hq, 1, S)``.
        sinks: GPT-OSS attention sinks, one logit per query head.
        window: attend to the last ``window`` keys only (sliding-window layers).
        verbose: print why the reference path was taken, if it was.

    Returns:
        The attention output in the promoted dtype of q, k and v.

    Shapes:
        q: ``(B, Hq, 1, D)``; k: ``(B, Hkv, S, D)``; v: ``(B, Hkv, S, Dv)``; sinks: ``(Hq,)``
        -> ``(B, Hq, 1, Dv)``; ``Hq`` a multiple of ``Hkv``.
    """
    op = "decode_attention"
    _check4(op, "q", q, "(B, Hq, 1, D)")
    _check4(op, "k", k, "(B, Hkv, S, D)")
    _check4(op, "v", v, "(B, Hkv, S, Dv)")
    b, hq, lq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if k.shape[0] != b or v.shape[:3] != k.shape[:3] or k.shape[3] != d or hq % hkv:
        raise ValueError(
            f"[{op}] expected k (B, Hkv, S, D), v (B, Hkv, S, Dv) with Hq a multiple of Hkv, got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if sinks is not None:
        check_float(op, "sinks", sinks)
        if tuple(sinks.shape) != (hq,):
            raise ValueError(f"[{op}] expected sinks of shape ({hq},), got {tuple(sinks.shape)}")
    if window is not None and int(window) < 1:
        raise ValueError(f"[{op}] expected window >= 1 or None, got {window}")
    m, mode = _mask(op, mask, b, hq, s)
    if backend() == "cpu":
        return decode_attention_ref(q, k, v, scale, mask, sinks, window)
    why = _covered(d, 0, v.shape[3]) or ("one query position" if lq != 1 else None)
    if why is None and (s == 0 or b == 0):
        why = "empty cache"
    if why is not None:
        note(op, why, verbose=verbose)
        return decode_attention_ref(q, k, v, scale, mask, sinks, window)
    extra = ([m] if mode else []) + ([sinks] if sinks is not None else [])
    return _gqa_fn(scale, window, mode, sinks is not None)(q, k, v, *extra)


def mla_decode_attention(q_latent, q_pe, kv_latent, k_pe, scale: float, mask=None, *,
                         verbose: bool = False):  # fmt: skip
    """Multi-head latent attention at decode, over the compressed cache (mlx-lm's MLA).

    Args:
        q_latent: queries after ``embed_q`` (in the latent space).
        q_pe: the rope part of the queries.
        kv_latent: the latent cache (keys and values of every head).
        k_pe: the rope part of the keys (shared by every head).
        scale: score scale.
        mask: None or a boolean array broadcastable to ``(B, H, 1, S)`` (True keeps).
        verbose: print why the reference path was taken, if it was.

    Returns:
        The latent attention output (apply ``unembed_out`` to it).

    Shapes:
        q_latent: ``(B, H, 1, R)``; q_pe: ``(B, H, 1, P)``; kv_latent: ``(B, 1, S, R)``;
        k_pe: ``(B, 1, S, P)`` -> ``(B, H, 1, R)``.
    """
    op = "mla_decode_attention"
    for name, x, dims in (("q_latent", q_latent, "(B, H, 1, R)"), ("q_pe", q_pe, "(B, H, 1, P)"),
                          ("kv_latent", kv_latent, "(B, 1, S, R)"),
                          ("k_pe", k_pe, "(B, 1, S, P)")):  # fmt: skip
        _check4(op, name, x, dims)
    b, h, lq, r = q_latent.shape
    s, p = kv_latent.shape[2], k_pe.shape[3]
    if (q_pe.shape[:3] != q_latent.shape[:3] or kv_latent.shape[:2] != (b, 1)
            or kv_latent.shape[3] != r or k_pe.shape[:3] != (b, 1, s) or q_pe.shape[3] != p):  # fmt: skip
        raise ValueError(
            f"[{op}] expected q_latent (B, H, 1, R), q_pe (B, H, 1, P), kv_latent (B, 1, S, R), "
            f"k_pe (B, 1, S, P), got {tuple(q_latent.shape)}, {tuple(q_pe.shape)}, "
            f"{tuple(kv_latent.shape)}, {tuple(k_pe.shape)}"
        )
    if mask is not None and (not isinstance(mask, mx.array) or mask.dtype != mx.bool_):
        raise ValueError(f"[{op}] expected a boolean mask or None")
    m, mode = _mask(op, mask, b, h, s)
    if backend() == "cpu":
        return mla_decode_attention_ref(q_latent, q_pe, kv_latent, k_pe, scale, mask)
    why = _covered(r, p, r) or ("one query position" if lq != 1 else None)
    if why is None and s == 0:
        why = "empty cache"
    if why is not None:
        note(op, why, verbose=verbose)
        return mla_decode_attention_ref(q_latent, q_pe, kv_latent, k_pe, scale, mask)
    return _mla_fn(scale, mode)(q_latent, q_pe, kv_latent, k_pe, *([m] if mode else []))


# ---------------------------------------------------------------------------------------
# Catalog entries


def _gqa_inputs(case, dtype, rng):
    b, hq, hkv, s, d = (case[k] for k in ("B", "Hq", "Hkv", "S", "D"))
    dv = case.get("Dv", d)

    def arr(*shape):
        return mx.array(rng.normal(size=shape).astype(np.float32)).astype(dtype)

    if case.get("strided"):  # a cache slice of a larger buffer; q in (B, L, H, D) order
        k = arr(b, hkv, s + 7, d)[:, :, :s]
        v = arr(b, hkv, s + 7, dv)[:, :, :s]
        q = arr(b, 1, hq, d).transpose(0, 2, 1, 3)
    else:
        q, k, v = arr(b, hq, 1, d), arr(b, hkv, s, d), arr(b, hkv, s, dv)
    mask = None
    if case.get("mask") == "bool":
        mask = mx.array(rng.random(size=(b, 1, 1, s)) < 0.8)
    elif case.get("mask") == "additive":
        mask = arr(1, hq, 1, s)
    sinks = arr(hq) if case.get("sinks") else None
    return q, k, v, d**-0.5, mask, sinks, case.get("window")


def _mla_inputs(case, dtype, rng):
    b, h, s, r, p = (case[k] for k in ("B", "H", "S", "R", "P"))

    def arr(*shape, scale=1.0):
        return mx.array(rng.normal(0, scale, size=shape).astype(np.float32)).astype(dtype)

    mask = mx.array(rng.random(size=(b, 1, 1, s)) < 0.8) if case.get("mask") else None
    # Latent queries after embed_q are large; scale them so the scores stay O(1).
    qs = 1 / np.sqrt(r)
    scale = (128 + p) ** -0.5
    return (arr(b, h, 1, r, scale=qs * 10), arr(b, h, 1, p), arr(b, 1, s, r), arr(b, 1, s, p),
            scale, mask)  # fmt: skip


def _g(id, b, hq, hkv, s, d, **kw):
    return dict(id=id, B=b, Hq=hq, Hkv=hkv, S=s, D=d, **kw)


GQA_CASES = (  # small enough for the CPU emulator (32K input elements) except S4097
    _g("S1-32/4-d128", 1, 32, 4, 1, 128),
    _g("S1-64/8-d64-sinks", 1, 64, 8, 1, 64, sinks=True),
    _g("S31-32/4-d64-sinks", 1, 32, 4, 31, 64, sinks=True),
    _g("S31-8/8-d64-boolmask", 1, 8, 8, 31, 64, mask="bool"),
    _g("S33-8/2-d64-boolmask-B2", 2, 8, 2, 33, 64, mask="bool"),
    _g("S4097-32/4-d128", 1, 32, 4, 4097, 128, grad=False),
    _g("S40-16/2-d64-window16-sinks", 1, 16, 2, 40, 64, window=16, sinks=True),
    _g("S25-12/4-d64-additive", 1, 12, 4, 25, 64, mask="additive"),
    _g("S17-8/2-d256-strided", 1, 8, 2, 17, 256, strided=True),
    _g("S9-4/4-d128-dv64", 1, 4, 4, 9, 128, Dv=64),
)
GQA_BENCH = tuple(
    [_g(f"qwen3-30b-S{s}", 1, 32, 4, s, 128) for s in (512, 4096, 16384)]
    + [_g(f"gpt-oss-20b-full-S{s}", 1, 64, 8, s, 64, sinks=True) for s in (512, 4096, 16384)]
    + [
        _g(f"gpt-oss-20b-window-S{s}", 1, 64, 8, s, 64, sinks=True, window=128)
        for s in (512, 4096, 16384)
    ]  # fmt: skip
)
MLA_CASES = (
    dict(id="glm47-H20-S1", B=1, H=20, S=1, R=512, P=64),
    dict(id="H4-S31", B=1, H=4, S=31, R=512, P=64),
    dict(id="H8-S33-mask-B2", B=2, H=8, S=33, R=256, P=64, mask=True),
)
MLA_BENCH = tuple(
    [dict(id=f"glm47-flash-S{s}", B=1, H=20, S=s, R=512, P=64) for s in (512, 4096, 16384)]
    + [dict(id="deepseek-v3-S4096", B=1, H=128, S=4096, R=512, P=64)]
)

register(
    KernelSpec(
        name="decode_attention",
        family="attention",
        op=decode_attention,
        ref=decode_attention_ref,
        make_inputs=_gqa_inputs,
        cases=GQA_CASES,
        bench_cases=GQA_BENCH,
        stock=decode_attention_ref,
        grad_argnums=(0, 1, 2),
        description="decode attention over a KV cache: GQA, sinks, sliding window, split-K",
    )
)
register(
    KernelSpec(
        name="mla_decode_attention",
        family="attention",
        op=mla_decode_attention,
        ref=mla_decode_attention_ref,
        make_inputs=_mla_inputs,
        cases=MLA_CASES,
        bench_cases=MLA_BENCH,
        stock=mla_decode_attention_ref,
        grad_argnums=(0, 1, 2, 3),
        description="MLA decode attention over the latent cache (DeepSeek-V3, GLM-4.7-Flash)",
    )
)
