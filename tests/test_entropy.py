"""Oracles for lib.entropy: analytic identities, scipy (entropy, logsumexp, brentq), brute-force loops."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import brentq
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from lib import entropy as en

RNG = np.random.default_rng(0)


def random_p(n=100, rows=None, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.random((n,) if rows is None else (rows, n))
    return u / u.sum(-1, keepdims=True)


def h_of_gamma(logp, gamma):
    return float(en.entropy_path(logp, gamma)[0])


# 1. entropy
def test_entropy_extremes_and_scipy():
    assert en.entropy(np.full(7, 1 / 7)) == pytest.approx(math.log(7), abs=1e-12)
    assert en.entropy(np.eye(5)[2]) == pytest.approx(0.0, abs=1e-12)
    p = random_p(50, rows=20)
    np.testing.assert_allclose(en.entropy(p), scipy_entropy(p, axis=-1), rtol=1e-12)
    z = RNG.normal(size=(4, 30))
    np.testing.assert_allclose(en.entropy(logits=z), scipy_entropy(softmax(z, -1), axis=-1), rtol=1e-12)
    assert (en.entropy(p) <= math.log(50)).all() and (en.entropy(p) >= 0).all()


def test_entropy_torch_in_torch_out_and_dim():
    p = torch.tensor(random_p(10, rows=3))
    out = en.entropy(p.T, dim=0)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, en.entropy(p))


# 2–4. power transform
def test_power_identities():
    p = random_p(40)
    np.testing.assert_allclose(en.power_transform(p, 1.0), p, rtol=1e-12)
    q = p.copy(); q[:10] = 0; q /= q.sum()
    uniform = en.power_transform(q, 0.0)
    assert (uniform[:10] == 0).all()
    np.testing.assert_allclose(uniform[10:], 1 / 30, rtol=1e-12)
    np.testing.assert_allclose(en.power_transform(en.power_transform(p, 2.5), -0.7), en.power_transform(p, -1.75),
                               rtol=1e-10)


def test_power_is_temperature():
    z = RNG.normal(size=(5, 20)) * 3
    for g in (0.3, 1.7, 8.0):
        np.testing.assert_allclose(en.power_transform(softmax(z, -1), g), softmax(g * z, -1), rtol=1e-10)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=2, max_size=30, unique=True), st.floats(0.05, 5))
def test_power_keeps_or_reverses_order(counts, gamma):
    p = np.array(counts, dtype=float) / sum(counts)
    assert (np.argsort(en.power_transform(p, gamma)) == np.argsort(p)).all()
    assert (np.argsort(en.power_transform(p, -gamma)) == np.argsort(p)[::-1]).all()


# 5–6. derivative and monotonicity
def test_derivative_matches_finite_difference_and_post_coefficient():
    logp = np.log(random_p(100))
    for g in (-3.0, -0.5, 0.0, 0.7, 1.0, 4.0, 20.0):
        h = 1e-5
        fd = (h_of_gamma(logp, g + h) - h_of_gamma(logp, g - h)) / (2 * h)
        d = float(en.entropy_path(logp, g)[1])
        assert d == pytest.approx(fd, rel=1e-5, abs=1e-9)
        assert (d <= 0) if g > 0 else (d >= 0)
    p = np.exp(logp)
    ent = en.entropy(p)
    assert float(en.entropy_path(logp, 1.0)[1]) == pytest.approx(ent**2 - np.sum(p * logp**2), rel=1e-10)


def test_entropy_strictly_decreasing_for_positive_gamma():
    logp = np.log(random_p(60))
    values = en.entropy_path(np.broadcast_to(logp, (500, 60)), np.linspace(0.01, 50, 500))[0]
    assert (np.diff(values) < 0).all()


# 7. limits (F5)
def test_limits_with_ties_and_zeros():
    p = random_p(100) * 0.5
    p[[3, 17, 42]] = p.max() * 1.5
    p /= p.sum()
    assert h_of_gamma(np.log(p), 500.0) == pytest.approx(math.log(3), abs=1e-6)
    low, high = en.entropy_range(p)
    assert low == pytest.approx(math.log(3)) and high == pytest.approx(math.log(100))
    q = random_p(100)
    q[:20] = 0
    q /= q.sum()
    with np.errstate(divide="ignore"):
        logq = np.log(q)
    assert h_of_gamma(logq, 1e-8) == pytest.approx(math.log(80), abs=1e-6)
    assert (en.power_transform(q, 1e-8)[:20] == 0).all()


# 8. law of large numbers (F14)
def test_uniform_random_distribution_entropy():
    assert en.entropy(random_p(100_000)) == pytest.approx(math.log(100_000) - math.log(2) + 0.5, abs=0.01)


# 9–10. the post's iteration is Newton on the total exponent; it converges in 3–4 steps on its demo
def test_post_iteration_equals_newton_on_total_exponent():
    p = random_p(100, seed=3)
    target = math.log(30)
    post = en.entropy_normalize_post(p, target, iters=5, log_space=True)
    gamma, logp = 1.0, np.log(p)
    for t in range(5):
        h, dh = en.entropy_path(logp, gamma)
        gamma = gamma + (target - h) / dh
        assert post.total_gammas[t] == pytest.approx(gamma, rel=1e-10)


def test_post_demo_converges_in_three_to_four_steps():
    p = random_p(100, rows=50, seed=1)
    post = en.entropy_normalize_post(p, math.log(30), iters=5, log_space=True)
    errors = np.abs(en.entropy_path(np.log(p)[None], post.total_gammas)[0] - math.log(30))  # [iters, rows]
    assert errors[2].max() < 1e-2 and errors[3].max() < 1e-4


# 11. robust solver = brentq root, on the spec's hard grid
@pytest.mark.parametrize("sigma", [1, 3, 6, 10, 20])
def test_safeguarded_solver_matches_brentq(sigma):
    z = np.random.default_rng(sigma).normal(0, sigma, 50)
    logp = z - np.logaddexp.reduce(z)
    for target in (0.01, 0.5, 2.0, math.log(50) - 0.3, math.log(50) - 0.01):
        result = en.entropy_normalize(logp=logp, target=target)
        assert result.converged and result.gamma > 0 and result.evaluations <= 50
        assert en.entropy(result.probs) == pytest.approx(target, abs=1e-8)
        root = brentq(lambda g: h_of_gamma(logp, g) - target, 1e-12, 1e6, xtol=1e-14, rtol=1e-14)
        assert result.gamma == pytest.approx(root, rel=1e-6)
        assert (np.argsort(result.probs, kind="stable") == np.argsort(np.exp(logp), kind="stable")).all()


def test_bisect_twin_agrees_with_safeguarded():
    z = RNG.normal(0, 4, (30, 40))
    targets = RNG.uniform(0.1, math.log(40) - 0.1, 30)
    fast = en.entropy_normalize(z, target=targets)
    slow = en.entropy_normalize(z, target=targets, method="bisect", max_iter=200)
    assert fast.converged and slow.converged
    np.testing.assert_allclose(fast.gamma, slow.gamma, rtol=1e-6)


# 12. the post's fragility, documented
def test_probability_space_iteration_breaks_on_low_targets():
    p = random_p(100, seed=0)
    post = en.entropy_normalize_post(p, 0.5, iters=10, log_space=False)
    assert np.isnan(post.gamma) or (post.probs == 0).any()


def test_plain_newton_lands_on_negative_root():
    z = np.random.default_rng(6).normal(0, 6, 50)
    result = en.entropy_normalize(z, target=math.log(50) - 0.3, method="newton")
    assert not result.converged or result.gamma < 0


# 13. infeasible targets
def test_infeasible_targets_raise_or_clip():
    p = random_p(20)
    with pytest.raises(ValueError, match="target"):
        en.entropy_normalize(p=p, target=math.log(20) + 0.1)
    with pytest.raises(ValueError, match="target"):
        en.entropy_normalize(p=p, target=-0.1)
    clipped = en.entropy_normalize(p=p, target=10.0, clip=True)
    assert en.entropy(clipped.probs) == pytest.approx(math.log(20), abs=1e-6)
    uniform = en.entropy_normalize(p=np.full(8, 1 / 8), target=math.log(8))
    np.testing.assert_allclose(uniform.probs, 1 / 8)
    with pytest.raises(ValueError, match="target"):
        en.entropy_normalize(p=np.full(8, 1 / 8), target=1.0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="exactly one"):
        en.entropy_normalize(target=1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        en.entropy(np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="method"):
        en.entropy_normalize(np.zeros(3), target=0.5, method="magic")
    with pytest.raises(TypeError, match="p must"):
        en.entropy("abc")


# 14. batched = per-row loop
def test_batched_equals_row_loop():
    z = RNG.normal(0, 3, (12, 25))
    targets = RNG.uniform(0.2, 3.0, 12)
    batched = en.entropy_normalize(z, target=targets)
    for i in range(12):
        row = en.entropy_normalize(z[i], target=targets[i])
        assert row.gamma == pytest.approx(batched.gamma[i], rel=1e-9)


def test_torch_float32_roundtrip():
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    result = en.entropy_normalize(z, target=1.5)
    assert isinstance(result.probs, torch.Tensor)
    torch.testing.assert_close(en.entropy(result.probs), torch.full((4,), 1.5, dtype=torch.float64))


# 15–18. attention scale, entropy and the approximations
def test_attention_scales():
    assert en.attention_scale(512, 64, "entropy_invariant") == pytest.approx(1 / 8)
    assert en.attention_scale(64, 64, "chiang_cholak") == pytest.approx(math.log(64) / 8)
    assert en.attention_scale(10, 64, "qwen", base=512, position=10) == pytest.approx(1 / 8)
    assert en.attention_scale(10, 64, "qwen", base=512, position=4096) == pytest.approx(math.log(4096, 512) / 8)
    with pytest.raises(ValueError, match="kind"):
        en.attention_scale(10, 64, "other")


def test_attention_entropy_identities():
    q, k = RNG.normal(size=(2, 16, 8)), RNG.normal(size=(2, 16, 8))
    np.testing.assert_allclose(en.attention_entropy(q, k, 0.0), math.log(16), rtol=1e-12)
    causal = en.attention_entropy(q, k, 0.7, causal=True)
    assert (causal <= np.log(np.arange(1, 17)) + 1e-12).all()
    np.testing.assert_allclose(en.attention_entropy(q, k, 0.0, causal=True)[0], np.log(np.arange(1, 17)), rtol=1e-12)
    mask = np.ones((2, 16)); mask[:, 10:] = 0
    np.testing.assert_allclose(en.attention_entropy(q, k, 0.0, attention_mask=mask), math.log(10), rtol=1e-12)


def test_meanfield_lower_bound_f12():
    s = RNG.normal(size=(200, 50))
    for lam in np.linspace(0, 10, 21):
        h = en.entropy(logits=lam * s)
        assert (h >= math.log(50) - lam * (s.max(-1) - s.mean(-1)) - 1e-12).all()


def test_meanfield_deficit_f13():
    assert en.meanfield_entropy_deficit(0.5 / 8, 64) == pytest.approx(0.124, abs=0.002)
    assert en.meanfield_entropy_deficit(1.0, 64) / 64 == pytest.approx(0.242, abs=0.005)


def test_gaussian_regime_deficit():
    s = np.random.default_rng(1).normal(size=100_000)
    assert en.entropy(logits=0.5 * s) == pytest.approx(math.log(100_000) - 0.125, abs=0.01)


# 19. logits processor
def test_logits_processor_sets_entropy_and_keeps_argmax():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(2)) * 4
    out = en.EntropyNormalizationLogitsProcessor(2.0)(torch.zeros(3, 1, dtype=torch.long), scores)
    torch.testing.assert_close(en.entropy(logits=out), torch.full((3,), 2.0, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (out.argmax(-1) == scores.argmax(-1)).all()
    from transformers import LogitsProcessorList

    processed = LogitsProcessorList([en.EntropyNormalizationLogitsProcessor(1.0)])(torch.zeros(3, 1, dtype=torch.long),
                                                                                  scores)
    assert processed.shape == scores.shape


# ---- a user's mistakes with contents: masked rows, NaN, a Newton run that crosses zero ----------------
def test_fully_masked_logits_raise_instead_of_zero_entropy():
    with pytest.raises(ValueError, match="logits.*entirely -inf"):
        en.entropy(logits=[[-np.inf, -np.inf]])
    with pytest.raises(ValueError, match="logits.*entirely -inf"):
        en.entropy(logits=torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]))
    assert en.entropy(logits=[[0.0, -np.inf]])[0] == 0.0  # one live entry: a point mass, entropy exactly 0


@pytest.mark.parametrize("bad, match", [([[np.nan, 0.0]], "NaN"), ([[np.inf, 0.0]], r"\+inf"),
                                        ([[-np.inf, -np.inf]], "entirely -inf")])
def test_log_power_and_entropy_path_refuse_nan_and_empty_rows(bad, match):
    with pytest.raises(ValueError, match="logp.*" + match):
        en.log_power(bad, 1.0)
    with pytest.raises(ValueError, match="logp.*" + match):
        en.entropy_path(bad, 1.0)


def test_attention_entropy_refuses_queries_that_see_no_key():
    q, k = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match="attention_mask.*every key"):
        en.attention_entropy(q, k, 1.0, attention_mask=np.zeros(4))
    with pytest.raises(ValueError, match="attention_mask.*every key"):  # left padding under a causal mask
        en.attention_entropy(np.ones((4, 3)), k, 1.0, causal=True, attention_mask=np.array([0, 1, 1, 1]))
    with pytest.raises(ValueError, match="attention_mask"):
        en.attention_entropy(q, k, 1.0, attention_mask=np.array([1, 0.5, 1, 1]))
    equal = en.attention_entropy(q, k, 1.0, attention_mask=np.array([1, 1, 0, 1]))
    np.testing.assert_allclose(equal, math.log(3))  # equal scores over three visible keys


def test_logits_processor_keeps_a_fully_banned_row_and_fixes_the_others():
    proc = en.EntropyNormalizationLogitsProcessor(1.0)
    scores = torch.tensor([[-math.inf] * 4, [0.0, 1.0, 2.0, 3.0]])
    out = proc(None, scores)
    assert not torch.isnan(out).any()
    assert torch.isneginf(out[0]).all()
    np.testing.assert_allclose(en.entropy(logits=out[1:]), 1.0, atol=1e-8)
    with pytest.raises(ValueError, match="NaN"):
        proc(None, torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="target"):
        en.EntropyNormalizationLogitsProcessor(math.nan)


def test_newton_is_not_converged_when_gamma_is_not_positive():
    p, target = np.array([0.97, 0.02, 0.01]), 0.7 * math.log(3)
    newton = en.entropy_normalize(p=p, target=target, method="newton")
    assert newton.gamma < 0  # the post's iteration lands on the reversed-ranking root here
    assert not newton.converged
    safe = en.entropy_normalize(p=p, target=target)
    assert safe.converged and safe.gamma > 0
    np.testing.assert_allclose(en.entropy(p=safe.probs), target, atol=1e-9)


def test_nan_target_names_target():
    with pytest.raises(ValueError, match="target must not contain NaN"):
        en.entropy_normalize(p=np.array([0.5, 0.3, 0.2]), target=math.nan)
