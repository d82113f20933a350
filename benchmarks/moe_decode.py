"""End-to-end decode and prefill: stock mlx-lm against the same model patched by zmlx.

    python benchmarks/moe_decode.py [--families qwen3_moe ...] [--tokens 256] [--runs 5]
                                    [--size full] [--json OUT]

For each family a full-size model with random 4-bit weights is built from the zoo (no
download). In one process, interleaved run by run (stock, patched, stock, ...; each run starts
with the next variant): greedy decode of ``--tokens`` tokens after a 64-token prompt (tok/s of
the decode phase, median of ``--runs``), and a forward over a 1024-token prompt (prefill
tok/s). Fidelity: teacher-forced top-1 agreement of the patched model with stock over the
stock greedy sequence, position by position through the decode path.

Variants (``--variants``, the last is the headline; the table is :mod:`zmlx.bench.variants`,
shared with ``kernel_profile.py``): by default ``stock``, ``compiled`` (stock modules, decode
steps through :func:`zmlx.decode.compile_decode`), ``patched`` (``zmlx.patch``, eager),
``zmlx_stock_attention`` (patched and compiled, mlx-lm's attention) and ``zmlx`` (patched,
compiled, ``compile_decode``'s default attention: zmlx's decode-attention kernel on a GPU);
on request any other entry of the table (more patterns, or one zmlx setting changed). The zmlx
variants patch with the safety table's patterns for the family (``--patterns`` overrides).
Each also gets a one-step profile: host
time to build the step's graph, and the step's time when evaluated at once.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
import warnings

import mlx.core as mx

from zmlx.bench import capsule
from zmlx.bench import settings as bench_settings
from zmlx.bench import variants as V
from zmlx.bench.lm import teacher_forced
from zmlx.core.backend import device_name, gpu_backend
from zmlx.decode import compile_decode
from zmlx.models import build
from zmlx.patch import patch, unpatch
from zmlx.patch.safety import default_patterns

QUANTS = {"gpt_oss": "mxfp4"}
PATTERNS = ["moe_block", "switch_glu", "swiglu_mlp", "qk_norm_rope"]


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=["qwen3_moe"])
    p.add_argument("--size", default="full", choices=["full", "tiny"])
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--prefill", type=int, default=1024)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--agreement-positions", type=int, default=256)
    p.add_argument("--patterns", nargs="+", default=None,
                   help="patterns of the zmlx variants (default: the safety table's for the "
                        f"family on this backend, else {' '.join(PATTERNS)})")  # fmt: skip
    bench_settings.add_argument(p)
    p.add_argument(
        "--variants",
        nargs="+",
        default=V.DEFAULT,
        choices=V.names(),
        help="what to measure against stock; the last is the headline",
    )
    p.add_argument(
        "--no-float32-reference",
        dest="float32_reference",
        action="store_false",
        help="skip the teacher-forced pass with float32 activations (each variant's top-1 is "
        "also compared with it: how close stock and zmlx each are to higher precision)",
    )
    p.add_argument("--json", help="write the capsule here")
    return p


def setup_variant(model, name: str, patterns, held: contextlib.ExitStack):
    """The callable to decode with for variant ``name`` (patching ``model`` if it says so),
    its settings held in ``held`` until the next variant's."""
    held.close()
    v = V.get(name)
    held.enter_context(v.applied())
    if v.patch:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch(model, patterns=v.pattern_list(patterns))
    return model if v.attention is None else compile_decode(model, v.attention)


def decode_run(model, prompt: mx.array, n: int) -> tuple[float, list[int]]:
    """Decode tok/s over ``n`` greedy tokens (after the first, which includes prefill)."""
    from mlx_lm.generate import generate_step

    toks, t_first = [], None
    for tok, _ in generate_step(prompt, model, max_tokens=n):
        toks.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
    return (len(toks) - 1) / (time.perf_counter() - t_first), toks


def prefill_run(model, prompt: mx.array) -> float:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    mx.synchronize()
    t0 = time.perf_counter()
    mx.eval(model(prompt[None], cache=cache))
    mx.synchronize()
    return prompt.size / (time.perf_counter() - t0)


