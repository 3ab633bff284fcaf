"""lib.childtuning against oracles that cannot be tuned: binomial/CLT tolerances for masks and moments,
closed forms (eqs. 7-12 of the chapter), brute-force twins (manual dropout, a per-example loop, the official
optimizer written out), torch's own clipping and the model's own layers for the cross-encoder shortcut."""
import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib import childtuning as ct


def binomial_tol(p: float, n: int, z: float = 5.0) -> float:
    """z standard deviations of the mean of n Bernoulli(p) draws."""
    return z * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_bernoulli_mask_statistics(p):
    n = 10**6
    mask = ct.bernoulli_mask_like(torch.empty(n), p, torch.Generator().manual_seed(1))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(mask.mean().item() - p) < binomial_tol(p, n)
    # E[M / p] = 1 with the same binomial tolerance scaled by 1/p
    assert abs((mask / p).mean().item() - 1.0) < binomial_tol(p, n) / p
    again = ct.bernoulli_mask_like(torch.empty(n), p, torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)


def test_bernoulli_mask_dtype_and_validation():
    t = torch.zeros(3, 4, dtype=torch.float64)
    assert ct.bernoulli_mask_like(t, 0.5).dtype == torch.float64
    assert torch.equal(ct.bernoulli_mask_like(t, 1.0), torch.ones_like(t))
    with pytest.raises(ValueError, match="p must be in"):
        ct.bernoulli_mask_like(t, 0.0)
    with pytest.raises(ValueError, match="p must be in"):
        ct.bernoulli_mask_like(t, 1.5)
    with pytest.raises(TypeError, match="p must be a float"):
        ct.bernoulli_mask_like(t, "0.3")
    with pytest.raises(TypeError, match="floating-point"):
        ct.bernoulli_mask_like(torch.zeros(3, dtype=torch.long), 0.5)
    with pytest.raises(TypeError, match="t must be a torch.Tensor"):
        ct.bernoulli_mask_like([1.0], 0.5)


def test_gradient_dropout_matches_manual_mask():
    w = nn.Parameter(torch.randn(50, 20))
    w.grad = torch.randn(50, 20)
    expected = w.grad * (ct.bernoulli_mask_like(w.grad, 0.3, torch.Generator().manual_seed(5)) / 0.3)
    ct.gradient_dropout_([w], 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(w.grad, expected)


def test_random_fixed_mask_density():
    tensors = {"a": torch.zeros(400, 500), "b": torch.zeros(1000)}
    masks = ct.random_fixed_mask(tensors, 0.2, torch.Generator().manual_seed(0))
    n = 400 * 500 + 1000
    assert masks["a"].dtype == torch.bool and masks["a"].shape == (400, 500)
    assert abs(ct.mask_density(masks) - 0.2) < binomial_tol(0.2, n)


# ---------------------------------------------------------------- Fisher masks
def _random_fisher(seed, sizes=((30, 20), (50,), (7, 3, 2))):
    gen = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.rand(s, generator=gen) for i, s in enumerate(sizes)}


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 1.0])
def test_fisher_mask_count_and_rank_equals_threshold_without_ties(p):
    fisher = _random_fisher(0)
    n = sum(t.numel() for t in fisher.values())
    top = ct.fisher_mask(fisher, p)
    assert sum(m.sum().item() for m in top.values()) == round(p * n)
    assert all(top[k].shape == fisher[k].shape for k in fisher)
    thr = ct.fisher_mask(fisher, p, rule="threshold")
    assert all(torch.equal(top[k], thr[k]) for k in fisher)
    # brute-force twin: the k largest values of the concatenation
    flat = torch.cat([t.reshape(-1) for t in fisher.values()])
    chosen = torch.cat([m.reshape(-1) for m in top.values()])
    if (~chosen).any():
        assert flat[chosen].min() >= flat[~chosen].max()


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(0, 4), min_size=4, max_size=60), p1=st.floats(0.01, 1.0), p2=st.floats(0.01, 1.0))
def test_fisher_mask_nested_and_disjoint_with_ties(values, p1, p2):
    """Ties (integer scores) are broken deterministically by position: nested masks, top/bottom disjoint."""
    fisher = {"a": torch.tensor(values, dtype=torch.float32)}
    lo, hi = sorted((p1, p2))
    m_lo, m_hi = ct.fisher_mask(fisher, lo)["a"], ct.fisher_mask(fisher, hi)["a"]
    assert not (m_lo & ~m_hi).any()
    assert torch.equal(m_lo, ct.fisher_mask(fisher, lo)["a"])
    n = len(values)
    k = max(1, min(n, round(lo * n)))
    if 2 * k <= n:  # top-k and bottom-k can only be disjoint when they fit side by side
        bottom = ct.fisher_mask(fisher, lo, which="bottom")["a"]
        assert not (m_lo & bottom).any()
    assert m_lo.sum() == k
    # every kept score is >= every dropped score
    if k < n:
        assert fisher["a"][m_lo].min() >= fisher["a"][~m_lo].max()
    # the official threshold rule admits all ties at the threshold (>= k entries)
    assert ct.fisher_mask(fisher, lo, rule="threshold")["a"].sum() >= k


