"""Book-build plumbing shared by the Makefile and the notebook tests.

`python -m lib.build prepare`:
* copies plotly.js from the installed plotly package into `book/_static` (served once, never inlined);
* invalidates the notebook execution cache when the `lib` sources or the requirements changed
  (jupyter-cache keys on notebook code only, so a lib change would otherwise reuse stale outputs).
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from lib.utils import REPO_ROOT

EXECUTION_CACHE = REPO_ROOT / "_build" / ".jupyter_cache"
STAMP = REPO_ROOT / "_build" / ".lib-hash"


def lib_hash() -> str:
    """SHA-256 of every lib/*.py file and requirements.txt (sorted by path)."""
    digest = hashlib.sha256()
    for file in sorted((REPO_ROOT / "lib").glob("*.py")) + [REPO_ROOT / "requirements.txt"]:
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def invalidate_stale_cache() -> bool:
    """Delete the execution cache if lib changed since it was filled; return True if it was deleted."""
    current = lib_hash()
    stale = STAMP.exists() and STAMP.read_text().strip() != current
    if stale or not STAMP.exists():
        shutil.rmtree(EXECUTION_CACHE, ignore_errors=True)
    STAMP.parent.mkdir(parents=True, exist_ok=True)
    STAMP.write_text(current)
    return stale


def copy_plotly_js() -> Path:
    """Copy plotly.min.js into book/_static (git-ignored) and return its path."""
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = REPO_ROOT / "book" / "_static" / "plotly.min.js"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)
    return target


def main(argv: list[str]) -> None:
    if argv != ["prepare"]:
        raise SystemExit("usage: python -m lib.build prepare")
    copy_plotly_js()
    if invalidate_stale_cache():
        print("lib changed since the last build: execution cache cleared")


if __name__ == "__main__":
    main(sys.argv[1:])
