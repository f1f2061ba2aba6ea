"""The site's figures: drawn from the committed data, each with a dark variant."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "scripts" / "figures.py"
DATA = ROOT / "docs" / "data"


def figures_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("docs_figures", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_figure_is_committed_in_both_variants_and_shown_on_a_page() -> None:
    pages = "\n".join(path.read_text() for path in (ROOT / "docs").glob("*.md"))
    for name in figures_module().FIGURES:
        for variant, scheme in ((name, "only-light"), (f"{name}-dark", "only-dark")):
            assert (ROOT / "docs" / "img" / f"{variant}.svg").is_file(), variant
            assert f"img/{variant}.svg#{scheme}" in pages, f"no page shows {variant}"


MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def drawn_figures(tmp_path: Path) -> list[Path]:
    """Every figure the script draws from the committed data, into ``tmp_path``."""
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True
    )
    return sorted(tmp_path.glob("*.svg"))


@pytest.mark.skipif(not MATPLOTLIB, reason="matplotlib (the docs extra) draws the figures")
def test_the_script_draws_every_figure_from_the_data(tmp_path: Path) -> None:
    drawn = drawn_figures(tmp_path)
    names = {
        f"{name}{variant}.svg" for name in figures_module().FIGURES for variant in ("", "-dark")
    }
    assert {path.name for path in drawn} == names
    light = (tmp_path / "memory-depth.svg").read_text()
    dark = (tmp_path / "memory-depth-dark.svg").read_text()
    assert "#e2e4e9" in dark  # the dark variant has light ink
    assert "#e2e4e9" not in light


@pytest.mark.skipif(not MATPLOTLIB, reason="matplotlib (the docs extra) draws the figures")
def test_the_script_redraws_the_committed_figures_byte_for_byte(tmp_path: Path) -> None:
    import matplotlib

    committed = {
        path.name: path.read_bytes()
        for name in figures_module().FIGURES
        for path in (ROOT / "docs" / "img").glob(f"{name}*.svg")
    }
    versions = {
        match.group(1).decode()
        for data in committed.values()
        if (match := re.search(rb"Matplotlib v([^,]+),", data))
    }
    if versions != {matplotlib.__version__}:
        # Another matplotlib writes its SVG in its own way: the test above still checks
        # that every figure is drawn; redraw them with this one (figures.py) to compare.
        pytest.skip(
            f"the committed figures were drawn with matplotlib {sorted(versions)}, this is "
            f"{matplotlib.__version__}: their bytes differ by version"
        )
    for path in drawn_figures(tmp_path):
        assert path.read_bytes() == committed[path.name], path.name


def test_the_sampler_laws_cover_every_built_in_sampler_and_match_their_probabilities() -> None:
    import stochdepth

    data = json.loads((DATA / "sampler-laws.json").read_text())
    assert sorted(data["laws"]) == sorted(stochdepth.available_samplers())
    for name, law in data["laws"].items():
        # The live sampler, rebuilt from the text the figure shows, has the recorded law.
        sampler = eval(law["sampler"], {}, vars(stochdepth))
        for snapshot, counts in law["counts"].items():
            if snapshot:
                sampler.set_step(int(snapshot.removeprefix("step ")))
            probabilities = sampler.probabilities()
            exact = [float(probabilities.get(depth, 0.0)) for depth in range(len(counts))]
            assert law["probabilities"][snapshot] == pytest.approx(exact), (name, snapshot)
            assert sum(counts) == data["draws"], (name, snapshot)
            shares = [count / data["draws"] for count in counts]
            for share, probability in zip(shares, exact, strict=True):
                assert abs(share - probability) < 0.02, (name, snapshot)


def test_the_gpu_data_is_the_performance_pages_recorded_rows() -> None:
    # The H200 figures read rows copied from a GPU run; each ratio is on the page's logs.
    page = (ROOT / "docs" / "performance.md").read_text()
    for row in json.loads((DATA / "benchmarks-h200.json").read_text())["rows"]:
        assert re.search(rf"\| {row['ratio']:.3f} \|", page), row
