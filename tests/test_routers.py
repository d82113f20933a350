"""MoE routers against mlx-lm's own MoE blocks, plus ties, errors and fallbacks.

The mlx-lm comparison builds each family's real MoE block, feeds it one-hot tokens whose
router logits are chosen, and replaces the experts with a stub that returns one-hot rows: the
block's output is then the dense ``(tokens, E)`` matrix of routing weights, whatever order
``argpartition`` produced, and it must equal zmlx's ``(indices, weights)`` scattered densely.
"""

from __future__ import annotations

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_same_routing
from zmlx.core import fallback
from zmlx.core.backend import backend
from zmlx.kernels import router_kernels as RK
from zmlx.kernels import router_specs as RS
from zmlx.kernels import routers as R

pytest.importorskip("mlx_lm")

T = 5  # tokens (one-hot rows, so the hidden size is E)


def _args(**kw):
    base = dict(
        hidden_size=0, moe_intermediate_size=8, intermediate_size=8, mlp_bias=False,
        n_shared_experts=None, num_shared_experts=0, rms_norm_eps=1e-6,
        hidden_act="silu", swiglu_limit=7.0,
    )  # fmt: skip
    base.update(kw)
    return SimpleNamespace(**base)


def _one_hot_experts(e):
    def stub(x, inds):
        return mx.eye(e, dtype=mx.float32)[inds]  # (..., k, E)

    return stub


# model_type -> (module, block class, router attribute path, bias attribute path, args)
def _families(e, k):
    return {
        "qwen3_moe": ("qwen3_moe", "Qwen3MoeSparseMoeBlock", "gate", None,
                      _args(num_experts=e, num_experts_per_tok=k, norm_topk_prob=True)),
        "olmoe": ("olmoe", "OlmoeSparseMoeBlock", "gate", None,
                  _args(num_experts=e, num_experts_per_tok=k, norm_topk_prob=False)),
        "deepseek_v2": ("deepseek_v2", "DeepseekV2MoE", "gate", None,
                        _args(n_routed_experts=e, num_experts_per_tok=k, routed_scaling_factor=16.0,
                              topk_method="group_limited_greedy", n_group=4, topk_group=2)),
        "mixtral": ("mixtral", "MixtralSparseMoeBlock", "gate", None,
                    _args(num_local_experts=e, num_experts_per_tok=k)),
        "gpt_oss": ("gpt_oss", "MLPBlock", "router", None,
                    _args(num_local_experts=e, num_experts_per_tok=k)),
        "granitemoe": ("granitemoe", "GraniteMoeMoE", "router.layer", None,
                       _args(num_local_experts=e, num_experts_per_tok=k)),
        "glm4_moe": ("glm4_moe", "MoE", "gate", "gate.e_score_correction_bias",
                     _args(n_routed_experts=e, num_experts_per_tok=k, norm_topk_prob=True,
                           routed_scaling_factor=2.5, n_group=4, topk_group=2,
                           topk_method="noaux_tc")),
        "glm4_moe_lite": ("glm4_moe_lite", "Glm4MoeLiteMoE", "gate",
                          "gate.e_score_correction_bias",
                          _args(n_routed_experts=e, num_experts_per_tok=k, norm_topk_prob=True,
                                routed_scaling_factor=1.8, n_group=1, topk_group=1,
                                topk_method="noaux_tc")),
        "deepseek_v3": ("deepseek_v3", "DeepseekV3MoE", "gate", "gate.e_score_correction_bias",
                        _args(n_routed_experts=e, num_experts_per_tok=k, norm_topk_prob=True,
                              routed_scaling_factor=2.5, n_group=8, topk_group=4,
                              topk_method="noaux_tc")),
        "minimax": ("minimax", "MiniMaxSparseMoeBlock", "gate", "e_score_correction_bias",
                    _args(num_local_experts=e, num_experts_per_tok=k)),
        "lfm2_moe": ("lfm2_moe", "Lfm2MoeSparseMoeBlock", "gate", "expert_bias",
                     _args(num_experts=e, num_experts_per_tok=k, norm_topk_prob=True,
                           use_expert_bias=True, routed_scaling_factor=1.0)),
        "kimi_linear": ("kimi_linear", "KimiSparseMoE", "gate", "e_score_correction_bias",
                        _args(num_experts=e, num_experts_per_token=k, moe_renormalize=True,
                              routed_scaling_factor=2.446, num_expert_group=4, topk_group=2,
                              moe_router_activation_func="sigmoid")),
    }  # fmt: skip


