"""A tiny expression IR: parse with ``ast``, render to the kernel dialect, lower to MLX, differentiate.

``parse("x * tanh(log1p(exp(x)))", names=("x",))`` returns a :class:`Node`. Nodes are
hash-consed (structurally equal nodes are the same object), so common subexpressions are found
by identity: rendering binds every node used twice to a temporary, and the symbolic derivative
reuses the forward's nodes. User text is never evaluated; only the constructs below are
accepted, and anything else raises ``ValueError`` naming the offending token.

Accepted syntax: names of inputs, numbers, ``True``/``False``, ``pi``, ``inf``; ``+ - * / **
//``; unary ``-``/``+``/``not``; comparisons (chained too); ``and``/``or``; ``a if c else b``;
calls of the functions in :data:`FUNCTIONS` (optionally as ``mx.f``/``math.f``).
"""

from __future__ import annotations

import ast
import math
import weakref
from collections.abc import Callable, Iterable, Sequence

import mlx.core as mx

# ----------------------------------------------------------------------------------------
# Nodes


class Node:
    """One hash-consed IR node. Build nodes with the constructors below, never directly."""

    __slots__ = ("op", "args", "value", "kind", "__weakref__")

    op: str  # "var", "const", or an operator / function name
    args: tuple[Node, ...]
    value: float | str | None  # constant value, or variable name
    kind: str  # "float" or "bool"

    def __repr__(self) -> str:
        return to_text(self)

    # Operator overloading keeps the derivative rules readable.
    def __add__(self, o):
        return add(self, _lift(o))

    def __radd__(self, o):
        return add(_lift(o), self)

    def __sub__(self, o):
        return sub(self, _lift(o))

    def __rsub__(self, o):
        return sub(_lift(o), self)

    def __mul__(self, o):
        return mul(self, _lift(o))

    def __rmul__(self, o):
        return mul(_lift(o), self)

    def __truediv__(self, o):
        return div(self, _lift(o))

    def __rtruediv__(self, o):
        return div(_lift(o), self)

    def __neg__(self):
        return neg(self)


_TABLE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


# A parent holds its children, so the child ids in a live entry's key stay valid.
def _make(op: str, args: tuple[Node, ...] = (), value=None, kind: str = "float") -> Node:
    key = (op, tuple(id(a) for a in args), value, kind)
    node = _TABLE.get(key)
    if node is None:
        node = object.__new__(Node)
        node.op, node.args, node.value, node.kind = op, args, value, kind
        _TABLE[key] = node
    return node


def var(name: str) -> Node:
    return _make("var", value=name)


def const(v: float) -> Node:
    v = float(v)
    if v == 0.0:
        v = 0.0  # fold -0.0 into 0.0 so constants hash-cons
    return _make("const", value=v)


def _lift(x) -> Node:
    return x if isinstance(x, Node) else const(x)


def _is_const(n: Node, v: float | None = None) -> bool:
    return n.op == "const" and (v is None or n.value == v)


def as_float(n: Node) -> Node:
    return _make("tofloat", (n,)) if n.kind == "bool" else n


def as_bool(n: Node) -> Node:
    return n if n.kind == "bool" else compare("ne", n, const(0.0))


# ----------------------------------------------------------------------------------------
# Constructors with local simplification (constant folding and identities)


def add(a: Node, b: Node) -> Node:
    a, b = as_float(a), as_float(b)
    if _is_const(a) and _is_const(b):
        return const(a.value + b.value)
    if _is_const(a, 0.0):
        return b
    if _is_const(b, 0.0):
        return a
    if b.op == "neg":
        return sub(a, b.args[0])
    return _make("add", (a, b))


def sub(a: Node, b: Node) -> Node:
    a, b = as_float(a), as_float(b)
    if _is_const(a) and _is_const(b):
        return const(a.value - b.value)
    if _is_const(b, 0.0):
        return a
    if _is_const(a, 0.0):
        return neg(b)
    if b.op == "neg":
        return add(a, b.args[0])
    return _make("sub", (a, b))


def neg(a: Node) -> Node:
    a = as_float(a)
    if _is_const(a):
        return const(-a.value)
    if a.op == "neg":
        return a.args[0]
    return _make("neg", (a,))


