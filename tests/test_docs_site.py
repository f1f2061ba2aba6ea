"""The documentation site as its readers see it: code that fits, figures for both themes.

``mkdocs build --strict`` checks links and references; these check what it cannot:

- every line of every code block fits the 88 columns a code block shows at 1400 px;
- every figure is legible in dark mode: a light/dark pair (``X.svg#only-light`` and
  ``X-dark.svg#only-dark``, Material's convention) or an SVG with an opaque background;
- the home page links every guide in mkdocs.yml's nav, and the guides are boosted in the
  search (so that a search for a guide's subject finds the guide before an error class);
- every documented output has its "Output" title;
- the site's styles, scripts and formulas need no network (KaTeX is vendored);
- the pages count the built-in samplers right.

Each failure names the file, the line and what is wrong.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from test_docs import COLUMNS, DOCS, MARKDOWN, MKDOCS, PAGES, ROOT, markdown_blocks, page_id

from stochdepth.samplers._registry import BUILTIN_SAMPLERS

# ![alt](src) and <img src="...">: the alt text may span lines, but holds no "](".
MARKDOWN_IMAGE = re.compile(r"!\[(?:[^\]]|\](?!\())*\]\((?P<src>[^)\s]+)[^)]*\)")
HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=\"(?P<src>[^\"]+)\"", re.IGNORECASE)


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


# The pages, not README.md: its set-up commands are one line each for CI, and the sites
# that show it scroll code sideways.
@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_code_lines_fit_the_column(path: Path) -> None:
    too_long = [
        f"{path.relative_to(ROOT)}:{block.line + number}: a ```{block.lang} line of "
        f"{len(line)} characters (at most {COLUMNS}): {line[:60]}..."
        for block in markdown_blocks(path)
        for number, line in enumerate(block.body.splitlines())
        if len(line) > COLUMNS
    ]
    assert not too_long, "\n".join(too_long)


def figures(path: Path) -> list[tuple[int, str]]:
    """Every figure a page shows: (line, source as written)."""
    text = path.read_text()
    found = [
        (line_of(text, match.start()), match["src"])
        for pattern in (MARKDOWN_IMAGE, HTML_IMAGE)
        for match in pattern.finditer(text)
    ]
    return sorted(found)


PAGES_WITH_FIGURES = [path for path in MARKDOWN if path.parent == DOCS and figures(path)]

SVG = "{http://www.w3.org/2000/svg}"
# Elements that draw nothing themselves.
NOT_DRAWN = {"defs", "metadata", "style", "title", "desc", "script", "g", "a"}
# An axis-aligned rectangle as a path (Matplotlib draws its figure's background so).
RECTANGLE_PATH = re.compile(
    r"^M\s*(?P<x0>[-\d.]+)[ ,](?P<y0>[-\d.]+)\s+L\s*(?P<x1>[-\d.]+)[ ,](?P=y0)\s+"
    r"L\s*(?P=x1)[ ,](?P<y1>[-\d.]+)\s+L\s*(?P=x0)[ ,](?P=y1)\s+(?:L\s*(?P=x0)[ ,](?P=y0)\s+)?z$"
)


def first_drawn(element: ElementTree.Element) -> ElementTree.Element | None:
    """The first element under ``element`` that draws something, in document order."""
    for child in element:
        tag = child.tag.removeprefix(SVG)
        if tag in {"defs", "metadata", "style", "title", "desc", "script"}:
            continue
        if tag in NOT_DRAWN:
            found = first_drawn(child)
            if found is not None:
                return found
            continue
        return child
    return None


def fill_of(element: ElementTree.Element) -> str:
    """The element's fill, from its style attribute or its fill attribute ("" if none)."""
    style = {
        key.strip(): value.strip()
        for key, _, value in (item.partition(":") for item in element.get("style", "").split(";"))
        if key.strip()
    }
    if style.get("opacity", "1") == "0" or style.get("fill-opacity", "1") == "0":
        return "none"
    return style.get("fill", element.get("fill", "")).strip().lower()


def length(value: str | None) -> float:
    if value is None:
        return 0.0
    return float(re.sub(r"(px|pt)$", "", value.strip()))


