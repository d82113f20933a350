"""zmlx.train: LoRA fine-tuning of a trained fixture with zmlx's kernels in the step.

The patched run (zmlx RMSNorm with its backward, fused cross-entropy, fused AdamW) must match
stock mlx-lm's run step for step: both are float32 and compute the same formulas, so the
per-step losses agree to LOSS_RTOL (measured: about 3e-6 after 6 steps on the CPU).
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

pytest.importorskip("mlx_lm")

from zmlx.core import emulate  # noqa: E402
from zmlx.models import fixtures  # noqa: E402
from zmlx.train import TrainConfig, train  # noqa: E402
from zmlx.train.__main__ import config_from_args, main, setup_arg_parser  # noqa: E402

LOSS_RTOL = 1e-4
MODEL = str(fixtures.path("qwen3_moe"))
NORMS = 9  # q_norm, k_norm, input and post-attention norms of 2 layers, and the final norm


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    base = dict(model=MODEL, iters=6, batch_size=4, lora_layers=2, lora_rank=4,
                learning_rate=5e-4, adapter_path=str(tmp_path / name), save_every=3)  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def stock_losses(tmp_path_factory):
    res = train(_cfg(tmp_path_factory.mktemp("stock"), "a", patch=False), progress=False)
    assert res.patched == [] and res.kernel_launches == 0
    return res.losses


def test_patched_run_learns_and_matches_stock(tmp_path, stock_losses):
    res = train(_cfg(tmp_path, "patched"), progress=False)
    assert len(res.patched) == NORMS and {p for _, p in res.patched} == {"rms_norm"}
    assert any(path.endswith("self_attn.q_norm") for path, _ in res.patched)
    assert res.losses[-1] < 0.7 * res.losses[0], res.losses
    np.testing.assert_allclose(res.losses, stock_losses, rtol=LOSS_RTOL)
    assert res.val_losses and res.val_losses[-1][0] == 6
    # Checkpoints every 3 steps (the last step writes only the final file), mlx-lm's layout.
    out = tmp_path / "patched"
    assert [p.split("/")[-1] for p in res.checkpoints] == ["0000003_adapters.safetensors"]
    saved = mx.load(str(out / "adapters.safetensors"))
    assert len(saved) > 0 and all("lora" in k for k in saved)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["rank"] == 4
    from mlx.utils import tree_flatten
    from mlx_lm import load

    model, _ = load(MODEL, adapter_path=str(out))  # mlx-lm reads the adapters back
    params = dict(tree_flatten(model.parameters()))
    for k, v in saved.items():
        assert mx.array_equal(params[k], v), k


@pytest.mark.no_emulate  # it enters the emulator itself
@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
def test_kernels_run_forward_and_backward_on_the_emulator(tmp_path, stock_losses):
    # The GPU kernels themselves (norm forward and backward, cross-entropy forward and
    # backward, the AdamW step) run on the CPU emulator inside mx.value_and_grad.
    res = train(_cfg(tmp_path, "emu", iters=2, emulate=True), progress=False)
    assert res.kernel_launches > 0
    np.testing.assert_allclose(res.losses, stock_losses[:2], rtol=LOSS_RTOL)


def test_chat_data_trains_without_a_chat_template(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"square of {i}?"},
                          {"role": "assistant", "content": f"{i * i}"}]} for i in range(4)]  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train(_cfg(tmp_path, "chat", iters=2, batch_size=2, data=str(data)), progress=False)
    assert len(res.losses) == 2 and res.val_losses == []


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: m\nnum_layers: 3\nlora_parameters: {rank: 2, scale: 4.0}\niters: 7\n"
        "learning-rate: 0.01\n"
    )
    args = setup_arg_parser().parse_args(["--config", str(path), "--iters", "9"])
    cfg = config_from_args(args)
    assert (cfg.model, cfg.lora_layers, cfg.lora_rank, cfg.lora_scale) == ("m", 3, 2, 4.0)
    assert cfg.iters == 9 and cfg.learning_rate == 0.01 and cfg.patch
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        TrainConfig.from_dict({"nope": 1})


def test_cli(tmp_path, capsys):
    argv = ["--model", MODEL, "--iters", "2", "--lora-layers", "1", "--adapter-path",
            str(tmp_path / "cli"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "patched modules" in text and "model.norm: rms_norm" in text
    assert main(argv + ["--json", "--no-patch"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["losses"]) == 2 and res["patched"] == []
    assert main(["--iters", "1"]) == 2  # no model
