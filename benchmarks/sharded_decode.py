"""Patched decoding on a model sharded over ranks with MLX's distributed engine.

    mlx.launch --backend ring -n 2 --python "$(which python)" benchmarks/sharded_decode.py \
        --family qwen3_moe --size tiny --json OUT          # CPU, two local ranks on loopback
    mlx.launch --backend nccl -n 2 --python "$(which python)" benchmarks/sharded_decode.py \
        --family qwen3_moe --size full --json OUT          # two NVIDIA GPUs

Every rank builds the same model (the trained tiny fixture, quantized, or a full-size random
zoo model), decodes greedily unsharded and unpatched (the reference; tiny only), then shards it
with mlx-lm's ``model.shard(group)`` (tensor parallel: attention heads and expert intermediate
slices per rank, partial sums met by ``all_sum``), patches it with zmlx and decodes again,
timing the decode of both the sharded stock and the sharded patched model. Rank 0 writes a
capsule with the rank count, the backend, tok/s and token identity.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--backend", default="ring", help="the backend mlx.launch was given (recorded)")
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


def _decode(model, prompt, n):
    from mlx_lm.generate import generate_step

    toks, t_first = [], None
    for tok, _ in generate_step(mx.array(prompt), model, max_tokens=n):
        toks.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
    return toks, (len(toks) - 1) / (time.perf_counter() - t_first)


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    from zmlx.bench import capsule
    from zmlx.patch import patch

    group = mx.distributed.init()
    model = _model(args.family, args.size)
    if not hasattr(model, "shard"):
        raise SystemExit(f"[sharded_decode] mlx-lm's {args.family} has no shard()")
    prompt = [1, 5, 9, 13, 200, 31]
    reference = _decode(model, prompt, args.tokens)[0] if args.size == "tiny" else None
    model.shard(group)
    stock, stock_tps = _decode(model, prompt, args.tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=PATTERNS)
    patched, patched_tps = _decode(model, prompt, args.tokens)
    result = {
        "family": args.family, "size": args.size, "ranks": group.size(),
        "rank": group.rank(), "patch": report.to_dict(),
        "stock_tok_s": stock_tps, "patched_tok_s": patched_tps,
        "patched_equals_sharded_stock": patched == stock,
        "patched_equals_unsharded": None if reference is None else patched == reference,
        "top1_agreement_vs_sharded_stock": sum(a == b for a, b in zip(patched, stock)) / len(stock),
    }  # fmt: skip
    print(f"rank {group.rank()}/{group.size()}: replaced {report.count}, "
          f"sharded stock {stock_tps:.1f} tok/s, patched {patched_tps:.1f} tok/s, "
          f"identical to sharded stock: {patched == stock}, to unsharded: "
          f"{result['patched_equals_unsharded']}")  # fmt: skip
    if group.rank() == 0 and args.json:
        result["distributed_backend"] = args.backend
        capsule.write(capsule.make("sharded_decode", result), args.json)
    ok = result["patched_equals_sharded_stock"] and result["patched_equals_unsharded"] is not False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
