"""mx.quantize and zmlx.quantize on a transposed (non-contiguous) input, against a contiguous copy."""

import json
import os
import sys

import mlx.core as mx
import numpy as np

from zmlx.kernels.quantize import quantize

rows = []
rng = np.random.default_rng(0)
for dt in (mx.float32, mx.bfloat16):
    w = mx.array(rng.normal(size=(256, 6)).astype(np.float32)).astype(dt).T
    wc = mx.contiguous(w)
    for name, fn in (
        ("mx.quantize", lambda a: mx.quantize(a, 128, 8)),
        ("zmlx.quantize", lambda a: quantize(a, 128, 8)),
    ):
        a, b = fn(w), fn(wc)
        mx.eval(a, b)
        rows.append(
            {
                "fn": name,
                "dtype": str(dt),
                "words_equal": bool(mx.array_equal(a[0], b[0]).item()),
                "scales_equal": bool(mx.array_equal(a[1], b[1]).item()),
            }
        )
    cpu = mx.quantize(wc, 128, 8, stream=mx.cpu)
    z = quantize(wc, 128, 8)
    mx.eval(cpu, z)
    rows.append(
        {
            "fn": "zmlx(contiguous) vs mx cpu",
            "dtype": str(dt),
            "words_equal": bool(mx.array_equal(z[0], cpu[0]).item()),
        }
    )
for r in rows:
    print(r)
json.dump(rows, open(os.path.join(sys.argv[1], "qz_transposed.json"), "w"), indent=1)
