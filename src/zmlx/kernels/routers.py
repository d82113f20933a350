"""MoE routers: ``(indices, weights)`` exactly as each mlx-lm family computes them.

Three families of rules, one parameterised kernel (:mod:`.router_kernels`):

* ``softmax_topk``: softmax (float32, output in the logits dtype) -> top-k, optional
  renormalisation, DeepSeek-V2's group-limited greedy and ``routed_scaling_factor``
  (Qwen3-MoE, Qwen3-Next, OLMoE, DeepSeek-V2).
* ``topk_softmax``: top-k of the logits -> softmax over the k (Mixtral, GPT-OSS; Granite in
  float32).
* ``sigmoid_topk``: sigmoid (or softmax, Kimi) scores + a selection-only bias, group-limited
  top-k on the sum of each group's two best scores, renormalise, scale (GLM-4.x,
  DeepSeek-V3/Kimi-K2, Kimi-Linear, MiniMax, LFM2-MoE).

:func:`router_rule` maps an mlx-lm ``model_type`` and its ``ModelArgs`` to a
:class:`RouterRule`; :func:`route` applies one to logits and :func:`router_fused` runs the
router matvec (float or 8-bit affine, as mlx-lm's ``quant_predicate`` quantizes routers) and
the routing in one launch for decode.

Order and ties: mlx-lm takes ``argpartition``, whose order is unspecified (and on CPU, which
of two tied experts it keeps). zmlx returns the k experts by descending selection score with
ties going to the lower expert index, on every backend; the reference uses a stable argsort
for that. The set equals mlx-lm's whenever there is no tie at the k-th place, and
tests against mlx-lm's own code compare sorted ``(index, weight)`` pairs.
"""

from __future__ import annotations

import mlx.core as mx

from ..core.backend import backend
from ..core.dtypes import FLOAT_DTYPES, check_float, promote
from ..core.fallback import note
from . import router_kernels as RK
from ._common import check_prenorm, prenorm_foldable, prenorm_ref
from .router_rules import (
    RouterRule,
    _check,
    _covered,
    _plan,
    route_ref,
    router_fused_ref,
    router_linear_ref,
    router_rule,
)

__all__ = [
    "RouterRule",
    "route",
    "route_ref",
    "route_stock",
    "router_fused",
    "router_fused_ref",
    "router_rule",
    "sigmoid_topk",
    "softmax_topk",
    "topk_softmax",
]

# ---------------------------------------------------------------------------------------
# Public ops


def route(logits: mx.array, rule: RouterRule, select_bias: mx.array | None = None, *,
          verbose: bool = False):  # fmt: skip
    """Route tokens: the k experts of each token and their weights, as mlx-lm computes them.

    Args:
        logits: router logits (the router Linear's output).
        rule: the family's :class:`RouterRule` (:func:`router_rule`).
        select_bias: ``sigmoid_topk`` only: ``e_score_correction_bias`` / ``expert_bias``,
            used to select experts but not in the weights.
        verbose: print why the reference path was taken, if it was.

    Returns:
        ``(indices, weights)``: uint32 expert indices by descending selection score (ties to
        the lower index) and their weights.

    Shapes:
        logits: ``(..., E)``, select_bias: ``(E,)`` -> ``(..., k)``, ``(..., k)``.
    """
    check_float("route", "logits", logits)
    e = _check("route", logits.shape, rule, select_bias)
    if backend() == "cpu":
        return route_ref(logits, rule, select_bias)
    why = _covered(rule, e)
    if why is not None:
        note("route", why, verbose=verbose)
        return route_ref(logits, rule, select_bias)
    if logits.size == 0:
        return route_ref(logits, rule, select_bias)
    return _route_fn(rule)(logits, select_bias if select_bias is not None else RK.dummy())


_FNS: dict[RouterRule, object] = {}


