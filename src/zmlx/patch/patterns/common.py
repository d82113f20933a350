"""What patterns share: the pattern protocol and readers of mlx-lm module internals."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import mlx.nn as nn

from ..base import Context, Fused

MATCH = "match"


@dataclass(frozen=True)
class Verdict:
    """A pattern's answer for one module: ``match``, ``no`` (not this shape, said nothing) or
    a skip reason (the right shape, but something is not supported)."""

    kind: str  # "match" | "no" | "skip"
    reason: str = ""
    config: dict[str, Any] | None = None


NO = Verdict("no")


def skip(reason: str) -> Verdict:
    return Verdict("skip", reason)


def match(**config: Any) -> Verdict:
    return Verdict("match", "", config)


class Pattern:
    """One module shape zmlx knows how to fuse.

    Attributes:
        name: the pattern name used by ``patch(patterns=...)`` and the safety table.
        replacement: the :class:`Fused` mixin of the replacement module.
    """

    name: str = ""
    replacement: type[Fused] = Fused

    def check(self, module: nn.Module, ctx: Context) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, module: nn.Module, config: dict[str, Any]) -> nn.Module:
        return self.replacement.from_module(module, **config)


class DecodeFused(Fused):
    """A replacement whose fused path takes calls of up to ``max_tokens`` tokens (decode);
    longer calls (prefill) run the original forward."""

    def zmlx_setup(self, **cfg: Any) -> None:
        object.__setattr__(self, "_zx", cfg)

    def zmlx_fused(self, x) -> bool:
        """Whether this call takes the fused path."""
        return x.ndim > 0 and tokens(x) <= self._zx["max_tokens"]


def quantized_params(layer: nn.Module) -> dict[str, Any] | None:
    """A quantized linear / switch-linear layer's arrays and format, or None when float.

    Returns:
        ``dict(w, scales, biases, bits, group_size, mode, bias)``; ``biases`` is None for
        mxfp4, ``bias`` is the layer's additive bias (None without one).
    """
    if "scales" not in layer or not hasattr(layer, "bits"):
        return None
    mode = getattr(layer, "mode", "affine")
    return dict(
        w=layer["weight"],
        scales=layer["scales"],
        biases=layer.get("biases") if mode == "affine" else None,
        bits=int(layer.bits),
        group_size=int(layer.group_size),
        mode=mode,
        bias=layer.get("bias"),
    )


def call_source(module: nn.Module) -> str:
    """The source of the module class's ``__call__`` ('' when unavailable)."""
    try:
        return inspect.getsource(type(module).__call__)
    except (OSError, TypeError):
        return ""


def tokens(x) -> int:
    """Tokens in a ``(..., D)`` activation."""
    return x.size // x.shape[-1] if x.ndim else 1


def one_format(module: nn.Module, names: tuple[str, ...], what: str) -> Verdict | dict[str, Any]:
    """``dict(bits, group_size, mode)`` when ``module``'s layers ``names`` are quantized alike
    without biases, else a skip verdict naming ``what`` (e.g. ``"projections"``)."""
    projs = [quantized_params(module[n]) for n in names]
    if any(p is None for p in projs):
        return skip(f"{what} are not quantized (MLX's own matmuls are used as is)")
    if any(p["bias"] is not None for p in projs):
        return skip(f"{what} have biases")
    fmt = {(p["bits"], p["group_size"], p["mode"]) for p in projs}
    if len(fmt) != 1:
        return skip(f"{what} mix quantization formats {sorted(fmt)}")
    bits, group_size, mode = fmt.pop()
    return dict(bits=bits, group_size=group_size, mode=mode)
