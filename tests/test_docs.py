"""The README, the documentation site and the docstrings' examples run, so they cannot drift.

The Markdown collector (``markdown_blocks``) reads fenced code blocks from README.md and
every page under ``docs/``:

- ```` ```python ```` blocks run, in order, in one namespace per page (a page reads as one
  session: a later block may use what an earlier one defined). A line
  ``--8<-- "path"`` inside a block is replaced by that file, as mkdocs' snippets
  extension does, so a page can show a real file from the repository and run it.
- A ```` ```text ```` block right after ``<!-- docs: output -->`` is what the python block
  before it prints. Text must match exactly (``...`` matches anything, as in doctest);
  numbers must match to a relative 1e-3 (absolute 1e-6), because the last digits of a
  training loss depend on the number of threads and the CPU. A printed line longer than
  the 88 columns a code block shows is written wrapped, as ``wrap_output`` wraps it: at
  spaces, the continuation lines indented like the line.
- ```` ```console ```` blocks are transcripts: each ``$ python -m stochdepth ...`` (or
  ``$ stochdepth ...``) line runs the command line in-process, and the lines up to the
  next ``$`` are what it prints, compared as above. A command may continue on the next
  line after a trailing backslash, as in a shell.
- ``<!-- docs: skip REASON -->`` right before a block keeps it from running; the reason
  is required. ```` ```sh ````, ```` ```toml ```` and other blocks are shown, not run.
- ``<!-- docs: with-example-plugin -->`` right before a block runs it with the example
  plugin package, ``examples/sampler-plugin``, installed (with pip, into a temporary
  directory put on ``sys.path`` for that block only).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import math
import pkgutil
import random
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

import stochdepth
from stochdepth._cli import main
from stochdepth.samplers import _registry

from support.processes import QUIET_ENV, TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
PAGES = sorted(DOCS.rglob("*.md"))
MARKDOWN = [README, *PAGES]

BLOCK = re.compile(
    r"(?:^[ \t]*<!-- docs: (?P<directive>[^\n]*?) -->\n)?"
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<lang>[\w-]*)[^\n]*\n"
    r"(?P<body>.*?)"
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$', re.MULTILINE)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
# The columns a code block shows on the site at 1400 px (tests/test_docs_site.py checks
# that every code line fits).
COLUMNS = 88


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # the line of the block's first line of code, from 1
    lang: str
    body: str
    directive: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_blocks(path: Path) -> list[Block]:
    """Every fenced code block in ``path``, with the directive comment before it."""
    text = path.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        line = text.count("\n", 0, match.start("body")) + 1
        body = SNIPPET.sub(lambda snippet: (ROOT / snippet["path"]).read_text(), body)
        blocks.append(Block(path, line, match["lang"], body, match["directive"]))
    return blocks


def code_blocks(path: Path, language: str) -> list[str]:
    return [block.body for block in markdown_blocks(path) if block.lang == language]


def is_skipped(block: Block) -> bool:
    if block.directive is None or not block.directive.startswith("skip"):
        return False
    assert block.directive.removeprefix("skip").strip(), (
        f"{block.where}: '<!-- docs: skip -->' needs a reason: '<!-- docs: skip REASON -->'"
    )
    return True


def wrap_output(text: str, width: int = COLUMNS) -> str:
    """``text`` with every line longer than ``width`` wrapped at spaces.

    A continuation line is indented like the line it continues; a word longer than the
    width stays whole. The documented output of a program shows its long lines so.
    """
    lines = []
    for line in text.splitlines():
        if len(line) <= width:
            lines.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        lines += textwrap.wrap(
            line.lstrip(),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def assert_output_matches(want: str, got: str, where: str) -> None:
    """``got`` is ``want``: text exactly (``...`` is a wildcard), numbers to 1e-3.

    ``got``'s long lines are wrapped first (``wrap_output``), as the pages show them.
    """
    want, got = want.rstrip() + "\n", wrap_output(got.rstrip()) + "\n"
    want_numbers, got_numbers = NUMBER.findall(want), NUMBER.findall(got)
    want_text, got_text = NUMBER.sub("0", want), NUMBER.sub("0", got)
    checker = doctest.OutputChecker()
    message = f"{where}: the documented output differs from the real one:\n{got}"
    if "..." in want:
        assert checker.check_output(want_text, got_text, doctest.ELLIPSIS), message
        return
    assert want_text == got_text, message
    for expected, actual in zip(want_numbers, got_numbers, strict=True):
        assert math.isclose(float(expected), float(actual), rel_tol=1e-3, abs_tol=1e-6), (
            f"{message}({expected} != {actual})"
        )


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    """The examples seed torch and ``random`` and register samplers; undo it."""
    torch_state, random_state = torch.get_rng_state(), random.getstate()
    registered = _registry.SAMPLERS.snapshot()
    yield
    torch.set_rng_state(torch_state)
    random.setstate(random_state)
    _registry.SAMPLERS.restore(registered)


PLUGIN = ROOT / "examples" / "sampler-plugin"


@pytest.fixture(scope="session")
def example_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``examples/sampler-plugin``, pip-installed into a directory of its own."""
    target = tmp_path_factory.mktemp("example-plugin")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"),
            *("install", "--no-deps", "--target", str(target), str(PLUGIN)),
        ],
        check=True,
        timeout=TIMEOUT,
        env=QUIET_ENV,
    )
    return target


