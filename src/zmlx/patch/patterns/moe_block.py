"""``moe_block``: a whole MoE block (router, experts, combine, shared experts) in four launches.

Matched by structure: a module holding a ``SwitchGLU`` (``switch_mlp`` or ``experts``) with
quantized experts and a router, in a model family whose routing rule zmlx knows
(:func:`zmlx.kernels.routers.router_rule`). For up to ``max_tokens`` tokens (decode) the block
runs the router (MLX's matmul, then :func:`~zmlx.kernels.routers.route`; see
:data:`FUSED_ROUTER`),
then :func:`~zmlx.kernels.moe.moe_experts`: gate, up and activation of the selected experts
(:func:`~zmlx.kernels.moe.gather_qmv_swiglu`), then the down projection x router weight,
summed over experts, plus the shared expert (:func:`~zmlx.kernels.moe.gather_qmv_combine`;
one launch for both with :data:`zmlx.kernels.fused_experts.FUSED_EXPERTS`, off by default);
longer inputs (prefill) run the original forward.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ...kernels import moe as K
from ...kernels import routers as R
from ..base import Context
from .common import NO, DecodeFused, Pattern, Verdict, match, quantized_params, skip

# The router in one launch (router_fused: matvec and routing) or in two (MLX's matmul, then
# the routing kernel). Two by default. On CUDA the one launch splits the router matrix over
# E / 2 groups and the group that finishes routes: 9.4 us a Qwen3-30B-A3B layer in the decode
# step against 5.3 + 4.3 us for the two, but the step's device span grew from 107.2 to 123.5
# us a layer (kernel_profile_router_slices_qwen3_h100.json) and decode measured slower, median
# 102.0 against 116.1 tok/s (moe_decode_qwen3_launches_h100.json). Metal's one launch is one
# group a token (25-46 us a layer on an H100, kernel_profile_qwen3_h100.json). The folded
# pre-norm (moe_residual) always takes the one-launch form.
FUSED_ROUTER = False


# Per family: the router's attribute path, where the selection-only bias lives, and how the
# shared expert joins ("add": y + shared(x); "gated": y + sigmoid(gate(x)) * shared(x)).
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3_moe": dict(router="gate"),
    "olmoe": dict(router="gate"),
    "qwen3_next": dict(router="gate", shared="gated"),
    "mixtral": dict(router="gate"),
    "gpt_oss": dict(router="router"),
    "granitemoe": dict(router="router.layer"),
    "glm4_moe": dict(router="gate", select_bias="gate.e_score_correction_bias", shared="add"),
    "glm4_moe_lite": dict(router="gate", select_bias="gate.e_score_correction_bias", shared="add"),
    "deepseek_v3": dict(router="gate", select_bias="gate.e_score_correction_bias", shared="add"),
    "minimax": dict(router="gate", select_bias="e_score_correction_bias"),
    "lfm2_moe": dict(router="gate", select_bias="expert_bias"),
}


def _get(module: nn.Module, path: str):
    obj = module
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def experts_of(module: nn.Module):
    """The block's ``SwitchGLU`` and its attribute name, or ``(None, None)``."""
    from mlx_lm.models.switch_layers import SwitchGLU

    for name in ("switch_mlp", "experts"):
        m = module.get(name) if isinstance(module, dict) else None
        if isinstance(m, SwitchGLU):
            return m, name
    return None, None


def expert_config(glu) -> dict[str, Any] | Verdict:
    """Quantized arrays and activation of a ``SwitchGLU``, or a skip verdict."""
    from mlx_lm.models.activations import SwigluOAI
    from mlx_lm.models.switch_layers import SwiGLU

    projs = {n: quantized_params(glu[n]) for n in ("gate_proj", "up_proj", "down_proj")}
    if any(p is None for p in projs.values()):
        return skip("experts are not quantized (the fused kernels read quantized weights)")
    fmt = {(p["bits"], p["group_size"], p["mode"]) for n, p in projs.items() if n != "down_proj"}
    if len(fmt) != 1:
        return skip(f"gate and up experts differ in quantization {sorted(fmt)}")
    down = projs["down_proj"]
    act = glu.activation
    if isinstance(act, SwigluOAI):
        activation = dict(activation="swiglu_oai", alpha=float(act._alpha), limit=float(act._limit))
    elif isinstance(act, SwiGLU):
        activation = dict(activation="swiglu")
    else:
        return skip(f"expert activation {type(act).__name__} has no fused kernel")
    bits, group_size, mode = fmt.pop()
    return dict(projs=projs, bits=bits, group_size=group_size, mode=mode,
                down_fmt=dict(bits=down["bits"], group_size=down["group_size"],
                              mode=down["mode"]), **activation)  # fmt: skip


