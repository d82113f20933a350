"""``quantized_linear``: an affine- or mxfp4-quantized ``nn.QuantizedLinear`` through zmlx's
matvec kernel at decode.

Matched by type (``nn.QuantizedLinear`` itself, not mlx-lm's sharded subclasses, whose
collectives stay as they are) and format (what :func:`~zmlx.kernels.quant_kernels.kernel_covers`
takes). Calls of up to ``max_tokens`` tokens run :func:`~zmlx.kernels.quant.qmv` (or
:func:`~zmlx.kernels.quant.qmv_bias` with the layer's bias); longer ones, MLX's
``quantized_matmul``. It comes last in the pattern order, so a fused block that calls its
projections itself (``moe_block``'s router) is unaffected, and the projections a fused
attention calls through its modules (``qk_norm_rope``'s q/k/v/o) take it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...kernels import quant as Q
from ...kernels import quant_kernels as qk
from ..base import Context
from .common import NO, DecodeFused, Pattern, Verdict, match, quantized_params, skip


class FusedQuantizedLinear(DecodeFused):
    zmlx_pattern = "quantized_linear"

    def __call__(self, x: mx.array) -> mx.array:
        if not self.zmlx_fused(x):
            return super().__call__(x)
        p = quantized_params(self)
        if p["bias"] is not None and p["bias"].dtype != x.dtype:
            return super().__call__(x)  # the kernel adds a bias of x's dtype
        fmt = dict(group_size=p["group_size"], bits=p["bits"], mode=p["mode"])
        if p["bias"] is not None:
            return Q.qmv_bias(x, p["w"], p["scales"], p["biases"], p["bias"], **fmt)
        return Q.qmv(x, p["w"], p["scales"], p["biases"], **fmt)


class QuantizedLinearPattern(Pattern):
    name = "quantized_linear"
    replacement = FusedQuantizedLinear

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        if type(module) is not nn.QuantizedLinear:
            return NO
        p = quantized_params(module)
        if p is None or not qk.kernel_covers(p["mode"], p["bits"], p["group_size"]):
            fmt = None if p is None else (p["mode"], p["bits"], p["group_size"])
            return skip(f"quantization {fmt} has no matvec kernel")
        return match(max_tokens=ctx.extra.get("max_tokens", 16))
