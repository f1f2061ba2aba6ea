"""examples/speculative_decoding.py --quick: the recipe runs end to end, its tokens exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.processes import run_python

pytest.importorskip("transformers", reason="the recipe builds a Llama from transformers")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "speculative_decoding.py"


def test_the_quick_recipe_reports_every_draft_depth_with_exact_tokens(tmp_path: Path) -> None:
    result = run_python(
        EXAMPLE,
        "--quick",
        "--out",
        tmp_path,
        "--json",
        tmp_path / "run.json",
        "--save",
        tmp_path / "weights.pt",
    )
    assert result.stderr == ""
    data = json.loads((tmp_path / "run.json").read_text())
    rows = data["rows"]
    assert [row["draft_depth"] for row in rows] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert all(row["exact"] for row in rows)  # speculative tokens = full-depth greedy
    assert rows[-1]["acceptance_rate"] == 1.0  # drafts at full depth are the verifier's
    assert all(0.0 <= row["acceptance_rate"] <= 1.0 for row in rows)
    for row in rows:
        assert f"| {row['draft_depth']} | {row['acceptance_rate']:.3f} |" in result.stdout
    assert (tmp_path / "weights.pt").stat().st_size > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no figure" in result.stdout
        return
    for name in ("speculative-acceptance.svg", "speculative-acceptance-dark.svg"):
        assert (tmp_path / name).read_text().lstrip().startswith("<?xml")


def test_the_pages_table_is_the_committed_full_run() -> None:
    # docs/data/speculative-acceptance.json: `python examples/speculative_decoding.py
    # --json ...`, the full run whose figure is docs/img/speculative-acceptance*.svg.
    data = json.loads((ROOT / "docs" / "data" / "speculative-acceptance.json").read_text())
    page = (ROOT / "docs" / "speculative.md").read_text()
    rows = {row["draft_depth"]: row for row in data["rows"]}
    assert all(row["exact"] for row in rows.values())
    shown = [int(depth) for depth in re.findall(r"^\| (\d+) \| \d\.\d{3} \| \d", page, re.M)]
    assert shown, "docs/speculative.md has no acceptance table"
    for depth in shown:
        row = rows[depth]
        line = f"| {depth} | {row['acceptance_rate']:.3f} | {row['tokens_per_full_pass']:.2f} |"
        assert line in page, line
