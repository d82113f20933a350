"""Checks of stock MLX itself on a GPU, against MLX's CPU backend, recorded as capsules.

    python benchmarks/stock_probes.py [--probes qmv_tiny quantize_transposed] [--json OUT]

* ``qmv_tiny``: ``mx.quantized_matmul`` (affine 4-bit, group 64) on the default device
  against the CPU backend and a float32 matmul of the dequantized weights, at the trained
  fixtures' sizes and larger, in float32 and bfloat16 (an error is recorded, not raised).
* ``quantize_transposed``: ``mx.quantize`` and zmlx's ``quantize`` of a transposed
  (non-contiguous) input against the same values made contiguous.
* ``sdpa_tiny``: ``mx.fast.scaled_dot_product_attention`` at the trained fixtures' attention
  shape (4 query and 2 key/value heads of 16) in float32, without a mask, causal and with a
  boolean mask, over contiguous keys and values and over the leading slice of a larger
  buffer (as mlx-lm's ``KVCache`` passes them), against the CPU backend.
* ``matmul_gqa``: the matmuls of MLX's unfused attention (the path of head sizes its fused
  kernels lack, such as the fixtures' 16) for a grouped query: ``(1, 2, 2, L, 16) @ (1, 2, 1,
  16, S)`` with keys contiguous or sliced from a longer buffer, against the CPU backend.
* ``qmm_tiny``: ``mx.quantized_matmul`` and ``mx.gather_qmm`` (affine 4-bit, group 64) with
  the fixtures' 64-wide weights for 1, 12 and 40 tokens (``gather_qmm`` with top-2 of 8
  experts, sorted and unsorted as mlx-lm's ``SwitchGLU`` calls it), float32 and bfloat16,
  each run twice on the default device and once on the CPU.
* ``qmm_widths``: ``mx.quantized_matmul`` for 12 and 40 tokens over input widths 64 to 256
  with 4- and 8-bit codes in groups of 32 and 64 (float32), twice on the default device and
  once on the CPU: which layouts MLX's multi-token kernel gets right.
* ``fixture_repeat``: a trained fixture's prompt pass (stock MLX; float as trained, and
  quantized as it ships) twice on the default device and once on the CPU: the GPU runs should
  equal each other and stay near the CPU.

zmlx works around what these find (``quantize_ref`` quantizes a contiguous copy); the
capsule is the evidence.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

import mlx.core as mx
import numpy as np

from zmlx.bench import capsule
from zmlx.core.backend import device_name

QMV_SHAPES = [(1, 64, 64), (1, 64, 256), (1, 128, 128), (1, 256, 256), (1, 512, 512),
              (1, 2048, 768)]  # fmt: skip


def _max_diff(a: mx.array, b: mx.array) -> float:
    return mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item()


def _compare(row: dict, fn) -> dict:
    """``row`` with ``fn(stream)`` run twice on the default device and once on the CPU:
    ``gpu_vs_gpu`` (0 unless the kernel is nondeterministic), ``gpu_vs_cpu`` and the CPU
    result's ``scale``; or the error stock MLX raised."""
    gpu = mx.default_stream(mx.default_device())
    try:
        g1 = fn(gpu)
        mx.eval(g1)
        g2, c = fn(gpu), fn(mx.cpu)
        row.update(gpu_vs_gpu=_max_diff(g1, g2), gpu_vs_cpu=_max_diff(g1, c),
                   scale=mx.abs(c).max().item())  # fmt: skip
    except (RuntimeError, ValueError) as e:
        row["error"] = str(e)[:300]
    return row


def qmv_tiny() -> list[dict]:
    rows = []
    mx.random.seed(0)
    for m, k, n in QMV_SHAPES:
        for dt in (mx.float32, mx.bfloat16):
            x = mx.random.normal((m, k)).astype(dt)
            wq, s, b = mx.quantize(mx.random.normal((n, k)) * 0.05, group_size=64, bits=4)
            s, b = s.astype(dt), b.astype(dt)
            r = {"m": m, "k": k, "n": n, "dtype": str(dt).split(".")[-1]}
            try:
                kw = {"transpose": True, "group_size": 64, "bits": 4}
                g = mx.quantized_matmul(x, wq, s, b, **kw)
                c = mx.quantized_matmul(x, wq, s, b, **kw, stream=mx.cpu)
                d = mx.dequantize(wq, s, b, group_size=64, bits=4, stream=mx.cpu)
                f = x.astype(mx.float32) @ d.astype(mx.float32).T
                r.update(gpu_vs_cpu=_max_diff(g, c), gpu_vs_f32=_max_diff(g, f),
                         cpu_vs_f32=_max_diff(c, f), scale=mx.abs(f).max().item())  # fmt: skip
            except RuntimeError as e:
                r["error"] = str(e)[:300]
            rows.append(r)
    return rows


