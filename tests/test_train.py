"""lib.train.fit: plain gradient descent on a quadratic matches the closed-form iterate."""
import pytest
import torch

from lib.train import fit


def test_fit_matches_closed_form_gradient_descent():
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)

    def step(target):
        opt.zero_grad()
        loss = (w - target).pow(2).sum()
        loss.backward()
        opt.step()
        return loss.item()

    history = fit(step, lambda epoch: [torch.tensor([1.0])] * 5, 3, evaluate=lambda e: {"w": w.item()},
                  progress=False)
    # w_{t+1} = w_t + 0.2 (1 - w_t)  =>  w_t = 1 - 0.8^t
    assert w.item() == pytest.approx(1 - 0.8**15, rel=1e-6)
    assert len(history.losses) == 15 and history.metric("w")[-1] == pytest.approx(w.item())
    assert history.losses[0] == pytest.approx(1.0)


def test_fit_rejects_nan_and_bad_epochs():
    with pytest.raises(FloatingPointError, match="NaN"):
        fit(lambda b: float("nan"), lambda e: [0], 1, progress=False)
    with pytest.raises(ValueError, match="num_epochs"):
        fit(lambda b: 0.0, lambda e: [0], 0)


def test_fit_stops_on_an_infinite_loss():
    # a user's loss overflows (e.g. exp of a large logit): training must stop, not continue with inf
    losses = iter([1.0, 0.5, float("inf"), 0.25])
    seen = []

    def step(batch):
        seen.append(batch)
        return next(losses)

    with pytest.raises(FloatingPointError, match="inf at epoch 0, step 2"):
        fit(step, lambda e: [0, 1, 2, 3], 1, progress=False)
    assert seen == [0, 1, 2]
    with pytest.raises(FloatingPointError, match="-inf"):
        fit(lambda b: float("-inf"), lambda e: [0], 1, progress=False)


def test_fit_smoke_mode_runs_one_epoch_of_three_steps(monkeypatch):
    from lib import utils

    monkeypatch.setattr(utils, "SMOKE", True)
    calls = []
    history = fit(lambda b: calls.append(b) or 1.0, lambda e: list(range(10)), 5, progress=False)
    assert calls == [0, 1, 2] and len(history.metrics) == 1
