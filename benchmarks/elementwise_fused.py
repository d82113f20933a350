"""A fused 5-op elementwise expression against the same expression in stock MLX ops.

    python benchmarks/elementwise_fused.py [--n 16777216] [--json OUT]

Expression: ``x * sigmoid(x) * y + z * 0.5`` on float16 (sigmoid, 3 multiplies, 1 add).
Variants, timed interleaved in one process: stock MLX eager ops (one kernel per op), stock
MLX under ``mx.compile`` (MLX's own fusion), and ``zmlx.elementwise`` (one kernel). Reports
time per call, achieved bandwidth (3 inputs read + 1 output written) and the ratio to eager.
"""

from __future__ import annotations

import argparse
import json
import sys

import mlx.core as mx

import zmlx
from zmlx.bench import capsule, compare
from zmlx.testing import assert_close

EXPR = "x * sigmoid(x) * y + z * 0.5"


def stock(x, y, z):
    return x * mx.sigmoid(x) * y + z * 0.5


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2**24, help="elements per input")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--json", help="write the capsule here (default: print only)")
    return p


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    dtype = getattr(mx, args.dtype)
    op = zmlx.elementwise(EXPR, inputs=("x", "y", "z"), name="bench_fused5")
    compiled = mx.compile(stock)
    x, y, z = (mx.random.normal((args.n,), key=mx.random.key(i)).astype(dtype) for i in range(3))
    mx.eval(x, y, z)
    # Correctness first: the fused kernel against the float32 reference.
    got = op(x, y, z)
    want = stock(*(a.astype(mx.float32) for a in (x, y, z))).astype(dtype)
    assert_close(got, want, name="fused5")
    path = op.last_path
    timings = compare(
        {"mlx_eager": stock, "mlx_compile": compiled, "zmlx": op},
        (x, y, z),
        repeats=args.repeats,
        batch=args.batch,
    )
    nbytes = 4 * args.n * x.itemsize
    rows = []
    for name, t in timings.items():
        t["gbps"] = nbytes / (t["median_us"] * 1e-6) / 1e9
        rows.append((name, t["median_us"], t["gbps"], t["speedup"]))
    print(f"{EXPR}  n={args.n} {args.dtype}  zmlx path={path}  device={zmlx.device_name()}")
    print(f"{'variant':<12} {'median us':>10} {'GB/s':>8} {'vs eager':>9}")
    for name, us, gbps, sp in rows:
        print(f"{name:<12} {us:>10.1f} {gbps:>8.0f} {sp:>8.2f}x")
    cap = capsule.make(
        "kernel_bench",
        {
            "expr": EXPR,
            "n": args.n,
            "dtype": args.dtype,
            "bytes_moved": nbytes,
            "zmlx_path": path,
            "timings": timings,
            "zmlx_vs_compile": timings["mlx_compile"]["median_us"] / timings["zmlx"]["median_us"],
        },
    )
    if args.json:
        capsule.write(cap, args.json)
        print(f"capsule: {args.json}")
    else:
        json.dump(cap["results"]["timings"]["zmlx"], sys.stdout)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
