"""examples/recursify_llama.py --quick: the recipe runs end to end and reports what it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.processes import run_python

pytest.importorskip("transformers", reason="the recipe builds a Llama from transformers")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "recursify_llama.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, object], Path]:
    out = tmp_path_factory.mktemp("recursify_llama")
    result = run_python(EXAMPLE, "--quick", "--out", out, "--json", out / "run.json")
    assert result.stderr == ""
    return result.stdout, json.loads((out / "run.json").read_text()), out


def test_full_rank_is_faithful_and_sharing_alone_is_not(
    quick_run: tuple[str, dict[str, object], Path],
) -> None:
    _, data, _ = quick_run
    rows = data["ranks"]
    assert isinstance(rows, list)
    full = rows[-1]
    assert full["lora_rank"] == "full"
    assert full["max_logit_difference"] < 1e-4  # float32
    assert rows[0]["max_logit_difference"] > 100 * full["max_logit_difference"]
    parameters = [row["core_parameters"] for row in rows]
    assert parameters == sorted(parameters)  # more rank, more parameters
    assert rows[0]["core_parameters"] * 4 == data["original_core_parameters"]


def test_every_model_has_a_curve_and_a_row(quick_run: tuple[str, dict[str, object], Path]) -> None:
    stdout, data, _ = quick_run
    curves = data["curves"]
    assert isinstance(curves, dict)
    assert list(curves) == ["original", "shared", "shared + rank-8 deltas", "core dropped"]
    for label, curve in curves.items():
        assert curve["step"][0] == 0
        assert len(curve["step"]) == len(curve["eval_loss"])
        assert all(loss > 0 for loss in curve["eval_loss"])
        assert f"| {label} |" in stdout
    assert set(data["by_depth"]) == {"shared", "shared + rank-8 deltas"}
    assert data["parameters"]["core dropped"] < data["parameters"]["shared"]


def test_the_figure_is_written_when_matplotlib_is_installed(
    quick_run: tuple[str, dict[str, object], Path],
) -> None:
    stdout, _, out = quick_run
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no figure" in stdout
        return
    for name in ("recursify-llama.svg", "recursify-llama-dark.svg"):
        assert (out / name).read_text().lstrip().startswith("<?xml")
