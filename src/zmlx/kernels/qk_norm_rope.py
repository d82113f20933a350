"""Per-head RMSNorm of q and k, rotary embedding, and the head transpose, in ONE kernel.

Qwen3-style attention (``q_norm``/``k_norm`` on each head, then ``rope``) spends eight stock
ops per layer between the projections and the cache: two reshapes, two RMSNorms, two
transposes and two ``mx.fast.rope``. :func:`qk_norm_rope` reads the projections as they come
out of ``q_proj``/``k_proj`` and writes the rotated heads in ``(B, H, L, D)`` order.

One warp owns one (token, head) row: it sums the squares, rounds ``x * rsqrt(mean + eps)`` to
the activation dtype and multiplies by the weight (as ``mx.fast.rms_norm`` does), then rotates
the pairs in float32 and rounds once. The offset is a runtime value (an int or an int array
of one or ``B`` positions), so a compiled decode step keeps one graph.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..core.backend import backend
from ..core.dtypes import check_float
from ..core.kernel import Kernel, grid_1d
from ..testing import TOLERANCES
from ._common import dims as shape_params
from ._common import vector
from .catalog import KernelSpec, register
from .rope import _freq_input, _offsets

OP = "qk_norm_rope"

_BODY = """
  const uint B = zx_dims[0], L = zx_dims[1], HQ = zx_dims[2], HK = zx_dims[3];
  const uint D = zx_dims[4], half = zx_dims[5];
  const bool TRAD = zx_dims[6] != 0u, INV = zx_dims[7] != 0u, OFFV = zx_dims[8] != 0u;
  const uint row = tid / 32u;
  const uint H = HQ + HK;
  if (row >= B * L * H) { return; }  // whole warps leave together
  const uint h = row % H;
  const uint t = (row / H) % L;
  const uint b = row / (H * L);
  const bool is_q = h < HQ;
  const uint hh = is_q ? h : h - HQ;
  const uint nh = is_q ? HQ : HK;
  const long src = (((long)b * L + t) * nh + hh) * D;
  const long dst = (((long)b * nh + hh) * L + t) * D;
  float ss = 0.0f;
  for (uint i = lane; i < half; i += 32u) {
    const uint j1 = TRAD ? 2u * i : i, j2 = TRAD ? 2u * i + 1u : i + half;
    const float a = is_q ? static_cast<float>(q[src + j1]) : static_cast<float>(k[src + j1]);
    const float c = is_q ? static_cast<float>(q[src + j2]) : static_cast<float>(k[src + j2]);
    ss += a * a + c * c;
  }
  for (uint j = 2u * half + lane; j < D; j += 32u) {
    const float a = is_q ? static_cast<float>(q[src + j]) : static_cast<float>(k[src + j]);
    ss += a * a;
  }
  ss = zx_warp_sum(ss);
  const float inv = zx_rsqrt(ss / (float)D + (is_q ? prm[1] : prm[2]));
  const float pos = prm[0] * (float)((int)t + off[OFFV ? b : 0u]);
  for (uint i = lane; i < half; i += 32u) {
    const uint j1 = TRAD ? 2u * i : i, j2 = TRAD ? 2u * i + 1u : i + half;
    float a = is_q ? static_cast<float>(q[src + j1]) : static_cast<float>(k[src + j1]);
    float c = is_q ? static_cast<float>(q[src + j2]) : static_cast<float>(k[src + j2]);
    const float w1 = is_q ? static_cast<float>(wq[j1]) : static_cast<float>(wk[j1]);
    const float w2 = is_q ? static_cast<float>(wq[j2]) : static_cast<float>(wk[j2]);
    a = zx_rnd<T>(zx_rnd<T>(a * inv) * w1);
    c = zx_rnd<T>(zx_rnd<T>(c * inv) * w2);
    const float theta = pos * (INV ? fr[i] : 1.0f / fr[i]);
    const float cs = zx_cos(theta), sn = zx_sin(theta);
    const float o1 = a * cs - c * sn, o2 = a * sn + c * cs;
    if (is_q) { qo[dst + j1] = static_cast<T>(o1); qo[dst + j2] = static_cast<T>(o2); }
    else { ko[dst + j1] = static_cast<T>(o1); ko[dst + j2] = static_cast<T>(o2); }
  }
  for (uint j = 2u * half + lane; j < D; j += 32u) {
    const float a = is_q ? static_cast<float>(q[src + j]) : static_cast<float>(k[src + j]);
    const float w = is_q ? static_cast<float>(wq[j]) : static_cast<float>(wk[j]);
    const float o = zx_rnd<T>(zx_rnd<T>(a * inv) * w);
    if (is_q) { qo[dst + j] = static_cast<T>(o); } else { ko[dst + j] = static_cast<T>(o); }
  }
