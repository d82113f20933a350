"""The README's results block is generated from the capsules, never typed by hand."""

from __future__ import annotations

from scripts import ROOT, load_benchmark


def test_results_block_matches_the_capsules():
    mod = load_benchmark("readme_tables")
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(mod.START) + len(mod.START) : readme.index(mod.END)]
    assert block.strip() == mod.render().strip(), "run: python benchmarks/readme_tables.py --write"


def test_readme_starts_with_the_two_commands():
    blocks = (ROOT / "README.md").read_text().split("```bash\n")[1:3]
    assert "pip install -e '.[cpu,lm,dev]'" in blocks[0] and "python -m zmlx.validate" in blocks[0]
    assert "python -m pytest" in blocks[1]


def test_readme_kernel_count_matches_the_catalog():
    from zmlx.kernels import catalog

    n = len(catalog.specs())
    assert f"A catalog of {n} fused kernels" in (ROOT / "README.md").read_text()