def test_fisher_mask_validation():
    with pytest.raises(ValueError, match="reserve_p"):
        ct.fisher_mask({"a": torch.rand(3)}, 0.0)
    with pytest.raises(ValueError, match="which"):
        ct.fisher_mask({"a": torch.rand(3)}, 0.5, which="middle")
    with pytest.raises(ValueError, match="non-empty"):
        ct.fisher_mask({}, 0.5)


# ---------------------------------------------------------------- optimizer equivalences
def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _grads_stream(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)) for _ in range(steps)]


def _train(model, opt, stream):
    for x, y in stream:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_hook_under_sgd_is_exactly_bernoulli_gradient_dropout():
    stream = _grads_stream(15)
    a = _model()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    ct.ChildTuningHook("F", 0.3, seed=9).attach(opt)
    hooked = _train(a, opt, stream)
    # brute-force twin: theta <- theta - lr * g * M / p with masks from the same stream
    b = _model()
    gen = torch.Generator().manual_seed(9)
    for x, y in stream:
        for q in b.parameters():
            q.grad = None
        nn.functional.cross_entropy(b(x), y).backward()
        with torch.no_grad():
            for q in b.parameters():
                q.add_(q.grad * (ct.bernoulli_mask_like(q.grad, 0.3, gen) / 0.3), alpha=-0.1)
    assert all(torch.equal(u, v) for u, v in zip(hooked, [q.detach() for q in b.parameters()]))


@pytest.mark.parametrize("target", ["grad", "update"])
def test_hook_equals_official_optimizer(target):
    """The hook on a plain optimizer reproduces the optimizer with the mask inside step(), bit for bit."""
    stream = _grads_stream(20)
    a = _model()
    opt = ct.ChildTuningAdamW(a.parameters(), lr=1e-2, weight_decay=0.0)
    ct.ChildTuningHook("F", 0.4, target=target, seed=3).attach(opt)
    hooked = _train(a, opt, stream)
    b = _model()
    official = _train(b, ct.ChildTuningAdamW(b.parameters(), lr=1e-2, mode="F", reserve_p=0.4, target=target, seed=3), stream)
    for u, v in zip(hooked, official):
        # update dropout is rebuilt from theta_new - theta_old: float32 round-off only
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)


def test_hook_equals_official_optimizer_d_mode():
    stream = _grads_stream(20)
    masks_a, masks_b = {}, {}
    a, b = _model(), _model()
    gen = torch.Generator().manual_seed(4)
    for qa, qb in zip(a.parameters(), b.parameters()):
        m = torch.rand(qa.shape, generator=gen) < 0.3
        masks_a[qa], masks_b[qb] = m, m
    opt = ct.ChildTuningAdamW(a.parameters(), lr=1e-2)
    ct.ChildTuningHook("D", 0.3, masks=masks_a).attach(opt)
    hooked = _train(a, opt, stream)
    off = ct.ChildTuningAdamW(b.parameters(), lr=1e-2, mode="D", reserve_p=0.3)
    off.set_gradient_mask(masks_b)
    assert all(torch.equal(u, v) for u, v in zip(hooked, _train(b, off, stream)))


def test_p_one_is_vanilla_and_matches_torch_adam_without_eps():
    stream = _grads_stream(20)
    a, b, c = _model(), _model(), _model()
    f1 = _train(a, ct.ChildTuningAdamW(a.parameters(), lr=1e-2, mode="F", reserve_p=1.0), stream)
    plain = _train(b, ct.ChildTuningAdamW(b.parameters(), lr=1e-2, mode=None), stream)
    assert all(torch.equal(u, v) for u, v in zip(f1, plain))
    no_eps = _train(a := _model(), ct.ChildTuningAdamW(a.parameters(), lr=1e-2, eps=0.0), stream)
    reference = _train(c, torch.optim.Adam(c.parameters(), lr=1e-2, eps=0.0), stream)
    for u, v in zip(no_eps, reference):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-6)


