"""The chapters listed in _toc.yml (the book's table of contents is the single source of truth)."""
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
