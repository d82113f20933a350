"""The zmlx kernel catalog: one module per family, every op registered in :mod:`.catalog`."""

from .catalog import KernelSpec, get, register, specs

__all__ = ["KernelSpec", "get", "register", "specs"]
