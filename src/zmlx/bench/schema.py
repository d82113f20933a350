"""The capsule schema as data: the fields every capsule has, and the ``results`` of each kind.

A capsule is a JSON object with the top-level fields of :data:`TOP_LEVEL` and a ``results``
object whose required fields depend on its ``kind`` (:data:`KINDS`). Field specs name a type:
``str``, ``int``, ``number`` (int or float), ``bool``, ``list``, ``dict``; a trailing ``?``
allows ``null``. ``KINDS[kind]["items"]`` checks nested objects, addressed by a path relative
to ``results``: ``a.b`` is a key, ``rows[]`` is every item of a list, ``timings{}`` every value
of an object. ``optional`` fields are checked only when present.

Versions:
    1: the top-level fields only.
    2: adds the per-kind ``results`` fields below (capsules of version 1 are still read, with
       the version 1 checks).

``python -m zmlx.bench schema`` prints this table.
"""

from __future__ import annotations

from typing import Any

SCHEMA = "zmlx.capsule"
SCHEMA_VERSION = 2

TOP_LEVEL: dict[str, str] = {
    "schema": "str",
    "schema_version": "int",
    "kind": "str",
    "created": "str",
    "command": "str",
    "env": "dict",
    "results": "dict",
}
ENV: dict[str, str] = {"backend": "str", "device": "str", "mlx": "str"}

# One timed variant of a kernel (zmlx.bench.timing.Timing.to_dict), in microseconds per call.
TIMING = {"median_us": "number", "min_us": "number", "max_us": "number", "runs_us": "list"}
# A rate over repeated runs (tokens/s).
RATE = {"median": "number", "min": "number", "max": "number", "runs": "list"}
# One phase (prefill or decode) of a model measured stock and patched in one process.
PHASE = {"stock": "dict", "patched": "dict", "speedup": "number"}
CATALOG_ROW = {
    "op": "str",
    "family": "str",
    "case": "str",
    "dtype": "str",
    "path": "str",
    "bytes": "int",
    "timings": "dict",
}

KINDS: dict[str, dict[str, Any]] = {
    "kernel_bench": {
        "doc": "one kernel case, variants timed interleaved in one process (benchmarks/*.py)",
        "results": {"timings": "dict"},
        "optional": {
            "op": "str",
            "expr": "str",
            "case": "str",
            "dtype": "str",
            "bytes_moved": "int",
        },
        "items": {"timings{}": TIMING},
    },
    "catalog_bench": {
        "doc": "every catalog op against stock MLX (python -m zmlx.bench catalog)",
        "results": {"backend": "str", "path": "str", "dtype": "str", "rows": "list"},
        "optional": {"errors": "list", "note": "str", "partial": "bool"},
        "items": {"rows[]": CATALOG_ROW, "rows[].timings{}": TIMING},
    },
    "validate": {
        "doc": "fidelity and speed of one model, stock vs patched (python -m zmlx.validate)",
        "results": {
            "model": "str",
            "source": "str",
            "patterns": "list?",
            "patch": "dict",
            "fidelity": "dict",
            "throughput": "dict",
            "memory": "dict",
            "passed": "bool",
        },
        "items": {
            "fidelity": {
                "passed": "bool",
                "prompts": "int",
                "greedy_identical": "int",
                "top1_agreement": "number",
                "max_logit_diff": "number",
                "mean_logit_diff": "number",
            },
            "throughput": {"prefill": "dict", "decode": "dict"},
            "throughput.prefill": PHASE,
            "throughput.decode": PHASE,
            "throughput.prefill.stock": RATE,
            "throughput.prefill.patched": RATE,
            "throughput.decode.stock": RATE,
            "throughput.decode.patched": RATE,
            "memory": {"stock_peak_bytes": "int", "patched_peak_bytes": "int"},
        },
    },
    "model_decode": {
        "doc": "decode/prefill tok/s of full-size models, stock vs patched (benchmarks/moe_decode.py)",
        "results": {"rows": "list"},
        "items": {
            "rows[]": {"model": "str", "quant": "str?", "prefill": "dict", "decode": "dict"},
            "rows[].prefill": PHASE,
            "rows[].decode": PHASE,
            "rows[].decode.stock": RATE,
            "rows[].decode.patched": RATE,
        },
    },
    "fixture_decode": {
        "doc": "trained fixtures, stock vs patched + compiled decoding (benchmarks/fixture_decode.py)",
        "results": {"rows": "list"},
        "optional": {"attention": "str"},
        "items": {
            "rows[]": {
                "family": "str",
                "tokens": "int",
                "identical": "bool",
                "max_logit_diff": "number",
                "top1_agree": "number",
            }
        },
    },
    "moe_block_bench": {
        "doc": "one MoE block's experts at decode, zmlx vs mlx-lm's SwitchGLU (benchmarks/moe_block.py)",
        "results": {"copy_bandwidth_gbps": "number", "rows": "list"},
        "items": {
            "rows[]": {
                "model": "str",
                "tokens": "int",
                "weight_bytes": "int",
                "fraction_of_copy": "number",
                "timings": "dict",
            },
            "rows[].timings{}": TIMING,
        },
    },
    "moe_block_device": {
        "doc": "device time (CUPTI) of chained MoE blocks' experts at decode, zmlx vs mlx-lm's "
        "SwitchGLU (benchmarks/moe_block.py --device-time)",
        "results": {"copy_bandwidth_gbps": "number", "rows": "list"},
        "items": {
            "rows[]": {
                "model": "str",
                "tokens": "int",
                "blocks": "int",
                "weight_bytes": "number",
                "fraction_of_copy": "number",
                "device_time": "dict",
            },
            "rows[].device_time{}": {"block_us": "number", "gbps": "number"},
        },
    },
    "sharded_decode": {
        "doc": "patched decoding of a model sharded over ranks (benchmarks/sharded_decode.py)",
        "results": {
            "family": "str",
            "ranks": "int",
            "stock_tok_s": "number",
            "patched_tok_s": "number",
            "patched_equals_sharded_stock": "bool",
            "patched_equals_unsharded": "bool?",
            "patch": "dict",
        },
    },
    "stock_probes": {
        "doc": "checks of stock MLX on a GPU against its CPU backend (benchmarks/stock_probes.py)",
        "results": {},
        "optional": {"qmv_tiny": "list", "quantize_transposed": "list"},
    },
    "fixture_layers": {
        "doc": "per-module differences of GPU decoding from MLX's CPU (benchmarks/fixture_layers.py)",
        "results": {"rows": "list"},
        "items": {"rows[]": {"family": "str", "dtype": "str", "modules": "list"}},
    },
    "launch_cost": {
        "doc": "host cost of one launch and a decode step's split (benchmarks/launch_cost.py)",
        "results": {"rows": "list"},
        "items": {"rows[]": {"env": "str"}},
    },
    "kernel_profile": {
        "doc": "device time of each kernel, from CUPTI (benchmarks/kernel_profile.py)",
        "results": {"device": "str"},
        "optional": {"moe_chain": "dict", "decode": "dict", "micro": "dict"},
    },
    "ncu_sweep": {
        "doc": "Nsight Compute metrics of one zmlx launch per setting (benchmarks/ncu_sweep.py)",
        "results": {"rows": "list", "ncu_args": "str"},
        "items": {"rows[]": {"label": "str", "args": "str", "rc": "int"}},
    },
    "zoo_build": {
        "doc": "build time and memory of zoo models (benchmarks/zoo_build.py)",
        "results": {"size": "str", "quant": "str?", "builds": "list"},
        "items": {
            "builds[]": {
                "family": "str",
                "build_s": "number",
                "peak_memory_bytes": "int",
                "parameter_bytes": "int",
            }
        },
    },
    "gpu_tests": {
        "doc": "a pytest run on a GPU machine: counts and failures",
        "results": {"passed": "int", "failed": "int", "skipped": "int", "duration_s": "number"},
        "optional": {"errors": "int", "args": "list", "failures": "list", "interrupted": "bool"},
        "items": {"failures[]": {"test": "str", "message": "str"}},
    },
}


