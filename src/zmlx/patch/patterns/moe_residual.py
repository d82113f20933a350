"""``moe_residual``: a pre-norm decoder layer's residual adds and post-attention norm, folded
into its fused MoE block.

mlx-lm's MoE decoder layers run ``r = self_attn(input_layernorm(x)); h = x + r;
out = h + mlp(post_attention_layernorm(h))`` (names vary by family): at decode that is three
launches (two adds and the norm) between the attention and the block's own. Here the block
(``moe_block``) reads the residual stream instead: its router kernel computes
``rms_norm(x + r)`` as it loads x and writes it out for the gate/up kernel, and its
down-projection kernel adds ``x + r`` last, rounded as mlx-lm rounds (``h`` and ``out`` in
the activation dtype; the norm's product in the activation dtype). With the router in one
launch that splits its matrix over many groups (CUDA), three launches a layer fewer (with
``qkv_norm_rope``, five) decode Qwen3-30B-A3B faster on an H100, and the safety table turns
it on there (``zmlx.patch.safety``); with the earlier one-group router the fold measured no
faster (116.0 against 118.3 tok/s, ``benchmarks/capsules/moe_decode_qwen3_residual_h100.json``).
Folding the norm into the gate/up kernel as well, every warp recomputing it, measured slower
(``benchmarks/capsules/moe_decode_qwen3_residual_h200.json``).

Matched by structure, per family (:data:`LAYOUTS`: qwen3_moe, mixtral, minimax, lfm2_moe): a
layer whose forward is that pre-norm shape, whose post-mixer norm is an ``nn.RMSNorm`` and
whose MoE block is one ``moe_block`` fuses, without a shared expert (which would need the
normed input itself). The fold applies at call time only when the layer's MoE block has been
replaced by ``moe_block`` (choose both patterns) and the call is a decode-sized one;
anything else runs the layer's own forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..base import Context
from .common import NO, DecodeFused, Pattern, Verdict, call_source, match, skip
from .moe_block import FusedMoE, MoEBlockPattern


def _attention(layer, x, mask, cache):
    return layer.self_attn(layer.input_layernorm(x), mask, cache)


def _lfm2_mixer(layer, x, mask, cache):
    mixer = layer.self_attn if layer.is_attention_layer else layer.conv
    return mixer(layer.operator_norm(x), mask=mask, cache=cache)


@dataclass(frozen=True)
class Layout:
    """How one family's decoder layer is written: its MoE block and post-mixer norm, the
    mixer (attention or convolution, with its own norm) as a function of ``(layer, x, mask,
    cache)``, and the forward's statements (whitespace removed) that make it this shape."""

    mlp: str
    norm: str
    mixer: Callable
    forward: tuple[str, ...]


_QWEN3 = ("r=self.self_attn(self.input_layernorm(x),mask,cache)", "h=x+r")
LAYOUTS = {
    "qwen3_moe": Layout("mlp", "post_attention_layernorm", _attention,
                        (*_QWEN3, "r=self.mlp(self.post_attention_layernorm(h))", "out=h+r")),
    "mixtral": Layout("block_sparse_moe", "post_attention_layernorm", _attention,
                      (*_QWEN3, "r=self.block_sparse_moe(self.post_attention_layernorm(h))",
                       "out=h+r")),
    # r = x + attention; r = r + moe(norm(r)): the same sums, rounded the same way.
    "minimax": Layout("block_sparse_moe", "post_attention_layernorm", _attention,
                      ("r=x+self.self_attn(self.input_layernorm(x),mask,cache)",
                       "r=r+self.block_sparse_moe(self.post_attention_layernorm(r))")),
    "lfm2_moe": Layout("feed_forward", "ffn_norm", _lfm2_mixer,
                       ("r=self.self_attn(self.operator_norm(x),mask=mask,cache=cache)",
                        "h=x+r", "out=h+self.feed_forward(self.ffn_norm(h))")),
}  # fmt: skip


class FusedMoELayer(DecodeFused):
    """Replacement decoder layer: the attention as before, then the MoE block on the
    residual stream with the norm and both adds folded into its kernels."""

    zmlx_pattern = "moe_residual"

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        lay = LAYOUTS[self._zx["family"]]
        mlp = self[lay.mlp]
        if not (isinstance(mlp, FusedMoE) and self.zmlx_fused(x) and mlp.zmlx_fused(x)):
            return super().__call__(x, mask, cache)
        r = lay.mixer(self, x, mask, cache)
        norm = self[lay.norm]
        return mlp.zmlx_block(x, prenorm=(r, norm.weight, norm.eps), residual=(x, r))


class MoEResidualPattern(Pattern):
    name = "moe_residual"
    replacement = FusedMoELayer

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        lay = LAYOUTS.get(ctx.family)
        if lay is None or not isinstance(module, nn.Module) or lay.mlp not in module:
            return NO
        if lay.norm not in module or not isinstance(module[lay.mlp], nn.Module):
            return NO
        block = MoEBlockPattern().check(module[lay.mlp], ctx)
        if block.kind == "no":
            return NO
        if block.kind == "skip":
            return skip(f"its MoE block is not fused: {block.reason}")
        if block.config["shared"] is not None:
            return skip("the MoE block has a shared expert (it needs the normed input)")
        if getattr(module[lay.mlp], "sharding_group", None) is not None:
            return skip("the MoE block is sharded (its all-reduce comes before the residual add)")
        if type(module[lay.norm]) is not nn.RMSNorm:
            return skip(f"the layer's {lay.norm} is not a plain nn.RMSNorm")
        src = "".join(call_source(module).split())
        if not all(stmt in src for stmt in lay.forward):
            return skip("layer forward is not the pre-norm residual shape")
        return match(family=ctx.family, max_tokens=16)
