"""The safety table: which pattern is allowed for which model family on which backend.

Safety is data. Each entry says whether ``patch()`` applies the pattern by default, up to how
many tokens per call (decode-only paths), and the evidence: the test or capsule that showed
the patched model keeps its outputs (token-identical greedy decoding, teacher-forced logits)
and, on GPUs, that it is faster. ``patch(patterns=[...])`` overrides the table (with a
warning). Families are mlx-lm ``model_type`` values; ``"*"`` is any family.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One safety entry.

    Attributes:
        allowed: applied by default.
        max_tokens: fused path only for calls of up to this many tokens (None: any).
        evidence: test id or capsule path behind the entry.
        note: why (especially when not allowed).
    """

    allowed: bool
    max_tokens: int | None = None
    evidence: str = ""
    note: str = ""


_CPU_FIDELITY = "tests/test_patch.py::test_fixture_decode_is_token_identical"
_EMULATED = "tests/test_patch.py::test_fixture_decode_on_kernel_emulator"

TABLE: dict[tuple[str, str, str], Rule] = {
    # CPU: the fused ops run their references, which reproduce mlx-lm's computation.
    ("*", "moe_block", "cpu"): Rule(True, 16, _CPU_FIDELITY + " ; " + _EMULATED),
    ("*", "switch_glu", "cpu"): Rule(True, 16, _CPU_FIDELITY),
    ("*", "swiglu_mlp", "cpu"): Rule(True, 16, _CPU_FIDELITY),
    ("*", "rms_norm", "cpu"): Rule(False, None, "", "mx.fast.rms_norm is already one op: no gain"),
    ("*", "layer_norm", "cpu"): Rule(False, None, "", "mx.fast.layer_norm is already one op"),
    # Metal: rendered and syntax-checked, never run on Apple hardware.
    ("*", "moe_block", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "switch_glu", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "swiglu_mlp", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "rms_norm", "metal"): Rule(False, None, "", "not yet run on Apple hardware"),
    ("*", "layer_norm", "metal"): Rule(False, None, "", "not yet run on Apple hardware"),
}


def lookup(family: str, pattern: str, backend: str) -> Rule | None:
    """The entry for ``(family, pattern, backend)``, falling back to the ``"*"`` family."""
    return TABLE.get((family, pattern, backend)) or TABLE.get(("*", pattern, backend))