def _route_fn(rule: RouterRule):
    """A cached ``custom_function`` per rule; its VJP differentiates the reference weights."""
    fn = _FNS.get(rule)
    if fn is not None:
        return fn

    @mx.custom_function
    def fn(logits, sbias):
        has_bias = sbias.size == logits.shape[-1] and rule.kind == "sigmoid_topk"
        bias = sbias if has_bias else None
        e = logits.shape[-1]
        plan, template = _plan(rule, logits.dtype, bias.dtype if has_bias else None, e)
        t = logits.size // e
        inds, w = RK.launch_route(logits, bias, plan, template, t)
        shape = tuple(logits.shape[:-1]) + (rule.k,)
        return inds.reshape(shape), w.reshape(shape)

    @fn.vjp
    def fn_vjp(primals, cotangents, outputs):
        logits, sbias = primals
        bias = sbias if sbias.size == logits.shape[-1] else None
        _, (g,) = mx.vjp(lambda x: route_ref(x, rule, bias)[1], [logits], [cotangents[1]])
        return g, mx.zeros_like(sbias)

    _FNS[rule] = fn
    return fn


def softmax_topk(logits, k: int, *, norm: bool = False, scale: float = 1.0, n_group: int = 1,
                 topk_group: int = 1, verbose: bool = False):  # fmt: skip
    """Softmax over the experts, then top-k (Qwen3-MoE, OLMoE, DeepSeek-V2).

    Shapes:
        logits: ``(..., E)`` -> indices ``(..., k)``, weights ``(..., k)`` in logits dtype.
    """
    rule = RouterRule("softmax_topk", k, norm=norm, scale=scale, n_group=n_group,
                      topk_group=topk_group)  # fmt: skip
    return route(logits, rule, verbose=verbose)


def topk_softmax(logits, k: int, *, float32: bool = False, verbose: bool = False):
    """Top-k of the logits, then softmax over the k (Mixtral, GPT-OSS; Granite: float32).

    Shapes:
        logits: ``(..., E)`` -> indices ``(..., k)``, weights ``(..., k)``.
    """
    return route(logits, RouterRule("topk_softmax", k, float32=float32), verbose=verbose)


def sigmoid_topk(logits, k: int, select_bias=None, *, score: str = "sigmoid",
                 float32: bool = True, n_group: int = 1, topk_group: int = 1, norm: bool = True,
                 norm_eps: float = 0.0, scale: float = 1.0, bias_cast: bool = False,
                 out_dtype=None, verbose: bool = False):  # fmt: skip
    """Sigmoid scores + selection-only bias, group-limited top-k, renormalise and scale.

    See :class:`RouterRule` for the arguments.

    Shapes:
        logits: ``(..., E)``, select_bias: ``(E,)`` -> indices ``(..., k)``, weights ``(..., k)``.
    """
    rule = RouterRule(
        "sigmoid_topk", k, norm=norm, norm_eps=norm_eps, scale=scale, n_group=n_group,
        topk_group=topk_group, score=score, float32=float32, bias_cast=bias_cast,
        out_dtype=out_dtype,
    )  # fmt: skip
    return route(logits, rule, select_bias, verbose=verbose)