def _type_ok(value: Any, spec: str) -> bool:
    if spec.endswith("?"):
        if value is None:
            return True
        spec = spec[:-1]
    if spec == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    py = {"str": str, "bool": bool, "list": list, "dict": dict}[spec]
    return isinstance(value, py)


def check_fields(obj: Any, fields: dict[str, str], where: str, *, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``obj`` is an object with ``fields`` of the right types."""
    if not isinstance(obj, dict):
        raise ValueError(f"[capsule] {where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in fields if k not in obj and not optional]
    if missing:
        raise ValueError(f"[capsule] {where}: missing field(s) {missing}")
    for k, spec in fields.items():
        if k in obj and not _type_ok(obj[k], spec):
            got = type(obj[k]).__name__
            raise ValueError(f"[capsule] {where}.{k}: expected {spec}, got {got} ({obj[k]!r:.60})")


def _select(obj: Any, path: str, where: str) -> list[tuple[str, Any]]:
    """The objects at ``path`` below ``obj`` (see the module docstring), with their locations."""
    found = [(where, obj)]
    for part in path.split("."):
        each = part.endswith("[]") or part.endswith("{}")
        key = part[:-2] if each else part
        nxt = []
        for loc, o in found:
            if not isinstance(o, dict) or key not in o:
                continue  # absent optional containers are not an error here
            v, loc = o[key], f"{loc}.{key}"
            if part.endswith("[]"):
                nxt += [(f"{loc}[{i}]", x) for i, x in enumerate(v if isinstance(v, list) else [])]
            elif part.endswith("{}"):
                nxt += [(f"{loc}[{k!r}]", x) for k, x in (v.items() if isinstance(v, dict) else [])]
            else:
                nxt.append((loc, v))
        found = nxt
    return found


def check_results(kind: str, results: Any) -> None:
    """Check ``results`` against the schema of ``kind`` (raises ``ValueError``)."""
    if kind not in KINDS:
        raise ValueError(f"[capsule] unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    spec = KINDS[kind]
    check_fields(results, spec["results"], "results")
    check_fields(results, spec.get("optional", {}), "results", optional=True)
    for path, fields in spec.get("items", {}).items():
        for loc, obj in _select(results, path, "results"):
            check_fields(obj, fields, loc)


def describe() -> str:
    """The schema as readable text (``python -m zmlx.bench schema``)."""
    lines = [f"{SCHEMA} version {SCHEMA_VERSION}", "", "top level:"]
    lines += [f"  {k}: {t}" for k, t in TOP_LEVEL.items()]
    lines += [f"  env.{k}: {t}" for k, t in ENV.items()]
    for kind, spec in KINDS.items():
        lines += ["", f"{kind}: {spec['doc']}"]
        lines += [f"  results.{k}: {t}" for k, t in spec["results"].items()]
        lines += [f"  results.{k}: {t} (optional)" for k, t in spec.get("optional", {}).items()]
        for path, fields in spec.get("items", {}).items():
            lines += [f"  results.{path}.{k}: {t}" for k, t in fields.items()]
    return "\n".join(lines)
