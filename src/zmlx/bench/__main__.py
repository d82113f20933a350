"""python -m zmlx.bench: render capsules, list them, time the kernel catalog, print the schema.

python -m zmlx.bench report CAPSULE... [--json]
python -m zmlx.bench list [DIR] [--json]
python -m zmlx.bench catalog [--family F] [--op NAME ...] [--case ID ...] [--dtype float16]
                             [--repeats 10] [--json OUT]
python -m zmlx.bench schema
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import capsule
from .report import render, tables
from .schema import describe
from .table import Table, format_text


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zmlx.bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("report", help="render capsules as tables")
    r.add_argument("capsules", nargs="+", metavar="CAPSULE", help="capsule JSON files")
    r.add_argument("--json", action="store_true", help="print the tables as JSON")

    ls = sub.add_parser("list", help="list the capsules under a folder")
    ls.add_argument("dir", nargs="?", default=str(capsule.CAPSULE_DIR), metavar="DIR")
    ls.add_argument("--json", action="store_true", help="print the listing as JSON")

    c = sub.add_parser("catalog", help="time every catalog op against stock MLX")
    c.add_argument("--family", default=None, help="only this kernel family")
    c.add_argument("--op", nargs="+", default=[], metavar="NAME", help="only these ops")
    c.add_argument("--case", nargs="+", default=[], metavar="ID", help="only these bench cases")
    c.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--repeats", type=int, default=10)
    c.add_argument("--batch", type=int, default=10, help="calls evaluated together per run")
    c.add_argument(
        "--json",
        default=None,
        metavar="OUT",
        help="write the capsule here ('-': stdout; default: benchmarks/capsules/)",
    )

    rt = sub.add_parser(
        "routes", help="stock routes from catalog capsules: where an op should call stock MLX"
    )
    rt.add_argument("capsules", nargs="+", metavar="CAPSULE",
                    help="catalog_bench capsules (an op in several: the last one's rows)")  # fmt: skip
    rt.add_argument("--margin", type=float, default=None,
                    help="route cases where zmlx runs below this fraction of stock's speed")  # fmt: skip
    rt.add_argument("--write", nargs="?", const="", default=None, metavar="TABLE",
                    help="write them into the table (default: the one ops read)")  # fmt: skip

    sub.add_parser("schema", help="print the capsule schema")
    return p


def _routes(args) -> int:
    from ..kernels import routes

    found = []
    for path in args.capsules:
        cap = capsule.load(path)
        if cap["kind"] != "catalog_bench":
            raise ValueError(
                f"[bench routes] {path} is a {cap['kind']!r} capsule, not catalog_bench"
            )
        margin = routes.MARGIN if args.margin is None else args.margin
        # An op measured again in a later capsule takes its routes from there only.
        again = {(r["op"], r["dtype"], cap["results"]["backend"]) for r in cap["results"]["rows"]}
        found = [r for r in found if (r["op"], r["dtype"], r["backend"]) not in again]
        found += routes.derive(cap, evidence=str(path), margin=margin)
    rows = [[r["op"], r["backend"], r["dtype"], str(r["min_elements"]),
             str(r["max_elements"] or "-"), f"{r['speedup']:.2f}x", r["case"]] for r in found]  # fmt: skip
    print(format_text(Table(f"{len(found)} stock route(s)",
                            ["op", "backend", "dtype", "from elements", "below", "zmlx vs stock",
                             "case"], rows)))  # fmt: skip
    if args.write is not None:
        print(f"table: {routes.write(found, args.write or None)}")
    return 0


def _report(args) -> int:
    out, texts = [], []
    for path in args.capsules:
        cap = capsule.load(path)
        if args.json:
            out.append({"path": path, "kind": cap["kind"], "env": cap["env"],
                        "tables": [t.to_dict() for t in tables(cap)]})  # fmt: skip
        else:
            texts.append(render(cap, path))
    print(json.dumps(out, indent=2) if args.json else "\n\n".join(texts))
    return 0


def _list(args) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise ValueError(f"[bench list] no folder {root}")
    entries = []
    for p in sorted(root.rglob("*.json")):
        try:
            raw = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(raw, dict) or raw.get("schema") != capsule.SCHEMA:
            continue  # some other JSON file (configs, tokenizers): not a capsule
        try:
            cap = capsule.validate(raw)
            env = cap["env"]
            entries.append(
                {
                    "path": str(p),
                    "kind": cap["kind"],
                    "created": cap["created"],
                    "backend": env["backend"],
                    "device": env["device"],
                    "commit": (env.get("git_commit") or "")[:12],
                    "error": None,
                }
            )
        except ValueError as e:
            entries.append({"path": str(p), "error": str(e)})
    bad = [e for e in entries if e["error"]]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 1 if bad else 0
    cols = ["kind", "created", "backend", "device", "commit"]
    rows = [[e["path"]] + [str(e.get(k, "")) for k in cols] for e in entries if not e["error"]]
    print(format_text(Table(f"{len(rows)} capsule(s) under {root}", ["path", *cols], rows)))
    for e in bad:
        print(f"invalid: {e['error']}")
    return 1 if bad else 0


def _print_row(row: dict) -> None:
    # Without a terminal there is no progress bar: one line per case shows the sweep moving.
    from .catalog_bench import line

    print(line(row), file=sys.stderr, flush=True)


def _partial_writer(target):
    """Rewrite the capsule at ``target`` after every case (a long sweep may be cut short)."""
    if target in (None, "-"):
        return None
    return lambda res: capsule.write(capsule.make("catalog_bench", res), target)


def _catalog(args) -> int:
    from ..kernels import catalog
    from . import catalog_bench

    specs = catalog_bench.select(catalog.specs(), args.family, args.op)
    if not specs:
        raise ValueError(f"[bench catalog] no ops in family {args.family!r}")
    res = catalog_bench.run(
        specs,
        dtype=args.dtype,
        cases=args.case,
        warmup=args.warmup,
        repeats=args.repeats,
        batch=args.batch,
        on_row=None if sys.stderr.isatty() else _print_row,
        on_partial=_partial_writer(args.json),
    )
    if not res["rows"] and not res["errors"]:
        raise ValueError(f"[bench catalog] no bench cases match {args.case}")
    cap = capsule.make("catalog_bench", res)
    if args.json != "-":
        print(render(cap))
    name = args.op[0] if len(args.op) == 1 else (args.family or "all")
    path = capsule.save(cap, args.json, name)
    if path is not None:
        print(f"capsule: {path}")
    return 1 if res["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        if args.command == "schema":
            print(describe())
            return 0
        commands = {"report": _report, "list": _list, "catalog": _catalog, "routes": _routes}
        return commands[args.command](args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