def test_d_mode_rescale_is_invisible_to_adam_without_eps():
    """Flag F2: a constant factor on a coordinate's gradient does not change Adam's update (eps -> 0;
    exactly 0 would give 0/0 on the frozen coordinates, so eps = 1e-30, far below any sqrt(v) here)."""
    stream = _grads_stream(50)
    out = []
    for rescale in (True, False):
        m = _model()
        gen = torch.Generator().manual_seed(8)
        masks = {q: torch.rand(q.shape, generator=gen) < 0.3 for q in m.parameters()}
        opt = torch.optim.Adam(m.parameters(), lr=1e-2, eps=1e-30)
        ct.ChildTuningHook("D", 0.3, masks=masks, rescale=rescale).attach(opt)
        out.append(_train(m, opt, stream))
    for u, v in zip(*out):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-7)


def test_d_mode_frozen_complement_and_weight_decay():
    stream = _grads_stream(30)
    m = _model()
    theta0 = [q.detach().clone() for q in m.parameters()]
    gen = torch.Generator().manual_seed(2)
    masks = {q: torch.rand(q.shape, generator=gen) < 0.3 for q in m.parameters()}
    # any optimizer, wd = 0: masked-out entries are bit-identical
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0)
    ct.ChildTuningHook("D", 0.3, masks=masks).attach(opt)
    after = _train(m, opt, stream)
    for q0, q1, mask in zip(theta0, after, masks.values()):
        assert torch.equal(q0[~mask], q1[~mask])
        assert not torch.equal(q0[mask], q1[mask])
    # official optimizer with decoupled decay: frozen entries shrink by (1 - lr*wd)^T exactly as predicted
    m = _model()
    masks = {q: mk for q, mk in zip(m.parameters(), masks.values())}
    off = ct.ChildTuningAdamW(m.parameters(), lr=1e-2, weight_decay=0.1, mode="D", reserve_p=0.3)
    off.set_gradient_mask(masks)
    after = _train(m, off, stream)
    for q0, q1, mask in zip(theta0, after, masks.values()):
        torch.testing.assert_close(q1[~mask], q0[~mask] * (1 - 1e-2 * 0.1) ** 30, rtol=1e-6, atol=0)
    # decay_masked=False on torch's AdamW with decay: the complement is restored bit for bit
    m = _model()
    masks = {q: mk for q, mk in zip(m.parameters(), masks.values())}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    ct.ChildTuningHook("D", 0.3, masks=masks, decay_masked=False).attach(opt)
    after = _train(m, opt, stream)
    for q0, q1, mask in zip(theta0, after, masks.values()):
        assert torch.equal(q0[~mask], q1[~mask])


def test_update_dropout_moves_exactly_the_sampled_mask():
    w = nn.Parameter(torch.randn(128, 128))
    opt = torch.optim.Adam([w], lr=1e-3)
    ct.ChildTuningHook("F", 0.3, target="update", seed=11).attach(opt)
    replay = torch.Generator().manual_seed(11)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = w.detach().clone()
        w.grad = torch.randn(128, 128, generator=gen)  # no exact zeros
        opt.step()
        mask = ct.bernoulli_mask_like(w.detach(), 0.3, replay).bool()
        assert torch.equal(w.detach() != before, mask)


def test_gradient_dropout_with_momentum_moves_almost_everything():
    """Eq. (12): with SGDM a coordinate moves at step t iff it was unmasked once in 1..t."""
    p, steps = 0.2, 12
    w = nn.Parameter(torch.randn(512, 512))
    opt = torch.optim.SGD([w], lr=1e-3, momentum=0.9)
    ct.ChildTuningHook("F", p, seed=1).attach(opt)
    gen = torch.Generator().manual_seed(0)
    theory = ct.fraction_moved_theory(p, steps, "sgdm", "grad")
    for t in range(steps):
        before = w.detach().clone()
        w.grad = torch.rand(512, 512, generator=gen) + 0.1  # strictly positive: no exact zeros
        opt.step()
        assert abs((w.detach() != before).float().mean().item() - theory[t]) < 0.01


def test_fraction_changed_curve_matches_theory():
    for name, target in (("sgdm", "grad"), ("adam", "grad"), ("adam", "update"), ("sgd", "grad")):
        measured = ct.fraction_changed_curve(name, target, 0.3, steps=15, size=128)
        theory = ct.fraction_moved_theory(0.3, 15, name, target)
        assert np.abs(measured - theory).max() < binomial_tol(0.5, 128 * 128, z=6)