def mul(a: Node, b: Node) -> Node:
    a, b = as_float(a), as_float(b)
    if _is_const(a) and _is_const(b):
        return const(a.value * b.value)
    # Symbolic zeros: the usual autodiff convention (0 * x == 0 even where x is inf/nan).
    if _is_const(a, 0.0) or _is_const(b, 0.0):
        return const(0.0)
    if _is_const(a, 1.0):
        return b
    if _is_const(b, 1.0):
        return a
    if _is_const(a, -1.0):
        return neg(b)
    if _is_const(b, -1.0):
        return neg(a)
    if a.op == "neg" and b.op == "neg":
        return mul(a.args[0], b.args[0])
    if a.op == "neg":
        return neg(mul(a.args[0], b))
    if b.op == "neg":
        return neg(mul(a, b.args[0]))
    return _make("mul", (a, b))


def div(a: Node, b: Node) -> Node:
    a, b = as_float(a), as_float(b)
    if _is_const(a) and _is_const(b) and b.value != 0.0:
        return const(a.value / b.value)
    if _is_const(a, 0.0):
        return const(0.0)
    if _is_const(b, 1.0):
        return a
    if _is_const(b, -1.0):
        return neg(a)
    return _make("div", (a, b))


def power(a: Node, b: Node) -> Node:
    a, b = as_float(a), as_float(b)
    if _is_const(b):
        e = b.value
        if e == 0.0:
            return const(1.0)
        if e == 1.0:
            return a
        if e == 2.0:
            return mul(a, a)
        if e == 3.0:
            return mul(mul(a, a), a)
        if e == -1.0:
            return div(const(1.0), a)
        if e == 0.5:
            return call("sqrt", a)
        if e == -0.5:
            return call("rsqrt", a)
    if _is_const(a) and _is_const(b):
        try:
            return const(math.pow(a.value, b.value))
        except (ValueError, OverflowError):
            pass
    return _make("pow", (a, b))


def maximum(a: Node, b: Node) -> Node:
    a, b = as_float(a), as_float(b)
    if a is b:
        return a
    return _make("max", (a, b))


def minimum(a: Node, b: Node) -> Node:
    a, b = as_float(a), as_float(b)
    if a is b:
        return a
    return _make("min", (a, b))


def compare(op: str, a: Node, b: Node) -> Node:
    return _make(op, (as_float(a), as_float(b)), kind="bool")


def logical(op: str, *args: Node) -> Node:
    return _make(op, tuple(as_bool(a) for a in args), kind="bool")


def where(c: Node, a: Node, b: Node) -> Node:
    c, a, b = as_bool(c), as_float(a), as_float(b)
    if a is b:
        return a
    return _make("where", (c, a, b))


# Unary math functions: name -> derivative rule d(f(a))/da as a function of (a, f(a)).
_UNARY: dict[str, Callable[[Node, Node], Node | None]] = {
    "exp": lambda a, y: y,
    "log": lambda a, y: 1.0 / a,
    "log2": lambda a, y: 1.0 / (a * math.log(2.0)),
    "log1p": lambda a, y: 1.0 / (1.0 + a),
    "expm1": lambda a, y: call("exp", a),
    "sqrt": lambda a, y: 0.5 / y,
    "rsqrt": lambda a, y: -0.5 * y / a,
    "abs": lambda a, y: call("sign", a),
    "sign": lambda a, y: None,
    "floor": lambda a, y: None,
    "ceil": lambda a, y: None,
    "sin": lambda a, y: call("cos", a),
    "cos": lambda a, y: -call("sin", a),
    "tan": lambda a, y: 1.0 + y * y,
    "tanh": lambda a, y: 1.0 - y * y,
    "sigmoid": lambda a, y: y * (1.0 - y),
    "erf": lambda a, y: (2.0 / math.sqrt(math.pi)) * call("exp", -(a * a)),
    "atan": lambda a, y: 1.0 / (1.0 + a * a),
    "sinh": lambda a, y: call("cosh", a),
    "cosh": lambda a, y: call("sinh", a),
}

_UNARY_FOLD: dict[str, Callable[[float], float]] = {
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log1p": math.log1p,
    "expm1": math.expm1,
    "sqrt": math.sqrt,
    "abs": abs,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "tanh": math.tanh,
    "erf": math.erf,
    "atan": math.atan,
    "floor": math.floor,
    "ceil": math.ceil,
}


