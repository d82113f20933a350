"""Patch patterns, one file per module shape. Order matters: a block pattern comes before the
patterns of its parts, so a fused block's children are left to it."""

from .mla_attention import MLAAttentionPattern
from .moe_block import MoEBlockPattern
from .moe_residual import MoEResidualPattern
from .norms import LayerNormPattern, RMSNormPattern
from .qk_norm_attention import QKNormAttentionPattern, QKVNormAttentionPattern
from .quantized_linear import QuantizedLinearPattern
from .swiglu_mlp import SwiGLUMLPPattern
from .switch_glu import SwitchGLUPattern

PATTERNS = {
    p.name: p
    for p in (MoEResidualPattern(), MoEBlockPattern(), SwitchGLUPattern(), SwiGLUMLPPattern(),
              QKVNormAttentionPattern(), QKNormAttentionPattern(), MLAAttentionPattern(),
              RMSNormPattern(), LayerNormPattern(), QuantizedLinearPattern())
}  # fmt: skip

__all__ = ["PATTERNS"]
