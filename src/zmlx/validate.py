"""python -m zmlx.validate: is a patched model faithful, and is it faster? One process, one load.

    python -m zmlx.validate [MODEL] [--patterns P ...] [--runs 3] [--max-tokens 200]
                            [--prompts FILE] [--size tiny|full] [--quant 4bit] [--json OUT]

MODEL is a local model directory, a Hugging Face id (loaded by mlx-lm from the local cache,
never downloaded) or ``zoo:NAME`` (a :mod:`zmlx.models` family: its trained tiny fixture, or
random weights when it has none; ``--size full`` builds the real-size model with random weights,
for speed). Without MODEL it runs the default trained fixture.

It loads the model once and switches it between stock and patched (:func:`zmlx.patch.patch` /
``unpatch``): greedy tokens over several prompts and teacher-forced logits (top-1 agreement,
max/mean logit difference), then prefill and decode tok/s measured stock and patched
interleaved (A B A B ...), peak memory and the speed ratio. It prints a table and writes a
``validate`` capsule (``benchmarks/capsules/`` or ``--json OUT``). Exit code 1 when fidelity
fails, 2 on an error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = (
    "def fibonacci(n):\n    ",
    "import os\nimport sys\n\n\ndef main():\n",
    "The quick brown fox jumps over the lazy dog. The",
    "class Stack:\n    def __init__(self):\n        self.",
)
QUANTS = ("none", "4bit", "8bit", "mxfp4")


class ValidateError(ValueError):
    """A problem to report in one line (missing model, bad argument)."""


@dataclass
class Loaded:
    """A model ready to validate, with what it is and where it came from."""

    model: Any
    encode: Any  # str -> list[int]
    name: str
    source: str
    random_weights: bool
    prompts: list[list[int]] = field(default_factory=list)  # given by the fixture, if any
    notes: list[str] = field(default_factory=list)


def _mlx_lm_load(path: str, name: str, source: str, random_weights: bool = False) -> Loaded:
    from mlx_lm import load

    try:
        model, tok = load(path)
    except Exception as e:  # a folder that is not an mlx-lm model, unsupported model_type...
        raise ValidateError(f"[validate] could not load {name}: {type(e).__name__}: {e}") from e
    return Loaded(model, tok.encode, name, source, random_weights)


def _fixture(family: str, quant: str | None) -> Loaded:
    import json

    from .models import fixtures, quantize

    path = fixtures.path(family)
    loaded = _mlx_lm_load(str(path), family, f"fixture:{family}")
    if quant is not None:  # as mlx_lm.convert -q would, with the family's own predicate
        config = json.loads((path / "config.json").read_text())
        loaded.model = quantize(loaded.model, quant, config)
        loaded.source += f" ({quant})"
    rec = fixtures.record(family)
    if rec.get("prompt_tokens"):
        loaded.prompts.append(list(rec["prompt_tokens"]))
    return loaded


def _zoo_random(family: str, size: str, quant: str | None) -> Loaded:
    from .models import build
    from .models.tokenizer import byte_tokenizer

    model = build(family, size, quant)
    what = f"zoo:{family} ({size}, random weights{', ' + quant if quant else ''})"
    return Loaded(model, byte_tokenizer().encode, f"{family}-{size}", what, True)


def zoo_family(name: str) -> str:
    """A zoo family from its name (``qwen3_moe``, ``qwen3-moe``) or from the model-matrix name
    of the real model it reproduces (``qwen3-30b-a3b``, ``GLM-4.7-Flash``)."""
    from .matrix.models import CATALOG
    from .models import FAMILIES

    if name.replace("-", "_") in FAMILIES:
        return name.replace("-", "_")
    twins = {e.name.lower(): e.zoo for e in CATALOG if e.zoo}
    if name.lower() in twins:
        return twins[name.lower()]
    raise ValidateError(
        f"[validate] no zoo model {name!r}; expected one of {list(FAMILIES)} "
        f"or a model they reproduce ({', '.join(sorted(twins))})"
    )


def resolve(spec: str | None, size: str = "tiny", quant: str | None = None) -> Loaded:
    """Load MODEL (see the module docstring); raises :class:`ValidateError` in one line."""
    from .models import fixtures

    if spec is None or spec.startswith("zoo:"):
        family = fixtures.DEFAULT if spec is None else zoo_family(spec[4:])
        if size == "tiny" and family in fixtures.available():
            return _fixture(family, quant)
        loaded = _zoo_random(family, size, quant)
        if size == "tiny":
            loaded.notes.append(f"no trained fixture for {family}: random weights")
        return loaded
    if quant is not None:
        raise ValidateError(
            "[validate] --quant applies to zoo models only (a checkpoint keeps its own)"
        )
    if Path(spec).expanduser().is_dir():
        path = str(Path(spec).expanduser())
        return _mlx_lm_load(path, Path(path).name, path)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise ValidateError(
            f"[validate] {spec!r} is not a model directory, a zoo:NAME or a Hugging Face id "
            "(org/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(spec, local_files_only=True)
    except Exception:  # not cached (offline by design), or not a valid id
        raise ValidateError(
            f"[validate] {spec!r} is not in the local Hugging Face cache (nothing is downloaded); "
            f"fetch it first with: huggingface-cli download {spec}"
        ) from None
    return _mlx_lm_load(path, spec.split("/")[-1], spec)


def prompts_for(loaded: Loaded, prompts_file: str | None) -> list[list[int]]:
    """Token ids of the prompts: the fixture's own, then the file's lines (or the defaults)."""
    if prompts_file:
        try:
            lines = Path(prompts_file).read_text().splitlines()
        except OSError as e:
            raise ValidateError(f"[validate] cannot read --prompts {prompts_file}: {e}") from None
        texts = [t.replace("\\n", "\n") for t in lines if t.strip()]
        if not texts:
            raise ValidateError(f"[validate] --prompts {prompts_file} has no prompts")
    else:
        texts = list(DEFAULT_PROMPTS)
    out = list(loaded.prompts) + [list(loaded.encode(t)) for t in texts]
    return [p for p in out if p]


def prefill_prompt(prompts: list[list[int]], n: int) -> list[int]:
    """``n`` tokens made by repeating the prompts (the prefill of the throughput runs)."""
    flat = [t for p in prompts for t in p]
    return (flat * (n // len(flat) + 1))[:n]


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zmlx.validate",
        description="Check a patched model against stock (fidelity) and time both (speed).",
    )
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="local dir, Hugging Face id (cached) or zoo:NAME; default: the fixture")  # fmt: skip
    p.add_argument("--patterns", nargs="*", default=None, metavar="P",
                   help="patterns to apply (default: the safety table's choice)")  # fmt: skip
    p.add_argument("--runs", type=int, default=3, help="throughput runs per variant")
    p.add_argument("--max-tokens", type=int, default=200, help="tokens decoded per run/prompt")
    p.add_argument("--prefill-tokens", type=int, default=256, help="prompt length for speed")
    p.add_argument("--prompts", default=None, metavar="FILE", help="one prompt per line")
    p.add_argument("--size", default="tiny", choices=["tiny", "full"], help="zoo: model size")
    p.add_argument("--quant", default=None, choices=QUANTS,
                   help="zoo and fixtures: quantization (default 4bit: the fused kernels read "
                        "quantized weights; none keeps float)")  # fmt: skip
    p.add_argument("--min-top1", type=float, default=0.99,
                   help="teacher-forced top-1 agreement needed to pass")  # fmt: skip
    p.add_argument("--require-identical", action=argparse.BooleanOptionalAction, default=None,
                   help="require identical greedy tokens (default: unless random weights)")  # fmt: skip
    p.add_argument("--compile-decode", action="store_true",
                   help="decode the patched model through zmlx.decode.compile_decode")  # fmt: skip
    p.add_argument("--json", default=None, metavar="OUT",
                   help="write the capsule here ('-': stdout; default: benchmarks/capsules/)")  # fmt: skip
    return p


def validate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the checks of ``args``; returns the ``validate`` capsule (not yet written)."""
    from .bench import capsule
    from .bench.lm import Toggle, fidelity, throughput

    if args.runs < 1 or args.max_tokens < 1 or args.prefill_tokens < 1:
        raise ValidateError("[validate] --runs, --max-tokens and --prefill-tokens must be >= 1")
    from .patch import PATTERNS

    unknown = [p for p in args.patterns or [] if p not in PATTERNS]
    if unknown:  # before the (possibly long) load
        raise ValidateError(f"[validate] unknown pattern(s) {unknown}; known: {sorted(PATTERNS)}")
    zoo = args.model is None or args.model.startswith("zoo:")
    quant = args.quant or ("4bit" if zoo else None)
    loaded = resolve(args.model, args.size, None if quant == "none" else quant)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    prompts = prompts_for(loaded, args.prompts)
    toggle = Toggle(loaded.model, patterns=args.patterns,
                    compile_decode=getattr(args, "compile_decode", False))  # fmt: skip
    require = (
        not loaded.random_weights if args.require_identical is None else args.require_identical
    )
    fid = fidelity(toggle, prompts, args.max_tokens, min_top1=args.min_top1,
                   require_identical=require)  # fmt: skip
    speed, memory = throughput(
        toggle, prefill_prompt(prompts, args.prefill_tokens), args.max_tokens, args.runs
    )
    report = toggle.report
    results = {
        "model": loaded.name,
        "source": loaded.source,
        "random_weights": loaded.random_weights,
        "patterns": args.patterns,
        "compile_decode": bool(getattr(args, "compile_decode", False)),
        "patch": report.to_dict() if hasattr(report, "to_dict") else {},
        "fidelity": fid,
        "throughput": speed,
        "memory": memory,
        "passed": fid["passed"],
        "notes": loaded.notes,
    }
    return capsule.make("validate", results)


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    from .bench import capsule
    from .bench.report import render

    try:
        cap = validate(args)
        if args.json != "-":
            print(render(cap))
        path = capsule.save(cap, args.json, cap["results"]["model"])
    except (ValueError, OSError) as e:  # ValidateError, and patch()'s argument errors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: {e} (python -m zmlx.validate needs the lm extra)", file=sys.stderr)
        return 2
    if path is not None:
        print(f"capsule: {path}")
    return 0 if cap["results"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
