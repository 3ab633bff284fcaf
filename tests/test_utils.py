"""lib.utils: seeding reproduces draws; the cache recomputes exactly when name, config or code change."""
import random

import numpy as np
import pytest
import torch

from lib import utils


def test_seed_everything_reproduces_all_generators():
    def draws():
        gen = utils.seed_everything(7)
        return random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item()

    assert draws() == draws()
    with pytest.raises(ValueError, match="seed"):
        utils.seed_everything(-1)


def test_pick_follows_full(monkeypatch):
    monkeypatch.setattr(utils, "FULL", False)
    assert utils.pick(1, 2) == 1
    monkeypatch.setattr(utils, "FULL", True)
    assert utils.pick(1, 2) == 2


def helper_a(x):
    return x + 1


def helper_b(x):
    return x + 2


def test_cached_computes_once_and_keys_on_config_and_code(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.arange(3)}

    first = utils.cached("demo", {"n": 3}, compute, code=[helper_a])
    second = utils.cached("demo", {"n": 3}, compute, code=[helper_a])
    assert len(calls) == 1 and torch.equal(first["value"], second["value"])
    utils.cached("demo", {"n": 4}, compute, code=[helper_a])
    utils.cached("demo", {"n": 3}, compute, code=[helper_b])
    assert len(calls) == 3
    assert utils.cache_key("demo", {"n": 3}, [helper_a]) != utils.cache_key("demo", {"n": 3}, [helper_b])


def test_cache_key_validates():
    with pytest.raises(ValueError, match="name"):
        utils.cache_key("bad name!", {})
    with pytest.raises(TypeError, match="config"):
        utils.cache_key("ok", [1])


def test_set_threads():
    before = torch.get_num_threads()
    utils.set_threads(1)
    assert torch.get_num_threads() == 1
    utils.set_threads(before)
    with pytest.raises(ValueError, match="num_threads"):
        utils.set_threads(0)


def test_empty_book_cache_dir_means_the_default_not_the_current_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for blank in ("", "  "):
        monkeypatch.setenv("BOOK_CACHE_DIR", blank)  # e.g. `BOOK_CACHE_DIR= make book`
        assert utils.cache_dir() == utils.REPO_ROOT / ".cache"
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "c"))
    assert utils.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BOOK_CACHE_DIR")
    assert utils.cache_dir() == utils.REPO_ROOT / ".cache"


def test_cache_key_refuses_a_config_holding_a_function():
    # a user passes the scoring function itself; its repr holds a memory address that changes every run
    with pytest.raises(TypeError, match=r"config\['model'\]\['score'\].*changes between runs"):
        utils.cache_key("run", {"model": {"score": lambda x: x}, "lr": 1e-3})
    with pytest.raises(TypeError, match=r"config\['steps'\]\[1\]"):
        utils.cache_key("run", {"steps": [1, np.mean]})
    with pytest.raises(TypeError, match=r"config\['net'\]"):
        utils.cache_key("run", {"net": torch.nn.Linear})
    with pytest.raises(TypeError, match=r"config\['obj'\]"):
        utils.cache_key("run", {"obj": object()})


def test_cache_key_of_stable_values_is_unchanged_by_the_check():
    import hashlib
    import json
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        d: int = 4

    config = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": (1, 2)}, "cfg": Cfg(), "dtype": torch.float32}
    # oracle: the key before the check was introduced, json.dumps(..., default=repr)
    digest = hashlib.sha256(b"run" + json.dumps(config, sort_keys=True, default=repr).encode())
    assert utils.cache_key("run", config) == digest.hexdigest()[:16]


def test_device_follows_book_device(monkeypatch):
    monkeypatch.setenv("BOOK_DEVICE", "cpu")
    assert utils.device() == torch.device("cpu")
    monkeypatch.setenv("BOOK_DEVICE", " cpu ")
    assert utils.device() == torch.device("cpu")


def test_device_defaults_to_cpu_in_fast_mode(monkeypatch):
    monkeypatch.delenv("BOOK_DEVICE", raising=False)
    monkeypatch.setattr(utils, "FULL", False)
    assert utils.device() == torch.device("cpu")
    monkeypatch.setattr(utils, "FULL", True)
    assert utils.device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_device_rejects_a_misspelt_device(monkeypatch):
    monkeypatch.setenv("BOOK_DEVICE", "gpu")  # a user's guess; torch calls it cuda
    with pytest.raises(ValueError, match="BOOK_DEVICE.*'gpu'"):
        utils.device()


def test_device_refuses_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setenv("BOOK_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        utils.device()


def test_smoke_runs_never_share_cache_keys_with_real_runs(monkeypatch):
    from lib import utils

    real = utils.cache_key("demo", {"a": 1})
    monkeypatch.setattr(utils, "SMOKE", True)
    assert utils.cache_key("demo", {"a": 1}) != real
