"""zmlx.matrix: the model catalog, the ledger, run planning, a tiny-zoo run and the report."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import zmlx
from capsule_samples import validate_results
from zmlx.bench import capsule
from zmlx.matrix import CATALOG, PATTERNS, by_name, entries, ledger
from zmlx.matrix.__main__ import main
from zmlx.matrix.models import QUANTS
from zmlx.matrix.report import grid, markdown
from zmlx.matrix.run import plan

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def test_catalog_has_enough_valid_entries():
    assert len(CATALOG) >= 58
    assert len({e.name for e in CATALOG}) == len(CATALOG)
    assert len({e.hf_id for e in CATALOG}) == len(CATALOG)
    for e in CATALOG:
        assert HF_ID.match(e.hf_id), e
        assert e.family and e.model_type and e.quant in QUANTS, e
        assert 0 < e.active_params_b <= e.total_params_b, e
        assert e.moe == (e.active_params_b < e.total_params_b), e
        assert e.patterns and len(set(e.patterns)) == len(e.patterns), e
        assert set(e.patterns) <= set(PATTERNS), e
        assert e.moe == ("moe_block" in e.patterns) == ("switch_glu" in e.patterns), e
        assert ("rms_norm" in e.patterns) != ("layer_norm" in e.patterns), e
        assert json.loads(json.dumps(e.to_dict()))["patterns"] == list(e.patterns)


def test_catalog_covers_the_families_people_run():
    types = {e.model_type for e in CATALOG}
    for t in ("qwen3_moe", "qwen3_5_moe", "qwen3", "lfm2_moe", "glm4_moe", "glm4_moe_lite",
              "gpt_oss", "mixtral", "deepseek_v2", "deepseek_v3", "kimi_k2", "olmoe",
              "granitemoe", "minimax_m2", "llama", "gemma2", "gemma3", "phi3", "phimoe",
              "mistral"):  # fmt: skip
        assert t in types, t
    names = " ".join(e.name for e in CATALOG)
    for n in ("GLM-4.7-Flash", "gpt-oss-20b", "gpt-oss-120b", "Mixtral-8x7B", "Mixtral-8x22B",
              "DeepSeek-V2-Lite", "Kimi-K2", "Phi-3.5-MoE"):  # fmt: skip
        assert n in names, n
    assert sum(e.moe for e in CATALOG) >= 30


def test_model_types_are_known_to_mlx_lm():
    pytest.importorskip("mlx_lm")
    from mlx_lm.utils import MODEL_REMAPPING

    for e in CATALOG:
        mt = MODEL_REMAPPING.get(e.model_type, e.model_type)
        assert importlib.util.find_spec(f"mlx_lm.models.{mt}") is not None, e


def test_zoo_names_exist_and_match_the_architecture():
    from zmlx.models import FAMILIES, get_config

    zoo = [e for e in CATALOG if e.zoo is not None]
    assert zoo, "no catalog entry names a zoo config"
    assert len({e.zoo for e in zoo}) == len(zoo)  # one catalog twin per zoo config
    for e in zoo:
        assert e.zoo in FAMILIES, e
        assert get_config(e.zoo, "full")["model_type"] == e.model_type, e
    missing = set(FAMILIES) - {e.zoo for e in zoo}
    assert not missing, f"zoo families without a catalog twin (set ModelEntry.zoo): {missing}"


def test_entries_filter_and_by_name():
    assert entries() == list(CATALOG)
    glm = entries(["glm4_moe_lite"])
    assert [e.name for e in glm] == ["GLM-4.7-Flash"]
    assert {e.name for e in entries(["GPT-OSS", "olmoe"])} >= {"gpt-oss-20b", "OLMoE-1B-7B-0924"}
    assert by_name("Qwen3-30B-A3B").zoo == "qwen3_moe"
    with pytest.raises(KeyError):
        by_name("nope")


def test_cli_catalog(capsys):
    assert main(["catalog", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(CATALOG)
    assert main(["catalog", "--filter", "mixtral"]) == 0
    out = capsys.readouterr().out
    assert "2 models" in out and "Mixtral-8x22B-Instruct-v0.1" in out


def test_plan_local_then_zoo(tmp_path):
    e = by_name("Qwen3-30B-A3B")
    (tmp_path / "Qwen3-30B-A3B-4bit").mkdir()
    (tmp_path / "Qwen3-30B-A3B-4bit" / "config.json").write_text("{}")
    other = by_name("GLM-4.5")
    p_local, p_none = plan([e, other], "auto", str(tmp_path))
    assert p_local.source == str(tmp_path / "Qwen3-30B-A3B-4bit")
    assert p_none.source is None and "no zoo config" in p_none.why
    assert plan([e], "zoo", str(tmp_path))[0].source == "zoo:qwen3_moe"
    with pytest.raises(ValueError):
        plan([e], "cloud")


def _rows():
    e1, e2 = by_name("Qwen3-30B-A3B"), by_name("Llama-3.1-8B-Instruct")
    rows = []
    for i, (e, pats, res) in enumerate([
        (e1, None, validate_results(decode=(100.0, 180.0))),
        (e1, ["rms_norm"], validate_results(passed=False, top1=0.93, decode=(100.0, 90.0))),
        (e2, None, validate_results(decode=(50.0, 52.0))),
    ]):  # fmt: skip
        cap = capsule.make("validate", res)
        cap["created"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        rows.append(ledger.row_from_capsule(e, f"zoo:{e.zoo}", pats, cap, f"c{i}.json"))
    rows.append(ledger.error_row(by_name("gpt-oss-20b"), "zoo:gpt_oss", None, "cpu", "cpu",
                                 "RuntimeError: out of memory"))  # fmt: skip
    return rows


def test_ledger_append_read_latest(tmp_path):
    path = tmp_path / "m.jsonl"
    for r in _rows():
        ledger.append(path, r)
    with path.open("a") as f:
        f.write("not json\n[1, 2]\n\n")
    with pytest.warns(UserWarning, match="not a ledger row"):
        rows = ledger.read(path)
    assert len(rows) == 4 and rows[0]["fidelity"] == "PASS" and rows[1]["fidelity"] == "FAIL"
    assert rows[0]["patterns_applied"] == ["moe_block"] and rows[0]["modules_patched"] == 2
    newer = dict(rows[0], time="2027-01-01T00:00:00+00:00", decode_speedup=2.5)
    latest = ledger.latest(rows + [newer])
    assert len(latest) == 4 and latest[0]["decode_speedup"] == 2.5
    assert ledger.pattern_set(None) == "default" and ledger.pattern_set(["b", "a"]) == "a+b"
    with pytest.raises(ValueError, match="no ledger"):
        ledger.read(tmp_path / "absent.jsonl")


def test_report_heatmap_png_and_markdown(tmp_path, capsys):
    led = tmp_path / "m.jsonl"
    for r in _rows():
        ledger.append(led, r)
    models, cols, speed = grid(_rows(), "decode_speedup")
    assert models == ["Qwen3-30B-A3B", "Llama-3.1-8B-Instruct"]
    b = _rows()[0]["backend"]  # the backend these rows were made on
    assert cols == [f"{b} / default", f"{b} / rms_norm"]
    assert speed[0] == [pytest.approx(1.8), pytest.approx(0.9)] and np.isnan(speed[1][1])
    out = tmp_path / "report"
    assert main(["report", "--ledger", str(led), "--out", str(out)]) == 0
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "matrix_heatmap.png")
    h, w = img.shape[:2]
    assert h >= 200 and w >= 600, img.shape
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05  # not blank
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 50  # colours, text, panels
    md = (out / "matrix.md").read_text()
    b = _rows()[0]["backend"]
    assert "| model | backend |" in md and f"| Qwen3-30B-A3B | {b} |" in md
    assert "1.800x" in md and "FAIL" in md and "ERROR" in md and "out of memory" in md
    assert md == markdown(_rows()) + "\n\n![heatmap](matrix_heatmap.png)\n"
    assert "heatmap:" in capsys.readouterr().out


def test_report_without_successful_runs_is_an_error(tmp_path, capsys):
    led = tmp_path / "m.jsonl"
    ledger.append(led, _rows()[-1])
    assert main(["report", "--ledger", str(led), "--out", str(tmp_path)]) == 2
    assert "no successful runs" in capsys.readouterr().err


def test_run_dry_run_plans_every_zoo_family(capsys):
    assert main(["run", "--source", "zoo", "--dry-run"]) == 0
    plans = json.loads(capsys.readouterr().out)
    zoo = [p for p in plans if p["source"]]
    assert len(zoo) == 12 and all(p["source"].startswith("zoo:") for p in zoo)


def test_run_tiny_zoo_fills_the_ledger(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlx_lm")
    src = str(Path(zmlx.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    led = tmp_path / "m.jsonl"
    argv = ["run", "--source", "zoo", "--filter", "Qwen3-4B", "gpt-oss-20b", "--ledger",
            str(led), "--capsule-dir", str(tmp_path / "caps"), "--max-tokens", "4", "--runs",
            "1", "--prefill-tokens", "8"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr()
    rows = ledger.read(led)
    assert [r["model"] for r in rows] == ["Qwen3-4B", "gpt-oss-20b"]
    for r in rows:
        assert r["status"] == "ok" and r["fidelity"] == "PASS" and r["backend"]
        capsule.load(r["capsule"])
