"""benchmarks/fixture_decode.py on the CPU: a capsule row per family, every prompt compared."""

from __future__ import annotations

import json

import pytest

from scripts import load_benchmark
from zmlx.models.build import backend_group_size

pytest.importorskip("mlx_lm")


def test_rows_cover_every_prompt(tmp_path):
    out = tmp_path / "fd.json"
    main = load_benchmark("fixture_decode").main
    assert main(["--families", "qwen3_moe", "--tokens", "4", "--prompts", "3", "--no-cpu",
                 "--patterns", "moe_block", "--json", str(out)]) == 0  # fmt: skip
    (row,) = json.loads(out.read_text())["results"]["rows"]
    assert row["prompts"] == 3 and row["prompt_identical"] == [True, True, True]
    assert row["identical"] and row["stock_equals_cpu"] is None
    assert row["patched"] == {"moe_block": 2}
    assert row["group_size"] == (backend_group_size() or 64)  # 32 on CUDA
