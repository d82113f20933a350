"""``python -m zmlx.kernels list [--family F] [--json]``: the kernel catalog."""

from __future__ import annotations

import argparse
import json
import sys

from .catalog import specs


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zmlx.kernels", description="The zmlx kernel catalog"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list the registered ops")
    ls.add_argument("--family", help="only this family")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    items = specs(args.family)
    if args.json:
        json.dump({"count": len(items), "ops": [s.to_dict() for s in items]}, sys.stdout, indent=2)
        print()
        return 0
    fam_w = max([len(s.family) for s in items] + [6])
    name_w = max([len(s.name) for s in items] + [2])
    print(f"{'family':<{fam_w}}  {'op':<{name_w}}  grad  description")
    for s in items:
        print(
            f"{s.family:<{fam_w}}  {s.name:<{name_w}}  {'yes ' if s.differentiable else '-   '}  {s.description}"
        )
    print(f"\n{len(items)} ops in {len({s.family for s in items})} families")
    return 0


if __name__ == "__main__":
    sys.exit(main())
