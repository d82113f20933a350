"""Compiled decode: each generated token runs as one replay of an ``mx.compile`` graph.

At batch-1 decode an mlx-lm model is bound by the host, not the GPU: for every token Python
walks every module and MLX builds and encodes thousands of small primitives. A graph that is
the same for every token can be traced once and replayed by ``mx.compile`` without Python.
What stops mlx-lm's decode step from being such a graph is the KV cache: its keys grow by
one position a token and its write position is a Python int.

:class:`StaticKVCache` keeps keys and values in a buffer of fixed capacity. Inside a traced
decode step the write position is an array, the step writes with a scatter
(``mx.put_along_axis``) and attends over the whole buffer with a boolean mask (positions not
yet written are masked), so the graph does not change from token to token. :class:`CompiledDecoder` wraps a model: calls
with one token and static caches run the compiled step (the caches' buffers are its captured
state); anything else (prompts, other caches) runs the model eagerly, and the static caches then
behave exactly like mlx-lm's ``KVCache``, so prefill is unchanged.

Use it with mlx-lm's own generation loop (sampling, streaming, stop tokens)::

    decoder = zmlx.decode.compile_decode(model)   # after zmlx.patch(model), or not
    text = mlx_lm.generate(decoder, tokenizer, prompt)  # make_prompt_cache -> static caches

Supported caches: ``KVCache`` (replaced), ``RotatingKVCache`` without kept tokens (replaced by
a static cache with a window mask; it keeps every position instead of rotating) and
``ArraysCache`` (conv/SSM states, compiled as captured state). Models with other caches
(quantized or chunked KV caches, MLA caches with extra arrays) are run eagerly and
:func:`supported` says why. Weights are captured as constants when a step is first traced:
after changing a model's weights, build a new decoder.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import mlx.core as mx

__all__ = ["CompiledDecoder", "StaticKVCache", "compile_decode", "generate", "supported"]

MAX_STEP_TOKENS = 16  # tokens a traced step may write (compiled steps take one)


class _Trace:
    """Shared by a decoder's caches while a decode step is traced: the position (a scalar
    int32 array) and the positions a step's tokens are written to (``offset + arange``, up to
    :data:`MAX_STEP_TOKENS`)."""

    __slots__ = ("offset", "pos")

    def __init__(self) -> None:
        self.offset: mx.array | None = None
        self.pos: mx.array | None = None

    def set(self, offset: mx.array | None) -> None:
        self.offset = offset
        self.pos = (
            None
            if offset is None
            else (offset.astype(mx.int32) + mx.arange(MAX_STEP_TOKENS, dtype=mx.int32))
        )


class StaticKVCache:
    """A KV cache with a fixed-capacity buffer, usable eagerly and inside a compiled step.

    Eagerly it is mlx-lm's ``KVCache`` (same growth, slices and masks). While a decode step is
    traced (:class:`CompiledDecoder`) ``offset`` is an array, :meth:`update_and_fetch` returns
    the whole buffer and :meth:`make_mask` masks the positions past the current one (and before
    the sliding window, if ``window`` is set).

    Args:
        trace: the decoder's shared trace state.
        window: attend to the last ``window`` positions only (sliding-window layers).
        step: growth of the buffer, in positions.
    """

    def __init__(self, trace: _Trace | None = None, window: int | None = None,
                 step: int = 512) -> None:  # fmt: skip
        self.buf: dict[str, mx.array | None] = {"keys": None, "values": None}
        self._offset = 0
        self._trace = trace or _Trace()
        self.window = window
        self.step = step

    # -- mlx-lm cache interface -----------------------------------------------------------

    @property
    def offset(self):
        t = self._trace.offset
        return self._offset if t is None else t

    @offset.setter
    def offset(self, value: int) -> None:
        self._offset = int(value)

    @property
    def keys(self):
        return self.buf["keys"]

    @property
    def values(self):
        return self.buf["values"]

    @property
    def capacity(self) -> int:
        k = self.buf["keys"]
        return 0 if k is None else k.shape[2]

    def reserve(self, total: int, keys: mx.array | None = None,
                values: mx.array | None = None) -> None:  # fmt: skip
        """Grow the buffer (by whole ``step``s) to hold ``total`` positions. ``keys`` and
        ``values`` give the layout when the buffer does not exist yet."""
        if total <= self.capacity:
            return
        k, v = self.buf["keys"], self.buf["values"]
        like_k = k if k is not None else keys
        like_v = v if v is not None else values
        if like_k is None or like_v is None:
            raise ValueError("[StaticKVCache] expected keys and values to size a new buffer")
        cap = math.ceil(total / self.step) * self.step
        extra = cap - self.capacity
        b, h, _, dk = like_k.shape
        new_k = mx.zeros((b, h, extra, dk), like_k.dtype)
        new_v = mx.zeros((b, h, extra, like_v.shape[3]), like_v.dtype)
        if k is None:
            self.buf["keys"], self.buf["values"] = new_k, new_v
        else:
            self.buf["keys"] = mx.concatenate([k, new_k], axis=2)
            self.buf["values"] = mx.concatenate([v, new_v], axis=2)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        n = keys.shape[2]
        t = self._trace.offset
        if t is not None:
            # A scatter along the position axis, not mx.slice_update: MLX's CUDA backend
            # launches a dynamic slice update over the whole buffer (a thread per element of
            # the destination; 13 us a layer at 320 positions, growing with the context,
            # kernel_profile_qwen3_h100.json), a scatter over the update only.
            if n > MAX_STEP_TOKENS:
                raise ValueError(f"[StaticKVCache] expected at most {MAX_STEP_TOKENS} tokens "
                                 f"in a traced step, got {n}")  # fmt: skip
            pos = self._trace.pos
            for name, new in (("keys", keys), ("values", values)):
                idx = mx.broadcast_to(pos[:n].reshape(1, 1, n, 1), new.shape)
                self.buf[name] = mx.put_along_axis(self.buf[name], idx, new, axis=2)
            return self.buf["keys"], self.buf["values"]
        prev = self._offset
        self.reserve(prev + n, keys, values)
        self._offset = prev + n
        self.buf["keys"][..., prev : self._offset, :] = keys
        self.buf["values"][..., prev : self._offset, :] = values
        if self._offset == self.capacity:
            return self.buf["keys"], self.buf["values"]
        return (self.buf["keys"][..., : self._offset, :],
                self.buf["values"][..., : self._offset, :])  # fmt: skip

    def make_mask(self, n: int, window_size: int | None = None, return_array: bool = False):
        window = window_size or self.window
        t = self._trace.offset
        if t is None:
            from mlx_lm.models.cache import create_attention_mask

            return create_attention_mask(n, offset=self._offset, return_array=return_array,
                                         window_size=window)  # fmt: skip
        keys = mx.arange(self.capacity)[None]
        queries = (t + mx.arange(n))[:, None]
        mask = keys <= queries
        if window is not None:
            mask = mask & (keys > queries - window)
        return mask

    @property
    def state(self):
        k, v = self.buf["keys"], self.buf["values"]
        if k is None:
            return []
        return k[..., : self._offset, :], v[..., : self._offset, :]

    def size(self) -> int:
        return self._offset

    def empty(self) -> bool:
        return self.buf["keys"] is None

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self._offset, n)
        self._offset -= n
        return n

    @property
    def nbytes(self) -> int:
        k, v = self.buf["keys"], self.buf["values"]
        return 0 if k is None else k.nbytes + v.nbytes


def _plan_caches(model) -> tuple[list[Any] | None, str]:
    """Static caches for ``model`` (one per layer, like ``make_prompt_cache``), or ``None``
    and the reason."""
    from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

    stock = model.make_cache() if hasattr(model, "make_cache") else None
    if stock is None:
        layers = getattr(model, "layers", None)
        if layers is None:
            return None, "the model has neither make_cache() nor layers"
        stock = [KVCache() for _ in layers]
    trace = _Trace()
    caches: list[Any] = []
    for c in stock:
        if type(c) is KVCache:
            caches.append(StaticKVCache(trace))
        elif type(c) is RotatingKVCache and c.keep == 0:
            caches.append(StaticKVCache(trace, window=c.max_size))
        elif type(c) is ArraysCache:
            caches.append(c)
        else:
            return None, f"cache type {type(c).__name__} has no static form"
    if not any(isinstance(c, StaticKVCache) for c in caches):
        return None, "the model has no KV cache to make static"
    return caches, ""


def supported(model) -> tuple[bool, str]:
    """Whether :func:`compile_decode` can compile ``model``'s decode step, and if not why."""
    caches, why = _plan_caches(model)
    return caches is not None, why