def test_hook_validation():
    with pytest.raises(ValueError, match="mode"):
        ct.ChildTuningHook("X")
    with pytest.raises(ValueError, match="target='update'"):
        ct.ChildTuningHook("D", 0.3, target="update")
    with pytest.raises(ValueError, match="reserve_p"):
        ct.ChildTuningHook("F", 2.0)
    with pytest.raises(TypeError, match="optimizer"):
        ct.ChildTuningHook("F", 0.5).attach("adam")
    w = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="mask shape"):
        ct.ChildTuningHook("D", 0.5, masks={w: torch.ones(4, dtype=torch.bool)})


# ---------------------------------------------------------------- moments (eqs. 7-13)
def test_sgd_moments_closed_form_and_monte_carlo():
    assert ct.sgd_dropout_moments(1, 2, 0.25) == (1.0, 19.0)
    n = 10**6
    gen = torch.Generator().manual_seed(0)
    g = 1.0 + 2.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    x = g * ct.bernoulli_mask_like(g, 0.25, gen) / 0.25
    mean, var = ct.sgd_dropout_moments(1, 2, 0.25)
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n)  # CLT
    assert abs(x.var().item() / var - 1) < 0.02


def test_matched_gaussian_has_the_moments_of_dropout():
    """Eq. (13): for a fixed g, g*M/p and g*(1 + s*xi) share E = g and E[.^2] = g^2/p."""
    p, n, g0 = 0.3, 10**6, 1.7
    gen = torch.Generator().manual_seed(0)
    for mode in ("F", "gauss"):
        w = nn.Parameter(torch.zeros(n))
        w.grad = torch.full((n,), g0)
        ct.ChildTuningHook(mode, p, generator=gen).before_step([w])
        assert abs(w.grad.mean().item() / g0 - 1) < 0.01
        assert abs((w.grad**2).mean().item() / (g0**2 / p) - 1) < 0.02


@pytest.fixture(scope="module")
def adam_runs():
    runs = {}
    for mu, sigma, p in ((1.0, 1.0, 0.3), (1.0, 1.0, 0.6), (0.3, 1.0, 0.3), (1.0, 0.2, 0.3)):
        for mode in ("none", "grad", "update", "lr_sqrt_p"):
            if mode != "grad" and (mu, sigma, p) != (1.0, 1.0, 0.3):
                continue
            runs[mu, sigma, p, mode] = ct.simulate_adam_updates(mu, sigma, p, mode, n=2000, steps=6000, keep_last=2000)
    return runs


def test_adam_drift_is_sqrt_p(adam_runs):
    """Eq. (10): the mean update with gradient dropout is sqrt(p) times the plain one (and equals lr*sqrt(p))."""
    base = adam_runs[1.0, 1.0, 0.3, "none"].mean()
    assert abs(base / ct.adam_stationary_moments(1, 1, 0.3)[0] - 1) < 0.02
    for p in (0.3, 0.6):
        ratio = adam_runs[1.0, 1.0, p, "grad"].mean() / base
        assert abs(ratio / math.sqrt(p) - 1) < 0.02
    assert abs(adam_runs[1.0, 1.0, 0.3, "lr_sqrt_p"].mean() / adam_runs[1.0, 1.0, 0.3, "grad"].mean() - 1) < 0.02


def test_adam_variance_goes_up_not_down(adam_runs):
    """Eq. (11) / Flag F1: variance c(1 - p r) with dropout, c(1 - r) without, p c(1 - r) with lr*sqrt(p)."""
    for (mu, sigma, p, mode), u in adam_runs.items():
        predicted = ct.adam_stationary_moments(mu, sigma, p, mode=mode)[1]
        assert abs(u.var() / predicted - 1) < 0.05, (mu, sigma, p, mode, u.var(), predicted)
    assert adam_runs[1.0, 1.0, 0.3, "grad"].var() > adam_runs[1.0, 1.0, 0.3, "none"].var()


def test_update_dropout_is_unbiased_under_adam(adam_runs):
    base = adam_runs[1.0, 1.0, 0.3, "none"].mean()
    assert abs(adam_runs[1.0, 1.0, 0.3, "update"].mean() / base - 1) < 0.02


def test_moment_function_validation():
    with pytest.raises(ValueError, match="mode"):
        ct.adam_stationary_moments(1, 1, 0.3, mode="sgd")
    with pytest.raises(ValueError, match="keep_last"):
        ct.simulate_adam_updates(1, 1, 0.3, "none", steps=10, keep_last=20)
    with pytest.raises(ValueError, match="sigma"):
        ct.sgd_dropout_moments(1, -1, 0.3)


