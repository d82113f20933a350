"""Build, cache and launch one portable kernel through ``mx.fast.cuda_kernel`` or ``metal_kernel``.

A :class:`Kernel` holds a body in the portable dialect (see :mod:`zmlx.core.dialect`). On
first launch on a backend it renders the body, names the MLX kernel after a hash of the
rendered source (two sources never share a name), builds the MLX kernel object once and keeps
it in a process-wide cache keyed by content. Static sizes go in as template constants
(``template=[("D", 4096)]``), never pasted into the source, so one build serves every value
MLX specialises on.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from . import emulate as _emulate
from .backend import backend, force_backend, gpu_backend
from .dialect import DIALECTS, compact, render_body, render_header
from .dtypes import C_INT_NAMES

TemplateValue = bool | int | mx.Dtype

_BUILD_CACHE: dict[tuple | str, object] = {}
_BUILD_LOCK = threading.Lock()
_LAUNCHES = [0]  # process-wide count of kernel launches (graph-building time)


def launch_count() -> int:
    """How many kernel launches zmlx has issued in this process (tests use it to prove a
    kernel path ran rather than a fallback)."""
    return _LAUNCHES[0]


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


@dataclass
class KernelStats:
    """Counters kept per :class:`Kernel` (Python-side, at graph-building time)."""

    launches: int = 0
    builds: int = 0
    backends: set[str] = field(default_factory=set)


@dataclass
class Launch:
    """One kernel launch recorded by :func:`capture` instead of being run."""

    kernel: Kernel
    backend: str
    inputs: list[tuple[mx.Dtype, tuple[int, ...]]]
    output_shapes: list[tuple[int, ...]]
    output_dtypes: list[mx.Dtype]
    grid: tuple[int, int, int]
    threadgroup: tuple[int, int, int]
    template: list[tuple[str, TemplateValue]]
    min_groups: int = 0


_CAPTURE: contextvars.ContextVar[list[Launch] | None] = contextvars.ContextVar(
    "zmlx_capture", default=None
)


def capturing() -> bool:
    """Whether launches are being recorded by :func:`capture` (not run)."""
    return _CAPTURE.get() is not None


class _Unrecorded(list):
    """Marks :func:`dry_run` in the capture slot: ``Kernel.__call__`` returns before it would
    record, count or emulate a launch."""


@contextlib.contextmanager
def dry_run(backend_name: str) -> Iterator[None]:
    """Run ops for ``backend_name`` without launching or counting anything: their argument
    checks run (and raise), kernel launches return zero-filled outputs. Used to give a call
    routed to stock MLX the op's own errors."""
    token = _CAPTURE.set(_Unrecorded())
    try:
        with force_backend(backend_name):  # type: ignore[arg-type]
            yield
    finally:
        _CAPTURE.reset(token)


@contextlib.contextmanager
def capture(backend_name: str) -> Iterator[list[Launch]]:
    """Record kernel launches for ``backend_name`` instead of running them.

    Inside the block :func:`zmlx.backend` answers ``backend_name`` and every
    :class:`Kernel` launch is appended to the yielded list and returns zero-filled outputs.
    This lets a CPU-only machine exercise the GPU launch code and check the rendered
    sources (:mod:`zmlx.core.syntax`).
    """
    launches: list[Launch] = []
    token = _CAPTURE.set(launches)
    try:
        with force_backend(backend_name):  # type: ignore[arg-type]
            yield launches
    finally:
        _CAPTURE.reset(token)


