"""examples/prefix_sums.py --quick: the experiment runs end to end and reports what it says."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from support.processes import run_python

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "prefix_sums.py"
RECIPES = ["fixed", "uniform", "lognormal_poisson"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("prefix_sums")
    result = run_python(EXAMPLE, "--quick", "--ponder", "--out", out)
    assert result.stderr == ""
    return result.stdout, out


def test_the_table_has_a_row_per_recipe_and_length(quick_run: tuple[str, Path]) -> None:
    stdout, out = quick_run
    data = json.loads((out / "prefix_sums.json").read_text())
    bits = data["settings"]["test_bits"]
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| recipe | bits |")
    assert [row.split(" | ")[0:2] for row in rows[1:]] == [
        [f"| {recipe}", str(b)] for recipe in RECIPES for b in bits
    ]
    assert data["table"] in stdout


def test_the_results_are_fractions_and_depths_in_range(quick_run: tuple[str, Path]) -> None:
    _, out = quick_run
    data = json.loads((out / "prefix_sums.json").read_text())
    settings = data["settings"]
    assert settings["quick"] is True
    assert list(data["recipes"]) == RECIPES
    for recipe in data["recipes"].values():
        assert recipe["loss"] > 0
        for sweep in recipe["sweep"].values():
            assert len(sweep) == settings["test_depth"]
            assert all(0.0 <= accuracy <= 1.0 for accuracy in sweep)
        for early in recipe["early_exit"].values():
            assert 0.0 <= early["accuracy"] <= 1.0
            assert 1.0 <= early["mean_depth"] <= settings["test_depth"]
    assert [int(b) for b in data["ponder"]] == settings["ponder_test_bits"]
    for report in data["ponder"].values():
        assert 1.0 <= report["mean_depth"] <= settings["ponder_depth"]
        assert 1.0 <= report["expected_depth"] <= settings["ponder_depth"]


def test_the_figure_is_written_when_matplotlib_is_installed(quick_run: tuple[str, Path]) -> None:
    _, out = quick_run
    figure = out / "prefix_sums.svg"
    if importlib.util.find_spec("matplotlib") is None:
        assert not figure.exists()
    else:
        assert figure.read_text().lstrip().startswith("<?xml")


def test_an_unknown_recipe_is_refused_naming_the_recipes() -> None:
    result = run_python(EXAMPLE, "--quick", "--recipes", "fixed,nope", check=False)
    assert result.returncode == 2
    assert "--recipes: unknown recipe nope; the recipes are fixed, uniform" in result.stderr
    assert result.stdout == ""
