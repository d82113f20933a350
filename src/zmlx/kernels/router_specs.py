"""Catalog entries of the routers family: cases with tie-free inputs, benchmarks at real shapes."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .catalog import KernelSpec, register
from .routers import RouterRule, route, route_ref, route_stock, router_fused, router_fused_ref


def _route_op(logits, select_bias, rule):
    return route(logits, rule, select_bias)


def _route_ref(logits, select_bias, rule):
    return route_ref(logits, rule, select_bias)


def _fused_op(x, weight, scales, biases, bias, select_bias, rule, bits):
    return router_fused(x, weight, rule, bias=bias, select_bias=select_bias, scales=scales,
                        biases=biases, group_size=_GSZ[bits], bits=bits or 8)  # fmt: skip


def _fused_ref(x, weight, scales, biases, bias, select_bias, rule, bits):
    return router_fused_ref(
        x, weight, rule, bias, select_bias, scales, biases, _GSZ[bits], bits or 8
    )


_GSZ = {0: 64, 8: 64, 4: 32}
_STEP = 0.05  # logits this far apart stay distinct (and ordered) after every rounding


def _tokens(case) -> tuple[int, ...]:
    return tuple(case.get("tokens", (1,)))


def _separated(rng, n: int, e: int) -> np.ndarray:
    """``n`` rows of ``e`` logits: a random permutation of ``-step * (0..e-1)`` plus jitter."""
    rows = np.stack([rng.permutation(e) for _ in range(n)]).astype(np.float32)
    return -_STEP * rows + rng.uniform(0, 0.2 * _STEP, size=(n, e)).astype(np.float32)


def _rule(case, dtype) -> RouterRule:
    kw = dict(case["rule"])
    if kw.pop("out_act", False):
        kw["out_dtype"] = dtype
    return RouterRule(**kw)


def _boosted(rng, e: int, rule: RouterRule) -> np.ndarray:
    """Experts the "boost" bias selects: one in each of ``topk_group`` groups, else a few."""
    if rule.n_group > 1:
        gs = e // rule.n_group
        groups = rng.choice(rule.n_group, rule.topk_group, replace=False)
        return groups * gs + rng.integers(0, gs, size=groups.size)
    return rng.choice(e, min(3, rule.k - 1), replace=False)


def _make_route(case, dtype, rng):
    tok, e = _tokens(case), case["E"]
    rule = _rule(case, dtype)
    logits = _separated(rng, int(np.prod(tok)), e)
    bias = None
    if case.get("bias") == "boost":
        # Scores in a 16-bit dtype differ between MLX builds by an ulp, so a random bias could
        # make near-ties; instead a bias of 2.0 selects experts whose logits are -30 (scores
        # ~1e-13, so 2 + score rounds to 2.0 everywhere): selection-only, ties at 2.0 go to
        # the lower index, and the boosted groups are exactly the kept ones.
        b = np.zeros(e, np.float32)
        picks = _boosted(rng, e, rule)
        b[picks] = 2.0
        logits[:, picks] = -30.0
        bias = mx.array(b).astype(case.get("bias_dtype", dtype))
    elif case.get("bias"):
        b = rng.normal(0, 0.02, size=(e,)).astype(np.float32)
        bias = mx.array(b).astype(case.get("bias_dtype", dtype))
    if case.get("transpose"):
        x = mx.array(np.ascontiguousarray(logits.T)).astype(dtype).T
    else:
        x = mx.array(logits.reshape(*tok, e)).astype(case.get("logits_dtype", dtype))
    return x, bias, rule


def _make_fused(case, dtype, rng):
    """One-hot tokens against designed weights: every logit is exact in every dtype (values
    on a 1/16 grid with at most 8 significant bits), and no two experts tie."""
    tok, e, d, bits = _tokens(case), case["E"], case["D"], case.get("bits", 0)
    n = int(np.prod(tok))
    x = np.zeros((n, d), np.float32)
    x[np.arange(n), (np.arange(n) * 7) % d] = 1.0
    cols = np.stack([rng.permutation(e) for _ in range(d)], axis=1)  # (e, d)
    scales = biases = None
    if bits == 8:  # w = q / 16 - 16: distinct per column for E <= 256
        q, step, base = cols, 1 / 16, np.full(e, -16.0)
    elif bits == 4:  # w = q / 32 - r / 4: the row offset separates experts, q < 8 keeps it
        q, step, base = cols % 8, 1 / 32, -rng.permutation(e) / 4
    if bits:
        ng = d // _GSZ[bits]
        words = q.reshape(e, d * bits // 32, 32 // bits).astype(np.uint32)
        shifts = (np.arange(32 // bits) * bits).astype(np.uint32)
        w = mx.array((words << shifts).sum(axis=-1).astype(np.uint32))
        scales = mx.array(np.full((e, ng), step, np.float32)).astype(dtype)
        biases = mx.array(np.repeat(base[:, None], ng, axis=1).astype(np.float32)).astype(dtype)
    else:
        w = mx.array((-cols / 16).astype(np.float32)).astype(dtype)
    lbias = None
    if case.get("lbias"):
        lbias = mx.array(rng.integers(0, 8, size=(e,)) / 128).astype(dtype)
    sbias = None
    if case.get("bias"):
        sbias = mx.array(rng.normal(0, 0.02, size=(e,)).astype(np.float32))
    xs = mx.array(x.reshape(*tok, d)).astype(dtype)
    return xs, w, scales, biases, lbias, sbias, _rule(case, dtype), bits


def _r(kind, k, **kw):
    return dict(kind=kind, k=k, **kw)


ROUTE_CASES = {
    "softmax_topk": (
        {"id": "qwen3-decode", "tokens": (1, 1), "E": 128, "rule": _r("softmax_topk", 8, norm=True)},
        {"id": "olmoe-33tok", "tokens": (33,), "E": 64, "rule": _r("softmax_topk", 8)},
        {"id": "dsv2-grouped", "tokens": (4,), "E": 160,
         "rule": _r("softmax_topk", 6, scale=16.0, n_group=8, topk_group=3)},
        {"id": "E31-k1", "tokens": (3,), "E": 31, "rule": _r("softmax_topk", 1)},
        {"id": "E512-k16", "tokens": (2,), "E": 512, "rule": _r("softmax_topk", 16, norm=True)},
        {"id": "transposed", "tokens": (5,), "E": 64, "transpose": True,
         "rule": _r("softmax_topk", 4, norm=True)},
    ),
    "topk_softmax": (
        {"id": "mixtral-decode", "tokens": (1, 1), "E": 8, "rule": _r("topk_softmax", 2)},
        {"id": "gpt-oss-4tok", "tokens": (4,), "E": 32, "rule": _r("topk_softmax", 4)},
        {"id": "granite-33tok", "tokens": (33,), "E": 40,
         "rule": _r("topk_softmax", 8, float32=True)},
        {"id": "E97-k16", "tokens": (2,), "E": 97, "rule": _r("topk_softmax", 16)},
    ),
    "sigmoid_topk": (
        {"id": "glm47-flash", "tokens": (1, 1), "E": 64, "bias": True,
         "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-20, scale=1.8, float32=True)},
        {"id": "dsv3-grouped", "tokens": (4,), "E": 256, "bias": True,
         "rule": _r("sigmoid_topk", 8, norm=True, scale=2.5, n_group=8, topk_group=4,
                    float32=True)},
        {"id": "minimax-33tok", "tokens": (33,), "E": 256, "bias": True,
         "logits_dtype": mx.float32,
         "rule": _r("sigmoid_topk", 8, norm=True, norm_eps=1e-20, float32=True, out_act=True)},
        {"id": "lfm2", "tokens": (2,), "E": 32, "bias": "boost", "bias_dtype": mx.float32,
         "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-6, out_act=True)},
        {"id": "lfm2-nobias", "tokens": (2,), "E": 32,
         "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-6, scale=1.5, out_act=True)},
        {"id": "kimi-grouped", "tokens": (3,), "E": 256, "bias": "boost", "bias_dtype": mx.float32,
         "rule": _r("sigmoid_topk", 8, norm=True, norm_eps=1e-20, scale=2.446, n_group=8,
                    topk_group=4, bias_cast=True)},
        {"id": "kimi-softmax", "tokens": (2,), "E": 64, "bias": "boost",
         "rule": _r("sigmoid_topk", 6, norm=True, norm_eps=1e-20, score="softmax",
                    bias_cast=True)},
        {"id": "E33-k3", "tokens": (31,), "E": 33, "rule": _r("sigmoid_topk", 3, float32=True)},
    ),
}  # fmt: skip

FUSED_CASES = (
    {"id": "qwen3-q8-decode", "tokens": (1, 1), "E": 128, "D": 256, "bits": 8,
     "rule": _r("softmax_topk", 8, norm=True)},
    {"id": "gpt-oss-bias-4tok", "tokens": (4,), "E": 32, "D": 192, "lbias": True,
     "rule": _r("topk_softmax", 4)},
    {"id": "minimax-q8-f32gate", "tokens": (2,), "E": 64, "D": 256, "bits": 8, "bias": True,
     "rule": _r("sigmoid_topk", 8, norm=True, norm_eps=1e-20, float32=True, out_act=True,
                gate_float32=True)},
    {"id": "glm-grouped-16tok", "tokens": (16,), "E": 64, "D": 128, "bias": True,
     "rule": _r("sigmoid_topk", 4, norm=True, scale=2.5, n_group=4, topk_group=2,
                float32=True)},
    {"id": "lfm2-q4", "tokens": (1,), "E": 32, "D": 128, "bits": 4,
     "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-6, out_act=True)},
    {"id": "prefill-33tok", "tokens": (33,), "E": 16, "D": 96, "rule": _r("topk_softmax", 2)},
)  # fmt: skip

ROUTE_BENCH = {
    "softmax_topk": (
        {"id": "qwen3-30b-decode", "tokens": (1, 1), "E": 128, "rule": _r("softmax_topk", 8, norm=True)},
        {"id": "qwen3-30b-16tok", "tokens": (16,), "E": 128, "rule": _r("softmax_topk", 8, norm=True)},
        {"id": "qwen3-30b-prefill", "tokens": (2048,), "E": 128, "rule": _r("softmax_topk", 8, norm=True)},
    ),
    "topk_softmax": (
        {"id": "gpt-oss-20b-decode", "tokens": (1, 1), "E": 32, "rule": _r("topk_softmax", 4)},
        {"id": "gpt-oss-20b-16tok", "tokens": (16,), "E": 32, "rule": _r("topk_softmax", 4)},
        {"id": "gpt-oss-20b-prefill", "tokens": (2048,), "E": 32, "rule": _r("topk_softmax", 4)},
    ),
    "sigmoid_topk": (
        {"id": "glm47-flash-decode", "tokens": (1, 1), "E": 64, "bias": True,
         "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-20, scale=1.8, float32=True)},
        {"id": "lfm2-8b-decode", "tokens": (1, 1), "E": 32, "bias": True, "bias_dtype": mx.float32,
         "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-6, out_act=True)},
        {"id": "dsv3-decode", "tokens": (1, 1), "E": 256, "bias": True,
         "rule": _r("sigmoid_topk", 8, norm=True, scale=2.5, n_group=8, topk_group=4, float32=True)},
        {"id": "dsv3-prefill", "tokens": (2048,), "E": 256, "bias": True,
         "rule": _r("sigmoid_topk", 8, norm=True, scale=2.5, n_group=8, topk_group=4, float32=True)},
    ),
}  # fmt: skip

FUSED_BENCH = (
    {"id": "qwen3-30b-q8-decode", "tokens": (1, 1), "E": 128, "D": 2048, "bits": 8,
     "rule": _r("softmax_topk", 8, norm=True)},
    {"id": "qwen3-30b-q8-4tok", "tokens": (4,), "E": 128, "D": 2048, "bits": 8,
     "rule": _r("softmax_topk", 8, norm=True)},
    {"id": "gpt-oss-20b-q8-decode", "tokens": (1, 1), "E": 32, "D": 2880, "bits": 8,
     "lbias": True, "rule": _r("topk_softmax", 4)},
    {"id": "glm47-flash-decode", "tokens": (1, 1), "E": 64, "D": 2048, "bias": True,
     "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-20, scale=1.8, float32=True)},
    {"id": "lfm2-8b-q8-16tok", "tokens": (16,), "E": 32, "D": 2048, "bits": 8, "bias": True,
     "bias_dtype": mx.float32, "rule": _r("sigmoid_topk", 4, norm=True, norm_eps=1e-6, out_act=True)},
)  # fmt: skip

_DESCR = {
    "softmax_topk": "MoE router: softmax -> top-k (+renorm, group-limited, scale): Qwen3/OLMoE/DeepSeek-V2",
    "topk_softmax": "MoE router: top-k of logits -> softmax over k: Mixtral/GPT-OSS/Granite",
    "sigmoid_topk": "MoE router: sigmoid + selection bias, group top-k, renorm, scale: GLM/DeepSeek-V3/Kimi/MiniMax/LFM2",
}

for _kind, _cases in ROUTE_CASES.items():
    register(
        KernelSpec(
            name=f"router_{_kind}",
            family="routers",
            op=_route_op,
            ref=_route_ref,
            make_inputs=_make_route,
            cases=_cases,
            bench_cases=ROUTE_BENCH[_kind],
            stock=route_stock,
            grad_argnums=(0,),
            description=_DESCR[_kind],
        )
    )

register(
    KernelSpec(
        name="router_fused",
        family="routers",
        op=_fused_op,
        ref=_fused_ref,
        make_inputs=_make_fused,
        cases=FUSED_CASES,
        bench_cases=FUSED_BENCH,
        stock=_fused_ref,
        description="MoE router Linear (float or 4/8-bit affine) + routing in one launch (decode)",
    )
)
