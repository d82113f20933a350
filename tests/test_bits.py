"""Bit packing: MLX's quantized layout, round trips, masking, errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from zmlx.kernels.bits import pack_bits, unpack_bits
from zmlx.testing import assert_close


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_layout_is_mlx_quantized_layout(bits, rng):
    w = mx.array(rng.normal(size=(6, 128)).astype(np.float32))
    wq, scales, biases = mx.quantize(w, group_size=64, bits=bits)
    # Dequantizing with scale 1 and bias 0 yields MLX's own integer codes.
    codes = mx.dequantize(wq, mx.ones_like(scales), mx.zeros_like(biases), 64, bits)
    codes = codes.astype(mx.uint8)
    assert_close(unpack_bits(wq, bits), codes, atol=0, rtol=0)
    assert_close(pack_bits(codes, bits), wq, atol=0, rtol=0)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_round_trip_and_little_end_first(bits, rng):
    v = mx.array(rng.integers(0, 1 << bits, size=(3, 2, 64)).astype(np.uint8))
    packed = pack_bits(v, bits)
    assert packed.shape == (3, 2, 64 * bits // 32) and packed.dtype == mx.uint32
    assert_close(unpack_bits(packed, bits), v, atol=0, rtol=0)
    first = np.array(v)[..., 0].astype(np.uint32)
    assert (np.array(packed)[..., 0] & ((1 << bits) - 1) == first).all()


def test_values_are_masked_and_dtypes_follow_the_request():
    v = mx.array([[255, 1, -1, 7, 16, 17, 3, 2]], dtype=mx.int32)
    got = unpack_bits(pack_bits(v, 4), 4, dtype=mx.int32)
    assert got.dtype == mx.int32
    assert got.tolist() == [[15, 1, 15, 7, 0, 1, 3, 2]]


def test_errors():
    with pytest.raises(ValueError, match=r"\[pack_bits\] expected bits in \(1, 2, 4, 8\), got 3"):
        pack_bits(mx.zeros((4, 32), dtype=mx.uint8), 3)
    with pytest.raises(ValueError, match=r"\[pack_bits\] expected a last axis that is a multiple"):
        pack_bits(mx.zeros((4, 12), dtype=mx.uint8), 4)
    with pytest.raises(TypeError, match=r"\[pack_bits\] expected 'values' to be an integer"):
        pack_bits(mx.zeros((4, 8)), 4)
    with pytest.raises(TypeError, match=r"\[unpack_bits\] expected 'packed' to be uint32"):
        unpack_bits(mx.zeros((4, 8), dtype=mx.int32), 4)
    with pytest.raises(TypeError, match=r"\[unpack_bits\] expected an integer output dtype"):
        unpack_bits(mx.zeros((4, 8), dtype=mx.uint32), 4, dtype=mx.float32)
