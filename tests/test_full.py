"""lib.full: FULL configs from one definition, recorded FULL runs shown only when their config matches,
records written with their provenance, chapters found by number, failures summarized."""
import json

import pytest

from lib import full, utils


def build(pick):
    return {"epochs": pick(3, 20), "train": pick(1000, 5019), "lr": 1e-3, "layers": [pick(1, 6)]}


def test_configs_gives_the_full_config_in_a_fast_run(monkeypatch):
    monkeypatch.setattr(utils, "FULL", False)
    current, full_config = full.configs(build)
    assert current == {"epochs": 3, "train": 1000, "lr": 1e-3, "layers": [1]}
    assert full_config == {"epochs": 20, "train": 5019, "lr": 1e-3, "layers": [6]}
    monkeypatch.setattr(utils, "FULL", True)
    assert full.configs(build) == (full_config, full_config)
    with pytest.raises(TypeError, match="build must be a function of pick"):
        full.configs({"epochs": 3})


def test_config_hash_ignores_key_order_and_sees_every_value():
    a = {"epochs": 20, "lr": 1e-3}
    assert full.config_hash(a) == full.config_hash({"lr": 1e-3, "epochs": 20})
    assert full.config_hash(a) != full.config_hash({"epochs": 21, "lr": 1e-3})
    with pytest.raises(TypeError, match="changes between runs"):
        full.config_hash({"loss": lambda x: x})


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setattr(full, "RECORDS_DIR", tmp_path / "results" / "full")
    monkeypatch.setenv("BOOK_RESULTS_DIR", str(tmp_path / "build_results"))
    return tmp_path


def test_missing_record_says_how_to_make_one(records):
    found = full.recorded("07_gplinker_relations", {"epochs": 20})
    assert found.status == "missing" and found.metrics == {}
    assert "make full CHAPTER=07" in str(found) and "make full CHAPTER=07" in found._repr_html_()
    assert found.wall_text == "none recorded yet"


def test_record_with_the_same_config_is_shown_in_its_own_labelled_table(records):
    config = {"epochs": 20, "train": 5019}
    full.write_record("07_gplinker_relations", metrics={"webnlg_test_f1": 0.912}, config=config,
                      wall_seconds=3600.0, device="cpu (2 cores)", commit="0123456789abcdef")
    found = full.recorded("07_gplinker_relations", {"train": 5019, "epochs": 20})
    assert found.status == "current" and found.metrics == {"webnlg_test_f1": 0.912}
    page = found._repr_html_()
    assert "recorded FULL run: commit 0123456789, device cpu (2 cores), date" in page
    assert "<td>webnlg_test_f1</td><td>0.912</td>" in page and "recorded value" in page
    record = json.loads(full.record_path("07_gplinker_relations").read_text())
    assert record["config"] == config and record["wall_seconds"] == 3600.0 and record["torch"]
    assert record["date"].endswith("+00:00") and record["config_hash"] == full.config_hash(config)
    assert found.wall_text == f"60.0 min on cpu (2 cores), {record['date'][:10]}"


def test_record_of_a_changed_config_is_stale_and_not_shown(records):
    full.write_record("07_gplinker_relations", metrics={"webnlg_test_f1": 0.912}, config={"epochs": 20},
                      wall_seconds=10.0, device="cpu", commit="abc")
    found = full.recorded("07_gplinker_relations", {"epochs": 40})  # the chapter's FULL config changed since
    assert found.status == "stale" and found.metrics == {}
    assert "stale" in str(found) and "0.912" not in found._repr_html_()
    full.write_record("07_gplinker_relations", metrics={"f1": 1.0}, config=None, wall_seconds=1.0, device="cpu")
    assert full.recorded("07_gplinker_relations", {"epochs": 20}).status == "stale"  # no config: never current


def test_full_run_leaves_its_config_for_the_recorder(records, monkeypatch):
    monkeypatch.setattr(utils, "FULL", True)
    full.recorded("05_cosent", {"epochs": 5})
    written = json.loads((records / "build_results" / f"05_cosent{full.CONFIG_SUFFIX}").read_text())
    assert written == {"config": {"epochs": 5}, "config_hash": full.config_hash({"epochs": 5})}


def test_damaged_record_names_the_file(records):
    path = full.record_path("05_cosent")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"05_cosent.json is not valid JSON"):
        full.recorded("05_cosent", {})


def test_bad_chapter_names():
    with pytest.raises(ValueError, match="chapter must be the notebook's stem"):
        full.recorded("gplinker", {})
    with pytest.raises(ValueError, match="chapter must be the notebook's stem"):
        full.record_path("../07_x")


