"""Where decode time goes on a GPU: the host cost of one kernel launch, and one decode step.

    python benchmarks/launch_cost.py [--ops 200] [--family qwen3_moe] [--env NAME=V ...]
                                     [--json OUT]

Part 1, launches: a chain of ``--ops`` dependent launches on a small array (nothing to
fuse, nothing to wait for on the device), built in Python and evaluated once, and the same
chain under ``mx.compile``. Per launch: host time to build the graph, to encode it
(``mx.async_eval`` returns when MLX has encoded every launch) and the total until the device
is done. Launches compared: a stock primitive (``mx.fast.rms_norm``), a raw
``mx.fast.cuda_kernel`` with a one-line source, the same with 6 KB of comments in its
header (MLX hashes and rebuilds a custom kernel's whole source on every launch) and a zmlx
``Kernel`` (the dialect prelude in its header), and a dynamic ``mx.slice_update`` (what
``compile_decode``'s KV-cache write is). With ``--count-kernels``, the CUDA graphs each chain
commits are counted too.

Part 2, decode (``--family``): a full-size random-weight model, one decode step split the
same way (build, encode, device) for each of ``--variants`` (stock mlx-lm, ``compiled``,
``patched``, ``zmlx`` = ``patch`` + ``compile_decode``, ``zmlx_qkv`` and ``zmlx_residual`` =
the same with ``qkv_norm_rope`` or ``moe_residual``), the decode rate over ``--tokens``
tokens, and the kernels one step launches, by name, read from the CUDA graphs MLX saves
when ``MLX_SAVE_CUDA_GRAPHS_DOT_FILE`` is set.

Part 3, ``--moe-blocks N``: ``N`` Qwen3-30B-A3B MoE blocks at decode chained and compiled,
so the device runs them one after another as a model's layers: stock mlx-lm against zmlx's
three launches, the same with the batched row loop (each lane's loads of a row issued
before its math), with twice the router's loads in flight, with the whole commented kernel source (what the source length costs per
launch; zmlx sends only the prelude helpers a kernel uses, no comments) and without the
router launch.

Each ``--env`` setting (``default`` or ``NAME=VALUE[,NAME=VALUE]``, e.g.
``MLX_MAX_OPS_PER_BUFFER=1000``) runs both parts in a child process of its own, as MLX reads
these variables once.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import mlx.core as mx
import mlx.nn as nn

from zmlx.bench import capsule
from zmlx.core import kernel as kernel_module
from zmlx.core.backend import device_name
from zmlx.core.kernel import Kernel, capture

COPY = (
    "  const unsigned int i = thread_position_in_grid.x;\n"
    "  if (i < n) { out[i] = static_cast<T>(static_cast<float>(x[i]) + 1.0f); }\n"
)


def _raw_kernel(pad: int):
    header = "".join(f"// padding line {i:05d} of a large header, never compiled into code\n"
                     for i in range(pad // 64))  # fmt: skip
    cuda = COPY.replace("thread_position_in_grid.x", "blockIdx.x * blockDim.x + threadIdx.x")
    return mx.fast.cuda_kernel(name=f"launch_cost_raw_{pad}", input_names=["x"],
                               output_names=["out"], source=cuda, header=header)  # fmt: skip


def launch_fns(n_elems: int):
    """name -> one launch ``f(x) -> y`` (same shape and dtype as x)."""
    w = mx.ones((n_elems,), mx.bfloat16)
    upd = mx.ones((1,), mx.bfloat16)
    start = mx.array([n_elems // 2], dtype=mx.int32)

    def dynamic_slice_update(x):
        # What compile_decode's KV cache write is: a write at a position held in an array.
        return mx.slice_update(x, upd, start, axes=(0,))

    fns = {
        "stock_rms_norm": lambda x: mx.fast.rms_norm(x, w, 1e-6),
        "stock_dynamic_slice_update": dynamic_slice_update,
    }
    if not mx.cuda.is_available():  # a CPU smoke run: stock ops only
        return fns
    raw_small, raw_big = _raw_kernel(0), _raw_kernel(6144)
    body = COPY.replace("unsigned int", "uint").replace("thread_position_in_grid.x", "tid")
    zk = Kernel("launch_cost_copy", ["x", "rt"], ["out"], body.replace("i < n", "i < rt[0]"))
    rt = mx.array([n_elems], dtype=mx.uint32)

    def raw(k):
        def f(x):
            return k(inputs=[x], output_shapes=[x.shape], output_dtypes=[x.dtype],
                     grid=(n_elems, 1, 1), threadgroup=(256, 1, 1),
                     template=[("T", x.dtype), ("n", n_elems)])[0]  # fmt: skip

        return f

    def zmlx_copy(x):
        return zk(x, rt, output_shapes=[x.shape], output_dtypes=[x.dtype], grid=(n_elems, 1, 1),
                  threadgroup=(256, 1, 1), template=[("T", x.dtype)])[0]  # fmt: skip

    return {
        **fns,
        "raw_kernel_small": raw(raw_small),
        "raw_kernel_6kb_header": raw(raw_big),
        "zmlx_kernel": zmlx_copy,
    }


def _split(build, repeats: int = 7) -> dict:
    """Median build / encode / total of ``build()`` (a graph) over ``repeats``, in us."""
    rows = []
    for i in range(repeats + 2):
        mx.synchronize()
        t0 = time.perf_counter()
        out = build()
        t1 = time.perf_counter()
        mx.async_eval(out)
        t2 = time.perf_counter()
        mx.eval(out)
        mx.synchronize()
        t3 = time.perf_counter()
        if i >= 2:
            rows.append((t1 - t0, t2 - t1, t3 - t0))
    med = [1e6 * statistics.median(c) for c in zip(*rows)]
    return {"build_us": med[0], "encode_us": med[1], "total_us": med[2]}


def launches_part(n_ops: int, n_elems: int = 4096) -> dict:
    x = mx.random.normal((n_elems,)).astype(mx.bfloat16)
    mx.eval(x)
    out = {}
    for name, f in launch_fns(n_elems).items():

        def chain(x, f=f):
            for _ in range(n_ops):
                x = f(x)
            return x

        compiled = mx.compile(chain)
        eager = _split(lambda chain=chain: chain(x))
        comp = _split(lambda compiled=compiled: compiled(x))
        out[name] = {
            "eager": {k: v / n_ops for k, v in eager.items()},
            "compiled": {k: v / n_ops for k, v in comp.items()},
        }
        if os.environ.get("MLX_SAVE_CUDA_GRAPHS_DOT_FILE"):
            # CUDA graphs MLX commits for one chain, eager and compiled: a graph ends when
            # it is full (MLX_MAX_OPS_PER_BUFFER) or when something forces a commit.
            for mode, fn in (("eager", chain), ("compiled", compiled)):
                files = _graphs_of(lambda fn=fn: mx.eval(fn(x)))
                out[name][mode]["graphs"] = len(files)
                out[name][mode]["kernels"] = sum(_kernel_names(files)[0].values())
        print(f"  {name:<24} per launch: eager build {out[name]['eager']['build_us']:5.1f} "
              f"encode {out[name]['eager']['encode_us']:5.1f} total "
              f"{out[name]['eager']['total_us']:5.1f} us | compiled encode "
              f"{out[name]['compiled']['encode_us']:5.1f} total "
              f"{out[name]['compiled']['total_us']:5.1f} us", flush=True)  # fmt: skip
    return {"ops": n_ops, "elements": n_elems, "per_launch": out}


_RENDER = (kernel_module.compact, kernel_module.render_header)  # what zmlx sends MLX


def _full_source(on: bool):
    """Send MLX the whole prelude with comments (``on``) or zmlx's used-and-compacted source;
    built kernels are forgotten so the next launch builds anew."""
    import gc

    if on:
        kernel_module.compact = lambda s: s
        kernel_module.render_header = lambda h, d, body="": d.prelude + ("\n" + h if h else "")
    else:
        kernel_module.compact, kernel_module.render_header = _RENDER
    kernel_module._BUILD_CACHE.clear()
    for obj in gc.get_objects():
        if isinstance(obj, Kernel):
            obj._objs.clear()


def qwen3_moe_blocks() -> tuple[mx.array, dict]:
    """A decode input and Qwen3-30B-A3B MoE blocks over the same random 4-bit experts and
    8-bit router: ``stock`` (mlx-lm's: quantized router matmul, softmax, argpartition,
    ``SwitchGLU``, combine), ``zmlx`` (as the ``moe_block`` pattern: MLX's router matmul, the
    routing kernel, gate/up + SwiGLU, down + combine), ``zmlx_fused_router`` (the router in
    one launch, ``router_fused``), ``zmlx_stock_router`` (stock's routing ops, then zmlx's two
    expert launches) and ``zmlx_fixed_routing`` (no router: the experts the first token
    chose)."""
    from mlx_lm.models.switch_layers import SwitchGLU

    from zmlx.kernels import moe as K
    from zmlx.kernels import routers as R

    d, i_dim, e, k, gs = 2048, 768, 128, 8, 64
    glu = SwitchGLU(d, i_dim, e)
    glu.set_dtype(mx.bfloat16)
    nn.quantize(glu, group_size=gs, bits=4)
    gate = nn.Linear(d, e, bias=False)
    gate.set_dtype(mx.bfloat16)
    gate = nn.QuantizedLinear.from_linear(gate, group_size=64, bits=8)
    mx.eval(glu.parameters(), gate.parameters())
    rule = R.RouterRule("softmax_topk", k, norm=True)
    x = mx.random.normal((1, d), key=mx.random.key(3)).astype(mx.bfloat16)

    def qp(layer):
        return layer["weight"], layer["scales"], layer["biases"]

    g, u, dn = qp(glu["gate_proj"]), qp(glu["up_proj"]), qp(glu["down_proj"])
    rw, rs, rb = qp(gate)
    inds0, w0 = R.router_fused(x, rw, rule, scales=rs, biases=rb, group_size=64, bits=8)
    mx.eval(inds0, w0)

    def stock_route(x):
        gates = mx.softmax(gate(x), axis=-1, precise=True)
        inds = mx.stop_gradient(mx.argpartition(-gates, kth=k - 1, axis=-1)[..., :k])
        scores = mx.take_along_axis(gates, inds, axis=-1)
        return inds, scores / scores.sum(axis=-1, keepdims=True)

    def stock_block(x):
        inds, scores = stock_route(x)
        y = glu(x, inds)
        return (y * scores[..., None]).sum(axis=-2).astype(y.dtype)

    def zmlx_block(x, route="zmlx"):
        if route == "zmlx":  # as moe_block routes: MLX's matmul, then the routing kernel
            inds, w = R.route(gate(x), rule)
        elif route == "fused":
            inds, w = R.router_fused(x, rw, rule, scales=rs, biases=rb, group_size=64, bits=8)
        elif route == "stock":
            inds, w = stock_route(x)
        else:
            inds, w = inds0, w0
        h = K.gather_qmv_swiglu(x, *g, *u, inds, gs, 4, "affine")
        return K.gather_qmv_combine(h, *dn, inds, w, gs, 4, "affine")

    blocks = {
        "stock": stock_block,
        "zmlx": zmlx_block,
        "zmlx_fused_router": lambda x: zmlx_block(x, route="fused"),
        "zmlx_stock_router": lambda x: zmlx_block(x, route="stock"),
        "zmlx_fixed_routing": lambda x: zmlx_block(x, route="fixed"),
    }
    return x, blocks


def moe_chain_part(n_blocks: int, repeats: int = 5) -> dict:
    """Part 3: ``n_blocks`` Qwen3-30B-A3B MoE blocks at decode chained (each block's output is
    the next one's input, as layers are) and compiled, so the device runs them one after
    another. Variants, rotated so drift hits all: stock mlx-lm (quantized router matmul,
    softmax, argpartition, ``SwitchGLU``, combine); zmlx's block as ``moe_block`` runs it
    (router matmul, routing, gate/up + SwiGLU, down + combine) with the sources zmlx sends
    MLX and with the whole commented source; with the batched row loop
    (``quant_kernels.BATCH_LOADS``); with the router in one launch (``router_fused``), also
    with 16 words per lane in flight there (``router_kernels.FUSED_WU``, 8 by default); with
    stock's routing ops; and without the router (routing fixed). Per block: total; and, per
    third of a block (the three launches of the one-launch-router form, a fixed unit across
    variants), build, encode and total."""
    from zmlx.kernels import quant_kernels as qk
    from zmlx.kernels import router_kernels as RK

    x, base = qwen3_moe_blocks()
    blocks = {
        "stock": base["stock"],
        "zmlx": base["zmlx"],
        "zmlx_batched_loads": base["zmlx"],
        "zmlx_fused_router": base["zmlx_fused_router"],
        "zmlx_router_wu16": base["zmlx_fused_router"],
        "zmlx_full_source": base["zmlx"],
        "zmlx_stock_router": base["zmlx_stock_router"],
        "zmlx_fixed_routing": base["zmlx_fixed_routing"],
    }
    wu = RK.FUSED_WU
    launches = 3 * n_blocks
    rows: dict[str, list] = {name: [] for name in blocks}
    names = list(blocks)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            _full_source(name == "zmlx_full_source")
            qk.BATCH_LOADS = name == "zmlx_batched_loads"
            RK.FUSED_WU = 16 if name == "zmlx_router_wu16" else wu

            def chain(x, block=blocks[name]):
                for _ in range(n_blocks):
                    x = block(x)
                return x

            compiled = mx.compile(chain)
            rows[name].append(_split(lambda compiled=compiled: compiled(x), repeats=5))
    qk.BATCH_LOADS, RK.FUSED_WU = False, wu
    sizes = {}
    for name in ("zmlx", "zmlx_full_source"):
        _full_source(name == "zmlx_full_source")
        with capture("cuda") as caught:
            base["zmlx"](x)
        sizes[name] = {c.kernel.name: sum(map(len, c.kernel.render("cuda"))) for c in caught}
    _full_source(False)
    out = {"blocks": n_blocks, "launches_per_block": 3, "source_chars": sizes}
    for name, rs_ in rows.items():
        out[name] = {key_: statistics.median(r[key_] for r in rs_) / launches
                     for key_ in ("build_us", "encode_us", "total_us")}  # fmt: skip
        out[name]["block_total_us"] = 3 * out[name]["total_us"]
        print(f"  moe chain {name:<18} per block: total {out[name]['block_total_us']:6.1f} us; "
              f"per zmlx launch: encode {out[name]['encode_us']:5.2f} us", flush=True)  # fmt: skip
    print(f"  sources: {sizes}", flush=True)
    return out


def _kernel_names(files: list[str]) -> tuple[collections.Counter, str]:
    """Kernel names in saved CUDA graphs (each name counted once per graph node line), and
    the start of the first file (to check the parse)."""
    names: collections.Counter = collections.Counter()
    sample = ""
    for path in files:
        text = open(path, errors="replace").read()
        sample = sample or text[:3000]
        # cudaGraphDebugDotPrint: a kernel node's label is its index, then the (mangled)
        # function name on the next line.
        for m in re.finditer(r'label="\d+\n(\S+)', text):
            names[m.group(1)[:120]] += 1
    return names, sample


# Variants of part 2: patch patterns (None: zmlx's defaults for the backend); the names with
# "compiled", "zmlx" run the decode steps through compile_decode.
VARIANTS = ("stock", "compiled", "patched", "zmlx", "zmlx_qkv", "zmlx_residual")
PATTERNS = {"patched": None, "zmlx": None,
            "zmlx_qkv": ["moe_block", "swiglu_mlp", "qkv_norm_rope"],
            "zmlx_residual": ["moe_residual", "moe_block", "swiglu_mlp", "qk_norm_rope"]}  # fmt: skip


def _graphs_of(run) -> list[str]:
    """The CUDA graph files MLX saves while ``run()`` evaluates (MLX_SAVE_CUDA_GRAPHS_DOT_FILE)."""
    dot = os.environ["MLX_SAVE_CUDA_GRAPHS_DOT_FILE"]
    mx.synchronize()
    before = set(glob.glob(dot + "_*.dot"))
    run()
    mx.synchronize()
    return sorted(set(glob.glob(dot + "_*.dot")) - before)


def _graphs_by_stream(model, prompt, m) -> dict:
    """CUDA graphs one compiled step commits: traced in mlx-lm's generation stream and run in
    it or in the default stream, and traced and run in the default stream alone (an array of
    one stream read by an op of another makes MLX commit the graph so far)."""
    from mlx_lm.generate import generation_stream

    from zmlx.decode import compile_decode

    tok = mx.array([[int(prompt[-1])]], dtype=mx.int32)

    def count(dec, stream) -> int:
        cache = dec.make_cache()
        with mx.stream(stream):
            mx.eval(dec(prompt[None], cache=cache))
            mx.eval(dec(tok, cache=cache))
            return len(_graphs_of(lambda: mx.eval(dec(tok, cache=cache))))

    out = {"generation_stream": count(m, generation_stream)}
    out["default_stream"] = count(compile_decode(model), mx.default_stream(mx.default_device()))
    return out


def decode_part(family: str, tokens: int, num_layers: int | None, variants) -> dict:
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    from zmlx.decode import compile_decode
    from zmlx.models import build
    from zmlx.patch import patch, unpatch

    quant = "mxfp4" if family == "gpt_oss" else "4bit"
    model = build(family, "full", quant=quant, num_layers=num_layers)
    prompt = mx.random.randint(1, model.args.vocab_size, (64,), key=mx.random.key(7))
    dot = os.environ.get("MLX_SAVE_CUDA_GRAPHS_DOT_FILE")
    out = {"model": family, "quant": quant, "layers": len(model.layers), "variants": {}}
    for variant in variants:
        if variant in PATTERNS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                patch(model, patterns=PATTERNS[variant])
        m = compile_decode(model) if variant.startswith(("compiled", "zmlx")) else model
        for _ in generate_step(prompt, m, max_tokens=8):
            pass
        toks, t_first = 0, None
        for _tok, _ in generate_step(prompt, m, max_tokens=tokens):
            toks += 1
            if t_first is None:
                t_first = time.perf_counter()
        rate = (toks - 1) / (time.perf_counter() - t_first)
        cache = m.make_cache() if hasattr(m, "make_cache") else make_prompt_cache(m)
        mx.eval(m(prompt[None], cache=cache))
        tok = mx.array([[int(prompt[-1])]], dtype=mx.int32)
        split = _split(lambda m=m, cache=cache, tok=tok: m(tok, cache=cache), repeats=15)
        row = {"decode_tok_s": rate, "step": split}
        if dot:
            files = _graphs_of(lambda m=m, cache=cache, tok=tok: mx.eval(m(tok, cache=cache)))
            names, sample = _kernel_names(files)
            row["graphs"] = len(files)
            row["dot_sample"] = sample
            row["kernels"] = sum(names.values())
            row["kernels_by_name"] = dict(names.most_common(40))
            if m is not model:
                row["graphs_by_stream"] = _graphs_by_stream(model, prompt, m)
        out["variants"][variant] = row
        print(f"  {family} {variant:<6} {rate:6.1f} tok/s  step: build {split['build_us']:7.0f} "
              f"encode {split['encode_us']:7.0f} total {split['total_us']:7.0f} us"
              + (f"  kernels {row.get('kernels')} in {row.get('graphs')} graphs "
                 f"{row.get('graphs_by_stream', '')}" if dot else ""),
              flush=True)  # fmt: skip
        unpatch(model)
    return out


def child(args) -> dict:
    res = {"device": device_name(), "env": args.child_env}
    if args.ops:
        res["launches"] = launches_part(args.ops)
    if args.moe_blocks:
        res["moe_chain"] = moe_chain_part(args.moe_blocks)
    if args.family:
        res["decode"] = decode_part(args.family, args.tokens, args.num_layers, args.variants)
    return res


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=200, help="launches per chain (0: skip part 1)")
    p.add_argument("--family", default=None, help="also profile decode of this full-size family")
    p.add_argument("--moe-blocks", type=int, default=0,
                   help="part 3: chain this many Qwen3 MoE blocks (stock, zmlx, variants)")  # fmt: skip
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--env", nargs="+", default=["default"])
    p.add_argument("--variants", nargs="+", default=["stock", "zmlx"], choices=VARIANTS)
    p.add_argument(
        "--count-kernels",
        action="store_true",
        help="save the CUDA graphs of one step and count its kernels by name",
    )
    p.add_argument("--timeout", type=int, default=280, help="seconds per child")
    p.add_argument("--json")
    p.add_argument("--child-env", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    if args.child_out:
        with open(args.child_out, "w") as f:
            json.dump(child(args), f)
        return 0
    rows = []
    for setting in args.env:
        env = dict(os.environ)
        if setting != "default":
            env.update(kv.split("=", 1) for kv in setting.split(","))
        tmp = tempfile.mkdtemp(prefix="launch_cost_")
        if args.count_kernels:
            env["MLX_SAVE_CUDA_GRAPHS_DOT_FILE"] = os.path.join(tmp, "g")
        out = os.path.join(tmp, "child.json")
        cmd = [sys.executable, __file__, "--ops", str(args.ops), "--tokens", str(args.tokens),
               "--moe-blocks", str(args.moe_blocks), "--child-env", setting,
               "--child-out", out]  # fmt: skip
        if args.family:
            cmd += ["--family", args.family]
        if args.num_layers:
            cmd += ["--num-layers", str(args.num_layers)]
        cmd += ["--variants", *args.variants]
        print(f"[{setting}]", flush=True)
        try:
            rc = subprocess.run(cmd, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        if rc == 0:
            rows.append(json.load(open(out)))
        else:
            rows.append({"env": setting, "error": f"child exited with {rc}"})
            print(f"  child exited with {rc}", flush=True)
    if args.json:
        capsule.write(capsule.make("launch_cost", {"rows": rows}), args.json)
        print(f"capsule: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