def step_profile(model, prompt: mx.array, steps: int = 24) -> dict:
    """Host time to build one decode step's graph, and the step's time when evaluated at
    once (build + encode + GPU), in microseconds (medians over ``steps``)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    mx.eval(model(prompt[None], cache=cache))
    tok = mx.array([[int(prompt[-1])]], dtype=mx.int32)
    builds, totals = [], []
    for i in range(steps + 2):
        mx.synchronize()
        t0 = time.perf_counter()
        logits = model(tok, cache=cache)
        t1 = time.perf_counter()
        mx.eval(logits)
        mx.synchronize()
        t2 = time.perf_counter()
        if i >= 2:  # the first steps trace / build kernels
            builds.append(1e6 * (t1 - t0))
            totals.append(1e6 * (t2 - t0))
    return {"build_us": statistics.median(builds), "step_us": statistics.median(totals)}


def top1s(model, seq: list[int]) -> list[int]:
    """Teacher-forced top-1 over ``seq``, one token per step through the decode path."""
    return mx.argmax(teacher_forced(model, seq), axis=-1).tolist()


def float32_top1s(model, seq: list[int]) -> list[int] | None:
    """:func:`top1s` with the model's floating parameters (scales, norms, embeddings) and so
    its activations in float32: a higher-precision reference both stock and zmlx are compared
    with. The parameters go back to their dtypes afterwards (bfloat16 -> float32 is exact).
    None when this backend has no float32 kernel for one of the model's ops."""
    from mlx.utils import tree_flatten, tree_unflatten

    dtypes = dict((k, v.dtype) for k, v in tree_flatten(model.parameters()))
    model.set_dtype(mx.float32)
    try:
        return top1s(model, seq)
    except RuntimeError as e:  # e.g. a quantized matmul without a float32 kernel here
        print(f"  no float32 reference: {e}", file=sys.stderr)
        return None
    finally:
        back = [(k, v.astype(dtypes[k])) for k, v in tree_flatten(model.parameters())]
        model.update(tree_unflatten(back))
        mx.eval(model.parameters())