# ---------------------------------------------------------------- Fisher
def test_fisher_logistic_regression_closed_form():
    """O10: per-example score (y - sigmoid(w.x)) x, so F = mean((y - s)^2 x^2)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen)
    y = (torch.rand(40, generator=gen) < 0.5).float()
    model = nn.Linear(5, 1, bias=False)

    def nll(m, idx):
        return nn.functional.binary_cross_entropy_with_logits(m(x[idx]).squeeze(-1), y[idx], reduction="none")

    batches = list(torch.arange(40).split(7))
    fisher = ct.fisher_diagonal(model, batches, nll, per_sample=True)["weight"]
    s = torch.sigmoid(x @ model.weight.detach().T).squeeze(-1)
    expected = (((y - s)[:, None] * x) ** 2).mean(0, keepdim=True)
    torch.testing.assert_close(fisher, expected, atol=1e-6, rtol=0)
    batch_of_one = ct.fisher_diagonal(model, list(torch.arange(40).split(1)), nll, per_sample=False)["weight"]
    torch.testing.assert_close(batch_of_one, expected, atol=1e-6, rtol=0)


def test_fisher_per_sample_and_batch_against_a_loop_with_torch_clipping():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 6, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    model = _model(3)

    def nll(m, idx):
        return nn.functional.cross_entropy(m(x[idx]), y[idx], reduction="none")

    batches = list(torch.arange(24).split(8))
    per_sample = ct.fisher_diagonal(model, batches, nll, per_sample=True, param_filter=lambda n: n.startswith("0."))
    assert set(per_sample) == {"0.weight", "0.bias"}
    batch = ct.fisher_diagonal(model, batches, nll, per_sample=False, clip_norm=0.05)
    loop_ps = {n: torch.zeros_like(q) for n, q in model.named_parameters()}
    loop_b = {n: torch.zeros_like(q) for n, q in model.named_parameters()}
    for j in range(24):  # separate forward/backward per example
        model.zero_grad()
        nll(model, torch.tensor([j])).sum().backward()
        for n, q in model.named_parameters():
            loop_ps[n] += q.grad**2 / 24
    for idx in batches:  # the official loop: clip each tensor with torch, square, average over batches
        model.zero_grad()
        nll(model, idx).mean().backward()
        for n, q in model.named_parameters():
            torch.nn.utils.clip_grad_norm_(q, 0.05)
            loop_b[n] += q.grad**2 / len(batches)
    for n in per_sample:
        torch.testing.assert_close(per_sample[n], loop_ps[n], atol=1e-7, rtol=1e-5)
    for n in batch:
        torch.testing.assert_close(batch[n], loop_b[n], atol=1e-9, rtol=1e-5)
    assert model.training  # restored


def test_fisher_validation():
    model = _model()
    with pytest.raises(ValueError, match="per-example"):
        ct.fisher_diagonal(model, [0], lambda m, b: m(torch.zeros(2, 6)).sum(), per_sample=True)
    with pytest.raises(ValueError, match="param_filter"):
        ct.fisher_diagonal(model, [0], lambda m, b: m(torch.zeros(2, 6)).sum(), param_filter=lambda n: False)
    with pytest.raises(ValueError, match="empty"):
        ct.fisher_diagonal(model, [], lambda m, b: m(torch.zeros(2, 6)).sum(), per_sample=False)


# ---------------------------------------------------------------- transformers.Trainer callback
# `transformers.Trainer` needs `accelerate`, which is not installed in this environment, so the callback is
# driven by a loop that calls its events in the Trainer's order (see Trainer._inner_training_loop):
# on_train_begin -> [backward, clip_grad_norm_, on_pre_optimizer_step, optimizer.step, on_optimizer_step]*.
def _tiny_bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def _trainer_like_run(callback, steps=6, seed=0, weight_decay=0.0):
    from types import SimpleNamespace

    from transformers import TrainerCallback, TrainerControl, TrainerState

    assert callback is None or isinstance(callback, TrainerCallback)
    model = _tiny_bert(seed)
    loader = _trainer_like_loader(seed)
    args = SimpleNamespace(max_grad_norm=1.0)  # TrainingArguments itself needs accelerate
    state, control = TrainerState(), TrainerControl()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    kwargs = {"model": model, "optimizer": optimizer, "train_dataloader": loader}
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    torch.manual_seed(seed + 1)
    if callback is not None:
        callback.on_train_begin(args, state, control, **kwargs)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        model(**loader[step % len(loader)]).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        if callback is not None:
            callback.on_pre_optimizer_step(args, state, control, **kwargs)
        optimizer.step()
        if callback is not None:
            callback.on_optimizer_step(args, state, control, **kwargs)
    return before, {n: q.detach().clone() for n, q in model.named_parameters()}


def test_trainer_callback_d_mode_freezes_the_complement():
    callback = ct.ChildTuningCallback("D", 0.3)
    before, after = _trainer_like_run(callback)
    masks = callback.name_masks
    assert set(masks) == {n for n in before if "layer" in n}  # the official scope
    n_scope = sum(m.numel() for m in masks.values())
    assert sum(m.sum().item() for m in masks.values()) == round(0.3 * n_scope)
    for name, mask in masks.items():
        assert torch.equal(before[name][~mask], after[name][~mask])
    assert any(not torch.equal(before[n][m], after[n][m]) for n, m in masks.items())
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])  # outside the scope
    # the Fisher it used is the official per-batch, per-tensor-clipped one, in train mode (same dropout draws)
    fresh = _tiny_bert(0)
    torch.manual_seed(1)
    reference = ct.fisher_diagonal(fresh, _trainer_like_loader(), ct.hf_batch_loss, per_sample=False,
                                   param_filter=ct.official_scope, clip_norm=1.0, train_mode=True)
    assert all(torch.equal(reference[n], callback.fisher[n]) for n in reference)


def _trainer_like_loader(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids, labels = torch.randint(1, 40, (32, 8), generator=gen), torch.randint(0, 2, (32,), generator=gen)
    return [{"input_ids": ids[i:i + 8], "labels": labels[i:i + 8]} for i in range(0, 32, 8)]


def test_trainer_callback_decay_exemption_and_f_mode():
    callback = ct.ChildTuningCallback("D", 0.3, decay_masked=False)
    before, after = _trainer_like_run(callback, weight_decay=0.1)
    for name, mask in callback.name_masks.items():
        assert torch.equal(before[name][~mask], after[name][~mask])
    _, vanilla = _trainer_like_run(None)
    _, f_one = _trainer_like_run(ct.ChildTuningCallback("F", 1.0))
    assert all(torch.equal(vanilla[n], f_one[n]) for n in vanilla)
    _, f_half = _trainer_like_run(ct.ChildTuningCallback("F", 0.5))
    assert any(not torch.equal(vanilla[n], f_half[n]) for n in vanilla)


# ---------------------------------------------------------------- the real encoder (MiniLM cross-encoder)
@pytest.fixture(scope="module")
def minilm():
    from lib import encoders as enc

    return enc.load_encoder("minilm", "cpu")


def _pair_batch(encoder, k):
    from lib import encoders as enc

    pairs = [("A plane is taking off.", "An air plane is taking off."),
             ("A man is playing a large flute.", "Three men are playing chess on a wooden board."),
             ("Nobody is here.", "The room, which was painted blue in 1999, is full of people talking loudly.")]
    ids = ct.pair_ids(encoder.tokenizer, pairs, max_length=32)
    return enc.pad_features(enc.compute_features(encoder, ids, k, dtype=torch.float32))


@pytest.mark.parametrize("k", [5, 3])
def test_cls_shortcut_equals_the_full_top_layers_and_their_gradients(minilm, k):
    """Oracle: the full TopLayers forward (the model's own layers) read at [CLS], on padded rows; the
    gradient of every parameter (keys and values included) through the shortcut equals the full one."""
    hidden, mask = _pair_batch(minilm, k)
    assert (mask == 0).any()  # padding present
    torch.manual_seed(0)
    model = ct.CrossEncoderClassifier(minilm.top(k)).eval()
    fast = model(hidden, mask)
    full = model.classifier(model.top(hidden, mask)[:, 0])
    torch.testing.assert_close(fast, full, atol=2e-5, rtol=0)
    grads = []
    for out in (fast, full):
        model.zero_grad()
        out.pow(2).sum().backward(retain_graph=True)
        grads.append({n: q.grad.clone() for n, q in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=2e-5, rtol=1e-4, msg=name)
    key = "top.layers.0.attention.self.key.weight"
    assert grads[0][key].abs().max() > 0


def test_last_layer_at_cls_equals_the_full_encoder(minilm):
    """Cached features after 5 layers + the CLS shortcut of layer 6 == MiniLM's own last hidden state at [CLS]."""
    ids = ct.pair_ids(minilm.tokenizer, [("Dogs bark.", "A dog is barking loudly at night.")], max_length=32)
    x = torch.tensor(ids)
    reference = minilm.model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[:, 0]
    hidden = minilm.hidden_states(x, torch.ones_like(x), 5)
    top = minilm.top(5).eval()
    torch.testing.assert_close(ct.cls_layer_output(top.layers[0], hidden, torch.ones_like(x)), reference,
                               atol=2e-5, rtol=0)


def test_pair_ids_encode_the_pair_together_and_truncate(minilm):
    tok = minilm.tokenizer
    ids = ct.pair_ids(tok, [("a b c " * 50, "short one")], max_length=20)[0]
    assert len(ids) == 20 and ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2
    assert tok.decode(ids[-3:-1]) == "short one"
    with pytest.raises(TypeError, match="pairs"):
        ct.pair_ids(tok, [("a", 3)])
    with pytest.raises(ValueError, match="max_length"):
        ct.pair_ids(tok, [("a", "b")], max_length=0)


def test_official_scope_covers_the_top_layers_and_not_the_head(minilm):
    model = ct.CrossEncoderClassifier(minilm.top(4))
    names = [n for n, _ in model.named_parameters()]
    assert all(ct.official_scope(n) for n in names if n.startswith("top.layers."))
    assert not any(ct.official_scope(n) for n in names if n.startswith("classifier"))


def _tiny_top(num_layers=2, k=1, seed=0):
    from transformers import BertConfig, BertModel

    from lib.encoders import TopLayers

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=num_layers, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16))
    layers = list(bert.encoder.layer)[k:]
    return TopLayers([copy.deepcopy(layer) for layer in layers], list(range(len(layers))), bert.config)


