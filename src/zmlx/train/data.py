"""Training data: a folder of mlx-lm JSONL files, or a built-in tiny corpus for demos.

A ``--data`` folder holds ``train.jsonl`` and optionally ``valid.jsonl`` in any format mlx-lm's
LoRA trainer reads (``{"text": ...}``, ``{"prompt": ..., "completion": ...}`` or chat
``{"messages": [...]}``); :func:`load` hands them to ``mlx_lm.tuner.datasets``. A chat dataset
needs a tokenizer with a chat template; for one without (the tiny fixtures) the messages are
joined as ``role: content`` lines, so the foundry's datasets still train.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

# Short pieces of Python in the style the zoo fixtures were trained on (written for zmlx).
TINY_CORPUS = (
    'def clamp(x, lo, hi):\n    """Limit x to [lo, hi]."""\n    return max(lo, min(x, hi))\n',
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n"
    "    return total / len(values)\n",
    'def is_even(n):\n    """True when n is divisible by two."""\n    return n % 2 == 0\n',
    "def first(items, default=None):\n    for item in items:\n        return item\n"
    "    return default\n",
    "def flatten(rows):\n    out = []\n    for row in rows:\n        out.extend(row)\n"
    "    return out\n",
    'def count(text, ch):\n    """How many times ch occurs in text."""\n    n = 0\n'
    "    for c in text:\n        if c == ch:\n            n += 1\n    return n\n",
    "def square_all(xs):\n    return [x * x for x in xs]\n",
    "def last(items):\n    if not items:\n        return None\n    return items[-1]\n",
    'def pairs(xs):\n    """Adjacent pairs of xs."""\n    return list(zip(xs, xs[1:]))\n',
    "def total_length(words):\n    return sum(len(w) for w in words)\n",
    "def reverse(s):\n    return s[::-1]\n",
    'def sign(x):\n    """-1, 0 or 1."""\n    if x > 0:\n        return 1\n'
    "    if x < 0:\n        return -1\n    return 0\n",
)


def tiny_corpus(valid: int = 2) -> tuple[list[dict], list[dict]]:
    """The built-in corpus as ``(train, valid)`` lists of ``{"text": ...}``."""
    rows = [{"text": t} for t in TINY_CORPUS]
    return rows[valid:], rows[:valid]


def plain_chat(messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """Chat messages as ``role: content`` lines (for tokenizers without a chat template)."""
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def _chat_fallback(tokenizer) -> None:
    """Give ``tokenizer`` a plain chat rendering when it has no chat template."""
    if getattr(tokenizer, "chat_template", None):
        return

    def apply_chat_template(messages, tools=None, add_generation_prompt=False,
                            return_dict=False, tokenize=True, **kw):  # fmt: skip
        text = plain_chat(messages, add_generation_prompt)
        return tokenizer.encode(text) if tokenize else text

    tokenizer.apply_chat_template = apply_chat_template


def load(data: str | None, tokenizer, *, mask_prompt: bool = False):
    """``(train, valid)`` datasets ready for ``mlx_lm.tuner.trainer.iterate_batches``.

    Args:
        data: a folder with ``train.jsonl`` (and ``valid.jsonl``), or None for the built-in
            corpus.
        tokenizer: the model's tokenizer (mlx-lm's ``TokenizerWrapper``).
        mask_prompt: train on completions only (prompt/completion and chat data).

    Returns:
        Two ``CacheDataset`` s (the second may be empty).
    """
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset

    config = types.SimpleNamespace(mask_prompt=mask_prompt)
    if data is None:
        train_rows, valid_rows = tiny_corpus()
    else:
        root = Path(data)
        if not (root / "train.jsonl").is_file():
            raise ValueError(f"[train] {root}: expected train.jsonl (and valid.jsonl)")
        train_rows = _read(root / "train.jsonl")
        valid_rows = _read(root / "valid.jsonl") if (root / "valid.jsonl").is_file() else []
    if not train_rows:
        raise ValueError("[train] the training set is empty")
    if "messages" in train_rows[0] or "prompt" in train_rows[0]:
        _chat_fallback(tokenizer)
    train = CacheDataset(create_dataset(train_rows, tokenizer, config))
    valid = CacheDataset(create_dataset(valid_rows, tokenizer, config)) if valid_rows else None
    return train, valid


def _read(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"[train] {path}:{i + 1}: not JSON ({e})") from None
    return rows
