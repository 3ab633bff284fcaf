"""What a reader reads, checked in the notebook sources (fast, no execution, no build).

* Reader text never points to documents the reader does not have (specs, pitfall or flag numbers, issue
  numbers, experiment ids, internal planning files). Checked in every markdown cell, in the comments and
  strings of every code cell, and in the source of every lib function a chapter shows with
  ``viz.show_source``.
* Display math is well formed: ``$$`` balanced, on its own lines, with blank lines around the block.
* A markdown table has a blank line before it (otherwise it renders as a paragraph of pipes).
* Figures fit the text column: matplotlib ``figsize`` width <= 7.5 in, plotly ``width`` <= 700 px, font
  sizes >= 8 pt.

Every check has a fixture below showing that it fails on a deliberately bad cell.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import nbformat
import pytest

from book_pages import REPO, notebooks, raw_markup_problems

# (pattern, what it is). Case-insensitive unless the pattern spells an id's capital letter; chosen so that "spectral", "special", "specific", "F1 score",
# "P@10", a heading "Pitfall" or the English word "issue" do not match.
INTERNAL_REFERENCES = [
    (r"\bspecs?\b", "'spec' (a planning document)"),
    (r"\bspecification\b", "'specification' (a planning document)"),
    (r"\bpitfalls?\s*#?\s*P?\d+\b", "a numbered pitfall"),
    (r"\bP\d{1,2}\s+of\s+the\b", "a numbered pitfall"),
    (r"\bflags?\s*#?\s*F\d+\b", "a numbered flag"),
    (r"\bissues?\s*#\s*\d*", "an issue number"),
    (r"\bissues?\s+\d+\b", "an issue number"),
    (r"\b(?:CHAPTERS|DESIGN|HELPER_RULES|CONTRIBUTING)(?:\.md)?\b", "an internal planning file"),
    (r"\bpost files?\b", "'the post file'"),
    (r"/work/|shared/posts|\.\./shared", "a path of the authors' workspace"),
    (r"\b(?i:experiments?|checks?|claims?|items?)\s+[A-Z]\d{1,2}\b", "an experiment id"),
    (r"\b[A-Z]\d{1,2}\s+(?i:of|in)\s+(?i:the\s+)?(?i:spec|brief|plan|design|chapter list)", "an experiment id"),
    (r"\bthe brief\b", "'the brief'"),
    (r"\((?:spec\s+)?[A-Z]\d{1,2}\)", "an experiment or formula id in parentheses"),
    (r"\b(?:as|was)\s+(?:filed|requested)\s+in\b", "a reference to a request"),
]


def internal_references(text: str) -> list[str]:
    """One message per match of :data:`INTERNAL_REFERENCES` in ``text``."""
    found = []
    for pattern, what in INTERNAL_REFERENCES:
        flags = 0 if re.search(r"\[A-Z\]|CHAPTERS", pattern) else re.IGNORECASE
        for match in re.finditer(pattern, text, flags):
            start = max(0, match.start() - 40)
            found.append(f"{what}: ...{text[start:match.end() + 40]!r}...")
    return found


def code_prose(source: str) -> str:
    """The comments and string literals of a code cell (what a reader reads in it)."""
    pieces = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.COMMENT, tokenize.STRING):
                pieces.append(tok.string)
            elif getattr(tokenize, "FSTRING_MIDDLE", None) == tok.type:
                pieces.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(line for line in source.splitlines() if "#" in line)
    return "\n".join(pieces)


def lib_definitions() -> dict[str, str]:
    """Source of every top-level function and class of lib/*.py (and methods, as Class.method), by name."""
    sources = {}
    for file in sorted((REPO / "lib").glob("*.py")):
        text = file.read_text(encoding="utf-8")
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                sources.setdefault(node.name, ast.get_source_segment(text, node))
                for item in getattr(node, "body", []) if isinstance(node, ast.ClassDef) else []:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        sources.setdefault(f"{node.name}.{item.name}", ast.get_source_segment(text, item))
    return sources


SHOW_SOURCE = re.compile(r"show_source\(\s*([\w.]+)\s*\)")


def shown_sources(code: str, definitions: dict[str, str]) -> dict[str, str]:
    """The lib sources a code cell displays with ``viz.show_source(x)`` (matched by the trailing name)."""
    shown = {}
    for target in SHOW_SOURCE.findall(code):
        parts = target.split(".")
        for k in (2, 1):
            name = ".".join(parts[-k:])
            if name in definitions:
                shown[target] = definitions[name]
                break
    return shown


def math_problems(markdown: str) -> list[str]:
    """Display math that will not render: unbalanced ``$$``, ``$$`` sharing a line with prose, no blank line
    around a display block. ``$$ x $$`` alone on its line is accepted."""
    problems = []
    lines = markdown.split("\n")
    if markdown.count("$$") % 2:
        problems.append("an odd number of '$$' (an unclosed display block)")
    inside, fence = False, False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = not fence
        if fence or "$$" not in line:
            continue
        count = line.count("$$")
        alone = stripped == "$$" or (count == 2 and stripped.startswith("$$") and re.match(r"^\$\$.*\$\$(\s*\(\S+\))?$", stripped))
        if not inside and not alone and not (count == 1 and stripped.startswith("$$")):
            problems.append(f"line {i + 1}: '$$' inside a line of prose: {stripped[:80]!r}")
        opening = not inside
        closing = inside or (count == 2)
        if count == 1:
            inside = not inside
        if count == 1 and not stripped.startswith("$$") and not stripped.endswith("$$"):
            problems.append(f"line {i + 1}: '$$' in the middle of a line: {stripped[:80]!r}")
        if opening and i > 0 and lines[i - 1].strip():
            problems.append(f"line {i + 1}: no blank line before a display block: {lines[i - 1].strip()[:80]!r}")
        if closing and not inside and i + 1 < len(lines) and lines[i + 1].strip():
            problems.append(f"line {i + 1}: no blank line after a display block: {lines[i + 1].strip()[:80]!r}")
    return problems


def table_problems(markdown: str) -> list[str]:
    """A markdown table (a line of pipes followed by a '|---' separator) with no blank line before it."""
    problems = []
    lines = markdown.split("\n")
    for i in range(1, len(lines)):
        header, separator = lines[i - 1].strip(), lines[i].strip()
        if header.startswith("|") and re.match(r"^\|?\s*:?-{3,}", separator):
            above = lines[i - 2].strip() if i >= 2 else ""
            if above and not above.startswith("|"):
                problems.append(f"line {i}: no blank line before the table: {above[:80]!r}")
    return problems


GLUE_ROLE = re.compile(r"\{glue(?::\w*)?\}`([^`]*)`")
GLUE_KEY = re.compile(r"^[A-Za-z_][\w.-]*(?::[^`\s]*)?$")  # key, optionally ':' and a format spec


def glue_problems(markdown: str) -> list[str]:
    """Glue roles whose content is not ``key`` or ``key:format`` (a missing closing backtick swallows the
    following prose into the key, and the build only warns that no such key exists)."""
    problems = [f"malformed glue role: {{glue}}`{content[:60]}...`" for content in GLUE_ROLE.findall(markdown)
                if not GLUE_KEY.match(content)]
    opened, closed = markdown.count("{glue"), len(GLUE_ROLE.findall(markdown))
    if opened != closed:
        problems.append(f"{opened} glue roles opened, {closed} well formed")
    return problems


FIGSIZE = re.compile(r"figsize\s*=\s*\(\s*([0-9.]+)")
PLOTLY_WIDTH = re.compile(r"(?:update_layout|go\.Layout|make_subplots|px\.\w+)\([^)]*?\bwidth\s*=\s*([0-9]+)", re.S)
FONT_SIZE = re.compile(r"\b(?:fontsize|labelsize|titlesize|size)\s*=\s*([0-9.]+)")


def figure_problems(code: str) -> list[str]:
    """Figures wider than the text column or labels under 8 pt in a code cell."""
    problems = []
    for width in FIGSIZE.findall(code):
        if float(width) > 7.5:
            problems.append(f"figsize width {width} in > 7.5 in (the text column)")
    for width in PLOTLY_WIDTH.findall(code):
        if int(width) > 700:
            problems.append(f"plotly width {width} px > 700 px (the text column)")
    for line in code.splitlines():
        if re.search(r"font|label|tick|title|annot|text", line, re.I):
            for size in FONT_SIZE.findall(line):
                if float(size) < 8:
                    problems.append(f"font size {size} pt < 8 pt: {line.strip()[:80]!r}")
    return problems


def notebook_problems(path: Path, definitions: dict[str, str]) -> list[str]:
    notebook = nbformat.read(str(path), as_version=4)
    problems = []
    for index, cell in enumerate(notebook.cells):
        where = f"{path.name} cell {index}"
        if cell.cell_type == "markdown":
            problems += [f"{where}: {p}" for p in internal_references(cell.source)]
            problems += [f"{where}: {p}" for p in math_problems(cell.source)]
            problems += [f"{where}: {p}" for p in table_problems(cell.source)]
            problems += [f"{where}: {p}" for p in glue_problems(cell.source)]
        elif cell.cell_type == "code":
            problems += [f"{where} (code comment/string): {p}" for p in internal_references(code_prose(cell.source))]
            for target, source in shown_sources(cell.source, definitions).items():
                problems += [f"{where} (shown source of {target}): {p}" for p in internal_references(source)]
            problems += [f"{where}: {p}" for p in figure_problems(cell.source)]
    return problems


@pytest.fixture(scope="module")
def definitions():
    return lib_definitions()


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_reader_text_of_every_notebook(path, definitions):
    problems = notebook_problems(path, definitions)
    assert not problems, f"{len(problems)} problem(s) a reader would see:\n" + "\n".join(problems)


def test_the_intro_and_scoreboard_pages():
    for page in ("book/intro.md", "book/scoreboard.md"):
        text = (REPO / page).read_text(encoding="utf-8")
        assert not internal_references(text) + math_problems(text) + table_problems(text), page


# --- the checkers fail on deliberately bad cells (and pass legitimate words) ----------------------------

@pytest.mark.parametrize("bad", [
    "As D3 of the spec says, the std is 0.02.",
    "This is pitfall P10.",
    "See spec flag F1 for the details.",
    "The spec behind this chapter asks for it.",
    "We follow CHAPTERS.md here.",
    "Fixed in issue #13.",
    "As issue 12 asks, three seeds.",
    "The post file lists it.",
    "Experiment E8 of the spec is skipped.",
    "Check B5 runs last.",
    "The dense form (C8) of the loss.",
    "Read ../shared/DESIGN.md first.",
])
def test_internal_reference_fixture_fails(bad):
    assert internal_references(bad), bad


@pytest.mark.parametrize("fine", [
    "The spectral norm of W is special, a specific case.",
    "## Pitfall: the warmup\n\nF1 score of 0.58; P@10 too.",
    "The issue with this estimate is its variance.",
    "Table 2 of the paper; step 5 of the algorithm; the post's figure 3.",
])
def test_internal_reference_checker_passes_legitimate_words(fine):
    assert not internal_references(fine), internal_references(fine)


def test_bad_notebook_fixture_fails(tmp_path, definitions):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nAs spec B5 says (pitfall P7), the set is\n$$A = \\{v\\},$$\nthe children.\n"
                                      "Measured numbers:\n| a | b |\n|---|---|\n| 1 | 2 |\n"),
        nbformat.v4.new_code_cell("# see flag F1\nfig, ax = plt.subplots(figsize=(11, 3))\nax.set_title('x', fontsize=6)"),
    ]
    path = tmp_path / "99_bad.ipynb"
    nbformat.write(notebook, str(path))
    problems = "\n".join(notebook_problems(path, definitions))
    for expected in ("'spec'", "numbered pitfall", "numbered flag", "no blank line before a display block",
                     "no blank line before the table", "figsize width 11", "font size 6"):
        assert expected in problems, (expected, problems)


def test_math_checker():
    good = "Text before.\n\n$$\nx = \\frac{1}{2}\n$$\n\nText after.\n\n$$ y = 1 $$\n\nEnd."
    assert not math_problems(good)
    assert math_problems("Text\n$$\nx\n$$\n\nEnd.")        # no blank line before
    assert math_problems("Text\n\n$$\nx\n$$\nEnd.")        # no blank line after
    assert math_problems("Text\n\n$$\nx\n\nEnd.")          # unclosed
    assert math_problems("the set is $$A = 1,$$ here.")   # inline $$


def test_glue_checker():
    assert not glue_problems("F1 is {glue:text}`f1:.3f` and {glue:}`n` and {glue:text}`web_p`.")
    assert glue_problems("about {glue:text}`hours:.0f hours here; about {glue:text}`gpu:.0f` minutes")
    assert glue_problems("a role {glue:text}`left open")


def test_table_checker():
    assert not table_problems("Text.\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert table_problems("Text:\n| a | b |\n|---|---|\n| 1 | 2 |")


def test_shown_source_is_checked(definitions):
    shown = shown_sources("viz.show_source(viz.post_vs_book)", definitions)
    assert "def post_vs_book" in shown["viz.post_vs_book"]


# --- the rendered-page checker (used by the browser test on the built book) -----------------------------

FIXTURE_PAGE = """<html><body><nav>$ nav is ignored $</nav><main><article>
<h1>Demo</h1>
<p>The allowed set is $$A(y_{&lt;t}) = \\{v : \\text{prefix}\\},$$ the children.</p>
<p>Measured numbers: | a | b | |---|---| | 1 | 2 |</p>
<div class="cell_output"><pre>$ 3 | x | y |</pre></div>
</article></main></body></html>"""

CLEAN_PAGE = """<html><body><main><article><h1>Demo</h1>
<p>The set <span class="math notranslate nohighlight">\\(A(y_{&lt;t})\\)</span> is small.</p>
<div class="math notranslate nohighlight">\\[\\frac{1}{2}\\]</div>
<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>
<div class="cell_output"><pre>$$ raw output is fine $$</pre></div>
<div class="highlight"><pre>x = "$\\frac"</pre></div></article></main></body></html>"""


def test_rendered_page_checker_fails_on_raw_tex_and_pipes():
    problems = raw_markup_problems(FIXTURE_PAGE)
    assert any("'$'" in p for p in problems), problems
    assert any("table" in p for p in problems), problems
    assert not any("nav is ignored" in p or "| x | y |" in p for p in problems), problems


def test_rendered_page_checker_passes_typeset_math_and_tables():
    assert raw_markup_problems(CLEAN_PAGE) == []
