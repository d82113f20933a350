"""The model zoo: tiny builds of every family, quantization, save/load, fixtures, docs table."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

pytest.importorskip("mlx_lm")

from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from zmlx.core.backend import gpu_backend
from zmlx.models import (  # noqa: E402
    FAMILIES,
    FULL,
    MOE_FAMILIES,
    TINY,
    build,
    config_of,
    estimate_bytes,
    fixtures,
    moe_blocks,
    quantize,
    save,
)

QUANTS = [None, "4bit", "8bit", "mxfp4"]
REQUIRED_FIXTURES = ("qwen3_moe", "lfm2_moe", "glm4_moe_lite", "gpt_oss", "mixtral", "deepseek_v3")
# Median top-1/top-2 logit margin over 64 greedy tokens that every fixture must exceed.
MARGIN_THRESHOLD = 2.0
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _tokens(n=7, seed=0):
    return mx.array(np.random.default_rng(seed).integers(1, TINY["qwen3"]["vocab_size"], (1, n)))


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_build_forward_cache_save_load(family, quant, tmp_path):
    import mlx_lm

    model = build(family, "tiny", quant)
    # 40 tokens: past gpt_oss's 32-token sliding window, and 40 x top-k >= 64 takes SwitchGLU's
    # sorted (prefill) path, while the single-token steps below take the unsorted one.
    x = _tokens(40)
    full = model(x)
    assert full.shape == (1, x.shape[1], TINY[family]["vocab_size"])
    assert mx.all(mx.isfinite(full)).item()

    # Prefill 36 tokens, then decode one at a time: the logits match the cache-free pass.
    cache = make_prompt_cache(model)
    steps = [model(x[:, :36], cache=cache)] + [
        model(x[:, i : i + 1], cache=cache) for i in range(36, 40)
    ]
    # MLX's CUDA GEMMs for the 40-token pass and the 1-token steps differ by more than its CPU's.
    tol = 2e-4 if gpu_backend() == "cpu" else 3e-2
    np.testing.assert_allclose(
        np.array(mx.concatenate(steps, axis=1)), np.array(full), atol=tol, rtol=tol
    )

    if quant is not None:
        assert config_of(model)["quantization"]["bits"] == (8 if quant == "8bit" else 4)
        modes = {m.mode for _, m in model.named_modules() if hasattr(m, "mode")}
        assert ("mxfp4" if quant == "mxfp4" else "affine") in modes

    loaded, tokenizer = mlx_lm.load(str(save(model, tmp_path / "m")))
    np.testing.assert_array_equal(np.array(loaded(x)), np.array(full))
    assert (
        tokenizer.decode(tokenizer.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
    )


def _leaf_bits(model):
    return {
        p: m.bits for p, m in model.named_modules() if isinstance(getattr(m, "bits", None), int)
    }


@pytest.mark.parametrize("family", ["qwen3_moe", "granitemoe", "gpt_oss", "deepseek_v3"])
def test_quantization_follows_family_predicate(family):
    model = build(family, "tiny", "4bit")
    predicate = getattr(model, "quant_predicate", lambda path, module: True)
    bits = _leaf_bits(model)
    assert bits, "nothing was quantized"
    for path, b in bits.items():
        rule = predicate(path, None)
        assert b == (rule["bits"] if isinstance(rule, dict) else 4), path
    # MoEGate (deepseek/glm routers) has no to_quantized: it stays float.
    for info in moe_blocks(model):
        assert (info.router_bits is None) == info.router.endswith("MoEGate")


def test_random_packed_matches_quantized_layout():
    ref = build("qwen3_moe", "tiny", "4bit")
    rnd = build("qwen3_moe", "tiny", "4bit", random_packed=True)
    ref_params = dict(tree_flatten(ref.parameters()))
    rnd_params = dict(tree_flatten(rnd.parameters()))
    assert ref_params.keys() == rnd_params.keys()
    for k, v in ref_params.items():
        assert (rnd_params[k].shape, rnd_params[k].dtype) == (v.shape, v.dtype), k
    # The random codes and scales give weights with the float init's spread (uniform +-1/sqrt(d)).
    sw = rnd.model.layers[0].mlp.switch_mlp.gate_proj
    w = mx.dequantize(sw.weight, sw.scales, sw.biases, sw.group_size, sw.bits)
    assert abs(w.std().item() * np.sqrt(3 * 64) - 1) < 0.25
    assert abs(w.mean().item()) < 0.02
    assert mx.all(mx.isfinite(rnd(_tokens()))).item()


def test_random_packed_mxfp4_scale_range():
    model = build("gpt_oss", "tiny", "mxfp4", random_packed=True)
    sw = model.model.layers[0].mlp.experts.down_proj
    w = mx.dequantize(sw.weight, sw.scales, None, 32, 4, mode="mxfp4")
    assert 0.3 < w.std().item() * np.sqrt(3 * 64) < 1.5
    assert mx.all(mx.isfinite(model(_tokens()))).item()


# Published total parameter counts (billions) of the models the full configs reproduce.
PUBLISHED_B = {
    "qwen3_moe": 30.5,
    "lfm2_moe": 8.3,
    "glm4_moe_lite": 30.0,
    "gpt_oss": 20.9,
    "mixtral": 46.7,
    "olmoe": 6.9,
    "qwen3_next": 80.0,
    "granitemoe": 3.3,
    "minimax": 230.0,
    "qwen3": 4.0,
    "llama": 8.0,
}


@pytest.mark.parametrize("family", sorted(PUBLISHED_B))
def test_full_config_parameter_count(family):
    # Shapes only: the full model is constructed lazily and never evaluated.
    billions = estimate_bytes(family, "full") / 2 / 1e9
    assert billions == pytest.approx(PUBLISHED_B[family], rel=0.05)


@pytest.mark.parametrize("family", ["qwen3_moe", "lfm2_moe", "glm4_moe_lite", "gpt_oss"])
def test_full_4bit_fits_80gb(family):
    assert estimate_bytes(family, "full", "4bit") < 40e9


def test_tiny_keeps_full_structure():
    for family in FAMILIES:
        assert set(TINY[family]) - {"bos_token_id", "eos_token_id"} == set(FULL[family]), family
    for family in MOE_FAMILIES:
        blocks = moe_blocks(build(family, "tiny"))
        assert blocks and all(b.top_k == TINY[family]["num_experts_per_tok"] for b in blocks)
    assert moe_blocks(build("qwen3", "tiny")) == []


def test_errors():
    with pytest.raises(ValueError, match=r"\[models\] expected a family"):
        build("nope")
    with pytest.raises(ValueError, match=r"\[models\] expected size"):
        build("qwen3_moe", "medium")
    with pytest.raises(ValueError, match=r"\[models.quantize\] expected quant"):
        build("qwen3_moe", "tiny", "3bit")
    with pytest.raises(ValueError, match=r"\[models\] expected a model made by"):
        config_of(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"\[models.fixtures\] expected a family"):
        fixtures.path("nope")


def test_quantize_after_build():
    model = build("mixtral", "tiny")
    quantize(model, "8bit")
    assert set(_leaf_bits(model).values()) == {8}


# ---------------------------------------------------------------- fixtures


def test_required_fixtures_present_and_small():
    assert set(REQUIRED_FIXTURES) <= set(fixtures.available())
    assert fixtures.DEFAULT in fixtures.available()
    for family in fixtures.available():
        size = sum(f.stat().st_size for f in fixtures.path(family).iterdir())
        assert size <= 2 * 2**20, (family, size)


@pytest.mark.parametrize("family", fixtures.available())
def test_fixture_decodes_confidently(family):
    model, tokenizer = fixtures.load(family)
    rec = fixtures.record(family)
    tokens, margins = fixtures.greedy(model, rec["prompt_tokens"], 64)
    assert len(tokens) == 64
    assert np.median(margins) > MARGIN_THRESHOLD, (family, np.median(margins))
    text = tokenizer.decode(tokens)
    assert isinstance(text, str) and text.strip()
    # Same tokens as when the fixture was made, up to the first recorded near-tie (< 0.05).
    ties = [i for i, m in enumerate(rec["greedy_margins"]) if m < 0.05]
    upto = ties[0] if ties else 64
    assert tokens[:upto] == rec["greedy_tokens"][:upto]


@pytest.mark.slow
def test_train_script_runs(tmp_path, request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("trains a model; run with -m slow")
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_fixtures.py"
    argv = sys.argv
    sys.argv = [str(script), "--families", "mixtral", "--steps", "40", "--out", str(tmp_path)]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    assert (tmp_path / "mixtral" / fixtures.RECORD).is_file()


# ---------------------------------------------------------------- docs/models.md table


def _docs_rows() -> dict[str, dict[str, str]]:
    lines = [ln for ln in DOCS.read_text().splitlines() if ln.startswith("| ")]
    header_at = next(i for i, ln in enumerate(lines) if ln.startswith("| family | block class"))
    cells = [
        [c.strip().replace("`", "") for c in ln.strip("|").split("|")] for ln in lines[header_at:]
    ]
    header, rows = cells[0], cells[2:]
    rows = rows[: next((i for i, r in enumerate(rows) if len(r) != len(header)), len(rows))]
    return {r[0]: dict(zip(header, r)) for r in rows}


def _topk_desc(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def _route(code: str, z: np.ndarray, bias: np.ndarray, k: int, cfg: dict):
    """Expert indices and weights as the scoring code in docs/models.md describes them."""
    if code.startswith("softmax-topk"):
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        inds = _topk_desc(p, k)
        w = np.take_along_axis(p, inds, -1)
        return inds, w / w.sum(-1, keepdims=True) if code.endswith("renorm") else w
    if code == "topk-softmax":
        inds = _topk_desc(z, k)
        w = np.exp(np.take_along_axis(z, inds, -1))
        return inds, w / w.sum(-1, keepdims=True)
    assert code.startswith("sigmoid-bias"), code
    s = 1 / (1 + np.exp(-z))
    sel = s + bias
    groups = cfg.get("n_group", 1)
    if "group" in code and groups > 1:
        g = sel.reshape(*sel.shape[:-1], groups, -1)
        group_score = np.sort(g, -1)[..., -2:].sum(-1)
        dropped = np.argsort(group_score, -1)[..., : groups - cfg["topk_group"]]
        np.put_along_axis(g, dropped[..., None], 0.0, -2)
        sel = g.reshape(sel.shape)
    inds = _topk_desc(sel, k)
    w = np.take_along_axis(s, inds, -1)
    w = w / w.sum(-1, keepdims=True)
    return inds, w * cfg.get("routed_scaling_factor", 1.0) if code.endswith("scale") else w


def _reference_block(block, info, row, cfg, x):
    router = block[info.router.split(":")[0]]
    if info.router.endswith("MoEGate"):
        z = x @ router.weight.T
    elif hasattr(router, "layer"):
        z = router.layer(x)
    else:
        z = router(x)
    bias = 0.0
    if info.routing_bias:
        owner = block
        for part in info.routing_bias.split("."):
            owner = owner[part]
        bias = np.array(owner)
    inds, w = _route(row["scoring"], np.array(z.astype(mx.float32)), bias, info.top_k, cfg)
    y = block[info.experts](x, mx.array(inds))
    out = (y * mx.array(w, dtype=y.dtype)[..., None]).sum(-2)
    if row["combine"] == "sum+shared":
        out = out + block.shared_experts(x)
    elif row["combine"] == "sum+gated-shared":
        out = out + mx.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
    else:
        assert row["combine"] == "sum", row["combine"]
    return out


def test_docs_table_covers_every_moe_family():
    assert sorted(_docs_rows()) == sorted(MOE_FAMILIES)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_docs_table_matches_model(family):
    row = _docs_rows()[family]
    model = build(family, "tiny")
    info = moe_blocks(model)[0]
    assert row["block class"] == info.block
    assert row["block path"] == info.pattern
    assert row["router"] == info.router
    assert row["selection bias"] == (info.routing_bias or "—")
    assert row["shared experts"] == (", ".join(info.shared) or "—")
    extras = info.activation + (", bias" if info.expert_bias else "")
    assert row["experts (activation)"] == f"{info.experts} ({extras})"
    full = FULL[family]
    n_full = next(
        full[k] for k in ("num_experts", "n_routed_experts", "num_local_experts") if k in full
    )
    assert row["experts / top-k (full)"] == f"{n_full} / {full['num_experts_per_tok']}"
    q_info = moe_blocks(build(family, "tiny", "4bit"))[0]
    assert row["router when quantized"] == (
        f"{q_info.router_bits}-bit" if q_info.router_bits else "float"
    )

    # Scoring and combine: a reference written from the two codes reproduces the block.
    block = _module_at(model, info.path)
    if info.routing_bias:  # non-zero selection biases, so using them (or not) shows
        owner_path, name = (info.path + "." + info.routing_bias).rsplit(".", 1)
        owner = _module_at(model, owner_path)
        owner[name] = mx.random.normal(owner[name].shape, key=mx.random.key(1)) * 0.3
    x = mx.random.normal((1, 6, TINY[family]["hidden_size"]), key=mx.random.key(0))
    expected = _reference_block(block, info, row, TINY[family], x)
    np.testing.assert_allclose(np.array(block(x)), np.array(expected), atol=1e-5, rtol=1e-4)


def _module_at(model, path: str):
    m = model
    for part in path.split("."):
        m = m[int(part)] if re.fullmatch(r"\d+", part) else m[part]
    return m


def test_fixture_quantized_with_another_group_size():
    from zmlx.models import fixtures

    model, _ = fixtures.load_quantized("qwen3_moe", group_size=32)
    sizes = {m.group_size for _, m in model.named_modules() if hasattr(m, "group_size")}
    assert sizes == {32}  # the router's own 8-bit parameters too
    assert config_of(model)["quantization"]["group_size"] == 32
    assert mx.all(mx.isfinite(model(_tokens()))).item()
    with pytest.raises(ValueError, match="group_size"):
        fixtures.load_quantized("qwen3_moe", group_size=48)


def test_fixture_group_size_follows_the_backend():
    from zmlx.models.build import backend_group_size

    assert backend_group_size("cuda") == 32
    assert backend_group_size("cpu") is None and backend_group_size("metal") is None
