"""patch(): fidelity on real tiny checkpoints, reports, unpatch, smart_patch, mlx-lm integration."""

from __future__ import annotations

import copy
import warnings

import mlx.core as mx
import mlx.nn as nn
import pytest

pytest.importorskip("mlx_lm")

from mlx_lm.generate import generate_step  # noqa: E402

from zmlx.core import emulate  # noqa: E402
from zmlx.models import build, fixtures  # noqa: E402
from zmlx.patch import PATTERNS, patch, smart_patch, unpatch  # noqa: E402
from zmlx.patch.base import Fused, walk  # noqa: E402

MOE_FIXTURES = ["qwen3_moe", "lfm2_moe", "glm4_moe_lite", "gpt_oss", "mixtral", "deepseek_v3"]
DENSE = ["qwen3", "llama"]
PROMPTS = [list(p) for p in fixtures.PROMPTS]
KERNEL_PATTERNS = ["moe_block", "switch_glu", "swiglu_mlp", "quantized_linear"]


def quantized_model(family: str):
    """The trained fixture of ``family`` quantized as mlx-lm would (or a tiny random build)."""
    if family in fixtures.available():
        return fixtures.load_quantized(family)[0]
    return build(family, "tiny", quant="mxfp4" if family == "gpt_oss" else "4bit")


