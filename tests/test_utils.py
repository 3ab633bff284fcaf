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
