"""benchmarks/ncu_sweep.py: Nsight Compute's CSV read into one record per profiled launch,
and the capsule it writes (no GPU needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import ncu_sweep  # noqa: E402

from zmlx.bench import capsule  # noqa: E402

HEAD = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
        '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
        '"Metric Value"')  # fmt: skip


def _row(i, kernel, metric, unit, value):
    return (f'"{i}","1","python3","127.0.0.1","{kernel}","1","14","(256, 1, 1)","(1024, 1, 1)",'
            f'"0","9.0","Command line profiler metrics","{metric}","{unit}","{value}"')  # fmt: skip


def test_parse_csv_groups_metrics_by_launch():
    text = "\n".join([
        "==PROF== Connected to process 1",
        "combine: 5 runs done",
        HEAD,
        _row(0, "zx_combine", "gpu__time_duration.sum", "ns", "22,240"),
        _row(0, "zx_combine", "launch__grid_size", "", "1,024"),
        _row(1, "zx_swiglu", "gpu__time_duration.sum", "us", "14.1"),
        _row(1, "zx_swiglu", "launch__func_cache_config", "", "CachePreferNone"),
    ])  # fmt: skip
    got = ncu_sweep.parse_csv(text)
    assert [g["kernel"] for g in got] == ["zx_combine", "zx_swiglu"]
    assert got[0]["metrics"]["gpu__time_duration.sum"] == 22240.0
    assert got[0]["metrics"]["gpu__time_duration.sum.unit"] == "ns"
    assert got[0]["metrics"]["launch__grid_size"] == 1024.0
    assert "launch__grid_size.unit" not in got[0]["metrics"]
    assert got[1]["metrics"]["launch__func_cache_config"] == "CachePreferNone"
    assert ncu_sweep.parse_csv("==PROF== no kernels profiled\n") == []


def test_capsule_and_bad_case(tmp_path, monkeypatch, capsys):
    def fake(label, args, ncu_args, skip):
        return {"label": label, "args": args, "rc": 0, "kernel": "zx_k",
                "metrics": {"gpu__time_duration.sum": 1000.0}}  # fmt: skip

    monkeypatch.setattr(ncu_sweep, "run_case", fake)
    out = tmp_path / "c.json"
    assert ncu_sweep.main(["--case", "a=--op combine", "--json", str(out)]) == 0
    rows = capsule.load(out)["results"]["rows"]
    assert rows[0]["label"] == "a" and rows[0]["args"] == "--op combine"
    with pytest.raises(SystemExit):
        ncu_sweep.main(["--case", "no-label"])
    assert "expected LABEL=ARGS" in capsys.readouterr().err
