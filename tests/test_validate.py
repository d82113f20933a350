"""python -m zmlx.validate: model resolution, fidelity and throughput pieces, the CLI end to end."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

import zmlx
from zmlx import validate as V
from zmlx.bench import capsule
from zmlx.bench.lm import Toggle, _first_difference, fidelity, greedy, throughput
from zmlx.models import build, save

pytest.importorskip("mlx_lm")

FAST = ["--max-tokens", "4", "--runs", "1", "--prefill-tokens", "8"]


@pytest.fixture(scope="module")
def tiny():
    return build("qwen3", "tiny", seed=3)


def _flip_norm(model):
    """A 'patch' that breaks the model: the final norm's weight negated (argmax changes)."""
    model.model.norm.weight = -model.model.norm.weight
    return None


def test_toggle_calls_patch_once_then_repeats_quietly(tiny):
    calls = []

    def patch(m):
        calls.append("on")
        return "report"

    t = Toggle(tiny, patch=patch, unpatch=lambda m: calls.append("off"))
    t.on(), t.on(), t.off(), t.off(), t.set(True), t.set(False)
    assert calls == ["on", "off", "on", "off"] and t.report == "report"


def test_fidelity_identical_and_broken(tiny):
    prompts = [[1, 2, 3, 4], [50, 60]]
    same = fidelity(Toggle(tiny, lambda m: None, lambda m: None), prompts, 6, progress=False)
    assert same["passed"] and same["greedy_identical"] == 2 and same["top1_agreement"] == 1.0
    assert same["max_logit_diff"] == 0.0 and same["positions"] == 4 + 6 + 2 + 6
    broken = fidelity(Toggle(tiny, _flip_norm, _flip_norm), prompts, 6, progress=False)
    assert not broken["passed"] and broken["top1_agreement"] < 0.99
    assert broken["max_logit_diff"] > 0 and "top-1 agreement" in broken["reason"]
    assert greedy(tiny, [1, 2, 3, 4], 6) == greedy(tiny, [1, 2, 3, 4], 6)  # state restored


def test_fidelity_without_identity_requirement(tiny):
    res = fidelity(Toggle(tiny, _flip_norm, _flip_norm), [[1, 2]], 3, min_top1=0.0,
                   require_identical=False, progress=False)  # fmt: skip
    assert res["passed"] and res["require_identical"] is False


def test_first_difference():
    assert _first_difference([1, 2, 3], [1, 2, 3]) is None
    assert _first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert _first_difference([1, 2], [1, 2, 3]) == 2


def test_throughput_interleaves_stock_and_patched(tiny):
    order = []
    t = Toggle(tiny, lambda m: None, lambda m: None)
    speed, mem = throughput(t, [1, 2, 3, 4, 5, 6, 7, 8], 3, runs=2, progress=False,
                            on_run=lambda v, pre, dec: order.append(v))  # fmt: skip
    assert order == ["stock", "patched", "stock", "patched"]
    for phase in ("prefill", "decode"):
        p = speed[phase]
        assert len(p["stock"]["runs"]) == 2 and p["stock"]["min"] <= p["stock"]["median"] > 0
        assert p["speedup"] == pytest.approx(p["patched"]["median"] / p["stock"]["median"])
    assert mem["stock_peak_bytes"] > 0 and not t.patched


