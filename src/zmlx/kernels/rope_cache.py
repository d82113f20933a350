"""A fused decode step: rotate q and k for one new token and write k, v into the KV cache.

``rope_qk_cache_update`` is one kernel for what an attention layer does with four stock ops
per decode step (``mx.fast.rope`` on q and on k, then two slice updates of the caches).

Cost: MLX custom kernels cannot write in place, so the kernel returns *new* caches: it
copies both caches (``2 * B * H_kv * S * D`` elements read and written) on every call,
while stock MLX updates a donated cache in place. That copy is the same traffic attention
itself spends reading the caches, so the fused op pays only while the caches are small (short
contexts, sliding windows of up to roughly a thousand positions at 8 KV heads of 128); past
that, stock ``mx.fast.rope`` plus in-place slice updates win. Measure with the catalog's
bench cases before using it on long contexts. Offsets are runtime values.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from ..core.backend import backend
from ..core.kernel import Kernel, grid_1d
from ._common import as_list, dims, vector
from .catalog import KernelSpec, register
from .rope import _freq_input, _offsets, check_rope_args, rotate_ref

_GROUP = 256


def rope_qk_cache_update_ref(
    q, k, v, k_cache, v_cache, offset, dims=None, traditional=False, base=10000.0, scale=1.0,
    freqs=None,
):  # fmt: skip
    """Stock form: rope q and k at ``offset``, then write k, v at cache position ``offset``.

    Shapes:
        q: ``(B, Hq, 1, D)``; k, v: ``(B, Hkv, 1, D)``; caches: ``(B, Hkv, S, D)``;
        offset: ``()`` or ``(B,)`` -> ``q.shape``, ``k_cache.shape``, ``v_cache.shape``.
    """
    dims_ = dims or q.shape[-1]
    fr, is_inv = _freq_input(dims_, base if freqs is None else None, freqs)
    off = _offsets("rope_qk_cache_update", offset, q.shape[0])
    return _ref(q, k, v, k_cache, v_cache, off, fr, dims_, traditional, is_inv, scale)


def _ref(q, k, v, kc, vc, off, fr, dims_, traditional, is_inv, scale):
    qr = rotate_ref(q, dims_, traditional, fr, is_inv, scale, off)
    kr = rotate_ref(k, dims_, traditional, fr, is_inv, scale, off)
    mask = (mx.arange(kc.shape[2], dtype=mx.int32) == off.reshape(-1, 1))[:, None, :, None]
    return qr, mx.where(mask, kr, kc), mx.where(mask, v, vc)


_BODY = """
  const uint B = zx_dims[0], HQ = zx_dims[1], HK = zx_dims[2], S = zx_dims[3];
  const uint D = zx_dims[4], half = zx_dims[5], P = zx_dims[6];
  const bool TRAD = zx_dims[7] != 0u, INV = zx_dims[8] != 0u, OFFV = zx_dims[9] != 0u;
  const uint NA = B * HK * S * P;
  if (tid >= NA + B * HQ * P) { return; }
  const bool in_cache = tid < NA;
  uint r = in_cache ? tid : tid - NA;
  const uint i = r % P;
  r /= P;
  uint s = 0u, h, b;
  if (in_cache) { s = r % S; r /= S; h = r % HK; b = r / HK; }
  else { h = r % HQ; b = r / HQ; }
  const int o = off[OFFV ? b : 0u];
  const bool rot = i < half;
  const uint j1 = rot ? (TRAD ? 2u * i : i) : 2u * half + (i - half);
  const uint j2 = rot ? (TRAD ? 2u * i + 1u : i + half) : j1;
  const bool fresh = !in_cache || (int)s == o;  // q, or the cache row of the new token
  float c = 1.0f, sn = 0.0f;
  if (rot && fresh) {
    const float inv = INV ? fr[i] : 1.0f / fr[i];
    const float theta = (prm[0] * (float)o) * inv;
    c = zx_cos(theta);
    sn = zx_sin(theta);
  }
  if (!in_cache) {
    const long at = ((long)b * HQ + h) * D;
    const float x1 = static_cast<float>(q[at + j1]);
    const float x2 = static_cast<float>(q[at + j2]);
    qo[at + j1] = static_cast<Q>(x1 * c - x2 * sn);
    if (rot) { qo[at + j2] = static_cast<Q>(x1 * sn + x2 * c); }
    return;
  }
  const long at = (((long)b * HK + h) * S + s) * D;
  if (fresh) {
    const long nw = ((long)b * HK + h) * D;
    const float x1 = static_cast<float>(k[nw + j1]);
    const float x2 = static_cast<float>(k[nw + j2]);
    kco[at + j1] = static_cast<KC>(x1 * c - x2 * sn);
    vco[at + j1] = v[nw + j1];
    if (rot) {
      kco[at + j2] = static_cast<KC>(x1 * sn + x2 * c);
      vco[at + j2] = v[nw + j2];
    }
  } else {
    kco[at + j1] = kc[at + j1];
    vco[at + j1] = vc[at + j1];
    if (rot) {
      kco[at + j2] = kc[at + j2];
      vco[at + j2] = vc[at + j2];
    }
  }
