"""The article's run, reproduced digit for digit by the example and the command line."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from support import article9
from support.processes import run_python

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "examples" / "tutorial9.py"
ARTICLE = Path(article9.__file__)


def run(*args: str | Path) -> str:
    result = run_python(*args)
    # `stochdepth train` ends with its depth summary on stderr; nothing else may be there.
    assert re.fullmatch(r"(stochdepth train: 500 steps, [^\n]*\n)?", result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def article_seed_0() -> str:
    """What the article's own program prints after torch.manual_seed(0), random.seed(0)."""
    return run(ARTICLE, "0")


def test_the_article_prints_five_lines(article_seed_0: str) -> None:
    lines = article_seed_0.splitlines()
    assert [line.split()[0] for line in lines] == ["99", "199", "299", "399", "499"]
    assert all(float(line.split()[1]) > 0 for line in lines)


def test_examples_tutorial9_prints_the_articles_lines(article_seed_0: str) -> None:
    assert run(TUTORIAL, "--seed", "0") == article_seed_0


def test_the_train_command_prints_the_articles_lines(article_seed_0: str) -> None:
    assert run("-m", "stochdepth", "train", "--seed", "0") == article_seed_0


@pytest.mark.parametrize("seed", [1, 2, 12345])
def test_the_tutorial_matches_the_article_in_process(
    seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = article9.run(seed)
    tutorial = runpy.run_path(str(TUTORIAL), run_name="tutorial9")
    tutorial["main"](["--seed", str(seed)])
    assert capsys.readouterr().out.splitlines() == expected


def test_the_unseeded_tutorial_prints_the_articles_steps() -> None:
    lines = run(TUTORIAL).splitlines()
    assert [line.split()[0] for line in lines] == ["99", "199", "299", "399", "499"]
    assert all(float(line.split()[1]) >= 0 for line in lines)
