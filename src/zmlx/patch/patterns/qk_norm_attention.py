"""``qk_norm_rope``: Qwen3-style attention with per-head q/k RMSNorm, fused before the cache.

Matched by structure: an attention module with ``q_proj``/``k_proj``/``v_proj``/``o_proj``,
``q_norm``/``k_norm`` (``nn.RMSNorm`` over one head) and a plain ``nn.RoPE``, whose forward
norms each head and then rotates (mlx-lm's ``qwen3`` and ``qwen3_moe``). For up to
``max_tokens`` tokens the eight ops between the projections and the KV cache (reshapes, two
norms, transposes, two ropes) become one :func:`~zmlx.kernels.qk_norm_rope.qk_norm_rope`
launch; the attention itself is the model module's own ``scaled_dot_product_attention``
(looked up at call time, so :mod:`zmlx.decode` can route it).

``qkv_norm_rope`` is the same with the q, k and v projections in one
:func:`~zmlx.kernels.quant.qkv_proj` launch as well (quantized projections of one format, no
biases): two launches fewer per layer at decode. It comes before ``qk_norm_rope`` in the
pattern order, so it wins where both are chosen, and it has no CUDA safety entry until a
capsule measures it.
"""

from __future__ import annotations

import sys

import mlx.core as mx
import mlx.nn as nn

from ...kernels import quant as Q
from ...kernels.qk_norm_rope import qk_norm_rope
from ..base import Context
from .common import (
    NO,
    DecodeFused,
    Pattern,
    Verdict,
    call_source,
    match,
    one_format,
    quantized_params,
    skip,
)

FAMILIES = ("qwen3", "qwen3_moe")
_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "rope")


class FusedQKNormAttention(DecodeFused):
    """Replacement attention: one kernel from the projections to the cache at decode."""

    zmlx_pattern = "qk_norm_rope"

    def zmlx_projections(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """The q, k and v projections of ``x``."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        if not self.zmlx_fused(x):
            return super().__call__(x, mask=mask, cache=cache)
        b, length, _ = x.shape
        rope, qn, kn = self.rope, self.q_norm, self.k_norm
        q_lin, k_lin, v_lin = self.zmlx_projections(x)
        q, k = qk_norm_rope(
            q_lin, k_lin, qn.weight, kn.weight, qn.eps, rope.dims, rope.traditional, rope.base,
            rope.scale, 0 if cache is None else cache.offset, eps_k=kn.eps,
        )  # fmt: skip
        v = v_lin.reshape(b, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        sdpa = sys.modules[self._zx["source_module"]].scaled_dot_product_attention
        out = sdpa(q, k, v, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, length, -1))


class QKNormAttentionPattern(Pattern):
    name = "qk_norm_rope"
    replacement = FusedQKNormAttention

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        if not all(p in module for p in _PARTS[:-1]) or not hasattr(module, "rope"):
            return NO
        if not isinstance(module["q_norm"], nn.RMSNorm) or not isinstance(module["k_norm"],
                                                                          nn.RMSNorm):  # fmt: skip
            return NO
        if ctx.family not in FAMILIES:
            return skip(f"q/k-norm attention of model_type {ctx.family!r} is not verified")
        if type(module.rope) is not nn.RoPE:
            return skip(f"rope {type(module.rope).__name__} is not a plain nn.RoPE")
        src = call_source(module)
        if "self.q_norm(queries.reshape" not in src or "self.rope(queries" not in src:
            return skip("attention forward is not the norm-then-rope shape")
        d = module["q_norm"].weight.shape[0]
        if module["k_norm"].weight.shape[0] != d or module.rope.dims > d:
            return skip("q and k heads differ in size")
        return match(source_module=type(module).__module__, max_tokens=16)


_QKV = ("q_proj", "k_proj", "v_proj")


class FusedQKVNormAttention(FusedQKNormAttention):
    """:class:`FusedQKNormAttention` with the three projections in one kernel."""

    zmlx_pattern = "qkv_norm_rope"

    def zmlx_projections(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        cfg = self._zx
        arrays = []
        for n in _QKV:
            p = quantized_params(self[n])
            arrays += [p["w"], p["scales"], p["biases"]]
        return Q.qkv_proj(x, *arrays, group_size=cfg["group_size"], bits=cfg["bits"],
                          mode=cfg["mode"])  # fmt: skip


class QKVNormAttentionPattern(QKNormAttentionPattern):
    name = "qkv_norm_rope"
    replacement = FusedQKVNormAttention

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        verdict = super().check(module, ctx)
        if verdict.kind != "match":
            return verdict
        if any(type(module[n]) is not nn.QuantizedLinear for n in _QKV):
            return skip("q/k/v projections are not all plain quantized linears")
        fmt = one_format(module, _QKV, "q/k/v projections")
        if isinstance(fmt, Verdict):
            return fmt
        return match(**verdict.config, **fmt)