def test_notebook_for_finds_a_chapter_by_number_or_stem():
    first = sorted(full.BOOK_DIR.glob("[0-9][0-9]_*.ipynb"))[0]
    number = first.stem[:2]
    assert full.notebook_for(number) == first == full.notebook_for(str(int(number))) == full.notebook_for(first.stem)
    with pytest.raises(ValueError, match="CHAPTER must name one chapter"):
        full.notebook_for("99")


def test_failure_summary_keeps_cell_line_and_exception():
    log = ("[NbConvertApp] Executing\n\x1b[31m---------\x1b[39m\nTraceback\nCell In[21], line 5\n"
           "      3 x = 1\n----> 5 ax.plot(x, y)\n   6 pass\nFile lib.py:3\n----> 3 raise ValueError\n"
           "\x1b[31mValueError\x1b[39m: x and y must have same first dimension\n")
    assert full.summarize_failure(log) == ("Cell In[21], line 5\n----> 5 ax.plot(x, y)\n"
                                           "ValueError: x and y must have same first dimension")


def test_execute_runs_a_notebook_and_reports_errors(tmp_path):
    import nbformat

    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nx = os.environ['MARK']")]),
                   good)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")]), bad)
    env = full._environment(MARK="1")
    ok = full.execute(good, tmp_path / "out_good.ipynb", env, timeout_s=120)
    assert ok.error is None and (tmp_path / "out_good.ipynb").exists() and ok.cpu_seconds > 0
    failed = full.execute(bad, tmp_path / "out_bad.ipynb", env, timeout_s=120)
    assert "ZeroDivisionError" in failed.error and "Cell In[1]" in failed.error


def test_smoke_limit_cuts_only_under_book_smoke(monkeypatch):
    import torch

    data = list(range(100))
    monkeypatch.setattr(utils, "SMOKE", False)
    assert full.smoke_limit(data, 5) is data
    monkeypatch.setattr(utils, "SMOKE", True)
    assert full.smoke_limit(data, 5) == [0, 1, 2, 3, 4]
    assert full.smoke_limit(torch.arange(10), 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="n must be a positive int"):
        full.smoke_limit(data, 0)
    with pytest.raises(TypeError, match="items must be a sequence"):
        full.smoke_limit(iter(data), 3)


def _notebook(tmp_path, *sources):
    path = tmp_path / "09_example.ipynb"
    cells = [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None}
             for s in sources] + [{"cell_type": "markdown", "source": "pick(1, 2) in prose", "metadata": {}}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_notebook_full_config_reads_full_values_in_source_order(tmp_path):
    path = _notebook(tmp_path, "%matplotlib inline\nA = pick(3, 20)  # epochs\nB = [utils.pick(1, x) for x in y]",
                     "FAST_SIZE, FULL_SIZE = dict(d=8), dict(d=256)\nFULL_FACTOR = 6\nC = f(pick(0.1, 0.5))")
    config = full.notebook_full_config(path)
    assert config == {"pick": ["20", "x", "0.5"], "settings": {"FULL_SIZE": "dict(d=256)", "FULL_FACTOR": "6"}}
    fast_edit = _notebook(tmp_path, "A = pick(5, 20)  # a new FAST value and comment\nB = [utils.pick(2, x) for x in y]",
                          "FAST_SIZE, FULL_SIZE = dict(d=16), dict(d=256)\nFULL_FACTOR = 6\nC = f(pick(0.2, 0.5))")
    assert full.config_hash(full.notebook_full_config(fast_edit)) == full.config_hash(config)
    full_edit = _notebook(tmp_path, "A = pick(3, 40)\nB = [utils.pick(1, x) for x in y]",
                          "FAST_SIZE, FULL_SIZE = dict(d=8), dict(d=256)\nFULL_FACTOR = 6\nC = f(pick(0.1, 0.5))")
    assert full.config_hash(full.notebook_full_config(full_edit)) != full.config_hash(config)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        full.notebook_full_config(tmp_path / "missing.ipynb")


def test_recorded_without_a_config_reads_the_chapters_notebook(records, monkeypatch):
    path = _notebook(records, "A = pick(3, 20)")
    monkeypatch.setattr(full, "BOOK_DIR", records)
    config = full.notebook_full_config(path)
    full.write_record("09_example", metrics={"f1": 0.5}, config=config, wall_seconds=1.0, device="cpu")
    assert full.recorded("09_example").status == "current"
    _notebook(records, "A = pick(3, 30)")
    assert full.recorded("09_example").status == "stale"
    assert full.recorded("09_example").wall_text == "none for the current FULL settings"
