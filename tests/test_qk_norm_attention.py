"""The qk_norm_rope patch pattern: Qwen3-style attention with one fused kernel before the cache."""

from __future__ import annotations

import warnings

import mlx.core as mx
import pytest

from zmlx.core.backend import force_backend

pytest.importorskip("mlx_lm")

from mlx_lm.generate import generate_step  # noqa: E402

from zmlx.core.emulate import emulate  # noqa: E402
from zmlx.core.kernel import launch_count  # noqa: E402
from zmlx.models import build, fixtures  # noqa: E402
from zmlx.patch import patch, unpatch  # noqa: E402


def _tokens(model, prompt, n):
    return [int(t) for t, _ in generate_step(prompt, model, max_tokens=n)]


def _patched(model, patterns):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return patch(model, patterns=patterns)


@pytest.mark.parametrize("quantized", [False, True])
def test_qwen3_fixture_token_identical(quantized):
    model, _ = fixtures.load_quantized("qwen3_moe") if quantized else fixtures.load("qwen3_moe")
    prompt = mx.array(fixtures.record("qwen3_moe")["prompt_tokens"])
    ref = _tokens(model, prompt, 24)
    report = _patched(model, ["qk_norm_rope"])
    try:
        assert report.patterns() == {"qk_norm_rope": len(model.layers)}
        assert _tokens(model, prompt, 24) == ref
    finally:
        unpatch(model)
    assert _tokens(model, prompt, 8) == ref[:8]


@pytest.mark.no_emulate
def test_qwen3_fixture_on_kernel_emulator():
    model, _ = fixtures.load("qwen3_moe")
    prompt = mx.array(fixtures.record("qwen3_moe")["prompt_tokens"][:10])
    ref = _tokens(model, prompt, 6)
    _patched(model, ["qk_norm_rope"])
    try:
        n0 = launch_count()
        with emulate():
            got = _tokens(model, prompt, 6)
        assert launch_count() - n0 >= 5 * len(model.layers)  # the kernel ran at each decode step
    finally:
        unpatch(model)
    assert got == ref


def test_other_families_are_skipped_with_a_reason():
    model = build("olmoe", "tiny", num_layers=1)
    report = _patched(model, ["qk_norm_rope"])
    assert report.count == 0
    model = build("qwen3_moe", "tiny", num_layers=1)
    model.model.layers[0].self_attn.rope = type("R", (), {"dims": 8})()
    report = _patched(model, ["qk_norm_rope"])
    assert report.count == 0
    assert any("nn.RoPE" in why for _, _, why in report.skipped)


def test_not_applied_by_default_on_cpu():
    model = build("qwen3_moe", "tiny", num_layers=1)
    with force_backend("cpu"):  # the CPU's safety entries, on any machine
        report = patch(model)
    assert "qk_norm_rope" not in report.patterns()
    assert any(p == "qk_norm_rope" and "safety table" in why for _, p, why in report.skipped)


def test_qkv_variant_is_token_identical_and_takes_the_qkv_kernel():
    model, _ = fixtures.load_quantized("qwen3_moe")
    prompt = mx.array(fixtures.record("qwen3_moe")["prompt_tokens"][:10])
    ref = _tokens(model, prompt, 8)
    report = _patched(model, ["qk_norm_rope", "qkv_norm_rope"])  # the variant wins
    try:
        assert report.patterns() == {"qkv_norm_rope": len(model.layers)}
        assert _tokens(model, prompt, 8) == ref  # the CPU: reference ops
        n0 = launch_count()
        with emulate():
            got = _tokens(model, prompt, 8)
        assert launch_count() - n0 >= 2 * 7 * len(model.layers)  # qkv_proj + qk_norm_rope
    finally:
        unpatch(model)
    assert got == ref


def test_qkv_variant_needs_one_quantized_format():
    model = build("qwen3_moe", "tiny", num_layers=1)  # float projections
    report = _patched(model, ["qkv_norm_rope"])
    assert report.count == 0
    assert any("quantized linears" in why for _, _, why in report.skipped)
    model = build("qwen3_moe", "tiny", quant="4bit", num_layers=1)
    report = _patched(model, ["qkv_norm_rope", "qk_norm_rope"])
    assert report.patterns() == {"qkv_norm_rope": 1}
    unpatch(model)
    from zmlx.core.backend import force_backend

    with force_backend("cpu"):  # the CPU's entries apply nothing by default
        report = patch(model)
    assert "qkv_norm_rope" not in report.patterns()
    unpatch(model)
    with force_backend("cuda"):  # CUDA's apply it to qwen3_moe (one launch for q, k, v)
        report = patch(model)
    assert "qkv_norm_rope" in report.patterns()
    unpatch(model)
