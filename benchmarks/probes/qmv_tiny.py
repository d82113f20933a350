"""Stock quantized_matmul / gather_qmm on the GPU against MLX's CPU backend at fixture sizes."""

import json
import os
import sys

import mlx.core as mx

rows = []
mx.random.seed(0)
for m, k, n in [
    (1, 64, 64),
    (1, 64, 256),
    (1, 128, 128),
    (1, 256, 256),
    (1, 512, 512),
    (1, 2048, 768),
]:
    for dt in (mx.float32, mx.bfloat16):
        x = mx.random.normal((m, k)).astype(dt)
        w = mx.random.normal((n, k)) * 0.05
        wq, s, b = mx.quantize(w, group_size=64, bits=4)
        s, b = s.astype(dt), b.astype(dt)
        r = {"m": m, "k": k, "n": n, "dtype": str(dt)}
        try:
            g = mx.quantized_matmul(
                x, wq, s, b, transpose=True, group_size=64, bits=4, stream=mx.gpu
            )
            c = mx.quantized_matmul(
                x, wq, s, b, transpose=True, group_size=64, bits=4, stream=mx.cpu
            )
            d = mx.dequantize(wq, s, b, group_size=64, bits=4, stream=mx.cpu).astype(mx.float32)
            f = x.astype(mx.float32) @ d.T
            r.update(
                gpu_vs_cpu=mx.abs(g.astype(mx.float32) - c.astype(mx.float32)).max().item(),
                gpu_vs_f32=mx.abs(g.astype(mx.float32) - f).max().item(),
                cpu_vs_f32=mx.abs(c.astype(mx.float32) - f).max().item(),
                scale=mx.abs(f).max().item(),
            )
        except Exception as e:
            r["error"] = str(e)[:200]
        rows.append(r)
        print(r)
json.dump(rows, open(os.path.join(sys.argv[1], "qmv_tiny.json"), "w"), indent=1)
