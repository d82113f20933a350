"""Small valid ``results`` of each capsule kind, for schema, report and matrix tests."""

from __future__ import annotations

import copy


def timing(median: float, speedup: float = 1.0) -> dict:
    return {"name": "x", "runs_us": [median * 0.9, median, median * 1.2], "batch": 1,
            "median_us": median, "min_us": median * 0.9, "max_us": median * 1.2,
            "speedup": speedup}  # fmt: skip


def rate(median: float) -> dict:
    return {"median": median, "min": median * 0.9, "max": median * 1.1,
            "runs": [median * 0.9, median, median * 1.1]}  # fmt: skip


def phase(stock: float, patched: float) -> dict:
    return {"stock": rate(stock), "patched": rate(patched), "speedup": patched / stock}


def validate_results(passed: bool = True, top1: float = 1.0, decode=(100.0, 130.0)) -> dict:
    return {
        "model": "qwen3_moe-tiny",
        "source": "zoo:qwen3_moe (tiny, random weights, 4bit)",
        "random_weights": True,
        "patterns": None,
        "patch": {
            "family": "qwen3_moe",
            "backend": "cpu",
            "replaced": [["model.layers.0.mlp", "moe_block"], ["model.layers.1.mlp", "moe_block"]],
            "skipped": [["model.norm", "rms_norm", "no gain"]],
            "notes": [],
        },  # fmt: skip
        "fidelity": {
            "passed": passed,
            "reason": "" if passed else "greedy tokens differ",
            "prompts": 5,
            "greedy_identical": 5 if passed else 3,
            "top1_agreement": top1,
            "max_logit_diff": 0.0125,
            "mean_logit_diff": 0.0004,
        },  # fmt: skip
        "throughput": {"prefill": phase(2000.0, 2100.0), "decode": phase(*decode)},
        "memory": {"stock_peak_bytes": 5_000_000, "patched_peak_bytes": 5_100_000},
        "passed": passed,
    }


RESULTS = {
    "kernel_bench": {
        "expr": "x * sigmoid(x)",
        "n": 4096,
        "dtype": "float16",
        "bytes_moved": 16384,
        "timings": {"mlx": timing(10.0), "zmlx": timing(5.0, 2.0)},
    },  # fmt: skip
    "catalog_bench": {
        "backend": "cpu",
        "path": "reference",
        "dtype": "float16",
        "errors": [],
        "rows": [
            {
                "op": "silu",
                "family": "activations",
                "case": "decode",
                "dtype": "float16",
                "path": "reference",
                "bytes": 16384,
                "timings": {"stock": timing(8.0), "zmlx": timing(6.0, 8 / 6)},
            }
        ],
    },  # fmt: skip
    "validate": validate_results(),
    "model_decode": {
        "rows": [
            {
                "model": "qwen3_moe",
                "quant": "4bit",
                "prefill": phase(500.0, 520.0),
                "decode": phase(75.0, 230.0),
            }
        ]
    },  # fmt: skip
    "zoo_build": {
        "size": "tiny",
        "quant": None,
        "builds": [
            {
                "family": "qwen3_moe",
                "build_s": 0.5,
                "peak_memory_bytes": 10,
                "parameter_bytes": 8,
                "finite": True,
            }
        ],
    },  # fmt: skip
    "moe_block_device": {
        "copy_bandwidth_gbps": 3000.0,
        "timing": "device (CUPTI)",
        "rows": [
            {
                "model": "qwen3_30b_a3b",
                "tokens": 1,
                "blocks": 8,
                "weight_bytes": 21233664,
                "fraction_of_copy": 0.4,
                "device_time": {
                    "mlx_switchglu": {"block_us": 72.0, "gbps": 295.0},
                    "zmlx": {"block_us": 18.0, "gbps": 1180.0, "speedup": 4.0},
                    "zmlx.kernels.moe_kernels.SPLIT_ROWS=2": {
                        "block_us": 24.0,
                        "gbps": 885.0,
                        "speedup": 3.0,
                    },
                },
            }
        ],
        "sweep": ["zmlx.kernels.moe_kernels.SPLIT_ROWS=2"],
    },  # fmt: skip
    "gpu_tests": {
        "passed": 10,
        "failed": 1,
        "skipped": 2,
        "errors": 0,
        "duration_s": 12.5,
        "failures": [{"test": "tests/test_x.py::test_y", "message": "boom\nmore"}],
    },  # fmt: skip
}


def results(kind: str) -> dict:
    return copy.deepcopy(RESULTS[kind])
