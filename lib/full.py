"""FULL runs: recorded paper-scale results, and the two commands that execute chapters in FULL mode.

A chapter's FAST run is what the book shows; its FULL run (``FULL=1``) uses paper-scale settings and takes
much longer. ``make full CHAPTER=NN`` executes one chapter with ``FULL=1`` and records the chapter's headline
metrics (written by ``viz.post_vs_book(..., chapter=..., metrics=...)``), its FULL config, the git commit,
device, torch version, date and wall time in ``results/full/<chapter>.json``. The chapter then shows that
record with :func:`recorded` in its own table, never mixed with the numbers computed in the build; when the
chapter's FULL config no longer matches the record's, the record is reported as stale.

``make smoke-full`` executes every chapter with ``FULL=1 BOOK_SMOKE=1``: the FULL code paths (same configs,
shapes and code) with every `lib.train.fit` loop cut to a few steps, so a FULL path cannot rot unnoticed.

A chapter's FULL config is read from its own source (:func:`notebook_full_config`): the FULL argument of
every ``pick(fast, full)`` call and every assignment to a name containing ``FULL_``, in source order. So a
changed FULL setting makes a record stale, while edits to prose, comments or FAST values do not. In a chapter::

    from lib import full
    full.recorded("07_gplinker_relations")   # displays the record, or says it is missing / stale

(``full.configs`` builds a config twice from one definition, for code that wants the FULL values at run time.)
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

from lib import utils

RECORDS_DIR = utils.REPO_ROOT / "results" / "full"
BOOK_DIR = utils.REPO_ROOT / "book"
T = TypeVar("T")
CONFIG_SUFFIX = ".full_config.json"  # written next to the results file by `recorded` during a FULL run


class Configs(NamedTuple):
    current: Any  # the config this run uses (FAST or FULL, as the environment says)
    full: Any  # the FULL config, whatever the environment says


def configs(build: Callable[[Callable[[Any, Any], Any]], Any]) -> Configs:
    """Build a chapter's config twice from one definition: ``build(pick)`` with this run's `pick`
    (``lib.utils.pick``) and with a `pick` that always returns the FULL value.

    Lets a FAST run know its FULL config (to compare it with a recorded FULL run) without writing it twice."""
    if not callable(build):
        raise TypeError(f"build must be a function of pick, got {type(build).__name__}")
    return Configs(build(utils.pick), build(lambda fast, full: full))


def smoke_limit(items: Sequence[T], n: int = 32) -> Sequence[T]:
    """`items` unchanged, or its first `n` items under ``BOOK_SMOKE=1``.

    For loops that do not go through `lib.train.fit` (feature extraction, evaluation over a data set, seed
    sweeps): with it a ``FULL=1 BOOK_SMOKE=1`` run keeps the FULL code path and shapes but only touches a
    few items. Never use it on anything a FAST or FULL run reports."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not hasattr(items, "__getitem__") or not hasattr(items, "__len__"):
        raise TypeError(f"items must be a sequence (list, tuple, array, tensor), got {type(items).__name__}")
    return items[:n] if utils.SMOKE else items


def config_hash(config: dict) -> str:
    """SHA-256 (16 hex digits) of the canonical JSON of a FULL config (the same rules as `utils.cache_key`)."""
    import hashlib

    return hashlib.sha256(utils.config_json(config).encode()).hexdigest()[:16]


def _check_chapter(chapter: str) -> str:
    if not isinstance(chapter, str) or not chapter[:2].isdigit() or not chapter.replace("_", "").isalnum():
        raise ValueError(f"chapter must be the notebook's stem like '07_gplinker_relations', got {chapter!r}")
    return chapter


def record_path(chapter: str) -> Path:
    """``results/full/<chapter>.json``."""
    return RECORDS_DIR / f"{_check_chapter(chapter)}.json"


