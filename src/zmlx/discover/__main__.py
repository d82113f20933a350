"""python -m zmlx.discover: search launch knobs (and kernel rewrites) of a catalog op.

python -m zmlx.discover list
python -m zmlx.discover search OP [--case ID] [--dtype float16] [--steps 16]
                               [--proposer mutate|llm] [--llm-url URL] [--session FILE]
python -m zmlx.discover report SESSION [--top N] [--json]
python -m zmlx.discover export SESSION [--node ID] [--registry FILE] [--allow-untimed]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..bench.table import format_text


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zmlx.discover", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="ops that take launch knobs")
    ls.add_argument("--json", action="store_true")

    s = sub.add_parser("search", help="run (or resume) a search")
    s.add_argument("op", help="catalog op name (see `list`)")
    s.add_argument("--case", default=None, help="bench or test case id (default: first bench case)")
    s.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    s.add_argument("--steps", type=int, default=16, help="new candidates to evaluate")
    s.add_argument("--proposer", default="mutate", choices=["mutate", "llm"])
    s.add_argument("--llm-url", default=None, help="OpenAI-compatible server (http://host:port)")
    s.add_argument("--llm-model", default="default", help="model name sent to the server")
    s.add_argument("--llm-model-path", default=None, help="a local mlx-lm model instead of a URL")
    s.add_argument("--llm-timeout", type=float, default=120.0)
    s.add_argument("--session", default=None, metavar="FILE",
                   help="session file (resumed when it exists; default discover_<op>_<case>_<dtype>.json)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--c-puct", type=float, default=1.4)
    s.add_argument("--check-dtypes", nargs="+", default=None, metavar="DTYPE",
                   help="dtypes of the correctness checks (default: every dtype of the op)")  # fmt: skip
    s.add_argument("--check-cases", nargs="+", default=None, metavar="ID",
                   help="test case ids checked besides the target (default: a few small ones)")  # fmt: skip
    s.add_argument("--compile-timeout", type=float, default=120.0, metavar="S")
    s.add_argument("--run-timeout", type=float, default=300.0, metavar="S")
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--batch", type=int, default=10, help="calls evaluated together per timed run")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")

    r = sub.add_parser("report", help="the candidates of a session, best first")
    r.add_argument("session", metavar="SESSION")
    r.add_argument("--top", type=int, default=None)
    r.add_argument("--json", action="store_true")

    e = sub.add_parser("export", help="register the best candidate's knobs as an override")
    e.add_argument("session", metavar="SESSION")
    e.add_argument("--node", type=int, default=None, help="candidate id (default: the best)")
    e.add_argument("--registry", default=None, metavar="FILE",
                   help="override registry (default: zmlx/kernels/overrides/overrides.json)")  # fmt: skip
    e.add_argument("--capsule", default=None, metavar="FILE", help="evidence capsule path")
    e.add_argument("--allow-untimed", action="store_true",
                   help="export a candidate checked on the emulator but never timed")  # fmt: skip
    e.add_argument("--min-speedup", type=float, default=1.0)
    e.add_argument("--json", action="store_true")
    return p


def _list(args) -> int:
    from .target import searchable

    ops = searchable()
    print(json.dumps(ops) if args.json else "\n".join(ops))
    return 0


def _proposer(args, seed: int):
    from .proposers import LLMProposer, MutationProposer

    mutate = MutationProposer(seed)
    if args.proposer == "mutate":
        return mutate, {"kind": "mutate"}
    prop = LLMProposer(args.llm_url, model=args.llm_model, local_model=args.llm_model_path,
                       timeout=args.llm_timeout, fallback=mutate)  # fmt: skip
    return prop, {"kind": "llm", "url": args.llm_url, "model": args.llm_model,
                  "local_model": args.llm_model_path}  # fmt: skip


def _search(args) -> int:
    from .evaluator import Evaluator, default_runner
    from .report import summary, table
    from .search import new_session, run
    from .session import Session
    from .target import Target

    target = Target(args.op, args.case, args.dtype)
    path = Path(args.session or f"discover_{target.op}_{target.case}_{target.dtype}.json")
    runner = default_runner()
    proposer, pinfo = _proposer(args, args.seed)
    if path.exists():
        session = Session.load(path)
        if (session.op, session.case, session.dtype) != (target.op, target.case, target.dtype):
            raise ValueError(
                f"[discover] {path} is a session of {session.op} at {session.case} "
                f"({session.dtype}); give another --session"
            )
        if session.runner != runner:
            raise ValueError(f"[discover] {path} ran on {session.runner}, this machine is {runner}")
        print(f"resuming {path}: {len(session.nodes)} candidates", file=sys.stderr)
    else:
        cases = None
        if args.check_cases:
            from .target import _find_case

            cases = [target.case_dict] + [_find_case(target.spec, c) for c in args.check_cases]
        session = new_session(target, runner, proposer=pinfo, seed=args.seed,
                              c_puct=args.c_puct, cases=cases, dtypes=args.check_dtypes)  # fmt: skip
    bar = _bar(args.steps)
    with Evaluator(args.compile_timeout, args.run_timeout) as ev:
        run(session, target, proposer, ev, args.steps, save=lambda s: s.save(path),
            on_step=lambda n: bar(n), warmup=args.warmup, repeats=args.repeats,
            batch=args.batch)  # fmt: skip
    bar(None)
    session.save(path)
    if args.json:
        print(json.dumps({"session": str(path), **summary(session)}, indent=2, default=str))
    else:
        print(format_text(table(session, top=12)))
        print(f"session: {path}")
    return 0


def _bar(total: int):
    """A tqdm bar over the candidates (a no-op without tqdm)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the lm and dev extras
        return lambda node: None
    bar = tqdm(total=total + 1, desc="candidates", unit="cand", file=sys.stderr)

    def step(node) -> None:
        if node is None:
            bar.close()
            return
        s = f"{node.speedup:.2f}x" if node.speedup is not None else "-"
        bar.set_postfix_str(f"#{node.id} {node.status} {s}")
        bar.update(1)

    return step


def _report(args) -> int:
    from .report import summary, table
    from .session import Session

    session = Session.load(args.session)
    if args.json:
        print(json.dumps(summary(session), indent=2, default=str))
    else:
        print(format_text(table(session, top=args.top)))
    return 0


def _export(args) -> int:
    from .report import export

    entry = export(args.session, node_id=args.node, registry=args.registry,
                   capsule_path=args.capsule, allow_untimed=args.allow_untimed,
                   min_speedup=args.min_speedup)  # fmt: skip
    if args.json:
        print(json.dumps(entry, indent=2, default=str))
    elif entry is None:
        print("the catalog kernel is the best candidate: nothing to export")
    else:
        print(f"override {entry['op']} [{entry['backend']}, {entry['shape_class']}] -> "
              f"{entry['knobs']} in {entry['registry']}\nevidence: {entry['evidence']}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        return {"list": _list, "search": _search, "report": _report, "export": _export}[
            args.command
        ](args)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
