"""zmlx.decode: static KV caches and compiled decode steps, against mlx-lm's own decoding."""

from __future__ import annotations

import sys
import warnings

import mlx.core as mx
import numpy as np
import pytest

pytest.importorskip("mlx_lm")

from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache  # noqa: E402

from zmlx import decode  # noqa: E402
from zmlx.models import build, fixtures  # noqa: E402

pytestmark = pytest.mark.no_emulate  # a traced step cannot run the CPU emulator's kernels


def stock_tokens(model, prompt, n):
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


def _prompt(family):
    return fixtures.record(family)["prompt_tokens"][:12]


@pytest.mark.parametrize("family", fixtures.available())
def test_compiled_decode_matches_stock_on_every_fixture(family):
    model, _ = fixtures.load(family)
    prompt = _prompt(family)
    ref = stock_tokens(model, prompt, 20)
    dec = decode.compile_decode(model)
    got = decode.generate(dec, prompt, 20)
    assert got == ref
    assert dec.steps >= 19 and dec.traces == 1  # one trace serves every token


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_zmlx_attention_route_matches_stock_and_is_restored(family):
    model, _ = fixtures.load(family)
    prompt = _prompt(family)
    mod = sys.modules[type(model).__module__]
    before = mod.scaled_dot_product_attention
    got = decode.generate(decode.compile_decode(model, attention="zmlx"), prompt, 16)
    assert got == stock_tokens(model, prompt, 16)
    assert mod.scaled_dot_product_attention is before


def test_patched_model_compiles_too():
    from zmlx.patch import patch, unpatch

    model, _ = fixtures.load_quantized("qwen3_moe")
    prompt = _prompt("qwen3_moe")
    ref = stock_tokens(model, prompt, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=["moe_block"])
    try:
        assert report.count > 0
        assert decode.generate(model, prompt, 16) == ref
    finally:
        unpatch(model)


def test_one_trace_serves_every_request():
    model, _ = fixtures.load("qwen3_moe")
    dec = decode.compile_decode(model)
    for prompt in ([5, 6, 7], [9, 10, 11, 12, 13]):
        assert decode.generate(dec, prompt, 8) == stock_tokens(model, prompt, 8)
    assert dec.traces == 1 and dec.steps >= 14


def test_cache_growth_retraces_and_stays_exact():
    model, _ = fixtures.load("mixtral")
    prompt = _prompt("mixtral")
    dec = decode.compile_decode(model)
    caches = dec.make_cache()
    for c in caches:
        c.step = 8  # force several growths within the run
    got = [int(t) for t, _ in generate_step(mx.array(prompt), dec, max_tokens=30,
                                            prompt_cache=caches)]  # fmt: skip
    assert got == stock_tokens(model, prompt, 30)
    assert dec.traces >= 3
    assert all(c.capacity % 8 == 0 and c.capacity >= c.size() for c in caches)
    assert caches[0].size() == len(prompt) + 30  # generate_step runs one step ahead


def test_other_caches_and_calls_run_eagerly():
    model, _ = fixtures.load("qwen3_moe")
    dec = decode.compile_decode(model)
    stock_cache = [KVCache() for _ in model.layers]
    a = dec(mx.array([[3, 4, 5]]), cache=stock_cache)
    b = dec(mx.array([[6]]), cache=stock_cache)
    assert dec.steps == 0 and a.shape[1] == 3 and b.shape[1] == 1
    assert dec.layers[0] is model.layers[0]  # attributes are the model's


def test_static_cache_eager_equals_kvcache():
    rng = np.random.default_rng(0)
    ours, theirs = decode.StaticKVCache(step=16), KVCache()
    for n in (5, 1, 1, 11, 1, 20):
        k = mx.array(rng.normal(size=(1, 2, n, 8)).astype(np.float32))
        v = mx.array(rng.normal(size=(1, 2, n, 4)).astype(np.float32))
        ka, va = ours.update_and_fetch(k, v)
        kb, vb = theirs.update_and_fetch(k, v)
        np.testing.assert_array_equal(np.array(ka), np.array(kb))
        np.testing.assert_array_equal(np.array(va), np.array(vb))
        assert ours.offset == theirs.offset == ours.size()
        for m in (1, 3):
            kw = dict(return_array=False, window_size=None)  # as mlx-lm's models call it
            ma, mb = ours.make_mask(m, **kw), theirs.make_mask(m, **kw)
            assert (ma is None and mb is None) or np.array_equal(np.array(ma), np.array(mb))
    assert ours.capacity % 16 == 0
    assert ours.trim(4) == 4 and ours.size() == theirs.offset - 4


