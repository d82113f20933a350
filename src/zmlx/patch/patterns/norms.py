"""``rms_norm`` and ``layer_norm``: ``nn.RMSNorm`` / ``nn.LayerNorm`` through zmlx's kernels.

MLX's own ``mx.fast`` norms are already one kernel each, so these patterns only pay where the
zmlx kernel measures faster; the safety table enables them per backend on that evidence.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ...kernels import norms as N
from ..base import Context, Fused
from .common import NO, Pattern, Verdict, match


class FusedRMSNorm(Fused):
    zmlx_pattern = "rms_norm"

    def zmlx_setup(self, **cfg: Any) -> None:
        pass

    def __call__(self, x: mx.array) -> mx.array:
        return N.rms_norm(x, self.get("weight"), self.eps)


class FusedLayerNorm(Fused):
    zmlx_pattern = "layer_norm"

    def zmlx_setup(self, **cfg: Any) -> None:
        pass

    def __call__(self, x: mx.array) -> mx.array:
        return N.layer_norm(x, self.get("weight"), self.get("bias"), self.eps)


class RMSNormPattern(Pattern):
    name = "rms_norm"
    replacement = FusedRMSNorm

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        return match() if type(module) is nn.RMSNorm else NO


class LayerNormPattern(Pattern):
    name = "layer_norm"
    replacement = FusedLayerNorm

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        return match() if type(module) is nn.LayerNorm else NO
