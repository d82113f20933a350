"""Build full-size zoo models (random weights) and record build time and peak memory.

    python benchmarks/zoo_build.py [--families qwen3_moe lfm2_moe glm4_moe_lite gpt_oss]
                                   [--quant 4bit] [--json OUT]

For each family: ``zmlx.models.build(name, "full", quant)`` from an empty memory pool, timed to
the end of evaluation, with ``mx.get_peak_memory()`` reset before each build. Then one
prefill of 16 tokens and one decode step check that the model runs (finite logits) and give a
first rough time per step. The bar: each of the four default families
builds in about a minute within 80 GB on an H100.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import mlx.core as mx

from zmlx.bench import capsule
from zmlx.core.backend import device_name
from zmlx.models import QUANT, build, estimate_bytes, parameter_bytes

DEFAULT_FAMILIES = ("qwen3_moe", "lfm2_moe", "glm4_moe_lite", "gpt_oss")


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES))
    p.add_argument("--quant", default="4bit", choices=[*QUANT, "none"])
    p.add_argument("--num-layers", type=int, default=None, help="override the depth")
    p.add_argument("--size", default="full", choices=["full", "tiny"], help="tiny: a smoke run")
    p.add_argument("--json", help="write the capsule here (default: print only)")
    return p


def _forward_check(model) -> dict:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    prompt = mx.arange(1, 17)[None]
    t0 = time.perf_counter()
    logits = model(prompt, cache=cache)
    mx.eval(logits)
    t1 = time.perf_counter()
    step = model(mx.argmax(logits[:, -1:], axis=-1), cache=cache)
    mx.eval(step)
    t2 = time.perf_counter()
    return {
        "finite": bool(mx.all(mx.isfinite(step)).item()),
        "prefill16_s": t1 - t0,
        "first_decode_s": t2 - t1,
    }


def run_one(family: str, size: str, quant: str | None, num_layers: int | None) -> dict:
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    expected = estimate_bytes(family, size, quant, num_layers=num_layers)
    mx.clear_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    model = build(family, size, quant, num_layers=num_layers)
    build_s = time.perf_counter() - t0
    row = {
        "family": family,
        "size": size,
        "quant": quant,
        "num_layers": num_layers,
        "build_s": build_s,
        "peak_memory_bytes": mx.get_peak_memory(),
        "active_memory_bytes": mx.get_active_memory(),
        "parameter_bytes": parameter_bytes(model),
        "estimated_bytes": expected,
    }
    row.update(_forward_check(model))
    del model
    return row


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    quant = None if args.quant == "none" else args.quant
    print(f"device={device_name()} size={args.size} quant={quant}")
    print(f"{'family':<15} {'build s':>8} {'peak GB':>8} {'params GB':>9} {'finite':>6}")
    rows = []
    for family in args.families:
        row = run_one(family, args.size, quant, args.num_layers)
        rows.append(row)
        print(
            f"{family:<15} {row['build_s']:>8.1f} {row['peak_memory_bytes'] / 1e9:>8.1f} "
            f"{row['parameter_bytes'] / 1e9:>9.1f} {row['finite']!s:>6}",
            flush=True,
        )
    cap = capsule.make("zoo_build", {"size": args.size, "quant": quant, "builds": rows})
    if args.json:
        capsule.write(cap, args.json)
        print(f"capsule: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
