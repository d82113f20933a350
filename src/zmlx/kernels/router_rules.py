"""Routing rules of the mlx-lm MoE families, their plain-MLX references and kernel plans.

See :mod:`zmlx.kernels.routers` for the ops and the order/tie conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from ..core.dtypes import check_float, promote
from . import router_kernels as RK

# ---------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class RouterRule:
    """One routing rule (see :func:`router_rule` for each mlx-lm family's).

    Attributes:
        kind: ``"softmax_topk"``, ``"topk_softmax"`` or ``"sigmoid_topk"``.
        k: experts per token.
        norm: divide the k weights by their sum (plus ``norm_eps``).
        norm_eps: added to the sum before dividing (1e-20 GLM-4.7-Flash/MiniMax/Kimi, 1e-6 LFM2).
        scale: ``routed_scaling_factor``, multiplied last.
        n_group: expert groups for group-limited top-k (1: none).
        topk_group: groups kept; the others' scores are set to 0.0 as in mlx-lm.
        score: ``sigmoid_topk`` only: ``"sigmoid"`` or ``"softmax"`` (Kimi-Linear).
        float32: compute scores from float32 logits (GLM/DeepSeek-V3/MiniMax sigmoid; Granite's
            softmax over the k). Otherwise scores are rounded to the logits dtype.
        bias_cast: cast the selection bias to the scores dtype before adding (Kimi-Linear);
            otherwise the add promotes (LFM2 selects on float32).
        out_dtype: dtype of the weights (MiniMax and LFM2 cast to the activation dtype);
            None keeps the scores dtype.
        gate_float32: :func:`router_fused` only: the matvec sees ``x.astype(float32)`` (MiniMax).
        ascending: the family selects with ``argpartition(s, kth=-k)[..., -k:]`` (Qwen3-MoE,
            Qwen3-Next, LFM2, GPT-OSS, Granite) rather than ``argpartition(-s, kth=k - 1)[..., :k]``.
            MLX's GPU argpartition is a stable sort, so the first form returns the k experts
            by ascending score and keeps the higher index of a tie; the second returns them by
            descending score and keeps the lower index. zmlx follows the family's form, so
            its picks and their order (which sets the combine's rounding) match stock MLX on
            the GPU.
    """

    kind: str
    k: int
    norm: bool = False
    norm_eps: float = 0.0
    scale: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    score: str = "sigmoid"
    float32: bool = False
    bias_cast: bool = False
    out_dtype: mx.Dtype | None = None
    gate_float32: bool = False
    ascending: bool = False


_KINDS = ("softmax_topk", "topk_softmax", "sigmoid_topk")


# mlx-lm's MODEL_REMAPPING for the families below.
_ALIASES = {"kimi_k2": "deepseek_v3", "joyai_llm_flash": "deepseek_v3", "minimax_m2": "minimax"}


def router_rule(model_type: str, args, dtype: mx.Dtype | None = None) -> RouterRule:
    """The routing rule of an mlx-lm MoE family.

    Args:
        model_type: mlx-lm ``model_type`` (``kimi_k2`` and ``joyai_llm_flash`` route as
            ``deepseek_v3``, ``minimax_m2`` as ``minimax``, as mlx-lm's ``MODEL_REMAPPING``).
        args: the model's ``ModelArgs`` (or a dict of its fields).
        dtype: the activation dtype (MiniMax and LFM2 cast weights to it).

    Returns:
        A :class:`RouterRule`.
    """
    a = args if isinstance(args, dict) else vars(args)
    model_type = _ALIASES.get(model_type, model_type)

    def get(name, default=None):
        v = a.get(name, default)
        return default if v is None else v

    k = int(get("num_experts_per_tok", get("num_experts_per_token", 1)))
    if model_type in ("qwen3_moe", "qwen3_next", "olmoe"):
        return RouterRule(
            "softmax_topk", k, norm=bool(get("norm_topk_prob", False)),
            ascending=model_type != "olmoe",
        )  # fmt: skip
    if model_type == "deepseek_v2":
        grouped = get("topk_method") == "group_limited_greedy"
        return RouterRule(
            "softmax_topk",
            k,
            scale=float(get("routed_scaling_factor", 1.0)),
            n_group=int(get("n_group", 1)) if grouped else 1,
            topk_group=int(get("topk_group", 1)) if grouped else 1,
        )
    if model_type in ("mixtral", "gpt_oss"):
        return RouterRule("topk_softmax", k, ascending=model_type == "gpt_oss")
    if model_type == "granitemoe":
        return RouterRule("topk_softmax", k, float32=True, ascending=True)
    if model_type in ("glm4_moe", "glm4_moe_lite", "deepseek_v3"):
        return RouterRule(
            "sigmoid_topk",
            k,
            norm=bool(get("norm_topk_prob", False)) and k > 1,
            norm_eps=1e-20 if model_type == "glm4_moe_lite" else 0.0,
            scale=float(get("routed_scaling_factor", 1.0)),
            n_group=int(get("n_group", 1)),
            topk_group=int(get("topk_group", 1)),
            float32=True,
        )
    if model_type == "minimax":
        return RouterRule(
            "sigmoid_topk", k, norm=True, norm_eps=1e-20, float32=True, out_dtype=dtype,
            gate_float32=True,
        )  # fmt: skip
    if model_type == "lfm2_moe":
        return RouterRule(
            "sigmoid_topk",
            k,
            norm=bool(get("norm_topk_prob", False)),
            norm_eps=1e-6,
            scale=float(get("routed_scaling_factor", 1.0)),
            out_dtype=dtype,
            ascending=True,
        )
    if model_type == "kimi_linear":
        return RouterRule(
            "sigmoid_topk",
            k,
            norm=bool(get("moe_renormalize", True)) and k > 1,
            norm_eps=1e-20,
            scale=float(get("routed_scaling_factor", 1.0)),
            n_group=int(get("num_expert_group", 1)),
            topk_group=int(get("topk_group", 1)),
            score=str(get("moe_router_activation_func", "sigmoid")),
            bias_cast=True,
        )
    raise ValueError(f"[router_rule] no routing rule for model_type {model_type!r}")


# ---------------------------------------------------------------------------------------
# References (plain MLX, mlx-lm's expressions; top-k through a stable sort, see module doc)


def _topk(sel: mx.array, k: int, ascending: bool, partition: bool = False) -> mx.array:
    """The k largest of ``sel`` as the family's form selects them (see ``RouterRule``).

    The reference sorts stably, as MLX's GPU argpartition does; ``partition=True`` is mlx-lm's
    own expression (on the CPU its order and ties are unspecified: the benchmark baseline).
    """
    if ascending:
        if partition:
            return mx.stop_gradient(mx.argpartition(sel, kth=-k, axis=-1)[..., -k:])
        return mx.stop_gradient(mx.argsort(sel, axis=-1)[..., -k:])
    if partition:
        return mx.stop_gradient(mx.argpartition(-sel, kth=k - 1, axis=-1)[..., :k])
    return mx.stop_gradient(mx.argsort(-sel, axis=-1)[..., :k])


def _group_mask(sel: mx.array, n_group: int, topk_group: int, group_score: str) -> mx.array:
    """Zero every expert outside the ``topk_group`` best groups (ties keep the lower group)."""
    g = mx.unflatten(sel, -1, (n_group, -1))
    if group_score == "max":
        gs = g.max(axis=-1)
    else:
        gs = mx.topk(g, 2, axis=-1).sum(axis=-1)
    drop = mx.stop_gradient(mx.argsort(-gs, axis=-1)[..., topk_group:])
    g = mx.put_along_axis(g, drop[..., None], mx.array(0.0, sel.dtype), axis=-2)
    return mx.flatten(g, -2, -1)


def _finish(w: mx.array, rule: RouterRule) -> mx.array:
    if rule.norm:
        d = w.sum(axis=-1, keepdims=True)
        w = w / (d + rule.norm_eps if rule.norm_eps else d)
    if rule.scale != 1.0:
        w = w * rule.scale
    return w.astype(rule.out_dtype) if rule.out_dtype is not None else w


def route_ref(logits: mx.array, rule: RouterRule, select_bias: mx.array | None = None, *,
              partition: bool = False):  # fmt: skip
    """Plain-MLX reference of :func:`route` (the CPU path and the test oracle).

    ``partition=True`` selects with ``argpartition`` exactly as mlx-lm does (order
    unspecified on the CPU); the default uses a stable argsort, as MLX's GPU argpartition does
    (see ``RouterRule.ascending`` for the order and ties).

    Shapes:
        logits: ``(..., E)``; select_bias: ``(E,)`` -> indices ``(..., k)`` uint32,
        weights ``(..., k)``.
    """
    k = rule.k
    if rule.kind == "topk_softmax":
        inds = _topk(logits, k, rule.ascending, partition)
        v = mx.take_along_axis(logits, inds, axis=-1)
        if rule.float32:
            w = mx.softmax(v.astype(mx.float32), axis=-1)
        else:
            w = mx.softmax(v, axis=-1, precise=True)
        return inds, (w.astype(rule.out_dtype) if rule.out_dtype is not None else w)
    x = logits.astype(mx.float32) if rule.float32 else logits
    if rule.kind == "softmax_topk" or rule.score == "softmax":
        scores = mx.softmax(x, axis=-1, precise=True)
    else:
        scores = mx.sigmoid(x)
    sel = scores
    if rule.kind == "sigmoid_topk" and select_bias is not None:
        b = select_bias.astype(scores.dtype) if rule.bias_cast else select_bias
        sel = scores + b
    if rule.n_group > 1:
        mode = "max" if rule.kind == "softmax_topk" else "top2"
        sel = _group_mask(sel, rule.n_group, rule.topk_group, mode)
        if rule.kind == "softmax_topk":
            scores = sel  # DeepSeek-V2 takes weights from the masked scores
    inds = _topk(sel, k, rule.ascending, partition)
    return inds, _finish(mx.take_along_axis(scores, inds, axis=-1), rule)


def router_linear_ref(x, weight, rule, bias=None, scales=None, biases=None, group_size=64, bits=8):
    """mlx-lm's router projection: ``nn.Linear``/``QuantizedLinear``/``MoEGate`` logits."""
    if rule.gate_float32:
        x = x.astype(mx.float32)
    if scales is not None:
        out = mx.quantized_matmul(
            x, weight, scales, biases, transpose=True, group_size=group_size, bits=bits
        )
        return out + bias if bias is not None else out
    if bias is not None:
        return mx.addmm(bias, x, weight.T)
    return x @ weight.T


def router_fused_ref(x, weight, rule, bias=None, select_bias=None, scales=None, biases=None,
                     group_size=64, bits=8):  # fmt: skip
    """Reference of :func:`router_fused`: the router Linear, then :func:`route_ref`."""
    logits = router_linear_ref(x, weight, rule, bias, scales, biases, group_size, bits)
    return route_ref(logits, rule, select_bias)


# ---------------------------------------------------------------------------------------
# Plans: a rule resolved against the input dtypes, with its kernel template


@dataclass(frozen=True)
class _Plan:
    k: int
    norm: bool
    norm_eps: float
    scale: float
    n_group: int
    topk_group: int
    score_code: int  # 0 logits, 1 softmax, 2 sigmoid
    post_code: int  # 1: softmax over the k picks
    gmode: int  # 0 none, 1 group max, 2 group top-2 sum
    mask_w: bool
    has_bias: bool
    bias_cast: bool
    score_dtype: mx.Dtype
    select_dtype: mx.Dtype
    out_dtype: mx.Dtype
    ascending: bool


_PLANS: dict[tuple, tuple[_Plan, list]] = {}


def _plan(rule: RouterRule, logits_dtype, bias_dtype, n_experts: int) -> tuple[_Plan, list]:
    key = (rule, logits_dtype, bias_dtype, n_experts)
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    f32 = mx.float32
    if rule.kind == "topk_softmax":
        s = logits_dtype
        out = rule.out_dtype or (f32 if rule.float32 else logits_dtype)
        plan = _Plan(
            rule.k, False, 0.0, 1.0, 1, 1, 0, 1, 0, False, False, False, s, s, out, rule.ascending
        )
    else:
        s = f32 if rule.float32 else logits_dtype
        soft = rule.kind == "softmax_topk"
        has_bias = not soft and bias_dtype is not None
        sd = s if (not has_bias or rule.bias_cast) else promote((s, bias_dtype))
        gmode = 0 if rule.n_group <= 1 else (1 if soft else 2)
        score = 1 if soft or rule.score == "softmax" else 2
        plan = _Plan(
            rule.k, rule.norm, float(rule.norm_eps), float(rule.scale), max(rule.n_group, 1),
            rule.topk_group, score, 0, gmode, soft, has_bias, rule.bias_cast, s, sd,
            rule.out_dtype or s, rule.ascending,
        )  # fmt: skip
    hit = (plan, RK.route_template(plan, n_experts))
    _PLANS[key] = hit
    return hit


def _check(op: str, logits_shape, rule: RouterRule, select_bias) -> int:
    if not isinstance(rule, RouterRule) or rule.kind not in _KINDS:
        raise TypeError(f"[{op}] expected a RouterRule with kind in {_KINDS}, got {rule!r}")
    if len(logits_shape) == 0:
        raise ValueError(f"[{op}] expected logits of shape (..., E), got a 0-d array")
    e = logits_shape[-1]
    if not 1 <= rule.k <= e:
        raise ValueError(f"[{op}] expected 1 <= k <= E = {e}, got k = {rule.k}")
    if rule.n_group > 1:
        gs = e // rule.n_group
        if e % rule.n_group or not 1 <= rule.topk_group <= rule.n_group:
            raise ValueError(
                f"[{op}] expected n_group dividing E = {e} and 1 <= topk_group <= n_group, "
                f"got n_group = {rule.n_group}, topk_group = {rule.topk_group}"
            )
        if rule.kind == "sigmoid_topk" and gs < 2:
            raise ValueError(f"[{op}] expected groups of at least 2 experts, got {gs}")
    if rule.kind == "sigmoid_topk" and rule.score not in ("sigmoid", "softmax"):
        raise ValueError(f"[{op}] expected score 'sigmoid' or 'softmax', got {rule.score!r}")
    if select_bias is not None:
        check_float(op, "select_bias", select_bias)
        if tuple(select_bias.shape) != (e,):
            raise ValueError(
                f"[{op}] expected select_bias of shape ({e},), got {tuple(select_bias.shape)}"
            )
    return e


def _covered(rule: RouterRule, e: int) -> str | None:
    if e > RK.MAX_EXPERTS:
        return f"E = {e} > {RK.MAX_EXPERTS}"
    if rule.k > RK.MAX_K:
        return f"k = {rule.k} > {RK.MAX_K}"
    if rule.n_group > RK.MAX_GROUPS:
        return f"n_group = {rule.n_group} > {RK.MAX_GROUPS}"
    return None
