"""Patched decoding on a model sharded over ranks with MLX's distributed engine.

    mlx.launch --backend ring -n 2 --python "$(which python)" benchmarks/sharded_decode.py \
        --family qwen3_moe --size tiny --json OUT          # CPU, two local ranks on loopback
    mlx.launch --backend nccl -n 2 --python "$(which python)" benchmarks/sharded_decode.py \
        --family qwen3_moe --size full --json OUT          # two NVIDIA GPUs

Every rank builds the same model (the trained tiny fixture, quantized, or a full-size random
zoo model), decodes greedily unsharded and unpatched (the reference; tiny only), then shards it
with mlx-lm's ``model.shard(group)`` (tensor parallel: attention heads and expert intermediate
slices per rank, partial sums met by ``all_sum``), patches it with zmlx and decodes again,
timing (median of ``--runs``) the sharded stock model, the sharded patched model and the
patched model decoded through compiled steps (:func:`zmlx.decode.compile_decode`), with
teacher-forced top-1 agreement against the sharded stock logits over the stock sequence.
Rank 0 writes a capsule with the rank count, the backend, tok/s, agreement and token identity.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import mlx.core as mx

PATTERNS = ["moe_block", "switch_glu", "swiglu_mlp"]


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="qwen3_moe")
    p.add_argument("--size", default="tiny", choices=["tiny", "full"])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="timed decodes per variant (median)")
    p.add_argument(
        "--backend",
        default="ring",
        help="recorded when mlx.launch's environment does not say (it takes --backend itself)",
    )
    p.add_argument("--json", help="rank 0 writes the capsule here")
    return p


def _model(family: str, size: str):
    import contextlib
    import io
    import json

    from mlx_lm.utils import quantize_model

    from zmlx.models import build, fixtures

    if size == "tiny":
        # The tiny fixture's 64-wide layers split into 32-wide shards: group size 32 keeps
        # every shard a whole number of quantization groups.
        if family in fixtures.available():
            model, _ = fixtures.load(family)
            config = json.loads((fixtures.path(family) / "config.json").read_text())
        else:
            from zmlx.models import config_of

            model = build(family, "tiny")
            config = config_of(model)
        with contextlib.redirect_stdout(io.StringIO()):
            model, _ = quantize_model(model, config, group_size=32, bits=4)
        return model
    return build(family, size, quant="mxfp4" if family == "gpt_oss" else "4bit")


def _decode(model, prompt, n, runs: int = 1):
    """Greedy tokens and the median decode rate (tok/s after the first token) of ``runs``."""
    from mlx_lm.generate import generate_step

    rates = []
    for _ in range(runs):
        toks, t_first = [], None
        for tok, _ in generate_step(mx.array(prompt), model, max_tokens=n):
            toks.append(int(tok))
            if t_first is None:
                t_first = time.perf_counter()
        rates.append((len(toks) - 1) / (time.perf_counter() - t_first))
    return toks, statistics.median(rates), rates


def _backend(given: str) -> str:
    """The backend mlx.launch set up (its environment says), else ``--backend``."""
    if "NCCL_HOST_IP" in os.environ:
        return "nccl"
    if "MLX_HOSTFILE" in os.environ:
        return "ring"
    return given


def _agreement(ref: mx.array, got: mx.array) -> float:
    return mx.mean(mx.argmax(ref, -1) == mx.argmax(got, -1)).item()


def _compiled(model, prompt, args, stock, ref, seq) -> dict:
    """The patched model decoded through compiled steps (the collectives inside the trace);
    an error is recorded rather than raised, so the eager results still make a capsule."""
    from zmlx.bench.lm import teacher_forced
    from zmlx.decode import compile_decode

    try:
        decoder = compile_decode(model)
        _decode(decoder, prompt, 8)
        toks, tps, runs = _decode(decoder, prompt, args.tokens, args.runs)
        return {"error": None, "tok_s": tps, "runs": runs, "equals_sharded_stock": toks == stock,
                "top1_agreement": _agreement(ref, teacher_forced(decoder, seq)),
                "traces": decoder.traces, "steps": decoder.steps}  # fmt: skip
    except Exception as e:  # noqa: BLE001 - recorded in the capsule
        return {"error": f"{type(e).__name__}: {e}"}


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    from zmlx.bench import capsule
    from zmlx.bench.lm import teacher_forced
    from zmlx.patch import patch

    group = mx.distributed.init()
    model = _model(args.family, args.size)
    if not hasattr(model, "shard"):
        raise SystemExit(f"[sharded_decode] mlx-lm's {args.family} has no shard()")
    prompt = [1, 5, 9, 13, 200, 31]
    reference = _decode(model, prompt, args.tokens)[0] if args.size == "tiny" else None
    model.shard(group)
    _decode(model, prompt, 8)  # warm-up
    stock, stock_tps, stock_runs = _decode(model, prompt, args.tokens, args.runs)
    seq = prompt + stock
    ref = teacher_forced(model, seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=PATTERNS)
    _decode(model, prompt, 8)
    patched, patched_tps, patched_runs = _decode(model, prompt, args.tokens, args.runs)
    top1 = _agreement(ref, teacher_forced(model, seq))
    compiled = _compiled(model, prompt, args, stock, ref, seq)
    result = {
        "family": args.family, "size": args.size, "ranks": group.size(),
        "rank": group.rank(), "patch": report.to_dict(), "tokens": args.tokens,
        "stock_tok_s": stock_tps, "patched_tok_s": patched_tps,
        "stock_runs": stock_runs, "patched_runs": patched_runs,
        "patched_speedup": patched_tps / stock_tps,
        "patched_equals_sharded_stock": patched == stock,
        "patched_equals_unsharded": None if reference is None else patched == reference,
        "top1_agreement_vs_sharded_stock": top1, "compiled": compiled,
    }  # fmt: skip
    if compiled["error"] is None:
        compiled["speedup"] = compiled["tok_s"] / stock_tps
    print(f"rank {group.rank()}/{group.size()}: replaced {report.count}, "
          f"sharded stock {stock_tps:.1f} tok/s, patched {patched_tps:.1f} tok/s, "
          f"patched + compiled {compiled.get('tok_s', float('nan')):.1f} tok/s "
          f"{compiled['error'] or ''}; "
          f"teacher-forced top-1 {100 * top1:.1f}%, identical to sharded stock: "
          f"{patched == stock}, to unsharded: {result['patched_equals_unsharded']}")  # fmt: skip
    if group.rank() == 0 and args.json:
        result["distributed_backend"] = _backend(args.backend)
        capsule.write(capsule.make("sharded_decode", result), args.json)
    if args.size == "tiny":
        ok = result["patched_equals_sharded_stock"] and result["patched_equals_unsharded"]
    else:  # random full-size weights: the bar is teacher-forced agreement
        ok = top1 >= 0.99
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
