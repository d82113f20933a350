"""``@jit``: a Python function of elementwise MLX math becomes one fused kernel.

    >>> @zmlx.jit
    ... def gated(x, g):
    ...     s = mx.sigmoid(g)
    ...     return x * s * g
    >>> y = gated(a, b)          # one kernel on a GPU; MLX ops on the CPU; differentiable

The function body may contain assignments, augmented assignments, an optional docstring and
one ``return`` of an expression or a tuple of expressions. Expressions use the same syntax and
function table as :func:`zmlx.elementwise` (``mx.exp``, ``mx.maximum``, ``mx.where``, ...).
Numbers bound in the function's globals or closure are folded in as constants. The source is
parsed, never executed.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable

from ..core import expr as E
from .elementwise import ElementwiseOp


def _numeric_bindings(fn: Callable) -> dict[str, float]:
    found: dict[str, float] = {}
    for k, v in fn.__globals__.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            found[k] = float(v)
    if fn.__closure__:
        for k, cell in zip(fn.__code__.co_freevars, fn.__closure__):
            try:
                v = cell.cell_contents
            except ValueError:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                found[k] = float(v)
    return found


def compile_function(fn: Callable) -> ElementwiseOp:
    """Parse ``fn`` into an :class:`ElementwiseOp` (what ``@jit`` does)."""
    op_name = f"jit_{fn.__name__}"
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise ValueError(f"[{op_name}] cannot read the source of {fn!r}") from None
    tree = ast.parse(text)
    fdef = next((n for n in tree.body if isinstance(n, (ast.FunctionDef,))), None)
    if fdef is None:
        raise ValueError(f"[{op_name}] expected a plain function definition")
    a = fdef.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults:
        raise ValueError(f"[{op_name}] expected only positional parameters without defaults")
    inputs = tuple(arg.arg for arg in a.args)
    if not inputs:
        raise ValueError(f"[{op_name}] expected at least one parameter")
    consts = _numeric_bindings(fn)
    env: dict[str, E.Node] = {k: E.const(v) for k, v in consts.items() if k not in inputs}
    env.update({n: E.var(n) for n in inputs})
    outputs: list[E.Node] | None = None

    def expr(node: ast.AST) -> E.Node:
        src_line = ast.get_source_segment(text, node) or ast.unparse(node)
        return E.as_float(E.parse_ast(node, src_line, env, op_name=op_name))

    for stmt in fdef.body:
        if outputs is not None:
            raise ValueError(f"[{op_name}] statements after 'return' (line {stmt.lineno})")
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                raise ValueError(f"[{op_name}] expected 'name = expression' (line {stmt.lineno})")
            env[stmt.targets[0].id] = expr(stmt.value)
        elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
            name = stmt.target.id
            if name not in env:
                raise ValueError(
                    f"[{op_name}] '{name}' used before assignment (line {stmt.lineno})"
                )
            binop = ast.BinOp(left=ast.Name(id=name, ctx=ast.Load()), op=stmt.op, right=stmt.value)
            ast.copy_location(binop, stmt)
            env[name] = expr(binop)
        elif isinstance(stmt, ast.Return):
            if stmt.value is None:
                raise ValueError(f"[{op_name}] 'return' needs a value")
            vals = stmt.value.elts if isinstance(stmt.value, ast.Tuple) else [stmt.value]
            outputs = [expr(v) for v in vals]
        else:
            raise ValueError(
                f"[{op_name}] unsupported statement '{type(stmt).__name__}' (line {stmt.lineno}); "
                "use assignments and one return"
            )
    if outputs is None:
        raise ValueError(f"[{op_name}] expected a 'return' statement")
    return ElementwiseOp(outputs, inputs, name=op_name)


def jit(fn: Callable) -> Callable:
    """Compile an elementwise Python function into one fused, differentiable kernel.

    Args:
        fn: a function of arrays using elementwise MLX math (see the module docstring).

    Returns:
        A function with the same signature; its ``.op`` attribute is the
        :class:`~zmlx.authoring.elementwise.ElementwiseOp`.
    """
    op = compile_function(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs:
            raise TypeError(f"[{op.name}] takes positional arguments only")
        return op(*args)

    wrapper.op = op  # type: ignore[attr-defined]
    return wrapper
