"""Nsight Compute metrics of one zmlx launch (benchmarks/ncu_target.py) under several
settings, gathered into one capsule.

    python benchmarks/ncu_sweep.py --json out.json \\
        --case "glm=--model glm_4_7_flash --op combine" \\
        --case "glm_s1=--model glm_4_7_flash --op combine --set zmlx.kernels.moe_kernels.COMBINE_WARPS=4"

Each case runs ``ncu`` on ``ncu_target.py`` with the case's arguments and records the
metrics below of the first zmlx kernel after the builds (``--launch-skip``). Clocks are left
free (``--clock-control none``) unless ``--ncu-args`` says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import subprocess
import sys
from pathlib import Path

from zmlx.bench import capsule

METRICS = [
    "gpu__time_duration.sum",
    "sm__cycles_elapsed.max",
    "sm__cycles_active.avg",
    "sm__warps_active.avg.per_cycle_active",
    "dram__bytes_read.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "lts__t_sector_hit_rate.pct",
    "launch__grid_size",
    "launch__block_size",
    "launch__registers_per_thread",
    "smsp__inst_executed.sum",
]


def parse_csv(text: str) -> list[dict]:
    """ncu ``--csv`` rows as ``{"kernel", "metrics": {name: value}}``, one per profiled launch."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    launches: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        rec = launches.setdefault(row["ID"], {"kernel": row["Kernel Name"], "metrics": {}})
        value = row["Metric Value"].replace(",", "")
        try:
            num: float | str = float(value)
        except ValueError:
            num = value
        unit = row.get("Metric Unit", "")
        rec["metrics"][row["Metric Name"]] = num
        if unit:
            rec["metrics"][row["Metric Name"] + ".unit"] = unit
    return list(launches.values())


def run_case(label: str, target_args: str, ncu_args: list[str], skip: int) -> dict:
    target = Path(__file__).resolve().parent / "ncu_target.py"
    cmd = ["ncu", "--csv", "--kernel-name", "regex:zx_", "--launch-skip", str(skip),
           "--launch-count", "1", "--metrics", ",".join(METRICS), *ncu_args,
           sys.executable, str(target), *shlex.split(target_args)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    launches = parse_csv(proc.stdout)
    row = {"label": label, "args": target_args, "rc": proc.returncode}
    if not launches:
        row["error"] = (proc.stdout + proc.stderr)[-2000:]
        return row
    row.update(launches[0])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", required=True, metavar="LABEL=ARGS",
                   help="a label and ncu_target.py's arguments")  # fmt: skip
    p.add_argument(
        "--ncu-args",
        default="--clock-control none",
        help="extra ncu arguments (default: %(default)s)",
    )
    p.add_argument("--launch-skip", type=int, default=2)
    p.add_argument("--json", default=None, help="capsule path")
    args = p.parse_args(argv)
    rows = []
    for case in args.case:
        label, sep, rest = case.partition("=")
        if not sep:
            p.error(f"[ncu_sweep] expected LABEL=ARGS, got {case!r}")
        row = run_case(label, rest, shlex.split(args.ncu_args), args.launch_skip)
        rows.append(row)
        m = row.get("metrics", {})
        print(f"{label:28s} {m.get('gpu__time_duration.sum', '-'):>10} "
              f"{m.get('gpu__time_duration.sum.unit', '')} "
              f"active/elapsed {m.get('sm__cycles_active.avg', '-')}/"
              f"{m.get('sm__cycles_elapsed.max', '-')} "
              f"dram {m.get('dram__throughput.avg.pct_of_peak_sustained_elapsed', '-')}% "
              f"warps {m.get('sm__warps_active.avg.per_cycle_active', '-')} "
              f"regs {m.get('launch__registers_per_thread', '-')} "
              f"grid {m.get('launch__grid_size', '-')}"
              + ("" if "error" not in row else f"\n  error: {row['error'][-400:]}"),
              flush=True)  # fmt: skip
    if args.json:
        capsule.write(capsule.make("ncu_sweep", {"rows": rows, "ncu_args": args.ncu_args}),
                      args.json)  # fmt: skip
        print(f"capsule: {args.json}")
    return 0 if all("metrics" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
