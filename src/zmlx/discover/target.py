"""What a search works on: one catalog op at one shape and dtype, and its candidates.

A *candidate* is ``(op, knobs, body)``: launch knobs from the op's
:class:`~zmlx.core.overrides.KnobSpace` and, optionally, a rewrite of the body of the kernel
the op launches at the target shape. It always runs through the op's own code
(:func:`applied`): the knobs are forced with :func:`zmlx.core.overrides.forcing` and a rewrite
replaces the body of the op's own :class:`~zmlx.core.kernel.Kernel` object for the duration of
the block. So a candidate is checked and timed exactly as the op would run it with an
override, and the op's reference, tolerances and test cases (its catalog entry) judge it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from ..core import overrides
from ..core.kernel import Kernel, Launch, capture
from ..kernels import catalog
from . import safety

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
EMULATED_MAX_ELEMENTS = 1 << 15  # the emulator runs a fiber per GPU thread: small cases only


def dtype_name(d: mx.Dtype) -> str:
    return str(d).split(".")[-1]


def body_sha(body: str | None) -> str | None:
    return None if body is None else hashlib.sha256(body.encode()).hexdigest()[:12]


def candidate_key(knobs: Mapping[str, Any], body: str | None) -> str:
    """A canonical key: equal knobs and equal body give equal keys."""
    return json.dumps(dict(sorted(knobs.items()))) + "|" + (body_sha(body) or "-")


def input_size(args: Sequence[Any]) -> int:
    return sum(a.size for a in args if isinstance(a, mx.array))


def _find_case(spec, case_id: str) -> dict:
    for c in list(spec.bench_cases) + list(spec.cases):
        if str(c["id"]) == case_id:
            return dict(c)
    ids = list(dict.fromkeys(str(c["id"]) for c in list(spec.bench_cases) + list(spec.cases)))
    raise ValueError(f"[discover] {spec.name} has no case {case_id!r}; cases: {ids}")


def searchable() -> list[str]:
    """Catalog ops that take launch knobs (the ones a search can tune)."""
    out = []
    rng = np.random.default_rng(0)
    for spec in catalog.specs():
        if overrides.space_of(spec.name) is None:
            # Ops built lazily (gated forms) register their knobs on first call.
            with contextlib.suppress(Exception), capture("cuda"), mx.stream(mx.cpu):
                spec.op(*spec.make_inputs(spec.cases[0], spec.dtypes[0], rng))
        if overrides.space_of(spec.name) is not None:
            out.append(spec.name)
    return out


_BODY_OBJS: dict[tuple[int, str], dict] = {}


@contextlib.contextmanager
def applied(
    op: str, knobs: Mapping[str, Any], kernel: Kernel | None = None, body: str | None = None
) -> Iterator[None]:
    """Run ``op`` with ``knobs`` (and ``kernel``'s body replaced by ``body``) in the block."""
    with overrides.forcing({op: knobs}):
        if kernel is None or body is None or body == kernel.body:
            yield
            return
        saved = (kernel.body, kernel._objs)
        # Built MLX kernels are kept per body, so switching back and forth never rebuilds.
        kernel.body = body
        kernel._objs = _BODY_OBJS.setdefault((id(kernel), body), {})
        try:
            yield
        finally:
            kernel.body, kernel._objs = saved


@dataclass
class Target:
    """One op at one shape (a case of its catalog entry) and dtype.

    Args:
        op: a catalog op name that takes knobs (see :func:`searchable`).
        case: the id of one of its ``bench_cases`` or ``cases`` (default: the first bench case).
        dtype: ``float32``, ``float16`` or ``bfloat16``.
    """

    op: str
    case: str | None = None
    dtype: str = "float16"

    def __post_init__(self) -> None:
        self.spec = catalog.get(self.op)
        if self.dtype not in DTYPES:
            raise ValueError(f"[discover] expected dtype in {list(DTYPES)}, got {self.dtype!r}")
        if DTYPES[self.dtype] not in self.spec.dtypes:
            self.dtype = dtype_name(self.spec.dtypes[0])
        self.case = self.case or str(self.spec.bench_cases[0]["id"])
        self.case_dict = _find_case(self.spec, self.case)
        self.args0 = args = self.args(0)
        self.space = overrides.space_of(self.op)
        if self.space is None:
            self.launches({}, None, args)  # a lazily built op registers its knobs when called
            self.space = overrides.space_of(self.op)
        if self.space is None:
            raise ValueError(
                f"[discover] {self.op} takes no launch knobs; searchable ops: "
                f"{', '.join(searchable())}"
            )
        self.defaults = self.space.defaults(args)
        self.shape_class = self.space.shape_class(args)
        self.kernel = self.kernel_for(self.defaults)
        if self.kernel is None:
            raise ValueError(f"[discover] {self.op} launches no kernel at case {self.case}")
        self.body = self.kernel.body
        if not self._knobs_apply():
            raise ValueError(
                f"[discover] {self.op} ignores its knobs at case {self.case} (a broadcast or "
                "strided input takes a path without them); pick another --case"
            )

    def _knobs_apply(self) -> bool:
        """Whether some other valid knob setting changes the launch at the target shape."""

        def geometry(knobs):
            got = self.launches(knobs, None, self.args0)
            return [(g.kernel.name, g.grid, g.threadgroup, g.template) for g in got]

        base = geometry(self.defaults)
        for name, values in self.space.values.items():
            for v in values:
                knobs = {**self.defaults, name: v}
                if v != self.defaults[name] and self.space.check(self.args0, knobs) is None:
                    if geometry(knobs) != base:
                        return True
        return False

    def kernel_for(self, knobs: Mapping[str, Any]) -> Kernel | None:
        """The kernel object the op launches first at the target shape with ``knobs`` (a
        rewrite replaces its body); None when it launches none."""
        got = self.launches(knobs, None, self.args0)
        return got[0].kernel if got else None

    def args(
        self, seed: int, case: Mapping | None = None, dtype: str | None = None, on_cpu=True
    ) -> tuple:
        """Fresh inputs for ``case`` (default: the target) from ``seed``; built on the CPU
        stream unless ``on_cpu`` is False (static checks never touch the GPU)."""
        rng = np.random.default_rng(seed)
        with mx.stream(mx.cpu) if on_cpu else contextlib.nullcontext():
            return self.spec.make_inputs(case or self.case_dict, DTYPES[dtype or self.dtype], rng)

    def launches(self, knobs, body, args, kernel: Kernel | None = None) -> list[Launch]:
        """The launches the op records for ``args`` with this candidate (nothing runs);
        ``body`` replaces ``kernel``'s."""
        with capture("cuda") as got, mx.stream(mx.cpu), applied(self.op, knobs, kernel, body):
            self.spec.op(*args)
        return got

    def static_check(
        self, knobs: Mapping[str, Any], body: str | None, cases: Sequence[Mapping] = ()
    ) -> list[str]:
        """Reasons to reject the candidate before compiling it (empty: it may compile)."""
        bad = self.space.invalid(knobs)
        if bad:
            return [bad]
        args = self.args0
        full = {**self.defaults, **knobs}
        bad = self.space.check(args, full)
        if bad:
            return [f"knobs do not apply at the target shape: {bad}"]
        reasons: list[str] = []
        kernel = None
        if body is not None:
            kernel = self.kernel_for(full)
            if kernel is None:
                return ["the op takes its reference path with these knobs (no kernel launch)"]
            reasons += safety.check_source(
                body, inputs=kernel.inputs, outputs=kernel.outputs, original=kernel.body
            )
            if reasons:
                return reasons
        try:
            shapes = [args] + [self.args(0, c) for c in cases]
            recorded = [lc for a in shapes for lc in self.launches(full, body, a, kernel)]
        except Exception as e:  # the op's own checks refused the launch
            return [f"launch failed: {type(e).__name__}: {e}"]
        if not recorded:
            return ["the op takes its reference path with these knobs (no kernel launch)"]
        for lc in recorded:
            reasons += [f"{lc.kernel.name}: {r}" for r in safety.check_launch(lc)]
        return sorted(set(reasons), key=reasons.index)

    def check_cases(self, emulated: bool, limit: int = 4) -> list[dict]:
        """The target case plus up to ``limit`` test cases (small ones on the emulator)."""
        out = [self.case_dict]
        for c in self.spec.cases:
            if len(out) > limit:
                break
            if c.get("reference_only") or str(c["id"]) == self.case:
                continue
            if emulated:
                size = input_size(self.args(0, c, dtype_name(self.spec.dtypes[0])))
                if size > EMULATED_MAX_ELEMENTS:
                    continue
            out.append(dict(c))
        return out

    def describe(self) -> dict[str, Any]:
        """What a proposer (or a dataset) needs to know about the target."""
        shapes = [tuple(a.shape) for a in self.args(0) if isinstance(a, mx.array)]
        return {
            "op": self.op,
            "family": self.spec.family,
            "description": self.spec.description,
            "case": self.case,
            "shapes": shapes,
            "dtype": self.dtype,
            "shape_class": self.shape_class,
            "knob_space": {k: list(v) for k, v in self.space.values.items()},
            "knob_notes": self.space.describe,
            "defaults": self.defaults,
            "kernel_inputs": list(self.kernel.inputs),
            "kernel_outputs": list(self.kernel.outputs),
        }