class FusedMoE(DecodeFused):
    """Replacement MoE block: three launches at decode, the original forward otherwise."""

    zmlx_pattern = "moe_block"

    def __call__(self, x: mx.array) -> mx.array:
        if not self.zmlx_fused(x):
            return super().__call__(x)
        return self.zmlx_block(x)

    def zmlx_block(self, x: mx.array, prenorm=None, residual=None) -> mx.array:
        """The fused block. ``prenorm = (a, weight, eps)``: ``x`` is a decoder layer's
        residual stream and the block's input is ``rms_norm(x + a, weight, eps)``, folded into
        the router's launch (which writes it out for the gate/up kernel); ``residual = (x,
        a)``: ``x + a`` is added to the output in the down-projection kernel (see the
        ``moe_residual`` pattern). Blocks with a shared expert take neither (it would need the
        normed input itself)."""
        cfg = self._zx
        if (prenorm is not None or residual is not None) and cfg["shared"] is not None:
            raise ValueError("[moe_block] a block with a shared expert cannot fold the pre-norm")
        router = _get(self, cfg["router_path"])
        sbias = _get(self, cfg["select_bias"]) if cfg["select_bias"] else None
        rp = quantized_params(router) if cfg["router_quantized"] else None
        # With prenorm the router's launch also writes the normed input for the experts.
        fold = dict(prenorm=prenorm, return_normed=prenorm is not None)
        if prenorm is None and not FUSED_ROUTER:
            if rp is not None:
                logits = R.router_linear_ref(x, rp["w"], cfg["rule"], rp["bias"], rp["scales"],
                                             rp["biases"], rp["group_size"], rp["bits"])  # fmt: skip
            else:
                logits = R.router_linear_ref(x, router["weight"], cfg["rule"], router.get("bias"))
            routed = R.route(logits, cfg["rule"], sbias)
        elif rp is not None:
            routed = R.router_fused(x, rp["w"], cfg["rule"], bias=rp["bias"], select_bias=sbias,
                                    scales=rp["scales"], biases=rp["biases"],
                                    group_size=rp["group_size"], bits=rp["bits"],
                                    **fold)  # fmt: skip
        else:
            routed = R.router_fused(x, router["weight"], cfg["rule"], bias=router.get("bias"),
                                    select_bias=sbias, **fold)  # fmt: skip
        inds, w = routed[:2]
        xn = routed[2] if prenorm is not None else x
        glu = self[cfg["experts"]]
        p = {n: quantized_params(glu[n]) for n in ("gate_proj", "up_proj", "down_proj")}
        g, u, d = p["gate_proj"], p["up_proj"], p["down_proj"]
        fmt = dict(group_size=cfg["group_size"], bits=cfg["bits"], mode=cfg["mode"])
        shared = shared_gate = None
        if cfg["shared"] == "add":
            shared = self["shared_experts"](x)
        elif cfg["shared"] == "gated":
            shared = self["shared_expert"](x)
            shared_gate = self["shared_expert_gate"](x)
        group = getattr(self, "sharding_group", None)
        if group is not None and residual is not None:
            raise ValueError("[moe_block] a sharded block cannot fold the residual add")
        y = K.moe_experts(
            xn, g["w"], g["scales"], g["biases"], u["w"], u["scales"], u["biases"], d["w"],
            d["scales"], d["biases"], inds, w, bias_gate=g["bias"], bias_up=u["bias"],
            bias=d["bias"], activation=cfg["activation"], alpha=cfg.get("alpha", 1.702),
            limit=cfg.get("limit", 7.0), shared=shared, shared_gate=shared_gate,
            residual=residual, down_format=cfg["down_fmt"], **fmt,
        )  # fmt: skip
        if group is not None:
            # Tensor-parallel block (mlx-lm's shard()): each rank holds a slice of every
            # expert's intermediate dimension; the partial sums meet here, as in mlx-lm.
            y = mx.distributed.all_sum(y, group=group)
        return y


class MoEBlockPattern(Pattern):
    name = "moe_block"
    replacement = FusedMoE

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        glu, attr = experts_of(module)
        if glu is None:
            return NO
        fam = FAMILIES.get(ctx.family)
        if fam is None:
            return skip(f"no fused routing for model_type {ctx.family!r}")
        router = _get(module, fam["router"])
        if not isinstance(router, nn.Module):
            return skip(f"router '{fam['router']}' not found")
        cfg = expert_config(glu)
        if isinstance(cfg, Verdict):
            return cfg
        try:
            rule = R.router_rule(ctx.family, ctx.args, ctx.dtype)
        except ValueError as e:
            return skip(str(e))
        select_bias = fam.get("select_bias")
        if ctx.family == "lfm2_moe" and not getattr(module, "use_expert_bias", False):
            select_bias = None
        router_q = quantized_params(router)
        if router_q is not None and router_q["mode"] != "affine":
            return skip(f"router quantized as {router_q['mode']} (fused router reads affine)")
        if router_q is None and "weight" not in router:
            return skip("router has no weight matrix")
        shared = fam.get("shared")
        if shared == "add" and "shared_experts" not in module:
            shared = None
        cfg.pop("projs")
        return match(experts=attr, router_path=fam["router"], router_quantized=router_q is not None,
                     select_bias=select_bias, rule=rule, shared=shared,
                     max_tokens=ctx.extra.get("max_tokens", 16), **cfg)  # fmt: skip
