"""benchmarks/gpu_tests.py: a pytest run becomes a capsule; spoiled CUDA contexts are traced."""

from __future__ import annotations

import textwrap

from scripts import ROOT, load_benchmark
from zmlx.bench import capsule

gpu_tests = load_benchmark("gpu_tests")


def test_poisoned_workers_name_the_tests_before_the_first_failure(tmp_path):
    bad = "an illegal memory access was encountered"
    (tmp_path / "gw0").write_text("call:passed a\ncall:failed b | AssertionError\ncall:passed c\n"
                                  f"call:failed d | RuntimeError: {bad}\n"
                                  f"call:failed e | {bad}\ncall:passed f\n")  # fmt: skip
    (tmp_path / "gw1").write_text("call:passed x\ncall:failed y | AssertionError: 1 != 2\n")
    (tmp_path / "gw2").write_text(f"setup:failed z | {bad}\n")
    got = gpu_tests.poisoned_workers(str(tmp_path), before=2)
    assert got == [
        {"worker": "gw0", "first_failure": f"call:failed d | RuntimeError: {bad}",
         "ran_before": ["call:failed b | AssertionError", "call:passed c"], "failures_after": 1},
        {"worker": "gw2", "first_failure": f"setup:failed z | {bad}", "ran_before": [],
         "failures_after": 0},
    ]  # fmt: skip


def test_main_records_counts_failures_and_worker_logs(tmp_path, monkeypatch):
    # A throwaway suite beside the real conftest (its log hook is what gpu_tests reads).
    suite = ROOT / "tests" / f"test_tmp_gpu_tests_{tmp_path.name}.py"
    suite.write_text(
        textwrap.dedent("""
        def test_ok():
            pass

        def test_spoiled():
            raise RuntimeError("cudaMallocAsync failed: an illegal memory access was encountered")
    """)
    )
    try:
        out = tmp_path / "c.json"
        rc = gpu_tests.main(["--json", str(out), "--", "-q", "-p", "no:cacheprovider",
                             "-p", "no:randomly", str(suite)])  # fmt: skip
    finally:
        suite.unlink()
    assert rc == 1
    res = capsule.load(out)["results"]
    assert (res["passed"], res["failed"]) == (1, 1)
    assert "illegal memory access" in res["failures"][0]["message"]
    (worker,) = res["poisoned_workers"]
    assert (
        worker["first_failure"].startswith("call:failed")
        and "test_spoiled" in worker["first_failure"]
    )
    assert len(worker["ran_before"]) == 1 and "test_ok" in worker["ran_before"][0]
