"""Router load statistics: tokens per expert, and the Switch-Transformer load-balancing loss.

* :func:`expert_counts`: how many tokens each expert received (an int32 histogram of the
  router's expert ids), the per-expert load a balancing loss or bias update needs, and the
  counts a prefill path sorts tokens by. Kernel: one thread per ``VEC`` ids, an integer atomic
  add per id into an output zeroed at launch (``init_value=0``); integer adds commute, so the
  result is exact and deterministic.
* :func:`router_aux_loss`: ``E * sum_e f_e * P_e`` with ``f_e`` the fraction of tokens routed
  to expert ``e`` and ``P_e`` the mean router probability of ``e``. Kernel: the counts above,
  then one pass over the probabilities in which each group sums ``p[t, e] * count[e]`` over a
  contiguous slice of ``(token, expert)`` entries (coalesced reads), a block reduction per
  group, and ``mx.sum`` of the per-group partials (deterministic; no float atomics). Its VJP
  is analytic: ``d loss / d p[t, e] = E * count[e] / T^2``.
"""

from __future__ import annotations

import math
from functools import cache

import mlx.core as mx
import numpy as np

from ..core.backend import backend
from ..core.dtypes import check_float
from ..core.kernel import Kernel, grid_1d, scalar
from ._common import VEC, dims, vec_grid, vec_loop
from .catalog import KernelSpec, register

# ---------------------------------------------------------------------------------------
# References


def expert_counts_ref(indices, num_experts):
    """Tokens routed to each expert: ``counts[e] = #{ids == e}``; ids outside ``[0, E)`` are
    not counted.

    Shapes:
        indices: ``(..., K)`` integer -> ``(E,)`` int32.
    """
    flat = indices.reshape(-1)
    valid = (flat >= 0) & (flat < num_experts)
    safe = mx.where(valid, flat, 0)
    return mx.zeros((num_experts,), mx.int32).at[safe].add(valid.astype(mx.int32))


def router_aux_loss_ref(router_probs, indices, num_experts):
    """``E * sum_e (count_e / T) * mean_t p[t, e]`` in float32 (see :func:`router_aux_loss`).

    Shapes:
        router_probs: ``(..., E)``; indices: ``(..., K)`` -> ``()`` float32.
    """
    p = router_probs.reshape(-1, num_experts).astype(mx.float32)
    frac = expert_counts_ref(indices, num_experts).astype(mx.float32) / p.shape[0]
    return num_experts * (frac * p.mean(axis=0)).sum()


# ---------------------------------------------------------------------------------------
# Kernels

_COUNT_BODY = vec_loop("""
      const long e = static_cast<long>(idx[i]);
      if (e >= 0 && e < (long)zx_n[1]) {
        zx_atomic_add(&counts[e], 1);
      }""")

_LOSS_BODY = """
  ZX_SHARED float buf[32];
  const uint n = zx_n[0];
  const uint ne = zx_n[1];
  const uint start = gid * zx_n[2];
  const uint end = start >= n ? start : (n - start > zx_n[2] ? start + zx_n[2] : n);
  // Entry j of the row-major (T, E) probabilities belongs to expert j % E; c follows it.
  const uint step = lsize % ne;
  uint c = (start + lid) % ne;
  float acc = 0.0f;
  for (uint j = start + lid; j < end; j += lsize) {
    acc += static_cast<float>(p[j]) * static_cast<float>(cnt[c]);
    c += step;
    if (c >= ne) {
      c -= ne;
    }
  }
  acc = zx_block_sum(acc, buf);
  if (lid == 0u) {
    part[gid] = acc * prm[0];
  }
"""

LOSS_GROUP = 256
LOSS_MAX_GROUPS = 1024  # partial sums: enough groups to fill a GPU, few enough to sum cheaply


@cache
def count_kernel() -> Kernel:
    """Inputs: ``idx`` (any integer dtype), ``zx_n = (ids, E)``; output ``counts`` (E,) int32."""
    return Kernel("expert_counts", ["idx", "zx_n"], ["counts"], _COUNT_BODY, atomic_outputs=True)


