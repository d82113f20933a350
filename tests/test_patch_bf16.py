"""Patched decoding in bfloat16 rounds as mlx-lm does: token-identical on the trained fixtures,
through the references (CPU) and through the GPU kernels on the emulator."""

from __future__ import annotations

import contextlib
import warnings

import mlx.core as mx
import pytest

pytest.importorskip("mlx_lm")

from mlx_lm.generate import generate_step  # noqa: E402

from zmlx.core.emulate import emulate  # noqa: E402
from zmlx.models import fixtures  # noqa: E402
from zmlx.patch import patch, unpatch  # noqa: E402

PATTERNS = ["moe_block", "switch_glu", "swiglu_mlp", "qk_norm_rope"]


def _bf16(family):
    model, _ = fixtures.load_quantized(family)
    model.set_dtype(mx.bfloat16)
    return model, mx.array(fixtures.record(family)["prompt_tokens"][:12])


def _tokens(model, prompt, n):
    return [int(t) for t, _ in generate_step(prompt, model, max_tokens=n)]


def _patched_tokens(model, prompt, n, emulated=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch(model, patterns=PATTERNS)
    try:
        with emulate() if emulated else contextlib.nullcontext():
            return _tokens(model, prompt, n)
    finally:
        unpatch(model)


@pytest.mark.parametrize("family", fixtures.available())
def test_reference_path_bf16_token_identical(family):
    model, prompt = _bf16(family)
    ref = _tokens(model, prompt, 32)
    assert _patched_tokens(model, prompt, 32) == ref


@pytest.mark.no_emulate
@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_kernels_bf16_token_identical_on_emulator(family):
    model, prompt = _bf16(family)
    ref = _tokens(model, prompt, 8)
    got = _patched_tokens(model, prompt, 8, emulated=True)
    assert got == ref
