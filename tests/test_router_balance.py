"""Router load statistics: expert_counts and router_aux_loss against numpy oracles (including a
transcription of Hugging Face's ``load_balancing_loss_func``), the balanced value ``k``, the
analytic gradient, ids out of range, errors, and compile checks at real shapes.

Kernels run on the CPU SIMT emulator (skipped without a C++ compiler); on a GPU the same ops
run their CUDA/Metal kernels.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.core.kernel import launch_count
from zmlx.kernels.router_balance import (
    expert_counts,
    expert_counts_ref,
    router_aux_loss,
    router_aux_loss_ref,
)
from zmlx.testing import assert_close

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
IDS = ["f32", "f16", "bf16"]


def routing(rng, t, e, k):
    logits = rng.normal(size=(t, e))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs, np.argsort(-probs, axis=-1, kind="stable")[:, :k]


def hf_load_balancing_loss(probs, ids, e):
    """Hugging Face transformers' load_balancing_loss_func (no attention mask), in float64:
    one-hot (T, k, E) mask averaged over tokens, times the mean router probability."""
    mask = np.eye(e)[ids]  # (T, k, E)
    tokens_per_expert = mask.mean(axis=0)  # (k, E)
    router_prob_per_expert = probs.mean(axis=0)  # (E,)
    return (tokens_per_expert * router_prob_per_expert[None]).sum() * e


def on_emulator(fn, *args):
    with emulator():
        before = launch_count()
        out = fn(*args)
        mx.eval(out)
        assert launch_count() > before, "the kernel path did not run"
    return out


@pytest.mark.parametrize("idt", [mx.uint32, mx.int32, mx.int64], ids=["u32", "i32", "i64"])
@pytest.mark.parametrize("t,e,k", [(1, 128, 8), (512, 128, 8), (33, 32, 4), (5, 3, 3)])
def test_expert_counts_match_bincount(t, e, k, idt, rng):
    """Decode (one token) to a prefill-like 4096 ids on 128 experts (many atomics per expert)."""
    _, ids = routing(rng, t, e, k)
    idx = mx.array(ids.astype(np.int64)).astype(idt)
    got = on_emulator(expert_counts, idx, e)
    want = np.bincount(ids.reshape(-1), minlength=e)
    assert got.dtype == mx.int32 and np.array_equal(np.array(got), want)
    assert mx.array_equal(expert_counts_ref(idx, e), got).item()


@pytest.mark.parametrize("idt", [mx.uint32, mx.int32, mx.int64], ids=["u32", "i32", "i64"])
def test_expert_counts_ignore_ids_out_of_range(idt):
    ids = np.array([[0, 7], [8, 3], [-1, 3], [2**31 - 1, 7]], dtype=np.int64)
    if idt == mx.uint32:
        ids[2, 0] = 2**32 - 1  # what -1 becomes in uint32
    if idt == mx.int64:
        ids[3, 0] = 2**32 + 3  # must not wrap into range
    idx = mx.array(ids).astype(idt)
    want = [1, 0, 0, 2, 0, 0, 0, 2]
    assert np.array(on_emulator(expert_counts, idx, 8)).tolist() == want
    assert np.array(expert_counts_ref(idx, 8)).tolist() == want


def test_expert_counts_empty_and_cpu_path():
    assert np.array(expert_counts(mx.zeros((0, 2), mx.uint32), 4)).tolist() == [0, 0, 0, 0]
    with mx.stream(mx.cpu):
        got = expert_counts(mx.array([[1, 1], [2, 3]], mx.uint32), 4)
    assert np.array(got).tolist() == [0, 2, 1, 1]


@pytest.mark.parametrize("t,e,k", [(1, 8, 2), (64, 128, 8), (300, 32, 4), (7, 16, 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_aux_loss_matches_hugging_face(dtype, t, e, k, rng):
    probs, ids = routing(rng, t, e, k)
    p = mx.array(probs.astype(np.float32)).astype(dtype)
    idx = mx.array(ids.astype(np.uint32))
    want = hf_load_balancing_loss(np.array(p.astype(mx.float32)).astype(np.float64), ids, e)
    got = on_emulator(router_aux_loss, p, idx, e)
    assert got.dtype == mx.float32 and got.shape == ()
    assert_close(got, mx.array(np.float32(want)), atol=1e-5, rtol=1e-5)
    assert_close(router_aux_loss_ref(p, idx, e), mx.array(np.float32(want)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("e,k", [(8, 1), (128, 8), (32, 4)])
def test_aux_loss_is_k_when_balanced(e, k):
    """Uniform probabilities and every expert chosen equally often: f_e = k / E, P_e = 1 / E."""
    ids = (np.arange(e)[:, None] + np.arange(k)[None]) % e
    p = mx.full((e, e), 1.0 / e)
    got = on_emulator(router_aux_loss, p, mx.array(ids.astype(np.int32)), e)
    assert abs(got.item() - k) < 1e-5 * k


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_aux_loss_gradient(dtype, rng):
    """d loss / d p[t, e] = E * count_e / T^2 (the op's analytic VJP on the kernel path)."""
    t, e, k = 24, 16, 2
    probs, ids = routing(rng, t, e, k)
    p = mx.array(probs.astype(np.float32)).astype(dtype).reshape(4, 6, e)
    idx = mx.array(ids.astype(np.int32)).reshape(4, 6, k)
    want = e * np.bincount(ids.reshape(-1), minlength=e) / t**2
    with emulator():
        g = mx.grad(lambda a: router_aux_loss(a, idx, e) * 3.0)(p)
        mx.eval(g)
    assert g.shape == p.shape and g.dtype == dtype
    expect = mx.array(np.broadcast_to(3.0 * want, (4, 6, e)).astype(np.float32)).astype(dtype)
    assert_close(g, expect, atol=1e-6, rtol=1e-3)
    g_ref = mx.grad(lambda a: router_aux_loss_ref(a, idx, e) * 3.0)(p)
    assert_close(g, g_ref, atol=1e-6, rtol=1e-2)


def test_errors():
    p, idx = mx.full((3, 8), 0.125), mx.zeros((3, 2), mx.uint32)
    with pytest.raises(TypeError, match=r"\[expert_counts\] expected integer expert 'indices'"):
        expert_counts(idx.astype(mx.float32), 8)
    with pytest.raises(ValueError, match=r"\[expert_counts\] expected num_experts to be an int"):
        expert_counts(idx, 0)
    with pytest.raises(
        ValueError, match=r"\[router_aux_loss\] expected router_probs \(\.\.\., 4\)"
    ):
        router_aux_loss(p, idx, 4)
    with pytest.raises(ValueError, match=r"over the same tokens"):
        router_aux_loss(p, idx[:2], 8)
    with pytest.raises(TypeError, match=r"\[router_aux_loss\] expected 'router_probs' to be"):
        router_aux_loss(p.astype(mx.int32), idx, 8)


@pytest.mark.no_emulate  # compile checks capture launches; the emulator would run them
@pytest.mark.parametrize("model,e,k", [("qwen3-30b-a3b", 128, 8), ("gpt-oss-20b", 32, 4)])
def test_real_prefill_shapes_compile(model, e, k):
    """Both kernels at 2048 prefill tokens: NVRTC when available, and the Metal shim."""
    p = mx.zeros((2048, e), dtype=mx.bfloat16)
    idx = mx.zeros((2048, k), dtype=mx.uint32)
    assert assert_compiles(router_aux_loss, p, idx, e) > 0
    assert assert_compiles(expert_counts, idx.astype(mx.int64), e) > 0
