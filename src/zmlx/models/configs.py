"""Configs of the model zoo: the real full-size config of each family and a tiny variant.

Full-size values are those of each model's public Hugging Face ``config.json`` (the keys mlx-lm's
``ModelArgs`` reads, plus ``architectures``), written from memory and checked against mlx-lm
0.32.2's ``ModelArgs`` defaults where it has them. A ``# reconstruction`` comment marks a value
that could not be checked against a published file here and is a best reconstruction.

Tiny variants keep each family's structure (block classes, router kind, shared experts, dense
prefix layers, attention kinds, RoPE kind) at hidden size 64, with every input dimension a
multiple of 64 so 4-bit (group 64), 8-bit and mxfp4 (group 32) quantize the same layers as at full
size. They have 8 experts (16 for deepseek_v3, to keep its group-limited routing), top-k
``min(real top-k, 4)`` and a 1024-token vocabulary (the fixtures' byte-level BPE tokenizer).
"""

from __future__ import annotations

import copy
from typing import Any

TINY_VOCAB = 1024
TINY_EOS = 0  # id of EOS in the zoo tokenizers (zmlx.models.tokenizer)

# Real model each family's full-size config reproduces.
SOURCES: dict[str, str] = {
    "qwen3_moe": "Qwen/Qwen3-30B-A3B",
    "lfm2_moe": "LiquidAI/LFM2-8B-A1B",
    "glm4_moe_lite": "zai-org/GLM-4.7-Flash",
    "gpt_oss": "openai/gpt-oss-20b",
    "mixtral": "mistralai/Mixtral-8x7B-v0.1",
    "deepseek_v3": "deepseek-ai/DeepSeek-V3 (8 of 61 layers)",
    "olmoe": "allenai/OLMoE-1B-7B-0924",
    "qwen3_next": "Qwen/Qwen3-Next-80B-A3B-Instruct",
    "granitemoe": "ibm-granite/granite-3.0-3b-a800m-base",
    "minimax": "MiniMaxAI/MiniMax-M2",
    "qwen3": "Qwen/Qwen3-4B",
    "llama": "meta-llama/Llama-3.1-8B",
}

_YARN_GPT_OSS = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
_YARN_DEEPSEEK = {
    "type": "yarn",
    "factor": 40,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
}
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _lfm2_layer_types(n: int, attention: list[int]) -> list[str]:
    return ["full_attention" if i in attention else "conv" for i in range(n)]


