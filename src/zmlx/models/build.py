"""Random-weight mlx-lm models of every zoo family, built offline, quantized as mlx-lm does.

``build(name, size, quant)`` makes the mlx-lm ``Model`` of a family from its zoo config (no
download), casts it and quantizes it with ``mlx_lm.utils.quantize_model``, so each family's own
``quant_predicate`` decides which layers get which bits (most routers at 8 bits, ``MoEGate``
left in float, layers whose input size is not a multiple of the group size skipped).

Full-size models never exist in float at once. MLX is lazy: constructing the model and quantizing
it only records graphs. For ``size="full"`` the packed weights, scales and biases of every
quantized layer are then replaced by random arrays of the same shapes and dtypes (uniform codes,
scales set so each layer's weights have the spread of its float initialisation), so the float
weights of quantized layers are never computed; what stays in float (norms, ``MoEGate``, biases)
is evaluated one decoder layer at a time. Tiny models quantize their real random float weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from .configs import get_config

# quant name -> quantize_model arguments (mlx-lm's defaults for each mode).
QUANT = {
    "4bit": dict(mode="affine", bits=4, group_size=64),
    "8bit": dict(mode="affine", bits=8, group_size=64),
    "mxfp4": dict(mode="mxfp4", bits=4, group_size=32),
}
# Root-mean-square of the 16 e2m1 (fp4) code values, each code equally likely.
_FP4_RMS = math.sqrt((0 + 0.25 + 1 + 2.25 + 4 + 9 + 16 + 36) / 8)
_CONFIG_ATTR = "_zmlx_config"


def _model_classes(config: dict[str, Any]):
    from mlx_lm.utils import _get_classes

    return _get_classes(config)


def config_of(model: nn.Module) -> dict[str, Any]:
    """The config (``config.json`` contents) a zoo model was built or quantized with."""
    text = getattr(model, _CONFIG_ATTR, None)
    if text is None:
        raise ValueError("[models] expected a model made by zmlx.models.build (it has no config)")
    return json.loads(text)


def _set_config(model: nn.Module, config: dict[str, Any]) -> None:
    # A str attribute stays out of the parameter tree (a dict would become a child there).
    setattr(model, _CONFIG_ATTR, json.dumps(config))


def _cast(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast floating parameters as ``mlx_lm.convert`` does (honouring ``cast_predicate``)."""
    keep = getattr(model, "cast_predicate", lambda _: True)

    def cast(path, v):
        return v.astype(dtype) if keep(path) and mx.issubdtype(v.dtype, mx.floating) else v

    model.update(tree_map_with_path(cast, model.parameters()))


def quantize(
    model: nn.Module,
    quant: str,
    config: dict[str, Any] | None = None,
    group_size: int | None = None,
) -> nn.Module:
    """Quantize ``model`` in place the way ``mlx_lm.convert -q`` would for its family.

    Args:
        model: an mlx-lm model (float parameters).
        quant: ``"4bit"`` (affine, group 64), ``"8bit"`` (affine, group 64) or ``"mxfp4"``.
        config: its config; defaults to the one :func:`build` attached.
        group_size: another group size for the affine modes (mxfp4's is fixed at 32).

    Returns:
        The same model; its attached config gains mlx-lm's ``quantization`` entry.
    """
    from mlx_lm.utils import quantize_model

    if quant not in QUANT:
        raise ValueError(f"[models.quantize] expected quant in {list(QUANT)}, got {quant!r}")
    config = config_of(model) if config is None else config
    kw = dict(QUANT[quant])
    if group_size is not None:
        if kw["mode"] == "affine":
            kw["group_size"] = group_size
        kw["quant_predicate"] = _with_group_size(getattr(model, "quant_predicate", None),
                                                 group_size)  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints the bits per weight
        model, config = quantize_model(model, config, **kw)
    _set_config(model, config)
    return model


def backend_group_size(backend: str | None = None) -> int | None:
    """The affine group size for the 64-wide tiny models and trained fixtures on ``backend``
    (default: the current one): 32 on CUDA, else None (mlx-lm's 64).

    With 64-wide layers a group of 64 is a whole row, and MLX 0.32.4's CUDA
    ``quantized_matmul`` computes that layout wrongly for more than one token
    (nondeterministically at 8 bits); at 32 it is right
    (``benchmarks/capsules/stock_probes_qmm_widths_h200.json``).
    """
    from ..core.backend import gpu_backend

    return 32 if (backend or gpu_backend()) == "cuda" else None


