"""Model-level measurements, stock vs patched, in one process: fidelity and throughput.

The model is loaded once; a :class:`Toggle` switches it between stock (``unpatch``) and
patched (``patch``) so both variants run on the same weights and the same warmed-up device.
Throughput runs alternate stock and patched (A B A B ...), so clock or thermal drift hits both.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx


class Toggle:
    """Switch a model between stock and patched.

    Args:
        model: the mlx-lm model.
        patch: ``model -> report`` (default :func:`zmlx.patch.patch` with ``patterns``).
        unpatch: ``model -> None`` (default :func:`zmlx.patch.unpatch`).
        patterns: pattern names for the default ``patch`` (None: the safety table's choice).
        compile_decode: the patched variant decodes through :func:`zmlx.decode.compile_decode`.

    The report of the first ``patch`` call is kept in :attr:`report`; :attr:`runner` is what
    to run (the model, or its compiled decoder when patched with ``compile_decode``).
    """

    def __init__(self, model, patch=None, unpatch=None, patterns: Sequence[str] | None = None,
                 compile_decode: bool = False):  # fmt: skip
        if patch is None or unpatch is None:
            from ..patch import patch as zpatch
            from ..patch import unpatch as zunpatch

            def default_patch(m):
                return zpatch(m, patterns=list(patterns) if patterns is not None else None)

            patch, unpatch = patch or default_patch, unpatch or zunpatch
        self.model, self._patch, self._unpatch = model, patch, unpatch
        self.report: Any = None
        self.patched = False
        self.compile_decode = compile_decode
        self.runner = model

    def on(self) -> None:
        if self.patched:
            return
        if self.report is None:
            self.report = self._patch(self.model)
        else:  # the same patch again: its warnings were shown the first time
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._patch(self.model)
        self.patched = True
        if self.compile_decode:  # a new decoder: the patch changed the modules it traces
            from ..decode import compile_decode

            self.runner = compile_decode(self.model)

    def off(self) -> None:
        if self.patched:
            self._unpatch(self.model)
            self.patched = False
            self.runner = self.model

    def set(self, patched: bool) -> None:
        self.on() if patched else self.off()


def _cache(model):
    from mlx_lm.models.cache import make_prompt_cache

    return make_prompt_cache(model)


def _next(logits: mx.array) -> mx.array:
    return mx.argmax(logits[:, -1, :], axis=-1)


def greedy(model, prompt: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prompt`` (KV cache, one step in flight as mlx-lm does)."""
    if n <= 0:
        return []
    cache = _cache(model)
    y = _next(model(mx.array(list(prompt))[None], cache=cache))
    mx.async_eval(y)
    out = [y]
    for _ in range(n - 1):
        y = _next(model(y[:, None], cache=cache))
        mx.async_eval(y)
        out.append(y)
    return [int(t.item()) for t in out]


def logits(model, tokens: Sequence[int]) -> mx.array:
    """Float32 logits ``(len(tokens), vocab)`` of one forward pass over ``tokens`` (no cache)."""
    out = model(mx.array(list(tokens))[None])[0].astype(mx.float32)
    mx.eval(out)
    return out


def teacher_forced(model, tokens: Sequence[int]) -> mx.array:
    """Float32 logits ``(len(tokens) - 1, vocab)``: ``tokens`` fed one at a time through a KV
    cache (the decode path, where forward passes over the whole sequence take the prefill
    path)."""
    cache = _cache(model)
    rows = [model(mx.array([[t]], dtype=mx.int32), cache=cache)[0, -1] for t in tokens[:-1]]
    return mx.stack(rows).astype(mx.float32)


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def fidelity(
    toggle: Toggle,
    prompts: Sequence[Sequence[int]],
    max_tokens: int,
    *,
    min_top1: float = 0.99,
    require_identical: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Greedy token identity and teacher-forced logit agreement, stock vs patched.

    For each prompt: ``max_tokens`` greedy tokens stock, then patched, compared token by token;
    then the stock sequence (prompt + its greedy tokens) is scored in one forward pass by both
    variants: top-1 agreement and the max/mean absolute logit difference over every position.

    Returns:
        The ``fidelity`` dict of a ``validate`` capsule; ``passed`` needs top-1 agreement of at
        least ``min_top1`` and, when ``require_identical``, every greedy sequence identical.
    """
    from tqdm.auto import tqdm

    per, agree, positions, max_diff, sum_diff, n_diff = [], 0, 0, 0.0, 0.0, 0
    disable = None if progress is None else not progress
    for i, prompt in enumerate(tqdm(prompts, desc="fidelity", unit="prompt", disable=disable)):
        toggle.off()
        ref = greedy(toggle.runner, prompt, max_tokens)
        toggle.on()
        got = greedy(toggle.runner, prompt, max_tokens)
        seq = list(prompt) + ref
        toggle.off()
        a = logits(toggle.runner, seq)
        toggle.on()
        b = logits(toggle.runner, seq)
        diff = mx.abs(a - b)
        same = int(mx.sum(mx.argmax(a, axis=-1) == mx.argmax(b, axis=-1)).item())
        agree, positions = agree + same, positions + a.shape[0]
        max_diff = max(max_diff, mx.max(diff).item())
        sum_diff, n_diff = sum_diff + mx.sum(diff).item(), n_diff + diff.size
        first = _first_difference(ref, got)
        per.append({"prompt": i, "tokens": len(ref), "identical": first is None,
                    "first_difference": first, "top1_agreement": same / a.shape[0]})  # fmt: skip
    toggle.off()
    identical = sum(p["identical"] for p in per)
    top1 = agree / positions if positions else 1.0
    reasons = []
    if require_identical and identical < len(per):
        reasons.append(f"greedy tokens differ for {len(per) - identical} of {len(per)} prompts")
    if top1 < min_top1:
        reasons.append(f"top-1 agreement {top1:.4f} < {min_top1}")
    return {
        "passed": not reasons,
        "reason": "; ".join(reasons),
        "prompts": len(per),
        "max_tokens": max_tokens,
        "greedy_identical": identical,
        "require_identical": require_identical,
        "top1_agreement": top1,
        "min_top1": min_top1,
        "positions": positions,
        "max_logit_diff": max_diff,
        "mean_logit_diff": sum_diff / n_diff if n_diff else 0.0,
        "per_prompt": per,
    }


def run_once(model, prompt: Sequence[int], decode_tokens: int) -> tuple[float, float, int]:
    """One prefill of ``prompt`` and ``decode_tokens`` greedy steps.

    Returns:
        Prefill tok/s, decode tok/s and the peak memory (bytes) of the run.
    """
    mx.synchronize()
    mx.reset_peak_memory()
    cache = _cache(model)
    t0 = time.perf_counter()
    y = _next(model(mx.array(list(prompt))[None], cache=cache))
    mx.eval(y)
    t1 = time.perf_counter()
    for _ in range(decode_tokens):  # one step in flight, as mlx-lm's generate_step
        nxt = _next(model(y[:, None], cache=cache))
        mx.async_eval(nxt)
        mx.eval(y)
        y = nxt
    mx.eval(y)
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), decode_tokens / max(t2 - t1, 1e-9), mx.get_peak_memory()


def rate(runs: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw runs (tokens/s)."""
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs),
            "runs": list(runs)}  # fmt: skip


