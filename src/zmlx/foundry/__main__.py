"""python -m zmlx.foundry: evaluate kernel templates over knob grids; export a chat dataset.

python -m zmlx.foundry run [--ops OP ...] [--grid KNOB=V1,V2 ...] [--out DIR]
python -m zmlx.foundry export --format chat [--runs DIR ...] [--out DIR]
python -m zmlx.foundry check FILE.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

from ..bench.table import Table, format_text

DEFAULT_OPS = ("silu", "gelu", "relu", "rms_norm", "layer_norm")


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zmlx.foundry", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="evaluate ops over a grid of knobs")
    r.add_argument("--ops", nargs="+", default=list(DEFAULT_OPS), metavar="OP",
                   help="ops that take knobs (python -m zmlx.discover list)")  # fmt: skip
    r.add_argument("--grid", nargs="+", default=None, metavar="KNOB=V1,V2",
                   help="knob values (default: each op's whole knob space)")  # fmt: skip
    r.add_argument("--cases", nargs="+", default=[], metavar="ID",
                   help="benchmark cases to time at (default: every bench case of each op)")  # fmt: skip
    r.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    r.add_argument("--check-dtypes", nargs="+", default=None, metavar="DTYPE")
    r.add_argument("--out", default="foundry_run", metavar="DIR")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--compile-timeout", type=float, default=120.0, metavar="S")
    r.add_argument("--run-timeout", type=float, default=300.0, metavar="S")
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--repeats", type=int, default=10)
    r.add_argument("--batch", type=int, default=10)
    r.add_argument("--json", action="store_true", help="print the manifest as JSON")

    e = sub.add_parser("export", help="write the results as a fine-tuning dataset")
    e.add_argument("--format", default="chat", choices=["chat"])
    e.add_argument("--runs", nargs="+", default=["foundry_run"], metavar="DIR")
    e.add_argument("--out", default="foundry_data", metavar="DIR")
    e.add_argument("--valid-fraction", type=float, default=0.1)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")

    c = sub.add_parser("check", help="validate a chat JSONL file")
    c.add_argument("file", metavar="FILE")
    return p


def _run(args) -> int:
    from ..discover.evaluator import Evaluator, default_runner
    from . import sweep as R

    grid = R.parse_grid(args.grid) if args.grid else None
    runner = default_runner()
    rows = []

    def on_record(rec):
        t = rec["timing"]
        speed = f"{t['speedup']:.2f}x" if isinstance(t.get("speedup"), (int, float)) else "-"
        passed = sum(c["ok"] for c in rec["checks"])
        rows.append([rec["op"], rec["case"], json.dumps(rec["knobs"]), rec["status"],
                     f"{passed}/{len(rec['checks'])}", speed])  # fmt: skip
        print(f"{rec['op']} {rec['case']} {rec['knobs']}: {rec['status']} {speed}",
              file=sys.stderr, flush=True)  # fmt: skip

    with Evaluator(args.compile_timeout, args.run_timeout) as ev:
        manifest = R.run(args.ops, args.out, grid=grid, cases=args.cases, dtype=args.dtype,
                         check_dtypes=args.check_dtypes, runner=runner, evaluator=ev,
                         seed=args.seed, on_record=on_record, warmup=args.warmup,
                         repeats=args.repeats, batch=args.batch)  # fmt: skip
    if args.json:
        print(json.dumps(manifest, indent=2, default=str))
    else:
        title = f"foundry run on {manifest['device']} [{runner}]" + (
            "" if manifest["timed"] else " (timing skipped: no GPU)"
        )
        headers = ["op", "case", "knobs", "status", "checks", "vs catalog"]
        print(format_text(Table(title, headers, rows)))
        print(f"results: {args.out}/{R.RESULTS}")
    return 0 if manifest["records"] else 1


def _export(args) -> int:
    from . import dataset, sweep

    exs = dataset.examples(sweep.read(args.runs))
    res = dataset.write(exs, args.out, valid_fraction=args.valid_fraction, seed=args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['train']} train / {res['valid']} valid examples in {args.out}")
    return 0


def _check(args) -> int:
    from . import dataset

    n = dataset.validate(args.file)
    print(f"{args.file}: {n} valid chat examples")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        return {"run": _run, "export": _export, "check": _check}[args.command](args)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
