"""Plotting defaults, the post-vs-book table, source display and the *explorable*.

An explorable is one call that gives a reader two things:

* in a live Jupyter kernel: ipywidgets controls that re-run `fn(**params)` and redraw the figure;
* in the static HTML book (built with ``BOOK_BUILD=1``): every combination of the controls is computed at
  build time and embedded; HTML sliders swap the figure in the browser without a kernel. Plotly figures
  are redrawn with ``Plotly.react`` (plotly.js is served once from ``_static``), matplotlib figures are
  embedded as PNG images.
"""
from __future__ import annotations

import base64
import html
import inspect
import io
import itertools
import json
import os
import uuid
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

MAX_COMBINATIONS = 200
VERDICT_COLOURS = {"reproduced": "#d8f0d8", "partly": "#fbeec2", "not reproduced": "#f6d3d3",
                   "inconclusive": "#e4e4f4", "mechanism only": "#eeeeee"}
RESULTS_DIR_NAME = "results"  # _build/results/<chapter>.json, read by the scoreboard
RESULTS_KEY = "kexue_book_results"  # the same payload, kept in the output's metadata (survives the cache)


def in_book_build() -> bool:
    """True while the book is being built (the Makefile exports BOOK_BUILD=1)."""
    return os.environ.get("BOOK_BUILD", "0") == "1"


def setup() -> None:
    """Matplotlib and pandas defaults shared by every chapter."""
    matplotlib.rcParams.update({
        "figure.figsize": (7.0, 3.6), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
        "savefig.bbox": "tight",
        # figures fit the text column (<= 7.5 in) and every label stays readable (>= 8 pt)
        "font.size": 10, "axes.labelsize": 10, "axes.titlesize": 10, "xtick.labelsize": 9,
        "ytick.labelsize": 9, "legend.fontsize": 9,
    })
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_colwidth", 120)
    import plotly.io as pio

    pio.templates.default = "plotly_white"
    pio.renderers.default = "plotly_mimetype"


def _is_plotly(fig: Any) -> bool:
    return type(fig).__module__.startswith("plotly")


def _is_matplotlib(fig: Any) -> bool:
    return isinstance(fig, matplotlib.figure.Figure)


def _plotly_payload(fig) -> dict:
    """A figure as {data, layout} JSON-ready dict, without the (large, repeated) template."""
    spec = json.loads(fig.to_json(validate=False))
    spec.get("layout", {}).pop("template", None)
    return {"data": spec.get("data", []), "layout": spec.get("layout", {})}


