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
_NO_GAIN = "the CPU runs the reference ops: correct but not faster than stock"
# CUDA: the fixtures decode token-identically patched + compiled against stock on an H100
# (quantized in groups of 32, see zmlx.models.build.backend_group_size), and the full-size
# models decode faster with the same patterns under compile_decode, in the same process as
# stock. Families without a speed capsule get no entry (patch() leaves them alone).
_GPU_FIXTURES = "benchmarks/capsules/fixture_decode_mma_128x5_h100.json"
_SPEED = {
    "qwen3_moe": "benchmarks/capsules/moe_decode_qwen3_lfm2_lanes_h100.json ; "
    "benchmarks/capsules/moe_decode_qwen3_launches_h100.json ; "
    "benchmarks/capsules/kernel_profile_router_slices_qwen3_h100.json ; "
    "benchmarks/capsules/moe_decode_qwen3_lfm2_linear_h100.json ; "
    "benchmarks/capsules/kernel_profile_linear_qwen3_moe_h100.json",
    "lfm2_moe": "benchmarks/capsules/moe_decode_qwen3_lfm2_lanes_h100.json ; "
    "benchmarks/capsules/moe_decode_lfm2_residual_h100.json ; "
    "benchmarks/capsules/kernel_profile_residual_lfm2_moe_h100.json ; "
    "benchmarks/capsules/moe_decode_qwen3_lfm2_linear_h100.json",
    "glm4_moe_lite": "benchmarks/capsules/moe_decode_glm_mla_h100.json ; "
    "benchmarks/capsules/moe_decode_glm_gpt_oss_linear_h100.json ; "
    "benchmarks/capsules/kernel_profile_linear_glm4_moe_lite_h100.json",
    "gpt_oss": "benchmarks/capsules/moe_decode_glm_gpt_oss_linear_h100.json",
}
# quantized_linear (the dense quantized projections on the split-row kernel) where device time
# per layer and decode tok/s both favour it. LFM2 and GPT-OSS: device time a little lower
# (busy 71.0 against 72.4 us, 177.7 against 181.2, kernel_profile_linear_*_h100.json) but
# tok/s lower in the same run as stock (157.1 against 167.3, 116.1 against 150.4), so not yet.
# Qwen3-30B-A3B: q, k, v in one launch (qkv_norm_rope; qk_norm_rope where that does not
# match) and the residual adds and post-attention norm folded into the MoE block
# (moe_residual): 12.6 launches a layer against 18.6, the device span 117.1 against 107.2 us
# a layer (kernel_profile_router_slices_qwen3_h100.json), decode faster in 4 of 5 runs
# interleaved with the previous defaults in one process, median 124.4 against 116.1 tok/s
# (moe_decode_qwen3_launches_h100.json), which points to a step bound by the host's launches.
# LFM2-8B-A1B with moe_residual: 14.4 launches a layer against 17.4, span 89.5 against 101.7
# us (kernel_profile_residual_lfm2_moe_h100.json), decode faster in 4 of 5 interleaved runs,
# median 324.2 against 300.5 tok/s (moe_decode_lfm2_residual_h100.json).
_CUDA_PATTERNS = {
    "qwen3_moe": ("moe_block", "qkv_norm_rope", "qk_norm_rope", "quantized_linear", "moe_residual"),
    "lfm2_moe": ("moe_block", "swiglu_mlp", "moe_residual"),
    "glm4_moe_lite": ("moe_block", "swiglu_mlp", "quantized_linear", "mla_attention"),
    "gpt_oss": ("moe_block",),
}
# Entries whose evidence differs from the family's. mla_attention: greedy decoding of the
# trained MLA fixtures is token-identical with the pattern on the CPU and with its kernel on
# the CPU kernel emulator (tests/test_mla_pattern.py); the kernel is checked against its
# reference on the GPU at full-size shapes (gpu_tests_final_h100.json, tests/test_attention.py;
# the fixtures' 16-wide rope part is newer and not yet run on a GPU); at full size,
# teacher-forced top-1 against stock is 94.5% with it and 94.9% without
# (moe_decode_glm_mla_h100.json; stock's own agreement with float32 is 92.2%).
_OWN = {  # (family, pattern): (evidence, note)
    ("glm4_moe_lite", "mla_attention"): (
        "tests/test_mla_pattern.py ; benchmarks/capsules/gpu_tests_final_h100.json ; "
        "benchmarks/capsules/moe_decode_glm_mla_h100.json ; "
        "benchmarks/capsules/kernel_profile_mla_glm4_moe_lite_h100.json",
        "fixtures token-identical with the pattern (CPU) and its kernel (CPU emulator); "
        "kernel checked against its reference on CUDA at full-size shapes; full size faster "
        "with compile_decode",
    ),
}
_CUDA_NOTE = (
    "fixture token-identical on CUDA; full size faster with compile_decode (teacher-forced "
    "top-1 on random weights is at the rounding floor of stock kernels under compile_decode)"
)

