"""Instance patching machinery: walk a module tree, swap modules, and swap them back.

A pattern's replacement is a subclass of the replaced module's own class, built per class on
first use (``ZmlxQwen3MoeSparseMoeBlock(FusedMoE, Qwen3MoeSparseMoeBlock)``) and instantiated
with :meth:`Fused.from_module`, which shares the original's children and arrays. So
``isinstance`` checks, ``parameters()``, ``save_weights``, quantization and ``copy.deepcopy``
behave as before, and nothing outside the patched instance changes (no class is modified).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.nn as nn

from ..kernels import routes

_SUBCLASSES: dict[tuple[type, type], type] = {}


class Fused:
    """Mixin of every replacement module; ``super().__call__`` is the original forward."""

    zmlx_pattern: str = ""

    @classmethod
    def from_module(cls, module: nn.Module, **config: Any) -> Fused:
        """A replacement that shares ``module``'s children, arrays and attributes."""
        sub = fused_class(cls, type(module))
        new = sub.__new__(sub)
        dict.update(new, module)
        new.__dict__.update(module.__dict__)
        # Plain attributes (object.__setattr__) stay out of the parameter tree.
        object.__setattr__(new, "_zmlx_original", module)
        object.__setattr__(new, "_zmlx_config", dict(config))
        new.zmlx_setup(**config)
        return new

    def zmlx_setup(self, **config: Any) -> None:
        """Precompute what the fused forward needs (called once by :meth:`from_module`)."""

    def zmlx_restore(self) -> nn.Module:
        """The original module, holding this module's current children and arrays."""
        orig = self.__dict__["_zmlx_original"]
        dict.clear(orig)
        dict.update(orig, {k: v for k, v in self.items()})
        return orig


def _kernels_always(mixin: type) -> Callable:
    """``mixin.__call__`` (looked up on each call) with stock routes off: a patched module runs
    its kernels (its speed is measured end to end, not per eager op; see
    :mod:`zmlx.kernels.routes`)."""

    @functools.wraps(mixin.__call__)
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with routes.bypass():
            return mixin.__call__(self, *args, **kwargs)

    return __call__


def fused_class(mixin: type, base: type) -> type:
    """The subclass of ``base`` that mixes in ``mixin`` (one per pair, built once)."""
    key = (mixin, base)
    sub = _SUBCLASSES.get(key)
    if sub is None:
        ns: dict[str, Any] = {"__module__": mixin.__module__}
        if any("__call__" in vars(c) for c in mixin.__mro__[:-1]):  # defined above object
            ns["__call__"] = _kernels_always(mixin)
        sub = type(f"Zmlx{base.__name__}", (mixin, base), ns)
        _SUBCLASSES[key] = sub
    return sub


def is_patched(module: nn.Module) -> bool:
    return isinstance(module, Fused)


@dataclass
class Site:
    """Where a module sits: ``container[key]`` (a module's dict item or a list element)."""

    container: Any
    key: Any
    module: nn.Module
    path: str

    def replace(self, new: nn.Module) -> None:
        self.container[self.key] = new


def walk(root: nn.Module, prefix: str = "") -> Iterator[Site]:
    """Every module under ``root`` (not ``root`` itself), parents before children.

    A consumer may replace the yielded module (:meth:`Site.replace`); the walk then descends
    into the replacement, so patches of children land in the module that is actually called.
    """
    for key in list(root.keys()):
        value = root[key]
        path = f"{prefix}{key}"
        if isinstance(value, nn.Module):
            yield Site(root, key, value, path)
            yield from walk(root[key], path + ".")
        elif isinstance(value, list):
            for i in range(len(value)):
                if isinstance(value[i], nn.Module):
                    ipath = f"{path}.{i}"
                    yield Site(value, i, value[i], ipath)
                    yield from walk(value[i], ipath + ".")
        elif isinstance(value, dict):
            for k2 in list(value.keys()):
                if isinstance(value[k2], nn.Module):
                    ipath = f"{path}.{k2}"
                    yield Site(value, k2, value[k2], ipath)
                    yield from walk(value[k2], ipath + ".")


@dataclass
class Context:
    """What patterns may read about the model being patched."""

    family: str
    args: Any
    backend: str
    dtype: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