def background_problem(svg: Path) -> str | None:
    """Why ``svg`` has no opaque background covering it, or None if it has one."""
    root = ElementTree.parse(svg).getroot()
    view_box = root.get("viewBox")
    if view_box is not None:
        x, y, width, height = (float(number) for number in view_box.replace(",", " ").split())
    else:
        x, y, width, height = 0.0, 0.0, length(root.get("width")), length(root.get("height"))
    element = first_drawn(root)
    if element is None:
        return "it draws nothing"
    tag = element.tag.removeprefix(SVG)
    fill = fill_of(element)
    if tag == "rect":
        if element.get("width") == "100%" and element.get("height") == "100%":
            box = (x, y, x + width, y + height)
        else:
            left, top = length(element.get("x")), length(element.get("y"))
            box = (
                left,
                top,
                left + length(element.get("width")),
                top + length(element.get("height")),
            )
    elif tag == "path" and (match := RECTANGLE_PATH.match(element.get("d", "").strip())):
        xs = sorted((float(match["x0"]), float(match["x1"])))
        ys = sorted((float(match["y0"]), float(match["y1"])))
        box = (xs[0], ys[0], xs[1], ys[1])
    else:
        return f"its first drawn element is a <{tag}>, not a filled rectangle"
    if fill in {"", "none", "transparent"}:
        return f"its first drawn element, a background rectangle, has fill {fill or 'unset'!r}"
    if box[0] > x or box[1] > y or box[2] < x + width or box[3] < y + height:
        return f"its background rectangle {box} does not cover the picture {(x, y, width, height)}"
    return None


@pytest.mark.parametrize("path", PAGES_WITH_FIGURES, ids=page_id)
def test_every_figure_is_legible_in_dark_mode(path: Path) -> None:
    shown = figures(path)
    sources = {source for _, source in shown}
    problems = []
    for line, source in shown:
        where = f"{path.relative_to(ROOT)}:{line}: figure {source}"
        file, _, fragment = source.partition("#")
        if "://" in file:
            problems.append(f"{where}: an external figure; keep figures in docs/img/")
            continue
        image = path.parent / file
        if not image.is_file():
            problems.append(f"{where}: no such file {image.relative_to(ROOT)}")
            continue
        if fragment == "only-light":
            twin = f"{file.removesuffix('.svg')}-dark.svg#only-dark"
            if not file.endswith(".svg") or twin not in sources:
                problems.append(f"{where}: shown in light mode only, and the page lacks {twin}")
            continue
        if fragment == "only-dark":
            twin = f"{file.removesuffix('-dark.svg')}.svg#only-light"
            if not file.endswith("-dark.svg") or twin not in sources:
                problems.append(f"{where}: shown in dark mode only, and the page lacks {twin}")
            continue
        if image.suffix != ".svg":
            problems.append(
                f"{where}: a {image.suffix} shown in both themes; use an SVG with an opaque "
                f"background or a light/dark pair"
            )
            continue
        problem = background_problem(image)
        if problem is not None:
            problems.append(
                f"{where}: shown in both themes but {problem} (transparent, so dark mode "
                f"shows its dark text on a dark page); give it a background or a "
                f"-dark.svg twin with #only-light/#only-dark"
            )
    assert not problems, "\n".join(problems)


def test_the_background_check_tells_opaque_from_transparent(tmp_path: Path) -> None:
    head = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 50">'
    cases = {
        '<rect width="100%" height="100%" fill="#fff"/><text>a</text>': None,
        '<g><rect x="0" y="0" width="100" height="50" style="fill: #1e2129"/></g>': None,
        '<g id="patch_1"><path d="M 0 50 L 100 50 L 100 0 L 0 0 L 0 50 z " '
        'style="fill: #ffffff"/></g>': None,
        '<g id="patch_1"><path d="M 0 50 L 100 50 L 100 0 L 0 0 L 0 50 z " '
        'style="fill: none"/></g>': "fill 'none'",
        '<rect width="100" height="50" fill="#fff" opacity="1" style="opacity: 0"/>': "fill",
        '<rect width="60" height="50" fill="#fff"/>': "does not cover",
        "<text>a</text>": "<text>",
    }
    for body, expected in cases.items():
        svg = tmp_path / "figure.svg"
        svg.write_text(f"{head}{body}</svg>")
        problem = background_problem(svg)
        if expected is None:
            assert problem is None, (body, problem)
        else:
            assert problem is not None, body
            assert expected in problem, (body, problem)


def nav_pages() -> dict[str, list[str]]:
    """mkdocs.yml's nav: each top-level entry's title and the pages under it."""
    text = MKDOCS.read_text()
    nav = text.split("\nnav:\n", 1)[1]
    nav = re.split(r"^\S", nav, maxsplit=1, flags=re.MULTILINE)[0]
    sections: dict[str, list[str]] = {}
    current = ""
    for line in nav.splitlines():
        match = re.match(r"^(?P<indent> *)- (?:(?P<title>[^:]+):)? ?(?P<page>\S+\.md)?$", line)
        if match is None:
            continue
        if len(match["indent"]) == 2:
            current = match["title"] or match["page"]
            sections[current] = []
        if match["page"]:
            sections[current].append(match["page"])
    return sections


