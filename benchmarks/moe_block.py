"""One MoE block's routed experts at decode: zmlx's kernels against stock MLX.

    python benchmarks/moe_block.py [--models qwen3_30b_a3b ...] [--tokens 1 4 16] [--json OUT]

Stock is mlx-lm's own ``SwitchGLU`` (three ``gather_qmm`` calls and SwiGLU) followed by the
block's combine ``(y * scores[..., None]).sum(-2)``; zmlx is ``moe_experts``
(``gather_qmv_swiglu`` then ``gather_qmv_combine``; one launch for both on CUDA with
``zmlx.kernels.fused_experts.FUSED_EXPERTS`` on). Both get the same quantized weights,
tokens and routing; outputs are compared first. Reported per case: median time of each, the speed-up, the bytes of weights
the selected experts need, the effective bandwidth and its fraction of the copy bandwidth
measured in the same process (a large device copy).

Each timed run evaluates ``--batch`` independent blocks in one graph, which the device may
run overlapped: the times are throughput, not the latency of one layer's block in a model
(for that, ``benchmarks/launch_cost.py --moe-blocks N`` chains blocks as layers are).

``--device-time N`` measures device time instead, as a model's layers run: ``N`` blocks with
weights of their own (so the selected experts stream from DRAM, not L2) chained, each block's
output the next one's input, evaluated at once; CUPTI's kernel records (through PyTorch's
profiler, as ``kernel_profile.py`` reads them) give the time some kernel of the chain is
running, per block. The copy bandwidth is then a large copy's device time, read the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from zmlx.bench import capsule, compare
from zmlx.bench import settings as bench_settings
from zmlx.core.backend import device_name
from zmlx.kernels import moe as K
from zmlx.testing import assert_close

# (hidden, moe intermediate, experts, top-k, quant) from each model's public config.
MODELS = {
    "qwen3_30b_a3b": (2048, 768, 128, 8, "4bit"),
    "lfm2_8b_a1b": (2048, 1792, 32, 4, "4bit"),
    "glm_4_7_flash": (2048, 1536, 64, 4, "4bit"),
    "gpt_oss_20b": (2880, 2880, 32, 4, "mxfp4"),
}
QUANT = {"4bit": dict(bits=4, group_size=64, mode="affine"),
         "mxfp4": dict(bits=4, group_size=32, mode="mxfp4")}  # fmt: skip


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rounds", type=int, default=1,
                   help="with --device-time: measure stock, zmlx and the sweep in turn this many "
                        "times; each label's median round is reported")  # fmt: skip
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--scale", type=float, default=1.0, help="shrink the shapes (CPU smoke runs)")
    p.add_argument(
        "--rows-per-warp",
        type=int,
        default=None,
        help="tuning: rows each warp of the matvec kernels owns (default: chosen)",
    )
    p.add_argument(
        "--group-threads",
        type=int,
        default=None,
        help="tuning: threads per group of the matvec kernels (default: 128)",
    )
    p.add_argument(
        "--batch-loads",
        action="store_true",
        help="tuning: the batched row loop (quant_kernels.BATCH_LOADS)",
    )
    p.add_argument(
        "--device-time",
        type=int,
        default=0,
        metavar="N",
        help="device time (CUPTI) of N chained blocks with distinct weights, not wall time",
    )
    bench_settings.add_argument(p)
    p.add_argument("--sweep", nargs="+", default=[], metavar="MODULE.NAME=VALUE[,...]",
                   help="with --device-time: also time zmlx under each of these settings "
                        "(comma-separated within one item), against the same stock run")  # fmt: skip
    p.add_argument("--json", help="write the capsule here")
    return p


def apply_tuning(args) -> dict:
    """Override the matvec kernels' launch choices for this process (``--rows-per-warp``,
    ``--group-threads``, ``--batch-loads``); returns what was set."""
    from zmlx.kernels import quant_kernels as qk

    tuning = {}
    if args.rows_per_warp:
        r = args.rows_per_warp
        qk.rows_per_warp = lambda *_a, r=r: r
        tuning["rows_per_warp"] = r
    if args.group_threads:
        qk.GROUP = args.group_threads
        tuning["group_threads"] = args.group_threads
    if args.batch_loads:
        qk.BATCH_LOADS = True
        tuning["batch_loads"] = True
    return tuning


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device copy bandwidth in GB/s (read + write of a large buffer), median of 10."""
    x = mx.zeros((nbytes // 2,), dtype=mx.float16)
    mx.eval(x)
    t = compare({"copy": lambda a: a + 0}, (x,), repeats=10, batch=5, warmup=2)["copy"]
    return 2 * nbytes / (t["median_us"] * 1e-6) / 1e9


def _switch_glu(d, i, e, q, bias=False, activation=None):
    from mlx_lm.models.switch_layers import SwitchGLU

    kwargs = {} if activation is None else {"activation": activation}
    glu = SwitchGLU(d, i, e, bias=bias, **kwargs)
    glu.set_dtype(mx.bfloat16)
    nn.quantize(glu, group_size=q["group_size"], bits=q["bits"], mode=q["mode"])
    mx.eval(glu.parameters())
    return glu


def _case_parts(name, d, i, e, k, quant, t, rng):
    """One block's pieces: ``(stock, fused, glu, x, inds, scores)``, where ``stock`` and
    ``fused`` map ``(x, inds, scores)`` to the block's output."""
    q = QUANT[quant]
    oai = name.startswith("gpt_oss")
    act = None
    if oai:
        from mlx_lm.models.activations import SwigluOAI

        act = SwigluOAI()
    glu = _switch_glu(d, i, e, q, bias=oai, activation=act)
    x = mx.array(rng.normal(size=(t, d)).astype(np.float32)).astype(mx.bfloat16)
    inds = mx.array(np.stack([rng.choice(e, size=k, replace=False) for _ in range(t)])).astype(
        mx.uint32
    )
    scores = mx.softmax(mx.array(rng.normal(size=(t, k)).astype(np.float32)), axis=-1)
    scores = scores.astype(mx.bfloat16)
    g, u, dn = glu["gate_proj"], glu["up_proj"], glu["down_proj"]

    def qp(layer):
        return layer["weight"], layer["scales"], layer.get("biases")

    def stock(x, inds, scores):
        y = glu(x, inds)
        return (y * scores[..., None]).sum(axis=-2).astype(y.dtype)

    def fused(x, inds, scores):
        return K.moe_experts(x, *qp(g), *qp(u), *qp(dn), inds, scores, bias_gate=g.get("bias"),
                             bias_up=u.get("bias"), bias=dn.get("bias"),
                             activation="swiglu_oai" if oai else "swiglu", **q)  # fmt: skip

    return stock, fused, glu, x, inds, scores


def _expert_bytes(glu, e: int) -> int:
    """Bytes of one expert's gate, up and down weights (with scales, biases)."""
    return sum(
        sum(a.nbytes for a in (layer["weight"], layer["scales"], layer.get("biases"))
            if a is not None) // e
        for layer in (glu["gate_proj"], glu["up_proj"], glu["down_proj"])
    )  # fmt: skip


def _profiler():
    """``kernel_profile.profile``: CUPTI kernel records of a callable (needs CUDA PyTorch)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kernel_profile import profile

    return profile


def device_time_case(name, d, i, e, k, quant, t, n_blocks, repeats, rng, sweep=None,
                     rounds=1) -> dict:  # fmt: skip
    """``n_blocks`` blocks with their own weights and routing, chained; device time per block
    of stock and zmlx (CUPTI busy time of the whole chain / ``n_blocks``), and of zmlx under
    each ``sweep`` entry (label -> settings), each checked against stock first. ``rounds``:
    every label measured that many times in turn (stock, zmlx, the sweep, again), the round
    of the median time reported, so no label gains from its place in the order."""
    profile = _profiler()
    parts = [_case_parts(name, d, i, e, k, quant, t, rng) for _ in range(n_blocks)]
    x0 = parts[0][3]
    for stock, fused, _, x, inds, scores in parts[:2]:
        assert_close(fused(x, inds, scores), stock(x, inds, scores), atol=3e-2, rtol=3e-2,
                     name=f"{name} T={t}")  # fmt: skip

    def chain(which):
        def run():
            y = x0
            for p in parts:
                y = p[which](y, p[4], p[5])
            mx.eval(y)

        return run

    out = {}
    runs = [("mlx_switchglu", 0, {}), ("zmlx", 1, {})]
    runs += [(label, 1, values) for label, values in (sweep or {}).items()]
    for rnd in range(rounds):
        for label, which, values in runs:
            with bench_settings.applied(values):
                if values and rnd == 0:
                    stock, fused, _, x, inds, scores = parts[0]
                    assert_close(fused(x, inds, scores), stock(x, inds, scores), atol=3e-2,
                                 rtol=3e-2, name=f"{name} T={t} {label}")  # fmt: skip
                prof = profile(chain(which), repeats)
            row = {
                "block_us": prof["busy_us"] / n_blocks,
                "span_us": prof["span_us"] / n_blocks,
                "kernels": prof["kernels"] / n_blocks,
                "by_name": prof["by_name"][:8],
            }
            out.setdefault(label, {"rounds": []})["rounds"].append(row)
    for label, _, values in runs:
        # The round of the median block time stands for the label (all rounds are kept).
        rows = sorted(out[label]["rounds"], key=lambda r: r["block_us"])
        out[label].update(rows[(len(rows) - 1) // 2])
        if values:
            out[label]["settings"] = values
    unique = [len(np.unique(np.array(p[4]))) for p in parts]
    nbytes = statistics.mean(unique) * _expert_bytes(parts[0][2], e)
    for tm in out.values():
        tm["gbps"] = nbytes / (tm["block_us"] * 1e-6) / 1e9
    for label, tm in out.items():
        if label != "mlx_switchglu":
            tm["speedup"] = out["mlx_switchglu"]["block_us"] / tm["block_us"]
    return {"model": name, "tokens": t, "d": d, "i": i, "experts": e, "k": k, "quant": quant,
            "blocks": n_blocks, "unique_experts": statistics.mean(unique),
            "weight_bytes": nbytes, "device_time": out}  # fmt: skip


def copy_bandwidth_device(repeats: int, nbytes: int = 1 << 30) -> float:
    """Device copy bandwidth in GB/s (read + write) from CUPTI's record of a large copy."""
    profile = _profiler()
    x = mx.zeros((nbytes // 2,), dtype=mx.float16)
    mx.eval(x)
    prof = profile(lambda: mx.eval(x + 0), repeats)
    return 2 * nbytes / (prof["busy_us"] * 1e-6) / 1e9


def run_case(name, d, i, e, k, quant, t, args, rng) -> dict:
    stock, fused, glu, x, inds, scores = _case_parts(name, d, i, e, k, quant, t, rng)
    want, got = stock(x, inds, scores), fused(x, inds, scores)
    assert_close(got, want, atol=3e-2, rtol=3e-2, name=f"{name} T={t}")
    timings = compare({"mlx_switchglu": stock, "zmlx": fused}, (x, inds, scores),
                      repeats=args.repeats, batch=args.batch)  # fmt: skip
    unique = len(np.unique(np.array(inds)))
    nbytes = unique * _expert_bytes(glu, e)
    for tm in timings.values():
        tm["gbps"] = nbytes / (tm["median_us"] * 1e-6) / 1e9
        tm["eval_gbps"] = nbytes / (tm["median_eval_us"] * 1e-6) / 1e9
    return {"model": name, "tokens": t, "d": d, "i": i, "experts": e, "k": k, "quant": quant,
            "unique_experts": unique, "weight_bytes": nbytes, "timings": timings}  # fmt: skip


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    tuning = apply_tuning(args)
    tuning.update(bench_settings.apply_command_line(args.set, "moe_block"))
    rng = np.random.default_rng(0)
    if args.device_time:
        return device_time_main(args, tuning, rng)
    bw = copy_bandwidth(1 << 30 if args.scale == 1.0 else 1 << 24)
    rows = []
    print(f"device: {device_name()}   copy bandwidth: {bw:.0f} GB/s")
    print("per call; 'eval' = evaluation only (device time + MLX encoding, no graph building)")
    print(f"{'model':<15} {'T':>3} {'stock us':>9} {'zmlx us':>8} {'speedup':>8} {'eval st':>8} "
          f"{'eval zx':>8} {'eval x':>7} {'GB/s':>6} {'% copy':>7}")  # fmt: skip
    for name in args.models:
        d, i, e, k, quant = MODELS[name]
        if args.scale != 1.0:
            d, i = max(64, int(d * args.scale) // 64 * 64), max(64, int(i * args.scale) // 64 * 64)
        for t in args.tokens:
            r = run_case(name, d, i, e, k, quant, t, args, rng)
            z, s = r["timings"]["zmlx"], r["timings"]["mlx_switchglu"]
            r["fraction_of_copy"] = z["eval_gbps"] / bw
            rows.append(r)
            print(f"{name:<15} {t:>3} {s['median_us']:>9.1f} {z['median_us']:>8.1f} "
                  f"{z['speedup']:>7.2f}x {s['median_eval_us']:>8.1f} {z['median_eval_us']:>8.1f} "
                  f"{z['eval_speedup']:>6.2f}x {z['eval_gbps']:>6.0f} "
                  f"{100 * r['fraction_of_copy']:>6.1f}%")  # fmt: skip
    if args.json:
        results = {"copy_bandwidth_gbps": bw, "rows": rows, "tuning": tuning}
        capsule.write(capsule.make("moe_block_bench", results), args.json)
        print(f"capsule: {args.json}")
    return 0


def device_time_main(args, tuning, rng) -> int:
    """``--device-time``: chained blocks, CUPTI device time (see the module docstring)."""
    try:
        sweep = {item: bench_settings.parse(item.split(",")) for item in args.sweep}
    except ValueError as e:
        raise SystemExit(f"[moe_block] {e}") from None
    bw = copy_bandwidth_device(args.repeats)
    print(f"device: {device_name()}   copy bandwidth (device time): {bw:.0f} GB/s")
    print(f"per block, device time of {args.device_time} chained blocks with their own weights")
    print(f"{'model':<15} {'T':>3} {'stock us':>9} {'zmlx us':>8} {'speedup':>8} {'GB/s':>6} "
          f"{'% copy':>7}")  # fmt: skip
    rows = []
    for name in args.models:
        d, i, e, k, quant = MODELS[name]
        if args.scale != 1.0:
            d, i = max(64, int(d * args.scale) // 64 * 64), max(64, int(i * args.scale) // 64 * 64)
        for t in args.tokens:
            r = device_time_case(name, d, i, e, k, quant, t, args.device_time, args.repeats, rng,
                                 sweep, args.rounds)  # fmt: skip
            z, s = r["device_time"]["zmlx"], r["device_time"]["mlx_switchglu"]
            r["fraction_of_copy"] = z["gbps"] / bw
            rows.append(r)
            print(f"{name:<15} {t:>3} {s['block_us']:>9.1f} {z['block_us']:>8.1f} "
                  f"{z['speedup']:>7.2f}x {z['gbps']:>6.0f} {100 * r['fraction_of_copy']:>6.1f}%",
                  flush=True)  # fmt: skip
            for label in sweep:
                v = r["device_time"][label]
                kern = "  ".join(f"{b['mean_us']:.1f}" for b in v["by_name"])
                print(f"  {label:<60} {v['block_us']:>8.1f} {v['speedup']:>7.2f}x  ({kern})",
                      flush=True)  # fmt: skip
            mx.clear_cache()
    if args.json:
        results = {"copy_bandwidth_gbps": bw, "timing": "device (CUPTI)", "rows": rows,
                   "tuning": tuning, "sweep": list(sweep)}  # fmt: skip
        capsule.write(capsule.make("moe_block_device", results), args.json)
        print(f"capsule: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
