"""Static checks a candidate passes before anything is compiled.

Two kinds: :func:`check_source` reads a kernel body (after comments and string literals are
removed) and :func:`check_launch` reads one recorded launch (:class:`zmlx.core.kernel.Launch`:
the geometry and template values the op would use). Each returns a list of reasons; an empty
list means the candidate may be compiled. The rules:

* no unbounded loops: ``while (true)``, ``while (1)``, ``for (;;)`` or any ``for`` without a
  condition (a bounded loop may still be slow; the run time limit covers that);
* shared memory (``ZX_SHARED`` arrays plus the kernel's dynamic bytes) of at most
  :data:`SHARED_LIMIT` bytes per group, with array sizes that are compile-time constants;
* threads per group a multiple of 32 (warp shuffles and block reductions assume whole warps)
  and at most 1024;
* no banned tokens (inline assembly, printing, allocation, jumps, the backend-specific
  spellings the portable dialect replaces, preprocessor directives other than
  ``#pragma unroll``) that the op's own body does not already have;
* no pointer cast that makes a non-const pointer out of anything but one of the op's outputs,
  and no writes into inputs.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping, Sequence

import mlx.core as mx

from ..core.dialect import SHARED_DECL

SHARED_LIMIT = 48 * 1024  # bytes per group without opting in to more (CUDA's default limit)
MAX_GROUP = 1024
MAX_BODY_CHARS = 24_000

BANNED = {
    "asm": "inline assembly",
    "__asm__": "inline assembly",
    "__asm": "inline assembly",
    "printf": "printing from a kernel",
    "fprintf": "printing from a kernel",
    "puts": "printing from a kernel",
    "malloc": "allocation in a kernel",
    "free": "allocation in a kernel",
    "new": "allocation in a kernel",
    "delete": "allocation in a kernel",
    "goto": "jumps",
    "setjmp": "jumps",
    "longjmp": "jumps",
    "exit": "ending the process",
    "abort": "ending the process",
    "__trap": "ending the process",
    "system": "running programs",
    "extern": "external (dynamic) declarations",
    "const_cast": "casting away const",
    "__shared__": "a CUDA spelling: use ZX_SHARED",
    "threadgroup": "a Metal spelling: use ZX_SHARED",
    "__syncthreads": "a CUDA spelling: use zx_barrier()",
    "threadgroup_barrier": "a Metal spelling: use zx_barrier()",
}
_TYPE_BYTES = {
    "float": 4, "int": 4, "uint": 4, "unsigned": 4, "int32_t": 4, "uint32_t": 4,
    "half": 2, "short": 2, "ushort": 2, "int16_t": 2, "uint16_t": 2,
    "char": 1, "bool": 1, "int8_t": 1, "uint8_t": 1,
    "double": 8, "long": 8, "int64_t": 8, "uint64_t": 8, "float2": 8, "float4": 16,
}  # fmt: skip
_UNKNOWN_TYPE_BYTES = 16  # a struct the check cannot size: assume a generous one

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_UNBOUNDED = (
    (re.compile(r"\bwhile\s*\(\s*(?:true|1|!\s*0|1u)\s*\)"), "unbounded loop: while (true)"),
    (re.compile(r"\bfor\s*\([^;()]*;\s*;"), "unbounded loop: for without a condition"),
    (re.compile(r"\bfor\s*\([^;()]*;\s*(?:true|1)\s*;"), "unbounded loop: for (...; true; ...)"),
)
_SHARED = SHARED_DECL
_C_CAST = re.compile(r"\(\s*((?:[A-Za-z_][\w:<>]*\s*)+)\*+\s*\)\s*&?\s*\(?\s*([A-Za-z_]\w*)")
_CXX_CAST = re.compile(
    r"\b(?:reinterpret_cast|static_cast)\s*<\s*([^<>]*(?:<[^<>]*>)?[^<>]*?)\*+\s*>\s*\(\s*&?\s*([A-Za-z_]\w*)"
)
_DIRECTIVE = re.compile(r"^\s*#\s*(\w+)(.*)$", re.M)


def strip_code(src: str) -> str:
    """``src`` without comments and string or character literals (each becomes a space)."""
    return _STRING.sub(" ", _COMMENT.sub(" ", src))


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv, ast.Mod: operator.mod,
        ast.LShift: operator.lshift, ast.RShift: operator.rshift}  # fmt: skip
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}  # fmt: skip


def _ternary_to_python(text: str) -> str:
    """``c ? a : b`` (the top-level one, recursively) as Python's ``(a) if (c) else (b)``."""
    depth, q = 0, -1
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "?" and depth == 0:
            q = i
            break
    if q < 0:
        return text
    depth, nested = 0, 0
    for i in range(q + 1, len(text)):
        ch = text[i]
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch == "?":
            nested += 1
        elif depth == 0 and ch == ":":
            if nested == 0:
                cond, a, b = text[:q], text[q + 1 : i], text[i + 1 :]
                return f"({_ternary_to_python(a)}) if ({cond}) else ({_ternary_to_python(b)})"
            nested -= 1
    return text


