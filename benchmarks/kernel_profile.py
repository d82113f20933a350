"""Device time of every kernel: Qwen3 MoE blocks chained, and one decode step, on a GPU.

    python benchmarks/kernel_profile.py [--moe-blocks 48] [--family qwen3_moe --num-layers 8]
                                        [--json OUT]

MLX gives no per-kernel timing; CUPTI does. This reads CUPTI's kernel records through
PyTorch's profiler (``torch.profiler``, which subscribes to every CUDA context of the
process, MLX's included), so it needs a CUDA build of PyTorch on the GPU machine; zmlx itself
never imports it. For each target, evaluated ``--repeats`` times while recording, per
evaluation: the span from the first kernel's start to the last kernel's end, the time some
kernel is running (``busy``), and per kernel name its count and device time. ``span - busy``
is the device idling between dependent kernels (launch latency inside a CUDA graph, and
waiting for the host); per kernel name, ``idle_before_us`` is that idling just before it.

Targets: ``--moe-blocks N`` chains N Qwen3-30B-A3B MoE blocks at decode (built by
``launch_cost.py``'s part 3): stock mlx-lm, zmlx's expert kernels after stock's routing ops
and after fixed routing, and zmlx's whole block under each of ``--variants``; ``--family F``
profiles one decode step of the full-size model (``--num-layers`` of them), stock mlx-lm
and zmlx (``patch`` + ``compile_decode``) under each of ``--variants`` (the table of
:mod:`zmlx.bench.variants`, shared with ``moe_decode.py``: zmlx's defaults, other patterns or
one setting changed).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import statistics
import sys
import warnings
from pathlib import Path

import mlx.core as mx

from zmlx.bench import capsule
from zmlx.bench import variants as V
from zmlx.core.backend import device_name


def _short(name: str) -> str:
    """A kernel's name without template arguments and argument lists, at most 90 chars."""
    name = re.sub(r"\(.*", "", name)
    while True:  # drop innermost <...> until none remain
        shorter = re.sub(r"<[^<>]*>", "", name)
        if shorter == name:
            break
        name = shorter
    return name.replace("void ", "").strip()[:90]


