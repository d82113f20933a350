"""PUCT tree search over candidates of one op.

Each step walks down from the root (the catalog kernel) choosing, among a node's passing
children, the one with the highest ``Q + c_puct * P * sqrt(N_parent) / (1 + N_child)``
(``Q``: mean value below it, ``P``: the proposer's prior, ``N``: visits), and stops at the
first node that may take another child: progressive widening allows
``ceil(WIDEN_K * N ** WIDEN_ALPHA)`` children, so well-visited (good) nodes branch more. The
proposer makes a child there; it is statically checked (rejected: value 0, never compiled),
then compiled, checked and timed by the :class:`~.evaluator.Evaluator`, and its value (the
speed-up over the catalog kernel scaled into [0, 1], 0 for a failure; see
:meth:`~.session.Node.value`) is added along the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..core.backend import device_name
from .evaluator import Evaluator
from .session import Node, Session
from .target import Target

WIDEN_K = 1.0
WIDEN_ALPHA = 0.5


def new_session(
    target: Target,
    runner: str,
    *,
    proposer: dict[str, Any] | None = None,
    seed: int = 0,
    c_puct: float = 1.4,
    cases: Sequence[dict] | None = None,
    dtypes: Sequence[str] | None = None,
) -> Session:
    """A session for ``target`` with only the root (the catalog kernel, not yet evaluated)."""
    emulated = runner == "emulator"
    cases = list(cases) if cases is not None else target.check_cases(emulated)
    dtypes = list(dtypes) if dtypes else [str(d).split(".")[-1] for d in target.spec.dtypes]
    s = Session(
        op=target.op,
        case=target.case,
        dtype=target.dtype,
        runner=runner,
        backend="cuda" if emulated else runner,
        device=("cpu emulator of " if emulated else "") + device_name(),
        shape_class=target.shape_class,
        defaults=dict(target.defaults),
        proposer=dict(proposer or {"kind": "mutate"}),
        seed=seed,
        c_puct=c_puct,
        checks={"cases": cases, "dtypes": dtypes},
    )
    s.add(None, target.defaults, source="root", note="the catalog kernel")
    return s


def evaluate_candidate(
    target: Target,
    knobs: dict[str, Any],
    body: str | None,
    evaluator: Evaluator,
    *,
    runner: str,
    cases: Sequence[dict],
    dtypes: Sequence[str],
    seed: int,
    **timing: Any,
) -> dict[str, Any]:
    """Static checks, then (if they pass) compile, check and time one candidate.

    Returns:
        ``status`` (``rejected`` with ``reasons`` when a static check failed, else the
        evaluator's ``ok``/``incorrect``/``error``/``timeout``), ``checks``, ``timing``,
        ``error`` and ``seconds``.
    """
    reasons = target.static_check(knobs, body, cases)
    if reasons:
        return {"status": "rejected", "reasons": reasons, "checks": [], "timing": {}}
    req = {"op": target.op, "case": target.case, "dtype": target.dtype, "knobs": knobs,
           "body": body, "checks": list(cases), "dtypes": list(dtypes), "seed": seed,
           "runner": runner, **timing}  # fmt: skip
    return evaluator.evaluate(req)


def evaluate_node(
    session: Session, target: Target, node: Node, evaluator: Evaluator, **timing: Any
) -> None:
    """Evaluate ``node`` (fresh inputs: the seed includes its id) and fill it in."""
    res = evaluate_candidate(
        target, node.knobs, node.body, evaluator, runner=session.runner,
        cases=session.checks["cases"], dtypes=session.checks["dtypes"],
        seed=session.seed * 100_003 + node.id, **timing,
    )  # fmt: skip
    node.status = res.get("status", "error")
    node.reasons = list(res.get("reasons", []))
    node.checks = res.get("checks", [])
    node.timing = res.get("timing", {})
    node.error = res.get("error", "")
    node.seconds = float(res.get("seconds", 0.0))


def _dead(session: Session, node: Node) -> bool:
    """No further child can come from ``node`` or below it."""
    if node.status != "ok":
        return True
    kids = [session.nodes[i] for i in node.children]
    return node.exhausted and all(_dead(session, k) for k in kids)


def select(session: Session) -> list[Node] | None:
    """The path from the root to the node that gets the next child (None: nothing left)."""
    node = session.root
    if _dead(session, node):
        return None
    path = [node]
    while True:
        allowed = math.ceil(WIDEN_K * max(1, node.visits) ** WIDEN_ALPHA)
        live = [session.nodes[i] for i in node.children]
        live = [k for k in live if not _dead(session, k)]
        if not node.exhausted and (len(node.children) < allowed or not live):
            return path
        sqrt_n = math.sqrt(max(1, node.visits))
        node = max(
            live,
            key=lambda k: k.q + session.c_puct * k.prior * sqrt_n / (1 + k.visits),
        )
        path.append(node)


def backup(path: Sequence[Node], value: float) -> None:
    for n in path:
        n.visits += 1
        n.value_sum += value


def run(
    session: Session,
    target: Target,
    proposer,
    evaluator: Evaluator,
    steps: int,
    *,
    save: Callable[[Session], Any] | None = None,
    on_step: Callable[[Node], Any] | None = None,
    **timing: Any,
) -> Session:
    """Run ``steps`` more candidates (the root first, when it was never evaluated).

    Args:
        session: from :func:`new_session` or :meth:`Session.load`.
        target: the op at its shape.
        proposer: a :class:`~.proposers.MutationProposer` or :class:`~.proposers.LLMProposer`.
        evaluator: runs the candidates.
        steps: how many new candidates to evaluate (rejected ones count).
        save: called with the session after every step (persist it).
        on_step: called with each evaluated node.
        timing: ``warmup``, ``repeats``, ``batch`` for the GPU timing.

    Returns:
        The session; it stops early (with an ``exhausted`` event) when no new candidate is left.
    """
    root = session.root
    if root.status == "pending":
        evaluate_node(session, target, root, evaluator, **timing)
        backup([root], root.value())
        if root.status != "ok":
            session.event("root_failed", status=root.status, error=root.error[:500])
        if save:
            save(session)
        if on_step:
            on_step(root)
    done, attempts = 0, 0
    while done < steps and attempts < steps * 10 + 10:
        attempts += 1
        path = select(session)
        if path is None:
            session.event("exhausted", after=done)
            break
        leaf = path[-1]
        prop = proposer.propose(session, target, leaf)
        if prop is None:
            leaf.exhausted = True
            continue
        child = session.add(leaf, prop.knobs, prop.body, source=prop.source, note=prop.note,
                            prior=prop.prior)  # fmt: skip
        evaluate_node(session, target, child, evaluator, **timing)
        backup(path + [child], child.value())
        done += 1
        if save:
            save(session)
        if on_step:
            on_step(child)
    return session