FULL: dict[str, dict[str, Any]] = {
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        architectures=["Qwen3MoeForCausalLM"],
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=128,
        num_experts_per_tok=8,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
    ),
    "lfm2_moe": dict(
        model_type="lfm2_moe",
        architectures=["Lfm2MoeForCausalLM"],
        vocab_size=65536,
        hidden_size=2048,
        intermediate_size=7168,
        moe_intermediate_size=1792,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_experts=32,
        num_experts_per_tok=4,
        num_dense_layers=2,
        norm_topk_prob=True,
        use_expert_bias=True,
        routed_scaling_factor=1.0,
        norm_eps=1e-5,
        conv_bias=False,
        conv_L_cache=3,
        rope_theta=1000000.0,
        max_position_embeddings=128000,
        # reconstruction: 6 attention layers among 24 (18 short-conv), positions as recalled.
        layer_types=_lfm2_layer_types(24, [2, 6, 10, 14, 18, 21]),
        tie_word_embeddings=True,
    ),
    # Values match mlx-lm 0.32.2's glm4_moe_lite ModelArgs defaults (written for GLM-4.7-Flash).
    "glm4_moe_lite": dict(
        model_type="glm4_moe_lite",
        architectures=["Glm4MoeLiteForCausalLM"],
        vocab_size=154880,
        hidden_size=2048,
        intermediate_size=10240,
        moe_intermediate_size=1536,
        num_hidden_layers=47,
        num_attention_heads=20,
        num_key_value_heads=20,
        n_routed_experts=64,
        n_shared_experts=1,
        num_experts_per_tok=4,
        routed_scaling_factor=1.8,
        n_group=1,
        topk_group=1,
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        norm_topk_prob=True,
        first_k_dense_replace=1,
        moe_layer_freq=1,
        q_lora_rank=768,
        kv_lora_rank=512,
        qk_nope_head_dim=192,
        qk_rope_head_dim=64,
        v_head_dim=256,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        max_position_embeddings=202752,
        partial_rotary_factor=1.0,
        attention_bias=False,
        tie_word_embeddings=False,
        num_nextn_predict_layers=1,
    ),
    "gpt_oss": dict(
        model_type="gpt_oss",
        architectures=["GptOssForCausalLM"],
        vocab_size=201088,
        hidden_size=2880,
        intermediate_size=2880,
        num_hidden_layers=24,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=64,
        num_local_experts=32,
        num_experts_per_tok=4,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"] * 12,
        rms_norm_eps=1e-5,
        rope_theta=150000,
        rope_scaling=_YARN_GPT_OSS,
        max_position_embeddings=131072,
        swiglu_limit=7.0,
        tie_word_embeddings=False,
    ),
    "mixtral": dict(
        model_type="mixtral",
        architectures=["MixtralForCausalLM"],
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=8,
        num_experts_per_tok=2,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    ),
    # Real DeepSeek-V3 has 61 layers (3 dense + 58 MoE, 671 B parameters, about 380 GB at 4 bits);
    # the zoo keeps every per-layer size and cuts the depth to 8 (3 dense + 5 MoE) to fit one GPU.
    "deepseek_v3": dict(
        model_type="deepseek_v3",
        architectures=["DeepseekV3ForCausalLM"],
        vocab_size=129280,
        hidden_size=7168,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=128,
        num_key_value_heads=128,
        n_routed_experts=256,
        n_shared_experts=1,
        num_experts_per_tok=8,
        routed_scaling_factor=2.5,
        n_group=8,
        topk_group=4,
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        norm_topk_prob=True,
        first_k_dense_replace=3,
        moe_layer_freq=1,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=_YARN_DEEPSEEK,
        max_position_embeddings=163840,
        attention_bias=False,
        tie_word_embeddings=False,
    ),
    "olmoe": dict(
        model_type="olmoe",
        architectures=["OlmoeForCausalLM"],
        vocab_size=50304,
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_experts=64,
        num_experts_per_tok=8,
        norm_topk_prob=False,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
    "qwen3_next": dict(
        model_type="qwen3_next",
        architectures=["Qwen3NextForCausalLM"],
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=5120,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=2,
        head_dim=256,
        linear_num_value_heads=32,
        linear_num_key_heads=16,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_conv_kernel_dim=4,
        full_attention_interval=4,
        num_experts=512,
        num_experts_per_tok=10,
        moe_intermediate_size=512,
        shared_expert_intermediate_size=512,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        rms_norm_eps=1e-6,
        rope_theta=10000000.0,
        partial_rotary_factor=0.25,
        max_position_embeddings=262144,
        tie_word_embeddings=False,
    ),
    # reconstruction: granite-3.0-3b-a800m values as recalled (40 experts, top-8, muP multipliers).
    "granitemoe": dict(
        model_type="granitemoe",
        architectures=["GraniteMoeForCausalLM"],
        vocab_size=49155,
        hidden_size=1536,
        intermediate_size=512,
        num_hidden_layers=32,
        num_attention_heads=24,
        num_key_value_heads=8,
        num_local_experts=40,
        num_experts_per_tok=8,
        embedding_multiplier=12.0,
        logits_scaling=6.0,
        residual_multiplier=0.22,
        attention_multiplier=0.015625,
        attention_bias=False,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    # MiniMax-M2 (229 B parameters, about 130 GB at 4 bits: more than one 80 GB GPU holds).
    "minimax": dict(
        model_type="minimax_m2",
        architectures=["MiniMaxM2ForCausalLM"],
        vocab_size=200064,
        hidden_size=3072,
        intermediate_size=1536,
        num_hidden_layers=62,
        num_attention_heads=48,
        num_key_value_heads=8,
        head_dim=128,
        rotary_dim=64,
        num_local_experts=256,
        num_experts_per_tok=8,
        shared_intermediate_size=0,
        scoring_func="sigmoid",
        use_qk_norm=True,
        rms_norm_eps=1e-6,
        rope_theta=5000000.0,
        max_position_embeddings=196608,
        tie_word_embeddings=False,
    ),
    "qwen3": dict(
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
    ),
    "llama": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
    ),
}