def profile(run, repeats: int) -> dict:
    """Kernel records of ``repeats`` calls of ``run()`` (each evaluates one target)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run()  # warm: compiled, graphs instantiated
    mx.synchronize()
    marks = []
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            mx.synchronize()
            torch.cuda.synchronize()
            marks.append(len(marks))
            run()
            mx.synchronize()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    if not kernels:
        raise RuntimeError("[kernel_profile] CUPTI recorded no kernels (is torch CUDA-enabled?)")
    return summarize(kernels, repeats)


def summarize(kernels: list[tuple[float, float, str]], repeats: int) -> dict:
    """Per-evaluation span, busy time and kernel count (medians) and per-name totals of
    ``kernels`` (sorted ``(start_us, end_us, name)`` records of ``repeats`` evaluations)."""
    # Split the records into the repeats at the largest gaps (the host syncs between them).
    gaps = sorted(range(1, len(kernels)), key=lambda i: kernels[i][0] - kernels[i - 1][1])
    cuts = sorted(gaps[-(repeats - 1) :]) if repeats > 1 else []
    groups = [kernels[a:b] for a, b in zip([0, *cuts], [*cuts, len(kernels)])]
    per = []
    # The device's idle time just before each kernel (since every earlier kernel of its
    # evaluation ended), by kernel name: where the span exceeds the busy time.
    idle: dict[str, list] = collections.defaultdict(list)
    for g in groups:
        busy, end = 0.0, g[0][0]
        for i, (s, e, n) in enumerate(g):  # union of intervals (overlaps counted once)
            if i:
                idle[_short(n)].append(max(0.0, s - end))
            busy += max(0.0, e - max(s, end))
            end = max(end, e)
        per.append({"span_us": g[-1][1] - g[0][0], "busy_us": busy, "kernels": len(g)})
    by_name: dict[str, list] = collections.defaultdict(list)
    for s, e, n in kernels:
        by_name[_short(n)].append(e - s)
    table = sorted(
        ({"name": n, "per_eval": len(d) / repeats, "mean_us": statistics.mean(d),
          "total_us": sum(d) / repeats, "idle_before_us": sum(idle.get(n, [])) / repeats}
         for n, d in by_name.items()),
        key=lambda r: -r["total_us"],
    )  # fmt: skip
    med = {k: statistics.median(p[k] for p in per) for k in per[0]}
    return {**med, "repeats": repeats, "evals": per, "by_name": table[:40]}


def _print(title: str, p: dict, scale: int = 1) -> None:
    s = f" (per {'block' if scale > 1 else 'eval'}, /{scale})" if scale > 1 else ""
    print(f"  {title}: span {p['span_us'] / scale:8.1f} us, busy {p['busy_us'] / scale:8.1f} us, "
          f"{p['kernels'] / scale:6.1f} kernels{s}", flush=True)  # fmt: skip
    for r in p["by_name"][:12]:
        print(f"      {r['total_us'] / scale:8.2f} us  {r['per_eval'] / scale:5.2f} x "
              f"{r['mean_us']:7.2f} us  idle before {r['idle_before_us'] / scale:6.2f} us  "
              f"{r['name']}", flush=True)  # fmt: skip


def moe_part(n_blocks: int, repeats: int, variants) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from launch_cost import qwen3_moe_blocks

    x, blocks = qwen3_moe_blocks()
    out = {"blocks": n_blocks}
    names = ["stock", "zmlx_stock_router", "zmlx_fixed_routing"]
    names += [v for v in variants if v != "stock" and V.get(v).attention == "auto"]
    for name in names:
        block = blocks.get(name, blocks["zmlx"])

        def chain(x, block=block):
            for _ in range(n_blocks):
                x = block(x)
            return x

        with V.get(name).applied() if name in V.names() else contextlib.nullcontext():
            compiled = mx.compile(chain)
            out[name] = profile(lambda compiled=compiled: mx.eval(compiled(x)), repeats)
        _print(f"moe chain {name}", out[name], n_blocks)
    return out


def micro_part(repeats: int, variants) -> dict:
    """Single launches at Qwen3-30B-A3B's decode shapes, each evaluated on its own: what one
    kernel costs, against a plain reduction over as many bytes (the memory system's pace),
    and with the 8 experts all the same (weights in L2: does the kernel wait for DRAM?)."""
    import numpy as np

    from zmlx.kernels import moe as K
    from zmlx.kernels import quant as Q
    from zmlx.kernels import routes
    from zmlx.kernels.quant_specs import random_qweight

    rng = np.random.default_rng(0)
    bf = mx.bfloat16
    d, i_dim, e, k, gs = 2048, 768, 128, 8, 64
    g = random_qweight(rng, (e, i_dim, d), bf, 4, gs)
    u = random_qweight(rng, (e, i_dim, d), bf, 4, gs)
    dn = random_qweight(rng, (e, d, i_dim), bf, 4, gs)
    wq = random_qweight(rng, (4096, d), bf, 4, gs)
    wk = random_qweight(rng, (512, d), bf, 4, gs)
    wo = random_qweight(rng, (d, 4096), bf, 4, gs)
    wr = random_qweight(rng, (e, d), bf, 8, gs)  # the router, 8-bit
    wl = random_qweight(rng, (151936, d), bf, 4, gs)  # lm_head
    flat = mx.random.normal((2 * 8 * i_dim * d // 4,)).astype(bf)  # bytes of 8 experts' gate+up
    mx.eval(g, u, dn, wq, wk, wo, wr, wl, flat)
    ids = {"distinct": mx.array([[3, 17, 29, 44, 58, 71, 90, 127]], dtype=mx.uint32),
           "same": mx.zeros((1, k), dtype=mx.uint32)}  # fmt: skip
    wts = mx.full((1, k), 1.0 / k, dtype=bf)
    x = mx.random.normal((1, d)).astype(bf)
    h = mx.random.normal((1, k, i_dim)).astype(bf)
    xo = mx.random.normal((1, 4096)).astype(bf)
    cases = {"sum_12.6MB": lambda: flat.sum()}
    for name, (xi, wi, bits) in {"q_4096x2048": (x, wq, 4), "k_512x2048": (x, wk, 4),
                                 "o_2048x4096": (xo, wo, 4), "router8_128x2048": (x, wr, 8),
                                 "lm_head_151936x2048": (x, wl, 4)}.items():  # fmt: skip
        cases[f"stock_qmv_{name}"] = lambda xi=xi, wi=wi, bits=bits: mx.quantized_matmul(
            xi, *wi, True, gs, bits
        )
        cases[f"zmlx_qmv_{name}"] = lambda xi=xi, wi=wi, bits=bits: Q.qmv(xi, *wi, gs, bits)
    cases["stock_qkv_3x"] = lambda: [mx.quantized_matmul(x, *w, True, gs, 4) for w in (wq, wk, wk)]
    cases["zmlx_qkv_proj"] = lambda: Q.qkv_proj(x, *wq, *wk, *wk, gs, 4)
    for name, idx in ids.items():
        cases[f"zmlx_swiglu_{name}"] = lambda idx=idx: K.gather_qmv_swiglu(x, *g, *u, idx, gs, 4)
        cases[f"zmlx_combine_{name}"] = lambda idx=idx: K.gather_qmv_combine(h, *dn, idx, wts,
                                                                            gs, 4)  # fmt: skip
        cases[f"stock_gather_qmm_{name}"] = lambda idx=idx: mx.gather_qmm(
            x[:, None, None], *g, transpose=True, rhs_indices=idx, group_size=gs, bits=4
        )
    for t in (2, 4):
        xt = mx.random.normal((t, d)).astype(bf)
        it = mx.array(rng.integers(0, e, (t, k)).astype(np.uint32))
        cases[f"zmlx_swiglu_T{t}"] = lambda xt=xt, it=it: K.gather_qmv_swiglu(xt, *g, *u, it, gs,
                                                                             4)  # fmt: skip
    out = {}
    for label in ("zmlx", *(v for v in variants if v not in ("stock", "zmlx"))):
        for name, fn in cases.items():
            if label != "zmlx" and not name.startswith("zmlx"):
                continue
            key = name + ("" if label == "zmlx" else label[4:])
            with V.get(label).applied(), routes.bypass():  # the kernels, never routed
                fn()
                p = profile(lambda fn=fn: mx.eval(fn()), repeats)
            out[key] = {"us": p["busy_us"], "kernels": p["kernels"],
                        "names": [r["name"][:60] for r in p["by_name"][:3]]}  # fmt: skip
            print(f"  {key:<32} {p['busy_us']:8.2f} us  {p['kernels']:.0f} kernels "
                  f"{out[key]['names']}", flush=True)  # fmt: skip
    return out


def decode_part(family: str, num_layers: int | None, repeats: int, variants) -> dict:
    from zmlx.decode import compile_decode
    from zmlx.models import build
    from zmlx.patch import patch, unpatch
    from zmlx.patch.safety import default_patterns

    quant = "mxfp4" if family == "gpt_oss" else "4bit"
    model = build(family, "full", quant=quant, num_layers=num_layers)
    prompt = mx.random.randint(1, model.args.vocab_size, (64,), key=mx.random.key(7))
    tok = mx.array([[int(prompt[-1])]], dtype=mx.int32)
    out = {"model": family, "quant": quant, "layers": len(model.layers)}
    for variant in variants:
        v = V.get(variant)
        if variant != "stock" and (not v.patch or v.attention is None):
            raise SystemExit(f"[kernel_profile] {variant}: profiles patched, compiled steps")
        with v.applied():
            if variant != "stock":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    default = default_patterns(family, "cuda") if v.extra else None
                    patch(model, patterns=v.pattern_list(default))
                m = compile_decode(model, attention=v.attention)
                cache = m.make_cache()
            else:
                from mlx_lm.models.cache import make_prompt_cache

                m, cache = model, make_prompt_cache(model)
            mx.eval(m(prompt[None], cache=cache))
            out[variant] = profile(lambda m=m, cache=cache: mx.eval(m(tok, cache=cache)),
                                   repeats)  # fmt: skip
            _print(f"{family} step {variant}", out[variant], len(model.layers))
            unpatch(model)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moe-blocks", type=int, default=48, help="0: skip the MoE chain")
    p.add_argument("--family", default=None)
    p.add_argument("--micro", action="store_true", help="single launches at Qwen3 shapes")
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=["stock", "zmlx"], choices=V.names(),
                   help="what to profile (zmlx.bench.variants)")  # fmt: skip
    p.add_argument("--json")
    args = p.parse_args(argv)
    res = {"device": device_name()}
    if args.moe_blocks:
        res["moe_chain"] = moe_part(args.moe_blocks, args.repeats, args.variants)
    if args.micro:
        res["micro"] = micro_part(args.repeats, args.variants)
    if args.family:
        res["decode"] = decode_part(args.family, args.num_layers, args.repeats, args.variants)
    if args.json:
        capsule.write(capsule.make("kernel_profile", res), args.json)
        print(f"capsule: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
