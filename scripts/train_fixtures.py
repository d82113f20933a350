"""Train the zoo's tiny fixture checkpoints (deterministic, CPU, a few minutes per family).

Corpus: a few files of the Python standard library that ships with the interpreter running this
script (fixed names, fixed prefix length, joined with EOS). Tokenizer: byte-level BPE, 1024
tokens, trained on that corpus with ``tokenizers``. Model: the family's tiny zoo config
(``zmlx.models.configs.TINY``), float32, trained with AdamW on random windows of the corpus
drawn from a seeded numpy generator. A corpus this small is nearly memorised, so greedy decoding
from a corpus prompt is confident (wide top-1/top-2 margins), which is what token-identity tests
of patched models need.

Each fixture lands in ``src/zmlx/models/fixtures/<family>/``: ``config.json``,
``model.safetensors``, the tokenizer files and ``fixture.json`` (training record, the greedy
reference tokens and margin statistics; see ``zmlx.models.fixtures``).

    python scripts/train_fixtures.py                      # every family in DEFAULT_FAMILIES
    python scripts/train_fixtures.py --families qwen3_moe --steps 300 --out /tmp/fx
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from zmlx.models import build, fixtures, quantize, save
from zmlx.models.configs import TINY
from zmlx.models.tokenizer import EOS, train_bpe

DEFAULT_FAMILIES = (
    "qwen3_moe",
    "lfm2_moe",
    "glm4_moe_lite",
    "gpt_oss",
    "mixtral",
    "deepseek_v3",
    "olmoe",
    "granitemoe",
    "minimax",
    "qwen3_next",
    "qwen3",
    "llama",
)
CORPUS_FILES = ("bisect.py", "colorsys.py", "fnmatch.py", "heapq.py")
# Longer runs where 400 steps left a greedy near-tie (a top-1/top-2 margin under 0.05): granitemoe
# divides its logits by logits_scaling=6 and scales residual branches by 0.22 (loss still 0.55,
# one margin 0.003); the dense models have fewer parameters (loss 0.14-0.18, margins 0.045).
STEPS = {"granitemoe": 1200, "qwen3": 800, "llama": 800}
PROMPT_TOKENS = 24
GENERATE_TOKENS = 64


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES))
    p.add_argument("--out", type=Path, default=fixtures.FIXTURES_DIR)
    p.add_argument("--chars-per-file", type=int, default=6000)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=None, help="default: STEPS[family], else 400")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=96)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def load_corpus(chars_per_file: int) -> list[str]:
    """The first ``chars_per_file`` characters of each of :data:`CORPUS_FILES`."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [(stdlib / f).read_text(encoding="utf-8")[:chars_per_file] for f in CORPUS_FILES]


def margin_stats(margins: list[float]) -> dict[str, float]:
    m = np.asarray(margins)
    return {"median": float(np.median(m)), "min": float(m.min()), "p10": float(np.quantile(m, 0.1))}


def check_4bit(path: Path, prompt: list[int], tokens: list[int]) -> dict:
    """Greedy decoding of the saved fixture after 4-bit quantization, against float32."""
    from mlx_lm.utils import load_model

    model, config = load_model(path)
    quantize(model, "4bit", config)
    q_tokens, q_margins = fixtures.greedy(model, prompt, len(tokens))
    same = next((i for i, (a, b) in enumerate(zip(q_tokens, tokens)) if a != b), len(tokens))
    return {"same_prefix": same, "margin": margin_stats(q_margins)}


def train_family(family: str, tokenizer, ids: np.ndarray, args, steps: int) -> dict:
    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build(family, "tiny", seed=args.seed)
    model.train()
    warmup = min(30, steps // 10)
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(1e-5, args.lr, max(warmup, 1)),
            optim.cosine_decay(args.lr, max(steps - warmup, 1), args.lr * 0.05),
        ],
        [warmup],
    )
    opt = optim.AdamW(learning_rate=schedule, weight_decay=0.0)

    def loss_fn(model, x, y):
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        return loss

    t0, losses = time.perf_counter(), []
    starts_hi = len(ids) - args.seq_len - 1
    for i in range(steps):
        starts = rng.integers(0, starts_hi, args.batch_size)
        batch = np.stack([ids[s : s + args.seq_len + 1] for s in starts])
        loss = step(mx.array(batch[:, :-1]), mx.array(batch[:, 1:]))
        mx.eval(state)
        losses.append(loss.item())
        if (i + 1) % 50 == 0 or i == 0:
            tail = float(np.mean(losses[-50:]))
            print(
                f"  [{family}] step {i + 1}/{steps} loss {tail:.3f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    model.eval()
    return {
        "model": model,
        "seconds": time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-50:])),
    }


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    texts = load_corpus(args.chars_per_file)
    tokenizer = train_bpe(texts, args.vocab_size)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids = []
    for t in texts:
        ids += tokenizer.encode(t) + [eos]
    ids = np.asarray(ids, dtype=np.int32)
    prompt = ids[:PROMPT_TOKENS].tolist()
    print(f"corpus: {sum(map(len, texts))} chars, {len(ids)} tokens, vocab {len(tokenizer)}")
    for family in args.families:
        if family not in TINY:
            print(f"unknown family {family!r}", file=sys.stderr)
            return 2
        steps = args.steps or STEPS.get(family, 400)
        out = train_family(family, tokenizer, ids, args, steps)
        model = out["model"]
        tokens, margins = fixtures.greedy(model, prompt, GENERATE_TOKENS)
        stats = margin_stats(margins)
        record = {
            "family": family,
            "prompt_tokens": prompt,
            "prompt": tokenizer.decode(prompt),
            "greedy_tokens": tokens,
            "greedy_text": tokenizer.decode(tokens),
            "greedy_margins": [round(m, 4) for m in margins],
            "margin": stats,
            "final_loss": out["final_loss"],
            "train_seconds": round(out["seconds"], 1),
            "training": {
                "corpus_files": list(CORPUS_FILES),
                "chars_per_file": args.chars_per_file,
                "python": sys.version.split()[0],
                "mlx": mx.__version__,
                "vocab_size": args.vocab_size,
                "steps": steps,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "lr": args.lr,
                "seed": args.seed,
            },
        }
        path = save(model, args.out / family, tokenizer)
        record["quantized_4bit"] = check_4bit(path, prompt, tokens)
        (path / fixtures.RECORD).write_text(json.dumps(record, indent=1) + "\n")
        size = sum(f.stat().st_size for f in path.iterdir())
        print(
            f"{family}: loss {out['final_loss']:.3f}, margin median {stats['median']:.2f} "
            f"min {stats['min']:.3f}, 4-bit same for {record['quantized_4bit']['same_prefix']} "
            f"tokens, {out['seconds']:.0f} s, {size / 2**20:.2f} MiB\n"
            f"  {record['prompt']!r} -> {record['greedy_text']!r}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