def test_prompts_file_and_prefill_prompt(tiny, tmp_path):
    loaded = V.Loaded(tiny, lambda s: [ord(c) for c in s], "m", "m", True, prompts=[[7, 8]])
    f = tmp_path / "p.txt"
    f.write_text("ab\n\n c\\nd\n")
    assert V.prompts_for(loaded, str(f)) == [[7, 8], [97, 98], [32, 99, 10, 100]]
    assert len(V.prompts_for(loaded, None)) == 1 + len(V.DEFAULT_PROMPTS)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(V.ValidateError, match="no prompts"):
        V.prompts_for(loaded, str(tmp_path / "empty.txt"))
    assert V.prefill_prompt([[1, 2], [3]], 7) == [1, 2, 3, 1, 2, 3, 1]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["nonexistent-org/nonexistent-model"], "not in the local Hugging Face cache"),
        (["zoo:nope"], "no zoo model 'nope'"),
        (["justaword"], "is not a model directory"),
        (["org/name", "--quant", "4bit"], "--quant applies to zoo models only"),
        (["zoo:qwen3", "--runs", "0"], "must be >= 1"),
        (["zoo:qwen3", "--patterns", "nope", *FAST], "unknown pattern"),
    ],
)
def test_errors_are_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert V.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_local_directory(tmp_path, capsys):
    model = build("qwen3", "tiny", "4bit", seed=1)
    path = save(model, tmp_path / "qwen3-tiny")
    out = tmp_path / "cap.json"
    assert V.main([str(path), *FAST, "--json", str(out)]) == 0
    res = capsule.load(out)["results"]
    assert res["model"] == "qwen3-tiny" and res["source"] == str(path)
    assert res["fidelity"]["passed"] and res["passed"]
    assert "fidelity: qwen3-tiny" in capsys.readouterr().out


def test_zoo_random_model_and_exit_code_on_failure(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cap.json"
    assert V.main(["zoo:qwen3", *FAST, "--json", str(out)]) == 0
    res = capsule.load(out)["results"]
    assert res["random_weights"] and res["source"].startswith("zoo:qwen3 (tiny")
    assert res["patch"]["family"] == "qwen3"
    zpatch = importlib.import_module("zmlx.patch")  # the module (zmlx.patch may be the function)
    monkeypatch.setattr(zpatch, "patch", lambda m, patterns=None: _flip_norm(m))
    monkeypatch.setattr(zpatch, "unpatch", _flip_norm)
    assert V.main(["zoo:qwen3", *FAST, "--json", str(out)]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert not capsule.load(out)["results"]["passed"]


def test_no_argument_run_under_a_minute(tmp_path):
    """The acceptance run: no MODEL, defaults, a fresh process; table, capsule, schema."""
    src = str(Path(zmlx.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zmlx.validate"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher-forced top-1 agreement" in proc.stdout and "decode" in proc.stdout
    caps = list((tmp_path / "benchmarks" / "capsules").glob("validate-*.json"))
    assert len(caps) == 1
    cap = capsule.load(caps[0])
    assert cap["command"] == "python -m zmlx.validate" and cap["results"]["passed"]
    assert mx.array(cap["results"]["throughput"]["decode"]["stock"]["runs"]).size == 3
    assert seconds < 60, f"took {seconds:.0f} s"


def test_hugging_face_id_from_the_local_cache(tmp_path):
    """An org/name id resolves offline through the Hugging Face cache layout (fresh process)."""
    cache = tmp_path / "hub"
    repo = cache / "models--zmlx-test--tiny-qwen3"
    snap = repo / "snapshots" / "0123456789abcdef"
    save(build("qwen3", "tiny", "4bit", seed=2), snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef")
    src = str(Path(zmlx.__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    out = tmp_path / "cap.json"
    cmd = [sys.executable, "-m", "zmlx.validate", "zmlx-test/tiny-qwen3", *FAST, "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = capsule.load(out)["results"]
    assert res["source"] == "zmlx-test/tiny-qwen3" and res["model"] == "tiny-qwen3"


def test_zoo_names_and_aliases():
    assert V.zoo_family("qwen3_moe") == V.zoo_family("qwen3-moe") == "qwen3_moe"
    assert V.zoo_family("qwen3-30b-a3b") == "qwen3_moe"  # the real model the zoo reproduces
    assert V.zoo_family("GLM-4.7-Flash") == "glm4_moe_lite"
    with pytest.raises(V.ValidateError, match="no zoo model 'qwen3-235b-a22b'"):
        V.zoo_family("qwen3-235b-a22b")  # same family, but no zoo config of that size