@cache
def loss_kernel() -> Kernel:
    """Inputs: ``p`` (T * E probabilities), ``cnt`` (E,) int32, ``prm = (E / T^2,)``,
    ``zx_n = (T * E, E, entries per group)``; output ``part`` (groups,) float32."""
    return Kernel("router_aux_loss", ["p", "cnt", "prm", "zx_n"], ["part"], _LOSS_BODY)


def _counts(indices, num_experts):
    n = indices.size
    grid, tg = vec_grid(n)
    return count_kernel()(
        indices,
        dims(n, num_experts),
        output_shapes=[(num_experts,)],
        output_dtypes=[mx.int32],
        grid=grid,
        threadgroup=tg,
        template=[("VEC", VEC)],
        init_value=0,
    )[0]


# ---------------------------------------------------------------------------------------
# Public ops


def _check_ids(op, indices, num_experts):
    if not isinstance(indices, mx.array) or not mx.issubdtype(indices.dtype, mx.integer):
        got = indices.dtype if isinstance(indices, mx.array) else type(indices).__name__
        raise TypeError(f"[{op}] expected integer expert 'indices', got {got}")
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"[{op}] expected num_experts to be an int >= 1, got {num_experts!r}")


def expert_counts(indices, num_experts):
    """Tokens routed to each expert (int32), over every token and every top-k slot.

    Args:
        indices: the router's expert ids (any integer dtype), e.g. ``(tokens, K)``. Ids outside
            ``[0, num_experts)`` are not counted.
        num_experts: ``E``.

    Returns:
        ``counts`` with ``counts[e]`` the number of ids equal to ``e``; ``counts.sum()`` is the
        number of valid ids (``tokens * K`` when all are valid).

    Shapes:
        indices: ``(..., K)`` -> ``(E,)`` int32.
    """
    _check_ids("expert_counts", indices, num_experts)
    if backend() == "cpu" or indices.size == 0:
        return expert_counts_ref(indices, num_experts)
    return _counts(indices, num_experts)


@mx.custom_function
def _aux_loss(probs, indices):
    t, e = probs.shape
    n = t * e
    groups = min(LOSS_MAX_GROUPS, math.ceil(n / (LOSS_GROUP * 4)))
    chunk = math.ceil(n / groups)
    grid, tg = grid_1d(groups * LOSS_GROUP, LOSS_GROUP)
    part = loss_kernel()(
        probs,
        _counts(indices, e),
        scalar(e / (t * t)),
        dims(n, e, chunk),
        output_shapes=[(groups,)],
        output_dtypes=[mx.float32],
        grid=grid,
        threadgroup=tg,
    )[0]
    return part.sum()


@_aux_loss.vjp
def _aux_loss_vjp(primals, cotangent, output):
    probs, indices = primals
    t, e = probs.shape
    w = _counts(indices, e).astype(mx.float32) * (e / (t * t))
    return mx.broadcast_to((cotangent * w).astype(probs.dtype), probs.shape), mx.zeros_like(indices)


def router_aux_loss(router_probs, indices, num_experts):
    """The Switch-Transformer load-balancing loss, ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of tokens routed to expert ``e`` (``count_e / T``; with top-k
    routing the fractions sum to ``k``) and ``P_e`` the mean over tokens of the router
    probability of ``e``. This is Fedus et al.'s Switch Transformer loss (``k = 1``) as
    Hugging Face transformers' ``load_balancing_loss_func`` generalises it to top-k (no
    attention mask), the auxiliary loss used to train Mixtral, Qwen2-MoE/Qwen3-MoE, OLMoE,
    GraniteMoE, JetMoE and PhiMoE (scaled there by ``router_aux_loss_coef``). Perfectly
    balanced routing gives ``k``. DeepSeek-V2's expert-level loss is this divided by ``k``;
    DeepSeek-V3 and GLM-4.x balance with a selection bias instead (no auxiliary loss).

    Args:
        router_probs: the router's softmax over ALL experts (not the top-k weights), float32,
            float16 or bfloat16; differentiable.
        indices: the experts each token was routed to (integer; ids outside ``[0, E)`` are not
            counted); no gradient.
        num_experts: ``E``, the last axis of ``router_probs``.

    Returns:
        The loss, a float32 scalar.

    Shapes:
        router_probs: ``(..., E)``; indices: ``(..., K)`` -> ``()``.
    """
    op = "router_aux_loss"
    _check_ids(op, indices, num_experts)
    if not isinstance(router_probs, mx.array):
        raise TypeError(f"[{op}] expected 'router_probs' to be an mlx array")
    check_float(op, "router_probs", router_probs)
    shape = tuple(router_probs.shape)
    if not shape or shape[-1] != num_experts or tuple(indices.shape[:-1]) != shape[:-1]:
        raise ValueError(
            f"[{op}] expected router_probs (..., {num_experts}) and indices (..., K) over the "
            f"same tokens, got {shape} and {tuple(indices.shape)}"
        )
    if backend() == "cpu" or router_probs.size == 0 or indices.size == 0:
        return router_aux_loss_ref(router_probs, indices, num_experts)
    t = router_probs.size // num_experts
    return _aux_loss(router_probs.reshape(t, num_experts), indices.reshape(t, -1))


