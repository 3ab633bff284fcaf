"""Shared helpers: the FAST/FULL switch, seeding, thread count and a result cache keyed by code + config."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import torch

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
FULL: bool = os.environ.get("FULL", "0") not in ("", "0", "false", "False")
# BOOK_SMOKE=1: every training loop that goes through `lib.train.fit` stops after a few steps (same code,
# shapes and configs). With FULL=1 it checks that the paper-scale code paths still run, in minutes.
SMOKE: bool = os.environ.get("BOOK_SMOKE", "0") not in ("", "0", "false", "False")


def pick(fast: T, full: T) -> T:
    """Return `full` when the environment has FULL=1 (paper-scale runs), else `fast`."""
    return full if FULL else fast


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's `random`, NumPy and torch; return a CPU `torch.Generator` seeded with `seed`."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(num_threads: int = 1) -> None:
    """Set torch's intra-op thread count.

    Measured on the 2-core build machine: tiny models run fastest with one thread
    (see `benchmarks/threads.py`)."""
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
    torch.set_num_threads(num_threads)


def device() -> torch.device:
    """Where models train: ``$BOOK_DEVICE`` if set (e.g. ``cuda``, ``cpu``), else CUDA when FULL=1 and a GPU
    is available, else the CPU. FAST runs stay on the CPU unless asked, so the book's numbers reproduce."""
    requested = os.environ.get("BOOK_DEVICE", "").strip()
    if requested:
        try:
            chosen = torch.device(requested)
        except RuntimeError as error:
            raise ValueError(f"BOOK_DEVICE must name a torch device (cpu, cuda, cuda:0), got {requested!r}") from error
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"BOOK_DEVICE={requested!r} but torch sees no CUDA device")
        return chosen
    return torch.device("cuda") if FULL and torch.cuda.is_available() else torch.device("cpu")


def cache_dir() -> Path:
    """Where `cached` stores results: $BOOK_CACHE_DIR if set and non-empty, else <repo>/.cache.

    An empty or blank BOOK_CACHE_DIR (``BOOK_CACHE_DIR= make ...``) means "not set": it never makes the cache
    write into the current directory. A relative path is taken relative to the current directory."""
    value = os.environ.get("BOOK_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else REPO_ROOT / ".cache"


def _source_of(obj: Any) -> str:
    if isinstance(obj, (ModuleType, type)) or callable(obj):
        return inspect.getsource(obj)
    raise TypeError(f"code entries must be modules, classes or functions, got {type(obj).__name__}")


def _unstable_repr(value: Any) -> bool:
    """True for values whose repr changes between runs or hides what they compute (functions, lambdas,
    methods, partials, objects printed with a memory address)."""
    import functools

    return (inspect.isroutine(value) or isinstance(value, functools.partial) or inspect.isclass(value)
            or " at 0x" in repr(value))


def _find_unstable(value: Any, where: str) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_unstable(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_unstable(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return None
    return f"{where} = {value!r} ({type(value).__name__})" if _unstable_repr(value) else None


def config_json(config: dict) -> str:
    """Canonical JSON of a config (sorted keys; values that JSON lacks, e.g. dataclasses or tuples' items,
    written with their repr). Raises TypeError naming the key when a value's repr is not stable across runs
    (a function, lambda, class or an object shown with its memory address): such a key would never match."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    unstable = _find_unstable(config, "config")
    if unstable:
        raise TypeError(f"config values must have a stable repr (numbers, strings, lists, dicts, dataclasses); "
                        f"{unstable} changes between runs: put the function's name or its parameters in the "
                        "config instead, and pass the function in `code`")
    return json.dumps(config, sort_keys=True, default=repr)


def cache_key(name: str, config: dict, code: Iterable[Any] = ()) -> str:
    """SHA-256 (first 16 hex digits) of the name, the JSON of `config` and the source of `code`.

    Under BOOK_SMOKE=1 the key also says so: a smoke run's truncated results never stand in for real ones."""
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"name must be a non-empty identifier-like string, got {name!r}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    digest = hashlib.sha256()
    digest.update(name.encode())
    digest.update(config_json(config).encode())
    for obj in code:
        digest.update(_source_of(obj).encode())
    if SMOKE:
        digest.update(b"BOOK_SMOKE=1")
    return digest.hexdigest()[:16]


def cached(name: str, config: dict, compute: Callable[[], T], code: Iterable[Any] = ()) -> T:
    """Load the result stored under (name, config, code) if present, else compute and store it.

    The key covers the code, so editing a lib module that is listed in `code` recomputes.
    Files live in `cache_dir()` as `<name>-<key>.pt` (torch.save: tensors, arrays, dicts, lists)."""
    path = cache_dir() / f"{name}-{cache_key(name, config, code)}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(result, tmp)
    tmp.replace(path)
    return result