ATTENTION = ("auto", "zmlx", "stock")


def _routed_sdpa(original):
    """mlx-lm's ``scaled_dot_product_attention`` with traced one-token steps over a static
    cache sent to :func:`zmlx.kernels.attention.decode_attention` (one kernel that reads the
    position mask, where ``mx.fast.scaled_dot_product_attention`` with an array mask falls back
    to several unfused ops on CUDA)."""
    from .kernels import attention, routes

    def sdpa(queries, keys, values, cache, scale, mask, sinks=None):
        if (isinstance(cache, StaticKVCache) and cache._trace.offset is not None
                and queries.shape[2] == 1 and isinstance(mask, mx.array)
                and mask.dtype == mx.bool_):  # fmt: skip
            with routes.bypass():  # measured end to end, not per eager op
                return attention.decode_attention(queries, keys, values, scale, mask=mask,
                                                  sinks=sinks)  # fmt: skip
        return original(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)

    sdpa.zmlx_routed = True
    return sdpa


@contextlib.contextmanager
def _attention_routed(model) -> Iterator[None]:
    """While tracing: route the attention of ``model``'s module (and of the modules its
    layers come from) through :func:`_routed_sdpa`."""
    names = {type(model).__module__}
    inner = getattr(model, "model", None)
    if inner is not None:
        names.add(type(inner).__module__)
    for layer in getattr(model, "layers", []) or []:
        names.add(type(layer).__module__)
    swapped = []
    for name in names:
        mod = sys.modules.get(name)
        fn = getattr(mod, "scaled_dot_product_attention", None)
        if fn is None or getattr(fn, "zmlx_routed", False):
            continue
        mod.scaled_dot_product_attention = _routed_sdpa(fn)
        swapped.append((mod, fn))
    try:
        yield
    finally:
        for mod, fn in swapped:
            mod.scaled_dot_product_attention = fn