def fuse(model, **kwargs):
    """patch() with the kernel patterns forced (the CPU's safety entries apply none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return patch(model, patterns=kwargs.pop("patterns", KERNEL_PATTERNS), **kwargs)


def greedy(model, prompt, n):
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


@pytest.mark.parametrize("family", MOE_FIXTURES)
def test_fixture_decode_is_token_identical(family):
    model = quantized_model(family)
    want = [greedy(model, p, 128) for p in PROMPTS]
    report = fuse(model)
    assert report.count > 0, str(report)
    assert "moe_block" in report.patterns(), str(report)
    got = [greedy(model, p, 128) for p in PROMPTS]
    unpatch(model)
    assert got == want


@pytest.mark.parametrize("family", MOE_FIXTURES + DENSE)
def test_fixture_decode_on_kernel_emulator(family):
    """The fused kernels themselves (run by the CPU emulator) keep greedy decoding identical."""
    if not emulate.available():
        pytest.skip("needs a C++ compiler")
    model = quantized_model(family)
    prompt = PROMPTS[0]
    want = greedy(model, prompt, 12)
    with emulate.emulate(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=KERNEL_PATTERNS)
        got = greedy(model, prompt, 12)
    unpatch(model)
    assert report.count > 0
    assert got == want


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_teacher_forced_logits_agree(family):
    model = quantized_model(family)
    tokens = mx.array([PROMPTS[4] + PROMPTS[1]])
    # One position at a time through the decode path (the prefill path is the original).
    from mlx_lm.models.cache import make_prompt_cache

    def step_logits(m):
        cache = make_prompt_cache(m)
        outs = [m(tokens[:, i : i + 1], cache=cache) for i in range(tokens.shape[1])]
        return mx.concatenate(outs, axis=1).astype(mx.float32)

    want = step_logits(model)
    fuse(model)
    got = step_logits(model)
    unpatch(model)
    assert (mx.argmax(got, -1) == mx.argmax(want, -1)).all()
    assert mx.abs(got - want).max().item() < 5e-2


def test_unpatch_round_trip_is_bit_identical():
    model = build("qwen3_moe", "tiny", quant="4bit")
    classes = {s.path: type(s.module) for s in walk(model)}
    x = mx.array([[1, 2, 3, 4]])
    want = model(x)
    report = fuse(model)
    # 2 layers: the MoE blocks, and q/k/v/o and the routers' linears, plus the lm_head
    assert report.count == 2 + 2 * 5 + 1
    assert any(isinstance(s.module, Fused) for s in walk(model))
    assert unpatch(model) == report.count
    assert {s.path: type(s.module) for s in walk(model)} == classes
    assert mx.array_equal(model(x), want)


def test_patched_modules_keep_their_class_and_weights():
    model = build("mixtral", "tiny", quant="4bit")
    block = model.model.layers[0].block_sparse_moe
    fuse(model)
    new = model.model.layers[0].block_sparse_moe
    assert new is not block and isinstance(new, type(block)) and isinstance(new, Fused)
    assert new["switch_mlp"] is block["switch_mlp"]  # shared, not copied
    # A weight update after patching survives unpatch.
    new["gate"]["weight"] = new["gate"]["weight"] + 0
    marker = new["gate"]["weight"]
    unpatch(model)
    assert model.model.layers[0].block_sparse_moe is block
    assert block["gate"]["weight"] is marker


def test_deepcopy_save_and_load(tmp_path):
    model = build("qwen3_moe", "tiny", quant="4bit")
    fuse(model)
    twin = copy.deepcopy(model)
    x = mx.array([[7]])
    assert mx.array_equal(twin(x), model(x))
    path = tmp_path / "w.safetensors"
    model.save_weights(str(path))
    fresh = build("qwen3_moe", "tiny", quant="4bit", seed=1)
    fresh.load_weights(str(path))
    unpatch(model)
    assert mx.array_equal(fresh(x), model(x))


def test_patched_float_model_still_quantizes():
    model = build("qwen3", "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=["rms_norm"])
    assert report.count > 0
    nn.quantize(model, group_size=64, bits=4)
    assert model(mx.array([[1, 2]])).shape[-1] > 0


def test_unknown_model_is_left_unchanged():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.RMSNorm(8)

        def __call__(self, x):
            return self.norm(x)

    m = Tiny()
    report = patch(m)
    assert report.count == 0 and report.family == "unknown"
    assert "nothing was changed" in str(report)
    assert type(m.norm) is nn.RMSNorm


@pytest.mark.no_emulate  # under the emulator the backend reads "cuda", whose entries apply
def test_safety_table_decides_by_default():
    model = build("llama", "tiny", quant="4bit")
    from zmlx.core.backend import force_backend, gpu_backend

    if gpu_backend() == "cpu":
        report = patch(model)  # on the CPU the table applies nothing (references are not faster)
        assert report.count == 0
        assert any("safety table" in why and "not faster" in why for _, _, why in report.skipped)
        unpatch(model)

    with force_backend("cuda"):  # a dense model gets only what the CUDA entries allow
        report = patch(model)
    from zmlx.patch.safety import lookup

    allowed = {p for p in PATTERNS if (r := lookup("llama", p, "cuda")) and r.allowed}
    assert set(report.patterns()) <= allowed
    unpatch(model)


def test_cuda_entries_apply_by_default_with_their_evidence():
    from pathlib import Path

    from zmlx.core.backend import force_backend
    from zmlx.patch.safety import TABLE

    root = Path(__file__).resolve().parent.parent
    cuda = {k: r for k, r in TABLE.items() if k[2] == "cuda"}
    assert cuda and all(r.allowed and r.max_tokens for r in cuda.values())
    for rule in cuda.values():  # every entry names capsules that are in the repository
        assert all((root / e.strip()).exists() for e in rule.evidence.split(";")), rule
    model = quantized_model("qwen3_moe")
    with force_backend("cuda"):
        report = patch(model)
    # q, k, v in one launch (qkv_norm_rope takes the attention before qk_norm_rope would)
    assert set(report.patterns()) == {"moe_block", "qkv_norm_rope", "quantized_linear",
                                      "moe_residual"}  # fmt: skip
    unpatch(model)
    mixtral = quantized_model("mixtral")  # no CUDA speed capsule: no entry, nothing applied
    with force_backend("cuda"):
        assert patch(mixtral).count == 0


def test_gelu_mlp_is_never_turned_into_silu():
    from zmlx.patch.base import Context

    class GeluMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(64, 64, bias=False)
            self.up_proj = nn.Linear(64, 64, bias=False)
            self.down_proj = nn.Linear(64, 64, bias=False)

        def __call__(self, x):
            return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))

    mlp = GeluMLP()
    nn.quantize(mlp, group_size=64, bits=4)
    verdict = PATTERNS["swiglu_mlp"].check(mlp, Context("llama", None, "cpu"))
    assert verdict.kind == "skip" and "gelu" in verdict.reason


def test_patterns_argument_overrides_the_table_with_a_warning():
    model = build("qwen3", "tiny")
    with pytest.warns(UserWarning, match="safety table is not applied"):
        report = patch(model, patterns=["rms_norm"])
    assert report.patterns().get("rms_norm", 0) > 0
    unpatch(model)
    with pytest.raises(ValueError, match="unknown pattern"):
        patch(model, patterns=["nope"])


def test_works_with_mlx_lm_generate_and_prompt_cache():
    from mlx_lm import generate, stream_generate
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    if "qwen3_moe" not in fixtures.available():
        pytest.skip("needs the trained qwen3_moe fixture (tokenizer)")
    model, tok = fixtures.load_quantized("qwen3_moe")
    want = generate(model, tok, "def ", max_tokens=16)
    fuse(model)
    assert generate(model, tok, "def ", max_tokens=16) == want
    cache = make_prompt_cache(model)
    text = "".join(r.text for r in stream_generate(model, tok, "def ", max_tokens=8,
                                                   prompt_cache=cache))  # fmt: skip
    assert text and cache[0].offset > 0
    assert isinstance(tok, TokenizerWrapper)
    unpatch(model)


def test_smart_patch_keeps_only_faithful_patterns(monkeypatch):
    model = build("qwen3_moe", "tiny", quant="4bit")
    report = smart_patch(model, PROMPTS[0], patterns=["moe_block"], steps=6, repeats=1,
                         min_gain=-1.0)  # fmt: skip
    assert "moe_block" in report.timings
    assert report.timings["moe_block"]["tokens_identical"]
    unpatch(model)

    # A pattern that changes the output must be reverted, whatever its speed.
    from zmlx.patch.patterns import moe_block as mb

    real = mb.FusedMoE.__call__

    def broken(self, x):
        return real(self, x) * 0.0

    monkeypatch.setattr(mb.FusedMoE, "__call__", broken)
    report = smart_patch(model, PROMPTS[0], patterns=["moe_block"], steps=6, repeats=1,
                         min_gain=-1.0)  # fmt: skip
    assert report.timings["moe_block"]["tokens_identical"] is False
    assert report.count == 0
    assert not any(isinstance(s.module, Fused) for s in walk(model))


def test_training_mode_applies_only_differentiable_patterns():
    model = build("qwen3_moe", "tiny", quant="4bit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=["moe_block", "rms_norm"], mode="training")
    assert set(report.patterns()) == {"rms_norm"}
    assert any("training mode" in n for n in report.notes)
    unpatch(model)


def test_default_patterns_are_the_tables():
    from zmlx.patch.safety import TABLE, default_patterns

    for family in ("qwen3_moe", "glm4_moe_lite", "gpt_oss"):
        want = sorted(p for (f, p, b), r in TABLE.items() if f == family and b == "cuda")
        assert default_patterns(family, "cuda") == want
    assert "mla_attention" in default_patterns("glm4_moe_lite", "cuda")
    assert default_patterns("qwen3_moe", "cpu") == []  # the CPU table applies nothing
    assert default_patterns("llama", "cuda") == []  # no CUDA entry for the family
