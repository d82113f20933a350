"""LoRA fine-tuning with zmlx's fused kernels, built on mlx-lm's tuner.

mlx-lm supplies the pieces (``linear_to_lora_layers``, its datasets and ``iterate_batches``,
``evaluate``, the adapter file layout that ``mlx_lm.load(..., adapter_path=...)`` reads); zmlx
adds its kernels to the step:

* the model is patched with ``zmlx.patch.patch(model, mode="training")``: only patterns whose
  ops have gradients (RMSNorm and LayerNorm, with backward kernels for x and the weight);
* the loss is zmlx's fused softmax cross-entropy (:func:`zmlx.kernels.losses.softmax_cross_entropy`:
  one pass over the vocabulary forward, a chunked one-pass backward, never a softmax tensor);
* AdamW steps run zmlx's fused optimizer kernel (:class:`zmlx.kernels.optimizers.FusedAdamW`).

On the CPU these ops run their plain-MLX references (or their GPU kernels on the SIMT emulator
with ``emulate=True``); ``patch=False`` trains with stock mlx-lm pieces for comparison.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

IGNORE = -100


@dataclass
class TrainConfig:
    """Everything one run needs (flags and config files use these names, dashes allowed).

    Attributes:
        model: an mlx-lm model folder or Hugging Face id (read offline from the cache).
        data: a folder of mlx-lm JSONL files; None for the built-in tiny corpus.
        iters: optimizer steps.
        batch_size: sequences per step.
        lora_layers: how many of the last blocks get LoRA adapters (-1: all).
        lora_rank, lora_scale, lora_dropout: the LoRA parameters (mlx-lm's names: rank,
            scale, dropout).
        learning_rate: the optimizer's learning rate.
        optimizer: ``adamw`` (zmlx's fused kernel when patched), ``adam`` or ``sgd``.
        weight_decay: AdamW's weight decay.
        adapter_path: folder for ``adapters.safetensors``, checkpoints and
            ``adapter_config.json``.
        save_every: write a checkpoint every this many steps (0: only at the end).
        steps_per_eval: validation loss every this many steps (0: only at the end).
        val_batches: validation batches per evaluation (-1: the whole set).
        max_seq_length: longer sequences are truncated.
        seed: seeds LoRA initialisation and batch order.
        patch: use zmlx's kernels (patched norms, fused loss and optimizer); False is stock
            mlx-lm, the baseline.
        patterns: the patch patterns applied in training mode.
        emulate: run zmlx's GPU kernels on the CPU SIMT emulator (slow; proves the kernels,
            including their backward passes, on a machine without a GPU).
        compile: compile the step with ``mx.compile`` (as mlx-lm's trainer does).
        mask_prompt: train on completions only.
    """

    model: str = ""
    data: str | None = None
    iters: int = 100
    batch_size: int = 4
    lora_layers: int = 16
    lora_rank: int = 8
    lora_scale: float = 20.0
    lora_dropout: float = 0.0
    learning_rate: float = 1e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adapter_path: str = "adapters"
    save_every: int = 100
    steps_per_eval: int = 0
    val_batches: int = 25
    max_seq_length: int = 2048
    seed: int = 0
    patch: bool = True
    patterns: tuple[str, ...] = ("rms_norm", "layer_norm")
    emulate: bool = False
    compile: bool = False
    mask_prompt: bool = False

    # mlx-lm's config names, accepted in config files.
    _ALIASES = {"num_layers": "lora_layers", "lr": "learning_rate"}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """A config from a dict of field names (dashes or mlx-lm's names accepted)."""
        known = {f.name for f in fields(cls)}
        out: dict[str, Any] = {}
        for k, v in raw.items():
            k = cls._ALIASES.get(k.replace("-", "_"), k.replace("-", "_"))
            if k == "lora_parameters" and isinstance(v, dict):
                for sub in ("rank", "scale", "dropout"):
                    if sub in v:
                        out[f"lora_{sub}"] = v[sub]
                continue
            if k not in known:
                raise ValueError(f"[train] unknown config key {k!r}; known: {sorted(known)}")
            out[k] = tuple(v) if k == "patterns" else v
        return cls(**out)


def load_config(path: str) -> dict[str, Any]:
    """A YAML or JSON config file as a dict."""
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        raw = yaml.safe_load(text) or {}
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"[train] {path}: expected a mapping of options")
    return raw


@dataclass
class TrainResult:
    """What a run did: per-step losses, validation losses, what was patched, where it saved."""

    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    patched: list[tuple[str, str]] = field(default_factory=list)
    patch_notes: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    tokens: int = 0
    seconds: float = 0.0
    kernel_launches: int = 0
    adapter_file: str = ""
    checkpoints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fused_loss(model: nn.Module, batch: mx.array, lengths: mx.array):
    """mlx-lm's default LoRA loss (mean next-token cross-entropy over the unmasked tokens),
    with zmlx's fused cross-entropy; returns ``(loss, tokens)``."""
    from ..kernels.losses import softmax_cross_entropy

    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    steps = mx.arange(1, targets.shape[1] + 1)
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps <= lengths[:, 1:])
    ntoks = mask.sum()
    ce = softmax_cross_entropy(
        logits, mx.where(mask, targets, IGNORE), ignore_index=IGNORE, reduction="sum"
    )
    return ce / ntoks, ntoks


