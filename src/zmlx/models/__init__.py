"""Offline model zoo: real configs of mlx-lm model families, random-weight builders, fixtures.

    from zmlx.models import build, save
    model = build("qwen3_moe", "tiny", quant="4bit")     # random weights, no download
    save(model, "/tmp/qwen3_moe_tiny")                  # mlx_lm.load("/tmp/qwen3_moe_tiny")

    from zmlx.models import fixtures
    model, tokenizer = fixtures.load("qwen3_moe")       # a tiny trained checkpoint

Needs the ``lm`` extra (mlx-lm, tokenizers).
"""

from . import fixtures
from .build import QUANT, build, config_of, estimate_bytes, parameter_bytes, quantize, save
from .configs import FAMILIES, FULL, MOE_FAMILIES, SOURCES, TINY, get_config
from .structure import MoEBlockInfo, moe_blocks

__all__ = [
    "FAMILIES",
    "FULL",
    "MOE_FAMILIES",
    "QUANT",
    "SOURCES",
    "TINY",
    "MoEBlockInfo",
    "build",
    "config_of",
    "estimate_bytes",
    "fixtures",
    "get_config",
    "moe_blocks",
    "parameter_bytes",
    "quantize",
    "save",
]