def _attr(obj, path):
    for p in path.split(".")[:-1]:
        obj = getattr(obj, p)
    return obj, path.split(".")[-1]


def _mlx_lm_block(model_type, e, k, logits, bias, dtype):
    import importlib

    mod, cls, gate_path, bias_path, args = _families(e, k)[model_type]
    args.hidden_size = e
    block = getattr(importlib.import_module(f"mlx_lm.models.{mod}"), cls)(args)
    block.set_dtype(dtype)
    w = np.zeros((e, e), np.float32)
    w[:, :T] = np.array(logits.astype(mx.float32)).T  # one-hot row t picks column t
    owner, name = _attr(block, gate_path + ".weight")
    setattr(owner, name, mx.array(w).astype(dtype))
    if model_type == "gpt_oss":
        block.router.bias = mx.zeros((e,), dtype)
    if bias_path is not None:
        owner, name = _attr(block, bias_path)
        setattr(owner, name, bias)
    for attr in ("switch_mlp", "experts"):
        if hasattr(block, attr):
            setattr(block, attr, _one_hot_experts(e))
    return block, args


def _dense(inds, weights, e):
    out = np.zeros((inds.shape[0], e), np.float64)
    i = np.array(inds)
    np.put_along_axis(out, i, np.array(weights.astype(mx.float32), np.float64), axis=-1)
    return out


BOOST = ("lfm2_moe", "kimi_linear")  # 16-bit scores: the catalog's tie-free "boost" bias


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("model_type", list(_families(64, 6)))
def test_matches_mlx_lm_block(model_type, dtype, rng):
    e, k = 64, 6
    logits_np = RS._separated(rng, T, e)
    bias = None
    if _families(e, k)[model_type][3] is not None:
        b = rng.normal(0, 0.02, size=(e,)).astype(np.float32)
        if model_type in BOOST:
            rule = R.router_rule(model_type, _families(e, k)[model_type][4], dtype)
            picks = RS._boosted(rng, e, rule)
            b[:] = 0.0
            b[picks] = 2.0
            logits_np[:, picks] = -30.0
        bias = mx.array(b)
    logits = mx.array(logits_np).astype(dtype)
    block, args = _mlx_lm_block(model_type, e, k, logits, bias, dtype)
    x = mx.eye(T, e, dtype=dtype)[None]
    want = np.array(block(x).astype(mx.float32))[0]
    rule = R.router_rule(model_type, args, dtype)
    gate_logits = logits.astype(mx.float32) if rule.gate_float32 else logits
    for fn in (R.route, R.route_ref):
        inds, w = fn(gate_logits, rule, bias)
        assert inds.dtype == mx.uint32
        got = _dense(inds, w, e)
        atol, rtol = (1e-6, 1e-5) if dtype == mx.float32 else (8e-3, 1.6e-2)
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=model_type)


def test_router_rule_dtypes():
    # Weight dtypes as mlx-lm produces them for bfloat16 activations.
    logits = mx.zeros((2, 16), mx.bfloat16)
    cases = {
        "qwen3_moe": mx.bfloat16, "mixtral": mx.bfloat16, "granitemoe": mx.float32,
        "glm4_moe": mx.float32, "minimax": mx.bfloat16, "lfm2_moe": mx.bfloat16,
        "kimi_linear": mx.bfloat16,
    }  # fmt: skip
    for mt, want in cases.items():
        rule = R.router_rule(mt, _families(16, 2)[mt][4], mx.bfloat16)
        _, w = R.route(logits, rule, mx.zeros((16,)) if rule.kind == "sigmoid_topk" else None)
        assert w.dtype == want, mt


