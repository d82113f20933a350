"""``patch(model)``: swap fused kernels into mlx-lm models, on the instance, reversibly.

    >>> from zmlx.patch import patch, unpatch
    >>> report = patch(model)      # replaces matching modules of this model object only
    >>> print(report)              # what was replaced, what was skipped and why
    >>> unpatch(model)             # every original module back

Patterns (:mod:`zmlx.patch.patterns`) match module *structure*; the safety table
(:mod:`zmlx.patch.safety`) says which are applied by default per model family and backend,
with the evidence. Unknown model families are left unchanged, and the report says so.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..core.backend import backend
from .base import Context, Fused, is_patched, walk
from .patterns import PATTERNS
from .report import PatchReport
from .safety import lookup

__all__ = ["PATTERNS", "PatchReport", "load", "patch", "smart_patch", "unpatch"]

# Families with evidence in the safety table or tests: anything else is left unchanged.
KNOWN_FAMILIES = {
    "qwen3_moe", "olmoe", "qwen3_next", "mixtral", "gpt_oss", "granitemoe", "glm4_moe",
    "glm4_moe_lite", "deepseek_v3", "minimax", "lfm2_moe", "qwen3", "llama", "mistral",
}  # fmt: skip
# Patterns with a VJP on every path: the only ones applied in training mode.
_TRAINABLE = {"rms_norm", "layer_norm"}


def model_family(model: nn.Module) -> str:
    """mlx-lm's ``model_type`` of ``model`` after its remapping (``kimi_k2`` is
    ``deepseek_v3``, ``minimax_m2`` is ``minimax``); ``"unknown"`` when it has none."""
    mt = getattr(model, "model_type", None)
    if mt is None and hasattr(model, "args"):
        mt = getattr(model.args, "model_type", None)
    if not mt:
        return "unknown"
    try:
        from mlx_lm.utils import MODEL_REMAPPING
    except ImportError:  # mlx-lm absent: the name as given
        return str(mt)
    return MODEL_REMAPPING.get(str(mt), str(mt))


def _activation_dtype(model: nn.Module):
    from mlx.utils import tree_flatten

    for name, p in tree_flatten(model.parameters()):
        if name.endswith("scales") or (mx.issubdtype(p.dtype, mx.floating) and p.ndim >= 1):
            return p.dtype
    return mx.float32


def patch(
    model: nn.Module,
    *,
    patterns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    mode: str = "inference",
    max_tokens: int | None = None,
    verbose: bool = False,
) -> PatchReport:
    """Replace matching modules of ``model`` with fused subclasses of their own classes.

    Args:
        model: an mlx-lm model (or any ``nn.Module`` tree; the root itself is never replaced).
        patterns: pattern names to apply, overriding the safety table (a warning says so);
            default: every pattern the safety table allows for this family and backend.
        exclude: pattern names not to apply.
        mode: ``"inference"`` or ``"training"`` (only patterns with gradients).
        max_tokens: override the largest call (tokens) a decode-only fused path takes.
        verbose: print the report.

    Returns:
        A :class:`PatchReport`.
    """
    if mode not in ("inference", "training"):
        raise ValueError(f"[patch] expected mode 'inference' or 'training', got {mode!r}")
    unknown = [p for p in list(patterns or []) + list(exclude) if p not in PATTERNS]
    if unknown:
        raise ValueError(f"[patch] unknown pattern(s) {unknown}; known: {sorted(PATTERNS)}")
    family, b = model_family(model), backend()
    report = PatchReport(family=family, backend=b)
    if family not in KNOWN_FAMILIES:
        report.notes.append(
            f"model family {family!r} has no safety entries: nothing was changed "
            f"(known: {', '.join(sorted(KNOWN_FAMILIES))})"
        )
        if verbose:
            print(report)
        return report
    forced = patterns is not None
    if forced:
        msg = f"patterns {list(patterns)} given: the safety table is not applied"
        warnings.warn(f"[patch] {msg}", stacklevel=2)
        report.notes.append(msg)
    # In the patterns' own order (a block before its parts, a variant before its base).
    chosen = [p for p in PATTERNS if (patterns is None or p in patterns) and p not in exclude]
    if mode == "training":
        dropped = [p for p in chosen if p not in _TRAINABLE]
        chosen = [p for p in chosen if p in _TRAINABLE]
        if dropped:
            report.notes.append(f"training mode: {dropped} have no gradients and are not applied")
    ctx = Context(family=family, args=getattr(model, "args", None), backend=b,
                  dtype=_activation_dtype(model))  # fmt: skip
    covered: list[str] = []
    for site in walk(model):
        if is_patched(site.module):
            report.skipped.append((site.path, site.module.zmlx_pattern, "already patched"))
            continue
        inside = next((c for c in covered if site.path.startswith(c + ".")), None)
        for name in chosen:
            pattern = PATTERNS[name]
            verdict = pattern.check(site.module, ctx)
            if verdict.kind == "no":
                continue
            if inside is not None and name in ("switch_glu",):
                report.skipped.append((site.path, name, f"covered by moe_block at {inside}"))
                break
            if verdict.kind == "skip":
                report.skipped.append((site.path, name, verdict.reason))
                continue
            rule = lookup(family, name, b)
            if not forced and (rule is None or not rule.allowed):
                why = rule.note if rule and rule.note else f"no safety entry for {family} on {b}"
                report.skipped.append((site.path, name, f"safety table: {why}"))
                continue
            config = dict(verdict.config or {})
            limit = max_tokens if max_tokens is not None else (rule.max_tokens if rule else 16)
            if "max_tokens" in config:
                config["max_tokens"] = limit if limit is not None else 1 << 30
            site.replace(pattern.build(site.module, config))
            report.replaced.append((site.path, name))
            if name == "moe_block":
                covered.append(site.path)
            break
    if not report.replaced:
        report.notes.append("no module was replaced")
    if verbose:
        print(report)
    return report


def unpatch(model: nn.Module) -> int:
    """Put every original module back (with the current weights); returns how many."""
    total = 0
    while True:  # nested replacements surface once their parent is restored
        n = 0
        for site in walk(model):
            if isinstance(site.module, Fused):
                site.replace(site.module.zmlx_restore())
                n += 1
        total += n
        if n == 0:
            return total


def _greedy(model: nn.Module, prompt: mx.array, steps: int) -> tuple[list[int], float]:
    """Greedy-decode ``steps`` tokens; returns the tokens and seconds per decoded token."""
    from mlx_lm.generate import generate_step

    out, t0, t_first = [], 0.0, None
    t0 = time.perf_counter()
    for tok, _ in generate_step(prompt, model, max_tokens=steps):
        out.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    per = (t_end - t_first) / max(1, len(out) - 1) if t_first is not None else float("nan")
    del t0
    return out, per


def smart_patch(
    model: nn.Module,
    sample: mx.array | Sequence[int],
    *,
    patterns: Sequence[str] | None = None,
    steps: int = 32,
    repeats: int = 3,
    min_gain: float = 0.02,
    verbose: bool = False,
) -> PatchReport:
    """Keep only the patterns that make decoding faster without changing its tokens.

    Each candidate pattern is applied alone and timed on greedy decode steps of ``sample``
    (median of ``repeats`` runs, interleaved with unpatched runs); it is kept when its tokens
    equal the unpatched ones and it is at least ``min_gain`` faster. The kept patterns are then
    applied together and checked once more; if that check fails, everything is reverted.

    Args:
        model: an mlx-lm model (unpatched).
        sample: prompt token ids.
        patterns: candidates (default: every pattern the safety table allows).
        steps: decode steps per timing run.
        repeats: timing runs per variant.
        min_gain: smallest relative speed-up that counts.
        verbose: print the report.

    Returns:
        The final :class:`PatchReport`, with per-pattern ``timings``.
    """
    prompt = sample if isinstance(sample, mx.array) else mx.array(list(sample))
    unpatch(model)
    probe = patch(model) if patterns is None else None
    candidates = sorted({p for _, p in probe.replaced}) if probe else list(patterns)
    unpatch(model)
    base_tokens, _ = _greedy(model, prompt, steps)
    timings: dict[str, Any] = {}
    kept = []
    for name in candidates:
        base_t, cand_t, same = [], [], True
        for _ in range(repeats):
            _, t = _greedy(model, prompt, steps)
            base_t.append(t)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = patch(model, patterns=[name])
            toks, t = _greedy(model, prompt, steps)
            unpatch(model)
            cand_t.append(t)
            same &= toks == base_tokens
            if not r.replaced:
                same = False
                break
        bt, ct = sorted(base_t)[len(base_t) // 2], sorted(cand_t)[len(cand_t) // 2]
        gain = bt / ct - 1 if ct > 0 else 0.0
        keep = same and gain >= min_gain
        timings[name] = {"unpatched_ms": round(bt * 1e3, 4), "patched_ms": round(ct * 1e3, 4),
                         "speedup": round(bt / ct, 4) if ct else None, "tokens_identical": same,
                         "kept": keep}  # fmt: skip
        if keep:
            kept.append(name)
    if kept:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = patch(model, patterns=kept)
        toks, _ = _greedy(model, prompt, steps)
        if toks != base_tokens:
            unpatch(model)
            report = PatchReport(family=model_family(model), backend=backend())
            report.notes.append("combined patterns changed the tokens: reverted everything")
    else:
        report = PatchReport(family=model_family(model), backend=backend())
        report.notes.append("no pattern was both faster and token-identical: nothing applied")
    report.timings = timings
    if verbose:
        print(report)
    return report


_apply = patch  # `load` takes a `patch` flag, which would shadow the function


def load(path_or_id: str, *, patch: bool = True, patterns: Sequence[str] | None = None,
         verbose: bool = False, **load_kwargs: Any):  # fmt: skip
    """``mlx_lm.load`` then :func:`patch`; returns ``(model, tokenizer)``.

    The patch report is kept on the model as ``model.zmlx_patch_report``.
    """
    import mlx_lm

    model, tokenizer = mlx_lm.load(path_or_id, **load_kwargs)
    if patch:
        report = _apply(model, patterns=patterns, verbose=verbose)
        object.__setattr__(model, "zmlx_patch_report", report)
    return model, tokenizer