"""

KERNEL = Kernel(OP, ["q", "k", "wq", "wk", "off", "fr", "prm", "zx_dims"], ["qo", "ko"], _BODY)
_GROUP = 128


def qk_norm_rope_ref(q, k, wq, wk, eps=1e-6, dims=None, traditional=False, base=10000.0,
                     scale=1.0, offset=0, eps_k=None):  # fmt: skip
    """Stock form: reshape to heads, ``mx.fast.rms_norm``, transpose, ``mx.fast.rope``.

    Shapes:
        q: ``(B, L, Hq * D)`` or ``(B, L, Hq, D)``; k: ``(B, L, Hk * D)`` or ``(B, L, Hk, D)``;
        wq, wk: ``(D,)`` -> ``(B, Hq, L, D)``, ``(B, Hk, L, D)``.
    """
    d = wq.shape[0]
    dims_ = dims or d
    out = []
    for x, w, e in ((q, wq, eps), (k, wk, eps if eps_k is None else eps_k)):
        b, length = x.shape[:2]
        h = mx.fast.rms_norm(x.reshape(b, length, -1, d), w, e).transpose(0, 2, 1, 3)
        out.append(mx.fast.rope(h, dims_, traditional=traditional, base=base, scale=scale,
                                offset=offset))  # fmt: skip
    return tuple(out)


def _check(q, k, wq, wk, dims_):
    for name, x in (("q", q), ("k", k)):
        check_float(OP, name, x)
        if x.ndim not in (3, 4):
            raise ValueError(f"[{OP}] expected {name} of shape (B, L, H * D) or (B, L, H, D), "
                             f"got {tuple(x.shape)}")  # fmt: skip
    for name, w in (("wq", wq), ("wk", wk)):
        check_float(OP, name, w)
        if w.ndim != 1:
            raise ValueError(f"[{OP}] expected {name} of shape (D,), got {tuple(w.shape)}")
    d = wq.shape[0]
    if wk.shape != wq.shape:
        raise ValueError(f"[{OP}] expected wk of shape {tuple(wq.shape)}, got {tuple(wk.shape)}")
    if q.dtype != k.dtype or q.shape[:2] != k.shape[:2]:
        raise ValueError(f"[{OP}] expected q and k with the same dtype and (B, L), got "
                         f"{q.dtype} {tuple(q.shape)} and {k.dtype} {tuple(k.shape)}")  # fmt: skip
    for name, x in (("q", q), ("k", k)):
        if (x.ndim == 4 and x.shape[-1] != d) or x.shape[-1] % d:
            raise ValueError(f"[{OP}] expected {name}'s last axis to hold heads of D={d}, got "
                             f"{tuple(x.shape)}")  # fmt: skip
    if not isinstance(dims_, int) or dims_ <= 0 or dims_ % 2 or dims_ > d:
        raise ValueError(f"[{OP}] expected even dims with 0 < dims <= {d}, got {dims_!r}")


def qk_norm_rope(q, k, wq, wk, eps: float = 1e-6, dims: int | None = None,
                 traditional: bool = False, base: float = 10000.0, scale: float = 1.0,
                 offset: int | mx.array = 0, eps_k: float | None = None):  # fmt: skip
    """RMSNorm each head of ``q`` and ``k`` (weights ``wq``, ``wk``), rotate, transpose.

    Args:
        q, k: the projections (heads flattened or not), same dtype.
        wq, wk: the norms' weights, one per feature of a head.
        eps: RMSNorm epsilon (``eps_k`` for k if it differs).
        dims, traditional, base, scale: the rotary embedding (as ``nn.RoPE``); ``dims``
            defaults to the head size.
        offset: position of the first token: an int or an int array of one or ``B`` values.

    Returns:
        ``(q_heads, k_heads)`` in ``(B, H, L, D)`` order, in the activations' dtype.

    Shapes:
        q: ``(B, L, Hq * D)``; k: ``(B, L, Hk * D)`` -> ``(B, Hq, L, D)``, ``(B, Hk, L, D)``.
    """
    d = wq.shape[0] if isinstance(wq, mx.array) and wq.ndim == 1 else -1
    dims_ = d if dims is None else dims
    _check(q, k, wq, wk, dims_)
    b, length = q.shape[:2]
    hq, hk = q.size // max(1, b * length * d), k.size // max(1, b * length * d)
    if backend() == "cpu" or q.size == 0:
        return qk_norm_rope_ref(q, k, wq, wk, eps, dims_, traditional, base, scale, offset, eps_k)
    off = _offsets(OP, offset, b)
    fr, is_inv = _freq_input(dims_, base, None)
    rows = b * length * (hq + hk)
    grid, group = grid_1d(rows * 32, _GROUP)
    e_k = eps if eps_k is None else eps_k
    qo, ko = KERNEL(
        q, k, wq, wk, off, fr,
        vector([float(scale), float(eps), float(e_k)], mx.float32),
        shape_params(b, length, hq, hk, d, dims_ // 2, bool(traditional), is_inv, off.size > 1),
        output_shapes=[(b, hq, length, d), (b, hk, length, d)],
        output_dtypes=[q.dtype, q.dtype], grid=grid, threadgroup=group,
        template=[("T", q.dtype)],
    )  # fmt: skip
    return qo, ko


# ---------------------------------------------------------------------------------------
# Catalog entry


def _make(case, dtype, rng):
    b, length, hq, hk, d = case["shape"]

    def arr(*shape, scale=1.0):
        return mx.array((rng.normal(size=shape) * scale).astype(np.float32)).astype(dtype)

    q, k = arr(b, length, hq * d), arr(b, length, hk * d)
    wq, wk = arr(d, scale=0.5) + 1, arr(d, scale=0.5) + 1
    offset = case.get("offset", 0)
    if case.get("per_batch"):
        offset = mx.array(np.arange(b) * 5 + offset, dtype=mx.int32)
    return (q, k, wq, wk, 1e-6, case.get("dims", d), case.get("traditional", False),
            case.get("base", 1e6), 1.0, offset)  # fmt: skip


register(
    KernelSpec(
        name=OP,
        family="rope",
        op=qk_norm_rope,
        ref=qk_norm_rope_ref,
        make_inputs=_make,
        cases=(
            {"id": "decode-qwen3-32q4k-128", "shape": (1, 1, 32, 4, 128), "offset": 77},
            {"id": "prefill-2x9-6q2k-64", "shape": (2, 9, 6, 2, 64), "offset": 3},
            {"id": "partial-dims-33", "shape": (1, 3, 3, 1, 48), "dims": 32, "offset": 5},
            {"id": "traditional", "shape": (1, 2, 4, 2, 32), "traditional": True},
            {"id": "per-batch-offsets", "shape": (3, 1, 4, 2, 16), "per_batch": True},
            {"id": "odd-head-40", "shape": (1, 1, 5, 1, 40), "offset": 4096},
        ),
        bench_cases=(
            {"id": "decode-qwen3-30b", "shape": (1, 1, 32, 4, 128), "offset": 4096},
            {"id": "prefill-qwen3-30b", "shape": (1, 1024, 32, 4, 128)},
        ),
        stock=qk_norm_rope_ref,
        # Angles reach offset * theta_0 = 4096 rad: float32 carries about 2.4e-4 of absolute
        # error there, and backends compute their sin/cos differently (MLX's CUDA rope is off
        # the CPU's by that much), so float32 gets that atol.
        tolerances={**TOLERANCES, mx.float32: (5e-4, 1e-4)},
        description="per-head RMSNorm of q and k + rope + head transpose in one kernel "
        "(Qwen3-style attention), runtime offsets",
    )
)
