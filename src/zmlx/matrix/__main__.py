"""python -m zmlx.matrix: the model catalog, validate runs over it, and their report.

python -m zmlx.matrix catalog [--filter TEXT ...] [--json]
python -m zmlx.matrix run [--filter TEXT ...] [--source auto|local|zoo] [--ledger PATH]
                          [--models-dir DIR] [--patterns P ...] [--max-tokens N] [--runs N]
                          [--size tiny|full] [--dry-run]
python -m zmlx.matrix report [--ledger PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys

from ..bench.table import Table, format_text
from . import ledger
from .models import entries


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zmlx.matrix", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("catalog", help="list the catalog of models")
    c.add_argument("--filter", nargs="+", default=[], metavar="TEXT",
                   help="keep models whose name, id, family, model_type or zoo name contains "
                        "any TEXT")  # fmt: skip
    c.add_argument("--json", action="store_true", help="print the catalog as JSON")

    r = sub.add_parser("run", help="validate the available models, append to the ledger")
    r.add_argument("--filter", nargs="+", default=[], metavar="TEXT")
    r.add_argument("--source", default="auto", choices=["auto", "local", "zoo"],
                   help="local checkpoints, zoo configs, or local first then zoo")  # fmt: skip
    r.add_argument("--ledger", default=str(ledger.DEFAULT_LEDGER), metavar="PATH")
    r.add_argument("--capsule-dir", default="benchmarks/capsules/matrix", metavar="DIR")
    r.add_argument("--models-dir", default=None, metavar="DIR",
                   help="also look for checkpoints in DIR/<org>/<name> or DIR/<name>")  # fmt: skip
    r.add_argument("--patterns", nargs="*", default=None, metavar="P")
    r.add_argument("--max-tokens", type=int, default=None)
    r.add_argument("--runs", type=int, default=None)
    r.add_argument("--prefill-tokens", type=int, default=None)
    r.add_argument("--size", default=None, choices=["tiny", "full"], help="zoo model size")
    r.add_argument("--timeout", type=float, default=None, help="seconds per model")
    r.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")

    rep = sub.add_parser("report", help="heatmap PNG and markdown table of the ledger")
    rep.add_argument("--ledger", default=str(ledger.DEFAULT_LEDGER), metavar="PATH")
    rep.add_argument("--out", default="benchmarks/matrix", metavar="DIR")
    return p


def _catalog(args) -> int:
    es = entries(args.filter)
    if args.json:
        print(json.dumps([e.to_dict() for e in es], indent=2))
        return 0
    rows = [
        [e.name, e.family, e.model_type, f"{e.total_params_b:g}", f"{e.active_params_b:g}",
         e.quant, "yes" if e.moe else "no", e.zoo or "-", ",".join(e.patterns), e.hf_id]
        for e in es
    ]  # fmt: skip
    headers = ["model", "family", "model_type", "total B", "active B", "quant", "MoE", "zoo",
               "patterns", "checkpoint"]  # fmt: skip
    print(format_text(Table(f"{len(es)} models", headers, rows)))
    return 0


def _run(args) -> int:
    from tqdm.auto import tqdm

    from .run import dumps, plan, run_one, summary

    plans = plan(entries(args.filter), args.source, args.models_dir)
    todo = [p for p in plans if p.source]
    if args.dry_run:
        print(dumps(plans))
        return 0
    if not todo:
        raise ValueError(f"[matrix run] nothing to run: no model matches {args.filter} here")
    extra = []
    for flag, value in (("--max-tokens", args.max_tokens), ("--runs", args.runs),
                        ("--prefill-tokens", args.prefill_tokens), ("--size", args.size)):  # fmt: skip
        if value is not None:
            extra += [flag, str(value)]
    bad = 0
    for p in tqdm(todo, desc="matrix", unit="model"):
        row = run_one(p, ledger_path=args.ledger, capsule_dir=args.capsule_dir, extra=extra,
                      patterns=args.patterns, timeout=args.timeout)  # fmt: skip
        tqdm.write(summary(row))
        bad += row["status"] != "ok" or row.get("fidelity") != "PASS"
    print(f"{len(todo)} run(s), {bad} failed or unfaithful; ledger: {args.ledger}")
    return 1 if bad else 0


def _report(args) -> int:
    from .report import write

    rows = ledger.read(args.ledger)
    png, md = write(rows, args.out)
    print(md.read_text())
    print(f"heatmap: {png}\ntable: {md}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        return {"catalog": _catalog, "run": _run, "report": _report}[args.command](args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