@dataclass
class Recorded:
    """What :func:`recorded` found: ``status`` is ``"current"``, ``"stale"`` or ``"missing"``; ``record`` is
    the stored JSON (None when missing). Displays itself as a labelled table or a one-line note."""

    chapter: str
    status: str
    record: dict | None
    expected_hash: str

    @property
    def metrics(self) -> dict:
        """The recorded headline metrics when the record is current, else an empty dict."""
        return dict(self.record["metrics"]) if self.status == "current" else {}

    @property
    def wall_text(self) -> str:
        """How long the recorded FULL run took, for a sentence in the text ("34.3 min on cpu, 2026-12-01"), or
        why there is no such time ("none recorded yet", "none for the current FULL settings")."""
        if self.status == "missing":
            return "none recorded yet"
        if self.status == "stale":
            return "none for the current FULL settings"
        r = self.record
        return f"{r['wall_seconds'] / 60:.1f} min on {r['device']}, {str(r['date'])[:10]}"

    def _caption(self) -> str:
        r = self.record
        return (f"recorded FULL run: commit {r['commit'][:10]}, device {r['device']}, date {r['date'][:10]}, "
                f"wall time {r['wall_seconds'] / 60:.1f} min, torch {r['torch']}")

    def __str__(self) -> str:
        command = f"make full CHAPTER={self.chapter[:2]}"
        if self.status == "missing":
            return f"No recorded FULL run for this chapter yet (`{command}` makes one)."
        if self.status == "stale":
            return (f"The recorded FULL run (commit {self.record.get('commit', '?')[:10]}, "
                    f"{str(self.record.get('date', '?'))[:10]}) used a different FULL config than this chapter's "
                    f"current one: it is stale and not shown (`{command}` records a new one).")
        lines = [self._caption()] + [f"  {k} = {v}" for k, v in self.record["metrics"].items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if self.status != "current":
            return f"<p><em>{html.escape(str(self))}</em></p>"
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in self.record["metrics"].items())
        return (f"<table class='full-record'><caption>{html.escape(self._caption())}</caption>"
                f"<thead><tr><th>metric (FULL run)</th><th>recorded value</th></tr></thead><tbody>{rows}</tbody></table>")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def notebook_full_config(notebook: str | Path) -> dict:
    """The FULL settings written in a chapter's code cells, read statically (nothing is executed):

    ``{"pick": [source of each pick(...)'s FULL argument, in source order], "settings": {NAME: source}}`` for
    every assignment to a name containing ``FULL_`` (e.g. ``FULL_SIZE = dict(...)``). Static, so it does
    not depend on which branches or cached functions a run happened to execute."""
    import ast

    path = Path(notebook)
    if not path.exists():
        raise FileNotFoundError(f"notebook {path} does not exist")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    picks: list[str] = []
    settings: dict[str, str] = {}
    for number, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell["source"])
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError as error:
            raise ValueError(f"{path.name}: code cell {number} does not parse ({error})") from error
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and len(node.args) == 2 and (
                    (isinstance(node.func, ast.Name) and node.func.id == "pick")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "pick")):
                picks.append((node.lineno, node.col_offset, number, ast.unparse(node.args[1])))
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = [(target, node.value)]
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) \
                            and len(target.elts) == len(node.value.elts):  # FAST_X, FULL_X = ..., ...
                        pairs = list(zip(target.elts, node.value.elts))
                    for name, value in pairs:
                        if isinstance(name, ast.Name) and "FULL_" in name.id:
                            settings[name.id] = ast.unparse(value)
        # ast.walk is breadth-first: order a cell's calls by position so the list follows the source
    ordered = sorted(picks, key=lambda item: (item[2], item[0], item[1]))
    return {"pick": [item[3] for item in ordered], "settings": settings}


def recorded(chapter: str, full_config: dict | None = None) -> Recorded:
    """The recorded FULL run of `chapter` if ``results/full/<chapter>.json`` exists and was made with
    `full_config` (compared by :func:`config_hash`); else a note that it is missing or stale. Without
    `full_config`, the chapter's own notebook gives it (:func:`notebook_full_config`).

    During a FULL run (``FULL=1``) it also writes `full_config` to ``viz.results_dir()/<chapter>.full_config.json``
    so that ``make full`` can store it in the record. Display the returned object (last line of a cell)."""
    from lib import viz

    _check_chapter(chapter)
    if full_config is None:
        full_config = notebook_full_config(notebook_for(chapter))
    expected = config_hash(full_config)
    if utils.FULL:
        folder = viz.results_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{chapter}{CONFIG_SUFFIX}").write_text(
            json.dumps({"config": json.loads(utils.config_json(full_config)), "config_hash": expected}, indent=1))
    path = record_path(chapter)
    if not path.exists():
        return Recorded(chapter, "missing", None, expected)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it or re-run `make full`") from error
    status = "current" if record.get("config_hash") == expected else "stale"
    return Recorded(chapter, status, record, expected)