"""

KERNEL = Kernel(
    "rope_qk_cache_update",
    ["q", "k", "v", "kc", "vc", "off", "fr", "prm", "zx_dims"],
    ["qo", "kco", "vco"],
    _BODY,
)


@cache
def _function(dims_: int, traditional: bool, is_inv: bool, scale: float):
    def forward(q, k, v, kc, vc, off, fr):
        b, hq, _, d = q.shape
        hk, s = kc.shape[1], kc.shape[2]
        p = dims_ // 2 + (d - dims_)
        n = b * (hk * s + hq) * p
        if backend() == "cpu" or n >= 2**31:
            return _ref(q, k, v, kc, vc, off, fr, dims_, traditional, is_inv, scale)
        grid, group = grid_1d(n, _GROUP)
        return tuple(
            KERNEL(
                q, k, v, kc, vc, off, fr,
                vector([scale], mx.float32),
                dims(b, hq, hk, s, d, dims_ // 2, p, traditional, is_inv, off.size > 1),
                output_shapes=[q.shape, kc.shape, vc.shape],
                output_dtypes=[q.dtype, kc.dtype, vc.dtype],
                grid=grid,
                threadgroup=group,
                template=[("Q", q.dtype), ("KC", kc.dtype)],
            )
        )  # fmt: skip

    fn = mx.custom_function(forward)

    @fn.vjp
    def fn_vjp(primals, cotangents, outputs):
        prims = as_list(primals)
        *floats, off, fr = prims

        def ref(*a):
            return _ref(*a, off, fr, dims_, traditional, is_inv, scale)

        _, grads = mx.vjp(ref, floats, as_list(cotangents))
        return tuple(grads) + (mx.zeros_like(off), mx.zeros_like(fr))

    return fn


def rope_qk_cache_update(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    k_cache: mx.array,
    v_cache: mx.array,
    offset: int | mx.array,
    dims: int | None = None,
    traditional: bool = False,
    base: float | None = 10000.0,
    scale: float = 1.0,
    freqs: mx.array | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """Rotate q and k of one new token and write k, v into the caches at ``offset``.

    See the module docstring for when this pays (it copies both caches).

    Args:
        q: the new token's queries.
        k: its keys (rotated here, then written to ``k_cache``).
        v: its values (written to ``v_cache``).
        k_cache: key cache, positions on axis 2.
        v_cache: value cache.
        offset: the new token's position: an int or an int array of one or ``B`` values. A
            position outside ``[0, S)`` writes nothing (the caches come back unchanged).
        dims: features to rotate (default: all).
        traditional, base, scale, freqs: as :func:`zmlx.kernels.rope.rope`.

    Returns:
        ``(rotated q, new k_cache, new v_cache)``.

    Shapes:
        q: ``(B, Hq, 1, D)``; k, v: ``(B, Hkv, 1, D)``; k_cache, v_cache: ``(B, Hkv, S, D)``
        -> ``(B, Hq, 1, D)``, ``(B, Hkv, S, D)``, ``(B, Hkv, S, D)``.
    """
    op = "rope_qk_cache_update"
    dims_ = q.shape[-1] if dims is None else dims
    base = None if freqs is not None else base
    for name, a in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_rope_args(op, a, dims_, base, freqs, name)
        if a.ndim != 4:
            raise ValueError(f"[{op}] expected '{name}' of 4 axes, got {tuple(a.shape)}")
    b, _, t, d = q.shape
    kv = (b, k_cache.shape[1], 1, d)
    if t != 1 or k.shape != kv or v.shape != kv:
        raise ValueError(
            f"[{op}] expected q (B, Hq, 1, D) and k, v {kv}, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if v_cache.shape != k_cache.shape or k_cache.shape[0] != b or k_cache.shape[3] != d:
        raise ValueError(
            f"[{op}] expected caches of shape (B, Hkv, S, D) = ({b}, Hkv, S, {d}), got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        raise TypeError(f"[{op}] expected k, v in their caches' dtypes")
    off = _offsets(op, offset, b)
    fr, is_inv = _freq_input(dims_, base, freqs)
    fn = _function(dims_, bool(traditional), is_inv, float(scale))
    return fn(q, k, v, k_cache, v_cache, off, fr)


def _make(case, dtype, rng):
    b, hq, hk, s, d = case["shape"]

    def arr(*shape):
        return mx.array(rng.normal(size=shape).astype("float32")).astype(dtype)

    q = arr(b, 1, hq, d).transpose(0, 2, 1, 3)  # as an attention layer produces it
    k, v = arr(b, 1, hk, d).transpose(0, 2, 1, 3), arr(b, hk, 1, d)
    kc, vc = arr(b, hk, s, d), arr(b, hk, s, d)
    offset = case.get("offset", s - 1)
    if case.get("per_batch"):
        offset = mx.array([(3 * i + 1) % s for i in range(b)], dtype=mx.int32)
    dims_ = case.get("dims", d)
    return q, k, v, kc, vc, offset, dims_, case.get("traditional", False), 10000.0, 1.0, None


def _stock(q, k, v, kc, vc, offset, dims_, traditional, base, scale, freqs):
    q = mx.fast.rope(q, dims_, traditional=traditional, base=base, scale=scale, offset=offset)
    k = mx.fast.rope(k, dims_, traditional=traditional, base=base, scale=scale, offset=offset)
    kc[..., offset : offset + 1, :] = k
    vc[..., offset : offset + 1, :] = v
    return q, kc, vc


register(
    KernelSpec(
        name="rope_qk_cache_update",
        family="rope",
        op=rope_qk_cache_update,
        ref=rope_qk_cache_update_ref,
        make_inputs=_make,
        cases=(
            {"id": "first-token", "shape": (1, 2, 1, 1, 32), "offset": 0},
            {"id": "gqa-8q-2kv-s33", "shape": (1, 8, 2, 33, 64), "offset": 17},
            {"id": "last-slot-s31", "shape": (2, 4, 4, 31, 16)},
            {"id": "partial-trad", "shape": (1, 4, 2, 9, 40), "dims": 24, "traditional": True},
            {"id": "per-batch", "shape": (3, 2, 1, 7, 16), "per_batch": True},
            {"id": "past-the-end", "shape": (1, 2, 2, 5, 16), "offset": 5},
        ),
        bench_cases=(
            {"id": "decode-32q-4kv-s256", "shape": (1, 32, 4, 256, 128), "offset": 200},
            {"id": "decode-32q-8kv-s1024", "shape": (1, 32, 8, 1024, 128), "offset": 1000},
            {"id": "decode-32q-8kv-s4096", "shape": (1, 32, 8, 4096, 128), "offset": 4000},
        ),
        stock=_stock,
        grad_argnums=(0, 1, 2, 3, 4),
        description="decode step: rope q and k at a runtime offset and write k, v into new "
        "caches (copies the caches: pays for short caches only)",
    )
)