# ---------------------------------------------------------------------------------------
# Catalog

# Decode and prefill shapes of real models: (tokens, experts, top-k).
_MODELS = {"qwen3-30b-a3b": (128, 8), "gpt-oss-20b": (32, 4)}
_BENCH = tuple(
    {"id": f"{m}-{phase}", "tokens": (t,), "E": e, "k": k}
    for m, (e, k) in _MODELS.items()
    for phase, t in (("decode", 1), ("prefill", 2048))
)
_CASES = (
    {"id": "t1-E8-k2", "tokens": (1,), "E": 8, "k": 2},
    {"id": "t31-E64-k8", "tokens": (31,), "E": 64, "k": 8},
    {"id": "t33-E128-k8", "tokens": (33,), "E": 128, "k": 8},
    {"id": "t2x3-E32-k4", "tokens": (2, 3), "E": 32, "k": 4},
    {"id": "t4097-E4-k1", "tokens": (4097,), "E": 4, "k": 1},
    {"id": "t5-E33-k3-transposed", "tokens": (5,), "E": 33, "k": 3, "transpose": True},
    {"id": "t7-E16-k2-invalid-ids", "tokens": (7,), "E": 16, "k": 2, "invalid": True},
)


def _routing(case, rng):
    """Router probabilities (softmax of random logits) and the top-k expert ids per token."""
    tok, e, k = case["tokens"], case["E"], case["k"]
    n = int(np.prod(tok))
    logits = rng.normal(size=(n, e)).astype(np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    if case.get("invalid"):
        ids[0, 0], ids[-1, -1] = e, -1  # out of range: never counted
    return probs, ids, tok


def _make_counts(case, dtype, rng):
    _, ids, tok = _routing(case, rng)
    idx = mx.array(ids.reshape(*tok, case["k"]).astype(np.int64)).astype(dtype)
    if case.get("transpose"):
        idx = mx.array(np.ascontiguousarray(ids.T)).astype(dtype).T
    return (idx, case["E"])


def _make_loss(case, dtype, rng):
    probs, ids, tok = _routing(case, rng)
    e, k = case["E"], case["k"]
    p = mx.array(probs.reshape(*tok, e)).astype(dtype)
    if case.get("transpose"):
        p = mx.array(np.ascontiguousarray(probs.T)).astype(dtype).T
    return (p, mx.array(ids.reshape(*tok, k).astype(np.int32)), e)


# float32 sums in another order; the loss is O(k).
_LOSS_TOL = {dt: (2e-5, 2e-5) for dt in (mx.float32, mx.float16, mx.bfloat16)}

register(
    KernelSpec(
        name="expert_counts",
        family="routers",
        op=expert_counts,
        ref=expert_counts_ref,
        make_inputs=_make_counts,
        cases=_CASES,
        bench_cases=_BENCH,
        stock=expert_counts_ref,
        dtypes=(mx.uint32, mx.int32),
        description="tokens routed to each expert (int32 histogram, integer atomics)",
    )
)
register(
    KernelSpec(
        name="router_aux_loss",
        family="routers",
        op=router_aux_loss,
        ref=router_aux_loss_ref,
        make_inputs=_make_loss,
        cases=_CASES,
        bench_cases=_BENCH,
        stock=router_aux_loss_ref,
        tolerances=_LOSS_TOL,
        grad_argnums=(0,),
        description="Switch-Transformer load-balancing loss E * sum_e f_e * P_e (top-k, HF's)",
    )
)