def test_finetune_classifier_runs_every_arm_reproducibly():
    """Plumbing on a config-built BERT top: every arm runs through lib.train.fit, the same seed gives the same
    numbers, D and the random ablation keep exactly round(p*N) in-scope scalars, and the head arm leaves
    the layers alone."""
    top = _tiny_top()
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(int(n), 16, generator=gen) for n in torch.randint(2, 7, (40,), generator=gen)]
    labels = torch.randint(0, 2, (40,), generator=gen)
    train, dev = (feats[:32], labels[:32]), (feats[32:], labels[32:])
    n_scope = sum(q.numel() for q in top.parameters())
    for method in ct.PAIR_METHODS:
        a = ct.finetune_classifier(top, train, dev, method, p=0.3, epochs=2, batch_size=8, fisher_batches=2, seed=1)
        b = ct.finetune_classifier(top, train, dev, method, p=0.3, epochs=2, batch_size=8, fisher_batches=2, seed=1)
        assert a["dev_acc"] == b["dev_acc"] and a["losses"] == b["losses"] and len(a["losses"]) == 8
        assert 0 <= a["dev_acc"] <= 1
        if method in ("D", "random"):
            assert a["density"] == round(0.3 * n_scope) / n_scope
    with pytest.raises(ValueError, match="method"):
        ct.finetune_classifier(top, train, dev, "magic")
    with pytest.raises(ValueError, match="lr"):
        ct.finetune_classifier(top, train, dev, "vanilla", lr=float("nan"))
    with pytest.raises(ValueError, match="same length"):
        ct.finetune_classifier(top, (feats[:5], labels[:4]), dev, "vanilla")


