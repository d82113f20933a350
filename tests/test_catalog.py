"""Every catalog op against its reference: outputs, gradients, the path that ran, rendered sources.

Family test files (``test_<family>.py``) add what is specific to a family; this file runs the
shared checks over the whole registry, so a new op is tested as soon as it is registered.
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from zmlx.core import backend, emulate, syntax
from zmlx.core.kernel import capture, launch_count
from zmlx.kernels import catalog
from zmlx.testing import assert_close, check_grad

SPECS = catalog.specs()
DT = {mx.float32: "f32", mx.float16: "f16", mx.bfloat16: "bf16"}


def _param(spec, case, dtype):
    return pytest.param(spec, case, dtype, id=f"{spec.name}-{case['id']}-{DT.get(dtype, dtype)}",
                        marks=pytest.mark.xdist_group(spec.name))  # fmt: skip


def _params(grad: bool = False):
    out = []
    for spec in SPECS:
        if grad and not spec.differentiable:
            continue
        cases = [c for c in spec.cases if c.get("grad", True)] if grad else spec.cases
        for case in cases[:2] if grad else cases:
            out += [_param(spec, case, dtype) for dtype in spec.dtypes]
    return out


def _as_list(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _reference(spec, args, emulated: bool, case) -> list:
    # A case with no kernel runs the reference itself, on the default stream.
    stream = None if case.get("reference_only") else spec.reference_stream(emulated)
    if stream is None:
        return _as_list(spec.ref(*args))
    with mx.stream(stream):
        want = _as_list(spec.ref(*args))
        mx.eval(want)
    return want


@pytest.mark.parametrize("spec,case,dtype", _params())
def test_op_matches_reference(spec, case, dtype, rng):
    args = spec.make_inputs(case, dtype, rng)
    before = launch_count()
    got = _as_list(spec.op(*args))
    launched = launch_count() - before
    if backend() != "cpu" and not case.get("reference_only", False):
        assert launched > 0, f"{spec.name} took its reference path on {backend()}"
    want = _reference(spec, args, emulated=False, case=case)
    assert len(got) == len(want)
    atol, rtol = spec.tolerance(dtype)
    for i, (g, w) in enumerate(zip(got, want)):
        exact = not mx.issubdtype(w.dtype, mx.floating)
        assert_close(
            g, w, atol=0 if exact else atol, rtol=0 if exact else rtol, name=f"{spec.name}[{i}]"
        )


@pytest.mark.parametrize("spec,case,dtype", _params(grad=True))
def test_op_gradient(spec, case, dtype, rng):
    args = spec.make_inputs(case, dtype, rng)
    atol, rtol = spec.tolerance(dtype)
    check_grad(
        spec.op,
        spec.ref,
        args,
        argnums=spec.grad_argnums,
        atol=atol * 4,
        rtol=rtol * 4,
        name=spec.name,
    )


EMULATED_MAX_ELEMENTS = 1 << 15  # the emulator runs a fiber per GPU thread: small cases only


def _emulated_params():
    return [_param(spec, case, dtype) for spec in SPECS for case in spec.cases
            if not case.get("reference_only", False) for dtype in spec.dtypes]  # fmt: skip


@pytest.mark.no_emulate  # it enters the emulator itself
@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
@pytest.mark.parametrize("spec,case,dtype", _emulated_params())
def test_kernel_on_cpu_emulator(spec, case, dtype, rng):
    """The GPU kernel path, run by the CPU SIMT emulator, against the reference."""
    args = spec.make_inputs(case, dtype, rng)
    size = sum(a.size for a in args if isinstance(a, mx.array))
    if size > EMULATED_MAX_ELEMENTS:
        pytest.skip(f"{size} input elements: too large for the emulator")
    before = launch_count()
    with emulate.emulate():
        got = _as_list(spec.op(*args))
        mx.eval(got)
    if launch_count() == before:
        pytest.skip(f"{spec.name} launches no kernel for this case")
    want = _reference(spec, args, emulated=True, case=case)
    atol, rtol = spec.tolerance(dtype)
    for i, (g, w) in enumerate(zip(got, want)):
        exact = not mx.issubdtype(w.dtype, mx.floating)
        assert_close(
            g,
            w,
            atol=0 if exact else atol,
            rtol=0 if exact else rtol,
            name=f"{spec.name}[{i}] (emulated)",
        )


def test_registry_is_complete():
    assert len(SPECS) >= 50, f"only {len(SPECS)} ops registered"
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names))
    for s in SPECS:
        assert callable(s.op) and callable(s.ref), s.name
        assert s.cases and s.bench_cases, s.name
        assert all("id" in c for c in list(s.cases) + list(s.bench_cases)), s.name
        assert s.description, f"{s.name} has no description"


BACKENDS = [
    pytest.param(
        "metal", marks=pytest.mark.skipif(not syntax.metal_available(), reason="no C++ compiler")
    ),
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not syntax.cuda_available(), reason="needs NVRTC and ZMLX_MLX_CUDA_INCLUDE"
        ),
    ),
]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_rendered_sources_compile(spec, backend_name, rng):
    launches = []
    for dtype in spec.dtypes:
        for case in spec.cases:
            args = spec.make_inputs(case, dtype, rng)
            with capture(backend_name) as got:
                spec.op(*args)
            launches += got
    if not launches:
        pytest.skip(f"{spec.name} launched no kernel for these cases")
    failures = syntax.check_all(launches)
    assert not failures, "\n\n".join(failures)
