"""Run the test suite (on a GPU machine) and record the outcome as a ``gpu_tests`` capsule.

    python benchmarks/gpu_tests.py --json OUT [-- PYTEST ARGS...]

Runs ``python -m pytest`` with the given arguments plus a JUnit XML report, then writes the
counts, the duration and every failure (test id and message) into the capsule. The exit code
is pytest's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from zmlx.bench import capsule


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="write the capsule here")
    p.add_argument("--timeout", type=int, default=0, help="seconds before pytest is stopped")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest arguments")
    return p


def summarize(xml_path: str) -> dict:
    root = ET.parse(xml_path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures = []
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
        for case in s.iter("testcase"):
            for child in case:
                if child.tag in ("failure", "error"):
                    name = f"{case.get('classname', '')}::{case.get('name', '')}"
                    failures.append({"test": name, "message": (child.get("message") or "")[:500]})
    failed = counts["failures"]
    passed = counts["tests"] - failed - counts["errors"] - counts["skipped"]
    return {"passed": passed, "failed": failed, "errors": counts["errors"],
            "skipped": counts["skipped"], "failures": failures}  # fmt: skip


POISON = ("illegal memory access", "unspecified launch failure", "misaligned address")


def poisoned_workers(log_dir: str, before: int = 4) -> list[dict]:
    """Per worker whose log shows a context-spoiling CUDA error: the tests that ran just before
    its first such failure (the culprit is among them; the worker's later failures are
    fallout)."""
    out = []
    for worker in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, worker)) as f:
            lines = f.read().splitlines()
        first = next((i for i, ln in enumerate(lines) if any(p in ln for p in POISON)), None)
        if first is not None:
            out.append({"worker": worker, "first_failure": lines[first],
                        "ran_before": lines[max(0, first - before):first],
                        "failures_after": sum(ln.split(" ", 1)[0].endswith("failed")
                                              for ln in lines[first + 1:])})  # fmt: skip
    return out


def main(argv=None) -> int:
    args = setup_arg_parser().parse_args(argv)
    extra = [a for a in args.pytest_args if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        log_dir = os.path.join(tmp, "workers")
        os.makedirs(log_dir)
        cmd = [sys.executable, "-m", "pytest", f"--junitxml={xml}", *extra]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, "ZMLX_TEST_LOG": log_dir})
        interrupted = False
        try:
            rc = proc.wait(timeout=args.timeout or None)
        except subprocess.TimeoutExpired:
            # Interrupt rather than kill: pytest then stops its workers and still writes the
            # report of the tests that ran (the capsule says it was cut short).
            interrupted = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
            rc = 124
        duration = time.perf_counter() - t0
        if not os.path.exists(xml):
            print("[gpu_tests] pytest wrote no report", file=sys.stderr)
            return rc or 1
        res = summarize(xml)
        if any(p in f["message"] for f in res["failures"] for p in POISON):
            res["poisoned_workers"] = poisoned_workers(log_dir)
    res.update({"duration_s": duration, "args": extra, "returncode": rc,
                "interrupted": interrupted})  # fmt: skip
    capsule.write(capsule.make("gpu_tests", res), args.json)
    print(f"passed {res['passed']} failed {res['failed']} errors {res['errors']} "
          f"skipped {res['skipped']} in {duration:.0f}s -> {args.json}")  # fmt: skip
    for f in res["failures"][:40]:
        print(f"FAILED {f['test']}: {f['message'][:200]}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
