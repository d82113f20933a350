"""One zmlx MoE launch at Qwen3-30B-A3B's decode shapes, for Nsight Compute to profile.

    ncu --kernel-name regex:zx_ --launch-skip 2 --launch-count 2 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python benchmarks/ncu_target.py [--op swiglu|combine|qmv] [--tokens 1]

Runs the op a few times (the first launches build the kernel), with the fallback notes on, so
a reference path taken instead of the kernel is printed rather than profiled by mistake.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("ZMLX_VERBOSE", "1")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from zmlx.kernels import moe as K  # noqa: E402
from zmlx.kernels import quant as Q  # noqa: E402
from zmlx.kernels.quant_specs import random_qweight  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", default="swiglu", choices=["swiglu", "combine", "qmv"])
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    bf, t = mx.bfloat16, args.tokens
    d, i_dim, e, k, gs = 2048, 768, 128, 8, 64
    idx = mx.array(rng.integers(0, e, (t, k)).astype(np.uint32))
    x = mx.random.normal((t, d)).astype(bf)
    if args.op == "swiglu":
        g = random_qweight(rng, (e, i_dim, d), bf, 4, gs)
        u = random_qweight(rng, (e, i_dim, d), bf, 4, gs)

        def run():
            return K.gather_qmv_swiglu(x, *g, *u, idx, gs, 4, verbose=True)
    elif args.op == "combine":
        dn = random_qweight(rng, (e, d, i_dim), bf, 4, gs)
        h = mx.random.normal((t, k, i_dim)).astype(bf)
        wts = mx.full((t, k), 1.0 / k, dtype=bf)

        def run():
            return K.gather_qmv_combine(h, *dn, idx, wts, gs, 4, verbose=True)
    else:
        wq = random_qweight(rng, (4096, d), bf, 4, gs)

        def run():
            return Q.qmv(x, *wq, gs, 4, verbose=True)

    for _ in range(args.runs):
        mx.eval(run())
    mx.synchronize()
    print(f"{args.op}: {args.runs} runs done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