def router_fused(x, weight, rule: RouterRule, *, bias=None, select_bias=None, scales=None,
                 biases=None, group_size: int = 64, bits: int = 8, prenorm=None,
                 return_normed: bool = False, verbose: bool = False):  # fmt: skip
    """The router Linear and the routing in one launch, for decode (up to 16 tokens).

    On CUDA the launch splits the router matrix over ``E / 2`` groups a token and the
    group that finishes it routes (``router_kernels.split_kernel``); on Metal one group a
    token does both.

    ``logits = x @ weight.T (+ bias)`` as mlx-lm's router computes them (float ``nn.Linear``
    or ``MoEGate``, or an affine-quantized ``QuantizedLinear``: pass ``scales``/``biases``),
    rounded to the logits dtype, then :func:`route`. Other sizes compute the logits with MLX
    and route with the routing kernel. Whether one launch beats two is for the benchmarks.

    Args:
        x: hidden states.
        weight: ``(E, D)`` float, or ``(E, D * bits / 32)`` uint32 when quantized.
        rule: the family's :class:`RouterRule`.
        bias: the router Linear's bias (GPT-OSS).
        select_bias: the selection-only bias of ``sigmoid_topk`` rules.
        scales, biases: affine quantization parameters ``(E, D / group_size)``.
        group_size, bits: quantization group size and bits (4 or 8 in the kernel).
        prenorm: ``(residual, weight, eps)``: route ``rms_norm(x + residual, weight, eps)``
            (a decoder layer's post-attention norm, folded into the x load) instead of x.
        return_normed: with ``prenorm``, also return that normed input (written by the same
            launch), for the expert kernels after the router.
        verbose: print why a slower path was taken.

    Returns:
        ``(indices, weights)`` as :func:`route`; with ``return_normed``,
        ``(indices, weights, normed)``.

    Shapes:
        x: ``(..., D)`` -> ``(..., k)``, ``(..., k)``.
    """
    op = "router_fused"
    check_float(op, "x", x)
    quant = scales is not None
    if quant:
        if weight.dtype != mx.uint32 or biases is None:
            raise TypeError(f"[{op}] expected uint32 weight with scales and biases (affine)")
        n_experts, d = weight.shape[0], weight.shape[-1] * 32 // bits
    else:
        check_float(op, "weight", weight)
        n_experts, d = weight.shape[0], weight.shape[-1]
    if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != d:
        raise ValueError(
            f"[{op}] expected x (..., {d}) and a 2-D weight, got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    _check(op, (n_experts,), rule, select_bias)
    prenorm = check_prenorm(op, x, prenorm)
    if return_normed and prenorm is None:
        raise ValueError(f"[{op}] expected prenorm with return_normed=True, got prenorm=None")
    rest = (weight, rule, bias, select_bias, scales, biases, group_size, bits)

    def unfused(xn, routed):
        return (*routed, xn) if return_normed else routed

    if backend() == "cpu":
        xn = prenorm_ref(x, prenorm)
        return unfused(xn, router_fused_ref(xn, *rest))
    t = x.size // d
    why = _covered(rule, n_experts)
    if why is None and t > RK.FUSED_MAX_TOKENS:
        why = f"{t} tokens > {RK.FUSED_MAX_TOKENS} (prefill)"
    if why is None and (d > RK.FUSED_MAX_DIM or (quant and (bits not in (4, 8) or d % group_size))):
        why = f"D = {d}, bits = {bits}, group_size = {group_size} not covered"
    if why is None and prenorm is not None and not prenorm_foldable(x, prenorm):
        why = "prenorm weight not in x's dtype"
    if why is not None or x.dtype not in FLOAT_DTYPES or t == 0:
        note(op, f"{why}; router Linear in MLX, then the routing kernel", verbose=verbose)
        x = prenorm_ref(x, prenorm)
        logits = router_linear_ref(x, weight, rule, bias, scales, biases, group_size, bits)
        return unfused(x, route(logits, rule, select_bias, verbose=verbose))
    xin = mx.float32 if rule.gate_float32 else x.dtype
    logits_dtype = promote((xin, scales.dtype if quant else weight.dtype))
    if bias is not None:
        logits_dtype = promote((logits_dtype, bias.dtype))
    plan, template = _plan(
        rule, logits_dtype, select_bias.dtype if select_bias is not None else None, n_experts
    )
    outs = RK.launch_fused(
        x, weight, scales, biases, bias, select_bias if plan.has_bias else None, plan, template,
        logits_dtype, bits if quant else 0, group_size, t, d, prenorm,
        split=RK.SPLIT and backend() == "cuda",
    )  # fmt: skip
    shape = tuple(x.shape[:-1]) + (rule.k,)
    routed = (outs[0].reshape(shape), outs[1].reshape(shape))
    return (*routed, outs[2].reshape(x.shape)) if return_normed else routed


def route_stock(logits, select_bias, rule):
    """mlx-lm's own expression (``argpartition``), the stock-MLX baseline for benchmarks."""
    return route_ref(logits, rule, select_bias, partition=True)


from . import router_specs as _specs  # noqa: E402,F401  (registers the catalog entries)
from .router_balance import expert_counts, router_aux_loss  # noqa: E402,F401
