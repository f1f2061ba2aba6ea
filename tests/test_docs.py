"""The README's examples and the docstrings' examples run, so they cannot drift."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import stochdepth

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def code_blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def test_the_readme_has_python_examples() -> None:
    assert code_blocks(README, "python")


@pytest.mark.parametrize("index", range(len(code_blocks(README, "python"))))
def test_readme_python_block_runs(index: int) -> None:
    source = code_blocks(README, "python")[index]
    exec(compile(source, f"README.md python block {index}", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("name", ["main-command", "test-command"])
def test_readme_setup_commands_are_one_line_each_for_ci(name: str) -> None:
    text = README.read_text()
    marker = f"<!-- ci: {name} -->\n```sh\n"
    assert text.count(marker) == 1, f"README lacks the {name} block that .ci/run runs"
    command = text.split(marker, 1)[1].split("```", 1)[0].strip()
    assert "\n" not in command
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && ")


def modules() -> list[ModuleType]:
    names = [info.name for info in pkgutil.iter_modules(stochdepth.__path__, "stochdepth.")]
    return [stochdepth, *(importlib.import_module(name) for name in names)]


def test_the_docstring_examples_exist() -> None:
    finder = doctest.DocTestFinder()
    examples = sum(len(test.examples) for module in modules() for test in finder.find(module))
    assert examples >= 10


@pytest.mark.parametrize("module", modules(), ids=lambda module: module.__name__)
def test_docstring_examples_run(module: ModuleType) -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(module):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module.__name__}"