class Kernel:
    """A kernel written once in the portable dialect, launched with the same code everywhere.

    Args:
        name: a readable name; the MLX kernel name is ``zx_<name>_<hash of source>``.
        inputs: input names, as the body refers to them.
        outputs: output names.
        body: the kernel body (portable dialect).
        header: helper code placed before the body (after the dialect prelude).
        ensure_row_contiguous: let MLX copy non-row-contiguous inputs first. Pass ``False``
            when the body indexes with ``ZX_SHAPE``/``ZX_STRIDES``.
        atomic_outputs: declare every output atomic on Metal (``zx_atomic_add`` needs it);
            CUDA outputs are plain pointers that take atomics anyway.
        shared_memory: bytes of dynamic shared memory (CUDA only; Metal bodies declare
            static ``ZX_SHARED`` arrays instead).

    Shapes:
        Whatever the body implements; ``grid`` and ``threadgroup`` count threads on both
        backends.
    """

    def __init__(
        self,
        name: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        body: str,
        *,
        header: str = "",
        ensure_row_contiguous: bool = True,
        shared_memory: int = 0,
        atomic_outputs: bool = False,
    ) -> None:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"[Kernel] expected a name of letters, digits and '_', got {name!r}")
        if not outputs:
            raise ValueError("[Kernel] expected at least one output, got none")
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.body = body
        self.header = header
        self.ensure_row_contiguous = ensure_row_contiguous
        self.shared_memory = int(shared_memory)
        self.atomic_outputs = bool(atomic_outputs)
        self.stats = KernelStats()
        self._objs: dict[object, object] = {}

    def render(self, backend_name: str) -> tuple[str, str]:
        """Return ``(header, body)`` rendered for ``backend_name`` (``"cuda"`` or ``"metal"``)."""
        try:
            dialect = DIALECTS[backend_name]
        except KeyError:
            raise ValueError(
                f"[Kernel] expected backend 'cuda' or 'metal', got {backend_name!r}"
            ) from None
        # Compacted (no comments or indentation): MLX hashes the whole source at every launch.
        body = compact(render_body(self.body, dialect))
        return compact(render_header(self.header, dialect, body)), body

    def mlx_name(self, backend_name: str) -> str:
        """The MLX kernel name: readable name plus a hash of everything that shapes the build."""
        header, body = self.render(backend_name)
        flags = f"{self.ensure_row_contiguous}:{self.shared_memory}:{self.inputs}:{self.outputs}"
        if self.atomic_outputs:
            flags += ":atomic"
        return f"zx_{self.name}_{_digest(backend_name, header, body, flags)}"

    def _build(self, backend_name: str):
        obj = self._objs.get(backend_name)
        if obj is not None:
            return obj
        header, body = self.render(backend_name)
        mlx_name = self.mlx_name(backend_name)
        key = (backend_name, mlx_name)
        obj = _BUILD_CACHE.get(key)
        if obj is not None:
            return obj
        with _BUILD_LOCK:
            obj = _BUILD_CACHE.get(key)
            if obj is None:
                obj = _BUILD_CACHE[key] = self._new_mlx_kernel(backend_name, mlx_name, header, body)
        self._objs[backend_name] = obj
        return obj

    def _new_mlx_kernel(self, backend_name: str, name: str, header: str, body: str):
        """A new MLX kernel object (counted in :attr:`stats`)."""
        self.stats.builds += 1
        kw = dict(name=name, input_names=list(self.inputs), output_names=list(self.outputs),
                  source=body, header=header, ensure_row_contiguous=self.ensure_row_contiguous)  # fmt: skip
        if backend_name == "cuda":
            return mx.fast.cuda_kernel(**kw, shared_memory=self.shared_memory)
        return mx.fast.metal_kernel(**kw, atomic_outputs=self.atomic_outputs)

    def bounded_source(self, template: Sequence[tuple[str, TemplateValue]], threads: int,
                       min_groups: int) -> tuple[str, str, str]:  # fmt: skip
        """``(MLX name, header, body)`` of the CUDA kernel declared with
        ``__launch_bounds__(threads, min_groups)`` (see :meth:`_build_bounded`)."""
        header, body = self.render("cuda")
        name = f"{self.mlx_name('cuda')}_lb{threads}_{min_groups}"
        fname = cuda_function_name(name, template)
        header += f"\n#define {fname} __launch_bounds__({threads}, {min_groups}) {fname}\n"
        return name, header, f"#undef {fname}\n{body}"

    def _build_bounded(self, template: list, threads: int, min_groups: int):
        """The CUDA kernel for one set of template constants, declared with
        ``__launch_bounds__(threads, min_groups)``.

        MLX writes the declaration itself, so the header defines the kernel's name (MLX's
        ``custom_kernel_<name><template suffix>``) as the bounds followed by the name; the
        body undefines it again before MLX names the kernel to NVRTC. One MLX kernel per
        set of constants, since the name holds them."""
        key = ("cuda", threads, min_groups, tuple(template))  # no rendering on a hit
        obj = self._objs.get(key)
        if obj is not None:
            return obj
        name, header, body = self.bounded_source(template, threads, min_groups)
        fname = cuda_function_name(name, template)
        with _BUILD_LOCK:
            obj = _BUILD_CACHE.get(fname)
            if obj is None:
                obj = _BUILD_CACHE[fname] = self._new_mlx_kernel("cuda", name, header, body)
        self._objs[key] = obj
        return obj

    def __call__(
        self,
        *inputs: mx.array,
        output_shapes: Sequence[Sequence[int]],
        output_dtypes: Sequence[mx.Dtype],
        grid: tuple[int, int, int],
        threadgroup: tuple[int, int, int],
        template: Sequence[tuple[str, TemplateValue]] | None = None,
        init_value: float | None = None,
        verbose: bool = False,
        stream: mx.Stream | mx.Device | None = None,
        backend_name: str | None = None,
        min_groups: int = 0,
    ) -> list[mx.array]:
        """Launch on the current GPU backend.

        Args:
            inputs: one array per input name.
            output_shapes: one shape per output.
            output_dtypes: one dtype per output.
            grid: threads (not groups) along x, y, z.
            threadgroup: threads per group along x, y, z.
            template: compile-time constants (``bool``, ``int >= 0`` or dtype).
            init_value: fill every output with this value before the kernel runs.
            verbose: print the rendered source.
            stream: stream or device to run on (defaults to the GPU).
            backend_name: ``"cuda"`` or ``"metal"``; defaults to :func:`zmlx.backend`.
            min_groups: CUDA: ask the compiler to fit this many groups of this launch's size
                on one multiprocessor (``__launch_bounds__``: it caps registers per thread,
                spilling if it must); 0 leaves the choice to it. Metal and the emulator
                ignore it.

        Returns:
            The list of outputs.
        """
        b = backend_name or backend()
        if b not in DIALECTS:
            raise RuntimeError(
                f"[{self.name}] expected a GPU backend (cuda or metal) to launch a kernel, got "
                f"{b!r}; use the op's reference path on the CPU"
            )
        if len(inputs) != len(self.inputs):
            raise ValueError(
                f"[{self.name}] expected {len(self.inputs)} inputs {self.inputs}, got {len(inputs)}"
            )
        template = list(template or ())
        for tname, tval in template:
            if isinstance(tval, int) and not isinstance(tval, bool) and tval < 0:
                # A negative value would give MLX an invalid kernel identifier.
                raise ValueError(f"[{self.name}] template {tname} must be >= 0, got {tval}")
        if min_groups < 0:
            raise ValueError(f"[{self.name}] expected min_groups >= 0, got {min_groups}")
        if isinstance(_CAPTURE.get(), _Unrecorded):  # dry_run: checks only
            return [mx.zeros(tuple(sh), dtype=dt) for sh, dt in zip(output_shapes, output_dtypes)]
        if _emulate.active():
            self.stats.launches += 1
            self.stats.backends.add("emulated")
            _LAUNCHES[0] += 1
            return _emulate.launch(
                self,
                inputs,
                [tuple(x) for x in output_shapes],
                list(output_dtypes),
                tuple(grid),
                tuple(threadgroup),
                template,
                init_value,
            )
        captured = _CAPTURE.get()
        if captured is not None:
            captured.append(
                Launch(
                    self,
                    b,
                    [(a.dtype, tuple(a.shape)) for a in inputs],
                    [tuple(x) for x in output_shapes],
                    list(output_dtypes),
                    tuple(grid),
                    tuple(threadgroup),
                    template,
                    min_groups,
                )
            )
            self.stats.launches += 1
            _LAUNCHES[0] += 1
            return [mx.zeros(tuple(sh), dtype=dt) for sh, dt in zip(output_shapes, output_dtypes)]
        if b == "cuda" and min_groups:
            obj = self._build_bounded(template, math.prod(threadgroup), min_groups)
        else:
            obj = self._build(b)
        if verbose:
            header, body = self.render(b)
            print(f"// zmlx kernel {self.mlx_name(b)} ({b})\n// header\n{header}\n// body\n{body}")
        kwargs = dict(
            inputs=list(inputs),
            output_shapes=[tuple(s) for s in output_shapes],
            output_dtypes=list(output_dtypes),
            grid=tuple(grid),
            threadgroup=tuple(threadgroup),
            init_value=init_value,
            verbose=verbose,
        )
        if template:
            kwargs["template"] = template
        if stream is not None:
            kwargs["stream"] = stream
        self.stats.launches += 1
        self.stats.backends.add(b)
        _LAUNCHES[0] += 1
        return obj(**kwargs)