@contextlib.contextmanager
def directive_context(block: Block, request: pytest.FixtureRequest) -> Iterator[None]:
    """What a block's directive asks for while it runs (the example plugin, or nothing)."""
    if block.directive != "with-example-plugin":
        yield
        return
    directory = str(request.getfixturevalue("example_plugin_dir"))
    sys.path.insert(0, directory)
    stochdepth.refresh_samplers()
    try:
        yield
    finally:
        sys.path.remove(directory)
        sys.modules.pop("stochdepth_cyclic", None)
        stochdepth.refresh_samplers()


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


PAGES_WITH_PYTHON = [path for path in MARKDOWN if code_blocks(path, "python")]


def test_the_readme_and_the_pages_have_python_examples() -> None:
    assert README in PAGES_WITH_PYTHON
    assert {"index.md", "tutorial.md", "samplers.md", "plugins.md"} <= {
        path.name for path in PAGES_WITH_PYTHON
    }


@pytest.mark.parametrize("path", PAGES_WITH_PYTHON, ids=page_id)
def test_python_blocks_run(path: Path, request: pytest.FixtureRequest) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    blocks = markdown_blocks(path)
    printed: str | None = None
    for block in blocks:
        if block.directive == "output":
            assert block.lang == "text", f"{block.where}: an output block must be ```text"
            assert printed is not None, f"{block.where}: an output block follows no python block"
            assert_output_matches(block.body, printed, block.where)
            printed = None
            continue
        printed = None
        if block.lang != "python" or is_skipped(block):
            continue
        source = "\n" * (block.line - 1) + block.body
        stdout = io.StringIO()
        with directive_context(block, request), contextlib.redirect_stdout(stdout):
            exec(compile(source, str(block.path), "exec"), namespace)
        printed = stdout.getvalue()


def transcripts() -> list[tuple[Block, str, str]]:
    """Every ``$ stochdepth ...`` command in a console block, with its printed output."""
    found = []
    for path in MARKDOWN:
        for block in markdown_blocks(path):
            if block.lang != "console" or is_skipped(block):
                continue
            for chunk in re.split(r"^\$ ", block.body, flags=re.MULTILINE)[1:]:
                command, _, output = chunk.partition("\n")
                while command.endswith("\\"):  # continued on the next line
                    more, _, output = output.partition("\n")
                    command = f"{command[:-1].rstrip()} {more.strip()}"
                found.append((block, command, output))
    return found


