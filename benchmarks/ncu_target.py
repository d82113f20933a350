"""One zmlx MoE launch at a model's decode shapes (Qwen3-30B-A3B's by default), for Nsight
Compute to profile.

    ncu --kernel-name regex:zx_ --launch-skip 2 --launch-count 2 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python benchmarks/ncu_target.py [--op swiglu|combine|experts|gather|qmv|router|route] \\
        [--tokens 1] [--router-bits 8] [--prenorm] \\
        [--model glm_4_7_flash] [--set zmlx.MODULE.NAME=VALUE ...]

Runs the op a few times (the first launches build the kernel), with the fallback notes on, so
a reference path taken instead of the kernel is printed rather than profiled by mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("ZMLX_VERBOSE", "1")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from zmlx.bench import settings  # noqa: E402
from zmlx.kernels import moe as K  # noqa: E402
from zmlx.kernels import quant as Q  # noqa: E402
from zmlx.kernels.quant_specs import random_qweight  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--op",
        default="swiglu",
        choices=["swiglu", "combine", "experts", "gather", "qmv", "router", "route"],
    )
    p.add_argument(
        "--router-bits",
        type=int,
        default=8,
        help="router: its weight's bits (mlx-lm quantizes MoE routers to 8)",
    )
    p.add_argument(
        "--prenorm",
        action="store_true",
        help="router: with the post-attention norm folded in (moe_residual)",
    )
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from moe_block import MODELS, QUANT

    p.add_argument("--model", default="qwen3_30b_a3b", choices=list(MODELS))
    p.add_argument(
        "--experts",
        default=None,
        metavar="E0,E1,...",
        help="every token's experts (default: K drawn at random per token)",
    )
    p.add_argument("--weights", default="host", choices=["host", "device"],
                   help="where the packed words live: host (an array made from numpy: MLX's "
                        "unified memory, as mx.load gives) or device (a GPU op's output)")  # fmt: skip
    settings.add_argument(p)
    args = p.parse_args(argv)
    settings.apply_command_line(args.set, "ncu_target")
    rng = np.random.default_rng(0)
    bf, t = mx.bfloat16, args.tokens
    d, i_dim, e, k, quant = MODELS[args.model]
    q = QUANT[quant]
    gs, bits, mode = q["group_size"], q["bits"], q["mode"]
    oai = args.model.startswith("gpt_oss")
    idx = mx.array(np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.uint32))
    if args.experts:
        chosen = [int(v) for v in args.experts.split(",")]
        if len(chosen) != k or not all(0 <= v < e for v in chosen):
            p.error(f"[ncu_target] expected {k} experts in [0, {e}), got {args.experts!r}")
        idx = mx.array(np.array([chosen] * t, dtype=np.uint32))
    x = mx.random.normal((t, d)).astype(bf)

    def place(wq):
        if args.weights == "host" or wq[0] is None:
            return wq
        w = wq[0] + 0  # a GPU op's output: device memory; wq[0] stays alive, so no donation
        mx.eval(w)
        return (w, *wq[1:])

    if args.op == "swiglu":
        g = place(random_qweight(rng, (e, i_dim, d), bf, bits, gs, mode))
        u = place(random_qweight(rng, (e, i_dim, d), bf, bits, gs, mode))
        bias = [mx.random.normal((e, i_dim)).astype(bf) for _ in range(2)] if oai else [None] * 2
        act = "swiglu_oai" if oai else "swiglu"

        def run():
            return K.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, mode, *bias, act, verbose=True)
    elif args.op == "experts":  # gate/up and combine (moe_experts: one launch where fused)
        g = place(random_qweight(rng, (e, i_dim, d), bf, bits, gs, mode))
        u = place(random_qweight(rng, (e, i_dim, d), bf, bits, gs, mode))
        dn = place(random_qweight(rng, (e, d, i_dim), bf, bits, gs, mode))
        wts = mx.full((t, k), 1.0 / k, dtype=bf)
        act = "swiglu_oai" if oai else "swiglu"

        def run():
            return K.moe_experts(x, *g, *u, *dn, idx, wts, gs, bits, mode, activation=act,
                                 verbose=True)  # fmt: skip
    elif args.op == "gather":  # the down projection alone, one row of h per slot
        dn = place(random_qweight(rng, (e, d, i_dim), bf, bits, gs, mode))
        h = mx.random.normal((t, k, i_dim)).astype(bf)

        def run():
            return K.gather_qmv(h, *dn, idx, gs, bits, mode, verbose=True)
    elif args.op == "combine":
        dn = place(random_qweight(rng, (e, d, i_dim), bf, bits, gs, mode))
        h = mx.random.normal((t, k, i_dim)).astype(bf)
        wts = mx.full((t, k), 1.0 / k, dtype=bf)
        bias = mx.random.normal((e, d)).astype(bf) if oai else None

        def run():
            return K.gather_qmv_combine(h, *dn, idx, wts, gs, bits, mode, bias, verbose=True)
    elif args.op in ("router", "route"):  # the router matvec + routing / the routing alone
        from zmlx.kernels import routers as R

        rule = R.RouterRule("softmax_topk", k, norm=True)
        w = mx.random.normal((e, d)).astype(bf) * 0.05
        rq = mx.quantize(w, group_size=64, bits=args.router_bits)
        logits = (x @ w.T).astype(bf)
        nw = mx.ones((d,), dtype=bf)
        a = mx.random.normal((t, d)).astype(bf)
        pre = dict(prenorm=(a, nw, 1e-6), return_normed=True) if args.prenorm else {}

        def run():
            if args.op == "route":
                return R.route(logits, rule, verbose=True)
            return R.router_fused(x, rq[0], rule, scales=rq[1], biases=rq[2], group_size=64,
                                  bits=args.router_bits, verbose=True, **pre)  # fmt: skip
    else:
        wq = place(random_qweight(rng, (4096, d), bf, bits, gs, mode))

        def run():
            return Q.qmv(x, *wq, gs, bits, mode, verbose=True)

    for _ in range(args.runs):
        mx.eval(run())
    mx.synchronize()
    print(f"{args.op}: {args.runs} runs done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
