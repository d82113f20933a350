"""The ``moe_residual`` pattern: a Qwen3-MoE decoder layer's two residual adds and its
post-attention norm folded into the fused MoE block, against the unpatched layer."""

from __future__ import annotations

import warnings

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step

from zmlx.core import emulate
from zmlx.models import fixtures
from zmlx.patch import patch, unpatch
from zmlx.patch.patterns import moe_residual as R
from zmlx.patch.patterns.moe_residual import FusedMoELayer

PROMPTS = [list(p) for p in fixtures.PROMPTS]
PATTERNS = ["moe_residual", "moe_block"]


def _patch(model, patterns=PATTERNS):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return patch(model, patterns=patterns)


def _assert_skipped(model, reason: str) -> None:
    """patch() leaves every layer of ``model`` unfolded, saying ``reason``."""
    report = _patch(model)
    assert "moe_residual" not in report.patterns()
    assert any(p == "moe_residual" and reason in why for _, p, why in report.skipped)
    unpatch(model)


def greedy(model, prompt, n):
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


FAMILIES = ["qwen3_moe", "mixtral", "minimax", "lfm2_moe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_fold_and_decode_token_identically(family):
    model, _ = fixtures.load_quantized(family)
    want = [greedy(model, p, 128) for p in PROMPTS]
    report = _patch(model)
    folded = report.patterns().get("moe_residual", 0)
    assert folded > 0 and folded == report.patterns().get("moe_block"), str(report)
    assert sum(isinstance(layer, FusedMoELayer) for layer in model.layers) == folded
    got = [greedy(model, p, 128) for p in PROMPTS]
    unpatch(model)
    assert got == want
    assert not any(isinstance(layer, FusedMoELayer) for layer in model.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_folded_kernels_on_the_emulator_keep_tokens_and_logits(family):
    if not emulate.available():
        pytest.skip("needs a C++ compiler")
    model, _ = fixtures.load_quantized(family)
    prompt = PROMPTS[1]
    want = greedy(model, prompt, 10)
    toks = mx.array([PROMPTS[3] + PROMPTS[1]])  # 9 tokens
    ref = model(toks)
    with emulate.emulate():
        _patch(model)
        got = greedy(model, prompt, 10)
        # one decode-sized call per position: the folded path
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(model)
        n = toks.shape[1]
        steps = mx.concatenate([model(toks[:, i : i + 1], cache=cache) for i in range(n)], axis=1)
    unpatch(model)
    assert got == want
    diff = mx.abs(steps.astype(mx.float32) - ref.astype(mx.float32)).max().item()
    assert diff < 2e-2, diff


def test_layer_without_a_fused_block_runs_its_own_forward():
    model, _ = fixtures.load_quantized("qwen3_moe")
    toks = mx.array([PROMPTS[4]])
    want = model(toks)
    report = _patch(model, ["moe_residual"])
    assert report.patterns() == {"moe_residual": len(model.layers)}, str(report)
    got = model(toks)
    unpatch(model)
    assert mx.array_equal(got, want).item()


@pytest.mark.parametrize("family", ["glm4_moe_lite", "deepseek_v3", "gpt_oss"])
def test_other_families_are_left_alone(family):
    model, _ = fixtures.load_quantized(family)
    report = _patch(model)
    assert "moe_residual" not in report.patterns()
    unpatch(model)


def test_blocks_with_a_shared_expert_are_skipped_with_a_reason(monkeypatch):
    # GLM-4.7-Flash's layer is written like Qwen3's, but its block adds a shared expert of the
    # normed input, which the folded kernels never materialise.
    monkeypatch.setitem(R.LAYOUTS, "glm4_moe_lite", R.LAYOUTS["qwen3_moe"])
    model, _ = fixtures.load_quantized("glm4_moe_lite")
    _assert_skipped(model, "shared expert")


def test_sharded_blocks_are_skipped():
    model, _ = fixtures.load_quantized("qwen3_moe")
    for layer in model.layers:
        layer.mlp.sharding_group = object()  # what mlx-lm's shard() leaves on a block
    _assert_skipped(model, "sharded")


def test_not_applied_by_default_on_the_cpu():
    from zmlx.core.backend import force_backend

    model, _ = fixtures.load_quantized("qwen3_moe")
    with force_backend("cpu"):
        report = patch(model)
    assert "moe_residual" not in report.patterns()
    unpatch(model)
