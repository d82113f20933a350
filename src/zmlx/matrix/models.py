"""The model matrix catalog: real models people run with mlx-lm, as data.

Each :class:`ModelEntry` names the Hugging Face checkpoint (the ``mlx-community`` 4-bit
conversion where one is widely used, else the official repository), its family, mlx-lm
``model_type`` (the ``config.json`` value; mlx-lm may remap it, e.g. ``kimi_k2`` runs as
``deepseek_v3``), total and active parameters in billions (from the model cards), the weight
quantization of that checkpoint, the zmlx patterns its module shapes call for, and the
:mod:`zmlx.models` zoo config of the same architecture and size where one exists.

Patterns are named by module shape: ``moe_block`` (router + experts + combine),
``switch_glu`` (gathered gated experts), ``swiglu_mlp`` / ``geglu_mlp`` (dense gated MLP with
separate ``gate_proj``/``up_proj``; Phi-3 and GLM-4 dense models fuse them into one
``gate_up_proj`` and are not listed), ``rms_norm``, ``layer_norm``, ``rope`` and
``decode_attention`` (grouped-query attention) and ``mla_attention`` (mlx-lm's multi-head
latent attention step of ``deepseek_v3`` and ``glm4_moe_lite``; DeepSeek-V2, V3.2's sparse
attention and the Kimi types are other shapes or unverified families).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PATTERNS: tuple[str, ...] = (
    "moe_block",
    "switch_glu",
    "swiglu_mlp",
    "geglu_mlp",
    "rms_norm",
    "layer_norm",
    "rope",
    "decode_attention",
    "mla_attention",
)
QUANTS: tuple[str, ...] = ("4bit", "6bit", "8bit", "mxfp4", "bf16")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the matrix (see the module docstring for the fields)."""

    name: str
    hf_id: str
    family: str
    model_type: str
    total_params_b: float
    active_params_b: float
    quant: str
    moe: bool
    patterns: tuple[str, ...]
    zoo: str | None = None
    notes: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patterns"] = list(self.patterns)
        return d


_ATTN = ("rms_norm", "rope", "decode_attention")
DENSE = ("swiglu_mlp", *_ATTN)
DENSE_GEGLU = ("geglu_mlp", *_ATTN)
DENSE_FUSED = _ATTN  # gate_up_proj in one matrix: no separate-gate MLP shape
MOE = ("moe_block", "switch_glu", *_ATTN)
MOE_SHARED = (*MOE, "swiglu_mlp")  # shared experts or dense prefix layers
MOE_MLA = ("moe_block", "switch_glu", "swiglu_mlp", "rms_norm", "rope")  # MLA attention
MOE_MLA_DECODE = (*MOE_MLA, "mla_attention")  # mlx-lm's MLA step that mla_attention takes


def _e(name, hf_id, family, model_type, total, active, quant, patterns, zoo=None, notes=""):
    return ModelEntry(
        name, hf_id, family, model_type, total, active, quant, active < total, patterns, zoo,
        notes,
    )  # fmt: skip


MC = "mlx-community/"

