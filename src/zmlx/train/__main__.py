"""python -m zmlx.train: LoRA fine-tuning of an mlx-lm model with zmlx's fused kernels.

python -m zmlx.train --model PATH [--config FILE] [--iters N] [--lora-layers L] [--lr LR]
                     [--data DIR] [--adapter-path DIR] [--save-every N] [--no-patch] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from ..bench.table import Table, format_text, num
from .trainer import TrainConfig, load_config, train


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zmlx.train", description=__doc__.splitlines()[0])
    # Defaults are None so a config file's values stand unless a flag is given.
    p.add_argument("--model", default=None, help="mlx-lm model folder or cached Hugging Face id")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML or JSON options")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="train.jsonl / valid.jsonl in mlx-lm's formats (default: a tiny corpus)")  # fmt: skip
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lora-layers", type=int, default=None, help="last L blocks get adapters")
    p.add_argument("--lora-rank", type=int, default=None)
    p.add_argument("--lora-scale", type=float, default=None)
    p.add_argument("--lora-dropout", type=float, default=None)
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=None)
    p.add_argument("--optimizer", default=None, choices=["adamw", "adam", "sgd"])
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--adapter-path", default=None, metavar="DIR")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    p.add_argument("--steps-per-eval", type=int, default=None)
    p.add_argument("--val-batches", type=int, default=None)
    p.add_argument("--max-seq-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-patch", dest="patch", action="store_const", const=False, default=None,
                   help="stock mlx-lm modules, loss and optimizer (the baseline)")  # fmt: skip
    p.add_argument("--patterns", nargs="+", default=None, help="patch patterns (training mode)")
    p.add_argument("--emulate", action="store_const", const=True, default=None,
                   help="run zmlx's GPU kernels on the CPU emulator (slow)")  # fmt: skip
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="compile the training step with mx.compile")  # fmt: skip
    p.add_argument("--mask-prompt", action="store_const", const=True, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the config file, then the flags that were given."""
    raw = load_config(args.config) if args.config else {}
    cfg = TrainConfig.from_dict(raw)
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, tuple(v) if f.name == "patterns" else v)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)

        def on_report(r: dict) -> None:
            if not args.json and "val_loss" in r:
                print(f"iter {r['iteration']}: val loss {r['val_loss']:.4f}", file=sys.stderr)

        res = train(cfg, progress=False if args.no_progress else None, on_report=on_report)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return 0
    mods = ", ".join(sorted({p for _, p in res.patched})) or "none"
    rows = [
        ["steps", str(len(res.losses))],
        ["loss first / last", f"{num(res.losses[0], 4)} / {num(res.losses[-1], 4)}"],
        ["validation loss", num(res.val_losses[-1][1], 4) if res.val_losses else "-"],
        ["tokens", str(res.tokens)],
        ["trainable parameters", str(res.trainable_parameters)],
        ["patched modules", f"{len(res.patched)} ({mods})"],
        ["zmlx kernel launches", str(res.kernel_launches)],
        ["seconds", num(res.seconds, 1)],
        ["adapters", res.adapter_file],
    ]
    print(format_text(Table(f"LoRA on {cfg.model}", ["", ""], rows)))
    for path, pattern in res.patched:
        print(f"  patched {path}: {pattern}")
    for note in res.patch_notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