def test_accuracy_counts_argmax_hits():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, hidden, mask):  # predicts class 1 iff the first feature of [CLS] is positive
            return torch.stack([torch.zeros(len(hidden)), hidden[:, 0, 0]], dim=-1)

    feats = [torch.tensor([[1.0], [0.0]]), torch.tensor([[-1.0]]), torch.tensor([[2.0], [5.0], [1.0]])]
    assert ct.accuracy(Fixed(), feats, torch.tensor([1, 1, 1])) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- toy study plumbing
def test_toy_tasks_and_finetune_are_reproducible():
    data = ct.make_teacher_tasks(n_source=400, n_target=64, n_test=200, seed=3)
    assert data["x_source"].shape == (400, 32) and data["y_test"].shape == (200,)
    again = ct.make_teacher_tasks(n_source=400, n_target=64, n_test=200, seed=3)
    assert all(torch.equal(data[k], again[k]) for k in data)
    student = ct.pretrain_student(data["x_source"], data["y_source"], hidden=32, epochs=1)
    for method in ct.TOY_METHODS:
        a = ct.finetune_toy(student, data, method, p=0.3, steps=5, seed=1)
        b = ct.finetune_toy(student, data, method, p=0.3, steps=5, seed=1)
        assert a["acc"] == b["acc"] and a["losses"] == b["losses"]
    with pytest.raises(ValueError, match="method"):
        ct.finetune_toy(student, data, "magic")


def test_adam_trajectory_p_one_is_plain_adam():
    """At p = 1 both gradient dropout and lr*sqrt(p) are plain Adam, step for step."""
    plain = ct.adam_trajectory("adam", steps=5, n=200)
    for method in ("F", "lr_sqrt_p"):
        other = ct.adam_trajectory(method, p=1.0, steps=5, n=200)
        np.testing.assert_array_equal(plain["displacement"], other["displacement"])