CATALOG: tuple[ModelEntry, ...] = (
    # Qwen3 MoE and Qwen3-Next
    _e("Qwen3-30B-A3B", MC + "Qwen3-30B-A3B-4bit", "qwen3", "qwen3_moe", 30.5, 3.3, "4bit", MOE, "qwen3_moe"),
    _e("Qwen3-30B-A3B-Instruct-2507", MC + "Qwen3-30B-A3B-Instruct-2507-4bit", "qwen3", "qwen3_moe", 30.5, 3.3, "4bit", MOE),
    _e("Qwen3-Coder-30B-A3B-Instruct", MC + "Qwen3-Coder-30B-A3B-Instruct-4bit", "qwen3", "qwen3_moe", 30.5, 3.3, "4bit", MOE),
    _e("Qwen3-235B-A22B", MC + "Qwen3-235B-A22B-4bit", "qwen3", "qwen3_moe", 235.0, 22.0, "4bit", MOE),
    _e("Qwen3-235B-A22B-Instruct-2507", MC + "Qwen3-235B-A22B-Instruct-2507-4bit", "qwen3", "qwen3_moe", 235.0, 22.0, "4bit", MOE),
    _e("Qwen3-Coder-480B-A35B-Instruct", MC + "Qwen3-Coder-480B-A35B-Instruct-4bit", "qwen3", "qwen3_moe", 480.0, 35.0, "4bit", MOE),
    _e("Qwen3-Next-80B-A3B-Instruct", MC + "Qwen3-Next-80B-A3B-Instruct-4bit", "qwen3", "qwen3_next", 80.0, 3.0, "4bit", MOE_SHARED, "qwen3_next", "gated DeltaNet + full attention every 4th layer"),
    _e("Qwen3-Next-80B-A3B-Thinking", MC + "Qwen3-Next-80B-A3B-Thinking-4bit", "qwen3", "qwen3_next", 80.0, 3.0, "4bit", MOE_SHARED),
    # Qwen3.5 (hybrid gated DeltaNet; text part of the multimodal checkpoints)
    _e("Qwen3.5-35B-A3B", MC + "Qwen3.5-35B-A3B-4bit", "qwen3_5", "qwen3_5_moe", 35.0, 3.0, "4bit", MOE_SHARED),
    _e("Qwen3.5-122B-A10B", MC + "Qwen3.5-122B-A10B-4bit", "qwen3_5", "qwen3_5_moe", 122.0, 10.0, "4bit", MOE_SHARED),
    _e("Qwen3.5-397B-A17B", MC + "Qwen3.5-397B-A17B-4bit", "qwen3_5", "qwen3_5_moe", 397.0, 17.0, "4bit", MOE_SHARED),
    _e("Qwen3.5-4B", MC + "Qwen3.5-4B-4bit", "qwen3_5", "qwen3_5", 4.0, 4.0, "4bit", DENSE),
    _e("Qwen3.5-9B", MC + "Qwen3.5-9B-4bit", "qwen3_5", "qwen3_5", 9.0, 9.0, "4bit", DENSE),
    # Qwen3 dense
    _e("Qwen3-0.6B", MC + "Qwen3-0.6B-4bit", "qwen3", "qwen3", 0.6, 0.6, "4bit", DENSE),
    _e("Qwen3-1.7B", MC + "Qwen3-1.7B-4bit", "qwen3", "qwen3", 1.7, 1.7, "4bit", DENSE),
    _e("Qwen3-4B", MC + "Qwen3-4B-4bit", "qwen3", "qwen3", 4.0, 4.0, "4bit", DENSE, "qwen3"),
    _e("Qwen3-8B", MC + "Qwen3-8B-4bit", "qwen3", "qwen3", 8.2, 8.2, "4bit", DENSE),
    _e("Qwen3-14B", MC + "Qwen3-14B-4bit", "qwen3", "qwen3", 14.8, 14.8, "4bit", DENSE),
    _e("Qwen3-32B", MC + "Qwen3-32B-4bit", "qwen3", "qwen3", 32.8, 32.8, "4bit", DENSE),
    # Qwen MoE, earlier generations
    _e("Qwen1.5-MoE-A2.7B-Chat", MC + "Qwen1.5-MoE-A2.7B-Chat-4bit", "qwen2", "qwen2_moe", 14.3, 2.7, "4bit", MOE_SHARED),
    _e("Qwen2-57B-A14B-Instruct", "Qwen/Qwen2-57B-A14B-Instruct", "qwen2", "qwen2_moe", 57.4, 14.2, "bf16", MOE_SHARED),
    # LFM2 MoE (gated short convolutions + attention layers; dense first layers)
    _e("LFM2-8B-A1B", MC + "LFM2-8B-A1B-4bit", "lfm2", "lfm2_moe", 8.3, 1.5, "4bit", MOE_SHARED, "lfm2_moe"),
    _e("LFM2-8B-A1B-8bit", MC + "LFM2-8B-A1B-8bit", "lfm2", "lfm2_moe", 8.3, 1.5, "8bit", MOE_SHARED),
    # GLM-4.x
    _e("GLM-4.5", MC + "GLM-4.5-4bit", "glm", "glm4_moe", 355.0, 32.0, "4bit", MOE_SHARED),
    _e("GLM-4.5-Air", MC + "GLM-4.5-Air-4bit", "glm", "glm4_moe", 106.0, 12.0, "4bit", MOE_SHARED),
    _e("GLM-4.6", MC + "GLM-4.6-4bit", "glm", "glm4_moe", 355.0, 32.0, "4bit", MOE_SHARED),
    _e("GLM-4.7", MC + "GLM-4.7-4bit", "glm", "glm4_moe", 355.0, 32.0, "4bit", MOE_SHARED),
    _e("GLM-4.7-Flash", MC + "GLM-4.7-Flash-4bit", "glm", "glm4_moe_lite", 30.0, 3.0, "4bit", MOE_MLA_DECODE, "glm4_moe_lite", "MLA attention"),
    _e("GLM-4-9B-0414", MC + "GLM-4-9B-0414-4bit", "glm", "glm4", 9.4, 9.4, "4bit", DENSE_FUSED),
    # GPT-OSS (experts in MXFP4 as released; the mlx-community Q8 keeps the rest at 8 bits)
    _e("gpt-oss-20b", MC + "gpt-oss-20b-MXFP4-Q8", "gpt_oss", "gpt_oss", 20.9, 3.6, "mxfp4", MOE, "gpt_oss", "clamped SwiGLU (SwigluOAI), attention sinks"),
    _e("gpt-oss-120b", MC + "gpt-oss-120b-MXFP4-Q8", "gpt_oss", "gpt_oss", 116.8, 5.1, "mxfp4", MOE),
    # Mixtral and Mistral
    _e("Mixtral-8x7B-Instruct-v0.1", MC + "Mixtral-8x7B-Instruct-v0.1-4bit", "mistral", "mixtral", 46.7, 12.9, "4bit", MOE, "mixtral"),
    _e("Mixtral-8x22B-Instruct-v0.1", MC + "Mixtral-8x22B-Instruct-v0.1-4bit", "mistral", "mixtral", 141.0, 39.0, "4bit", MOE),
    _e("Mistral-7B-Instruct-v0.3", MC + "Mistral-7B-Instruct-v0.3-4bit", "mistral", "mistral", 7.25, 7.25, "4bit", DENSE),
    _e("Mistral-Nemo-Instruct-2407", MC + "Mistral-Nemo-Instruct-2407-4bit", "mistral", "mistral", 12.2, 12.2, "4bit", DENSE),
    _e("Ministral-8B-Instruct-2410", MC + "Ministral-8B-Instruct-2410-4bit", "mistral", "mistral", 8.0, 8.0, "4bit", DENSE),
    _e("Mistral-Small-24B-Instruct-2501", MC + "Mistral-Small-24B-Instruct-2501-4bit", "mistral", "mistral", 23.6, 23.6, "4bit", DENSE),
    _e("Mistral-Large-Instruct-2407", MC + "Mistral-Large-Instruct-2407-4bit", "mistral", "mistral", 123.0, 123.0, "4bit", DENSE),
    # DeepSeek (MLA attention, shared experts, dense first layers)
    _e("DeepSeek-V2-Lite-Chat", MC + "DeepSeek-V2-Lite-Chat-4bit-mlx", "deepseek", "deepseek_v2", 15.7, 2.4, "4bit", MOE_MLA),
    _e("DeepSeek-V2-Chat", "deepseek-ai/DeepSeek-V2-Chat", "deepseek", "deepseek_v2", 236.0, 21.0, "bf16", MOE_MLA),
    _e("DeepSeek-V3-0324", MC + "DeepSeek-V3-0324-4bit", "deepseek", "deepseek_v3", 671.0, 37.0, "4bit", MOE_MLA_DECODE, "deepseek_v3", "zoo config keeps 8 of 61 layers"),
    _e("DeepSeek-R1-0528", MC + "DeepSeek-R1-0528-4bit", "deepseek", "deepseek_v3", 671.0, 37.0, "4bit", MOE_MLA_DECODE),
    _e("DeepSeek-V3.1", MC + "DeepSeek-V3.1-4bit", "deepseek", "deepseek_v3", 671.0, 37.0, "4bit", MOE_MLA_DECODE),
    _e("DeepSeek-V3.2", MC + "DeepSeek-V3.2-8bit", "deepseek", "deepseek_v32", 671.0, 37.0, "8bit", MOE_MLA, None, "DeepSeek sparse attention"),
    # Kimi (DeepSeek-V3 architecture, and Kimi Linear)
    _e("Kimi-K2-Instruct", MC + "Kimi-K2-Instruct-4bit", "kimi", "kimi_k2", 1000.0, 32.0, "4bit", MOE_MLA, None, "runs as deepseek_v3"),
    _e("Kimi-K2-Thinking", MC + "Kimi-K2-Thinking", "kimi", "kimi_k2", 1000.0, 32.0, "4bit", MOE_MLA, None, "runs as deepseek_v3"),
    _e("Kimi-K2.5", MC + "Kimi-K2.5-4bit", "kimi", "kimi_k25", 1000.0, 32.0, "4bit", MOE_MLA),
    _e("Moonlight-16B-A3B-Instruct", "moonshotai/Moonlight-16B-A3B-Instruct", "kimi", "deepseek_v3", 16.0, 3.0, "bf16", MOE_MLA_DECODE),
    _e("Kimi-Linear-48B-A3B-Instruct", "moonshotai/Kimi-Linear-48B-A3B-Instruct", "kimi", "kimi_linear", 48.0, 3.0, "bf16", MOE_MLA, None, "KDA linear attention + MLA"),
    # OLMoE
    _e("OLMoE-1B-7B-0924", "allenai/OLMoE-1B-7B-0924", "olmo", "olmoe", 6.9, 1.3, "bf16", MOE, "olmoe"),
    _e("OLMoE-1B-7B-0125-Instruct", MC + "OLMoE-1B-7B-0125-Instruct-4bit", "olmo", "olmoe", 6.9, 1.3, "4bit", MOE),
    # Granite MoE (3.x) and Granite 4.0 hybrids (Mamba-2 + attention without RoPE)
    _e("granite-3.0-3b-a800m-instruct", "ibm-granite/granite-3.0-3b-a800m-instruct", "granite", "granitemoe", 3.3, 0.8, "bf16", MOE, "granitemoe"),
    _e("granite-3.1-1b-a400m-instruct", "ibm-granite/granite-3.1-1b-a400m-instruct", "granite", "granitemoe", 1.3, 0.4, "bf16", MOE),
    _e("granite-4.0-h-tiny", MC + "granite-4.0-h-tiny-4bit", "granite", "granitemoehybrid", 7.0, 1.0, "4bit", ("moe_block", "switch_glu", "rms_norm", "decode_attention"), None, "shared MLP has one fused input matrix"),
    _e("granite-4.0-h-small", MC + "granite-4.0-h-small-4bit", "granite", "granitemoehybrid", 32.0, 9.0, "4bit", ("moe_block", "switch_glu", "rms_norm", "decode_attention")),
    _e("granite-4.0-h-micro", MC + "granite-4.0-h-micro-4bit", "granite", "granitemoehybrid", 3.2, 3.2, "4bit", ("swiglu_mlp", "rms_norm", "decode_attention")),
    # MiniMax
    _e("MiniMax-M2", MC + "MiniMax-M2-4bit", "minimax", "minimax_m2", 230.0, 10.0, "4bit", MOE, "minimax"),
    _e("MiniMax-M2.1", MC + "MiniMax-M2.1-4bit", "minimax", "minimax_m2", 230.0, 10.0, "4bit", MOE),
    _e("MiniMax-M2.5", MC + "MiniMax-M2.5-4bit", "minimax", "minimax_m2", 230.0, 10.0, "4bit", MOE),
    # Llama 3.x and Llama 4
    _e("Llama-3.2-1B-Instruct", MC + "Llama-3.2-1B-Instruct-4bit", "llama", "llama", 1.24, 1.24, "4bit", DENSE),
    _e("Llama-3.2-3B-Instruct", MC + "Llama-3.2-3B-Instruct-4bit", "llama", "llama", 3.21, 3.21, "4bit", DENSE),
    _e("Meta-Llama-3-8B-Instruct", MC + "Meta-Llama-3-8B-Instruct-4bit", "llama", "llama", 8.03, 8.03, "4bit", DENSE),
    _e("Llama-3.1-8B-Instruct", MC + "Meta-Llama-3.1-8B-Instruct-4bit", "llama", "llama", 8.03, 8.03, "4bit", DENSE, "llama"),
    _e("Llama-3.1-70B-Instruct", MC + "Meta-Llama-3.1-70B-Instruct-4bit", "llama", "llama", 70.6, 70.6, "4bit", DENSE),
    _e("Llama-3.3-70B-Instruct", MC + "Llama-3.3-70B-Instruct-4bit", "llama", "llama", 70.6, 70.6, "4bit", DENSE),
    _e("Llama-4-Scout-17B-16E-Instruct", MC + "Llama-4-Scout-17B-16E-Instruct-4bit", "llama", "llama4", 109.0, 17.0, "4bit", MOE_SHARED, None, "chunked attention, NoPE every 4th layer"),
    _e("Llama-4-Maverick-17B-128E-Instruct", MC + "Llama-4-Maverick-17B-128E-Instruct-6bit", "llama", "llama4", 400.0, 17.0, "6bit", MOE_SHARED),
    # Gemma 2, 3 and 4 (GeGLU MLPs)
    _e("gemma-2-2b-it", MC + "gemma-2-2b-it-4bit", "gemma", "gemma2", 2.6, 2.6, "4bit", DENSE_GEGLU),
    _e("gemma-2-9b-it", MC + "gemma-2-9b-it-4bit", "gemma", "gemma2", 9.2, 9.2, "4bit", DENSE_GEGLU),
    _e("gemma-2-27b-it", MC + "gemma-2-27b-it-4bit", "gemma", "gemma2", 27.2, 27.2, "4bit", DENSE_GEGLU),
    _e("gemma-3-1b-it", MC + "gemma-3-1b-it-4bit", "gemma", "gemma3_text", 1.0, 1.0, "4bit", DENSE_GEGLU),
    _e("gemma-3-4b-it", MC + "gemma-3-4b-it-4bit", "gemma", "gemma3", 4.3, 4.3, "4bit", DENSE_GEGLU),
    _e("gemma-3-12b-it", MC + "gemma-3-12b-it-4bit", "gemma", "gemma3", 12.2, 12.2, "4bit", DENSE_GEGLU),
    _e("gemma-3-27b-it", MC + "gemma-3-27b-it-4bit", "gemma", "gemma3", 27.4, 27.4, "4bit", DENSE_GEGLU),
    _e("gemma-4-26b-a4b-it", MC + "gemma-4-26b-a4b-it-4bit", "gemma", "gemma4", 26.0, 4.0, "4bit", ("moe_block", "switch_glu", "geglu_mlp", *_ATTN), None, "dense GeGLU MLP beside the experts"),
    # Phi
    _e("Phi-3-mini-4k-instruct", MC + "Phi-3-mini-4k-instruct-4bit", "phi", "phi3", 3.8, 3.8, "4bit", DENSE_FUSED),
    _e("Phi-3.5-mini-instruct", MC + "Phi-3.5-mini-instruct-4bit", "phi", "phi3", 3.8, 3.8, "4bit", DENSE_FUSED),
    _e("Phi-3.5-MoE-instruct", MC + "Phi-3.5-MoE-instruct-4bit", "phi", "phimoe", 41.9, 6.6, "4bit", ("moe_block", "switch_glu", "layer_norm", "rope", "decode_attention"), None, "LayerNorm, sparsemixer routing"),
    _e("phi-4", MC + "phi-4-4bit", "phi", "phi3", 14.7, 14.7, "4bit", DENSE_FUSED),
    _e("Phi-4-mini-instruct", MC + "Phi-4-mini-instruct-4bit", "phi", "phi3", 3.8, 3.8, "4bit", DENSE_FUSED),
    # Other MoE families mlx-lm runs
    _e("ERNIE-4.5-21B-A3B-PT", MC + "ERNIE-4.5-21B-A3B-PT-4bit", "ernie", "ernie4_5_moe", 21.0, 3.0, "4bit", MOE_SHARED),
)  # fmt: skip


def entries(filters: list[str] | tuple[str, ...] = ()) -> list[ModelEntry]:
    """Catalog entries matching any filter (case-insensitive substring of name, HF id, family,
    model_type or zoo name); all entries when ``filters`` is empty."""
    if not filters:
        return list(CATALOG)
    fs = [f.lower() for f in filters]

    def hit(e: ModelEntry) -> bool:
        text = " ".join([e.name, e.hf_id, e.family, e.model_type, e.zoo or ""]).lower()
        return any(f in text for f in fs)

    return [e for e in CATALOG if hit(e)]


def by_name(name: str) -> ModelEntry:
    for e in CATALOG:
        if e.name == name:
            return e
    raise KeyError(f"[matrix] no model named {name!r}")
