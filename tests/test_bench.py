"""zmlx.bench: the capsule schema, capsule files, reports, listings and the catalog benchmark."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from capsule_samples import RESULTS, results
from zmlx.bench import capsule, catalog_bench, schema
from zmlx.bench.__main__ import main
from zmlx.bench.report import render, tables
from zmlx.bench.table import Table, format_markdown, format_text
from zmlx.kernels import catalog


def test_every_schema_kind_has_a_sample():
    # A new kind must come with a sample here (so report and schema tests cover it) or use the
    # generic renderer, which the sharded_decode-style kinds do.
    from zmlx.bench.report import RENDERERS

    assert set(RESULTS) <= set(schema.KINDS)
    assert set(RENDERERS) <= set(schema.KINDS)


@pytest.mark.parametrize("kind", sorted(RESULTS))
def test_capsule_round_trip(kind, tmp_path):
    cap = capsule.make(kind, results(kind))
    assert cap["schema_version"] == schema.SCHEMA_VERSION
    path = capsule.write(cap, tmp_path / f"{kind}.json")
    back = capsule.load(path)
    assert back["kind"] == kind and back["results"] == json.loads(json.dumps(cap["results"]))
    text = render(back, str(path))
    assert kind in text and str(path) in text


def _broken(kind, edit):
    cap = capsule.make(kind, results(kind))
    edit(cap)
    return cap


@pytest.mark.parametrize(
    "kind,edit,message",
    [
        ("validate", lambda c: c["results"].pop("fidelity"), "missing field(s) ['fidelity']"),
        ("validate", lambda c: c["results"].update(passed="yes"), "results.passed: expected bool"),
        ("validate", lambda c: c["results"]["throughput"]["decode"]["stock"].pop("median"),
         "results.throughput.decode.stock: missing field(s) ['median']"),
        ("catalog_bench", lambda c: c["results"]["rows"][0]["timings"]["zmlx"].pop("min_us"),
         "results.rows[0].timings['zmlx']: missing field(s) ['min_us']"),
        ("catalog_bench", lambda c: c["results"]["rows"][0].update(bytes=1.5),
         "results.rows[0].bytes: expected int"),
        ("zoo_build", lambda c: c["results"].update(quant=4), "results.quant: expected str?"),
        ("gpu_tests", lambda c: c["results"].update(passed=True), "results.passed: expected int"),
        ("kernel_bench", lambda c: c.update(kind="nope"), "unknown kind 'nope'"),
        ("kernel_bench", lambda c: c.update(schema_version=99), "newer than this zmlx reads"),
        ("kernel_bench", lambda c: c.update(schema="other"), "expected schema 'zmlx.capsule'"),
        ("kernel_bench", lambda c: c["env"].pop("device"), "env: missing field(s) ['device']"),
        ("kernel_bench", lambda c: c.pop("created"), "missing field(s) ['created']"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_field(kind, edit, message, tmp_path):
    cap = _broken(kind, edit)
    with pytest.raises(ValueError) as e:
        capsule.validate(cap)
    assert message in str(e.value)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(cap))
    with pytest.raises(ValueError, match="bad.json"):  # load names the file
        capsule.load(p)


def test_version_1_capsules_get_top_level_checks_only(tmp_path):
    cap = capsule.make("kernel_bench", {"anything": 1})
    cap["schema_version"] = 1
    capsule.validate(cap)  # results of v1 capsules had no fixed shape
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(cap))
    assert "not in a known shape" in render(capsule.load(p))


def test_load_rejects_non_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        capsule.load(p)


def test_save_default_path_and_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cap = capsule.make("gpu_tests", results("gpu_tests"))
    path = capsule.save(cap, None, "h100 run")
    assert path.parent == capsule.CAPSULE_DIR and path.name.startswith(
        f"gpu_tests-h100_run-{cap['env']['backend']}-"
    )
    capsule.load(path)
    assert capsule.save(cap, "-") is None
    assert json.loads(capsys.readouterr().out)["kind"] == "gpu_tests"


def test_schema_describe_lists_every_kind():
    text = schema.describe()
    for kind in schema.KINDS:
        assert f"\n{kind}: " in text


def test_reports_show_the_numbers():
    def text(kind, res=None):
        cap = capsule.make(kind, res or results(kind))
        return "\n".join(format_text(t) for t in tables(cap))

    k = text("kernel_bench")
    assert "x * sigmoid(x)" in k and "n=4096 float16" in k and "2.00x" in k
    assert "3.3" in k  # GB/s from bytes_moved: 16384 B / 5 us
    mb = text("moe_block_device")
    assert "4.00x" in mb and "40.0%" in mb and "72.0" in mb and "3,000 GB/s" in mb
    assert "SPLIT_ROWS=2" in mb and "3.00x" in mb and "same stock run" in mb
    v = text("validate")
    assert "5/5 prompts" in v and "100.00%" in v and "PASS" in v and "1.300x" in v
    assert "moe_block" in v and "0.0125" in v and "no gain" in v
    f = text("validate", RESULTS["validate"] | {"fidelity": results("validate")["fidelity"]
                                                 | {"passed": False, "reason": "why"}})  # fmt: skip
    assert "FAIL  (why)" in f
    assert "3.067x" in text("model_decode")
    assert "tests/test_x.py::test_y" in text("gpu_tests") and "more" not in text("gpu_tests")
    assert "qwen3_moe" in text("zoo_build")


def test_generic_report_for_kinds_without_a_renderer():
    cap = {"kind": "not_rendered", "results": {"ranks": 2, "rows": [{"a": 1, "b": {"x": 1}}]}}
    ts = tables(cap)
    assert ts[0].rows == [["ranks", "2"]] and ts[1].headers == ["a"]


def test_tables_align_and_escape():
    t = Table("t", ["name", "us"], [["a|b", "1,234.5"], ["c", "-2.0"]])
    lines = format_text(t).splitlines()
    assert lines[3].endswith("1,234.5") and lines[4].endswith("   -2.0")
    assert "a\\|b" in format_markdown(t)


def test_cli_report_json_and_list(tmp_path, capsys):
    d = tmp_path / "caps"
    good = capsule.write(capsule.make("validate", results("validate")), d / "v.json")
    (d / "config.json").write_text('{"model_type": "llama"}')  # not a capsule: ignored
    assert main(["report", str(good), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["kind"] == "validate" and out[0]["tables"][0]["rows"]
    assert main(["list", str(d)]) == 0
    assert "1 capsule(s)" in capsys.readouterr().out
    bad = capsule.make("validate", results("validate"))
    del bad["results"]["memory"]
    (d / "sub").mkdir()
    (d / "sub" / "bad.json").write_text(json.dumps(bad))
    assert main(["list", str(d), "--json"]) == 1
    errors = {e["path"].split("/")[-1]: e["error"] for e in json.loads(capsys.readouterr().out)}
    assert errors["v.json"] is None and "['memory']" in errors["bad.json"]
    assert main(["report", str(d / "sub" / "bad.json")]) == 2
    assert "missing field(s) ['memory']" in capsys.readouterr().err
    assert main(["list", str(tmp_path / "absent")]) == 2


def test_cli_catalog_one_op_one_case(tmp_path, capsys):
    spec = catalog.get("silu")
    case = str(spec.bench_cases[0]["id"])
    out = tmp_path / "cat.json"
    rc = main(["catalog", "--op", "silu", "--case", case, "--repeats", "2", "--warmup", "1",
               "--batch", "2", "--json", str(out)])  # fmt: skip
    assert rc == 0
    cap = capsule.load(out)
    res = cap["results"]
    assert cap["kind"] == "catalog_bench" and len(res["rows"]) == 1 and not res["errors"]
    row = res["rows"][0]
    assert row["op"] == "silu" and row["case"] == case and row["dtype"] == "float16"
    assert row["bytes"] == 2 * 2 * 4096  # input and output, float16, shape (1, 4096)
    assert set(row["timings"]) == {"stock", "zmlx"} and row["timings"]["zmlx"]["gbps"] > 0
    if res["backend"] == "cpu":
        assert res["path"] == row["path"] == "reference" and "reference" in res["note"]
    assert "silu" in capsys.readouterr().out


def test_catalog_bench_reports_broken_ops_and_bad_selections():
    spec = catalog.get("silu")

    def boom(x):
        raise RuntimeError("kernel exploded")

    from dataclasses import replace

    broken = replace(spec, name="silu_broken", op=boom, bench_cases=spec.bench_cases[:1])
    seen = []
    res = catalog_bench.run([broken], repeats=1, warmup=0, batch=1, progress=False,
                            on_row=seen.append)  # fmt: skip
    assert res["rows"] == [] and "kernel exploded" in res["errors"][0]["error"]
    assert seen == res["errors"] and "ERROR RuntimeError" in catalog_bench.line(seen[0])
    with pytest.raises(ValueError, match="no op"):
        catalog_bench.select(catalog.specs(), "activations", ["rms_norm"])
    with pytest.raises(ValueError, match="dtype"):
        catalog_bench.run([spec], dtype="int8")
    a = mx.zeros((4096,), dtype=mx.float32)
    assert catalog_bench.nbytes((1, [a]), {"k": a, "n": None}) == 2 * 4 * 4096
