"""The kernel catalog as data: one :class:`KernelSpec` per op, in one registry.

Family modules (one file per family under :mod:`zmlx.kernels`) build their specs and call
:func:`register`; :data:`FAMILIES` lists the modules, so adding a family is one line here and
adding an op is its family file, its test and its ``register`` call. Tests, benchmarks,
``python -m zmlx.kernels list`` and docs iterate :func:`specs`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..testing import TOLERANCES

# Family modules, imported by load_all(). One line per family.
FAMILIES: tuple[str, ...] = (
    "activations",
    "gated",
    "norms",
    "softmax",
    "rope",
    "reductions",
    "scans",
    "losses",
    "optimizers",
    "bits",
    "indexing",
    "random",
    "image",
    "routers",
    "quant",
    "moe",
    "attention",
)

Case = Mapping[str, Any]


@dataclass(frozen=True)
class KernelSpec:
    """One catalog op.

    Attributes:
        name: unique op name (``rms_norm``, ``gather_qmv_swiglu``).
        family: the family module it lives in.
        op: the public op (kernel on a GPU, reference on the CPU).
        ref: the plain-MLX reference (CPU path, fallback, test oracle).
        make_inputs: ``(case, dtype, rng) -> tuple`` of positional arguments for op and ref.
        cases: test cases: dicts with an ``"id"`` and whatever ``make_inputs`` reads (shapes).
            Include awkward sizes (1, 31, 33, 4097) and a non-contiguous case where it applies.
        bench_cases: benchmark cases (decode-like and prefill-like shapes).
        stock: the stock-MLX way to compute the same thing (``mx.fast`` op where one exists),
            timed against the op; defaults to ``ref``.
        dtypes: dtypes the op accepts.
        tolerances: ``dtype -> (atol, rtol)`` for comparing op with ref.
        grad_argnums: inputs whose gradients tests compare with the reference's; empty when
            the op is not differentiable.
        description: one line for listings and docs.
        cpu_rules: where the op reproduces MLX's CPU kernel bit for bit rather than the one of
            the backend it runs on (MLX's backends quantize and dequantize differently):
            ``"always"``, ``"emulated"`` (under the CPU emulator only) or None. Tests then
            evaluate the reference on MLX's CPU stream.
    """

    name: str
    family: str
    op: Callable[..., Any]
    ref: Callable[..., Any]
    make_inputs: Callable[[Case, mx.Dtype, Any], tuple]
    cases: Sequence[Case]
    bench_cases: Sequence[Case]
    stock: Callable[..., Any] | None = None
    dtypes: tuple[mx.Dtype, ...] = (mx.float32, mx.float16, mx.bfloat16)
    tolerances: Mapping[mx.Dtype, tuple[float, float]] = field(
        default_factory=lambda: dict(TOLERANCES)
    )
    grad_argnums: tuple[int, ...] = ()
    description: str = ""
    cpu_rules: str | None = None

    def reference_stream(self, emulated: bool):
        """The stream the test reference runs on (None: the default one)."""
        if self.cpu_rules == "always" or (self.cpu_rules == "emulated" and emulated):
            return mx.cpu
        return None

    @property
    def differentiable(self) -> bool:
        return bool(self.grad_argnums)

    def tolerance(self, dtype: mx.Dtype) -> tuple[float, float]:
        return self.tolerances.get(dtype, TOLERANCES.get(dtype, TOLERANCES[mx.float32]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "dtypes": [str(d).split(".")[-1] for d in self.dtypes],
            "differentiable": self.differentiable,
            "cases": [c["id"] for c in self.cases],
            "bench_cases": [c["id"] for c in self.bench_cases],
            "has_stock": self.stock is not None,
        }


_REGISTRY: dict[str, KernelSpec] = {}


def register(spec: KernelSpec) -> KernelSpec:
    """Add ``spec`` to the catalog (names are unique)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"[catalog] op {spec.name!r} is registered twice")
    if not spec.cases or not spec.bench_cases:
        raise ValueError(f"[catalog] op {spec.name!r} needs test cases and benchmark cases")
    _REGISTRY[spec.name] = spec
    from . import routes  # where the op is slower than stock MLX, its function calls stock

    routes.install(spec)
    return spec


def register_table(family: str, rows, columns: Sequence[str], **shared: Any) -> None:
    """Register one :class:`KernelSpec` per row of a family's table.

    Args:
        family: the family name.
        rows: tuples of field values, in the order of ``columns``.
        columns: KernelSpec field names of the tuple positions.
        shared: fields every row gets (``cases``, ``bench_cases``, ...).
    """
    for row in rows:
        register(KernelSpec(family=family, **shared, **dict(zip(columns, row, strict=True))))


def load_all() -> None:
    """Import every family module (each registers its ops)."""
    for fam in FAMILIES:
        try:
            importlib.import_module(f"zmlx.kernels.{fam}")
        except ModuleNotFoundError as e:
            if e.name != f"zmlx.kernels.{fam}":
                raise


def specs(family: str | None = None) -> list[KernelSpec]:
    """All registered specs (loading every family first), optionally of one family."""
    load_all()
    out = sorted(_REGISTRY.values(), key=lambda s: (s.family, s.name))
    return [s for s in out if family is None or s.family == family]


def get(name: str) -> KernelSpec:
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"[catalog] no op named {name!r}") from None