def throughput(
    toggle: Toggle,
    prompt: Sequence[int],
    decode_tokens: int,
    runs: int = 3,
    *,
    warmup_tokens: int = 8,
    progress: bool | None = None,
    on_run: Callable[[str, float, float], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prefill and decode tok/s, stock and patched interleaved (A B A B ...).

    Returns:
        ``(throughput, memory)`` dicts of a ``validate`` capsule: per phase the stock and
        patched rates and the speed-up (patched median / stock median), and the peak memory
        of each variant over its runs.
    """
    from tqdm.auto import tqdm

    for patched in (False, True):  # warm-up: kernels compiled, caches allocated
        toggle.set(patched)
        run_once(toggle.runner, prompt, min(warmup_tokens, decode_tokens))
    got: dict[str, dict[str, list]] = {v: {"prefill": [], "decode": [], "peak": []}
                                       for v in ("stock", "patched")}  # fmt: skip
    disable = None if progress is None else not progress
    for _ in tqdm(range(runs), desc="throughput", unit="run", disable=disable):
        for variant in ("stock", "patched"):
            toggle.set(variant == "patched")
            pre, dec, peak = run_once(toggle.runner, prompt, decode_tokens)
            got[variant]["prefill"].append(pre)
            got[variant]["decode"].append(dec)
            got[variant]["peak"].append(peak)
            if on_run is not None:
                on_run(variant, pre, dec)
    toggle.off()
    out: dict[str, Any] = {"prompt_tokens": len(prompt), "decode_tokens": decode_tokens,
                           "runs": runs, "order": "stock, patched interleaved"}  # fmt: skip
    for phase in ("prefill", "decode"):
        s, p = rate(got["stock"][phase]), rate(got["patched"][phase])
        out[phase] = {"stock": s, "patched": p, "speedup": p["median"] / s["median"]}
    memory = {"stock_peak_bytes": max(got["stock"]["peak"]),
              "patched_peak_bytes": max(got["patched"]["peak"])}  # fmt: skip
    return out, memory