def _agree(a: list[int] | None, b: list[int]) -> float | None:
    return None if a is None else sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def run_family(family: str, args) -> dict:
    gc.collect()
    mx.clear_cache()
    t0 = time.perf_counter()
    model = build(family, args.size, quant=QUANTS.get(family, "4bit"), num_layers=args.num_layers)
    build_s = time.perf_counter() - t0
    vocab = model.args.vocab_size
    key = mx.random.key(7)
    prompt = mx.random.randint(1, vocab, (args.prompt,), key=key)
    long_prompt = mx.random.randint(1, vocab, (args.prefill,), key=mx.random.key(8))
    patterns = args.patterns or default_patterns(family, gpu_backend()) or PATTERNS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=patterns)
    unpatch(model)
    variants = list(args.variants)
    if "stock" not in variants:
        variants.insert(0, "stock")
    runs = {v: {"decode": [], "prefill": [], "tokens_equal_stock": []} for v in variants}
    profile, stock_tokens = {}, None
    held = contextlib.ExitStack()  # the current variant's settings
    # Warm-up every variant (kernel builds, MLX's own JIT, traces) and profile one step.
    for v in variants:
        m = setup_variant(model, v, patterns, held)
        decode_run(m, prompt, 8)
        prefill_run(m, long_prompt[:64])
        profile[v] = step_profile(m, prompt)
        unpatch(model)
    for i in range(args.runs):
        # Each run starts with a different variant, so whatever drifts along a run (the host's
        # load, clocks, the allocator's cache) does not favour one variant.
        for v in variants[i % len(variants) :] + variants[: i % len(variants)]:
            m = setup_variant(model, v, patterns, held)
            tps, toks = decode_run(m, prompt, args.tokens)
            runs[v]["decode"].append(tps)
            runs[v]["prefill"].append(prefill_run(m, long_prompt))
            if v == "stock" and stock_tokens is None:
                stock_tokens = toks
            runs[v]["tokens_equal_stock"].append(toks == stock_tokens)
            unpatch(model)

    def rate(xs):
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}

    seq = stock_tokens[: args.agreement_positions + 1]
    ref = top1s(model, seq)
    # The floor: stock against stock, the same teacher-forced pass run again.
    repeat = top1s(model, seq)
    ref32 = float32_top1s(model, seq) if args.float32_reference else None
    table = {}
    for v in variants:
        m = setup_variant(model, v, patterns, held)
        tops = ref if v == "stock" else top1s(m, seq)
        unpatch(model)
        table[v] = {
            "decode": rate(runs[v]["decode"]), "prefill": rate(runs[v]["prefill"]),
            "decode_speedup": statistics.median(runs[v]["decode"])
            / statistics.median(runs["stock"]["decode"]),
            # run i measures every variant back to back: the median of the per-run ratios
            "decode_paired_speedup": statistics.median(
                [a / b for a, b in zip(runs[v]["decode"], runs["stock"]["decode"])]),
            "prefill_speedup": statistics.median(runs[v]["prefill"])
            / statistics.median(runs["stock"]["prefill"]),
            "tokens_equal_stock": runs[v]["tokens_equal_stock"],
            "top1_agree": sum(a == b for a, b in zip(ref, tops)) / max(1, len(ref)),
            "top1_vs_float32": _agree(ref32, tops),
            "step_profile": profile[v], "patch": V.get(v).patch,
            "compiled_attention": V.get(v).attention, "settings": dict(V.get(v).settings),
        }  # fmt: skip
    held.close()
    best = variants[-1]
    phases = {
        phase: {"stock": table["stock"][phase], "patched": table[best][phase],
                "speedup": table[best][f"{phase}_speedup"]}
        for phase in ("decode", "prefill")
    }  # fmt: skip
    result = {
        "model": family, "size": args.size, "quant": QUANTS.get(family, "4bit"),
        "build_s": build_s, "patch_report": report.to_dict(), "headline_variant": best,
        **phases, "variants": table,
        "fidelity": {"positions": len(ref), "top1_agree": table[best]["top1_agree"],
                     "stock_repeat_top1_agree": sum(a == b for a, b in zip(ref, repeat))
                     / max(1, len(ref))},
        "decode_tokens": args.tokens, "prompt_tokens": args.prompt, "prefill_tokens": args.prefill,
    }  # fmt: skip
    del model
    return result


def apply_settings(items: list[str]) -> None:
    """``MODULE.NAME=VALUE`` settings of zmlx module constants (VALUE: an int, a float, or
    true/false), for the whole run (:mod:`zmlx.bench.settings`)."""
    bench_settings.apply_command_line(items, "moe_decode")


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    apply_settings(args.set)
    rows = []
    print(f"device: {device_name()}")
    for fam in args.families:
        r = run_family(fam, args)
        rows.append(r)
        d, p = r["decode"], r["prefill"]
        for v, t in r["variants"].items():
            print(
                f"  {v:<9} decode {t['decode']['median']:7.1f} tok/s ({t['decode_speedup']:.2f}x, "
                f"paired {t['decode_paired_speedup']:.2f}x) "
                f"prefill {t['prefill']['median']:8.1f} ({t['prefill_speedup']:.2f}x) top-1 "
                f"{100 * t['top1_agree']:.1f}% (vs float32 {_pct(t['top1_vs_float32'])}) "
                f"step build {t['step_profile']['build_us']:.0f} us "
                f"eval-at-once {t['step_profile']['step_us']:.0f} us"
            )
        print(
            f"  stock vs stock (teacher-forced, run again): "
            f"{100 * r['fidelity']['stock_repeat_top1_agree']:.1f}%"
        )
        print(f"{fam:<14} decode {d['stock']['median']:7.1f} -> {d['patched']['median']:7.1f} tok/s "
              f"({d['speedup']:.2f}x)  prefill {p['stock']['median']:8.1f} -> "
              f"{p['patched']['median']:8.1f} tok/s ({p['speedup']:.2f}x)  top-1 agree "
              f"{100 * r['fidelity']['top1_agree']:.1f}%  [{r['patch_report']['patterns']}]")  # fmt: skip
    if args.json:
        capsule.write(capsule.make("model_decode", {"rows": rows}), args.json)
        print(f"capsule: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