def quantize_transposed() -> list[dict]:
    from zmlx.kernels.quantize import quantize

    rows = []
    rng = np.random.default_rng(0)
    for dt in (mx.float32, mx.bfloat16):
        w = mx.array(rng.normal(size=(256, 6)).astype(np.float32)).astype(dt).T
        for name, fn in (("mx.quantize", mx.quantize), ("zmlx.quantize", quantize)):
            a, b = fn(w, 128, 8), fn(mx.contiguous(w), 128, 8)
            rows.append({"fn": name, "dtype": str(dt).split(".")[-1],
                         "words_equal": mx.array_equal(a[0], b[0]).item(),
                         "scales_equal": mx.array_equal(a[1], b[1]).item()})  # fmt: skip
    return rows


def sdpa_tiny() -> list[dict]:
    sdpa = mx.fast.scaled_dot_product_attention
    rows = []
    rng = np.random.default_rng(0)
    for q_len, kv_len in ((1, 12), (12, 12), (1, 40)):
        q = mx.array(rng.normal(size=(1, 4, q_len, 16)).astype(np.float32))
        buf_k = mx.array(rng.normal(size=(1, 2, 256, 16)).astype(np.float32))
        buf_v = mx.array(rng.normal(size=(1, 2, 256, 16)).astype(np.float32))
        sliced = (buf_k[..., :kv_len, :], buf_v[..., :kv_len, :])
        dense = (mx.contiguous(sliced[0]), mx.contiguous(sliced[1]))
        offset = kv_len - q_len
        rows_q = mx.arange(offset, kv_len)[:, None]
        masks = {"none": None, "causal": "causal",
                 "bool": rows_q >= mx.arange(kv_len)[None, :]}  # fmt: skip
        for mask_name, mask in masks.items():
            for layout, (k, v) in (("contiguous", dense), ("sliced", sliced)):
                r = {"q_len": q_len, "kv_len": kv_len, "mask": mask_name, "kv": layout}
                rows.append(_compare(r, lambda st, q=q, k=k, v=v, mask=mask: sdpa(
                    q, k, v, scale=0.25, mask=mask, stream=st)))  # fmt: skip
    return rows


def matmul_gqa() -> list[dict]:
    rows = []
    rng = np.random.default_rng(1)
    for q_len, kv_len in ((1, 12), (12, 12), (1, 40)):
        q = mx.array(rng.normal(size=(1, 2, 2, q_len, 16)).astype(np.float32))
        buf = mx.array(rng.normal(size=(1, 2, 1, 256, 16)).astype(np.float32))
        sliced = buf[..., :kv_len, :]
        for layout, k in (("contiguous", mx.contiguous(sliced)), ("sliced", sliced)):
            for dt in (mx.float32, mx.bfloat16):
                a, b = q.astype(dt), k.astype(dt).swapaxes(-1, -2)
                r = {"q_len": q_len, "kv_len": kv_len, "kv": layout, "dtype": str(dt)[9:]}
                rows.append(_compare(r, lambda st, a=a, b=b: mx.matmul(a, b, stream=st)))
    return rows


QMM_KW = {"transpose": True, "group_size": 64, "bits": 4}


