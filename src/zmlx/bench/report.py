"""Capsules rendered as tables: one function per capsule kind, all returning :class:`Table` s.

``python -m zmlx.bench report CAPSULE...`` prints them; ``--json`` gives the same tables as data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .table import Table, format_text, num, spread


def header(cap: dict[str, Any], path: str = "") -> str:
    """One line naming the capsule: file, kind, date, device, backend, versions, commit."""
    env = cap.get("env", {})
    commit = (env.get("git_commit") or "?")[:12]
    bits = [
        f"{path}  " if path else "",
        f"[{cap.get('kind')}] {cap.get('created', '?')}",
        f"  device: {env.get('device', '?')} ({env.get('backend', '?')})",
        f"  mlx {env.get('mlx', '?')}  zmlx {env.get('zmlx', '?')}  commit {commit}",
    ]
    return "".join(bits) + f"\n  command: {cap.get('command', '')}"


def _gbps(t: dict[str, Any], nbytes: Any) -> Any:
    if "gbps" in t:
        return t["gbps"]
    if nbytes and t.get("median_us"):
        return nbytes / (t["median_us"] * 1e-6) / 1e9
    return None


KERNEL_HEADERS = ["op", "case", "variant", "median us", "spread us", "GB/s", "speed-up"]


def _timing_rows(op: str, case: str, timings: dict, nbytes: Any) -> list[list[str]]:
    rows = []
    for variant, t in timings.items():
        rows.append(
            [
                op,
                case,
                variant,
                num(t["median_us"], 1),
                spread(t.get("min_us"), t.get("max_us")),
                num(_gbps(t, nbytes), 1),
                num(t.get("speedup"), 2, "x"),
            ]
        )
    return rows


def kernel_bench(res: dict[str, Any]) -> list[Table]:
    op = res.get("op") or res.get("expr") or "-"
    case = res.get("case")
    if case is None:
        parts = [f"n={res['n']}" if "n" in res else "", res.get("dtype", "")]
        case = " ".join(p for p in parts if p) or "-"
    rows = _timing_rows(op, case, res["timings"], res.get("bytes_moved"))
    return [Table("kernel timings", KERNEL_HEADERS, rows)]


def catalog_bench(res: dict[str, Any]) -> list[Table]:
    rows = []
    for r in res["rows"]:
        rows += _timing_rows(r["op"], f"{r['case']} {r['dtype']}", r["timings"], r["bytes"])
    title = f"catalog ops vs stock MLX ({res['backend']}, {res['path']} path)"
    tables = [Table(title, KERNEL_HEADERS, rows)]
    if res.get("errors"):
        errs = [[e.get("op", "?"), e.get("case", "?"), e.get("error", "?")] for e in res["errors"]]
        tables.append(Table("errors", ["op", "case", "error"], errs))
    return tables


def _rate_cells(rate: dict[str, Any]) -> list[str]:
    return [num(rate["median"], 1), spread(rate.get("min"), rate.get("max"))]


def _phase_rows(label: str, throughput: dict[str, Any]) -> list[list[str]]:
    rows = []
    for phase in ("prefill", "decode"):
        p = throughput[phase]
        rows.append(
            [label, phase]
            + _rate_cells(p["stock"])
            + _rate_cells(p["patched"])
            + [num(p["speedup"], 3, "x")]
        )
    return rows


PHASE_HEADERS = [
    "model",
    "phase",
    "stock tok/s",
    "spread",
    "patched tok/s",
    "spread",
    "speed-up",
]


def validate(res: dict[str, Any]) -> list[Table]:
    f = res["fidelity"]
    verdict = "PASS" if f["passed"] else "FAIL"
    fid = [
        ["greedy tokens identical", f"{f['greedy_identical']}/{f['prompts']} prompts"],
        ["teacher-forced top-1 agreement", num(100 * f["top1_agreement"], 2, "%")],
        ["max |logit diff|", num(f["max_logit_diff"], 4)],
        ["mean |logit diff|", num(f["mean_logit_diff"], 5)],
        ["fidelity", verdict + (f"  ({f['reason']})" if f.get("reason") else "")],
    ]
    mem = res["memory"]
    mem_rows = [
        ["stock", num(mem["stock_peak_bytes"] / 1e9, 3)],
        ["patched", num(mem["patched_peak_bytes"] / 1e9, 3)],
    ]
    patch = res["patch"]
    counts: dict[str, int] = {}
    for item in patch.get("replaced", []):
        pattern = item[1] if isinstance(item, (list, tuple)) else str(item)
        counts[pattern] = counts.get(pattern, 0) + 1
    patch_rows = [[p, str(n)] for p, n in sorted(counts.items())] or [["(nothing)", "0"]]
    skipped: dict[tuple[str, str], int] = {}
    for item in patch.get("skipped", []):
        if isinstance(item, (list, tuple)) and len(item) == 3:
            skipped[(item[1], item[2])] = skipped.get((item[1], item[2]), 0) + 1
    out = [
        Table(f"fidelity: {res['model']}", ["check", "result"], fid),
        Table("throughput (stock and patched interleaved)", PHASE_HEADERS,
              _phase_rows(res["model"], res["throughput"])),
        Table("peak memory", ["variant", "GB"], mem_rows),
        Table("patched modules", ["pattern", "modules"], patch_rows),
    ]  # fmt: skip
    if skipped:
        rows = [[p, str(n), why] for (p, why), n in sorted(skipped.items())]
        out.append(Table("not patched", ["pattern", "modules", "reason"], rows))
    notes = list(patch.get("notes", [])) + list(res.get("notes", []))
    if notes:
        out.append(Table("notes", ["note"], [[n] for n in notes]))
    return out


def model_decode(res: dict[str, Any]) -> list[Table]:
    rows = []
    for r in res["rows"]:
        label = r["model"] + (f" ({r['quant']})" if r.get("quant") else "")
        rows += _phase_rows(label, r)
    return [Table("model decode and prefill, stock vs patched", PHASE_HEADERS, rows)]


def moe_block_bench(res: dict[str, Any]) -> list[Table]:
    rows = []
    for r in res["rows"]:
        rows += _timing_rows(r["model"], f"T={r['tokens']}", r["timings"], r["weight_bytes"])
    title = f"MoE block experts (copy bandwidth {num(res['copy_bandwidth_gbps'], 0)} GB/s)"
    return [Table(title, KERNEL_HEADERS, rows)]


def moe_block_device(res: dict[str, Any]) -> list[Table]:
    rows = []
    for r in res["rows"]:
        st, zx = r["device_time"]["mlx_switchglu"], r["device_time"]["zmlx"]
        rows.append([r["model"], str(r["tokens"]), num(st["block_us"], 1), num(zx["block_us"], 1),
                     num(st["block_us"] / zx["block_us"], 2) + "x", num(zx["gbps"], 0),
                     num(100 * r["fraction_of_copy"], 1) + "%"])  # fmt: skip
    title = (f"MoE block experts, device time per block (copy bandwidth "
             f"{num(res['copy_bandwidth_gbps'], 0)} GB/s)")  # fmt: skip
    cols = ["model", "T", "stock us", "zmlx us", "speed-up", "zmlx GB/s", "% of copy"]
    tables = [Table(title, cols, rows)]
    sweep = res.get("sweep") or []
    if sweep:
        rows = [[r["model"], str(r["tokens"]), label, num(r["device_time"][label]["block_us"], 1),
                 num(r["device_time"][label]["speedup"], 2) + "x"]
                for r in res["rows"] for label in sweep]  # fmt: skip
        tables.append(Table("zmlx under other settings (same stock run)",
                            ["model", "T", "settings", "zmlx us", "speed-up"], rows))  # fmt: skip
    return tables


def generic(res: dict[str, Any]) -> list[Table]:
    """Any other kind: its scalar fields, then each list of objects as a table."""
    scalars = [[k, str(v)] for k, v in res.items() if not isinstance(v, (dict, list))]
    out = [Table("results", ["field", "value"], scalars)] if scalars else []
    for k, v in res.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = [c for c in v[0] if not isinstance(v[0][c], (dict, list))]
            out.append(Table(k, cols, [[str(x.get(c, "")) for c in cols] for x in v]))
    return out


def zoo_build(res: dict[str, Any]) -> list[Table]:
    rows = [
        [
            b["family"],
            num(b["build_s"], 1),
            num(b["peak_memory_bytes"] / 1e9, 2),
            num(b["parameter_bytes"] / 1e9, 2),
            str(b.get("finite", "-")),
        ]
        for b in res["builds"]
    ]
    title = f"zoo builds (size {res['size']}, quant {res['quant']})"
    return [Table(title, ["family", "build s", "peak GB", "params GB", "finite"], rows)]


def gpu_tests(res: dict[str, Any]) -> list[Table]:
    counts = [
        [str(res["passed"]), str(res["failed"]), str(res["skipped"]), str(res.get("errors", 0)),
         num(res["duration_s"], 1)]
    ]  # fmt: skip
    tables = [Table("GPU tests", ["passed", "failed", "skipped", "errors", "seconds"], counts)]
    fails = [[f["test"], f["message"].splitlines()[0][:100]] for f in res.get("failures", [])]
    if fails:
        tables.append(Table("failures", ["test", "message"], fails))
    return tables


RENDERERS: dict[str, Callable[[dict[str, Any]], list[Table]]] = {
    "kernel_bench": kernel_bench,
    "catalog_bench": catalog_bench,
    "validate": validate,
    "model_decode": model_decode,
    "moe_block_bench": moe_block_bench,
    "moe_block_device": moe_block_device,
    "zoo_build": zoo_build,
    "gpu_tests": gpu_tests,
}


def tables(cap: dict[str, Any]) -> list[Table]:
    """The tables of one (validated) capsule."""
    return RENDERERS.get(cap["kind"], generic)(cap["results"])


def render(cap: dict[str, Any], path: str = "") -> str:
    """A capsule as readable text: its header line, then its tables."""
    if cap.get("schema_version", 0) < 2:  # version 1 results have no fixed shape
        try:
            parts = [format_text(t) for t in tables(cap)]
        except (KeyError, TypeError):
            parts = ["(version 1 capsule: results not in a known shape)"]
    else:
        parts = [format_text(t) for t in tables(cap)]
    return "\n\n".join([header(cap, path)] + parts)