def call(fn: str, a: Node) -> Node:
    a = as_float(a)
    if _is_const(a) and fn in _UNARY_FOLD:
        try:
            return const(_UNARY_FOLD[fn](a.value))
        except (ValueError, OverflowError):
            pass
    return _make(fn, (a,))


# ----------------------------------------------------------------------------------------
# The function table seen by users: primitives and sugar that expands into them.


def _softplus(x: Node) -> Node:
    # max(x, 0) + log1p(exp(-|x|)): exact for large |x|, never overflows.
    return maximum(x, const(0.0)) + call("log1p", call("exp", -call("abs", x)))


def _gelu_tanh(x: Node) -> Node:
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1.0 + call("tanh", inner))


FUNCTIONS: dict[str, tuple[int, Callable[..., Node]]] = {
    **{name: (1, (lambda n: lambda a: call(n, a))(name)) for name in _UNARY},
    "arctan": (1, lambda a: call("atan", a)),
    "pow": (2, power),
    "power": (2, power),
    "maximum": (2, maximum),
    "max": (2, maximum),
    "minimum": (2, minimum),
    "min": (2, minimum),
    "where": (3, where),
    "clip": (3, lambda x, lo, hi: minimum(maximum(x, lo), hi)),
    "square": (1, lambda a: a * a),
    "reciprocal": (1, lambda a: 1.0 / a),
    "negative": (1, neg),
    "relu": (1, lambda a: maximum(a, const(0.0))),
    "silu": (1, lambda a: a * call("sigmoid", a)),
    "gelu": (1, lambda a: 0.5 * a * (1.0 + call("erf", a * (1.0 / math.sqrt(2.0))))),
    "gelu_tanh": (1, _gelu_tanh),
    "softplus": (1, _softplus),
    "log_sigmoid": (1, lambda a: -_softplus(-a)),
    "logical_and": (2, lambda a, b: logical("and", a, b)),
    "logical_or": (2, lambda a, b: logical("or", a, b)),
    "logical_not": (1, lambda a: logical("not", a)),
}
CONSTANTS = {"pi": math.pi, "inf": math.inf, "e": math.e}
_MODULES = {"mx", "math", "mlx", "np", "numpy"}

# ----------------------------------------------------------------------------------------
# Parsing


def _error(op_name: str, text: str, node: ast.AST | None, msg: str) -> ValueError:
    where = ""
    col = getattr(node, "col_offset", None)
    if col is not None and "\n" not in text:
        where = f"\n    {text}\n    {' ' * col}^"
    return ValueError(f"[{op_name}] {msg} in {text!r}{where}")


