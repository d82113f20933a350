"""zmlx module constants (kernel switches, rows per group, ...) set for a benchmark run.

A setting is ``"zmlx.MODULE.NAME": value``; :func:`parse` reads them from ``--set`` items
(``MODULE.NAME=VALUE``), :func:`apply` sets them for the process and :func:`applied` for a
block. Keys outside ``zmlx.`` (a benchmark's own options in the same dict) are left alone.
A benchmark takes ``--set`` with :func:`add_argument` and applies it with
:func:`apply_command_line`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Iterator
from typing import Any

EXAMPLE = "zmlx.kernels.moe_kernels.SPLIT_EXPERTS=false"


def parse(items: Iterable[str]) -> dict[str, Any]:
    """``MODULE.NAME=VALUE`` items as settings (VALUE: an int, a float, or true/false; the
    text as it is for a setting whose value is a string; a number for a float setting).

    Raises:
        ValueError: an item outside ``zmlx.``, without a value, or naming no such constant.
    """
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        mod, _, name = key.rpartition(".")
        if not mod.startswith("zmlx.") or not raw:
            raise ValueError(f"[settings] expected --set zmlx.MODULE.NAME=VALUE, got {item!r}")
        try:
            module = importlib.import_module(mod)
        except ImportError:
            raise ValueError(f"[settings] no module {mod!r} for {item!r}") from None
        if not hasattr(module, name):
            raise ValueError(f"[settings] {mod} has no setting {name!r}")
        current = getattr(module, name)
        if isinstance(current, str):
            out[key] = raw
            continue
        if isinstance(current, float):
            try:
                out[key] = float(raw)
            except ValueError:
                raise ValueError(f"[settings] expected a number for {key}, got {raw!r}") from None
            continue
        low = raw.lower()
        out[key] = low == "true" if low in ("true", "false") else (float(raw) if "." in raw
                                                                   else int(raw))  # fmt: skip
    return out


def apply(values: dict[str, Any]) -> dict[tuple[Any, str], Any]:
    """Set the ``zmlx.`` settings of ``values``; returns the old values by (module, name)."""
    old = {}
    for key, v in values.items():
        if not key.startswith("zmlx."):
            continue
        mod, name = key.rsplit(".", 1)
        m = importlib.import_module(mod)
        old[(m, name)] = getattr(m, name)
        setattr(m, name, v)
    return old


@contextlib.contextmanager
def applied(values: dict[str, Any]) -> Iterator[None]:
    """:func:`apply` for the block, the old values restored after it."""
    old = {}
    try:
        old = apply(values)
        yield
    finally:
        for (m, name), v in old.items():
            setattr(m, name, v)


def add_argument(parser) -> None:
    """Add ``--set MODULE.NAME=VALUE ...`` to an ``argparse`` parser."""
    parser.add_argument("--set", nargs="+", default=[], metavar="MODULE.NAME=VALUE",
                        help=f"set a zmlx module constant for the run, e.g. {EXAMPLE} (kept "
                             "in the capsule's command line)")  # fmt: skip


def apply_command_line(items: Iterable[str], prog: str) -> dict[str, Any]:
    """:func:`parse` and :func:`apply` ``--set`` items for the whole run; returns the
    settings. A bad item exits with ``[prog]`` and the reason."""
    try:
        values = parse(items)
    except ValueError as e:
        raise SystemExit(f"[{prog}] {e}") from None
    apply(values)
    return values
