"""The book's last page: every claim of every chapter with its verdict, built at book-build time.

Each chapter's closing table (:func:`lib.viz.post_vs_book` with ``chapter=``) is displayed as an HTML table
whose output metadata carries the chapter's results payload (under :data:`lib.viz.RESULTS_KEY`), so the
payload lives wherever the executed notebook does: in ``_build/jupyter_execute/<doc>.ipynb`` when myst-nb
executed the chapter in this build, in the execution cache (``_build/.jupyter_cache``) when the chapter was
restored from it (myst-nb then writes a copy without outputs).

This Sphinx extension:

* after all documents are read (``env-updated``), extracts each chapter's payload from its executed
  notebook — the copy myst-nb wrote, or, for a chapter restored from the execution cache, the cached
  notebook — and (re)writes ``_build/results/<chapter>.json``: a cached chapter therefore still has its
  file, and a re-executed chapter's file is rewritten;
* marks the scoreboard page as outdated on every build (``env-get-outdated``), so it is never stale;
* replaces the ``{scoreboard}`` directive's placeholder, when the page is resolved, with one table per
  chapter (claim, verdict, test, this book) and a link back to the chapter.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from docutils import nodes
from docutils.parsers.rst import Directive

from lib.viz import RESULTS_KEY, VERDICT_COLOURS, write_results

COLUMNS = ("claim", "verdict", "this book", "test")


def payload_from_notebook(notebook: dict) -> dict | None:
    """The last results payload displayed in an executed notebook (nbformat dict), or None."""
    found = None
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            metadata = output.get("metadata", {})
            if RESULTS_KEY in metadata:
                found = metadata[RESULTS_KEY]
    return found


def payload_from_cache(cache_dir: Path, source: Path) -> dict | None:
    """The payload of the notebook ``source`` as executed in the jupyter-cache at ``cache_dir``
    (matched on the notebook's code, as myst-nb does), or None."""
    if not Path(cache_dir).is_dir() or not Path(source).is_file():
        return None
    import nbformat
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    try:
        record = cache.match_cache_notebook(nbformat.read(str(source), as_version=4))
    except KeyError:
        return None
    return payload_from_notebook(cache.get_cache_bundle(record.pk).nb)


def regenerate(executed_dir: Path, results_dir: Path, docs: Iterable[str], *, source_dir: Path | None = None,
               cache_dir: Path | None = None) -> dict[str, dict]:
    """For each doc (e.g. ``book/03_entropy_normalization``) whose executed notebook holds a payload,
    rewrite ``results_dir/<chapter>.json``; return ``{doc: payload}``.

    The executed notebook is ``executed_dir/<doc>.ipynb`` (myst-nb writes it when it executes a notebook);
    for a notebook restored from the execution cache, whose written copy has no outputs, the payload is read
    from the cache at ``cache_dir`` (matching the source ``source_dir/<doc>.ipynb``)."""
    found = {}
    for doc in docs:
        path = Path(executed_dir) / f"{doc}.ipynb"
        payload = payload_from_notebook(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
        if payload is None and cache_dir is not None and source_dir is not None:
            payload = payload_from_cache(cache_dir, Path(source_dir) / f"{doc}.ipynb")
        if payload is not None:
            write_results(payload, results_dir)
            found[doc] = payload
    return found


class scoreboard_placeholder(nodes.General, nodes.Element):
    """Filled in at doctree-resolved time."""


class ScoreboardDirective(Directive):
    has_content = False

    def run(self):
        return [scoreboard_placeholder()]


def _chapter_docs(env) -> list[str]:
    """Chapters in table-of-contents order: every notebook doc except the root and the scoreboard."""
    order = []
    site_map = getattr(env, "external_site_map", None)
    if site_map is not None:
        order = [d for d in site_map if d != site_map.root.docname]
    else:  # pragma: no cover - without sphinx_external_toc
        order = sorted(env.found_docs)
    return [d for d in order if env.doc2path(d).endswith(".ipynb")]


def _executed_dir(app) -> Path:
    return Path(app.outdir).parent / "jupyter_execute"


def _results_dir(app) -> Path:
    return Path(app.outdir).parent / "results"


def _regenerate(app, env) -> dict[str, dict]:
    cache = app.config["nb_execution_cache_path"] or Path(app.outdir).parent / ".jupyter_cache"
    return regenerate(_executed_dir(app), _results_dir(app), _chapter_docs(env), source_dir=Path(app.srcdir),
                      cache_dir=Path(cache))


def on_env_updated(app, env):
    env.kexue_scoreboard = _regenerate(app, env)
    return []


def on_env_get_outdated(app, env, added, changed, removed):
    return [d for d in env.found_docs if d.endswith("scoreboard")]


def _cell(text: str, colour: str | None = None) -> nodes.entry:
    entry = nodes.entry()
    if colour:
        entry["classes"].append("scoreboard-" + colour.replace(" ", "-"))
    entry += nodes.paragraph(text=text)
    return entry


def _table(rows: list[dict[str, Any]]) -> nodes.table:
    table = nodes.table(classes=["scoreboard-table"])
    group = nodes.tgroup(cols=len(COLUMNS))
    table += group
    for width in (40, 12, 24, 24):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for name in COLUMNS:
        row += _cell(name)
    head += row
    group += head
    body = nodes.tbody()
    for record in rows:
        row = nodes.row()
        row += _cell(record["claim"])
        row += _cell(record["verdict"], record["verdict"])
        row += _cell(record["book"])
        row += _cell(record["test"])
        body += row
    group += body
    return table


def on_doctree_resolved(app, doctree, docname):
    placeholders = list(doctree.findall(scoreboard_placeholder))
    if not placeholders:
        return
    env = app.env
    results = getattr(env, "kexue_scoreboard", None)
    if results is None:
        results = _regenerate(app, env)
    content = []
    counts = {v: 0 for v in VERDICT_COLOURS}
    for doc in _chapter_docs(env):
        title = env.titles[doc].astext() if doc in env.titles else doc
        section = nodes.section(ids=["scoreboard-" + doc.split("/")[-1].replace("_", "-")])
        heading = nodes.paragraph(classes=["scoreboard-chapter"])
        link = nodes.reference(internal=True, refuri=app.builder.get_relative_uri(docname, doc), text=title)
        heading += nodes.strong("", "", link)
        section += heading
        payload = results.get(doc)
        if payload is None:
            section += nodes.paragraph(text="This chapter recorded no results (its closing table was not "
                                            "built with a chapter name).", classes=["scoreboard-missing"])
        else:
            for record in payload["rows"]:
                counts[record["verdict"]] = counts.get(record["verdict"], 0) + 1
            section += _table(payload["rows"])
        content.append(section)
    summary = nodes.paragraph(text="Verdicts over all chapters: " + ", ".join(
        f"{v} {n}" for v, n in counts.items()) + ".", classes=["scoreboard-summary"])
    for placeholder in placeholders:
        placeholder.replace_self([summary] + content)


def setup(app):
    app.add_node(scoreboard_placeholder)
    app.add_directive("scoreboard", ScoreboardDirective)
    app.connect("env-get-outdated", on_env_get_outdated)
    app.connect("env-updated", on_env_updated)
    app.connect("doctree-resolved", on_doctree_resolved)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
