"""lib.viz: the static explorable embeds every combination; the table validates its rows."""
import json
import re

import matplotlib.pyplot as plt
import plotly.graph_objects as go
import pytest

from lib import viz


def frames_of(html):
    return json.loads(re.search(r"var frames = (\{.*?\});\n", html, re.S).group(1))


def test_static_plotly_explorable_has_every_combination():
    calls = []

    def fn(a, b):
        calls.append((a, b))
        return go.Figure(go.Scatter(x=[0, 1], y=[a, b]))

    html = viz.static_explorable_html(fn, {"a": [1, 2, 3], "b": ["x", "y"]}, title="demo")
    frames = frames_of(html)
    assert sorted(frames) == sorted(f"{i},{j}" for i in range(3) for j in range(2))
    assert len(calls) == 6 and "template" not in frames["0,0"]["layout"]
    assert html.count('type="range"') == 2


def test_static_matplotlib_explorable_embeds_png():
    def fn(k):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, k])
        return fig

    frames = frames_of(viz.static_explorable_html(fn, {"k": [1.0, 2.0]}))
    assert all(v.startswith("data:image/png;base64,") for v in frames.values())
    assert frames["0"] != frames["1"]


def test_explorable_validation():
    with pytest.raises(ValueError, match="controls"):
        viz.static_explorable_html(lambda: None, {})
    with pytest.raises(ValueError, match="combinations"):
        viz.static_explorable_html(lambda a, b: None, {"a": range(20), "b": range(20)})
    with pytest.raises(TypeError, match="Figure"):
        viz.static_explorable_html(lambda a: 3, {"a": [1]})
    with pytest.raises(ValueError, match="initial"):
        viz.static_explorable_html(lambda a: go.Figure(), {"a": [1]}, initial={"a": 5})


def test_live_explorable_builds_widgets(monkeypatch):
    monkeypatch.setenv("BOOK_BUILD", "0")
    box = viz.explorable(lambda a, b: go.Figure(go.Scatter(y=[a])), {"a": [1, 2], "b": ["u", "v"]}, title="t")
    import ipywidgets

    assert isinstance(box, ipywidgets.VBox)


def test_post_vs_book_table():
    table = viz.post_vs_book([{"claim": "c", "post": 1.0, "book": 0.98765, "verdict": "reproduced", "note": "n"}])
    html = table.to_html()
    assert "0.9877" in html and "reproduced" in html
    with pytest.raises(ValueError, match="verdict"):
        viz.post_vs_book([{"claim": "c", "post": 1, "book": 2, "verdict": "maybe"}])
    with pytest.raises(ValueError, match="missing"):
        viz.post_vs_book([{"claim": "c"}])
    with pytest.raises(ValueError, match="verdict"):
        viz.post_vs_book([{"claim": "c", "post": 1, "book": 2, "verdict": "not"}])


def test_post_vs_book_writes_the_results_file(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("BOOK_RESULTS_DIR", str(tmp_path))
    rows = [{"claim": "c", "post": 1.0, "book": 0.5, "verdict": "partly", "test": "paired t, 5 seeds", "note": ""}]
    viz.post_vs_book(rows, chapter="99_demo", metrics={"demo_f1": 0.25, "demo_nan": float("nan")})
    saved = json.loads((tmp_path / "99_demo.json").read_text())
    assert saved["rows"][0]["verdict"] == "partly" and saved["rows"][0]["test"] == "paired t, 5 seeds"
    assert saved["metrics"] == {"demo_f1": 0.25, "demo_nan": None}
    assert "demo_f1 = 0.25" in capsys.readouterr().out
    with pytest.raises(ValueError, match="metrics"):
        viz.post_vs_book(rows, chapter="99_demo", metrics={"bad name": 1})


def test_results_payload_travels_in_the_output_metadata(tmp_path, monkeypatch):
    """The displayed table carries the payload, so a notebook restored from the execution cache still
    yields its results file (lib.scoreboard.regenerate), and the file equals the one written in the run."""
    import nbformat

    from lib import scoreboard

    monkeypatch.setenv("BOOK_RESULTS_DIR", str(tmp_path / "direct"))
    rows = [{"claim": "c", "post": 1.0, "book": 0.5, "verdict": "partly", "test": "paired t", "note": "n"}]
    table = viz.post_vs_book(rows, chapter="99_demo", metrics={"demo_f1": 0.25})
    data, metadata = table._repr_mimebundle_()
    assert "0.5" in data["text/html"] and "partly" in table.to_html()
    output = nbformat.v4.new_output("execute_result", data=data, metadata=metadata, execution_count=1)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("table", outputs=[output])])
    executed = tmp_path / "jupyter_execute" / "book"
    executed.mkdir(parents=True)
    nbformat.write(nbformat.from_dict(json.loads(nbformat.writes(notebook))), str(executed / "99_demo.ipynb"))
    found = scoreboard.regenerate(tmp_path / "jupyter_execute", tmp_path / "results", ["book/99_demo", "book/98_x"])
    assert list(found) == ["book/99_demo"]
    assert json.loads((tmp_path / "results" / "99_demo.json").read_text()) == \
        json.loads((tmp_path / "direct" / "99_demo.json").read_text())
    assert scoreboard.payload_from_notebook(nbformat.v4.new_notebook()) is None


def test_scoreboard_table_has_a_row_per_claim():
    from lib import scoreboard

    rows = [{"claim": f"c{i}", "post": "1", "book": "2", "verdict": v, "test": "t", "note": ""}
            for i, v in enumerate(["reproduced", "not reproduced"])]
    table = scoreboard._table(rows)
    body = [r for r in table.findall(lambda n: n.tagname == "row")][1:]
    assert [[e.astext() for e in r.children][:2] for r in body] == [["c0", "reproduced"], ["c1", "not reproduced"]]


def test_default_figures_fit_the_column():
    viz.setup()
    import matplotlib

    assert matplotlib.rcParams["figure.figsize"][0] <= 7.5
    assert min(matplotlib.rcParams[k] for k in ("font.size", "xtick.labelsize", "ytick.labelsize",
                                                 "legend.fontsize", "axes.labelsize")) >= 8
