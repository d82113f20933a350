"""A short tour of zmlx's kernel authoring API: ``python -m zmlx.demo``.

Builds a fused Mish activation from an expression, a softmax from ``map_reduce`` and a gated
activation with ``@jit``; runs each on this machine's backend, checks it against its reference
and its gradient against MLX autodiff, and shows the kernel source rendered for CUDA and Metal.
"""

from __future__ import annotations

import argparse
import sys

import mlx.core as mx

import zmlx
from zmlx.core.kernel import capture
from zmlx.testing import assert_close


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Tour of the zmlx kernel authoring API")
    p.add_argument("--show-source", action="store_true", help="print the full rendered kernels")
    return p


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    print(f"zmlx {zmlx.__version__} | backend: {zmlx.backend()} | device: {zmlx.device_name()}")
    x = mx.random.normal((4, 1000), key=mx.random.key(0)).astype(mx.bfloat16)

    mish = zmlx.elementwise("x * tanh(softplus(x))", name="mish")
    y = mish(x)
    xf = x.astype(mx.float32)
    assert_close(y, (xf * mx.tanh(mx.logaddexp(xf, 0))).astype(mx.bfloat16))
    g = mx.grad(lambda v: mish(v).astype(mx.float32).sum())(xf)
    g_ref = mx.grad(lambda v: (v * mx.tanh(mx.logaddexp(v, 0))).sum())(xf)
    assert_close(g, g_ref, atol=1e-5)
    print(f"  elementwise  mish(x)                 path={mish.last_path:<9} output and gradient OK")

    softmax = zmlx.map_reduce(
        [("m", "max", "x"), ("s", "sum", "exp(x - m)")], "exp(x - m) / s", name="softmax"
    )
    assert_close(softmax(x), mx.softmax(xf, axis=-1).astype(mx.bfloat16))
    print(f"  map_reduce   softmax(x)              path={softmax.last_path:<9} output OK")

    @zmlx.jit
    def gated(a, b):
        return a * mx.sigmoid(b) * 0.5

    assert_close(gated(x, x), (xf * mx.sigmoid(xf) * 0.5).astype(mx.bfloat16))
    print(f"  jit          a * sigmoid(b) * 0.5    path={gated.op.last_path:<9} output OK")

    rms = zmlx.reduce("sum", map="x * x", finalize="sqrt(acc / n)", name="rms")
    assert_close(rms(x), mx.sqrt((xf * xf).mean(-1)).astype(mx.bfloat16))
    print(f"  reduce       sqrt(mean(x * x))       path={rms.last_path:<9} output OK")

    for b in ("cuda", "metal"):
        with capture(b) as launches:
            mish(x)
        header, body = launches[0].kernel.render(b)
        print(f"\n--- mish kernel body rendered for {b} ({launches[0].kernel.mlx_name(b)}) ---")
        print(body if args.show_source else "\n".join(body.splitlines()[:6]) + "\n  ...")
    print("\nAll checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