def _optimizer(cfg: TrainConfig):
    import mlx.optimizers as optim

    if cfg.optimizer == "adamw":
        if cfg.patch:
            from ..kernels.optimizers import FusedAdamW

            return FusedAdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
        return optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return optim.Adam(learning_rate=cfg.learning_rate)
    if cfg.optimizer == "sgd":
        return optim.SGD(learning_rate=cfg.learning_rate)
    raise ValueError(f"[train] expected optimizer adamw, adam or sgd, got {cfg.optimizer!r}")


def _save(model: nn.Module, path: Path) -> None:
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(path), dict(tree_flatten(model.trainable_parameters())))


def prepare(cfg: TrainConfig):
    """Load the model, add LoRA adapters and (``cfg.patch``) patch it for training.

    Returns:
        ``(model, tokenizer, patch_report or None)``.
    """
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from ..patch import patch

    if not cfg.model:
        raise ValueError("[train] expected --model (a local mlx-lm model folder or a cached id)")
    mx.random.seed(cfg.seed)
    model, tokenizer = load(cfg.model)
    model.freeze()
    n_layers = len(model.layers) if cfg.lora_layers < 0 else cfg.lora_layers
    linear_to_lora_layers(model, n_layers, {"rank": cfg.lora_rank, "scale": cfg.lora_scale,
                                            "dropout": cfg.lora_dropout})  # fmt: skip
    report = None
    if cfg.patch:
        with warnings.catch_warnings():  # patterns are chosen here, not by the safety table
            warnings.simplefilter("ignore")
            report = patch(model, mode="training", patterns=list(cfg.patterns))
    return model, tokenizer, report


