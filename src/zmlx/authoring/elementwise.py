"""``elementwise``: one fused kernel from an expression string, with a symbolic gradient.

    >>> mish = zmlx.elementwise("x * tanh(softplus(x))")
    >>> axpy = zmlx.elementwise("a * x + y", inputs=("a", "x", "y"))
    >>> y = mish(x); g = mx.grad(lambda x: mish(x).sum())(x)

The expression is parsed into :mod:`zmlx.core.expr` IR. On a GPU it renders to one kernel (one
thread per output element, inputs read in their own dtype and computed in float32); on the CPU
it lowers to MLX ops. The VJP comes from symbolic differentiation of the same IR and is itself
an ``elementwise`` op (so gradients of gradients work). Inputs broadcast like MLX arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import mlx.core as mx

from ..core import expr as E
from ..core import overrides
from ..core.backend import backend
from ..core.dtypes import as_array, check_float, dtype_name, promote
from ..core.kernel import Kernel, grid_1d, scalar

_MAX_ELEMENTS = 2**31 - 1
_GROUP = 256  # threads per group (a multiple of the warp size)
_VEC = 4  # elements per thread on the contiguous path (memory-level parallelism)
_SMALL = 1 << 16  # up to this many elements an op is in the "small" knob class (decode-like)


def _size(args) -> int:
    shapes = [a.shape for a in args if isinstance(a, mx.array)]
    return math.prod(mx.broadcast_shapes(*shapes)) if shapes else 1


KNOBS = overrides.KnobSpace(
    name="elementwise",
    values={"group": (32, 64, 128, 256, 512, 1024), "vec": (1, 2, 4, 8)},
    shape_class=lambda args: _knob_class(_size(args)),
    defaults=lambda args: {"group": _GROUP, "vec": _VEC},
    describe="group: threads per group; vec: elements per thread on the contiguous path "
    "(VEC template, lsize apart so warp accesses stay coalesced); broadcast inputs ignore both",
)
"""Launch knobs of every elementwise op (see :mod:`zmlx.core.overrides`)."""


def _unbroadcast(g: mx.array, shape: tuple[int, ...]) -> mx.array:
    """Sum ``g`` down to ``shape`` (the inverse of broadcasting)."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    axes = list(range(extra))
    axes += [extra + i for i, s in enumerate(shape) if s == 1 and g.shape[extra + i] != 1]
    if axes:
        g = mx.sum(g, axis=axes, keepdims=True)
    return g.reshape(shape)