# ------------------------------------------------------------------------------------------- running
def notebook_for(chapter: str) -> Path:
    """The notebook of a chapter given by number (``"7"``, ``"07"``) or stem (``"07_gplinker_relations"``)."""
    key = str(chapter).strip()
    if key.isdigit():
        key = f"{int(key):02d}_"
    matches = sorted(p for p in BOOK_DIR.glob("[0-9][0-9]_*.ipynb") if p.stem == key or p.stem.startswith(key))
    if len(matches) != 1:
        known = sorted(p.stem for p in BOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
        raise ValueError(f"CHAPTER must name one chapter (a number like 07 or a stem), got {chapter!r}; "
                         f"chapters: {known}")
    return matches[0]


@dataclass
class Execution:
    notebook: Path
    seconds: float
    cpu_seconds: float
    error: str | None


def execute(notebook: Path, output: Path, env: dict[str, str], timeout_s: int) -> Execution:
    """Execute `notebook` with nbconvert in a fresh kernel under `env`; write the executed copy to `output`.

    CPU time is that of the nbconvert process and its kernel (``os.wait4``)."""
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", str(notebook),
               "--output", str(output), f"--ExecutePreprocessor.timeout={timeout_s}"]
    log = output.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=notebook.parent, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    error = None
    if process.returncode != 0:
        error = summarize_failure(log.read_text(errors="replace")) or f"nbconvert exited with {process.returncode}"
        error += f"\n(full log: {log})"
    return Execution(notebook, seconds, usage.ru_utime + usage.ru_stime, error)


def summarize_failure(log: str) -> str:
    """The failing cell's location, the offending line and the exception, from an nbconvert log."""
    import re

    lines = [line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines()]
    where = [line for line in lines if line.startswith("Cell In[")]
    arrows = [line.strip() for line in lines if line.lstrip().startswith("---->")]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt|Timeout)\b", line)]
    picked = where[:1] + arrows[:1] + errors[-1:]
    if "Here is a preview of the cell contents:" in lines:  # a timeout: say which cell
        start = lines.index("Here is a preview of the cell contents:") + 2
        picked += [line[:160] for line in lines[start:start + 3]]
    return "\n".join(picked) if picked else "\n".join(lines[-15:])