def test_ties_go_to_the_lower_index():
    logits = mx.array([[0.0, 1.0, 1.0, 0.5, 1.0, -1.0]])
    inds, w = R.topk_softmax(logits, 2)
    assert inds.tolist() == [[1, 2]]
    inds, _ = R.softmax_topk(logits, 3)
    assert inds.tolist() == [[1, 2, 4]]
    # Group-limited: groups (0, 1) and (2, 3) tie on their top-2 sums; the lower one is kept.
    inds, _ = R.sigmoid_topk(mx.array([[1.0, 0.0, 1.0, 0.0]]), 1, n_group=2, topk_group=1)
    assert inds.tolist() == [[0]]


def _tied_logits(rng, t: int, e: int, dtype) -> mx.array:
    # Few distinct values: every row has ties at the k-th place.
    return mx.array(rng.integers(0, 4, size=(t, e)).astype(np.float32) * 0.25).astype(dtype)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("ascending", [False, True], ids=["desc", "asc"])
@pytest.mark.parametrize("kind", ["softmax_topk", "topk_softmax", "sigmoid_topk"])
def test_ties_and_order_follow_the_familys_form(kind, ascending, dtype, rng):
    # A stable sort of the selection scores is what MLX's GPU argpartition does: the kernel
    # (run on the emulator here, on the GPU in the GPU suite) and the reference both follow it.
    logits = _tied_logits(rng, 37, 96, dtype)
    rule = R.RouterRule(kind, 6, ascending=ascending)
    sel = np.array(logits.astype(mx.float32))
    order = np.argsort(sel, axis=-1, kind="stable")
    want = order[:, -6:] if ascending else np.argsort(-sel, axis=-1, kind="stable")[:, :6]
    from kernel_checks import emulator

    with emulator():
        got_kernel = np.array(R.route(logits, rule)[0])
    got_ref = np.array(R.route_ref(logits, rule)[0])
    np.testing.assert_array_equal(got_ref, want)
    np.testing.assert_array_equal(got_kernel, want)


@pytest.mark.no_emulate  # stock argpartition runs on the CPU there, whose order differs from the GPU's
@pytest.mark.gpu
@pytest.mark.parametrize("ascending", [False, True], ids=["desc", "asc"])
def test_kernel_matches_stock_argpartition_on_the_gpu(ascending, rng):
    # Picks, ties and order equal mlx-lm's argpartition expression on this GPU backend.
    logits = _tied_logits(rng, 64, 128, mx.bfloat16)
    rule = R.RouterRule("topk_softmax", 8, ascending=ascending)
    before = fallback.counts().get("route", 0)
    got, _ = R.route(logits, rule)
    assert fallback.counts().get("route", 0) == before, "the router kernel did not run"
    want, _ = R.route_ref(logits, rule, partition=True)
    np.testing.assert_array_equal(np.array(got), np.array(want))


def test_order_is_descending_selection_score(rng):
    logits = mx.array(RS._separated(rng, 7, 40))
    bias = mx.array(rng.normal(0, 0.5, size=(40,)).astype(np.float32))
    inds, _ = R.sigmoid_topk(logits, 8, bias)
    sel = np.take_along_axis(
        np.array(mx.sigmoid(logits) + bias), np.array(inds).astype(np.int64), axis=-1
    )
    assert (np.diff(sel, axis=-1) <= 0).all()


def test_stock_selects_the_same_set(rng):
    logits = mx.array(RS._separated(rng, 9, 128))
    rule = R.RouterRule("softmax_topk", 8, norm=True)
    i1, w1 = R.route_ref(logits, rule)
    i2, w2 = R.route_stock(logits, None, rule)
    o1, o2 = np.argsort(np.array(i1), -1), np.argsort(np.array(i2), -1)
    assert (
        np.take_along_axis(np.array(i1), o1, -1) == np.take_along_axis(np.array(i2), o2, -1)
    ).all()
    np.testing.assert_allclose(
        np.take_along_axis(np.array(w1), o1, -1), np.take_along_axis(np.array(w2), o2, -1), 1e-6
    )


