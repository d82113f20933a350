"""Foundry results as a supervised fine-tuning dataset in mlx-lm's chat format.

Each line of ``train.jsonl`` / ``valid.jsonl`` is ``{"messages": [system, user, assistant]}``
(what ``mlx_lm.lora --data DIR`` reads as a ``ChatDataset``):

* user: the op, its description, the input shapes, dtype and backend, the knobs it takes
  and the rules a kernel must follow;
* assistant: knobs that passed every check there, the template constants they give, and the
  kernel body as launched, with the evidence (speed-up over the catalog kernel where timed).

Per (op, shape, dtype) the fastest passing knobs make one example where records were timed;
untimed records (the CPU emulator) give one example per passing knob setting, and say so.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..discover.safety import SHARED_LIMIT

SYSTEM = (
    "You write GPU kernels for zmlx in its portable C++ dialect (rendered for CUDA and Metal). "
    "Given an op and its shapes, choose launch knobs and give the kernel body."
)
RULES = (
    f"bounded loops only; at most {SHARED_LIMIT} bytes of shared memory per group; threads per group "
    "a multiple of 32 and at most 1024; bounds-check every access; never write to inputs; no "
    "inline assembly, printing, allocation or preprocessor directives except #pragma unroll"
)
ROLES = ("system", "user", "assistant")


def _user(rec: dict[str, Any]) -> str:
    return "\n".join([
        f"Op: {rec['op']} ({rec['family']}): {rec['description']}.",
        f"Inputs: {', '.join(str(tuple(s)) for s in rec['shapes'])}; dtype {rec['dtype']}; "
        f"backend {rec['backend']}.",
        f"Knobs ({rec['knob_notes']}): allowed {json.dumps(rec['knob_space'])}; defaults "
        f"{json.dumps(rec['defaults'])}.",
        f"Rules: {RULES}.",
        "Give the knobs as JSON, then the kernel body.",
    ])  # fmt: skip


def _evidence(rec: dict[str, Any]) -> str:
    checks = rec.get("checks", [])
    shapes = sorted({c["case"] for c in checks})
    dtypes = sorted({c["dtype"] for c in checks})
    where = "on the CPU emulator" if rec["runner"] == "emulator" else f"on {rec['device']}"
    text = (
        f"Passed {len(checks)}/{len(checks)} checks against the reference {where} "
        f"(cases {', '.join(shapes)}; dtypes {', '.join(dtypes)})."
    )
    t = rec.get("timing", {})
    if isinstance(t.get("speedup"), (int, float)):
        us = t.get("timings", {}).get("variant", {}).get("median_eval_us")
        text += f" Device time {us:.2f} us, {t['speedup']:.2f}x the catalog kernel"
        if isinstance(t.get("vs_stock"), (int, float)):
            text += f", {t['vs_stock']:.2f}x stock MLX"
        text += "."
    else:
        text += f" Not timed ({t.get('skipped', 'no timing')})."
    return text


def _assistant(rec: dict[str, Any]) -> str:
    return "\n".join([
        "```json",
        json.dumps({"knobs": rec["knobs"], "template": rec.get("template", {})}),
        "```",
        "```cpp",
        rec["body"].rstrip(),
        "```",
        _evidence(rec),
    ])  # fmt: skip


def examples(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat examples from foundry records (see the module docstring)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("body"):
            groups.setdefault((r["op"], r["case"], r["dtype"], r["backend"]), []).append(r)
    out = []
    for key in sorted(groups):
        recs = groups[key]
        timed = [r for r in recs if isinstance(r.get("timing", {}).get("speedup"), (int, float))]
        chosen = [max(timed, key=lambda r: r["timing"]["speedup"])] if timed else recs
        for r in chosen:
            out.append({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": _user(r)},
                {"role": "assistant", "content": _assistant(r)},
            ]})  # fmt: skip
    return out


def check_example(ex: Any, where: str = "") -> None:
    """Raise ``ValueError`` unless ``ex`` is one chat example mlx-lm accepts."""
    label = f"[foundry] {where}: " if where else "[foundry] "
    if not isinstance(ex, dict) or not isinstance(ex.get("messages"), list):
        raise ValueError(label + 'expected {"messages": [...]}')
    msgs = ex["messages"]
    if len(msgs) < 2:
        raise ValueError(label + "expected at least a user and an assistant message")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(label + f"message {i}: expected exactly 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(label + f"message {i}: role {m['role']!r} not in {ROLES}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise ValueError(label + f"message {i}: empty content")
    roles = [m["role"] for m in msgs]
    body = roles[1:] if roles[0] == "system" else roles
    expect = ["user", "assistant"] * (len(body) // 2)
    if body != expect or not body:
        raise ValueError(label + f"expected alternating user/assistant turns, got {roles}")


def validate(path: str | os.PathLike) -> int:
    """Check every line of a chat JSONL file; returns how many examples it holds."""
    n = 0
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"[foundry] {path}:{i + 1}: not JSON ({e})") from None
        check_example(ex, f"{path}:{i + 1}")
        n += 1
    return n


def write(
    exs: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, valid_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Write ``train.jsonl`` and ``valid.jsonl`` (at least one example each when there are two
    or more); returns the counts and paths."""
    if not exs:
        raise ValueError("[foundry] no passing records to export (did the run fail?)")
    order = list(range(len(exs)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(exs) * valid_fraction)) if len(exs) > 1 else 0
    valid = [exs[i] for i in order[:n_valid]]
    train = [exs[i] for i in order[n_valid:]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("train", train), ("valid", valid)):
        p = out / f"{name}.jsonl"
        p.write_text("".join(json.dumps(e) + "\n" for e in part))
        validate(p)
        paths[name] = str(p)
    return {"train": len(train), "valid": len(valid), "paths": paths}