@pytest.mark.parametrize(
    ("block", "command", "output"),
    transcripts(),
    ids=[f"{block.where} {command}" for block, command, _ in transcripts()],
)
def test_console_transcripts_are_what_the_command_line_prints(
    block: Block,
    command: str,
    output: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    argv = shlex.split(command)
    prefixes = (["python", "-m", "stochdepth"], ["stochdepth"])
    prefix = next((p for p in prefixes if argv[: len(p)] == p), None)
    assert prefix is not None, (
        f"{block.where}: a console block runs only stochdepth's command line, got {command!r}; "
        f"show other commands in a ```sh block"
    )
    monkeypatch.setenv("COLUMNS", "80")
    with directive_context(block, request), contextlib.suppress(SystemExit):
        main(argv[len(prefix) :])
    captured = capsys.readouterr()
    assert_output_matches(output, captured.out + captured.err, f"{block.where} $ {command}")


@pytest.mark.parametrize("name", ["main-command", "test-command"])
def test_readme_setup_commands_are_one_line_each_for_ci(name: str) -> None:
    text = README.read_text()
    marker = f"<!-- ci: {name} -->\n```sh\n"
    assert text.count(marker) == 1, f"README lacks the {name} block that .ci/run runs"
    command = text.split(marker, 1)[1].split("```", 1)[0].strip()
    assert "\n" not in command
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && ")


PROMPT = re.compile(r"^(?:\$|>>>|\.\.\.) ", re.MULTILINE)


@pytest.mark.parametrize("path", MARKDOWN, ids=page_id)
def test_prompts_appear_only_where_the_copy_button_leaves_them_out(path: Path) -> None:
    # The site's copy buttons drop the prompts and the output of ```console and ```pycon
    # blocks (docs/css/site.css); in any other block a "$ " or ">>> " would be copied and
    # break the pasted command.
    for block in markdown_blocks(path):
        if block.lang not in {"console", "pycon", "text"}:
            assert not PROMPT.search(block.body), (
                f"{block.where}: a ```{block.lang} block with a prompt: its copy button would "
                f"copy the prompt; write the command alone, or a ```console transcript"
            )


def test_the_copy_button_style_is_on_the_site() -> None:
    css = (DOCS / "css" / "site.css").read_text()
    assert "css/site.css" in MKDOCS.read_text()
    for selector in ("[data-md-copying] .gp", "[data-md-copying] .go"):
        assert selector in css


def test_the_collector_reads_directives_snippets_and_output() -> None:
    page = (
        "<!-- docs: skip needs a GPU -->\n```python\nraise SystemExit\n```\n\n"
        '```python\n--8<-- "src/stochdepth/py.typed"\nprint(1.0)\n```\n'
        "<!-- docs: output -->\n```text\n1.00001\n```\n"
    )
    path = ROOT / "docs" / "_collector_check.md"
    blocks = [Block(path, 1, m["lang"], m["body"], m["directive"]) for m in BLOCK.finditer(page)]
    assert [(b.lang, b.directive) for b in blocks] == [
        ("python", "skip needs a GPU"),
        ("python", None),
        ("text", "output"),
    ]
    assert is_skipped(blocks[0])
    assert_output_matches("1.00001\n", "1.0\n", "check")
    with pytest.raises(AssertionError):
        assert_output_matches("1.1\n", "1.0\n", "check")
    with pytest.raises(AssertionError):
        assert_output_matches("loss 1.0\n", "lost 1.0\n", "check")


# The API reference: one page per public object, each in mkdocs.yml's nav.


def public_names() -> list[str]:
    return sorted(set(stochdepth.__all__) - {"__version__"})


@pytest.mark.parametrize("name", public_names())
def test_every_public_object_has_its_api_page(name: str) -> None:
    page = DOCS / "api" / f"{name}.md"
    assert page.is_file(), f"stochdepth.{name} has no API page: add docs/api/{name}.md"
    assert f"::: stochdepth.{name}\n" in page.read_text()
    assert f"api/{name}.md" in MKDOCS.read_text(), f"mkdocs.yml's nav lacks api/{name}.md"
    assert f"({name}.md)" in (DOCS / "api" / "index.md").read_text(), (
        f"docs/api/index.md does not list {name}"
    )


def test_every_api_page_is_a_public_object() -> None:
    pages = {path.stem for path in (DOCS / "api").glob("*.md")} - {"index"}
    assert pages == set(public_names())


def test_the_nav_lists_every_page() -> None:
    # mkdocs build --strict fails on a page missing from the nav, too; this says which.
    nav = MKDOCS.read_text()
    for path in PAGES:
        assert f" {path.relative_to(DOCS).as_posix()}\n" in nav, f"mkdocs.yml's nav lacks {path}"


# The docstrings' examples.


def modules() -> list[ModuleType]:
    """The package and every module in it, subpackages included.

    The public names re-exported by ``stochdepth`` have ``__module__ == "stochdepth"``,
    so their examples run with the package's; the lazily exported ones (the generation
    subpackage's) and private helpers are found only in their own modules.
    """
    names = [info.name for info in pkgutil.walk_packages(stochdepth.__path__, "stochdepth.")]
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
