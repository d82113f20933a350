"""``swiglu_mlp``: a dense quantized SwiGLU MLP in two launches at decode.

Matched by structure (``gate_proj``, ``up_proj``, ``down_proj`` quantized linears without
bias) and by the activation read from the module's own ``__call__``: only an MLP whose forward
calls ``swiglu``/``silu`` is fused; a GeLU-gated MLP is skipped with that reason, never turned
into SiLU. Decode runs :func:`~zmlx.kernels.quant.qmv_swiglu` then
:func:`~zmlx.kernels.quant.qmv`; longer inputs run the original forward.
"""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn

from ...kernels import quant as Q
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


def activation_of(module: nn.Module) -> str | None:
    """``"silu"``, ``"gelu"`` or None, from the calls in the module's ``__call__`` source."""
    src = call_source(module)
    if re.search(r"\bgelu\w*\(", src):
        return "gelu"
    if re.search(r"\b(swiglu|silu)\(", src):
        return "silu"
    return None


class FusedSwiGLUMLP(DecodeFused):
    zmlx_pattern = "swiglu_mlp"

    def __call__(self, x: mx.array) -> mx.array:
        if not self.zmlx_fused(x):
            return super().__call__(x)
        cfg = self._zx
        g, u, d = (quantized_params(self[n]) for n in ("gate_proj", "up_proj", "down_proj"))
        fmt = dict(group_size=cfg["group_size"], bits=cfg["bits"], mode=cfg["mode"])
        h = Q.qmv_swiglu(x, g["w"], g["scales"], g["biases"], u["w"], u["scales"], u["biases"],
                         **fmt)  # fmt: skip
        y = Q.qmv(h, d["w"], d["scales"], d["biases"], **fmt)
        if cfg["sharded"]:
            # mlx-lm's shard(): gate/up split by output rows, down by input columns; the
            # partial down projections are summed across ranks as ShardedToAllLinear does.
            y = mx.distributed.all_sum(y, group=self["down_proj"].group)
        return y


class SwiGLUMLPPattern(Pattern):
    name = "swiglu_mlp"
    replacement = FusedSwiGLUMLP

    def check(self, module: nn.Module, ctx: Context) -> Verdict:
        from mlx_lm.models.switch_layers import SwitchGLU

        names = ("gate_proj", "up_proj", "down_proj")
        if isinstance(module, SwitchGLU) or not all(
            isinstance(module.get(n), nn.Module) for n in names
        ):
            return NO
        if module.get("switch_mlp") is not None or module.get("experts") is not None:
            return NO
        act = activation_of(module)
        if act is None:
            return skip("activation not recognised in the module's forward")
        if act != "silu":
            return skip(f"{act}-gated MLP: only SiLU-gated MLPs are fused")
        from mlx.nn.layers import distributed as dist

        kinds = [type(module[n]) for n in names]
        sharded = kinds[2] is dist.QuantizedShardedToAllLinear
        if sharded and not all(k is dist.QuantizedAllToShardedLinear for k in kinds[:2]):
            return skip("down projection sharded without sharded gate/up projections")
        if not sharded and any(issubclass(k, (dist.AllToShardedLinear, dist.ShardedToAllLinear,
                                              dist.QuantizedAllToShardedLinear)) for k in kinds):  # fmt: skip
            return skip("unsupported sharding of the projections")
        fmt = one_format(module, names, "projections")
        if isinstance(fmt, Verdict):
            return fmt
        return match(**fmt, sharded=sharded, max_tokens=ctx.extra.get("max_tokens", 16))