def train(
    cfg: TrainConfig,
    *,
    progress: bool | None = None,
    on_report: Callable[[dict], Any] | None = None,
) -> TrainResult:
    """Fine-tune ``cfg.model`` with LoRA; returns the losses and what was saved.

    Args:
        cfg: the run's configuration.
        progress: a tqdm bar (default: when stderr is a terminal).
        on_report: called with ``{"iteration", "train_loss" | "val_loss", ...}`` reports.
    """
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import default_loss, evaluate, iterate_batches

    from ..core import emulate as _emulate
    from ..core.kernel import launch_count
    from . import data as _data

    if cfg.emulate and cfg.compile:
        raise ValueError("[train] the kernel emulator cannot run inside mx.compile")
    model, tokenizer, report = prepare(cfg)
    train_set, valid_set = _data.load(cfg.data, tokenizer, mask_prompt=cfg.mask_prompt)
    if len(train_set) < cfg.batch_size:
        raise ValueError(
            f"[train] {len(train_set)} training examples, fewer than --batch-size {cfg.batch_size}"
        )
    res = TrainResult(
        patched=list(report.replaced) if report else [],
        patch_notes=list(report.notes) if report else ["patch=False: stock mlx-lm modules"],
        trainable_parameters=sum(v.size for _, v in tree_flatten(model.trainable_parameters())),
    )
    out = Path(cfg.adapter_path)
    out.mkdir(parents=True, exist_ok=True)
    config = {"fine_tune_type": "lora", "num_layers": cfg.lora_layers, "model": cfg.model,
              "lora_parameters": {"rank": cfg.lora_rank, "scale": cfg.lora_scale,
                                  "dropout": cfg.lora_dropout},
              "zmlx": {**asdict(cfg), "patched": res.patched}}  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")

    loss_fn = fused_loss if cfg.patch else default_loss
    opt = _optimizer(cfg)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    def step(batch, lengths):
        (loss, ntoks), grads = loss_and_grad(model, batch, lengths)
        opt.update(model, grads)
        return loss, ntoks

    if cfg.compile:
        step = mx.compile(step, inputs=state, outputs=state)
    batches = iterate_batches(train_set, cfg.batch_size, cfg.max_seq_length, loop=True,
                              seed=cfg.seed)  # fmt: skip
    bar = _bar(cfg.iters, progress)
    ctx = _emulate.emulate() if cfg.emulate else contextlib.nullcontext()
    launches0, t0 = launch_count(), time.perf_counter()

    def validate(it: int) -> None:
        val = evaluate(model, valid_set, min(cfg.batch_size, len(valid_set)), cfg.val_batches,
                       cfg.max_seq_length, loss=loss_fn)  # fmt: skip
        res.val_losses.append((it, val))
        model.train()
        if on_report:
            on_report({"iteration": it, "val_loss": val})

    model.train()
    with ctx:
        for it in range(1, cfg.iters + 1):
            batch, lengths = next(batches)
            loss, ntoks = step(batch, lengths)
            mx.eval(state, loss, ntoks)
            res.losses.append(loss.item())
            res.tokens += int(ntoks.item())
            bar(res.losses[-1])
            if on_report and (it % 10 == 0 or it == cfg.iters):
                on_report({"iteration": it, "train_loss": res.losses[-1], "tokens": res.tokens})
            if valid_set is not None and cfg.steps_per_eval and it % cfg.steps_per_eval == 0:
                validate(it)
            if cfg.save_every and it % cfg.save_every == 0 and it < cfg.iters:
                ckpt = out / f"{it:07d}_adapters.safetensors"
                _save(model, ckpt)
                _save(model, out / "adapters.safetensors")
                res.checkpoints.append(str(ckpt))
        if valid_set is not None and not (
            cfg.steps_per_eval and cfg.iters % cfg.steps_per_eval == 0
        ):
            validate(cfg.iters)
    bar(None)
    res.seconds = time.perf_counter() - t0
    res.kernel_launches = launch_count() - launches0
    res.adapter_file = str(out / "adapters.safetensors")
    _save(model, Path(res.adapter_file))
    if not all(math.isfinite(x) for x in res.losses):
        raise RuntimeError(f"[train] the loss diverged: {res.losses[-5:]}")
    return res


def _bar(total: int, progress: bool | None):
    """A tqdm bar with the running loss (no-op without tqdm or when disabled)."""
    import sys

    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the lm extra
        return lambda loss: None
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    bar = tqdm(total=total, desc="train", unit="step", disable=disable)

    def update(loss: float | None) -> None:
        if loss is None:
            bar.close()
            return
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update(1)

    return update
