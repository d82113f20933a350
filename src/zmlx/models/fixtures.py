"""Tiny trained checkpoints shipped with zmlx (package data), for fidelity tests.

Each ``fixtures/<family>/`` directory is a normal mlx-lm model directory (``config.json``,
``model.safetensors``, tokenizer files) trained by ``scripts/train_fixtures.py``, plus
``fixture.json``: the prompt, the greedy reference tokens with their top-1/top-2 logit margins,
and how it was trained. Weights are float32, so the unquantized MoE runs on the CPU too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
RECORD = "fixture.json"
DEFAULT = "qwen3_moe"
"""The fixture ``python -m zmlx.validate`` uses when given no model."""


def available() -> list[str]:
    """Families that have a trained fixture, sorted."""
    if not FIXTURES_DIR.is_dir():
        return []
    return sorted(p.name for p in FIXTURES_DIR.iterdir() if (p / RECORD).is_file())


def path(family: str = DEFAULT) -> Path:
    """The directory of ``family``'s fixture (give it to ``mlx_lm.load``)."""
    p = FIXTURES_DIR / family
    if not (p / RECORD).is_file():
        raise ValueError(f"[models.fixtures] expected a family in {available()}, got {family!r}")
    return p


def record(family: str = DEFAULT) -> dict[str, Any]:
    """``fixture.json`` of ``family``: prompt tokens, greedy tokens, margins, training record."""
    return json.loads((path(family) / RECORD).read_text())


def load(family: str = DEFAULT, **kwargs: Any):
    """``mlx_lm.load`` of ``family``'s fixture; returns ``(model, tokenizer)``."""
    from mlx_lm import load as mlx_lm_load

    return mlx_lm_load(str(path(family)), **kwargs)


def greedy(model, prompt: list[int], n: int = 64) -> tuple[list[int], list[float]]:
    """Greedy decoding with confidence: ``n`` tokens after ``prompt`` (``mlx_lm`` generate_step).

    Returns:
        The tokens and, for each, its top-1 minus top-2 logit margin (of the log-probabilities,
        which differ from the logits by a per-step constant).
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    tokens, margins = [], []
    for tok, logprobs in generate_step(mx.array(prompt), model, max_tokens=n):
        top2 = mx.topk(logprobs.astype(mx.float32), 2)
        tokens.append(int(tok))
        margins.append((top2.max() - top2.min()).item())
    return tokens, margins


# Short prompts (token ids every fixture's vocabulary has) for fidelity checks beyond each
# fixture's own prompt: repeated tokens, a single token, ids across the vocabulary.
PROMPTS = ([1, 5, 9, 13], [200, 31, 7], [42], [3, 3, 3, 3, 3, 3], [17, 101, 250, 9, 64])


def load_quantized(family: str = DEFAULT, quant: str | None = None,
                   group_size: int | None = None):  # fmt: skip
    """``family``'s fixture quantized as ``mlx_lm.convert -q`` would (its quant predicate).

    Args:
        family: a fixture family.
        quant: ``"4bit"``, ``"8bit"`` or ``"mxfp4"``; default ``"mxfp4"`` for gpt_oss (how
            it ships) and ``"4bit"`` otherwise.
        group_size: the affine group size; default
            :func:`zmlx.models.build.backend_group_size`: mlx-lm's 64, but 32 on CUDA
            (where MLX 0.32.4 computes the 64-wide fixtures' one-group rows wrongly).

    Returns:
        ``(model, tokenizer)``.
    """
    from .build import backend_group_size, quantize

    model, tokenizer = load(family)
    quant = quant or ("mxfp4" if family == "gpt_oss" else "4bit")
    config = json.loads((path(family) / "config.json").read_text())
    group_size = group_size or backend_group_size()
    if group_size not in (None, 32, 64, 128):
        raise ValueError(f"[fixtures] expected group_size 32, 64 or 128, got {group_size}")
    return quantize(model, quant, config, group_size=group_size), tokenizer