TABLE: dict[tuple[str, str, str], Rule] = {
    # CPU: the fused ops run their references (mlx-lm's own computation, token-identical per
    # the tests below) and are no faster than stock, so nothing is applied by default; pass
    # patterns=[...] to check fidelity.
    ("*", "moe_block", "cpu"): Rule(False, 16, _CPU_FIDELITY + " ; " + _EMULATED, _NO_GAIN),
    ("*", "switch_glu", "cpu"): Rule(False, 16, _CPU_FIDELITY, _NO_GAIN),
    ("*", "swiglu_mlp", "cpu"): Rule(False, 16, _CPU_FIDELITY, _NO_GAIN),
    ("*", "qk_norm_rope", "cpu"): Rule(False, 16, _CPU_FIDELITY, _NO_GAIN),
    ("*", "qkv_norm_rope", "cpu"): Rule(False, 16, _CPU_FIDELITY, _NO_GAIN),
    ("*", "moe_residual", "cpu"): Rule(False, 16, _CPU_FIDELITY, _NO_GAIN),
    ("*", "quantized_linear", "cpu"): Rule(False, 16, _CPU_FIDELITY, _NO_GAIN),
    ("*", "mla_attention", "cpu"): Rule(False, 1, "tests/test_mla_pattern.py", _NO_GAIN),
    ("*", "rms_norm", "cpu"): Rule(False, None, "", "mx.fast.rms_norm is already one op: no gain"),
    ("*", "layer_norm", "cpu"): Rule(False, None, "", "mx.fast.layer_norm is already one op"),
    **{
        (family, pattern, "cuda"): Rule(
            True,
            16,
            *_OWN.get((family, pattern), (f"{_GPU_FIXTURES} ; {_SPEED[family]}", _CUDA_NOTE)),
        )
        for family, patterns in _CUDA_PATTERNS.items()
        for pattern in patterns
    },
    # Metal: rendered and syntax-checked, never run on Apple hardware.
    ("*", "moe_block", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "switch_glu", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "swiglu_mlp", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "qk_norm_rope", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "qkv_norm_rope", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "moe_residual", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "quantized_linear", "metal"): Rule(False, 16, "", "not yet run on Apple hardware"),
    ("*", "mla_attention", "metal"): Rule(False, 1, "", "not yet run on Apple hardware"),
    ("*", "rms_norm", "metal"): Rule(False, None, "", "not yet run on Apple hardware"),
    ("*", "layer_norm", "metal"): Rule(False, None, "", "not yet run on Apple hardware"),
}


def lookup(family: str, pattern: str, backend: str) -> Rule | None:
    """The entry for ``(family, pattern, backend)``, falling back to the ``"*"`` family."""
    return TABLE.get((family, pattern, backend)) or TABLE.get(("*", pattern, backend))


def default_patterns(family: str, backend: str) -> list[str]:
    """The patterns ``patch()`` applies by default to ``family`` on ``backend`` (the entries
    of ``family`` itself that are allowed; ``"*"`` entries included)."""
    names = {p for (f, p, b) in TABLE if b == backend and f in (family, "*")}
    return sorted(p for p in names if (r := lookup(family, p, backend)) and r.allowed)
