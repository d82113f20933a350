"""zmlx.bench.variants: the one table of decode variants that moe_decode.py and
kernel_profile.py take."""

from __future__ import annotations

import importlib

import pytest

from zmlx.bench import variants as V
from zmlx.kernels import quant_kernels as qk


def test_every_setting_names_a_zmlx_constant():
    for name, v in V.VARIANTS.items():
        for key, value in v.settings:
            mod, attr = key.rsplit(".", 1)
            assert key.startswith("zmlx."), name
            current = getattr(importlib.import_module(mod), attr)  # raises if misnamed
            assert type(current) is type(value), (name, key)


def test_defaults_end_with_the_headline_and_aliases_resolve():
    assert V.DEFAULT == ["stock", "compiled", "patched", "zmlx_stock_attention", "zmlx"]
    for alias, target in V.ALIASES.items():
        assert V.get(alias) is V.VARIANTS[target]
    with pytest.raises(ValueError, match=r"\[variants\] expected one of"):
        V.get("zmlx_no_such_thing")


def test_patterns_replace_or_add_to_the_default():
    default = ["moe_block", "qk_norm_rope"]
    assert V.get("zmlx").pattern_list(default) == default
    assert V.get("zmlx").pattern_list(None) is None  # patch()'s own (the safety table)
    assert V.get("zmlx_residual").pattern_list(default) == [*default, "moe_residual"]
    assert V.get("zmlx_only_qkv").pattern_list(default) == ["moe_block", "qkv_norm_rope"]
    with pytest.raises(ValueError, match="extra patterns need"):
        V.get("zmlx_residual").pattern_list(None)
    assert not V.get("stock").patch and V.get("stock").attention is None


def test_settings_hold_for_the_block_only():
    before = qk.LANE_ROWS
    with V.get("zmlx_row_at_lane0").applied():
        assert qk.LANE_ROWS is False
    assert qk.LANE_ROWS == before
