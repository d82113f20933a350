"""The decode variants the benchmarks measure against stock mlx-lm, in one table.

A variant says whether the model is patched, how its decode step runs (``compile_decode``'s
attention, or eager), which patterns ``patch`` gets and which zmlx settings (module
constants, see :mod:`zmlx.bench.settings`) hold while it runs. ``benchmarks/moe_decode.py``
(tok/s) and ``benchmarks/kernel_profile.py`` (device time per layer) take the same names.

Patterns: a variant's ``patterns`` replace the run's default (the safety table's for the
family and backend, or what ``--patterns`` says); its ``extra`` patterns are added to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import settings as bench_settings


@dataclass(frozen=True)
class Variant:
    """How one decode variant runs (see the module docstring).

    Attributes:
        patch: patch the model (False: stock mlx-lm modules).
        attention: ``compile_decode``'s ``attention`` argument; None decodes eagerly.
        patterns: the patterns, replacing the run's default; None keeps the default.
        extra: patterns added to them.
        settings: ``("zmlx.MODULE.NAME", value)`` pairs held while the variant runs.
        on_request: measured only when named (``--variants``), not by default.
    """

    patch: bool = True
    attention: str | None = "auto"
    patterns: tuple[str, ...] | None = None
    extra: tuple[str, ...] = ()
    settings: tuple[tuple[str, Any], ...] = ()
    on_request: bool = True

    def pattern_list(self, default: Sequence[str] | None) -> list[str] | None:
        """The patterns ``patch`` gets, given the run's default (None: ``patch``'s own)."""
        base = self.patterns if self.patterns is not None else default
        if base is None and not self.extra:
            return None
        if base is None:
            raise ValueError("[variants] extra patterns need the run's default patterns")
        return [*base, *self.extra]

    def applied(self):
        """The variant's settings for a block, restored after it."""
        return bench_settings.applied(dict(self.settings))


def _set(**pairs: Any) -> tuple[tuple[str, Any], ...]:
    """Settings from ``MODULE__NAME=value`` keywords (``__`` for the last dot) under
    ``zmlx.kernels`` or ``zmlx.patch.patterns``."""
    out = []
    for key, v in pairs.items():
        mod, name = key.split("__")
        prefix = "zmlx.patch.patterns." if mod == "moe_block" else "zmlx.kernels."
        out.append((f"{prefix}{mod}.{name}", v))
    return tuple(out)