class _Parser:
    def __init__(self, text: str, env: dict[str, Node], op_name: str):
        self.text, self.env, self.op_name = text, env, op_name

    def err(self, node, msg):
        return _error(self.op_name, self.text, node, msg)

    def visit(self, n: ast.AST) -> Node:
        if isinstance(n, ast.Expression):
            return self.visit(n.body)
        if isinstance(n, ast.Constant):
            if isinstance(n.value, bool):
                return const(1.0 if n.value else 0.0)
            if isinstance(n.value, (int, float)):
                return const(n.value)
            raise self.err(n, f"unsupported constant {n.value!r}")
        if isinstance(n, ast.Name):
            if n.id in self.env:
                return self.env[n.id]
            if n.id in CONSTANTS:
                return const(CONSTANTS[n.id])
            names = ", ".join(sorted(self.env)) or "none"
            raise self.err(n, f"unknown name '{n.id}' (inputs: {names})")
        if isinstance(n, ast.Attribute):
            if isinstance(n.value, ast.Name) and n.value.id in _MODULES and n.attr in CONSTANTS:
                return const(CONSTANTS[n.attr])
            raise self.err(n, f"unsupported attribute '{ast.unparse(n)}'")
        if isinstance(n, ast.BinOp):
            a, b = self.visit(n.left), self.visit(n.right)
            ops = {
                ast.Add: add,
                ast.Sub: sub,
                ast.Mult: mul,
                ast.Div: div,
                ast.Pow: power,
                ast.FloorDiv: lambda x, y: call("floor", div(x, y)),
            }
            fn = ops.get(type(n.op))
            if fn is None:
                raise self.err(n, f"unsupported operator '{type(n.op).__name__}'")
            return fn(a, b)
        if isinstance(n, ast.UnaryOp):
            a = self.visit(n.operand)
            if isinstance(n.op, ast.USub):
                return neg(a)
            if isinstance(n.op, ast.UAdd):
                return as_float(a)
            if isinstance(n.op, ast.Not):
                return logical("not", a)
            raise self.err(n, f"unsupported unary operator '{type(n.op).__name__}'")
        if isinstance(n, ast.Compare):
            names = {
                ast.Lt: "lt",
                ast.LtE: "le",
                ast.Gt: "gt",
                ast.GtE: "ge",
                ast.Eq: "eq",
                ast.NotEq: "ne",
            }
            left = self.visit(n.left)
            result = None
            for op, right_ast in zip(n.ops, n.comparators):
                if type(op) not in names:
                    raise self.err(n, f"unsupported comparison '{type(op).__name__}'")
                right = self.visit(right_ast)
                c = compare(names[type(op)], left, right)
                result = c if result is None else logical("and", result, c)
                left = right
            return result
        if isinstance(n, ast.BoolOp):
            vals = [self.visit(v) for v in n.values]
            op = "and" if isinstance(n.op, ast.And) else "or"
            out = vals[0]
            for v in vals[1:]:
                out = logical(op, out, v)
            return out
        if isinstance(n, ast.IfExp):
            return where(self.visit(n.test), self.visit(n.body), self.visit(n.orelse))
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name):
                fname = f.id
            elif (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Name)
                and (f.value.id in _MODULES)
            ):
                fname = f.attr
            else:
                raise self.err(n, f"unsupported call of '{ast.unparse(f)}'")
            if fname not in FUNCTIONS:
                raise self.err(f, f"unknown function '{fname}'")
            if n.keywords:
                raise self.err(n, f"'{fname}' takes no keyword arguments")
            arity, build = FUNCTIONS[fname]
            if len(n.args) != arity:
                raise self.err(n, f"'{fname}' expected {arity} argument(s), got {len(n.args)}")
            return build(*[self.visit(a) for a in n.args])
        raise self.err(n, f"unsupported syntax '{type(n).__name__}'")