def _with_group_size(predicate, group_size: int):
    """``predicate`` (a family's ``quant_predicate``) with its affine layers' own parameters
    (routers at 8 bits, say) taking ``group_size`` too."""

    def wrapped(path: str, module: nn.Module):
        got = True if predicate is None else predicate(path, module)
        if isinstance(got, dict) and got.get("mode", "affine") == "affine":
            got = {**got, "group_size": group_size}
        return got

    return wrapped


def _is_quantized(m: nn.Module) -> bool:
    return hasattr(m, "bits") and hasattr(m, "mode") and "scales" in m


_HASH = (0x7FEB352D, 0x846CA68B)  # lowbias32 (Chris Wellons' integer hash) multipliers


@mx.compile
def _hash_words(rows: mx.array, cols: mx.array, ncols: mx.array, seed: mx.array) -> mx.array:
    x = rows * ncols + cols + seed  # uint32, wraps
    x = (x ^ (x >> 16)) * _HASH[0]
    x = (x ^ (x >> 15)) * _HASH[1]
    return x ^ (x >> 16)


def random_words(shape: tuple[int, ...]) -> mx.array:
    """Uniform random uint32 words of ``shape``, from MLX's seeded generator.

    A hash of each word's index in one fused (compiled) kernel: no temporary larger than the
    output, where ``mx.random.randint`` draws through a float32 array four times the size of
    the packed weights (and its float path leaves the low bits of uint32 draws zero).
    """
    rows = mx.arange(math.prod(shape[:-1]), dtype=mx.uint32).reshape(*shape[:-1], 1)
    cols = mx.arange(shape[-1], dtype=mx.uint32)
    seed = mx.random.randint(0, 2**31 - 1, (), dtype=mx.int32).astype(mx.uint32)
    return _hash_words(rows, cols, mx.array(shape[-1], dtype=mx.uint32), seed)


def _randomize_packed(m: nn.Module) -> None:
    """Replace a quantized layer's packed weight, scales and biases by random ones (no float)."""
    w, scales = m["weight"], m["scales"]
    in_dims = w.shape[-1] * 32 // m.bits
    # Spread of the float init: normal(1/sqrt(d)) for embeddings, uniform(+-1/sqrt(d)) otherwise.
    std = (
        1 / math.sqrt(in_dims)
        if isinstance(m, nn.QuantizedEmbedding)
        else 1 / math.sqrt(3 * in_dims)
    )
    m["weight"] = random_words(w.shape)
    jitter = mx.random.uniform(0.5, 1.5, scales.shape)
    if m.mode == "affine":
        levels = 2**m.bits - 1
        s = jitter * (std / math.sqrt(levels * (levels + 2) / 12))
        m["scales"] = s.astype(scales.dtype)
        m["biases"] = (-s * levels / 2).astype(m["biases"].dtype)
    elif m.mode == "mxfp4":
        exponent = 127 + round(math.log2(std / _FP4_RMS))
        m["scales"] = (exponent + mx.floor(jitter * 2 - 2)).astype(mx.uint8)  # 2^-1 or 2^0 jitter
    else:
        raise ValueError(f"[models.build] no random packing for mode {m.mode!r}")


SELECTION_BIASES = ("e_score_correction_bias", "expert_bias")
"""Routers' selection-only biases; trained models hold distinct values there."""


def _init_raw_routers(model: nn.Module) -> None:
    # MoEGate (deepseek, glm4) starts from zeros, which routes every token to the same experts.
    for _, m in model.named_modules():
        if "e_score_correction_bias" in m and "weight" in m and not hasattr(m, "to_quantized"):
            bound = 1 / math.sqrt(m["weight"].shape[-1])
            m["weight"] = mx.random.uniform(-bound, bound, m["weight"].shape)
        # Zero selection biases plus scores rounded to bf16 make exact ties among experts,
        # which trained models (distinct float32 biases) do not have; ties leave the choice
        # to each backend's argpartition. Small distinct biases keep routing well defined.
        for name in SELECTION_BIASES:
            b = m.get(name) if isinstance(m, dict) else None
            if isinstance(b, mx.array) and b.ndim == 1 and mx.issubdtype(b.dtype, mx.floating):
                m[name] = mx.random.uniform(-0.02, 0.02, b.shape).astype(b.dtype)


