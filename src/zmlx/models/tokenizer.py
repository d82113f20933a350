"""Offline byte-level BPE tokenizers (``tokenizers``), saved as Hugging Face tokenizer files.

mlx-lm's ``load`` reads them with ``AutoTokenizer`` and, seeing a ``ByteLevel`` decoder in
``tokenizer.json``, streams text with its ``BPEStreamingDetokenizer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def _byte_level(model):
    from tokenizers import Tokenizer, decoders, pre_tokenizers

    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def byte_tokenizer():
    """A tokenizer of ``EOS`` (id 0) and the 256 byte symbols (ids 1-256), without merges.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {EOS: 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    tok = _byte_level(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens([EOS])
    return _wrap(tok)


def train_bpe(texts: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same texts).

    Args:
        texts: the training corpus, as strings.
        vocab_size: the vocabulary size, ``EOS`` (id 0) and the 256 byte symbols included.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import models, pre_tokenizers, trainers

    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return _wrap(tok)


def save_tokenizer(tokenizer, path: str | Path) -> None:
    """``tokenizer.save_pretrained(path)``, loadable by transformers 4 and 5 alike."""
    tokenizer.save_pretrained(str(path))
    config = Path(path) / "tokenizer_config.json"
    data = json.loads(config.read_text())
    # transformers 5 writes its own class name, which transformers 4 cannot resolve.
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.write_text(json.dumps(data, indent=2) + "\n")