# Executions run as the book build does (BOOK_BUILD=1: static explorables, no live ipywidgets). With live
# widgets, nbclient (behind nbconvert and jupyter-cache) sometimes receives a cell's execute_reply only when
# its timeout expires (jupyter/nbclient#312): observed here as a 20-minute stall after the first explorable
# of chapter 3 with --ExecutePreprocessor.timeout=1200, then the run went on without an error.
def _environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _git_commit(*paths: str | Path) -> str:
    """HEAD's commit, with ``-dirty`` when `paths` (default: lib and book) have uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=utils.REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *(map(str, paths or ("lib", "book")))],
                               cwd=utils.REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def write_record(chapter: str, *, metrics: dict, config: dict | None, wall_seconds: float, device: str,
                 commit: str | None = None, folder: Path | None = None) -> Path:
    """Write ``<folder or results/full>/<chapter>.json``: metrics, FULL config (+ hash), commit, device, torch
    version, date (UTC, ISO 8601) and wall time."""
    import torch

    _check_chapter(chapter)
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    record = {
        "chapter": chapter, "metrics": metrics,
        "config": None if config is None else json.loads(utils.config_json(config)),
        "config_hash": None if config is None else config_hash(config),
        "commit": commit or _git_commit(), "device": device, "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(float(wall_seconds), 1),
    }
    folder = Path(folder) if folder is not None else RECORDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{chapter}.json"
    path.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def _device_name() -> str:
    import torch

    chosen = utils.device()
    if chosen.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(chosen)})"
    return f"cpu ({os.cpu_count()} cores)"


def run_full(chapter: str, *, timeout_s: int = 6 * 3600) -> Path:
    """Execute one chapter with FULL=1 and write its record to ``results/full/<chapter>.json``."""
    notebook = notebook_for(chapter)
    stem = notebook.stem
    work = Path(tempfile.mkdtemp(prefix=f"full-{stem}-"))
    cache = os.environ.get("BOOK_CACHE_DIR") or str(utils.REPO_ROOT / ".cache" / "full")
    env = _environment(FULL="1", BOOK_BUILD="1", BOOK_SMOKE="0", BOOK_RESULTS_DIR=str(work), BOOK_CACHE_DIR=cache)
    print(f"{stem}: FULL run, executed copy and log in {work}, cache {cache}", flush=True)
    commit = _git_commit("lib", notebook)  # at the start: what this run executes (edits made meanwhile don't count)
    result = execute(notebook, work / f"{stem}.ipynb", env, timeout_s)
    if result.error:
        raise SystemExit(f"{stem}: FULL run failed after {result.seconds:.0f} s:\n{result.error}")
    results_file = work / f"{stem}.json"
    if not results_file.exists():
        raise SystemExit(f"{stem}: the run wrote no {results_file.name}: the chapter must call "
                         "viz.post_vs_book(..., chapter=..., metrics=...)")
    metrics = json.loads(results_file.read_text(encoding="utf-8"))["metrics"]
    config_file = work / f"{stem}{CONFIG_SUFFIX}"
    config = (json.loads(config_file.read_text())["config"] if config_file.exists()
              else notebook_full_config(notebook))
    path = write_record(stem, metrics=metrics, config=config, wall_seconds=result.seconds, device=_device_name(),
                        commit=commit)
    print(f"{stem}: FULL run took {result.seconds / 60:.1f} min (CPU {result.cpu_seconds / 60:.1f} min); "
          f"record: {path.relative_to(utils.REPO_ROOT)}", flush=True)
    return path


def smoke(chapters: Sequence[str] = (), *, jobs: int = 2, timeout_s: int = 1200) -> list[Execution]:
    """Execute chapters (default: every chapter) with FULL=1 BOOK_SMOKE=1, `jobs` at a time, in a temporary
    folder with an empty cache of its own (neither the book's execution cache nor the FAST results cache)."""
    notebooks = [notebook_for(c) for c in chapters] if chapters else sorted(BOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    work = Path(tempfile.mkdtemp(prefix="smoke-full-"))
    env = _environment(FULL="1", BOOK_SMOKE="1", BOOK_BUILD="1", BOOK_DEVICE=os.environ.get("BOOK_DEVICE", "cpu"),
                       BOOK_CACHE_DIR=str(work / "cache"), BOOK_RESULTS_DIR=str(work / "results"))
    print(f"FULL=1 BOOK_SMOKE=1 on {len(notebooks)} chapters, {jobs} at a time; outputs in {work}", flush=True)

    def one(notebook: Path) -> Execution:
        result = execute(notebook, work / notebook.name, env, timeout_s)
        state = "ok" if result.error is None else "FAILED"
        print(f"  {notebook.stem}: {state} in {result.seconds:.0f} s (CPU {result.cpu_seconds:.0f} s)", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, notebooks))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lib.full run NN`` (make full) | ``python -m lib.full smoke [NN ...]`` (make smoke-full)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"] and len(args) == 2:
        run_full(args[1])
        return 0
    if args[:1] == ["smoke"]:
        start = time.perf_counter()
        results = smoke(args[1:], jobs=int(os.environ.get("SMOKE_JOBS", "2")))
        failed = [r for r in results if r.error]
        for r in failed:
            print(f"\n===== {r.notebook.stem} failed under FULL=1 BOOK_SMOKE=1:\n{r.error}", flush=True)
        print(f"smoke-full: {len(results) - len(failed)}/{len(results)} chapters passed in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        return 1 if failed else 0
    print("usage: python -m lib.full run CHAPTER | python -m lib.full smoke [CHAPTER ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
