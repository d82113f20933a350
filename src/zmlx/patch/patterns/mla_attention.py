"""``mla_attention``: multi-head latent attention (mlx-lm's ``deepseek_v3`` and
``glm4_moe_lite``) at decode, over the compressed cache in one kernel.

Matched by structure: an attention module with ``kv_a_proj_with_mqa``, ``kv_a_layernorm``,
``embed_q``, ``unembed_out`` and ``o_proj`` whose forward is mlx-lm's MLA step (rope scores
``(q_pe * scale) @ k_pe^T`` masked with ``where``, then the attention of the embedded queries
over the latent cache with those scores as its additive mask). For one query position the
rope scores, their mask and the attention (a matmul, a ``where``, a multiply and MLX's
attention, which falls back to several kernels for a 512-wide head with an array mask) become
one :func:`~zmlx.kernels.attention.mla_decode_attention` call; the projections, norms, rope,
cache update, ``embed_q`` and ``unembed_out`` are the module's own. Prompts (more than one
position) run the original forward.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...kernels.attention import mla_decode_attention
from ..base import Context
from .common import NO, DecodeFused, Pattern, Verdict, call_source, match, skip

FAMILIES = ("deepseek_v3", "glm4_moe_lite")
_PARTS = ("kv_a_proj_with_mqa", "kv_a_layernorm", "embed_q", "unembed_out", "o_proj")
_ATTRS = ("num_heads", "q_head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "kv_lora_rank",
          "q_lora_rank", "scale")  # fmt: skip
# Lines of mlx-lm's MLA forward that the fused path reproduces step for step.
_SOURCE = ("pe_scores = (q_pe * self.scale) @ k_pe.swapaxes(-1, -2)",
           "q_nope = self.embed_q(q_nope)", "kv_latent, k_pe = cache.update_and_fetch(kv_latent, k_pe)",
           "output = self.unembed_out(output)")  # fmt: skip


class FusedMLAAttention(DecodeFused):
    """Replacement attention: the rope scores, mask and latent attention in one kernel."""

    zmlx_pattern = "mla_attention"

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        b, length, _ = x.shape
        if (length != 1 or not self.zmlx_fused(x) or hasattr(cache, "bits")
                or (isinstance(mask, mx.array) and mask.dtype != mx.bool_)):  # fmt: skip
            # prompts, quantized caches and additive masks: mlx-lm's own forward
            return super().__call__(x, mask=mask, cache=cache)
        if isinstance(mask, str):  # "causal" with one query position masks nothing
            mask = None
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.reshape(b, 1, self.num_heads, self.q_head_dim).transpose(0, 2, 1, 3)
        q_nope, q_pe = mx.split(q, [self.qk_nope_head_dim], axis=-1)
        compressed_kv = self.kv_a_proj_with_mqa(x)
        compressed_kv, k_pe = mx.split(compressed_kv, [self.kv_lora_rank], axis=-1)
        k_pe = k_pe.reshape(b, 1, 1, self.qk_rope_head_dim).transpose(0, 2, 1, 3)
        kv_latent = self.kv_a_layernorm(compressed_kv)
        offset = cache.offset if cache is not None else 0
        q_pe = self.rope(q_pe, offset)
        k_pe = self.rope(k_pe, offset)
        kv_latent = mx.expand_dims(kv_latent, axis=1)
        if cache is not None:
            kv_latent, k_pe = cache.update_and_fetch(kv_latent, k_pe)
        out = mla_decode_attention(self.embed_q(q_nope), q_pe, kv_latent, k_pe, self.scale, mask)
        out = self.unembed_out(out)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, 1, -1))


class MLAAttentionPattern(Pattern):
    name = "mla_attention"
    replacement = FusedMLAAttention

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        if not all(p in module for p in _PARTS) or not hasattr(module, "rope"):
            return NO
        if ctx.family not in FAMILIES:
            return skip(f"latent attention of model_type {ctx.family!r} is not verified")
        if not all(hasattr(module, a) for a in _ATTRS):
            return skip("attention lacks mlx-lm's MLA head sizes")
        src = call_source(module)
        if not all(line in src for line in _SOURCE):
            return skip("attention forward is not mlx-lm's MLA step")
        return match(max_tokens=1)
