"""Row kernels: ``reduce``, ``map_reduce`` and ``rowwise``.

A *row* is the last axis of the first input. Extra inputs may be the same shape as the first
(``"full"``), a vector the length of a row (``"column"``, e.g. a norm's weight), or a single
number (``"scalar"``, e.g. ``eps``; Python numbers are accepted). Rows of up to
:data:`WARP_ROW_MAX` elements get one warp each (no shared memory, no barriers); longer rows
get one group each, sized by :func:`~zmlx.core.kernel.row_group_size`.

Gradients differentiate the plain-MLX reference (DESIGN principle 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import mlx.core as mx

from ..core import expr as E
from ..core.backend import backend
from ..core.dtypes import as_array, check_float, promote
from ..core.kernel import Kernel, dims, row_group_size

WARP_ROW_MAX = 256  # rows up to this length get one warp each
WARP_GROUP = 256  # threads per group in warp-per-row mode (8 rows per group)
_MAX_ROWS = 2**31 - 1

_BUILTIN = {
    "sum": ("(a + b)", 0.0, mx.sum),
    "max": ("zx_max(a, b)", -math.inf, mx.max),
    "min": ("zx_min(a, b)", math.inf, mx.min),
    "prod": ("(a * b)", 1.0, mx.prod),
}
_BLOCK_HELPER = {"sum": "zx_block_sum", "max": "zx_block_max", "min": "zx_block_min"}
_WARP_HELPER = {"sum": "zx_warp_sum", "max": "zx_warp_max", "min": "zx_warp_min"}


def _row_operands(
    op: str, names: Sequence[str], args
) -> tuple[list[mx.array], list[bool], list[str]]:
    """Validate row-op inputs; returns arrays, weak flags and modes ('f', 'c' or 's')."""
    if len(args) != len(names):
        raise TypeError(f"[{op}] expected {len(names)} input(s) {tuple(names)}, got {len(args)}")
    arrays, weak, modes = [], [], []
    for i, (n, a) in enumerate(zip(names, args)):
        arr, w = as_array(op, n, a)
        check_float(op, n, arr)
        if i == 0:
            if arr.ndim == 0:
                raise ValueError(
                    f"[{op}] expected '{n}' to have at least one axis, got a 0-d array"
                )
            x_shape = arr.shape
            mode = "f"
        elif arr.size == 1:
            mode = "s"
        elif arr.shape == x_shape:
            mode = "f"
        elif arr.ndim == 1 and arr.shape[0] == x_shape[-1]:
            mode = "c"
        else:
            raise ValueError(
                f"[{op}] expected '{n}' to have shape {tuple(x_shape)}, ({x_shape[-1]},) or one "
                f"element, got {tuple(arr.shape)}"
            )
        arrays.append(arr)
        weak.append(w)
        modes.append(mode)
    return arrays, weak, modes


def _load_lines(
    names: Sequence[str], modes: Sequence[str], needed: set[str], idx: str
) -> list[str]:
    out = []
    for i, (n, m) in enumerate(zip(names, modes)):
        if n not in needed:
            continue
        at = {"f": f"base + {idx}", "c": idx, "s": "0"}[m]
        out.append(f"const float v_{n} = static_cast<float>(in_{i}[{at}]);")
    return out


def _combine(text: str, op_name: str) -> E.Node:
    return E.parse(text, ("a", "b"), op_name=op_name)


def _render_combine(node: E.Node, lhs: str, rhs: str) -> str:
    stmts, (e,) = E.render([node], {"a": lhs, "b": rhs}, prefix="c")
    inner = " ".join(stmts)
    return f"{{ {inner} {lhs} = {e}; }}"


def _mode_key(modes: Sequence[str], d: int) -> tuple:
    return (tuple(modes), "warp" if d <= WARP_ROW_MAX else "block")


class _RowOp:
    """Shared machinery: operand checks, paths, launch geometry and the VJP via the reference."""

    name: str
    inputs: tuple[str, ...]

    def __init__(self) -> None:
        self._kernels: dict[tuple, Kernel] = {}
        self.last_path: str | None = None
        self._fn: Callable | None = None

    def _function(self) -> Callable:
        """The op's ``mx.custom_function`` (built once).

        The forward reads the call's state from ``self._state`` (set just before the call,
        used synchronously); the VJP takes the output dtype and shapes from the cotangents, so
        a later call never leaks into an earlier call's backward pass.
        """
        fn = self._fn
        if fn is None:
            op = self

            @mx.custom_function
            def fn(*arrays):
                return tuple(op._forward(arrays))

            @fn.vjp
            def fn_vjp(primals, cotangents, outputs):
                single = isinstance(primals, mx.array)
                prims = [primals] if single else list(primals)
                cots = list(cotangents) if isinstance(cotangents, (tuple, list)) else [cotangents]

                def ref(*p):
                    outs = op._reference(list(p), cots[0].dtype)
                    return [o.reshape(c.shape) for o, c in zip(outs, cots)]

                _, grads = mx.vjp(ref, prims, cots)
                grads = [g.astype(p.dtype) for g, p in zip(grads, prims)]
                return grads[0] if single else tuple(grads)

            self._fn = fn
        return fn

    def _geometry(self, rows: int, d: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        return row_geometry(rows, d, row_mode(d))


def row_mode(d: int) -> str:
    """``"warp"`` (one warp a row) for rows of up to :data:`WARP_ROW_MAX`, else ``"block"``."""
    return "warp" if d <= WARP_ROW_MAX else "block"


def row_geometry(rows: int, d: int, mode: str, group: int | None = None):
    """``(grid, threadgroup)`` for ``rows`` rows of ``d`` elements in ``mode``."""
    if mode == "warp":
        per = WARP_GROUP // 32
        return (math.ceil(rows / per) * WARP_GROUP, 1, 1), (WARP_GROUP, 1, 1)
    g = group or row_group_size(d)
    return (rows * g, 1, 1), (g, 1, 1)


def _row_prologue(mode: str) -> list[str]:
    """Lines that set ``row``, ``D``, ``base``, the lane of this row (``r_lid``) and its stride."""
    if mode == "warp":
        return [
            "const uint D = zx_dims[1];",
            "const uint row = gid * (lsize / 32u) + warp;",
            "if (row >= zx_dims[0]) { return; }",
            "const uint r_lid = lane;",
            "const uint r_step = 32u;",
            "const long base = (long)row * D;",
            "ZX_SHARED float zx_buf[32];  // unused by warp rows; declared so bodies can name it",
        ]
    return [
        "const uint D = zx_dims[1];",
        "const uint row = gid;",
        "if (row >= zx_dims[0]) { return; }",
        "const uint r_lid = lid;",
        "const uint r_step = lsize;",
        "const long base = (long)row * D;",
        "ZX_SHARED float zx_buf[32];",
    ]


# ------------------------------------------------------------------------------------------
# reduce


class ReduceOp(_RowOp):
    """A row reduction. Build with :func:`reduce`."""

    def __init__(self, *, name, inputs, map_node, combine, init, finalize_node, builtin, keepdims):
        super().__init__()
        self.name, self.inputs = name, tuple(inputs)
        self.map_node, self.combine_node, self.init = map_node, combine, init
        self.finalize_node, self.builtin, self.keepdims = finalize_node, builtin, keepdims

    def __call__(self, *args, verbose: bool = False):
        arrays, weak, modes = _row_operands(self.name, self.inputs, args)
        x = arrays[0]
        dtype = promote(a.dtype for a, w in zip(arrays, weak) if not w)
        out_shape = x.shape[:-1] + ((1,) if self.keepdims else ())
        d = x.shape[-1]
        rows = math.prod(x.shape[:-1])
        if rows == 0:
            return mx.zeros(out_shape, dtype=dtype)
        if d == 0:
            raise ValueError(
                f"[{self.name}] expected rows of at least one element, got shape {tuple(x.shape)}"
            )
        self._state = (modes, rows, d, dtype, out_shape, verbose)
        return self._function()(*arrays)[0]

    def _forward(self, arrs):
        modes, rows, d, dtype, out_shape, verbose = self._state
        b = backend()
        if b == "cpu" or rows > _MAX_ROWS or rows * d > 2**31 - 1:
            self.last_path = "reference"
            return [o.reshape(out_shape) for o in self._reference(arrs, dtype)]
        self.last_path = b
        return [self._launch(arrs, modes, rows, d, dtype, b, verbose).reshape(out_shape)]

    def reference(self, *args) -> mx.array:
        """The plain-MLX reference for ``args`` (CPU path, fallback, oracle)."""
        arrays, weak, _ = _row_operands(self.name, self.inputs, args)
        dtype = promote(a.dtype for a, w in zip(arrays, weak) if not w)
        (out,) = self._reference(arrays, dtype)
        return out if not self.keepdims else mx.expand_dims(out, -1)

    def _reference(self, arrays, dtype) -> list[mx.array]:
        x = arrays[0]
        env = {n: a.astype(mx.float32) for n, a in zip(self.inputs, arrays)}
        (mapped,) = E.lower([self.map_node], env, mx.float32, shape=x.shape)
        if self.builtin is not None:
            acc = _BUILTIN[self.builtin][2](mapped, axis=-1)
        else:
            acc = _tree_fold(mapped, self.combine_node, self.init)
        n = mx.array(float(x.shape[-1]))
        (out,) = E.lower([self.finalize_node], {"acc": acc, "n": n}, mx.float32, shape=acc.shape)
        return [out.astype(dtype)]

    def _kernel(self, modes, dmode) -> Kernel:
        k = self._kernels.get((tuple(modes), dmode))
        if k is not None:
            return k
        need = E.free_vars([self.map_node])
        init = E._c_float(self.init)
        stmts, (mexpr,) = E.render([self.map_node], {n: f"v_{n}" for n in self.inputs}, prefix="m")
        # Partial results carry a "has data" flag instead of relying on init being an identity
        # of combine: threads and lanes past the end of a row never enter the combine.
        merge = _render_combine(self.combine_node, "acc", "other")
        lines = _row_prologue(dmode)
        lines += [
            f"float acc = {init};",
            "bool has = false;",
            "for (uint j = r_lid; j < D; j += r_step) {",
        ]
        lines += ["  " + s for s in _load_lines(self.inputs, modes, need, "j")]
        lines += ["  " + s for s in stmts]
        lines += ["  const float m_val = " + mexpr + ";"]
        lines += [
            "  if (has) " + _render_combine(self.combine_node, "acc", "m_val"),
            "  else { acc = m_val; has = true; }",
            "}",
        ]
        warp_merge = [
            "for (int m = 16; m > 0; m >>= 1) {",
            "  const float other = zx_shfl_xor(acc, m);",
            "  const bool other_has = zx_shfl_xor(has ? 1.0f : 0.0f, m) > 0.5f;",
            f"  if (other_has) {{ if (has) {merge} else {{ acc = other; has = true; }} }}",
            "}",
        ]
        lines += warp_merge
        if dmode == "block":
            lines += [
                "ZX_SHARED float zx_has[32];",
                "if (lane == 0u) { zx_buf[warp] = acc; zx_has[warp] = has ? 1.0f : 0.0f; }",
                "zx_barrier();",
                "if (warp != 0u) { return; }",
                "has = (lane < (lsize + 31u) / 32u) && zx_has[lane] > 0.5f;",
                f"acc = has ? zx_buf[lane] : {init};",
            ] + warp_merge
        fstmts, (fexpr,) = E.render(
            [self.finalize_node], {"acc": "acc", "n": "((float)D)"}, prefix="f"
        )
        lines += ["if (r_lid == 0u) {"] + ["  " + s for s in fstmts]
        lines += [f"  out_0[row] = static_cast<O>({fexpr});", "}"]
        k = Kernel(
            f"{self.name}_{''.join(modes)}_{dmode}",
            [f"in_{i}" for i in range(len(self.inputs))] + ["zx_dims"],
            ["out_0"],
            "\n".join("  " + ln for ln in lines),
        )
        self._kernels[(tuple(modes), dmode)] = k
        return k

    def _launch(self, arrays, modes, rows, d, dtype, b, verbose) -> mx.array:
        ins = [a.reshape(1) if m == "s" else a for a, m in zip(arrays, modes)]
        grid, group = self._geometry(rows, d)
        (out,) = self._kernel(modes, _mode_key(modes, d)[1])(
            *ins,
            dims(rows, d),
            output_shapes=[(rows,)],
            output_dtypes=[dtype],
            grid=grid,
            threadgroup=group,
            template=[("O", dtype)],
            verbose=verbose,
            backend_name=b,
        )
        return out


def _tree_fold(x: mx.array, combine: E.Node, init: float) -> mx.array:
    """Reduce the last axis with an associative ``combine(a, b)`` by pairwise halving."""
    d = x.shape[-1]
    p = 1
    while p < d:
        p *= 2
    if p != d:
        pad = mx.full(x.shape[:-1] + (p - d,), init, dtype=x.dtype)
        x = mx.concatenate([x, pad], axis=-1)
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        (x,) = E.lower([combine], {"a": x[..., :h], "b": x[..., h:]}, x.dtype)
    return x[..., 0]


def reduce(
    op: str | None = "sum",
    *,
    map: str = "x",
    combine: str | None = None,
    init: float | None = None,
    finalize: str = "acc",
    inputs: Sequence[str] = ("x",),
    keepdims: bool = False,
    name: str | None = None,
) -> ReduceOp:
    """Build a parallel reduction over the last axis.

    ``acc = combine(map(row[0]), map(row[1]), ...)``, then ``finalize(acc, n)`` where ``n`` is
    the row length. Examples: ``reduce("sum")``, ``reduce("sum", map="x * x",
    finalize="sqrt(acc / n)")`` (RMS), ``reduce(None, combine="max(a, b)", init=-inf)``.

    Args:
        op: ``"sum"``, ``"max"``, ``"min"``, ``"prod"``, or ``None`` for a custom ``combine``.
        map: expression applied to each element (may use every input).
        combine: a custom associative and commutative ``combine(a, b)`` (with ``op=None``).
        init: the identity of ``combine`` (required with a custom ``combine``).
        finalize: expression of ``acc`` and ``n`` giving the result.
        inputs: input names; the first is the reduced array, others full / column / scalar.
        keepdims: keep the reduced axis with length 1.
        name: readable name for kernels and errors.

    Returns:
        A :class:`ReduceOp`.

    Shapes:
        x: ``(..., D)`` -> ``(...)`` (or ``(..., 1)`` with ``keepdims``).
    """
    name = name or "reduce"
    inputs = tuple(inputs)
    if op is not None:
        if op not in _BUILTIN:
            raise ValueError(f"[{name}] expected op in {sorted(_BUILTIN)} or None, got {op!r}")
        if combine is not None:
            raise ValueError(f"[{name}] give either op or combine, not both")
        ctext, init_v, _ = _BUILTIN[op]
        combine_node = _combine(ctext.replace("zx_max", "max").replace("zx_min", "min"), name)
        init = init_v if init is None else init
    else:
        if combine is None or init is None:
            raise ValueError(f"[{name}] a custom reduction needs both combine and init")
        combine_node = _combine(combine, name)
    map_node = E.parse(map, inputs, op_name=name)
    finalize_node = E.parse(finalize, ("acc", "n"), op_name=name)
    return ReduceOp(
        name=name,
        inputs=inputs,
        map_node=map_node,
        combine=combine_node,
        init=float(init),
        finalize_node=finalize_node,
        builtin=op,
        keepdims=keepdims,
    )


# ------------------------------------------------------------------------------------------
# map_reduce


class MapReduceOp(_RowOp):
    """Reductions over each row, then an elementwise write of the row. Build with :func:`map_reduce`."""

    def __init__(self, *, name, inputs, passes, outs):
        super().__init__()
        self.name, self.inputs = name, tuple(inputs)
        self.passes = passes  # list of (name, op, node)
        self.outs = outs  # list of nodes

    def __call__(self, *args, verbose: bool = False):
        arrays, weak, modes = _row_operands(self.name, self.inputs, args)
        x = arrays[0]
        dtype = promote(a.dtype for a, w in zip(arrays, weak) if not w)
        rows = math.prod(x.shape[:-1])
        d = x.shape[-1]
        if x.size == 0:
            outs = [mx.zeros(x.shape, dtype=dtype) for _ in self.outs]
            return outs[0] if len(outs) == 1 else tuple(outs)
        self._state = (modes, rows, d, dtype, x.shape, verbose)
        outs = self._function()(*arrays)
        return outs[0] if len(self.outs) == 1 else tuple(outs)

    def _forward(self, arrs):
        modes, rows, d, dtype, shape, verbose = self._state
        b = backend()
        if b == "cpu" or rows * d > 2**31 - 1:
            self.last_path = "reference"
            return self._reference(arrs, dtype)
        self.last_path = b
        return self._launch(arrs, modes, rows, d, dtype, b, verbose, shape)

    def reference(self, *args) -> list[mx.array]:
        """The plain-MLX reference for ``args``."""
        arrays, weak, _ = _row_operands(self.name, self.inputs, args)
        dtype = promote(a.dtype for a, w in zip(arrays, weak) if not w)
        outs = self._reference(arrays, dtype)
        return outs[0] if len(outs) == 1 else outs

    def _reference(self, arrays, dtype) -> list[mx.array]:
        x = arrays[0]
        env = {n: a.astype(mx.float32) for n, a in zip(self.inputs, arrays)}
        env["n"] = mx.array(float(x.shape[-1]))
        for pname, op, node in self.passes:
            (mapped,) = E.lower([node], env, mx.float32, shape=x.shape)
            env[pname] = _BUILTIN[op][2](mapped, axis=-1, keepdims=True)
        outs = E.lower(self.outs, env, mx.float32, shape=x.shape)
        return [o.astype(dtype) for o in outs]

    def _kernel(self, modes, dmode) -> Kernel:
        k = self._kernels.get((tuple(modes), dmode))
        if k is not None:
            return k
        names = {n: f"v_{n}" for n in self.inputs}
        names["n"] = "((float)D)"
        lines = _row_prologue(dmode)
        for pname, op, node in self.passes:
            need = E.free_vars([node])
            stmts, (mexpr,) = E.render([node], names, prefix=f"{pname}_t")
            init = E._c_float(_BUILTIN[op][1])
            ctext = _BUILTIN[op][0]
            lines += [f"float acc_{pname} = {init};", "for (uint j = r_lid; j < D; j += r_step) {"]
            lines += ["  " + s for s in _load_lines(self.inputs, modes, need, "j")]
            lines += ["  " + s for s in stmts]
            lines += [
                f"  const float a = acc_{pname}; const float b = {mexpr};",
                f"  acc_{pname} = {ctext};",
                "}",
            ]
            if dmode == "block":
                lines.append(f"const float r_{pname} = {_BLOCK_HELPER[op]}(acc_{pname}, zx_buf);")
            else:
                lines.append(f"const float r_{pname} = {_WARP_HELPER[op]}(acc_{pname});")
            names[pname] = f"r_{pname}"
        need = E.free_vars(self.outs)
        stmts, exprs = E.render(self.outs, names, prefix="o")
        lines += ["for (uint j = r_lid; j < D; j += r_step) {"]
        lines += ["  " + s for s in _load_lines(self.inputs, modes, need, "j")]
        lines += ["  " + s for s in stmts]
        lines += [f"  out_{i}[base + j] = static_cast<O>({e});" for i, e in enumerate(exprs)]
        lines += ["}"]
        k = Kernel(
            f"{self.name}_{''.join(modes)}_{dmode}",
            [f"in_{i}" for i in range(len(self.inputs))] + ["zx_dims"],
            [f"out_{i}" for i in range(len(self.outs))],
            "\n".join("  " + ln for ln in lines),
        )
        self._kernels[(tuple(modes), dmode)] = k
        return k

    def _launch(self, arrays, modes, rows, d, dtype, b, verbose, shape) -> list[mx.array]:
        ins = [a.reshape(1) if m == "s" else a for a, m in zip(arrays, modes)]
        grid, group = self._geometry(rows, d)
        outs = self._kernel(modes, _mode_key(modes, d)[1])(
            *ins,
            dims(rows, d),
            output_shapes=[tuple(shape)] * len(self.outs),
            output_dtypes=[dtype] * len(self.outs),
            grid=grid,
            threadgroup=group,
            template=[("O", dtype)],
            verbose=verbose,
            backend_name=b,
        )
        return list(outs)


def map_reduce(
    passes: Sequence[tuple[str, str, str]],
    out: str | Sequence[str],
    *,
    inputs: Sequence[str] = ("x",),
    name: str | None = None,
) -> MapReduceOp:
    """Build a row kernel: reductions over the row, then an elementwise write of the row.

    Each pass ``(result, op, expr)`` reduces ``expr`` over the row with ``op`` (``"sum"``,
    ``"max"`` or ``"min"``) and binds ``result`` for later passes and the output. ``n`` is the
    row length. Softmax::

        map_reduce([("m", "max", "x"), ("s", "sum", "exp(x - m)")], "exp(x - m) / s")

    LayerNorm with weight ``w`` (a column input) and ``eps`` (a scalar input)::

        map_reduce([("mu", "sum", "x / n"), ("var", "sum", "(x - mu) ** 2 / n")],
                   "(x - mu) * rsqrt(var + eps) * w", inputs=("x", "w", "eps"))

    Args:
        passes: the reductions, in order.
        out: the output expression(s), over inputs and pass results.
        inputs: input names; the first defines the rows.
        name: readable name for kernels and errors.

    Returns:
        A :class:`MapReduceOp`.

    Shapes:
        x: ``(..., D)``; outputs: ``(..., D)``.
    """
    name = name or "map_reduce"
    inputs = tuple(inputs)
    if not passes:
        raise ValueError(f"[{name}] expected at least one (name, op, expr) pass")
    scope = list(inputs) + ["n"]
    parsed = []
    for p in passes:
        if len(p) != 3:
            raise ValueError(f"[{name}] expected passes as (name, op, expr), got {p!r}")
        pname, op, text = p
        if op not in _BLOCK_HELPER:
            raise ValueError(f"[{name}] expected pass op 'sum', 'max' or 'min', got {op!r}")
        if not pname.isidentifier() or pname in scope:
            raise ValueError(
                f"[{name}] expected a new identifier for the pass result, got {pname!r}"
            )
        parsed.append((pname, op, E.parse(text, scope, op_name=name)))
        scope.append(pname)
    texts = [out] if isinstance(out, str) else list(out)
    outs = [E.parse(t, scope, op_name=name) for t in texts]
    return MapReduceOp(name=name, inputs=inputs, passes=parsed, outs=outs)


# ------------------------------------------------------------------------------------------
# rowwise


class RowwiseOp(_RowOp):
    """A row kernel from a raw body. Build with :func:`rowwise`."""

    def __init__(self, *, name, inputs, outputs, body, header, reference, out_dtype):
        super().__init__()
        self.name, self.inputs, self.outputs = name, tuple(inputs), tuple(outputs)
        self.body, self.header, self._ref, self.out_dtype = body, header, reference, out_dtype

    def __call__(self, *args, verbose: bool = False):
        arrays, weak, modes = _row_operands(self.name, self.inputs, args)
        x = arrays[0]
        dtype = self.out_dtype or promote(a.dtype for a, w in zip(arrays, weak) if not w)
        rows, d = math.prod(x.shape[:-1]), x.shape[-1]
        if x.size == 0:
            outs = [mx.zeros(x.shape, dtype=dtype) for _ in self.outputs]
            return outs[0] if len(outs) == 1 else tuple(outs)

        self._state = (modes, rows, d, dtype, x.shape, verbose)
        outs = self._function()(*arrays)
        return outs[0] if len(self.outputs) == 1 else tuple(outs)

    def _reference(self, arrs, dtype) -> list[mx.array]:
        r = self._ref(*arrs)
        r = list(r) if isinstance(r, (tuple, list)) else [r]
        return [o.astype(dtype) for o in r]

    def _forward(self, arrs):
        modes, rows, d, dtype, shape, verbose = self._state
        b = backend()
        if b == "cpu":
            self.last_path = "reference"
            return self._reference(arrs, dtype)
        self.last_path = b
        dmode = "warp" if d <= WARP_ROW_MAX else "block"
        k = self._kernels.get((tuple(modes), dmode))
        if k is None:
            prologue = "\n".join("  " + ln for ln in _row_prologue(dmode))
            k = Kernel(
                f"{self.name}_{dmode}",
                list(self.inputs) + ["zx_dims"],
                list(self.outputs),
                prologue + "\n" + self.body,
                header=self.header,
            )
            self._kernels[(tuple(modes), dmode)] = k
        ins = [a.reshape(1) if m == "s" else a for a, m in zip(arrs, modes)]
        grid, group = self._geometry(rows, d)
        return k(
            *ins,
            dims(rows, d),
            output_shapes=[tuple(shape)] * len(self.outputs),
            output_dtypes=[dtype] * len(self.outputs),
            grid=grid,
            threadgroup=group,
            template=[("O", dtype)],
            verbose=verbose,
            backend_name=b,
        )


def rowwise(
    body: str,
    *,
    reference: Callable[..., mx.array | Sequence[mx.array]],
    inputs: Sequence[str] = ("x",),
    outputs: Sequence[str] = ("out",),
    header: str = "",
    out_dtype: mx.Dtype | None = None,
    name: str | None = None,
) -> RowwiseOp:
    """Build a row kernel from a body in the portable dialect.

    The body runs once per row with these names defined: ``row`` (row index), ``D`` (row
    length), ``base`` (offset of the row's first element), ``r_lid``/``r_step`` (this
    thread's first column and stride: loop ``for (uint j = r_lid; j < D; j += r_step)``),
    ``zx_buf`` (32 shared floats, rows longer than :data:`WARP_ROW_MAX` only), the template
    type ``O`` (output dtype), and every input/output by name. Full inputs are indexed
    ``x[base + j]``, column inputs ``w[j]``, scalar inputs ``eps[0]``. Rows of up to
    :data:`WARP_ROW_MAX` elements get one warp (reduce with ``zx_warp_sum``), longer rows one
    group (reduce with ``zx_block_sum(v, zx_buf)``).

    Args:
        body: the kernel body.
        reference: plain-MLX function of the inputs giving the outputs (CPU path and VJP).
        inputs: input names; the first defines the rows.
        outputs: output names; each has the first input's shape.
        header: helpers placed before the body.
        out_dtype: output dtype; default is the promoted input dtype.
        name: readable name.

    Returns:
        A :class:`RowwiseOp`.
    """
    if not callable(reference):
        raise ValueError("[rowwise] expected a reference function (the CPU path and the VJP)")
    return RowwiseOp(
        name=name or "rowwise",
        inputs=inputs,
        outputs=outputs,
        body=body,
        header=header,
        reference=reference,
        out_dtype=out_dtype,
    )
