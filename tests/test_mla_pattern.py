"""The ``mla_attention`` pattern on the trained MLA fixtures (``deepseek_v3``,
``glm4_moe_lite``): greedy decoding stays token-identical eagerly, under ``compile_decode``
(boolean masks of the static cache) and with the MLA kernel itself on the CPU emulator (the
fixtures' rope part is 16 wide: the kernel's last round of lanes is partly idle); prompts
take the original forward; other attention shapes and unverified families are left alone."""

from __future__ import annotations

import warnings

import mlx.core as mx
import pytest

pytest.importorskip("mlx_lm")

from mlx_lm.generate import generate_step  # noqa: E402

from zmlx import decode  # noqa: E402
from zmlx.core import emulate  # noqa: E402
from zmlx.models import fixtures  # noqa: E402
from zmlx.patch import patch, unpatch  # noqa: E402
from zmlx.patch.base import Context  # noqa: E402
from zmlx.patch.patterns.mla_attention import FusedMLAAttention, MLAAttentionPattern  # noqa: E402

MLA = ["deepseek_v3", "glm4_moe_lite"]
PROMPTS = [list(p) for p in fixtures.PROMPTS]


def greedy(model, prompt, n):
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


def mla_patch(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return patch(model, patterns=["mla_attention"], **kw)


@pytest.mark.parametrize("family", MLA)
def test_greedy_decoding_is_token_identical(family):
    model = fixtures.load_quantized(family)[0]
    want = [greedy(model, p, 64) for p in PROMPTS[:3]]
    report = mla_patch(model)
    assert report.patterns() == {"mla_attention": len(model.layers)}, str(report)
    assert all(isinstance(layer.self_attn, FusedMLAAttention) for layer in model.layers)
    got = [greedy(model, p, 64) for p in PROMPTS[:3]]
    unpatch(model)
    assert got == want


@pytest.mark.parametrize("family", MLA)
def test_compiled_decode_is_token_identical(family):
    model = fixtures.load_quantized(family)[0]
    prompt = PROMPTS[1]
    want = decode.generate(model, prompt, 24)
    mla_patch(model)
    dec = decode.compile_decode(model)
    got = decode.generate(dec, prompt, 24)
    unpatch(model)
    assert got == want
    assert dec.traces == 1


@pytest.mark.parametrize("family", MLA)
def test_the_kernel_on_the_emulator_keeps_tokens(family, monkeypatch):
    if not emulate.available():
        pytest.skip("needs a C++ compiler")
    import zmlx.kernels.attention as A

    model = fixtures.load_quantized(family)[0]
    prompt = PROMPTS[0]
    want = greedy(model, prompt, 10)
    kernel = A._mla_fn
    calls = []
    monkeypatch.setattr(A, "_mla_fn", lambda *a: calls.append(a) or kernel(*a))
    with emulate.emulate():
        mla_patch(model)
        got = greedy(model, prompt, 10)
    unpatch(model)
    assert got == want
    assert len(calls) >= 9 * len(model.layers)  # one launch a layer a decode step


def test_prompts_take_the_original_forward():
    model = fixtures.load_quantized("glm4_moe_lite")[0]
    attn = model.layers[0].self_attn
    x = mx.random.normal((1, 5, model.args.hidden_size)).astype(mx.bfloat16)
    want = attn(x)
    mla_patch(model)
    got = model.layers[0].self_attn(x)  # 5 positions: mlx-lm's own forward, bit for bit
    unpatch(model)
    assert mx.array_equal(got, want)


def test_other_shapes_and_families_are_left_alone():
    model = fixtures.load_quantized("glm4_moe_lite")[0]
    attn = model.layers[0].self_attn
    pattern = MLAAttentionPattern()
    assert (
        pattern.check(model.layers[0].mlp, Context("glm4_moe_lite", model.args, "cpu")).kind == "no"
    )
    verdict = pattern.check(attn, Context("kimi_k2", model.args, "cpu"))
    assert verdict.kind == "skip" and "not verified" in verdict.reason
    qwen = fixtures.load_quantized("qwen3_moe")[0]
    assert mla_patch(qwen).count == 0
    unpatch(qwen)


def test_additive_masks_and_quantized_caches_take_the_original_forward(monkeypatch):
    """An additive (float) mask or a quantized cache: mlx-lm's own forward, never the kernel."""
    from zmlx.patch.patterns import mla_attention

    model = fixtures.load_quantized("glm4_moe_lite")[0]
    original = type(model.layers[0].self_attn)
    x = mx.random.normal((1, 1, model.args.hidden_size)).astype(mx.bfloat16)
    additive = mx.zeros((1, 1, 1, 1), dtype=mx.bfloat16)
    want = model.layers[0].self_attn(x, mask=additive)
    mla_patch(model)
    monkeypatch.setattr(mla_attention, "mla_decode_attention", None)  # a use would fail here
    fused = model.layers[0].self_attn
    assert isinstance(fused, FusedMLAAttention)
    assert mx.array_equal(fused(x, mask=additive), want)

    class Quantized:  # stands for mlx-lm's QuantizedKVCache (it has `bits`)
        bits, offset = 8, 0

    calls = []
    monkeypatch.setattr(original, "__call__", lambda self, *a, **k: calls.append(k) or "mlx-lm")
    assert fused(x, mask=None, cache=Quantized()) == "mlx-lm" and len(calls) == 1
    unpatch(model)
