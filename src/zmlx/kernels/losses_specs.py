"""Catalog entries of the losses family."""

from __future__ import annotations

import mlx.core as mx

from .catalog import KernelSpec, register
from .losses import (
    kl_divergence,
    kl_divergence_ref,
    softmax_cross_entropy,
    softmax_cross_entropy_ref,
    z_loss,
    z_loss_ref,
)

# Row lengths 1, 31, 33, 4097, a transposed input, decode and prefill rows, and vocabulary-
# sized rows (Qwen's 151936).
CASES = (
    {"id": "3x31", "shape": (3, 31)},
    {"id": "2x4097", "shape": (2, 4097), "ignore": True},
    {"id": "1x1", "shape": (1, 1)},
    {"id": "5x33", "shape": (5, 33), "ignore": True},
    {"id": "transposed", "shape": (300, 6), "transpose": True},
    {"id": "decode", "shape": (1, 4096)},
    {"id": "vocab", "shape": (4, 151936)},
    {"id": "prefill", "shape": (1024, 4096)},
)
BENCH = (
    {"id": "decode_vocab", "shape": (1, 151936)},
    {"id": "batch_vocab", "shape": (8, 151936)},
    {"id": "train", "shape": (4096, 32000)},
)


def _logits(case, dtype, rng):
    x = mx.array(rng.normal(size=case["shape"]).astype("float32") * 2.0).astype(dtype)
    return x.T if case.get("transpose") else x


def _ce_inputs(case, dtype, rng):
    x = _logits(case, dtype, rng)
    t = rng.integers(0, x.shape[-1], size=x.shape[:-1])
    if case.get("ignore"):
        t.reshape(-1)[::2] = -100
    return x, mx.array(t.astype("int32"))


def _log_probs(case, dtype, rng):
    def one():
        z = mx.array(rng.normal(size=case["shape"]).astype("float32") * 2.0)
        lp = (z - mx.logsumexp(z, axis=-1, keepdims=True)).astype(dtype)
        return lp.T if case.get("transpose") else lp

    return one(), one()


def _ce_smoothed(logits, targets):
    return softmax_cross_entropy(logits, targets, label_smoothing=0.1)


def _ce_smoothed_ref(logits, targets):
    return softmax_cross_entropy_ref(logits, targets, label_smoothing=0.1)


register(
    KernelSpec(
        name="softmax_cross_entropy",
        family="losses",
        op=softmax_cross_entropy,
        ref=softmax_cross_entropy_ref,
        make_inputs=_ce_inputs,
        cases=CASES,
        bench_cases=BENCH,
        stock=lambda x, t: mx.fast.cross_entropy(x, t),
        grad_argnums=(0,),
        description="fused cross-entropy over the vocabulary (online logsumexp), ignore_index",
    )
)
register(
    KernelSpec(
        name="softmax_cross_entropy_smoothed",
        family="losses",
        op=_ce_smoothed,
        ref=_ce_smoothed_ref,
        make_inputs=_ce_inputs,
        cases=CASES,
        bench_cases=BENCH,
        stock=lambda x, t: nn_cross_entropy(x, t, label_smoothing=0.1),
        grad_argnums=(0,),
        description="fused cross-entropy with label smoothing 0.1",
    )
)
register(
    KernelSpec(
        name="kl_divergence",
        family="losses",
        op=kl_divergence,
        ref=kl_divergence_ref,
        make_inputs=_log_probs,
        cases=CASES,
        bench_cases=BENCH,
        stock=lambda p, q: nn_kl_div_loss(q, p),
        grad_argnums=(0, 1),
        description="KL(P || Q) per row from log-probabilities",
    )
)
register(
    KernelSpec(
        name="z_loss",
        family="losses",
        op=z_loss,
        ref=z_loss_ref,
        make_inputs=lambda c, d, r: (_logits(c, d, r),),
        cases=CASES,
        bench_cases=BENCH,
        stock=lambda x: mx.mean(mx.square(mx.logsumexp(x, axis=-1))),
        grad_argnums=(0,),
        description="mean over rows of logsumexp(logits)^2 (PaLM z-loss, no coefficient)",
    )
)


def nn_cross_entropy(logits, targets, **kwargs):
    """``mlx.nn.losses.cross_entropy`` (imported on use: ``import zmlx`` stays light)."""
    import mlx.nn as nn

    return nn.losses.cross_entropy(logits, targets, **kwargs)


def nn_kl_div_loss(inputs, targets):
    import mlx.nn as nn

    return nn.losses.kl_div_loss(inputs, targets, axis=-1)
