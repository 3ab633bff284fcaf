"""Execute every chapter notebook exactly as the book build does, sharing its execution cache.

A notebook passes if the cache already holds a successful execution of its current code (and lib has not
changed since: `lib.build.invalidate_stale_cache`), or if executing it now raises no error. Successful
executions are stored in the book's cache, so `make book` afterwards does not execute them again.
"""
import os
import resource
import time

import nbformat
import pytest
from filelock import FileLock
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from jupyter_cache.executors.utils import single_nb_execution

from book_pages import notebooks
from lib.build import EXECUTION_CACHE, invalidate_stale_cache

TIMEOUT_S = 600
BUDGET_S = 360  # each chapter must run in <= 6 minutes in the build (cold, quiet machine)


@pytest.fixture(scope="session")
def cache():
    EXECUTION_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(EXECUTION_CACHE.parent / ".cache.lock")):
        invalidate_stale_cache()
        return get_cache(str(EXECUTION_CACHE))


def test_every_chapter_is_in_the_toc():
    assert notebooks(), "the table of contents lists no notebook"


@pytest.mark.notebook
@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_executes(path, cache):
    notebook = nbformat.read(str(path), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, \
                f"{path.name} is committed with outputs: clear them (outputs come from the build)"
    lock = FileLock(str(EXECUTION_CACHE.parent / ".cache.lock"))
    with lock:
        try:
            cache.match_cache_notebook(notebook)
            return  # already executed successfully with this code and this lib
        except KeyError:
            record = cache.add_nb_to_project(str(path))
    # the kernel inherits these: explorables render their static version, progress bars stay off
    os.environ.update(BOOK_BUILD="1", TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = single_nb_execution(notebook, cwd=str(path.parent), allow_errors=False, timeout=TIMEOUT_S,
                                 meta_override=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, reaped when it shut down
    cpu_seconds = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    assert result.err is None, f"{path.name} failed:\n{result.exc_string}"
    with lock:
        cache.cache_notebook_bundle(CacheBundleIn(notebook, record.uri, data={"execution_seconds": seconds}),
                                    check_validity=False, overwrite=True)
    over = " OVER BUDGET" if seconds > BUDGET_S else ""
    print(f"{path.name}: executed in {seconds:.1f} s wall, kernel CPU {cpu_seconds:.1f} s (budget {BUDGET_S} s){over}")