def test_fused_random_inputs_match_reference_as_sorted_pairs(rng):
    # Random (undesigned) weights: on a GPU or the emulator the kernel's matvec sums in another
    # order than MLX's, so compare sets of (index, weight) pairs in float32.
    x = mx.array(rng.normal(size=(3, 256)).astype(np.float32))
    w = mx.array(rng.normal(size=(64, 256)).astype(np.float32) * 0.1)
    q, s, b = mx.quantize(w, group_size=64, bits=8)
    rule = R.RouterRule("softmax_topk", 6, norm=True)
    for args in ((w, dict()), (q, dict(scales=s, biases=b))):
        i1, w1 = R.router_fused(x, args[0], rule, **args[1])
        i2, w2 = R.router_fused_ref(x, args[0], rule, None, None, args[1].get("scales"),
                                    args[1].get("biases"))  # fmt: skip
        assert_same_routing((i1, w1), (i2, w2), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("wu", [8, 16])
def test_fused_kernel_loads_per_lane(wu, monkeypatch, rng):
    """The fused router kernel on the emulator with ``FUSED_WU`` words per lane in flight
    (a row of 384 words: one partial round at 16, a full and a partial one at 8) routes as
    the reference does."""
    from test_quant import run_kernel

    monkeypatch.setattr(RK, "FUSED_WU", wu)
    # float32: MLX's CPU quantized matmul in bfloat16 (the reference) is far less precise.
    x = mx.array(rng.normal(size=(2, 1536)).astype(np.float32))
    w = mx.array(rng.normal(size=(32, 1536)).astype(np.float32) * 0.05)
    q, s, b = mx.quantize(w, group_size=64, bits=8)
    rule = R.RouterRule("softmax_topk", 4, norm=True)
    i1, w1 = run_kernel(R.router_fused, x, q, rule, scales=s, biases=b, group_size=64, bits=8)
    i2, w2 = R.router_fused_ref(x, q, rule, None, None, s, b, 64, 8)
    assert_same_routing((i1, w1), (i2, w2), atol=1e-5, rtol=1e-4)


def test_errors():
    x = mx.zeros((2, 8))
    with pytest.raises(ValueError, match=r"\[route\] expected 1 <= k <= E"):
        R.softmax_topk(x, 9)
    with pytest.raises(ValueError, match=r"\[route\] expected n_group dividing E"):
        R.sigmoid_topk(x, 2, n_group=3)
    with pytest.raises(ValueError, match=r"\[route\] expected groups of at least 2"):
        R.sigmoid_topk(x, 2, n_group=8, topk_group=2)
    with pytest.raises(ValueError, match=r"\[route\] expected select_bias of shape \(8,\)"):
        R.sigmoid_topk(x, 2, mx.zeros((7,)))
    with pytest.raises(TypeError, match=r"\[route\] expected 'logits' to be float32"):
        R.softmax_topk(mx.zeros((2, 8), mx.int32), 2)
    with pytest.raises(TypeError, match=r"\[route\] expected a RouterRule"):
        R.route(x, "softmax")
    with pytest.raises(ValueError, match=r"\[router_rule\] no routing rule"):
        R.router_rule("llama", {})
    with pytest.raises(ValueError, match=r"\[router_fused\] expected x \(\.\.\., 8\)"):
        R.router_fused(mx.zeros((1, 4)), mx.zeros((16, 8)), R.RouterRule("topk_softmax", 2))


def test_large_expert_counts_take_the_reference_path(rng):
    logits = mx.array(RS._separated(rng, 2, 600))
    before = fallback.counts().get("route", 0)
    inds, w = R.softmax_topk(logits, 4)
    i2, w2 = R.route_ref(logits, R.RouterRule("softmax_topk", 4))
    assert (np.array(inds) == np.array(i2)).all()
    if backend() != "cpu":
        assert fallback.counts().get("route", 0) == before + 1


_SPLIT_CASES = {
    # rule, experts (not a multiple of the split's 8 warps in two), dtype, selection / Linear bias
    "softmax_topk_e60": (R.RouterRule("softmax_topk", 6, norm=True), 60, mx.bfloat16, False, False),
    "sigmoid_groups_e64": (R.RouterRule("sigmoid_topk", 4, n_group=4, topk_group=2, norm=True,
                                        scale=2.5), 64, mx.float16, True, False),
    "topk_softmax_bias_e20": (R.RouterRule("topk_softmax", 4), 20, mx.float32, False, True),
}  # fmt: skip


@pytest.mark.parametrize("slices", [1, 4])
@pytest.mark.parametrize("quant", [False, True], ids=["float", "q4"])
@pytest.mark.parametrize("case", list(_SPLIT_CASES))
def test_split_router_matches_one_group(case, quant, slices, monkeypatch, rng):
    """CUDA's split router (rows over groups, the group that finishes routing) on the
    emulator, 3 tokens: with a warp a row it computes every logit as the one-group kernel does,
    so both route bit for bit alike; with rows in 4 slices (summed in another order) it picks
    the same experts with close weights; and routes as the reference (float32)."""
    from test_quant import run_kernel

    rule, e, dtype, sel, lin = _SPLIT_CASES[case]
    d = 384
    x = mx.array(rng.normal(size=(3, d)).astype(np.float32)).astype(dtype)
    w = mx.array(rng.normal(size=(e, d)).astype(np.float32) * 0.05).astype(dtype)
    kw = dict(select_bias=mx.array(rng.normal(size=(e,)).astype(np.float32) * 0.1)
              if sel else None,
              bias=mx.array(rng.normal(size=(e,)).astype(np.float32) * 0.1).astype(dtype)
              if lin else None)  # fmt: skip
    if quant:
        w, s, b = mx.quantize(w, group_size=64, bits=4)
        kw.update(scales=s, biases=b, group_size=64, bits=4)
    monkeypatch.setattr(RK, "SPLIT_SLICES", slices)
    outs = {}
    for split in (True, False):
        monkeypatch.setattr(RK, "SPLIT", split)
        outs[split] = run_kernel(R.router_fused, x, w, rule, **kw)
    if slices == 1:
        for a, b in zip(outs[True], outs[False]):
            assert a.dtype == b.dtype and (np.array(a.astype(mx.float32)) == np.array(
                b.astype(mx.float32))).all()  # fmt: skip
    else:
        assert_same_routing(outs[True], outs[False], atol=2e-2, rtol=2e-2)
    want = R.router_fused_ref(x.astype(mx.float32), w, rule, kw["bias"], kw["select_bias"],
                              kw.get("scales"), kw.get("biases"), 64, 4)  # fmt: skip
    if dtype == mx.float32:
        assert_same_routing(outs[True], want, atol=1e-5, rtol=1e-4)


def test_split_router_folds_the_prenorm_as_one_group_does(monkeypatch, rng):
    """With the post-attention norm folded in, the split router writes the normed input once
    (group 0 of each token) and it equals the one-group kernel's, as do the routes (a warp a
    row, so the logits are summed alike)."""
    from test_quant import run_kernel

    monkeypatch.setattr(RK, "SPLIT_SLICES", 1)
    d, e = 256, 24
    x, a = (mx.array(rng.normal(size=(2, d)).astype(np.float32)).astype(mx.bfloat16)
            for _ in range(2))  # fmt: skip
    nw = mx.array(rng.uniform(0.5, 1.5, size=(d,)).astype(np.float32)).astype(mx.bfloat16)
    w = mx.array(rng.normal(size=(e, d)).astype(np.float32) * 0.05).astype(mx.bfloat16)
    rule = R.RouterRule("softmax_topk", 4, norm=True)
    outs = {}
    for split in (True, False):
        monkeypatch.setattr(RK, "SPLIT", split)
        outs[split] = run_kernel(R.router_fused, x, w, rule, prenorm=(a, nw, 1e-6),
                                 return_normed=True)  # fmt: skip
    for got, one in zip(outs[True], outs[False]):
        assert (np.array(got.astype(mx.float32)) == np.array(one.astype(mx.float32))).all()


def test_split_router_refuses_bad_slicing(monkeypatch):
    from zmlx.core.emulate import emulate

    monkeypatch.setattr(RK, "SPLIT_SLICES", 3)
    x, w = mx.zeros((1, 64), mx.bfloat16), mx.zeros((16, 64), mx.bfloat16)
    with emulate(), pytest.raises(ValueError, match=r"\[router_fused\] expected SPLIT_WARPS"):
        R.router_fused(x, w, R.RouterRule("softmax_topk", 2))


@pytest.mark.cuda
def test_split_router_launches_in_one_lazy_graph_do_not_interfere(rng):
    """On the GPU: sixteen routings of one router in one lazy graph, which MLX may run
    concurrently (no data flows between them), route exactly as each launch alone does (the
    hand-off keeps no state between launches)."""
    rule = R.RouterRule("softmax_topk", 8, norm=True)
    w = mx.array(rng.normal(size=(128, 2048)).astype(np.float32) * 0.05).astype(mx.bfloat16)
    q, s, b = mx.quantize(w, group_size=64, bits=4)
    xs = [mx.array(rng.normal(size=(t, 2048)).astype(np.float32)).astype(mx.bfloat16)
          for t in (1, 4, 16, 1) * 4]  # fmt: skip
    mx.eval(xs)

    def route(x):
        return R.router_fused(x, q, rule, scales=s, biases=b, group_size=64, bits=4)

    alone = []
    for x in xs:
        alone.append(route(x))
        mx.eval(alone[-1])
    together = [route(x) for x in xs]
    mx.eval(together)
    for (i1, w1), (i2, w2) in zip(alone, together):
        assert (np.array(i1) == np.array(i2)).all()
        assert (np.array(w1.astype(mx.float32)) == np.array(w2.astype(mx.float32))).all()


@pytest.mark.parametrize("slices", [1, 4])
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "prenorm"])
def test_split_router_preload_is_bitwise(slices, norm, monkeypatch, rng):
    """``router_kernels.SPLIT_PRELOAD``: the quantized split router with each lane's first
    round of words (and their scales and biases) loaded before x and the folded norm routes
    bit for bit as without, at rows of one round (d = 384, 4-bit: 48 words) and of several
    (d = 2048, 8-bit, one slice: 512 words, 2 rounds of WU = 8)."""
    from test_quant import run_kernel

    monkeypatch.setattr(RK, "SPLIT", True)
    monkeypatch.setattr(RK, "SPLIT_SLICES", slices)
    rule = R.RouterRule("softmax_topk", 4, norm=True)
    for d, e, bits in ((384, 24, 4), (2048, 16, 8)):
        x, a = (mx.array(rng.normal(size=(2, d)).astype(np.float32)).astype(mx.bfloat16)
                for _ in range(2))  # fmt: skip
        nw = mx.array(rng.uniform(0.5, 1.5, size=(d,)).astype(np.float32)).astype(mx.bfloat16)
        w = mx.array(rng.normal(size=(e, d)).astype(np.float32) * 0.05).astype(mx.bfloat16)
        wq, s, b = mx.quantize(w, group_size=64, bits=bits)
        kw = dict(scales=s, biases=b, group_size=64, bits=bits)
        if norm:
            kw.update(prenorm=(a, nw, 1e-6), return_normed=True)
        from zmlx.core.kernel import capture

        outs = {}
        for pre in (True, False):
            monkeypatch.setattr(RK, "SPLIT_PRELOAD", pre)
            with capture("cuda") as caught:
                R.router_fused(x, wq, rule, **kw)
            assert caught[0].kernel.name.endswith("_preload") == pre
            outs[pre] = run_kernel(R.router_fused, x, wq, rule, **kw)
        for got, base in zip(outs[True], outs[False]):
            assert got.dtype == base.dtype
            assert (np.array(got.astype(mx.float32)) == np.array(base.astype(mx.float32))).all()