def _eval_by_layer(model: nn.Module) -> None:
    # One decoder layer at a time keeps the float temporaries of a single layer alive at most.
    for layer in getattr(model, "layers", []):
        mx.eval(layer.parameters())
    mx.eval(model.parameters())


def build(
    name: str,
    size: str = "tiny",
    quant: str | None = None,
    seed: int = 0,
    *,
    dtype: mx.Dtype | None = None,
    num_layers: int | None = None,
    random_packed: bool | None = None,
) -> nn.Module:
    """Build a random-weight mlx-lm model of a zoo family, without downloading anything.

    Args:
        name: a family of :data:`zmlx.models.FAMILIES` (e.g. ``"qwen3_moe"``).
        size: ``"tiny"`` (hidden 64, for tests) or ``"full"`` (the real model's shapes).
        quant: ``None``, ``"4bit"``, ``"8bit"`` or ``"mxfp4"``; quantized with the family's
            own ``quant_predicate`` through ``mlx_lm.utils.quantize_model``.
        seed: seeds MLX's generator before the weights are drawn.
        dtype: float dtype of unquantized parameters; default float32 for tiny (the CPU's
            ``gather_mm`` is float32 only) and bfloat16 for full.
        num_layers: override the number of decoder layers (e.g. a shallow full-size model).
        random_packed: draw quantized layers' packed weights and scales directly instead of
            quantizing float weights; default on for full size only.

    Returns:
        The model, evaluated, in eval mode; :func:`config_of` gives its config.
    """
    model = _construct(name, size, quant, seed, dtype, num_layers, random_packed)
    _eval_by_layer(model)
    model.eval()
    return model


def estimate_bytes(
    name: str, size: str = "full", quant: str | None = None, *, num_layers: int | None = None
) -> int:
    """Parameter bytes :func:`build` would hold, computed from shapes alone (nothing evaluated)."""
    return parameter_bytes(_construct(name, size, quant, None, None, num_layers, False))


def _construct(name, size, quant, seed, dtype, num_layers, random_packed) -> nn.Module:
    """The model as lazy graphs: constructed, cast and quantized, nothing evaluated yet."""
    config = get_config(name, size)
    if num_layers is not None:
        config = _with_layers(config, num_layers)
    dtype = dtype or (mx.float32 if size == "tiny" else mx.bfloat16)
    if seed is not None:  # None: shapes only, leave the caller's generator alone
        mx.random.seed(seed)
    model_cls, args_cls = _model_classes(config)
    model = model_cls(args_cls.from_dict(config))
    _init_raw_routers(model)
    _set_config(model, config)
    _cast(model, dtype)
    if quant is not None:
        gs = backend_group_size() if size == "tiny" else None
        model = quantize(model, quant, config, group_size=gs)
        if size == "full" if random_packed is None else random_packed:
            for _, m in model.named_modules():
                if _is_quantized(m):
                    _randomize_packed(m)
    return model


def _with_layers(config: dict[str, Any], n: int) -> dict[str, Any]:
    if n < 1:
        raise ValueError(f"[models.build] expected num_layers >= 1, got {n}")
    config["num_hidden_layers"] = n
    if isinstance(config.get("layer_types"), list):
        types = config["layer_types"]
        config["layer_types"] = [types[i % len(types)] for i in range(n)]
    return config


def save(
    model: nn.Module,
    path: str | Path,
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a directory that ``mlx_lm.load(path)`` reads.

    Args:
        model: a model from :func:`build` (or any mlx-lm model, with ``config``).
        path: the directory (created).
        tokenizer: a Hugging Face tokenizer (anything with ``save_pretrained``); default, a
            byte-level tokenizer (:func:`zmlx.models.tokenizer.byte_tokenizer`).
        config: the config to write; default, the one :func:`build` attached.

    Returns:
        The directory: ``config.json``, ``model.safetensors`` and the tokenizer files.
    """
    from mlx_lm.utils import save_config, save_model

    from .tokenizer import byte_tokenizer, save_tokenizer

    path = Path(path)
    config = config_of(model) if config is None else dict(config)
    save_model(path, model)
    save_config(config, config_path=path / "config.json")
    save_tokenizer(tokenizer or byte_tokenizer(), path)
    return path


def parameter_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters (packed sizes for quantized layers)."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))