def _png_payload(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _label(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _validate_controls(controls: Mapping[str, Sequence]) -> dict[str, list]:
    if not isinstance(controls, Mapping) or not controls:
        raise ValueError(f"controls must be a non-empty mapping name -> list of values, got {controls!r}")
    clean = {}
    for name, values in controls.items():
        values = list(values)
        if not values:
            raise ValueError(f"controls[{name!r}] must list at least one value, got an empty sequence")
        clean[name] = values
    total = 1
    for values in clean.values():
        total *= len(values)
    if total > MAX_COMBINATIONS:
        raise ValueError(f"controls span {total} combinations; the static book embeds each one, "
                         f"so keep it at most {MAX_COMBINATIONS}")
    return clean


def static_explorable_html(fn: Callable[..., Any], controls: Mapping[str, Sequence], *, title: str = "",
                           initial: Mapping[str, Any] | None = None) -> str:
    """Precompute `fn` on every combination of `controls` and return self-contained HTML + JS sliders."""
    controls = _validate_controls(controls)
    names = list(controls)
    frames, kind = {}, None
    for indices in itertools.product(*(range(len(controls[n])) for n in names)):
        fig = fn(**{n: controls[n][i] for n, i in zip(names, indices)})
        if _is_plotly(fig):
            frame_kind, payload = "plotly", _plotly_payload(fig)
        elif _is_matplotlib(fig):
            frame_kind, payload = "png", _png_payload(fig)
        else:
            raise TypeError(f"fn must return a plotly or matplotlib Figure, got {type(fig).__name__}")
        if kind not in (None, frame_kind):
            raise TypeError("fn must return the same kind of figure (plotly or matplotlib) for every combination")
        kind = frame_kind
        frames[",".join(map(str, indices))] = payload
    start = {n: 0 for n in names}
    for n, v in (initial or {}).items():
        if n not in controls or v not in controls[n]:
            raise ValueError(f"initial[{n!r}] must be one of controls[{n!r}], got {v!r}")
        start[n] = controls[n].index(v)
    uid = "explorable-" + uuid.uuid4().hex[:10]
    rows = []
    for n in names:
        labels = [_label(v) for v in controls[n]]
        rows.append(
            f'<label class="explorable-control">{html.escape(n)} '
            f'<input type="range" min="0" max="{len(labels) - 1}" step="1" value="{start[n]}" '
            f'data-name="{html.escape(n)}" data-labels="{html.escape(json.dumps(labels))}"> '
            f'<output>{html.escape(labels[start[n]])}</output></label>'
        )
    template = json.dumps(_template_json()) if kind == "plotly" else "null"
    target = f'<div class="explorable-plot" id="{uid}-plot"></div>' if kind == "plotly" else \
        f'<img class="explorable-plot" id="{uid}-plot" alt="{html.escape(title or "explorable figure")}">'
    return f"""
<div class="explorable" id="{uid}" data-kind="{kind}">
  {f'<div class="explorable-title">{html.escape(title)}</div>' if title else ''}
  <div class="explorable-controls">{''.join(rows)}</div>
  {target}
  <script type="text/javascript">
  (function() {{
    var root = document.getElementById("{uid}");
    var frames = {json.dumps(frames, separators=(",", ":"))};
    var template = {template};
    var kind = "{kind}";
    var inputs = root.querySelectorAll("input[type=range]");
    function key() {{ return Array.prototype.map.call(inputs, function(i) {{ return i.value; }}).join(","); }}
    function draw() {{
      Array.prototype.forEach.call(inputs, function(i) {{
        i.nextElementSibling.textContent = JSON.parse(i.dataset.labels)[+i.value];
      }});
      var frame = frames[key()];
      var target = document.getElementById("{uid}-plot");
      if (kind === "png") {{ target.src = frame; root.dataset.frame = key(); return; }}
      if (!window.Plotly) {{ return setTimeout(draw, 50); }}
      var layout = Object.assign({{}}, frame.layout, {{template: template}});
      window.Plotly.react(target, frame.data, layout, {{responsive: true, displaylogo: false}});
      root.dataset.frame = key();
    }}
    Array.prototype.forEach.call(inputs, function(i) {{ i.addEventListener("input", draw); }});
    draw();
  }})();
  </script>
</div>"""


def _template_json() -> dict:
    import plotly.io as pio

    return json.loads(json.dumps(pio.templates[pio.templates.default].to_plotly_json(), default=str))


def _display_figure(fig: Any) -> None:
    from IPython.display import display

    if _is_matplotlib(fig):
        display(fig)
        plt.close(fig)
    else:
        display(fig)


def live_explorable(fn: Callable[..., Any], controls: Mapping[str, Sequence], *, title: str = "",
                    initial: Mapping[str, Any] | None = None):
    """ipywidgets controls (slider for numbers, dropdown otherwise) that re-run `fn` on change."""
    import ipywidgets as widgets

    controls = _validate_controls(controls)
    boxes = {}
    for name, values in controls.items():
        value = (initial or {}).get(name, values[0])
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        options = [(_label(v), v) for v in values]
        common = dict(options=options, value=value, description=name, style={"description_width": "initial"})
        boxes[name] = (widgets.SelectionSlider(continuous_update=False, **common) if numeric and len(values) > 1
                       else widgets.Dropdown(**common))
    out = widgets.Output()

    def redraw(**params):
        out.clear_output(wait=True)
        with out:
            _display_figure(fn(**params))

    widgets.interactive_output(redraw, boxes)
    header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
    return widgets.VBox(header + [widgets.HBox(list(boxes.values())), out])


def explorable(fn: Callable[..., Any], controls: Mapping[str, Sequence], *, title: str = "",
               initial: Mapping[str, Any] | None = None):
    """Live ipywidgets in Jupyter; precomputed HTML sliders in the book build (BOOK_BUILD=1).

    fn(**params) -> plotly or matplotlib Figure; controls = {name: list of values}."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if in_book_build():
        from IPython.display import HTML

        return HTML(static_explorable_html(fn, controls, title=title, initial=initial))
    return live_explorable(fn, controls, title=title, initial=initial)


def show(fig: Any):
    """Display one plotly figure: HTML using the book's plotly.js in the build, the native renderer live."""
    from IPython.display import HTML, display

    if in_book_build() and _is_plotly(fig):
        return display(HTML(fig.to_html(include_plotlyjs=False, full_html=False, config={"displaylogo": False})))
    return _display_figure(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_dir():
    """Where chapters write their results files: ``$BOOK_RESULTS_DIR``, else ``<repo>/_build/results``."""
    from pathlib import Path

    from lib.utils import REPO_ROOT

    return Path(os.environ.get("BOOK_RESULTS_DIR") or REPO_ROOT / "_build" / RESULTS_DIR_NAME)


def write_results(payload: Mapping[str, Any], folder=None):
    """Write one chapter's payload ``{chapter, rows, metrics}`` to ``<folder>/<chapter>.json``
    (default :func:`results_dir`) and return the path."""
    from pathlib import Path

    folder = Path(folder) if folder is not None else results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{payload['chapter']}.json"
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    import math

    import numpy as np

    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def post_vs_book(rows: Sequence[Mapping[str, Any]], *, chapter: str | None = None,
                 metrics: Mapping[str, Any] | None = None):
    """The chapter's closing table. Each row: ``claim``, ``post``, ``book`` (computed in the run),
    ``verdict`` (one of :data:`lib.verdicts.VERDICTS`, colour-coded), ``test`` (how it was decided, e.g.
    "paired t over 5 seeds", "exact identity") and ``note``.

    With ``chapter`` (the notebook's stem, e.g. ``"07_gplinker_relations"``) the rows and the chapter's
    headline ``metrics`` (stable names -> numbers) are also written to ``results_dir()/<chapter>.json``
    for the scoreboard, and the metrics are printed as ``name = value`` lines."""
    from lib.verdicts import VERDICTS

    required = ("claim", "post", "book", "verdict")
    frame_rows, records = [], []
    for i, row in enumerate(rows):
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] must have keys {required} (+ optional test, note), missing {missing}")
        if row["verdict"] not in VERDICTS:
            raise ValueError(f"rows[{i}]['verdict'] must be one of {VERDICTS}, got {row['verdict']!r}")
        record = {"claim": str(row["claim"]), "post": _fmt(row["post"]), "book": _fmt(row["book"]),
                  "verdict": row["verdict"], "test": str(row.get("test", "")), "note": str(row.get("note", ""))}
        records.append(record)
        frame_rows.append({"claim": record["claim"], "post": record["post"], "this book": record["book"],
                           "verdict": record["verdict"], "test": record["test"], "note": record["note"]})
    if chapter is not None:
        if not isinstance(chapter, str) or not chapter.replace("_", "").isalnum():
            raise ValueError(f"chapter must be the notebook's stem like '07_gplinker_relations', got {chapter!r}")
        metrics = dict(metrics or {})
        for name in metrics:
            if not isinstance(name, str) or not name.replace("_", "").isalnum():
                raise ValueError(f"metrics: names must be identifiers like 'webnlg_test_f1', got {name!r}")
        payload = {"chapter": chapter, "rows": records, "metrics": {k: _jsonable(v) for k, v in metrics.items()}}
        write_results(payload)
        for name, value in metrics.items():
            print(f"{name} = {_fmt(value)}")
    frame = pd.DataFrame(frame_rows)
    styled = (frame.style.hide(axis="index")
              .map(lambda v: f"background-color: {VERDICT_COLOURS[v]}", subset=["verdict"])
              .set_properties(**{"text-align": "left", "white-space": "normal"}))
    return styled if chapter is None else ResultsTable(styled, payload)


class ResultsTable:
    """The styled table of :func:`post_vs_book` plus the chapter's results payload.

    Displayed, it is a mime bundle ``text/html`` (the table the reader sees) whose output metadata holds the
    payload under :data:`RESULTS_KEY`. The payload therefore lives in the executed notebook's outputs, so the execution
    cache keeps it and the scoreboard (:mod:`lib.scoreboard`) can rebuild the results file of a chapter
    that was restored from the cache rather than re-run. Anything else is delegated to the pandas Styler."""

    def __init__(self, styler, payload: dict):
        self.styler = styler
        self.payload = payload

    def _repr_mimebundle_(self, include=None, exclude=None):
        return ({"text/html": self.styler.to_html(), "text/plain": self.styler.data.to_string(index=False)},
                {RESULTS_KEY: self.payload})

    def __getattr__(self, name):
        return getattr(self.styler, name)


def show_source(obj: Any):
    """Show the source code of a lib function or class as a highlighted code block."""
    from IPython.display import Markdown

    try:
        source = inspect.getsource(obj)
    except TypeError as error:
        raise TypeError(f"obj must be a module, class or function, got {type(obj).__name__}") from error
    return Markdown(f"```python\n{source}\n```")