class ElementwiseOp:
    """A compiled elementwise expression. Build with :func:`elementwise`.

    Attributes:
        name: the op name (used in kernel names and errors).
        inputs: input names, in call order.
        nodes: one IR node per output.
        last_path: ``"cuda"``, ``"metal"`` or ``"reference"``: what the last call ran.
    """

    def __init__(
        self,
        nodes: Sequence[E.Node],
        inputs: Sequence[str],
        *,
        name: str,
        grad_nodes: Mapping[str, E.Node] | None = None,
        out_dtype: mx.Dtype | None = None,
        uses_output: bool = False,
    ) -> None:
        self.nodes = tuple(nodes)
        self.inputs = tuple(inputs)
        self.name = name
        self.out_dtype = out_dtype
        self._grad_override = dict(grad_nodes or {})
        self._uses_output = uses_output
        self._kernels: dict[tuple, Kernel] = {}
        self._backward: ElementwiseOp | None = None
        self._fn = self._make_function()
        self.last_path: str | None = None
        self._verbose = False
        overrides.register_space(KNOBS, [name])

    # -- public call -------------------------------------------------------------------
    def __call__(self, *args, verbose: bool = False):
        if len(args) != len(self.inputs):
            raise TypeError(
                f"[{self.name}] expected {len(self.inputs)} input(s) {self.inputs}, got {len(args)}"
            )
        arrays, weak = [], []
        for n, a in zip(self.inputs, args):
            arr, is_weak = as_array(self.name, n, a)
            check_float(self.name, n, arr)
            arrays.append(arr)
            weak.append(is_weak)
        try:
            shape = tuple(mx.broadcast_shapes(*[a.shape for a in arrays]))
        except ValueError:
            shapes = ", ".join(f"{n}{tuple(a.shape)}" for n, a in zip(self.inputs, arrays))
            raise ValueError(
                f"[{self.name}] expected shapes that broadcast, got {shapes}"
            ) from None
        dtype = self.out_dtype or promote(a.dtype for a, w in zip(arrays, weak) if not w)
        self._shape, self._dtype = shape, dtype
        if math.prod(shape) == 0:
            outs = [mx.zeros(shape, dtype=dtype) for _ in self.nodes]
            return outs[0] if len(outs) == 1 else tuple(outs)
        self._verbose = verbose
        out = self._fn(*arrays)
        return out[0] if len(self.nodes) == 1 else tuple(out)

    # -- forward paths -----------------------------------------------------------------
    def reference(self, *args, compute_dtype: mx.Dtype = mx.float32) -> list[mx.array]:
        """The plain-MLX path: the IR lowered to MLX ops (the CPU path and the test oracle).

        Args:
            args: one array or number per input.
            compute_dtype: float32, or float64 (CPU only) for a high-precision oracle.

        Returns:
            One array per output, in the op's output dtype.
        """
        arrays, weak = zip(*[as_array(self.name, n, a) for n, a in zip(self.inputs, args)])
        dtype = self.out_dtype or promote(a.dtype for a, w in zip(arrays, weak) if not w)
        return self._reference(arrays, dtype, compute_dtype)

    def _reference(self, arrays, dtype, compute_dtype=mx.float32) -> list[mx.array]:
        shape = tuple(mx.broadcast_shapes(*[a.shape for a in arrays]))
        env = {n: a.astype(compute_dtype) for n, a in zip(self.inputs, arrays)}
        outs = E.lower(self.nodes, env, compute_dtype, shape=shape)
        return [o.astype(dtype) for o in outs]

    def _forward(self, arrays: Sequence[mx.array]) -> list[mx.array]:
        b = backend()
        size = math.prod(self._shape)
        if b == "cpu" or size > _MAX_ELEMENTS:
            self.last_path = "reference"
            if self._verbose and b != "cpu":
                print(
                    f"[{self.name}] {size} elements exceed the kernel's index range: reference path"
                )
            return self._reference(arrays, self._dtype)
        self.last_path = b
        return self._launch(arrays, b)

    def _modes(self, arrays: Sequence[mx.array]) -> tuple[str, ...]:
        """Per input: 'f' (full: same shape as the output), 's' (one element), 'b' (strided)."""
        modes = []
        for a in arrays:
            if a.size == 1:
                modes.append("s")
            elif a.shape == self._shape:
                modes.append("f")
            else:
                modes.append("b")
        if "b" in modes:  # strided indexing is then used for every non-scalar input
            modes = ["s" if m == "s" else "b" for m in modes]
        return tuple(modes)

    def _kernel(self, modes: tuple[str, ...]) -> Kernel:
        k = self._kernels.get(modes)
        if k is not None:
            return k
        names = {n: f"v_{i}" for i, n in enumerate(self.inputs)}
        stmts, exprs = E.render(self.nodes, names)
        if "b" in modes:
            # Strided: one element per thread, each input located through its strides.
            lines = ["  if (tid >= zx_n[0]) { return; }"]
            for i, (n, m) in enumerate(zip(self.inputs, modes)):
                src = f"in_{i}"
                idx = (
                    "0"
                    if m == "s"
                    else (
                        f"zx_elem_to_loc(tid, ZX_SHAPE({src}), ZX_STRIDES({src}), ZX_NDIM({src}))"
                    )
                )
                lines.append(f"  const float {names[n]} = static_cast<float>({src}[{idx}]);")
            lines += [f"  {s}" for s in stmts]
            lines += [f"  out_{j}[tid] = static_cast<O>({e});" for j, e in enumerate(exprs)]
        else:
            # Contiguous: VEC elements per thread, VEC apart by the group size so every warp
            # access is coalesced; all loads are issued before any store (outputs may alias
            # inputs as far as the compiler knows, which would serialise them).
            lines = [
                "  const uint n = zx_n[0];",
                "  const uint first = gid * (lsize * VEC) + lid;",
            ]
            for i, m in enumerate(modes):
                if m == "s":
                    lines.append(f"  const float s_{i} = static_cast<float>(in_{i}[0]);")
                else:
                    lines += [
                        f"  float a_{i}[VEC];",
                        "  #pragma unroll",
                        "  for (int k = 0; k < VEC; ++k) {",
                        "    const uint i = first + k * lsize;",
                        f"    a_{i}[k] = (i < n) ? static_cast<float>(in_{i}[i]) : 0.0f;",
                        "  }",
                    ]
            lines += [
                "  #pragma unroll",
                "  for (int k = 0; k < VEC; ++k) {",
                "    const uint i = first + k * lsize;",
                "    if (i < n) {",
            ]
            for i, (n, m) in enumerate(zip(self.inputs, modes)):
                val = f"s_{i}" if m == "s" else f"a_{i}[k]"
                lines.append(f"      const float {names[n]} = {val};")
            lines += [f"      {s}" for s in stmts]
            lines += [f"      out_{j}[i] = static_cast<O>({e});" for j, e in enumerate(exprs)]
            lines += ["    }", "  }"]
        k = Kernel(
            f"{self.name}_{''.join(modes)}",
            [f"in_{i}" for i in range(len(self.inputs))] + ["zx_n"],
            [f"out_{i}" for i in range(len(self.nodes))],
            "\n".join(lines),
            ensure_row_contiguous="b" not in modes,
        )
        self._kernels[modes] = k
        return k

    def _launch(self, arrays: Sequence[mx.array], b: str) -> list[mx.array]:
        shape = self._shape
        modes = self._modes(arrays)
        ins = []
        for a, m in zip(arrays, modes):
            if m == "s":
                a = a.reshape(1)
            elif m == "b":
                a = mx.broadcast_to(a, shape)
            elif a.ndim == 0:
                a = a.reshape(1)
            ins.append(a)
        n = math.prod(shape)
        strided = "b" in modes
        group_size, vec = _GROUP, 1 if strided else _VEC
        knobs = None if strided else overrides.lookup(self.name, lambda: _knob_class(n), b)
        if knobs is not None:
            k = KNOBS.resolve(arrays, knobs)
            group_size, vec = k["group"], k["vec"]
        grid, group = grid_1d(-(-n // vec), group_size)
        template = [("O", self._dtype)] + ([] if strided else [("VEC", vec)])
        outs = self._kernel(modes)(
            *ins,
            scalar(n, mx.uint32),
            output_shapes=[(n,)] * len(self.nodes),
            output_dtypes=[self._dtype] * len(self.nodes),
            grid=grid,
            threadgroup=group,
            template=template,
            verbose=self._verbose,
            backend_name=b,
        )
        return [o.reshape(shape) for o in outs]

    # -- autograd ----------------------------------------------------------------------
    def _make_function(self):
        op = self

        @mx.custom_function
        def fn(*arrays):
            return tuple(op._forward(arrays))

        @fn.vjp
        def fn_vjp(primals, cotangents, outputs):
            # MLX passes a lone primal (and a lone cotangent) bare, not in a tuple.
            single = isinstance(primals, mx.array)
            prims = [primals] if single else list(primals)
            cots = list(cotangents) if isinstance(cotangents, (tuple, list)) else [cotangents]
            outs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            grads = op._vjp(prims, cots, outs)
            return grads[0] if single else grads

        return fn

    def backward_op(self) -> ElementwiseOp:
        """The op computing every input's gradient at once (an ``elementwise`` op itself).

        Its inputs are the forward inputs, one cotangent per output (``zx_g<level>_<k>``) and,
        when a user gradient refers to ``y``, the forward outputs (``zx_y<k>``).
        """
        if self._backward is None:
            # Cotangent names must differ from every input (a backward op's own inputs include
            # the previous level's cotangents when differentiating twice).
            level = sum(n.startswith("zx_g") for n in self.inputs)
            g_names = [f"zx_g{level}_{k}" for k in range(len(self.nodes))]
            y_names = [f"zx_y{k}" for k in range(len(self.nodes))] if self._uses_output else []
            grads = []
            for n in self.inputs:
                if n in self._grad_override:
                    grads.append(self._grad_override[n])
                    continue
                total = E.const(0.0)
                for node, g in zip(self.nodes, g_names):
                    total = E.add(total, E.mul(E.var(g), E.grad(node, n)))
                grads.append(total)
            self._backward = ElementwiseOp(
                grads, list(self.inputs) + g_names + y_names, name=f"{self.name}_vjp"
            )
        return self._backward

    def _vjp(self, primals, cots, outs):
        bwd = self.backward_op()
        extra = outs if self._uses_output else []
        grads = bwd(*primals, *cots, *extra)
        grads = grads if isinstance(grads, tuple) else (grads,)
        return tuple(
            _unbroadcast(g, tuple(p.shape)).astype(p.dtype) for g, p in zip(grads, primals)
        )

    def __repr__(self) -> str:
        exprs = ", ".join(E.to_text(n) for n in self.nodes)
        return f"ElementwiseOp({self.name}: ({', '.join(self.inputs)}) -> {exprs})"


def _knob_class(n: int) -> str:
    return "small" if n <= _SMALL else "large"


def _op_name(name: str | None, text: str) -> str:
    if name:
        if not name.replace("_", "").isalnum():
            raise ValueError(
                f"[elementwise] expected a name of letters, digits and '_', got {name!r}"
            )
        return name
    return "ew"


def elementwise(
    expr: str | Sequence[str],
    *,
    inputs: Sequence[str] = ("x",),
    name: str | None = None,
    grad: Mapping[str, str] | str | None = None,
    out_dtype: mx.Dtype | None = None,
    compute_dtype: mx.Dtype | None = None,
) -> ElementwiseOp:
    """Build a fused elementwise op from an expression.

    Args:
        expr: an expression over ``inputs`` (see :mod:`zmlx.core.expr` for the syntax and
            function table), or a list of them for an op with several outputs.
        inputs: the input names, in call order. Inputs broadcast against each other; Python
            numbers are accepted at call time.
        name: a readable name for kernels and error messages.
        grad: optional gradient override: an expression (for a single input) or a mapping
            ``{input: expression}``. It may use the inputs, ``g`` (the cotangent) and ``y``
            (the output). Inputs without an override get the symbolic derivative.
        out_dtype: output dtype; default is the promoted dtype of the array inputs.
        compute_dtype: only ``float32`` (the default) is supported.

    Returns:
        An :class:`ElementwiseOp`; call it with one array (or number) per input.

    Shapes:
        inputs: any shapes that broadcast together; output: the broadcast shape.
    """
    op_name = _op_name(name, expr if isinstance(expr, str) else "")
    if compute_dtype is not None and compute_dtype != mx.float32:
        raise ValueError(
            f"[{op_name}] expected compute_dtype float32, got {dtype_name(compute_dtype)}"
        )
    inputs = tuple(inputs)
    if not inputs:
        raise ValueError(f"[{op_name}] expected at least one input name")
    for n in inputs:
        if not n.isidentifier() or n.startswith("zx_"):
            raise ValueError(
                f"[{op_name}] expected input names to be identifiers not starting with 'zx_', got {n!r}"
            )
    if len(set(inputs)) != len(inputs):
        raise ValueError(f"[{op_name}] expected distinct input names, got {inputs}")
    texts = [expr] if isinstance(expr, str) else list(expr)
    if not texts:
        raise ValueError(f"[{op_name}] expected at least one expression")
    nodes = [E.parse(t, inputs, op_name=op_name) for t in texts]
    grad_nodes: dict[str, E.Node] = {}
    uses_output = False
    if grad is not None:
        if isinstance(grad, str):
            if len(inputs) != 1:
                raise ValueError(
                    f"[{op_name}] a single gradient expression needs one input; use a mapping"
                )
            grad = {inputs[0]: grad}
        if len(nodes) != 1:
            raise ValueError(f"[{op_name}] gradient overrides need a single-output op")
        env = {"g": E.var("zx_g0_0"), "y": E.var("zx_y0")}
        for n, text in grad.items():
            if n not in inputs:
                raise ValueError(f"[{op_name}] gradient given for unknown input {n!r}")
            node = E.parse(text, inputs, op_name=op_name, env=env)
            grad_nodes[n] = node
            uses_output |= "zx_y0" in E.free_vars([node])
    return ElementwiseOp(
        nodes,
        inputs,
        name=op_name,
        grad_nodes=grad_nodes,
        out_dtype=out_dtype,
        uses_output=uses_output,
    )