def _qmm(op: str, x, w, idx, stream):
    """One of ``qmm_tiny``'s calls; ``w`` is (codes, scales, biases) of 8 experts."""
    if op == "quantized_matmul":
        return mx.quantized_matmul(x, *(a[0] for a in w), **QMM_KW, stream=stream)
    if op == "gather_qmm":
        return mx.gather_qmm(x[:, None, None, :], *w, rhs_indices=idx, **QMM_KW, stream=stream)
    order = mx.argsort(idx.flatten())  # SwitchGLU's sorted form: rows grouped by expert
    return mx.gather_qmm(x[order // idx.shape[1]][:, None, :], *w,
                         rhs_indices=idx.flatten()[order], sorted_indices=True, **QMM_KW,
                         stream=stream)  # fmt: skip


def qmm_tiny() -> list[dict]:
    rows = []
    rng = np.random.default_rng(2)
    w = mx.array(rng.normal(size=(8, 128, 64)).astype(np.float32) * 0.1)
    wq, sc, bi = mx.quantize(w, group_size=64, bits=4)  # contiguous: right on every backend
    for tokens in (1, 12, 40):
        x = mx.array(rng.normal(size=(tokens, 64)).astype(np.float32))
        idx = mx.array(rng.integers(0, 8, size=(tokens, 2)).astype(np.uint32))
        for dt in (mx.float32, mx.bfloat16):
            args = (x.astype(dt), (wq, sc.astype(dt), bi.astype(dt)), idx)
            for op in ("quantized_matmul", "gather_qmm", "gather_qmm_sorted"):
                r = {"op": op, "tokens": tokens, "dtype": str(dt)[9:]}
                rows.append(_compare(r, lambda st, op=op, args=args: _qmm(op, *args, st)))
    return rows


def qmm_widths() -> list[dict]:
    rows = []
    rng = np.random.default_rng(3)
    for k in (64, 128, 256):
        w = mx.array(rng.normal(size=(128, k)).astype(np.float32) * 0.1)
        for bits, gs in ((4, 64), (4, 32), (8, 64), (8, 32)):
            q = mx.quantize(w, group_size=gs, bits=bits)
            for tokens in (12, 40):
                x = mx.array(rng.normal(size=(tokens, k)).astype(np.float32))
                kw = {"transpose": True, "group_size": gs, "bits": bits}
                r = {"k": k, "bits": bits, "group_size": gs, "tokens": tokens}
                rows.append(_compare(r, lambda st, x=x, q=q, kw=kw: mx.quantized_matmul(
                    x, *q, **kw, stream=st)))  # fmt: skip
    return rows


def fixture_repeat() -> list[dict]:
    from zmlx.models import fixtures

    rows = []
    for family in ("qwen3_moe", "mixtral", "gpt_oss"):
        for quantized in (False, True):
            load = "fixtures.load_quantized" if quantized else "fixtures.load"
            model, _ = getattr(fixtures, load.split(".")[1])(family)
            prompt = mx.array(fixtures.record(family)["prompt_tokens"])[None]
            a = model(prompt)
            mx.eval(a)
            b = model(prompt)
            mx.eval(b)
            # The CPU run in a child process whose default device is the CPU throughout.
            code = ("import sys, mlx.core as mx; mx.set_default_device(mx.cpu); "
                    "from zmlx.models import fixtures; "
                    f"m, _ = {load}({family!r}); "
                    f"p = mx.array(fixtures.record({family!r})['prompt_tokens'])[None]; "
                    "mx.save(sys.argv[1], m(p))")  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                out = f"{tmp}/cpu.npy"
                subprocess.run([sys.executable, "-c", code, out], check=True)
                c = mx.load(out)
            rows.append({"family": family, "quantized": quantized,
                         "gpu_vs_gpu": _max_diff(a, b), "gpu_vs_cpu": _max_diff(a, c),
                         "scale": mx.abs(c).max().item()})  # fmt: skip
    return rows


PROBES = {"qmv_tiny": qmv_tiny, "quantize_transposed": quantize_transposed,
          "sdpa_tiny": sdpa_tiny, "matmul_gqa": matmul_gqa, "qmm_tiny": qmm_tiny,
          "qmm_widths": qmm_widths,
          "fixture_repeat": fixture_repeat}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    p.add_argument("--json", help="write the capsule here")
    args = p.parse_args(argv)
    print(f"device: {device_name()}")
    res = {}
    for name in args.probes:  # the capsule is rewritten after each probe (one may hang)
        res[name] = PROBES[name]()
        print(name)
        for r in res[name]:
            print(f"  {r}")
        if args.json:
            capsule.write(capsule.make("stock_probes", res), args.json)
    if args.json:
        print(f"capsule: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