# MLX's names of template dtypes in a kernel's name (get_type_string in mlx/backend/common).
_TYPE_NAMES = {
    mx.float32: "float",
    mx.float16: "float16_t",
    mx.bfloat16: "bfloat16_t",
    mx.float64: "double",
    mx.complex64: "complex64_t",
    **C_INT_NAMES,
}


def _template_suffix(value: TemplateValue) -> str:
    """What a template constant adds to MLX's CUDA kernel name."""
    if isinstance(value, bool):
        return "_t" if value else "_f"
    if isinstance(value, int):
        return f"_{value}"
    return "_" + _TYPE_NAMES[value]


def cuda_function_name(mlx_name: str, template: Sequence[tuple[str, TemplateValue]]) -> str:
    """The ``__global__`` function MLX's ``cuda_kernel`` declares for kernel ``mlx_name``
    launched with these template constants (``custom_kernel_<name><one suffix a constant>``)."""
    return "custom_kernel_" + mlx_name + "".join(_template_suffix(v) for _, v in template)


def groups(n: int, group: int) -> int:
    """Number of groups of ``group`` threads that cover ``n`` items."""
    return max(1, math.ceil(n / group))


def grid_1d(n_threads: int, group: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(grid, threadgroup)`` for ``n_threads`` rounded up to whole groups."""
    return (groups(n_threads, group) * group, 1, 1), (group, 1, 1)


def row_group_size(d: int, per_thread: int = 4, lo: int = 32, hi: int = 1024) -> int:
    """Threads per group for a kernel that gives one group to each row of ``d`` elements.

    A power of two between ``lo`` and ``hi`` such that each thread handles about
    ``per_thread`` elements; always a multiple of the warp size (32).
    """
    want = max(1, math.ceil(d / per_thread))
    g = lo
    while g < want and g < hi:
        g *= 2
    return g


_VECTORS: dict[tuple, mx.array] = {}
MIN_VECTOR_BYTES = 16


def vector(values: Sequence[float | int], dtype: mx.Dtype) -> mx.array:
    """A cached small array carrying runtime parameters (sizes, offsets, hyper-parameters).

    Bodies read it as ``p[0]``, ``p[1]``... on both backends (arrays of fewer than 8 elements
    are ``constant`` pointers on Metal), so a new value is a new array, never a new build.
    """
    key = (tuple(values), dtype)
    arr = _VECTORS.get(key)
    if arr is None:
        if len(_VECTORS) > 4096:
            _VECTORS.clear()
        vals = list(values)
        # MLX's CUDA allocator puts arrays of 8 bytes or less in a pool of unified memory
        # that stays on the host, so a kernel's every read of such a parameter crosses the
        # bus (about 15 us added to a decode matvec on an H100), and arrays made from host
        # data are unified memory that moves between host and GPU. So the parameters are
        # padded to MIN_VECTOR_BYTES and copied once by a GPU op, whose output is device
        # memory; the vector is a view of that copy.
        pad = max(0, -(-MIN_VECTOR_BYTES // dtype.size) - len(vals))
        arr = mx.array(vals + [0] * pad, dtype=dtype)
        if mx.default_device() == mx.gpu and gpu_backend() == "cuda":
            arr = arr + mx.array(0, dtype=dtype)
            mx.eval(arr)
        if pad:
            arr = arr[: len(vals)]
        _VECTORS[key] = arr
    return arr


def scalar(value: float | int, dtype: mx.Dtype = mx.float32) -> mx.array:
    """A cached 1-element :func:`vector`: one runtime parameter, read as ``name[0]``."""
    return vector((value,), dtype)


def dims(*values: int | bool) -> mx.array:
    """A cached uint32 :func:`vector` of sizes and flags (row count, row length, ...)."""
    return vector([int(v) for v in values], mx.uint32)
