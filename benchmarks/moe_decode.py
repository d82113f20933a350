"""End-to-end decode and prefill: stock mlx-lm against the same model patched by zmlx.

    python benchmarks/moe_decode.py [--families qwen3_moe ...] [--tokens 256] [--runs 3]
                                    [--size full] [--json OUT]

For each family a full-size model with random 4-bit weights is built from the zoo (no
download). In one process, interleaved run by run (stock, patched, stock, ...): greedy decode
of ``--tokens`` tokens after a 64-token prompt (tok/s of the decode phase, median of
``--runs``), and a forward over a 1024-token prompt (prefill tok/s). Fidelity: teacher-forced
top-1 agreement of the patched model with stock over the stock greedy sequence, position by
position through the decode path.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings

import mlx.core as mx

from zmlx.bench import capsule
from zmlx.core.backend import device_name
from zmlx.models import build
from zmlx.patch import patch, unpatch

QUANTS = {"gpt_oss": "mxfp4"}
PATTERNS = ["moe_block", "switch_glu", "swiglu_mlp"]


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=["qwen3_moe"])
    p.add_argument("--size", default="full", choices=["full", "tiny"])
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--prefill", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--agreement-positions", type=int, default=256)
    p.add_argument("--patterns", nargs="+", default=PATTERNS)
    p.add_argument("--json", help="write the capsule here")
    return p


def decode_run(model, prompt: mx.array, n: int) -> tuple[float, list[int]]:
    """Decode tok/s over ``n`` greedy tokens (after the first, which includes prefill)."""
    from mlx_lm.generate import generate_step

    toks, t_first = [], None
    for tok, _ in generate_step(prompt, model, max_tokens=n):
        toks.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
    return (len(toks) - 1) / (time.perf_counter() - t_first), toks


def prefill_run(model, prompt: mx.array) -> float:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    mx.synchronize()
    t0 = time.perf_counter()
    mx.eval(model(prompt[None], cache=cache))
    mx.synchronize()
    return prompt.size / (time.perf_counter() - t0)


def agreement(model, seq: list[int], positions: int, patterns) -> dict:
    """Teacher-forced top-1 agreement (patched vs stock) over ``seq``, one token per step."""
    from mlx_lm.models.cache import make_prompt_cache

    seq = seq[: positions + 1]

    def tops():
        cache = make_prompt_cache(model)
        out = []
        for i in range(len(seq) - 1):
            logits = model(mx.array([[seq[i]]]), cache=cache)
            out.append(mx.argmax(logits[0, -1]).item())
        return out

    stock = tops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch(model, patterns=patterns)
    fused = tops()
    unpatch(model)
    same = sum(a == b for a, b in zip(stock, fused))
    return {"positions": len(stock), "top1_agree": same / max(1, len(stock))}


def run_family(family: str, args) -> dict:
    gc.collect()
    mx.clear_cache()
    t0 = time.perf_counter()
    model = build(family, args.size, quant=QUANTS.get(family, "4bit"), num_layers=args.num_layers)
    build_s = time.perf_counter() - t0
    vocab = model.args.vocab_size
    key = mx.random.key(7)
    prompt = mx.random.randint(1, vocab, (args.prompt,), key=key)
    long_prompt = mx.random.randint(1, vocab, (args.prefill,), key=mx.random.key(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=args.patterns)
    unpatch(model)
    # Warm-up both (kernel builds, MLX's own JIT).
    decode_run(model, prompt, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch(model, patterns=args.patterns)
    decode_run(model, prompt, 8)
    prefill_run(model, long_prompt[:64])
    unpatch(model)
    prefill_run(model, long_prompt[:64])
    runs = {"stock": {"decode": [], "prefill": []}, "zmlx": {"decode": [], "prefill": []}}
    stock_tokens = None
    for _ in range(args.runs):
        for variant in ("stock", "zmlx"):
            if variant == "zmlx":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    patch(model, patterns=args.patterns)
            tps, toks = decode_run(model, prompt, args.tokens)
            runs[variant]["decode"].append(tps)
            runs[variant]["prefill"].append(prefill_run(model, long_prompt))
            if variant == "stock" and stock_tokens is None:
                stock_tokens = toks
            if variant == "zmlx":
                runs[variant].setdefault("tokens_equal_stock", []).append(toks == stock_tokens)
                unpatch(model)

    def rate(xs):
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}

    phases = {}
    for phase in ("decode", "prefill"):
        st, pa = rate(runs["stock"][phase]), rate(runs["zmlx"][phase])
        phases[phase] = {"stock": st, "patched": pa, "speedup": pa["median"] / st["median"]}
    fid = agreement(model, stock_tokens, args.agreement_positions, args.patterns)
    result = {
        "model": family, "size": args.size, "quant": QUANTS.get(family, "4bit"),
        "build_s": build_s, "patch_report": report.to_dict(), **phases,
        "tokens_equal_stock": runs["zmlx"].get("tokens_equal_stock", []), "fidelity": fid,
        "decode_tokens": args.tokens, "prompt_tokens": args.prompt, "prefill_tokens": args.prefill,
    }  # fmt: skip
    del model
    return result


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    rows = []
    print(f"device: {device_name()}")
    for fam in args.families:
        r = run_family(fam, args)
        rows.append(r)
        d, p = r["decode"], r["prefill"]
        print(f"{fam:<14} decode {d['stock']['median']:7.1f} -> {d['patched']['median']:7.1f} tok/s "
              f"({d['speedup']:.2f}x)  prefill {p['stock']['median']:8.1f} -> "
              f"{p['patched']['median']:8.1f} tok/s ({p['speedup']:.2f}x)  top-1 agree "
              f"{100 * r['fidelity']['top1_agree']:.1f}%  [{r['patch_report']['patterns']}]")  # fmt: skip
    if args.json:
        capsule.write(capsule.make("model_decode", {"rows": rows}), args.json)
        print(f"capsule: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