class CompiledDecoder:
    """``model`` with its one-token steps compiled (see the module docstring).

    Call it like the model: ``decoder(tokens, cache=caches)``. Every other attribute is the
    model's. ``make_cache()`` returns static caches, so mlx-lm's ``generate``,
    ``stream_generate`` and ``generate_step`` use the compiled step without changes.

    Args:
        model: an mlx-lm model (patched by :func:`zmlx.patch` or not).
        attention: ``"zmlx"`` runs the traced step's attention with zmlx's decode-attention
            kernel, ``"stock"`` with mlx-lm's; ``"auto"`` is ``"zmlx"`` on a GPU (Metal or
            CUDA) and ``"stock"`` on the CPU. On an H100, Qwen3-30B-A3B decodes at 148.5
            tok/s with zmlx's attention against 129.4 with mlx-lm's over the static buffer,
            which falls back to five unfused launches a layer
            (moe_decode_qwen3_attention_h100.json).
    """

    def __init__(self, model, attention: str = "auto") -> None:
        if attention not in ATTENTION:
            raise ValueError(f"[compile_decode] expected attention in {ATTENTION}, got "
                             f"{attention!r}")  # fmt: skip
        if attention == "auto":
            from .core.backend import backend

            attention = "zmlx" if backend() in ("metal", "cuda") else "stock"
        self.model = model
        self.attention = attention
        self._fns: dict[tuple, tuple[list[Any], Any]] = {}
        self.steps = 0  # compiled steps run
        self.traces = 0  # times the step was traced (one per cache layout and capacity)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["model"], name)

    def make_cache(self) -> list[Any]:
        caches, why = _plan_caches(self.model)
        if caches is None:
            raise ValueError(f"[compile_decode] expected a model with supported caches: {why}")
        return caches

    def _compiled(self, cache: list[Any]):
        """``(proxies, fn)``: the compiled step for caches laid out like ``cache``.

        The step is traced over the decoder's own proxy caches, whose buffers are its captured
        state; a call copies the caller's buffers in and the results back out. So one trace
        serves every cache list of the same layout (each request of ``mlx_lm.generate`` makes
        a new one), and a new trace happens only when the buffers grow.
        """
        from mlx_lm.models.cache import ArraysCache

        layout = tuple(
            ("kv", c.window) if isinstance(c, StaticKVCache) else ("arrays", len(c.cache))
            for c in cache
        )
        entry = self._fns.get(layout)
        if entry is not None:
            return entry
        trace = _Trace()
        proxies: list[Any] = [
            StaticKVCache(trace, window=c.window) if kind == "kv" else ArraysCache(len(c.cache))
            for (kind, _), c in zip(layout, cache)
        ]
        state: list[Any] = [p.buf if isinstance(p, StaticKVCache) else p.cache for p in proxies]
        model = self.model
        route = self.attention == "zmlx"

        def step(tokens, offset):
            self.traces += 1
            trace.set(offset)
            try:
                with _attention_routed(model) if route else contextlib.nullcontext():
                    return model(tokens, cache=proxies)
            finally:
                trace.set(None)

        fn = mx.compile(step, inputs=state, outputs=state)
        if len(self._fns) > 8:
            self._fns.clear()
        self._fns[layout] = (proxies, fn)
        return proxies, fn

    def _can_compile(self, tokens, cache, kwargs) -> bool:
        from mlx_lm.models.cache import ArraysCache

        if kwargs or cache is None or not isinstance(tokens, mx.array) or tokens.ndim != 2:
            return False
        if tokens.shape != (1, 1):
            return False
        statics = [c for c in cache if isinstance(c, StaticKVCache)]
        if not statics or len(statics) + sum(isinstance(c, ArraysCache) for c in cache) != len(
            cache
        ):
            return False
        if any(c.empty() for c in statics) or len({c._offset for c in statics}) != 1:
            return False
        return all(a is not None for c in cache if isinstance(c, ArraysCache) for a in c.cache)

    def __call__(self, tokens, cache=None, **kwargs):
        if not self._can_compile(tokens, cache, kwargs):
            return self.model(tokens, cache=cache, **kwargs)
        statics = [c for c in cache if isinstance(c, StaticKVCache)]
        pos = statics[0]._offset
        n = tokens.shape[1]
        if tokens.dtype != mx.int32:
            # Prompts arrive as int32 and sampled tokens as uint32: one dtype, one trace.
            tokens = tokens.astype(mx.int32)
        for c in statics:
            c.reserve(pos + n)
        proxies, fn = self._compiled(cache)
        for p, c in zip(proxies, cache):  # the caller's buffers in (moved, not shared, so
            if isinstance(p, StaticKVCache):  # MLX may update them in place)
                p.buf["keys"], p.buf["values"] = c.buf["keys"], c.buf["values"]
                c.buf["keys"] = c.buf["values"] = None
            else:
                p.cache[:] = c.cache
        out = fn(tokens, mx.array(pos, dtype=mx.int32))
        for p, c in zip(proxies, cache):  # the step's results out
            if isinstance(p, StaticKVCache):
                c.buf["keys"], c.buf["values"] = p.buf["keys"], p.buf["values"]
                p.buf["keys"] = p.buf["values"] = None  # hold no reference between steps
                c._offset = pos + n
            else:
                c.cache[:] = p.cache
                p.cache[:] = [None] * len(p.cache)
        self.steps += 1
        return out


