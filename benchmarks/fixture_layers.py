"""Where a trained fixture's GPU decoding departs from MLX's CPU backend, layer by layer.

    python benchmarks/fixture_layers.py [--families ...] [--dtype float32] [--json OUT]

For each trained fixture (quantized as it ships): the prompt, then one decode step, run three
ways in one process: stock on MLX's CPU backend (the reference), stock on the default device
(the GPU) and patched with zmlx on the default device. Every decoder layer, its attention and
its MoE block is wrapped to record its output; the table gives, per module, the largest
absolute difference of each GPU run from the CPU run at the decode step (and at the prompt
pass's last position, "prefill ..."). The first module whose difference jumps is where a
backend's kernel (stock or zmlx) computes something else.

On a GPU machine the CPU run happens in a child process whose default device is the CPU from
the start: evaluating the lazily loaded fixture on MLX 0.32.4's CPU stream inside a CUDA
process did not finish within a minute on an H200.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings

import mlx.core as mx
import mlx.nn as nn

from zmlx.bench import capsule
from zmlx.core.backend import device_name, gpu_backend
from zmlx.models import fixtures
from zmlx.patch import patch, unpatch

SUB_ATTRS = ("self_attn", "mlp", "block_sparse_moe", "feed_forward", "moe")


class Recorder(nn.Module):
    """Calls ``inner`` and keeps its last output (the first array of a tuple)."""

    def __init__(self, inner: nn.Module, name: str, store: dict):
        super().__init__()
        self.inner = inner
        self._name, self._store = name, store

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        self._store[self._name] = first
        return out


def _layers(model) -> list:
    inner = getattr(model, "model", model)
    return getattr(inner, "layers", None) or getattr(model, "layers", [])


def wrap(model, store: dict) -> None:
    layers = _layers(model)
    for i, layer in enumerate(layers):
        for attr in SUB_ATTRS:
            sub = getattr(layer, attr, None) if attr in layer else None
            if isinstance(sub, nn.Module):
                layer[attr] = Recorder(sub, f"layer {i} {attr}", store)
        layers[i] = Recorder(layer, f"layer {i}", store)


def unwrap(model) -> None:
    layers = _layers(model)
    for i, rec in enumerate(layers):
        layer = rec.inner if isinstance(rec, Recorder) else rec
        for attr in SUB_ATTRS:
            sub = getattr(layer, attr, None) if attr in layer else None
            if isinstance(sub, Recorder):
                layer[attr] = sub.inner
        layers[i] = layer


def decode_step(model, prompt: mx.array, stream=None) -> dict:
    """Outputs of every wrapped module at the decode step after ``prompt``."""
    from mlx_lm.models.cache import make_prompt_cache

    store: dict = {}
    wrap(model, store)
    try:
        cache = make_prompt_cache(model)
        with mx.stream(stream or mx.default_stream(mx.default_device())):
            store["logits"] = model(prompt[None, :-1], cache=cache)
            # The prompt pass too, at its last position (a kernel for many tokens may differ).
            prefill = {f"prefill {k}": v[:, -1] for k, v in store.items()}
            mx.eval(prefill)
            store.clear()
            store["logits"] = model(prompt[None, -1:], cache=cache)
            mx.eval(list(store.values()))
            store.update(prefill)
    finally:
        unwrap(model)
    return {k: v.astype(mx.float32) for k, v in store.items()}


def _diff(a: mx.array, b: mx.array) -> float:
    return mx.abs(a - b).max().item() if a.shape == b.shape else float("nan")


def _load(family: str, dtype: str):
    model, _ = fixtures.load_quantized(family)
    if dtype != "float32":
        model.set_dtype(getattr(mx, dtype))
    return model, mx.array(fixtures.record(family)["prompt_tokens"])


def cpu_reference(family: str, dtype: str, child: bool | None = None) -> dict:
    """The recorded outputs on MLX's CPU backend; in a child process where ``child`` (by
    default: whenever the default device is a GPU)."""
    if child is None:
        child = gpu_backend() != "cpu"
    if not child:
        with mx.stream(mx.cpu):
            model, prompt = _load(family, dtype)
            return decode_step(model, prompt, mx.cpu)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cpu.safetensors")
        cmd = [sys.executable, __file__, "--cpu-reference", out, "--families", family,
               "--dtype", dtype]  # fmt: skip
        subprocess.run(cmd, check=True)
        return mx.load(out)


def run_family(family: str, args) -> dict:
    cpu = cpu_reference(family, args.dtype)
    model, prompt = _load(family, args.dtype)
    stock = decode_step(model, prompt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=args.patterns)
    zmlx = decode_step(model, prompt)
    unpatch(model)
    rows = [{"module": k, "stock_vs_cpu": _diff(stock[k], v),
             "zmlx_vs_cpu": _diff(zmlx[k], v) if k in zmlx else None,
             "scale": mx.abs(v).max().item()} for k, v in cpu.items()]  # fmt: skip
    return {"family": family, "dtype": args.dtype, "patched": report.patterns(), "modules": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=fixtures.available())
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--patterns", nargs="+", default=["moe_block", "switch_glu", "swiglu_mlp"])
    p.add_argument("--json", help="write the capsule here")
    p.add_argument("--cpu-reference", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cpu_reference:  # the child process of cpu_reference()
        mx.set_default_device(mx.cpu)
        mx.save_safetensors(args.cpu_reference, cpu_reference(args.families[0], args.dtype, False))
        return 0
    print(f"device: {device_name()}")
    rows = []
    for fam in args.families:
        try:
            r = run_family(fam, args)
        except RuntimeError as e:  # stock MLX may have no kernel for a shape on this backend
            r = {"family": fam, "dtype": args.dtype, "error": str(e)[:300], "modules": []}
        rows.append(r)
        if args.json:
            capsule.write(capsule.make("fixture_layers", {"rows": rows}), args.json)
        print(f"{fam}: {r.get('error') or r['patched']}")
        for m in r["modules"]:
            z = m["zmlx_vs_cpu"]
            print(f"  {m['module']:<26} stock-cpu {m['stock_vs_cpu']:.2e}  zmlx-cpu "
                  f"{'-' if z is None else f'{z:.2e}'}  (|cpu| {m['scale']:.2e})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