def test_traced_mask_and_write_position():
    trace = decode._Trace()
    cache = decode.StaticKVCache(trace, window=3, step=8)
    cache.update_and_fetch(mx.zeros((1, 1, 5, 2)), mx.zeros((1, 1, 5, 2)))
    trace.set(mx.array(5))
    try:
        k, v = cache.update_and_fetch(mx.ones((1, 1, 1, 2)), 2 * mx.ones((1, 1, 1, 2)))
        mask = np.array(cache.make_mask(1))
        mask_full = np.array(cache.make_mask(2, window_size=100))
    finally:
        trace.set(None)
    assert k.shape[2] == 8 and float(k[0, 0, 5, 0]) == 1 and float(v[0, 0, 5, 0]) == 2
    assert float(k[0, 0, 4, 0]) == 0 and float(k[0, 0, 6, 0]) == 0
    pos = np.arange(8)
    np.testing.assert_array_equal(mask[0], (pos <= 5) & (pos > 2))  # window of 3
    np.testing.assert_array_equal(mask_full[1], pos <= 6)
    trace.set(mx.array(5))  # two tokens written in one traced step, then too many
    try:
        k, _ = cache.update_and_fetch(3 * mx.ones((1, 1, 2, 2)), mx.ones((1, 1, 2, 2)))
        assert [float(k[0, 0, i, 0]) for i in (4, 5, 6, 7)] == [0, 3, 3, 0]
        n = decode.MAX_STEP_TOKENS + 1
        with pytest.raises(ValueError, match="expected at most 16 tokens"):
            cache.update_and_fetch(mx.ones((1, 1, n, 2)), mx.ones((1, 1, n, 2)))
    finally:
        trace.set(None)


def test_unsupported_caches_are_refused_with_the_reason():
    model = build("qwen3_moe", "tiny", quant="4bit", num_layers=1)
    model.make_cache = lambda: [QuantizedKVCache()]
    ok, why = decode.supported(model)
    assert not ok and "QuantizedKVCache" in why
    with pytest.raises(ValueError, match=r"\[compile_decode\].*QuantizedKVCache"):
        decode.compile_decode(model)
    model.make_cache = lambda: [RotatingKVCache(max_size=8, keep=4)]
    assert not decode.supported(model)[0]
    model.make_cache = lambda: [RotatingKVCache(max_size=8)]
    caches = decode.compile_decode(model).make_cache()
    assert isinstance(caches[0], decode.StaticKVCache) and caches[0].window == 8


def test_bad_attention_choice():
    model = build("qwen3_moe", "tiny", quant="4bit", num_layers=1)
    with pytest.raises(ValueError, match=r"\[compile_decode\] expected attention"):
        decode.compile_decode(model, attention="flash")


def test_compiling_a_model_sharded_over_cuda_ranks_warns(monkeypatch):
    import zmlx.decode as D
    from zmlx.core.backend import force_backend

    model, _ = fixtures.load_quantized("qwen3_moe")

    ranks = [2]

    class Group:
        def size(self):
            return ranks[0]

    monkeypatch.setattr(mx.distributed, "init", lambda *a, **k: Group())
    monkeypatch.setattr(mx.distributed, "is_available", lambda: True)
    with force_backend("cuda"), pytest.warns(UserWarning, match="slower than eager"):
        D.compile_decode(model)
    with warnings.catch_warnings():  # two ranks on the CPU: no warning
        warnings.simplefilter("error")
        with force_backend("cpu"):
            D.compile_decode(model)
    ranks[0] = 1
    with warnings.catch_warnings():  # one CUDA rank: no warning
        warnings.simplefilter("error")
        with force_backend("cuda"):
            D.compile_decode(model)
