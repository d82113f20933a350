"""``zmlx.bench.settings``: ``--set zmlx.MODULE.NAME=VALUE`` items read as module constants,
set for a run or a block and put back."""

from __future__ import annotations

import argparse

import pytest

from zmlx.bench import settings
from zmlx.kernels import fused_experts as fe
from zmlx.kernels import moe_kernels as mk
from zmlx.kernels import quant_kernels as qk

ROWS = "zmlx.kernels.moe_kernels.SPLIT_ROWS"
FILL = "zmlx.kernels.quant_kernels.SPLIT_MIN_FILL"
SPLIT = "zmlx.kernels.moe_kernels.SPLIT_EXPERTS"
PREFETCH = "zmlx.kernels.fused_experts.FUSED_PREFETCH"
ORDER = "zmlx.kernels.fused_experts.FUSED_ORDER"


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    """Whatever a test sets, the constants come back at its end."""
    kept = ((mk, "SPLIT_ROWS"), (qk, "SPLIT_MIN_FILL"), (mk, "SPLIT_EXPERTS"),
            (fe, "FUSED_PREFETCH"), (fe, "FUSED_ORDER"), (fe, "FUSED_EXPERTS"))  # fmt: skip
    for m, name in kept:
        monkeypatch.setattr(m, name, getattr(m, name))


def test_parse_values():
    got = settings.parse([f"{ROWS}=2", f"{FILL}=0.5", f"{SPLIT}=false",
                          "zmlx.kernels.fused_experts.FUSED_EXPERTS=TRUE", f"{PREFETCH}=registers",
                          f"{ORDER}=index"])  # fmt: skip
    assert got == {ROWS: 2, FILL: 0.5, SPLIT: False,
                   "zmlx.kernels.fused_experts.FUSED_EXPERTS": True, PREFETCH: "registers",
                   ORDER: "index"}  # fmt: skip
    assert type(got[ROWS]) is int and type(got[FILL]) is float
    assert type(got[SPLIT]) is bool and type(got[PREFETCH]) is str
    assert settings.parse([f"{ROWS}=-3"]) == {ROWS: -3}
    # A string setting takes its text as written, even one that reads as a bool or a number.
    assert settings.parse([f"{PREFETCH}=true", f"{ORDER}=2"]) == {PREFETCH: "true", ORDER: "2"}
    assert settings.parse([]) == {}


@pytest.mark.parametrize(
    "item, match",
    [("numpy.pi=3", "expected --set zmlx.MODULE.NAME=VALUE"),
     ("mlx.core.X=1", "expected --set zmlx.MODULE.NAME=VALUE"),
     (f"{ROWS}=", "expected --set zmlx.MODULE.NAME=VALUE"),
     (ROWS, "expected --set zmlx.MODULE.NAME=VALUE"),
     ("zmlx.kernels.moe_kernels.NO_SUCH_SETTING=1", "has no setting 'NO_SUCH_SETTING'"),
     (f"{ROWS}=four", "invalid literal")],
    ids=["outside-zmlx", "mlx", "empty-value", "no-value", "unknown-name", "not-a-number"],
)  # fmt: skip
def test_parse_errors(item, match):
    with pytest.raises(ValueError, match=match):
        settings.parse([item])


def test_applied_restores_old_values():
    rows, prefetch, split = mk.SPLIT_ROWS, fe.FUSED_PREFETCH, mk.SPLIT_EXPERTS
    new = {ROWS: rows + 3, PREFETCH: "none", SPLIT: not split, "rounds": 7}
    with settings.applied(new):
        assert (mk.SPLIT_ROWS, fe.FUSED_PREFETCH, mk.SPLIT_EXPERTS) == (rows + 3, "none",
                                                                         not split)  # fmt: skip
    assert (mk.SPLIT_ROWS, fe.FUSED_PREFETCH, mk.SPLIT_EXPERTS) == (rows, prefetch, split)
    with pytest.raises(KeyError), settings.applied(new):  # put back when the block raises too
        assert mk.SPLIT_ROWS == rows + 3
        raise KeyError("inside")
    assert (mk.SPLIT_ROWS, fe.FUSED_PREFETCH, mk.SPLIT_EXPERTS) == (rows, prefetch, split)


def test_apply_returns_the_old_values_and_skips_other_keys():
    rows = mk.SPLIT_ROWS
    old = settings.apply({ROWS: rows + 1, "rounds": 7})
    assert old == {(mk, "SPLIT_ROWS"): rows} and mk.SPLIT_ROWS == rows + 1


def test_command_line():
    parser = argparse.ArgumentParser()
    settings.add_argument(parser)
    ns = parser.parse_args(["--set", f"{PREFETCH}=none", f"{ORDER}=index"])
    assert settings.apply_command_line(ns.set, "bench") == {PREFETCH: "none", ORDER: "index"}
    assert (fe.FUSED_PREFETCH, fe.FUSED_ORDER) == ("none", "index")
    assert parser.parse_args([]).set == []
    with pytest.raises(SystemExit, match=r"\[bench\] \[settings\] expected --set"):
        settings.apply_command_line(["FUSED_PREFETCH=none"], "bench")


def test_parse_unknown_module_and_float_settings():
    """An unknown module is a ValueError (not an ImportError), and a float setting takes its
    value as a float even when written as a whole number."""
    with pytest.raises(ValueError, match="no module"):
        settings.parse(["zmlx.nosuch.X=1"])
    got = settings.parse(["zmlx.kernels.quant_kernels.SPLIT_MIN_FILL=1"])
    assert got == {"zmlx.kernels.quant_kernels.SPLIT_MIN_FILL": 1.0}
    assert isinstance(got["zmlx.kernels.quant_kernels.SPLIT_MIN_FILL"], float)
    with pytest.raises(ValueError, match="expected a number"):
        settings.parse(["zmlx.kernels.quant_kernels.SPLIT_MIN_FILL=high"])
