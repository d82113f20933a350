"""Fused AdamW / Lion: the subclasses match mlx.optimizers over 100 steps, the fused step runs,
hyper-parameters are runtime values."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from kernel_checks import launches
from zmlx.core.backend import backend
from zmlx.core.kernel import capture, launch_count
from zmlx.kernels.optimizers import (
    FusedAdamW,
    FusedLion,
    adamw_hyper,
    adamw_step,
    adamw_step_ref,
)
from zmlx.testing import assert_close


def _model(seed=0):
    mx.random.seed(seed)
    m = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 3))
    mx.eval(m.parameters())
    return m


def _data(rng):
    x = mx.array(rng.normal(size=(64, 12)).astype(np.float32))
    y = mx.array(rng.normal(size=(64, 3)).astype(np.float32))
    return x, y


def _loss(model, x, y):
    return nn.losses.mse_loss(model(x), y)


def _train(opt, rng, steps=100, compiled=False):
    model, (x, y) = _model(), _data(rng)
    grad_fn = nn.value_and_grad(model, _loss)

    def step(x, y):
        loss, grads = grad_fn(model, x, y)
        opt.update(model, grads)
        return loss

    if compiled:
        state = [model.state, opt.state]
        step = partial(mx.compile, inputs=state, outputs=state)(step)
    for _ in range(steps):
        mx.eval(step(x, y), model.parameters(), opt.state)
    return model


def _assert_same_params(a, b, atol, rtol):
    pa, pb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    assert pa.keys() == pb.keys()
    for k in pa:
        assert_close(pa[k], pb[k], atol=atol, rtol=rtol, name=k)


SCHEDULE = optim.cosine_decay(3e-3, 100)


@pytest.mark.parametrize(
    "fused,stock,kwargs",
    [
        (FusedAdamW, optim.AdamW, dict(learning_rate=3e-3, weight_decay=0.05)),
        (FusedAdamW, optim.AdamW, dict(learning_rate=SCHEDULE, bias_correction=True)),
        (FusedLion, optim.Lion, dict(learning_rate=3e-4, weight_decay=0.1)),
        (FusedLion, optim.Lion, dict(learning_rate=SCHEDULE)),
    ],
    ids=["adamw", "adamw-schedule-bias-correction", "lion", "lion-schedule"],
)
def test_fused_matches_mlx_over_100_steps(fused, stock, kwargs, rng):
    rng_state = rng.bit_generator.state
    got = _train(fused(**kwargs), rng)
    rng.bit_generator.state = rng_state
    want = _train(stock(**kwargs), rng)
    # Lion's sign() turns rounding differences at c ~ 0 into whole lr steps.
    atol = 1e-4 if fused is FusedAdamW else 3e-4 * 4
    _assert_same_params(got, want, atol=atol, rtol=1e-3)


@pytest.mark.no_emulate  # the emulator evaluates inputs, which compile tracing forbids
def test_fused_adamw_under_mx_compile(rng):
    rng_state = rng.bit_generator.state
    got = _train(FusedAdamW(learning_rate=SCHEDULE), rng, steps=20, compiled=True)
    rng.bit_generator.state = rng_state
    want = _train(FusedAdamW(learning_rate=SCHEDULE), rng, steps=20)
    _assert_same_params(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.no_emulate  # counts captured launches
def test_the_fused_step_runs_once_per_parameter(rng):
    model, (x, y) = _model(), _data(rng)
    opt = FusedAdamW(learning_rate=SCHEDULE)
    _, grads = nn.value_and_grad(model, _loss)(model, x, y)
    n_params = len(tree_flatten(grads))
    before = launch_count()
    opt.update(model, grads)
    mx.eval(model.parameters())
    # On the CPU the update takes the reference path; on a GPU it is one kernel per parameter.
    assert launch_count() - before == (0 if backend() == "cpu" else n_params)
    with capture("cuda") as got:  # the GPU path, recorded instead of run
        opt.update(model, grads)
    assert len(got) == n_params and {g.kernel.name for g in got} == {"adamw_step"}
    with capture("cuda") as again:  # a later step with a new learning rate: same builds
        opt.update(model, grads)
    assert [(a.kernel, a.template) for a in again] == [(g.kernel, g.template) for g in got]


@pytest.mark.no_emulate
def test_hyper_parameters_are_runtime_values(rng):
    p = mx.array(rng.normal(size=(100,)).astype(np.float32))
    a = launches(
        "cuda",
        adamw_step,
        p,
        p,
        p,
        p * p,
        adamw_hyper(1e-3, (0.9, 0.99), 1e-8, 0.0, None, mx.float32),
    )
    b = launches(
        "cuda", adamw_step, p, p, p, p * p, adamw_hyper(5e-2, (0.8, 0.9), 1e-6, 0.1, 3, mx.float32)
    )
    assert a[0].kernel is b[0].kernel and a[0].template == b[0].template


def test_bf16_rounding_of_hyper_parameters_follows_mlx():
    # MLX casts lr to the gradient dtype first: 1 - 1e-3 * 0.01 is 1.0 in bfloat16.
    h = adamw_hyper(1e-3, (0.9, 0.999), 1e-8, 0.01, None, mx.bfloat16)
    assert h[1].item() == 1.0
    assert h[0].item() == mx.array(1e-3).astype(mx.bfloat16).astype(mx.float32).item()


def test_step_errors():
    p, h = mx.zeros((4,)), adamw_hyper(1e-3, (0.9, 0.999), 1e-8, 0.0, None, mx.float32)
    with pytest.raises(ValueError, match=r"\[adamw_step\] expected 'grad' of shape \(4,\)"):
        adamw_step(p, mx.zeros((5,)), p, p, h)
    with pytest.raises(ValueError, match=r"\[adamw_step\] expected a float32 hyper array"):
        adamw_step(p, p, p, p, h[:3])
    with pytest.raises(TypeError, match=r"\[adamw_step\] expected 'm' to be a float mlx array"):
        adamw_step(p, p, mx.zeros((4,), dtype=mx.int32), p, h)


def test_reference_is_mlx_adamw_for_one_step(rng):
    p, g = (mx.array(rng.normal(size=(50,)).astype(np.float32)) for _ in range(2))
    opt = optim.AdamW(learning_rate=1e-2, bias_correction=True)
    opt.init({"w": p})
    new = opt.apply_gradients({"w": g}, {"w": p})["w"]
    h = adamw_hyper(1e-2, (0.9, 0.999), 1e-8, 0.01, opt.step, mx.float32)
    got, m, v = adamw_step_ref(p, g, mx.zeros_like(p), mx.zeros_like(p), h)
    assert_close(got, new, atol=1e-6, rtol=1e-5)
    assert_close(m, opt.state["w"]["m"], atol=1e-7, rtol=1e-6)
