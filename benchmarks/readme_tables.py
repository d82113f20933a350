"""Render the README's results section from the capsules (no number is typed by hand).

    python benchmarks/readme_tables.py            # print the markdown
    python benchmarks/readme_tables.py --write    # replace the block between the README markers

A test checks that the README's block equals this script's output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from zmlx.bench import capsule  # noqa: E402

CAPS = ROOT / "benchmarks" / "capsules"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _cap(name: str) -> dict | None:
    p = CAPS / name
    return capsule.load(p) if p.exists() else None


# The four full-size families, stock against zmlx in one process each (the headline table):
# (capsule, model, the variant that runs the safety table's current CUDA patterns), the newest
# such run of each family.
HEADLINE = [
    ("moe_decode_qwen3_mma_h100.json", "qwen3_moe", "zmlx"),
    ("moe_decode_qwen3_lfm2_mma_h100.json", "lfm2_moe", "zmlx"),
    ("moe_decode_glm_mla_h100.json", "glm4_moe_lite", "zmlx_linear_mla"),
    ("moe_decode_glm_gpt_oss_linear_h100.json", "gpt_oss", "zmlx"),
]
DECODE_VARIANTS = [
    "moe_decode_qwen3_mma_h100.json",
    "moe_decode_qwen3_lfm2_mma_h100.json",
    "moe_decode_qwen3_lfm2_lanes_h100.json",
    "moe_decode_qwen3_paired_exact_h100.json",
    "moe_decode_qwen3_paired_h100.json",
    "moe_decode_qwen3_defaults_h100.json",
    "moe_decode_lfm2_residual_h100.json",
    "moe_decode_qwen3_launches_h100.json",
    "moe_decode_glm_mla_h100.json",
    "moe_decode_qwen3_lfm2_linear_h100.json",
    "moe_decode_glm_gpt_oss_linear_h100.json",
    "moe_decode_qwen3_default_linear_h100.json",
    "moe_decode_qwen3_split_qkv_h100.json",
    "moe_decode_qwen3_split_dense_h100.json",
    "moe_decode_qwen3_split_h100.json",
    "moe_decode_lfm2_moe_split_h100.json",
    "moe_decode_glm4_moe_lite_split_h100.json",
    "moe_decode_qwen3_attn_default_h100.json",
    "moe_decode_lfm2_moe_attention_h100.json",
    "moe_decode_glm4_moe_lite_attention_h100.json",
    "moe_decode_gpt_oss_attention_h100.json",
    "moe_decode_qwen3_attention_h100.json",
    "moe_decode_qwen3_linear_h100.json",
    "moe_decode_qwen3_vec16_h100.json",
    "moe_decode_qwen3_split_experts_h100.json",
    "moe_decode_qwen3_profiled_h100.json",
    "moe_decode_qwen3_lfm2_h200.json",
    "moe_decode_glm_gptoss_h200.json",
    "moe_decode_qwen3_qkv_h100.json",
    "moe_decode_qwen3_residual_h100.json",
    "moe_decode_qwen3_30b_a3b_h200.json",
    "moe_decode_lfm2_8b_a1b_h200.json",
    "moe_decode_qwen3_30b_a3b_h100_qk.json",
    "moe_decode_qwen3_30b_a3b_h100_noqk.json",
]
FIXTURE_CAPSULES = ["fixture_decode_mma_128x5_h100.json", "fixture_decode_lanes_128x5_h100.json",
                    "fixture_decode_paired_exact_128x5_h100.json",
                    "fixture_decode_paired_128x5_h100.json",
                    "fixture_decode_qkv_residual_128x5_h100.json",
                    "fixture_decode_split_linear_128x5_h100.json",
                    "fixture_decode_split_dense_128x5_h100.json",
                    "fixture_decode_qkv_split_128x5_h100.json",
                    "fixture_decode_split_128x5_h100.json",
                    "fixture_decode_attention_128x5_h100.json",
                    "fixture_decode_vec16_128x5_h100.json", "fixture_decode_linear_128x5_h100.json",
                    "fixture_decode_split_rows_128x5_h100.json", "fixture_decode_128x5_h100.json", "fixture_decode_qkv_128x5_h100.json",
                    "fixture_decode_residual_128x5_h100.json",
                    "fixture_decode_g32_h200.json", "fixture_decode_h200.json",
                    "fixture_decode_qwen3_qk_h100.json"]  # fmt: skip
CATALOG_CAPSULES = ["catalog_bench_h200.json", "catalog_bench_quant_h200.json",
                    "catalog_bench_reductions_h200.json", "catalog_bench_softmax_h200.json",
                    "catalog_bench_routers_h200.json", "catalog_bench_rope_h200.json",
                    "catalog_bench_scans_h200.json", "catalog_bench_random_h200.json",
                    "catalog_bench_f16_h100.json", "catalog_bench_f32_h100.json"]  # fmt: skip
VARIANT_TEXT = {
    "zmlx_qkv": "`patch` (with `qkv_norm_rope`) + `compile_decode`",
    "zmlx_linear": "`patch` (with `quantized_linear`) + `compile_decode`",
    "zmlx_qkv_linear": "`patch` (with `qkv_norm_rope`, `quantized_linear`) + `compile_decode`",
    "zmlx_linear_mla": "`patch` (with `quantized_linear`, `mla_attention`) + `compile_decode`",
    "zmlx_residual": "`patch` (with `moe_residual`) + `compile_decode`",
    "zmlx_qkv_residual": "`patch` (with `qkv_norm_rope`, `moe_residual`) + `compile_decode`",
    "zmlx_fused_router": "`patch` (router in one launch) + `compile_decode`",
    "stock": "mlx-lm as is",
    "compiled": "`compile_decode` only",
    "patched": "`patch` only",
    "zmlx_stock_attention": "`patch` + `compile_decode`, mlx-lm attention",
    "zmlx": "`patch` + `compile_decode`",
    "zmlx_split_gate_up": "`patch` + `compile_decode`, gate/up on the split-row kernel",
}


def _settings(command: str) -> str:
    """The ``--set`` settings of a moe_decode command line, as text for a table heading."""
    words = command.split()
    if "--set" not in words:
        return ""
    vals = []
    for w in words[words.index("--set") + 1 :]:
        if w.startswith("--"):
            break
        vals.append(f"`{w.removeprefix('zmlx.')}`")
    return ", settings " + ", ".join(vals)


def _variants() -> list[str]:
    out = []
    for name in DECODE_VARIANTS:
        cap = _cap(name)
        if not cap:
            continue
        for r in cap["results"]["rows"]:
            if "variants" not in r:
                continue
            fid = r["fidelity"]
            pats = ", ".join(f"`{p}`" for p in sorted(r["patch_report"]["patterns"]))
            sets = _settings(cap.get("command", ""))
            out += [f"**{r['model']}** ({r['quant']}, random weights, patterns {pats}{sets}), "
                    f"{cap['env']['device']}, "
                    f"median of {len(r['variants']['stock']['decode']['runs'])} runs of "
                    f"{r['decode_tokens']} tokens (capsule `benchmarks/capsules/{name}`; "
                    f"stock against stock, teacher-forced twice: "
                    f"{100 * fid.get('stock_repeat_top1_agree', float('nan')):.1f}%):", "",
                    "| variant | decode tok/s | runs | vs stock | prefill vs stock (1024 tokens) | "
                    "host build us/step | teacher-forced top-1 vs stock |",
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
            for v, t in r["variants"].items():
                rs = t["decode"]["runs"]
                runs = f"{min(rs):.0f}-{max(rs):.0f}"  # the slowest and fastest run
                out.append(f"| {VARIANT_TEXT.get(v, v)} | {t['decode']['median']:.1f} | {runs} | "
                           f"{t['decode_speedup']:.2f}x | {t['prefill_speedup']:.2f}x | "
                           f"{t['step_profile']['build_us']:.0f} | "
                           f"{100 * t['top1_agree']:.1f}% |")  # fmt: skip
            out.append("")
    for name in FIXTURE_CAPSULES:
        fx = _cap(name)
        if not fx:
            continue
        rows = fx["results"]["rows"]
        group = rows[0].get("group_size", 64)
        out += [f"Trained fixtures quantized in groups of {group} on the {fx['env']['device']} "
                f"(capsule `benchmarks/capsules/{name}`, {rows[0]['tokens']} tokens from each of "
                f"{rows[0].get('prompts', 1)} prompt(s), patterns "
                f"{sorted({p for r in rows for p in r['patched']})}): greedy tokens of stock MLX "
                "CUDA and of `patch` + `compile_decode`, each against MLX's CPU backend in the "
                "same process (stock first, zmlx second; *-* where not run), and "
                "teacher-forced logits of zmlx against stock CUDA:", "",
                "| fixture | stock CUDA = CPU | zmlx = CPU | zmlx = stock CUDA | "
                "max abs logit diff | top-1 |", "| --- | --- | --- | --- | ---: | ---: |"]  # fmt: skip
        for r in rows:
            cpu = [("-" if r[k] is None else r[k]) for k in ("stock_equals_cpu", "zmlx_equals_cpu")]
            out.append(f"| {r['family']} | {cpu[0]} | {cpu[1]} | "
                       f"{r['identical']} | {r['max_logit_diff']:.2g} | "
                       f"{100 * r['top1_agree']:.0f}% |")  # fmt: skip
        out.append("")
    return out


def _headline() -> list[str]:
    rows = []
    for name, model, variant in HEADLINE:
        cap = _cap(name)
        if cap:
            rows += [(name, cap, r, variant) for r in cap["results"]["rows"] if r["model"] == model]
    if not rows:
        return []
    out = ["Decode of the four full-size MoE families (random weights, 64-token prompt, median "
           "of 3-5 runs of 256 tokens; prefill of 1024 tokens), stock mlx-lm against zmlx "
           "(`patch` + `compile_decode`) in the same process. *top-1* is teacher-forced "
           "agreement with stock over 256 positions; *compile only* is the same for stock "
           "kernels under `compile_decode`, the floor that rounding differences alone give "
           "on random weights. Rates vary between machines and between runs on one machine "
           "(each capsule's slowest and fastest runs are in its table below), so compare the "
           "ratios within a row. *decode* is the ratio of the medians; *paired* the median of "
           "the per-run ratios (each run measures every variant back to back, so a pair shares "
           "the machine's state), the more conservative of the two where they differ. Each "
           "row is its family's newest run of the safety table's patterns, at the commit "
           "given (a later kernel change reaches a family's row when it is run again):", "",
           "| model | GPU | stock tok/s | zmlx tok/s | decode | paired | prefill | top-1 | "
           "top-1, compile only | capsule |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for name, cap, r, variant in rows:
        v = r["variants"]
        z = v[variant]
        floor = v.get("compiled", {}).get("top1_agree")
        floor = "-" if floor is None else f"{100 * floor:.1f}%"
        paired = statistics.median(
            [a / b for a, b in zip(z["decode"]["runs"], v["stock"]["decode"]["runs"])]
        )
        out.append(f"| {r['model']} ({r['quant']}) | {cap['env']['device']} | "
                   f"{v['stock']['decode']['median']:.1f} | {z['decode']['median']:.1f} | "
                   f"{z['decode_speedup']:.2f}x | {paired:.2f}x | {z['prefill_speedup']:.2f}x | "
                   f"{100 * z['top1_agree']:.1f}% | {floor} | `{name}` ({variant}, at "
                   f"{cap['env'].get('git_commit', '?')}) |")  # fmt: skip
    return out + [""]


def _sharded() -> list[str]:
    name = "sharded_decode_qwen3_full_2xh200.json"
    cap = _cap(name)
    if not cap:
        return []
    r = cap["results"]
    c = r["compiled"]
    return [f"{r['family']} (full size, 4-bit) sharded over {r['ranks']} ranks with mlx-lm's "
            f"`shard()`, one {cap['env']['device']} each, launched with `mlx.launch --backend "
            f"nccl` (capsule `benchmarks/capsules/{name}`; its `distributed_backend` field "
            "predates the fix that reads the launcher's backend), median of "
            f"{len(r['stock_runs'])} runs of {r['tokens']} tokens:", "",
            "| variant | decode tok/s | vs sharded stock | teacher-forced top-1 |",
            "| --- | ---: | ---: | ---: |",
            f"| sharded stock | {r['stock_tok_s']:.1f} | 1.00x | 100.0% |",
            f"| sharded + `patch` | {r['patched_tok_s']:.1f} | {r['patched_speedup']:.2f}x | "
            f"{100 * r['top1_agreement_vs_sharded_stock']:.1f}% |",
            f"| sharded + `patch` + `compile_decode` | {c['tok_s']:.1f} | {c['speedup']:.2f}x | "
            f"{100 * c['top1_agreement']:.1f}% |", ""]  # fmt: skip


def _zoo() -> list[str]:
    name = "zoo_build_h200.json"
    cap = _cap(name)
    if not cap:
        return []
    out = [f"`zmlx.models.build(name, \"full\", quant)` on the {cap['env']['device']} (capsule "
           f"`benchmarks/capsules/{name}`; the first build is the first in the process):", "",
           "| family | quant | build s | peak GB | parameters GB | finite logits |",
           "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for b in cap["results"]["builds"]:
        out.append(f"| {b['family']} | {b['quant']} | {b['build_s']:.1f} | "
                   f"{b['peak_memory_bytes'] / 1e9:.1f} | {b['parameter_bytes'] / 1e9:.1f} | "
                   f"{b['finite']} |")  # fmt: skip
    return out + [""]


def _suites() -> list[str]:
    out = []
    for name, what in (
        (
            "gpu_tests_defaults_h100.json",
            "the patch, residual, qk-norm attention, router and MLA tests at the new defaults; "
            "the failure was a test that expected qkv_norm_rope off on CUDA, fixed after the run",
        ),
        ("gpu_tests_defaults2_h100.json", "the qk-norm attention and residual tests, rerun"),
        (
            "gpu_tests_router_slices_h100.json",
            "the router, prenorm, residual and patch tests with the split router",
        ),
        (
            "gpu_tests_patch_h100.json",
            "the patch, decode and model-zoo tests (tiny models in "
            "groups of 32); both failures were tests that assumed the CPU backend, fixed after the "
            "run, and no worker hit an illegal memory access",
        ),
        (
            "gpu_tests_split_dense_h100.json",
            "the split-row kernels (gathered, dense), quant, quantized-linear and gated tests",
        ),
        ("gpu_tests_split_all_rows_h100.json", "the split-row, MoE and quant tests"),
        (
            "gpu_tests_linear_h100.json",
            "the MoE, residual, quant, split-row, two-launch combine and patch tests",
        ),
        ("gpu_tests_catalog_h200.json", "every catalog op's tests through its CUDA kernel"),
        ("gpu_tests_fidelity_h200.json", "the patch, decode and model-zoo tests"),
        ("gpu_tests_full_h200.json", "the whole suite"),
        ("gpu_tests_rerun_h200.json", "the files that had failures, after fixes"),
    ):
        cap = _cap(name)
        if not cap:
            continue
        r = cap["results"]
        cut = " (stopped at its time limit)" if r.get("interrupted") else ""
        spoiled = ""
        if r.get("poisoned_workers"):
            spoiled = ("; a CUDA illegal memory access spoiled worker processes, whose later "
                       "tests fail with it (the capsule lists the tests each worker ran before "
                       "its first failure)")  # fmt: skip
        out += [f"Test suite on the {cap['env']['device']}, {what}, at "
                f"`{cap['env']['git_commit'][:12]}`{cut} (capsule `benchmarks/capsules/{name}`): "
                f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped{spoiled}.",
                ""]  # fmt: skip
    return out


def _catalog() -> list[str]:
    caps = [(n, c) for n in CATALOG_CAPSULES if (c := _cap(n))]
    if not caps:
        return []
    rows: dict = {}
    devices: dict = {}
    for _, c in caps:  # an op measured again in a later capsule counts from there
        for r in c["results"]["rows"]:
            rows[(r["dtype"], r["op"], r["case"])] = r
            devices.setdefault(r["dtype"], set()).add(c["env"]["device"])
    out = ["Every catalog op against its stock-MLX counterpart, eager calls (capsules "
           "`benchmarks/capsules/catalog_bench*.json`):", "",
           "| dtype | GPU | cases | ops | zmlx at least as fast (cases) | (ops) | fastest |",
           "| --- | --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for dtype in sorted(devices):
        mine = [r for (d, _, _), r in rows.items() if d == dtype]
        faster = [r for r in mine if r["speedup"] >= 1.0]
        best = sorted(mine, key=lambda r: -r["speedup"])[:3]
        top = ", ".join(f"{r['op']} {r['case']} {r['speedup']:.2f}x" for r in best)
        out.append(f"| {dtype} | {', '.join(sorted(devices[dtype]))} | {len(mine)} | "
                   f"{len({r['op'] for r in mine})} | {len(faster)} | "
                   f"{len({r['op'] for r in faster})} | {top} |")  # fmt: skip
    return out + ["", "Where stock ran faster, `ZMLX_STOCK_ROUTES=shipped` makes the op call "
                  "stock there (per dtype and size, `zmlx/kernels/overrides/stock_routes.json`). "
                  "It is off by default: some stock counterparts do not keep the op's contract "
                  "(dtype, float32 sums, masked rows; `zmlx.kernels.routes`). `patch` and "
                  "`compile_decode` run their kernels regardless.", ""]  # fmt: skip


def _launches() -> list[str]:
    """Host cost per launch and per decode step (benchmarks/launch_cost.py)."""
    out = []
    lc = _cap("launch_cost_kernels_h100.json")
    if lc and "launches" in lc["results"]["rows"][0]:
        row = lc["results"]["rows"][0]
        out += [f"Host cost of one launch in a chain of {row['launches']['ops']} dependent "
                f"launches, {row['device']} (capsule "
                "`benchmarks/capsules/launch_cost_kernels_h100.json`, MLX's default settings):",
                "", "| launch | encode us (eager) | total us (eager) | encode us (compiled) | "
                "total us (compiled) |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for name, t in row["launches"]["per_launch"].items():
            e, c = t["eager"], t["compiled"]
            out.append(f"| {name} | {e['encode_us']:.1f} | {e['total_us']:.1f} | "
                       f"{c['encode_us']:.1f} | {c['total_us']:.1f} |")  # fmt: skip
        out.append("")
    lv = _cap("launch_cost_variants_h100.json")
    if lv:
        row = lv["results"]["rows"][0]
        dec = row["decode"]
        out += [f"One decode step of {dec['model']} ({dec['layers']} layers, {dec['quant']}, "
                f"random weights), {row['device']}: host time to build the graph, to encode it "
                "(until `mx.async_eval` returns) and until the device is done, and the kernels "
                "the step launches, read from the CUDA graphs MLX saves (capsule "
                "`benchmarks/capsules/launch_cost_variants_h100.json`):", "",
                "| variant | decode tok/s | build us | encode us | total us | kernels | "
                "kernels per layer | CUDA graphs |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for v, t in dec["variants"].items():
            st = t["step"]
            out.append(f"| {VARIANT_TEXT.get(v, v)} | {t['decode_tok_s']:.1f} | "
                       f"{st['build_us']:.0f} | {st['encode_us']:.0f} | {st['total_us']:.0f} | "
                       f"{t.get('kernels', '-')} | {t.get('kernels', 0) / dec['layers']:.1f} | "
                       f"{t.get('graphs', '-')} |")  # fmt: skip
        out.append("")
    return out


def render() -> str:
    out = _headline() + _variants() + _launches() + _sharded() + _zoo() + _catalog() + _suites()
    dec = _cap("moe_decode_qwen3_30b_a3b_h100.json")
    if dec:
        dev = dec["env"]["device"]
        out += [f"Earlier, `patch` alone, {dev} (`{dec['command']}`, "
                f"capsule `benchmarks/capsules/moe_decode_qwen3_30b_a3b_h100.json`):", "",
                "| model | decode stock tok/s | decode zmlx tok/s | decode ratio | prefill ratio "
                "(1024 tokens) | teacher-forced top-1 agreement |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in dec["results"]["rows"]:
            d, p = r["decode"], r["prefill"]
            out.append(f"| {r['model']} ({r['quant']}) | {d['stock']['median']:.1f} | "
                       f"{d['patched']['median']:.1f} | {d['speedup']:.2f}x | "
                       f"{p['speedup']:.2f}x | {100 * r['fidelity']['top1_agree']:.1f}% |")  # fmt: skip
        out.append("")
    blk = _cap("moe_block_h100.json")
    if blk:
        res = blk["results"]
        out += [f"One MoE block's routed experts at decode against mlx-lm's `SwitchGLU` + combine, "
                f"{blk['env']['device']}, copy bandwidth {res['copy_bandwidth_gbps']:.0f} GB/s "
                "(capsule `benchmarks/capsules/moe_block_h100.json`). *Device* is the evaluation "
                "time alone; *total* adds Python graph building:", "",
                "| model | tokens | stock device us | zmlx device us | device ratio | "
                "% of copy bandwidth | total ratio |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in res["rows"]:
            s, z = r["timings"]["mlx_switchglu"], r["timings"]["zmlx"]
            out.append(f"| {r['model']} | {r['tokens']} | {s['median_eval_us']:.1f} | "
                       f"{z['median_eval_us']:.1f} | {z['eval_speedup']:.2f}x | "
                       f"{100 * r['fraction_of_copy']:.1f}% | {z['speedup']:.2f}x |")  # fmt: skip
        out.append("")
    ew = _cap("elementwise_fused_h100.json")
    if ew:
        t = ew["results"]["timings"]
        out += [f"`{ew['results']['expr']}` on {ew['results']['n']:,} {ew['results']['dtype']} "
                f"elements, {ew['env']['device']} (capsule "
                "`benchmarks/capsules/elementwise_fused_h100.json`):", "",
                "| variant | us | GB/s | vs eager |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for name, v in t.items():
            out.append(f"| {name} | {v['median_us']:.1f} | {v['gbps']:.0f} | {v['speedup']:.2f}x |")
        out.append("")
    for name in ("gpu_tests_foundation_h100.json", "gpu_tests_foundation_h200.json"):
        gt = _cap(name)
        if not gt:
            continue
        r = gt["results"]
        why = (
            f"; {gt['provenance']}"
            if gt.get("provenance")
            else " (the rerun after the fixes; the tests assert that the CUDA kernel path ran)"
        )
        out += [
            f"Test suite on the {gt['env']['device']} at `{gt['env']['git_commit']}` (capsule "
            f"`benchmarks/capsules/{name}`): {r['passed']} passed, {r['failed']} failed, "
            f"{r['skipped']} skipped{why}.",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    text = render()
    if not args.write:
        print(text)
        return 0
    readme = ROOT / "README.md"
    src = readme.read_text()
    a, b = src.index(START) + len(START), src.index(END)
    readme.write_text(src[:a] + "\n" + text + src[b:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
