import sys
import mlx.core as mx
import numpy as np
sys.path.insert(0, "benchmarks")
from moe_block import MODELS, _case_parts
rng = np.random.default_rng(0)
for name in sys.argv[1:] or ["qwen3_30b_a3b"]:
    d, i, e, k, quant = MODELS[name]
    stock, fused, glu, x, inds, scores = _case_parts(name, d, i, e, k, quant, 1, rng)
    for label, fn in (("stock", stock), ("fused", fused)):
        try:
            y = fn(x, inds, scores); mx.eval(y); mx.synchronize()
            print(name, label, "ok", flush=True)
        except Exception as ex:
            print(name, label, "FAILED", ex, flush=True)
            raise
