"""patch() on a model sharded with mlx-lm's shard(): two CPU ranks over MLX's ring backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlx_lm")

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which(
    "mlx.launch"
)


@pytest.mark.skipif(LAUNCH is None, reason="mlx.launch not found")
@pytest.mark.parametrize("family", ["qwen3_moe"])
def test_sharded_patched_decode_matches_unsharded(family, tmp_path):
    out = tmp_path / "sharded.json"
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    cmd = [LAUNCH, "--backend", "ring", "-n", "2", "--python", sys.executable,
           "--env", f"PYTHONPATH={env['PYTHONPATH']}",
           str(ROOT / "benchmarks" / "sharded_decode.py"), "--family", family, "--size", "tiny",
           "--tokens", "32", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())["results"]
    assert res["ranks"] == 2
    assert res["patch"]["patterns"].get("moe_block", 0) > 0
    assert res["patched_equals_sharded_stock"] and res["patched_equals_unsharded"]
    assert res["top1_agreement_vs_sharded_stock"] == 1.0
    # Compiled decode steps trace the collectives too, and decode the same tokens.
    assert res["compiled"]["error"] is None, res["compiled"]["error"]
    assert res["compiled"]["equals_sharded_stock"]
