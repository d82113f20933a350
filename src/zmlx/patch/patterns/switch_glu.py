"""``switch_glu``: mlx-lm's ``SwitchGLU`` expert dispatch in two launches at decode.

For blocks ``moe_block`` does not cover (an unknown router, a sharded block), the experts alone:
:func:`~zmlx.kernels.moe.gather_qmv_swiglu` (gate, up and activation of the selected experts)
then :func:`~zmlx.kernels.moe.gather_qmv` (their down projections), instead of three
``gather_qmm`` calls and an activation. The block's own router and combine stay as they are.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...kernels import moe as K
from ..base import Context
from .common import NO, DecodeFused, Pattern, Verdict, match, quantized_params
from .moe_block import expert_config


class FusedSwitchGLU(DecodeFused):
    zmlx_pattern = "switch_glu"

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        if not self.zmlx_fused(x):
            return super().__call__(x, indices)
        cfg = self._zx
        g, u, d = (quantized_params(self[n]) for n in ("gate_proj", "up_proj", "down_proj"))
        fmt = dict(group_size=cfg["group_size"], bits=cfg["bits"], mode=cfg["mode"])
        h = K.gather_qmv_swiglu(
            x, g["w"], g["scales"], g["biases"], u["w"], u["scales"], u["biases"], indices,
            bias_gate=g["bias"], bias_up=u["bias"], activation=cfg["activation"],
            alpha=cfg.get("alpha", 1.702), limit=cfg.get("limit", 7.0), **fmt,
        )  # fmt: skip
        return K.gather_qmv(h, d["w"], d["scales"], d["biases"], indices, bias=d["bias"],
                            **cfg["down_fmt"])  # fmt: skip


class SwitchGLUPattern(Pattern):
    name = "switch_glu"
    replacement = FusedSwitchGLU

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        from mlx_lm.models.switch_layers import SwitchGLU

        if not isinstance(module, SwitchGLU):
            return NO
        cfg = expert_config(module)
        if isinstance(cfg, Verdict):
            return cfg
        cfg.pop("projs")
        return match(max_tokens=ctx.extra.get("max_tokens", 16), **cfg)
