"""``moe_residual``: a pre-norm decoder layer's residual adds and post-attention norm, folded
into its fused MoE block.

mlx-lm's MoE decoder layers run ``r = self_attn(input_layernorm(x)); h = x + r;
out = h + mlp(post_attention_layernorm(h))``: at decode that is three launches (two adds
and the norm) between the attention and the block's own. Here the block (``moe_block``)
reads the residual stream instead: its router and gate/up kernels compute
``rms_norm(x + r)`` as they load x (each warp holds a whole row, so the norm is one warp
reduction), and its down-projection kernel adds ``x + r`` last, rounded as mlx-lm rounds
(``h`` and ``out`` in the activation dtype; the norm's product in the activation dtype).

Matched by structure: a layer with ``self_attn``, ``mlp``, ``input_layernorm`` and
``post_attention_layernorm`` (``nn.RMSNorm``) whose forward is that pre-norm shape, and whose
``mlp`` is a MoE block ``moe_block`` fuses, without a shared expert (which would need the
normed input itself). The fold applies at call time only when the layer's ``mlp`` has been
replaced by ``moe_block`` (choose both patterns) and the call is a decode-sized one;
anything else runs the layer's own forward.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..base import Context
from .common import NO, DecodeFused, Pattern, Verdict, call_source, match, skip
from .moe_block import FusedMoE, MoEBlockPattern

# The pre-norm forward, whitespace removed (mlx-lm's qwen3_moe, olmoe, ... decoder layers).
_FORWARD = (
    "r=self.self_attn(self.input_layernorm(x),mask,cache)",
    "h=x+r",
    "r=self.mlp(self.post_attention_layernorm(h))",
    "out=h+r",
)


class FusedMoELayer(DecodeFused):
    """Replacement decoder layer: the attention as before, then the MoE block on the
    residual stream with the norm and both adds folded into its kernels."""

    zmlx_pattern = "moe_residual"

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        mlp = self.mlp
        if not (isinstance(mlp, FusedMoE) and self.zmlx_fused(x) and mlp.zmlx_fused(x)):
            return super().__call__(x, mask, cache)
        r = self.self_attn(self.input_layernorm(x), mask, cache)
        norm = self.post_attention_layernorm
        return mlp.zmlx_block(x, prenorm=(r, norm.weight, norm.eps), residual=(x, r))


class MoEResidualPattern(Pattern):
    name = "moe_residual"
    replacement = FusedMoELayer

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        parts = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        if not isinstance(module, nn.Module) or not all(p in module for p in parts):
            return NO
        block = MoEBlockPattern().check(module["mlp"], ctx)
        if block.kind == "no":
            return NO
        if block.kind == "skip":
            return skip(f"its MoE block is not fused: {block.reason}")
        if block.config["shared"] is not None:
            return skip("the MoE block has a shared expert (it needs the normed input)")
        if any(type(module[n]) is not nn.RMSNorm for n in parts[2:]):
            return skip("the layer's norms are not plain nn.RMSNorm")
        src = "".join(call_source(module).split())
        if not all(stmt in src for stmt in _FORWARD):
            return skip("layer forward is not the pre-norm residual shape")
        return match(max_tokens=16)
