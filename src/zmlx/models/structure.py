"""Find and describe the MoE blocks of an mlx-lm model, by module shape (no per-family table).

A module is an MoE block when one of its children is a ``SwitchGLU`` (the stacked routed experts).
Its other children are the router (``gate``, ``router``) and the shared experts (children whose
name starts with ``shared_expert``); routing biases are the ``*bias`` arrays of the block or the
router that are not a ``Linear`` bias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.nn as nn


@dataclass(frozen=True)
class MoEBlockInfo:
    """What one MoE block is made of.

    Attributes:
        path: dotted path in the model, e.g. ``"model.layers.1.mlp"``.
        pattern: the path with its layer index replaced, e.g. ``"model.layers[i].mlp"``.
        block: class name of the block.
        router: ``"<attr>: <class>"`` of the router, e.g. ``"gate: Linear"``.
        router_bits: bits of the router's quantized linear layer (``router.layer`` for granite),
            ``None`` while it is in float.
        routing_bias: path (relative to the block) of the selection bias, or ``None``.
        experts: attribute name of the ``SwitchGLU``.
        activation: class name of the experts' activation.
        expert_bias: whether the expert projections have biases.
        shared: ``"<attr>: <class>"`` of each shared-expert child (empty if none).
        num_experts: routed experts (leading size of the expert weights).
        top_k: experts per token, read from the block or its router.
    """

    path: str
    pattern: str
    block: str
    router: str
    router_bits: int | None
    routing_bias: str | None
    experts: str
    activation: str
    expert_bias: bool
    shared: tuple[str, ...]
    num_experts: int
    top_k: int


def _switch_glu_cls():
    from mlx_lm.models.switch_layers import SwitchGLU

    return SwitchGLU


def _top_k(block: nn.Module, router: nn.Module | None) -> int:
    for owner in (block, router):
        for attr in ("top_k", "num_experts_per_tok"):
            value = getattr(owner, attr, None)
            if isinstance(value, int):
                return value
    raise ValueError(f"[models.moe_blocks] no top_k on {type(block).__name__}")


def _router_bits(router: nn.Module | None) -> int | None:
    for m in (router, getattr(router, "layer", None)):
        if isinstance(getattr(m, "bits", None), int):
            return m.bits
    return None


def _routing_bias(block: nn.Module, router_attr: str | None) -> str | None:
    owners = [("", block)]
    if router_attr is not None:
        owners.append((router_attr + ".", block[router_attr]))
    for prefix, owner in owners:
        for name, value in owner.items():
            if name.endswith("bias") and name != "bias" and not isinstance(value, nn.Module):
                return prefix + name
    return None


def describe(path: str, block: nn.Module) -> MoEBlockInfo:
    """Describe one MoE block (``block`` must have a ``SwitchGLU`` child)."""
    switch_glu = _switch_glu_cls()
    children = block.children()
    experts = next(k for k, v in children.items() if isinstance(v, switch_glu))
    shared = tuple(
        f"{k}: {type(v).__name__}"
        for k, v in sorted(children.items())
        if k.startswith("shared_expert")
    )
    routers = [k for k in ("gate", "router") if isinstance(children.get(k), nn.Module)]
    router_attr = routers[0] if routers else None
    router = block[router_attr] if router_attr else None
    glu = children[experts]
    return MoEBlockInfo(
        path=path,
        pattern=re.sub(r"\.(\d+)\.", "[i].", path, count=1),
        block=type(block).__name__,
        router=f"{router_attr}: {type(router).__name__}" if router is not None else "-",
        router_bits=_router_bits(router),
        routing_bias=_routing_bias(block, router_attr),
        experts=experts,
        activation=type(glu.activation).__name__,
        expert_bias="bias" in glu.gate_proj,
        shared=shared,
        num_experts=glu.gate_proj["weight"].shape[0],
        top_k=_top_k(block, router),
    )


def moe_blocks(model: nn.Module) -> list[MoEBlockInfo]:
    """Every MoE block of ``model``, in layer order.

    Returns:
        One :class:`MoEBlockInfo` per block (empty for a dense model).
    """
    switch_glu = _switch_glu_cls()
    found = [
        describe(path, m)
        for path, m in model.named_modules()
        if any(isinstance(c, switch_glu) for c in m.children().values())
    ]
    return sorted(found, key=lambda b: [int(t) if t.isdigit() else -1 for t in b.path.split(".")])