# Per-family changes from FULL for the tiny variant (every other key is kept).
_ATTN = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
_MLA = dict(
    num_attention_heads=2,
    num_key_value_heads=2,
    q_lora_rank=64,
    kv_lora_rank=64,
    qk_nope_head_dim=64,
    qk_rope_head_dim=16,
    v_head_dim=64,
)
_TINY_CHANGES: dict[str, dict[str, Any]] = {
    "qwen3_moe": dict(
        _ATTN,
        num_hidden_layers=2,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_experts=8,
        num_experts_per_tok=4,
    ),
    "lfm2_moe": dict(
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_experts=8,
        num_dense_layers=1,
        layer_types=_lfm2_layer_types(3, [1]),
    ),
    "glm4_moe_lite": dict(
        _MLA,
        num_hidden_layers=2,
        intermediate_size=128,
        moe_intermediate_size=64,
        n_routed_experts=8,
        num_nextn_predict_layers=0,
    ),
    "gpt_oss": dict(
        _ATTN,
        num_hidden_layers=2,
        intermediate_size=64,
        num_local_experts=8,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "mixtral": dict(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    ),
    # 16 experts in 4 groups, 2 groups kept: the group-limited selection still decides.
    "deepseek_v3": dict(
        _MLA,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        intermediate_size=128,
        moe_intermediate_size=64,
        n_routed_experts=16,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
    ),
    "olmoe": dict(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        num_experts=8,
        num_experts_per_tok=4,
    ),
    # full_attention_interval 2: layer 0 is gated-delta linear attention, layer 1 full attention.
    "qwen3_next": dict(
        _ATTN,
        num_hidden_layers=2,
        full_attention_interval=2,
        intermediate_size=128,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        num_experts=8,
        num_experts_per_tok=4,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=64,
    ),
    "granitemoe": dict(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_local_experts=8,
        num_experts_per_tok=4,
        attention_multiplier=1 / 16,  # 1/head_dim, as 0.015625 is for the real head_dim 64
    ),
    "minimax": dict(
        _ATTN,
        num_hidden_layers=2,
        intermediate_size=64,
        rotary_dim=8,
        num_local_experts=8,
        num_experts_per_tok=4,
    ),
    "qwen3": dict(_ATTN, num_hidden_layers=2, intermediate_size=128),
    "llama": dict(_ATTN, num_hidden_layers=2, intermediate_size=128),
}

TINY: dict[str, dict[str, Any]] = {
    name: {
        **copy.deepcopy(FULL[name]),
        "hidden_size": 64,
        "vocab_size": TINY_VOCAB,
        "bos_token_id": TINY_EOS,
        "eos_token_id": TINY_EOS,
        **copy.deepcopy(_TINY_CHANGES[name]),
    }
    for name in FULL
}

FAMILIES: tuple[str, ...] = tuple(FULL)
MOE_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in ("qwen3", "llama"))


def get_config(name: str, size: str = "tiny") -> dict[str, Any]:
    """A fresh copy of the config of family ``name`` at ``size`` (``"tiny"`` or ``"full"``)."""
    if name not in FULL:
        raise ValueError(f"[models] expected a family in {list(FAMILIES)}, got {name!r}")
    if size not in ("tiny", "full"):
        raise ValueError(f"[models] expected size 'tiny' or 'full', got {size!r}")
    return copy.deepcopy((TINY if size == "tiny" else FULL)[name])