def test_hook_scope_leaves_other_parameters_alone():
    a, b = nn.Parameter(torch.ones(100)), nn.Parameter(torch.ones(100))
    a.grad, b.grad = torch.ones(100), torch.ones(100)
    ct.ChildTuningHook("F", 0.5, params=[a], seed=0).before_step([a, b])
    assert set(a.grad.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(b.grad, torch.ones(100))


def test_callback_inside_a_real_trainer_freezes_unmasked_weights(tmp_path):
    """Mode D inside `transformers.Trainer` (AdamW built by the Trainer, weight decay 0): every in-scope weight
    outside the Fisher mask is bit-identical after training, and some weights inside it moved."""
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(1)
    dataset = [{"input_ids": torch.randint(1, 50, (8,), generator=generator), "labels": int(i % 2)} for i in range(32)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = ct.ChildTuningCallback("D", reserve_p=0.3)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-2,
                             weight_decay=0.0, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
    moved_inside = 0
    for name, mask in callback.name_masks.items():
        param = dict(model.named_parameters())[name].detach()
        assert torch.equal(param[~mask], before[name][~mask]), f"{name}: unmasked weights changed"
        moved_inside += int((param[mask] != before[name][mask]).sum())
    assert callback.name_masks and moved_inside > 0


# ---------------------------------------------------------------- a user's mistakes (contents, half precision)
def test_official_optimizer_rejects_nan_eps_and_weight_decay():
    w = nn.Parameter(torch.ones(3))
    for kwargs, name in (({"eps": float("nan")}, "eps"), ({"weight_decay": float("nan")}, "weight_decay"),
                         ({"lr": float("inf")}, "lr"), ({"betas": (0.9, float("nan"))}, "betas")):
        with pytest.raises(ValueError, match=name):
            ct.ChildTuningAdamW([w], **kwargs)


def test_official_optimizer_updates_fp16_parameters_like_fp32():
    """fp16 parameters with small gradients: the first moment 0.1*g underflows in fp16, so an fp16 state
    gives an update of exactly 0. The state lives in fp32: the fp16 result is the fp32 one rounded once."""
    values = torch.full((64,), 1e-3).half().float()  # exactly representable in fp16
    grads = torch.full((64,), 1e-7).half().float()
    results = {}
    for dtype in (torch.float16, torch.float32):
        w = nn.Parameter(values.to(dtype, copy=True))
        opt = ct.ChildTuningAdamW([w], lr=1e-3, eps=1e-6)
        w.grad = grads.to(dtype)
        opt.step()
        results[dtype] = w.detach()
    assert (results[torch.float16] != values.half()).all()
    torch.testing.assert_close(results[torch.float16].float(), results[torch.float32].half().float(), atol=0, rtol=0)


def test_set_gradient_mask_rejects_a_mask_of_the_wrong_shape_or_dtype():
    w = nn.Parameter(torch.ones(4, 3))
    opt = ct.ChildTuningAdamW([w], mode="D", reserve_p=0.5)
    with pytest.raises(ValueError, match="shape"):
        opt.set_gradient_mask({w: torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        opt.set_gradient_mask({w: torch.ones(4, 3)})


def test_fisher_mask_rejects_nan_scores():
    scores = {"a": torch.tensor([0.1, float("nan"), 0.3]), "b": torch.tensor([5.0])}
    with pytest.raises(ValueError, match="fisher"):
        ct.fisher_mask(scores, 0.25)


def test_mask_helpers_reject_float_scores_where_masks_are_expected():
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="bool"):
        ct.mask_density({"weight": torch.rand(2, 3)})
    with pytest.raises(TypeError, match="bool"):
        ct.masks_by_parameter(model, {"weight": torch.rand(2, 3)})
    assert ct.mask_density({"weight": torch.tensor([True, False, False, True])}) == 0.5


def test_moment_and_task_helpers_reject_nan():
    with pytest.raises(ValueError, match="mu"):
        ct.sgd_dropout_moments(float("nan"), 1.0, 0.3)
    with pytest.raises(ValueError, match="sigma"):
        ct.sgd_dropout_moments(1.0, float("nan"), 0.3)
    with pytest.raises(ValueError, match="mu"):
        ct.adam_stationary_moments(float("nan"), 1.0, 0.3)
    with pytest.raises(ValueError, match="shift"):
        ct.make_teacher_tasks(n_source=10, n_target=10, n_test=10, shift=float("nan"))