def guides() -> list[str]:
    sections = nav_pages()
    return [*sections["Tutorial"], *sections["Guide"]]


def test_the_nav_is_read() -> None:
    sections = nav_pages()
    assert sections["Home"] == ["index.md"]
    assert "tutorial.md" in guides()
    assert "layer-drop.md" in guides()
    assert all(page.startswith("api/") for page in sections["API reference"])


def linked_pages(path: Path) -> set[str]:
    return {
        match["page"]
        for match in re.finditer(r"\]\((?P<page>[\w./-]+\.md)(?:#[\w-]*)?\)", path.read_text())
    }


@pytest.mark.parametrize("guide", guides())
def test_the_home_page_links_every_guide(guide: str) -> None:
    assert guide in linked_pages(DOCS / "index.md"), (
        f"docs/index.md does not link {guide}, a guide in mkdocs.yml's nav: add it to the "
        f"home page's feature list"
    )


FRONT_MATTER = re.compile(r"\A---\n(?P<meta>.*?)\n---\n", re.DOTALL)
# The performance page measures every feature: boosted, it would rank above each
# feature's own guide.
UNBOOSTED = {"performance.md"}


@pytest.mark.parametrize("guide", [guide for guide in guides() if guide not in UNBOOSTED])
def test_every_guide_is_boosted_in_the_search(guide: str) -> None:
    match = FRONT_MATTER.match((DOCS / guide).read_text())
    meta = match["meta"] if match else ""
    assert re.search(r"^search:\n +boost: [\d.]+$", meta, re.MULTILINE), (
        f"docs/{guide}:1: no 'search: boost:' front matter, so a search for its subject "
        f"ranks the API pages of error classes above the guide"
    )


@pytest.mark.parametrize("path", MARKDOWN, ids=page_id)
def test_every_output_has_its_title(path: Path) -> None:
    text = path.read_text()
    untitled = [
        f"{path.relative_to(ROOT)}:{line_of(text, match.start())}: an output block without "
        f'its title: write ```text title="Output"'
        for match in re.finditer(r"^<!-- docs: output -->\n(?P<fence>.*)$", text, re.MULTILINE)
        if match["fence"].strip() != '```text title="Output"'
    ]
    assert not untitled, "\n".join(untitled)


def mkdocs_list(key: str) -> list[str]:
    """The items of a top-level list in mkdocs.yml (``extra_css:``, ``extra_javascript:``)."""
    block = MKDOCS.read_text().split(f"\n{key}:\n", 1)[1]
    return re.findall(
        r"^  - (\S+)$", re.split(r"^\S", block, maxsplit=1, flags=re.MULTILINE)[0], re.M
    )


def test_the_site_needs_no_network_for_its_styles_scripts_and_formulas() -> None:
    assets = [*mkdocs_list("extra_css"), *mkdocs_list("extra_javascript")]
    assert "vendor/katex/katex.min.js" in assets
    for asset in assets:
        assert "://" not in asset, f"mkdocs.yml: {asset} is fetched from the network"
        assert (DOCS / asset).is_file(), f"mkdocs.yml names {asset}, which docs/ lacks"
    css = (DOCS / "vendor" / "katex" / "katex.min.css").read_text()
    fonts = set(re.findall(r"url\((fonts/[\w-]+\.woff2)\)", css))
    assert fonts, "katex.min.css names no woff2 font"
    missing = sorted(font for font in fonts if not (DOCS / "vendor" / "katex" / font).is_file())
    assert not missing, f"docs/vendor/katex/ lacks the fonts {missing}"


COUNTS = dict(enumerate(["no", "one", "two", "three", "four", "five", "six", "seven", "eight"]))


# The changelog says what was true when each change was made.
@pytest.mark.parametrize(
    "path", [path for path in MARKDOWN if path.name != "changelog.md"], ids=page_id
)
def test_the_pages_count_the_built_in_samplers_right(path: Path) -> None:
    text = path.read_text()
    counted = re.finditer(r"\b(?P<count>[a-z]+) \[?built-in (?:samplers|laws)\b", text)
    wrong = [
        f"{path.relative_to(ROOT)}:{line_of(text, match.start())}: says {match['count']!r} "
        f"built-in samplers; there are {COUNTS[len(BUILTIN_SAMPLERS)]}"
        for match in counted
        if match["count"] in COUNTS.values() and match["count"] != COUNTS[len(BUILTIN_SAMPLERS)]
    ]
    assert not wrong, "\n".join(wrong)
