"""Run candidate evaluations in a worker process, with time limits on compiling and running.

One worker (``python -m zmlx.discover.worker``) lives as long as the :class:`Evaluator`, so
MLX, the catalog and built kernels load once. A request must report its first check (its
kernels compiled and ran once) within ``compile_timeout`` seconds and finish within
``run_timeout`` more; otherwise the worker is killed, the candidate is marked ``timeout`` and
the next request starts a fresh worker. A worker that dies (a crash in a kernel) gives an
``error`` result with the end of its stderr.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..core import emulate
from ..core.backend import gpu_backend


def default_runner() -> str:
    """``"cuda"`` or ``"metal"`` where MLX has a GPU, else ``"emulator"`` (the CPU SIMT one)."""
    b = gpu_backend()
    if b != "cpu":
        return b
    if not emulate.available():
        raise RuntimeError(
            "[discover] no GPU and no C++ compiler for the kernel emulator: nothing can run "
            "a candidate kernel here"
        )
    return "emulator"


class Evaluator:
    """Evaluate requests (see :mod:`zmlx.discover.worker`) in a child process.

    Args:
        compile_timeout: seconds until the first check of a request has run.
        run_timeout: seconds for the rest of the request (checks and timing).
        isolate: run in a child process (default); ``False`` runs in this process, with no
            time limits (for debugging).
    """

    def __init__(
        self, compile_timeout: float = 120.0, run_timeout: float = 300.0, isolate: bool = True
    ) -> None:
        self.compile_timeout = compile_timeout
        self.run_timeout = run_timeout
        self.isolate = isolate
        self._proc: subprocess.Popen | None = None
        self._err = None
        self._buf = b""
        self.restarts = 0

    # -- worker process ------------------------------------------------------------------
    def _start(self) -> None:
        src = str(Path(__file__).resolve().parents[2])  # the folder holding the zmlx package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        if self._err is not None:
            self._err.close()
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "zmlx.discover.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
        )
        self._buf = b""

    def _stderr_tail(self, n: int = 2000) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-n:]

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        self.restarts += 1

    def _read(self, deadline: float) -> dict | None:
        """The next message from the worker, or None at the deadline or at its exit."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    # -- public ------------------------------------------------------------------------------
    def evaluate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Evaluate one candidate; returns the worker's result (``status`` ok, incorrect,
        error or timeout) with ``seconds`` added."""
        t0 = time.monotonic()
        if not self.isolate:
            from .worker import evaluate

            try:
                res = evaluate(request, lambda msg: None)
            except Exception as e:  # same contract as the worker: an error is a result
                res = {"status": "error", "error": f"{type(e).__name__}: {e}"}
            return {**res, "seconds": round(time.monotonic() - t0, 3)}
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._kill()
            return {"status": "error", "error": "worker exited: " + self._stderr_tail()}
        limits = (("compiled", self.compile_timeout), ("done", self.run_timeout))
        for phase, limit in limits:
            while True:
                msg = self._read(time.monotonic() + limit)
                if msg is None:
                    alive = self._proc.poll() is None
                    self._kill()
                    if alive:
                        what = "compiling and a first run" if phase == "compiled" else "the run"
                        return {"status": "timeout", "seconds": round(time.monotonic() - t0, 3),
                                "error": f"{what} took longer than {limit:g} s"}  # fmt: skip
                    return {"status": "error", "error": "worker died: " + self._stderr_tail(),
                            "seconds": round(time.monotonic() - t0, 3)}  # fmt: skip
                if msg.get("phase") == "done":
                    return {**msg["result"], "seconds": round(time.monotonic() - t0, 3)}
                if msg.get("phase") == phase:
                    break
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._err is not None:
            self._err.close()
            self._err = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