def compile_decode(model, attention: str = "auto") -> CompiledDecoder:
    """Wrap ``model`` so that its one-token decode steps run as a compiled graph
    (``attention``: see :class:`CompiledDecoder`).

    Raises:
        ValueError: when the model's caches have no static form (see :func:`supported`).
    """
    ok, why = supported(model)
    if not ok:
        raise ValueError(f"[compile_decode] expected a model with supported caches: {why}")
    if _sharded_on_cuda():
        warnings.warn(
            "[compile_decode] on a model sharded over several CUDA ranks the compiled step has "
            "measured slower than eager decoding (0.24x on 2 H200s with NCCL, "
            "benchmarks/capsules/sharded_decode_qwen3_full_2xh200.json); time both",
            stacklevel=2,
        )
    return CompiledDecoder(model, attention)


def _sharded_on_cuda() -> bool:
    from .core.backend import backend

    if backend() != "cuda" or not mx.distributed.is_available():
        return False
    return mx.distributed.init().size() > 1


def generate(model, prompt, max_tokens: int = 128, *, compiled: bool = True) -> list[int]:
    """Greedy decoding of ``max_tokens`` tokens after ``prompt`` (token ids) with mlx-lm's
    ``generate_step``; ``compiled`` runs it through :func:`compile_decode`."""
    from mlx_lm.generate import generate_step

    if compiled and not isinstance(model, CompiledDecoder):
        model = compile_decode(model)
    prompt = prompt if isinstance(prompt, mx.array) else mx.array(list(prompt))
    return [int(t) for t, _ in generate_step(prompt, model, max_tokens=max_tokens)]
