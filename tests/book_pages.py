"""The pages of the book (_toc.yml is the single source of truth) and checks of what a reader sees on them."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def toc_files() -> list[str]:
    """Every file of the table of contents, root first, without suffix (e.g. 'book/intro')."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part.get("chapters", [])]
    return files


def notebooks() -> list[Path]:
    """The chapter notebooks of the book."""
    return [REPO / f"{f}.ipynb" for f in toc_files() if (REPO / f"{f}.ipynb").exists()]


# --- what a reader sees: raw TeX or pipe tables left in a rendered page ---------------------------------

# Removed before reading a page's text: code, cell outputs, typeset or to-be-typeset math, navigation.
NOT_PROSE = ("script", "style", "pre", "code", "nav", "header", "footer", ".math", "mjx-container",
             ".cell_output", ".output", ".highlight", ".bd-sidebar-primary", ".bd-sidebar-secondary",
             ".bd-header-article", ".prev-next-area", ".headerlink", ".toggle-details")
RAW_TEX = [
    (r"\$", "a literal '$' (display or inline math that was not parsed)"),
    (r"\\(?:frac|begin|end|left|right|sum|prod|int|mathrm|mathbb|mathcal|text|operatorname|sqrt|log|exp|cdot"
     r"|times|le|ge|leq|geq|alpha|beta|gamma|lambda|sigma|theta|tilde|hat|bar|big|Big)\b",
     "a raw TeX command"),
    (r"(?<![\w\\])\w+_\{", "a raw TeX subscript"),
]
PIPE_TABLE = [
    (r"\|\s*:?-{3,}", "a markdown table separator ('|---') left as text"),
    (r"(?m)^\s*\|[^|\n]*\|[^|\n]*\|", "a line of pipes (a markdown table that did not render)"),
]


def prose_text(html: str) -> str:
    """The text of a built page's article outside code cells, outputs, math and navigation.

    Paragraphs and list items each become one line (as a reader sees them)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    root = soup.select_one("article") or soup.select_one("main") or soup.body or soup
    for selector in NOT_PROSE:
        for element in root.select(selector):
            element.decompose()
    blocks = root.find_all(["p", "li", "td", "th", "h1", "h2", "h3", "h4", "dt", "dd", "blockquote"])
    lines = [" ".join(b.get_text(" ").split()) for b in blocks if not b.find(["p", "li"])]
    return "\n".join(line for line in lines if line)


def raw_markup_problems(html: str) -> list[str]:
    """Raw TeX or pipe tables in a rendered page's prose: one message per offending line."""
    import re

    problems = []
    for line in prose_text(html).splitlines():
        for pattern, what in RAW_TEX + PIPE_TABLE:
            if re.search(pattern, line):
                problems.append(f"{what}: {line[:160]!r}")
                break
    return problems


def rendered_tables(html: str) -> list[list[list[str]]]:
    """Every HTML table of a page as rows of cell texts (header row first)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    return [[[" ".join(c.get_text(" ").split()) for c in tr.find_all(["th", "td"])] for tr in t.find_all("tr")]
            for t in soup.find_all("table")]
