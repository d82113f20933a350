"""Fidelity of zmlx decoding on the trained fixtures: stock mlx-lm against patched + compiled.

    python benchmarks/fixture_decode.py [--families ...] [--tokens 64] [--json OUT]

For each trained fixture (quantized as it ships, see ``zmlx.models.fixtures.load_quantized``):
greedy decoding of ``--tokens`` tokens from the fixture's prompt, stock against the model
patched with ``--patterns`` and decoded through :func:`zmlx.decode.compile_decode`; then
teacher-forced logits over the stock sequence (max |difference|, top-1 agreement). Both are
also compared with the same stock decoding on MLX's CPU backend in the same process (the
reference that does not depend on the GPU backend). Also records which modules were patched
and how many kernel launches the patched run issued.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx

from zmlx.bench import capsule
from zmlx.bench.lm import teacher_forced
from zmlx.core.backend import device_name
from zmlx.core.kernel import launch_count
from zmlx.decode import compile_decode
from zmlx.models import fixtures
from zmlx.models.build import backend_group_size
from zmlx.patch import patch, unpatch

PATTERNS = ["moe_block", "switch_glu", "swiglu_mlp", "qk_norm_rope"]


def run_family(family: str, args) -> dict:
    from mlx_lm.generate import generate_step

    model, _ = fixtures.load_quantized(family)
    if args.dtype != "float32":  # the fixtures' float weights (norms, embeddings...) and so
        model.set_dtype(getattr(mx, args.dtype))  # the activations, in a half dtype
    prompt = mx.array(fixtures.record(family)["prompt_tokens"])
    step = {"max_tokens": args.tokens, "prefill_step_size": args.prefill_step}
    stock = [int(t) for t, _ in generate_step(prompt, model, **step)]
    cpu = None
    if args.cpu:
        with mx.stream(mx.cpu):
            cpu = [int(t) for t, _ in generate_step(prompt, model, stream=mx.cpu, **step)]
    more = [mx.array(p) for p in fixtures.PROMPTS[: max(0, args.prompts - 1)]]
    stock_more = [[int(t) for t, _ in generate_step(p, model, **step)] for p in more]
    seq = [int(t) for t in prompt.tolist()][-8:] + stock
    ref = teacher_forced(model, seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=args.patterns)
    decoder = compile_decode(model, args.attention)
    n0 = launch_count()
    fused = [int(t) for t, _ in generate_step(prompt, decoder, **step)]
    launches = launch_count() - n0
    extra = [[int(t) for t, _ in generate_step(p, decoder, **step)] == want
             for p, want in zip(more, stock_more)]  # fmt: skip
    got = teacher_forced(decoder, seq)
    unpatch(model)
    first_diff = next((i for i, (a, b) in enumerate(zip(stock, fused)) if a != b), None)
    return {
        "family": family, "tokens": args.tokens, "dtype": args.dtype,
        "identical": stock == fused and all(extra), "prompts": 1 + len(extra),
        "prompt_identical": [stock == fused, *extra],
        "first_difference": first_diff,
        "stock_equals_cpu": None if cpu is None else stock == cpu,
        "zmlx_equals_cpu": None if cpu is None else fused == cpu, "stock_head": stock[:8],
        "zmlx_head": fused[:8], "cpu_head": None if cpu is None else cpu[:8],
        "group_size": backend_group_size() or 64, "patched": report.patterns(),
        "kernel_launches": launches, "compiled_steps": decoder.steps,
        "max_logit_diff": mx.abs(ref - got).max().item(),
        "top1_agree": mx.mean(mx.argmax(ref, -1) == mx.argmax(got, -1)).item(),
    }  # fmt: skip


def _child(fam: str, args, folder: str) -> dict:
    """Run one family in a child process with the same options and return its row."""
    out = os.path.join(folder, f"{fam}.json")
    cmd = [
        sys.executable,
        __file__,
        "--families",
        fam,
        "--json",
        out,
        "--tokens",
        str(args.tokens),
        "--patterns",
        *args.patterns,
        "--attention",
        args.attention,
        "--dtype",
        args.dtype,
        "--prefill-step",
        str(args.prefill_step),
        "--prompts",
        str(args.prompts),
    ]
    cmd += [] if args.cpu else ["--no-cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if not os.path.exists(out):
        raise RuntimeError(f"[fixture_decode] {fam} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.load(open(out))["results"]["rows"][0]


def _rows(args):
    """Each family's row, in order: here, or with ``--jobs`` from child processes."""
    if args.jobs <= 1 or len(args.families) == 1:
        for fam in args.families:
            yield run_family(fam, args)
        return
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_child, fam, args, folder) for fam in args.families]
        for f in futures:
            yield f.result()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=fixtures.available())
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=1,
                   help="the fixture's own prompt, then up to 5 short ones (fixtures.PROMPTS)")  # fmt: skip
    p.add_argument("--patterns", nargs="+", default=PATTERNS)
    p.add_argument("--attention", default="auto", choices=["auto", "zmlx", "stock"])
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="activation dtype (the fixtures are float32)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="families decoded at once, one process each (kernel compilation is CPU-bound)",
    )
    p.add_argument(
        "--prefill-step",
        type=int,
        default=2048,
        help="prompt tokens per prefill step (1: every token through the decode path; MLX's "
        "CUDA quantized_matmul has no kernel for the tiny fixtures' bfloat16 prefill shapes)",
    )
    p.add_argument(
        "--no-cpu",
        dest="cpu",
        action="store_false",
        help="skip the stock decoding on MLX's CPU stream (in a CUDA process such CPU-stream "
        "runs have stalled for minutes)",
    )
    p.add_argument("--json", help="write the capsule here")
    args = p.parse_args(argv)
    print(f"device: {device_name()}")
    rows = []
    for r in _rows(args):
        fam = r["family"]
        rows.append(r)
        if args.json:  # after every family, so a cut-short run keeps what it measured
            capsule.write(capsule.make("fixture_decode", {"rows": rows,
                                                          "attention": args.attention}), args.json)  # fmt: skip
        print(f"{fam:<14} stock==cpu {r['stock_equals_cpu']!s:<5} zmlx==cpu "
              f"{r['zmlx_equals_cpu']!s:<5} identical={r['identical']!s:<5} first diff {r['first_difference']} "
              f"max|dlogit| {r['max_logit_diff']:.4f} top-1 {100 * r['top1_agree']:.1f}% "
              f"launches {r['kernel_launches']} patched {r['patched']}")  # fmt: skip
    if args.json:
        print(f"capsule: {args.json}")
    return 0 if all(r["identical"] or r["zmlx_equals_cpu"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