_LINEAR = ("moe_block", "qk_norm_rope", "quantized_linear")
VARIANTS: dict[str, Variant] = {
    # measured by default (the last, zmlx, is the headline)
    "stock": Variant(patch=False, attention=None, on_request=False),
    "compiled": Variant(patch=False, attention="stock", on_request=False),
    "patched": Variant(attention=None, on_request=False),
    "zmlx_stock_attention": Variant(attention="stock", on_request=False),
    # more patterns than the default
    "zmlx_qkv": Variant(extra=("qkv_norm_rope",)),
    "zmlx_residual": Variant(extra=("moe_residual",)),
    "zmlx_linear": Variant(extra=("quantized_linear",)),
    "zmlx_qkv_linear": Variant(extra=("qkv_norm_rope", "quantized_linear")),
    "zmlx_linear_mla": Variant(extra=("quantized_linear", "mla_attention")),
    "zmlx_qkv_residual": Variant(extra=("qkv_norm_rope", "moe_residual")),
    "zmlx_plus_mla": Variant(extra=("mla_attention",)),
    # these patterns only
    "zmlx_only_linear": Variant(patterns=_LINEAR),
    "zmlx_only_qkv": Variant(patterns=("moe_block", "qkv_norm_rope")),
    "zmlx_only_qkv_linear": Variant(patterns=("moe_block", "qkv_norm_rope", "quantized_linear")),
    "zmlx_only_linear_tile": Variant(patterns=_LINEAR, settings=_set(quant_kernels__TILE=True)),
    # attention
    "zmlx_attention": Variant(attention="zmlx"),
    "zmlx_fused_attention_combine": Variant(settings=_set(attention_kernels__FUSED_COMBINE=True)),
    # routers
    "zmlx_fused_router": Variant(settings=_set(moe_block__FUSED_ROUTER=True)),
    "zmlx_two_launch_router": Variant(settings=_set(moe_block__FUSED_ROUTER=False)),
    "zmlx_one_group_router": Variant(settings=_set(router_kernels__SPLIT=False)),
    # matvec kernels
    "zmlx_16B_loads": Variant(settings=_set(quant_kernels__LOAD_WORDS=4)),
    "zmlx_batched_loads": Variant(settings=_set(quant_kernels__BATCH_LOADS=True)),
    "zmlx_split_rows": Variant(settings=_set(quant_kernels__SPLIT_WARPS=4)),
    "zmlx_split_rows_w8": Variant(settings=_set(quant_kernels__SPLIT_WARPS=8)),
    "zmlx_split_rows_r2": Variant(
        settings=_set(quant_kernels__SPLIT_WARPS=4, quant_kernels__SPLIT_ROWS=2)
    ),  # fmt: skip
    "zmlx_split_rows_r8": Variant(
        settings=_set(quant_kernels__SPLIT_WARPS=4, quant_kernels__SPLIT_ROWS=8)
    ),  # fmt: skip
    "zmlx_rows_r2": Variant(settings=_set(quant_kernels__SPLIT_ROWS=2)),
    "zmlx_rows_r1": Variant(settings=_set(quant_kernels__SPLIT_ROWS=1)),
    "zmlx_one_warp_rows": Variant(settings=_set(quant_kernels__SPLIT_WARPS=0)),
    "zmlx_single_units": Variant(settings=_set(quant_kernels__PAIRED_UNITS=False)),
    "zmlx_row_at_lane0": Variant(settings=_set(quant_kernels__LANE_ROWS=False)),
    # the default since the tensor-core gate/up was timed; kept for older capsules' commands
    "zmlx_mma_gate_up": Variant(settings=_set(quant_kernels__MMA_GATE_UP=True)),
    "zmlx_split_gate_up": Variant(settings=_set(quant_kernels__MMA_GATE_UP=False)),
    "zmlx_fused_experts": Variant(settings=_set(fused_experts__FUSED_EXPERTS=True)),
    "zmlx_router_preload": Variant(settings=_set(router_kernels__SPLIT_PRELOAD=True)),
    "zmlx_mma_dense": Variant(settings=_set(mma_kernels__MMA_DENSE=True)),
    "zmlx_mma_combine": Variant(settings=_set(mma_kernels__MMA_COMBINE=True)),
    "zmlx_no_tile": Variant(settings=_set(quant_kernels__TILE=False)),
    "zmlx_tile_r2": Variant(settings=_set(quant_kernels__TILE_ROWS=2)),
    "zmlx_tile_r1": Variant(settings=_set(quant_kernels__TILE_ROWS=1)),
    "zmlx_tile_w8": Variant(settings=_set(quant_kernels__TILE_WARPS=8)),
    "zmlx_tile_w2": Variant(settings=_set(quant_kernels__TILE_WARPS=2)),
    "zmlx_tile_minw2048": Variant(settings=_set(quant_kernels__TILE_MIN_WARPS=2048)),
    # combine kernels
    "zmlx_split_experts": Variant(settings=_set(moe_kernels__SPLIT_EXPERTS=True)),
    "zmlx_split_experts_r2": Variant(
        settings=_set(moe_kernels__SPLIT_EXPERTS=True, moe_kernels__SPLIT_ROWS=2)
    ),  # fmt: skip
    "zmlx_split_experts_r8": Variant(
        settings=_set(moe_kernels__SPLIT_EXPERTS=True, moe_kernels__SPLIT_ROWS=8)
    ),  # fmt: skip
    "zmlx_one_warp_combine": Variant(settings=_set(moe_kernels__SPLIT_EXPERTS=False)),
    "zmlx_two_pass_combine": Variant(settings=_set(moe_kernels__COMBINE_TWO_PASS_BELOW=8)),
    # the safety table's patterns: the headline, measured last
    "zmlx": Variant(on_request=False),
}
DEFAULT = [name for name, v in VARIANTS.items() if not v.on_request]
# Names kept from earlier runs (their capsules use them): the same variants.
ALIASES = {
    "zmlx_plus_linear": "zmlx_linear",
    "zmlx_plus_qkv": "zmlx_qkv",
    "zmlx_plus_residual": "zmlx_residual",
    "zmlx_plus_qkv_linear": "zmlx_qkv_linear",
    "zmlx_plus_qkv_residual": "zmlx_qkv_residual",
}


def get(name: str) -> Variant:
    """The variant called ``name`` (or one of :data:`ALIASES`)."""
    try:
        return VARIANTS[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"[variants] expected one of {sorted(names())}, got {name!r}") from None


def names() -> list[str]:
    """Every name :func:`get` takes."""
    return [*VARIANTS, *ALIASES]