def _const_int(text: str, consts: Mapping[str, int]) -> int | None:
    """Evaluate a C array extent made of integers, template constants, arithmetic,
    comparisons, ``&&``/``||`` and ``?:``."""
    text = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", text.strip())
    text = text.replace("&&", " and ").replace("||", " or ")
    text = re.sub(r"!(?!=)", " not ", _ternary_to_python(text))
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def ev(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name) and isinstance(consts.get(n.id), int):
            return int(consts[n.id])
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            a, b = ev(n.left), ev(n.right)
            if a is None or b is None or (b == 0 and type(n.op) in (ast.FloorDiv, ast.Div)):
                return None
            return _OPS[type(n.op)](a, b)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.Not)):
            v = ev(n.operand)
            return None if v is None else (-v if isinstance(n.op, ast.USub) else int(not v))
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _CMP:
            a, b = ev(n.left), ev(n.comparators[0])
            return None if a is None or b is None else int(_CMP[type(n.ops[0])](a, b))
        if isinstance(n, ast.BoolOp):
            vals = [ev(v) for v in n.values]
            if any(v is None for v in vals):
                return None
            return int(all(vals) if isinstance(n.op, ast.And) else any(vals))
        if isinstance(n, ast.IfExp):
            c = ev(n.test)
            return None if c is None else ev(n.body if c else n.orelse)
        return None

    return ev(tree)


def _dtype_bytes(v) -> int | None:
    return v.size if isinstance(v, mx.Dtype) else None


def shared_bytes(src: str, template: Mapping[str, object] = {}) -> tuple[int, list[str]]:
    """Bytes of the ``ZX_SHARED`` arrays declared in ``src``, and reasons the count failed."""
    code = strip_code(src)
    consts = {k: int(v) for k, v in template.items() if isinstance(v, int)}
    total, problems = 0, []
    for typ, name, dims in _SHARED.findall(code):
        size = _TYPE_BYTES.get(typ)
        if size is None and typ in template:
            size = _dtype_bytes(template[typ])
        size = size or _UNKNOWN_TYPE_BYTES
        count = 1
        for extent in re.findall(r"\[([^\]]*)\]", dims):
            n = _const_int(extent, consts)
            if n is None or n < 0:
                problems.append(f"shared array {name}[{extent}]: size is not a constant")
                n = 0
            count *= n
        total += size * count
    return total, problems


def check_source(
    body: str,
    *,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    original: str = "",
) -> list[str]:
    """Reasons to reject a kernel ``body`` before compiling it (empty when it may compile).

    ``original`` is the op's own body: the banned tokens and preprocessor lines it already has
    are accepted (the catalog's own code is trusted; a rewrite may not add new ones).
    """
    reasons: list[str] = []
    if len(body) > MAX_BODY_CHARS:
        reasons.append(f"body of {len(body)} characters (at most {MAX_BODY_CHARS})")
    code = strip_code(body)
    for pattern, why in _UNBOUNDED:
        if pattern.search(code):
            reasons.append(why)
    trusted = strip_code(original)
    tokens = set(re.findall(r"[A-Za-z_]\w*", code)) - set(re.findall(r"[A-Za-z_]\w*", trusted))
    for tok in sorted(tokens & set(BANNED)):
        reasons.append(f"banned token {tok!r} ({BANNED[tok]})")
    known = {m.group(0).strip() for m in _DIRECTIVE.finditer(trusted)}
    for m in _DIRECTIVE.finditer(code):
        directive, rest = m.group(1), m.group(2)
        if directive == "pragma" and rest.split()[:1] == ["unroll"]:
            continue
        if m.group(0).strip() not in known:
            reasons.append(f"preprocessor directive #{directive} (only #pragma unroll)")
    outs = set(outputs)
    for typ, operand in _C_CAST.findall(code) + _CXX_CAST.findall(code):
        if "const" not in typ.split() and operand not in outs:
            reasons.append(f"cast of {operand!r} to a non-const pointer ({typ.strip()}*)")
    for name in inputs:
        if re.search(rf"\b{re.escape(name)}\s*\[[^\]]*\]\s*(?:[-+*/|&^]?=(?!=))", code):
            reasons.append(f"writes into input {name!r}")
    return sorted(set(reasons), key=reasons.index)


def check_launch(launch) -> list[str]:
    """Reasons to reject one recorded launch (:class:`zmlx.core.kernel.Launch`)."""
    reasons = []
    tx, ty, tz = launch.threadgroup
    threads = tx * ty * tz
    if min(tx, ty, tz) < 1:
        reasons.append(f"threadgroup {launch.threadgroup} has an empty dimension")
    elif threads % 32:
        reasons.append(f"{threads} threads per group is not a multiple of 32")
    if threads > MAX_GROUP:
        reasons.append(f"{threads} threads per group (at most {MAX_GROUP})")
    if min(launch.grid) < 1:
        reasons.append(f"grid {launch.grid} has an empty dimension")
    template = dict(launch.template)
    k = launch.kernel
    static, problems = shared_bytes(k.header + "\n" + k.body, template)
    total = static + int(getattr(k, "shared_memory", 0))
    if total > SHARED_LIMIT:
        reasons.append(f"{total} bytes of shared memory per group (at most {SHARED_LIMIT})")
    return reasons + problems