def parse(
    text: str,
    names: Sequence[str],
    *,
    op_name: str = "elementwise",
    env: dict[str, Node] | None = None,
) -> Node:
    """Parse ``text`` into a float-valued :class:`Node` over the variables ``names``.

    Args:
        text: the expression, e.g. ``"x * sigmoid(x)"``.
        names: the variable names it may use.
        op_name: used in error messages.
        env: extra bindings (name -> node) visible to the expression.

    Raises:
        ValueError: on syntax errors, unknown names/functions or wrong arity, naming the token.
    """
    if not isinstance(text, str):
        raise ValueError(f"[{op_name}] expected an expression string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"[{op_name}] expected an expression, got an empty string")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        col = (e.offset or 1) - 1
        raise ValueError(
            f"[{op_name}] invalid syntax in {text!r}\n    {text.strip()}\n    {' ' * col}^"
        ) from None
    scope = {n: var(n) for n in names}
    if env:
        scope.update(env)
    return as_float(_Parser(text.strip(), scope, op_name).visit(tree))


def parse_ast(node: ast.AST, text: str, env: dict[str, Node], *, op_name: str) -> Node:
    """Parse one already-parsed ``ast`` expression (used by ``@jit``)."""
    return _Parser(text, env, op_name).visit(node)


# ----------------------------------------------------------------------------------------
# Walking


def topo(roots: Iterable[Node]) -> list[Node]:
    """All nodes reachable from ``roots``, children before parents."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(list(roots))]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        for a in reversed(n.args):
            if id(a) not in seen:
                stack.append((a, False))
    return order


def free_vars(roots: Iterable[Node]) -> set[str]:
    return {n.value for n in topo(roots) if n.op == "var"}


_INFIX = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "eq": "==",
    "ne": "!=",
}


def to_text(n: Node) -> str:
    """A Python-syntax rendering of ``n`` (for messages and round-trip tests)."""
    if n.op == "var":
        return str(n.value)
    if n.op == "const":
        return repr(n.value)
    a = [to_text(x) for x in n.args]
    if n.op in _INFIX:
        return f"({a[0]} {_INFIX[n.op]} {a[1]})"
    if n.op == "neg":
        return f"(-{a[0]})"
    if n.op == "pow":
        return f"({a[0]} ** {a[1]})"
    if n.op in ("and", "or"):
        return f"({a[0]} {n.op} {a[1]})"
    if n.op == "not":
        return f"(not {a[0]})"
    if n.op == "tofloat":
        return f"where({a[0]}, 1.0, 0.0)"
    return f"{n.op}({', '.join(a)})"


# ----------------------------------------------------------------------------------------
# Rendering to the kernel dialect


def _c_float(v: float) -> str:
    if math.isinf(v):
        return "ZX_INF" if v > 0 else "ZX_NEG_INF"
    if math.isnan(v):
        return "(ZX_INF - ZX_INF)"
    s = repr(float(v))
    if "e" not in s and "." not in s:
        s += ".0"
    return f"({s}f)" if v < 0 else f"{s}f"


_C_BINARY = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "eq": "==",
    "ne": "!=",
    "and": "&&",
    "or": "||",
}


def render(
    roots: Sequence[Node], names: dict[str, str], *, prefix: str = "t"
) -> tuple[list[str], list[str]]:
    """Render ``roots`` as dialect C++.

    Args:
        roots: the output nodes.
        names: C++ spelling of each variable (e.g. ``{"x": "v_x"}``).
        prefix: prefix of temporaries.

    Returns:
        ``(statements, expressions)``: statements binding shared subexpressions to
        temporaries, and one C++ expression per root.
    """
    order = topo(roots)
    uses: dict[int, int] = {}
    for n in order:
        for a in n.args:
            uses[id(a)] = uses.get(id(a), 0) + 1
    for r in roots:
        uses[id(r)] = uses.get(id(r), 0) + 1
    spelled: dict[int, str] = {}
    stmts: list[str] = []

    def expr_of(n: Node) -> str:
        if n.op == "var":
            try:
                return names[n.value]
            except KeyError:
                raise ValueError(f"[render] no spelling for variable '{n.value}'") from None
        if n.op == "const":
            return _c_float(n.value)
        a = [spelled[id(x)] for x in n.args]
        if n.op in _C_BINARY:
            return f"({a[0]} {_C_BINARY[n.op]} {a[1]})"
        if n.op == "neg":
            return f"(-{a[0]})"
        if n.op == "not":
            return f"(!{a[0]})"
        if n.op == "tofloat":
            return f"({a[0]} ? 1.0f : 0.0f)"
        if n.op == "where":
            return f"({a[0]} ? {a[1]} : {a[2]})"
        if n.op in ("pow", "max", "min"):
            return f"zx_{n.op}({a[0]}, {a[1]})"
        return f"zx_{n.op}({a[0]})"

    k = 0
    for n in order:
        e = expr_of(n)
        if n.op not in ("var", "const") and uses.get(id(n), 0) > 1:
            name = f"{prefix}{k}"
            k += 1
            ctype = "bool" if n.kind == "bool" else "float"
            stmts.append(f"const {ctype} {name} = {e};")
            spelled[id(n)] = name
        else:
            spelled[id(n)] = e
    return stmts, [spelled[id(r)] for r in roots]


# ----------------------------------------------------------------------------------------
# Lowering to MLX ops (the reference / CPU path)

_MX_UNARY = {
    "exp": mx.exp,
    "log": mx.log,
    "log2": mx.log2,
    "log1p": mx.log1p,
    "expm1": mx.expm1,
    "sqrt": mx.sqrt,
    "rsqrt": mx.rsqrt,
    "abs": mx.abs,
    "sign": mx.sign,
    "floor": mx.floor,
    "ceil": mx.ceil,
    "sin": mx.sin,
    "cos": mx.cos,
    "tan": mx.tan,
    "tanh": mx.tanh,
    "sigmoid": mx.sigmoid,
    "erf": mx.erf,
    "atan": mx.arctan,
    "sinh": mx.sinh,
    "cosh": mx.cosh,
}
_MX_BINARY = {
    "add": mx.add,
    "sub": mx.subtract,
    "mul": mx.multiply,
    "div": mx.divide,
    "pow": mx.power,
    "max": mx.maximum,
    "min": mx.minimum,
    "lt": mx.less,
    "le": mx.less_equal,
    "gt": mx.greater,
    "ge": mx.greater_equal,
    "eq": mx.equal,
    "ne": mx.not_equal,
    "and": mx.logical_and,
    "or": mx.logical_or,
}


def lower(
    roots: Sequence[Node],
    env: dict[str, mx.array],
    dtype: mx.Dtype,
    shape: Sequence[int] | None = None,
) -> list[mx.array]:
    """Evaluate ``roots`` with MLX ops, computing in ``dtype``.

    Args:
        roots: output nodes.
        env: an array per variable (already cast to ``dtype``; broadcastable).
        dtype: the compute dtype (float32, or float64 for references on the CPU).
        shape: broadcast every output to this shape (constants have none of their own).

    Returns:
        One array per root.
    """
    val: dict[int, object] = {}
    for n in topo(roots):
        if n.op == "var":
            val[id(n)] = env[n.value]
        elif n.op == "const":
            val[id(n)] = mx.array(n.value, dtype=dtype)
        else:
            a = [val[id(x)] for x in n.args]
            if n.op in _MX_UNARY:
                v = _MX_UNARY[n.op](a[0])
            elif n.op in _MX_BINARY:
                v = _MX_BINARY[n.op](a[0], a[1])
            elif n.op == "neg":
                v = mx.negative(a[0])
            elif n.op == "not":
                v = mx.logical_not(a[0])
            elif n.op == "tofloat":
                v = a[0].astype(dtype)
            elif n.op == "where":
                v = mx.where(a[0], a[1], a[2])
            else:  # pragma: no cover - every op above has a lowering
                raise ValueError(f"[lower] no MLX lowering for '{n.op}'")
            val[id(n)] = v
    outs = [val[id(r)] for r in roots]
    if shape is not None:
        outs = [mx.broadcast_to(o, tuple(shape)) for o in outs]
    return outs


# ----------------------------------------------------------------------------------------
# Symbolic differentiation


def grad(root: Node, wrt: str) -> Node:
    """The derivative of ``root`` with respect to variable ``wrt``, as a node.

    Conventions follow MLX's own VJPs: ``d max(a, b)/da = a > b``, ``d min(a, b)/da = a < b``,
    ``d abs(a)/da = sign(a)``; comparisons, ``sign``, ``floor`` and ``ceil`` have zero
    derivative.
    """
    memo: dict[int, Node] = {}
    zero = const(0.0)
    for n in topo([root]):
        if n.kind == "bool" or n.op == "tofloat":
            d = zero
        elif n.op == "var":
            d = const(1.0) if n.value == wrt else zero
        elif n.op == "const":
            d = zero
        else:
            da = [memo[id(a)] for a in n.args]
            a = n.args
            if n.op == "add":
                d = add(da[0], da[1])
            elif n.op == "sub":
                d = sub(da[0], da[1])
            elif n.op == "neg":
                d = neg(da[0])
            elif n.op == "mul":
                d = add(mul(da[0], a[1]), mul(a[0], da[1]))
            elif n.op == "div":
                d = div(sub(da[0], mul(n, da[1])), a[1])
            elif n.op == "pow":
                d = mul(mul(a[1], power(a[0], sub(a[1], const(1.0)))), da[0])
                if not _is_const(da[1], 0.0):
                    d = add(d, mul(mul(n, call("log", a[0])), da[1]))
            elif n.op == "max":
                d = where(compare("gt", a[0], a[1]), da[0], da[1])
            elif n.op == "min":
                d = where(compare("lt", a[0], a[1]), da[0], da[1])
            elif n.op == "where":
                d = where(a[0], da[1], da[2])
            elif n.op in _UNARY:
                if _is_const(da[0], 0.0):
                    d = zero
                else:
                    rule = _UNARY[n.op](a[0], n)
                    d = zero if rule is None else mul(_lift(rule), da[0])
            else:  # pragma: no cover
                raise ValueError(f"[grad] no derivative rule for '{n.op}'")
        memo[id(n)] = d
    return memo[id(root)]
