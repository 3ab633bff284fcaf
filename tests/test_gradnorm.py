"""Oracle tests for lib/gradnorm.py (chapter: WGAN with gradient normalization).

Oracles: closed forms of the normalized gradients inside a linear region, Euler's identity for
positively homogeneous nets, finite differences, brute-force per-sample loops, scipy
(wasserstein_distance, sqrtm-free closed forms), torch.linalg (spectral norms).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib import gradnorm as gn

torch.set_num_threads(1)
F64 = torch.float64


def mlp(seed: int, din: int = 2, width: int = 16, depth: int = 2, *, bias: bool = True,
        act: str = "leaky_relu", batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    return gn.make_mlp(din, 1, width, depth, act=act, bias=bias, batchnorm=batchnorm).double()


def points(seed: int, n: int = 64, d: int = 2, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def input_grad(fn, x: torch.Tensor) -> torch.Tensor:
    """Autograd ∇_x of a per-sample function (samples independent)."""
    xi = x.clone().requires_grad_(True)
    (w,) = torch.autograd.grad(fn(xi).sum(), xi)
    return w


# ----------------------------------------------------------------------------- boundedness
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), log_scale=st.floats(-3, 3), act=st.sampled_from(["relu", "leaky_relu"]))
def test_gn_iccv_is_strictly_bounded(seed: int, log_scale: float, act: str) -> None:
    D = mlp(seed, act=act)
    x = points(seed, scale=10 ** log_scale)
    v = gn.gn_iccv(D, x, create_graph=False)
    _, _, g = gn.critic_grad(D, x, create_graph=False)
    assert (v.abs() < 1)[g > 0].all()
    assert v.abs().max() <= 1


# ----------------------------------------------------------------------------- gradient norms
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalized_gradient_norms_match_closed_forms(act: str, seed: int) -> None:
    D = mlp(seed, width=32, depth=3, act=act)
    x = points(seed, n=256)
    f, _, g = gn.critic_grad(D, x, create_graph=False)
    f, g = f.detach(), g.detach()
    alive = g > 1e-8
    eps, K = 1e-2, 2.5
    cases = {
        "gn": (lambda z: gn.gn_iccv(D, z), g ** 2 / (g + f.abs()) ** 2),
        "gran": (lambda z: gn.gran(D, z, eps=eps, K=K), K * g ** 2 / (g ** 2 + eps)),
        "gn_raw": (lambda z: gn.gn_raw(D, z), torch.ones_like(g)),
        "inner": (lambda z: gn.gn_inner(D, z), torch.ones_like(g)),
    }
    for name, (fn, expected) in cases.items():
        got = input_grad(fn, x).norm(dim=1)
        torch.testing.assert_close(got[alive], expected[alive], atol=1e-12, rtol=0, msg=name)
    assert (input_grad(cases["gn"][0], x).norm(dim=1) <= 1 + 1e-12).all()


def test_closed_form_input_grad_and_fast_generator_match_autograd() -> None:
    D = mlp(3, width=32, depth=3)
    x = points(3, n=128)
    f, w, g = gn.critic_grad(D, x, create_graph=False)
    auto = input_grad(lambda z: gn.gn_iccv(D, z), x)
    torch.testing.assert_close(gn.gn_closed_form_input_grad(f.detach(), w.detach(), g.detach()), auto,
                               atol=1e-12, rtol=0)
    xi = x.clone().requires_grad_(True)
    fast = gn.gn_iccv_fast_generator(D, xi)
    torch.testing.assert_close(fast, gn.gn_iccv(D, x, create_graph=False).detach(), atol=1e-14, rtol=0)
    (fast_grad,) = torch.autograd.grad(fast.sum(), xi)
    torch.testing.assert_close(fast_grad, auto, atol=1e-12, rtol=0)


def test_closed_form_fails_for_smooth_critics() -> None:
    """The premise (piecewise-linear D) matters: with Softplus the Hessian term appears."""
    D = mlp(4, width=16, depth=2, act="softplus")
    x = points(4, n=64)
    f, w, g = gn.critic_grad(D, x, create_graph=False)
    auto = input_grad(lambda z: gn.gn_iccv(D, z), x)
    assert (gn.gn_closed_form_input_grad(f, w, g) - auto).abs().max() > 1e-6


def test_finite_differences_agree_inside_regions() -> None:
    D = mlp(5, width=16, depth=2)
    x = points(5, n=32)
    h = 1e-6
    auto = input_grad(lambda z: gn.gn_iccv(D, z), x)
    for k in range(2):
        e = torch.zeros(2, dtype=F64)
        e[k] = h
        ids = gn.activation_pattern(D, torch.cat([x - e, x, x + e]))
        same = (ids[:32] == ids[32:64]) & (ids[64:] == ids[32:64])
        fd = (gn.gn_iccv(D, x + e, create_graph=False) - gn.gn_iccv(D, x - e, create_graph=False)) / (2 * h)
        torch.testing.assert_close(fd.detach()[same], auto[same, k], atol=1e-7, rtol=0)
        assert same.float().mean() > 0.5


# ----------------------------------------------------------------------------- identities
def test_signed_distance_for_an_affine_critic() -> None:
    lin = nn.Linear(3, 1).double()
    x = points(6, n=50, d=3)
    w, b = lin.weight[0].detach(), lin.bias.detach()
    s = (x @ w + b) / w.norm()
    torch.testing.assert_close(gn.gn_raw(lin, x).detach(), s, atol=1e-12, rtol=0)
    torch.testing.assert_close(gn.gn_iccv(lin, x).detach(), s / (1 + s.abs()), atol=1e-12, rtol=0)


@settings(max_examples=30, deadline=None)
@given(w=st.lists(st.floats(-100, 100), min_size=3, max_size=3).filter(lambda v: sum(a * a for a in v) > 1e-6),
       b=st.floats(-100, 100), seed=st.integers(0, 1000))
def test_signed_distance_property(w: list[float], b: float, seed: int) -> None:
    lin = nn.Linear(3, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w], dtype=F64))
        lin.bias.fill_(b)
    x = points(seed, n=16, d=3, scale=10.0)
    s = (x @ torch.tensor(w, dtype=F64) + b) / torch.tensor(w, dtype=F64).norm()
    torch.testing.assert_close(gn.gn_raw(lin, x).detach(), s, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(gn.gn_iccv(lin, x).detach(), s / (1 + s.abs()), atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("c", [1e-3, 7.0, 1e3])
def test_scale_invariance(c: float) -> None:
    D = mlp(7, width=16, depth=2)
    Dc = mlp(7, width=16, depth=2)
    with torch.no_grad():
        Dc[-1].weight.mul_(c)
        Dc[-1].bias.mul_(c)
    x = points(7, n=100)
    for fn in (gn.gn_iccv, gn.gn_raw):
        torch.testing.assert_close(fn(Dc, x).detach(), fn(D, x).detach(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gn.gran(Dc, x, eps=0.0).detach(), gn.gran(D, x, eps=0.0).detach(), rtol=1e-10, atol=1e-14)
    assert (gn.gran(Dc, x, eps=1e-1) - gn.gran(D, x, eps=1e-1)).abs().max() > 1e-6


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_euler_identity_bias_free(act: str) -> None:
    D = mlp(8, width=32, depth=3, bias=False, act=act)
    x = points(8, n=200)
    f, w, _ = gn.critic_grad(D, x, create_graph=False)
    torch.testing.assert_close(f.detach(), (w * x).sum(1).detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(gn.gn_inner(D, x).detach(), gn.gn_raw(D, x).detach(), atol=1e-12, rtol=0)


def test_inner_differs_from_raw_by_a_per_region_constant() -> None:
    D = mlp(9, width=16, depth=2)
    x = points(9, n=300)
    y = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    ids = gn.activation_pattern(D, torch.cat([x, y]))
    same = ids[:300] == ids[300:]
    diff_x = (gn.gn_raw(D, x) - gn.gn_inner(D, x)).detach()
    diff_y = (gn.gn_raw(D, y) - gn.gn_inner(D, y)).detach()
    torch.testing.assert_close(diff_x[same], diff_y[same], atol=1e-12, rtol=0)
    assert diff_x.abs().max() > 1e-3  # with biases the two critics are different functions


def test_activation_pattern_regions_are_affine() -> None:
    """Regions are convex and D is affine on them: D(midpoint) = mean of the endpoints."""
    D = mlp(10, width=16, depth=2)
    x = points(10, n=400)
    y = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    ids = gn.activation_pattern(D, torch.cat([x, y]))
    same = ids[:400] == ids[400:]
    with torch.no_grad():
        mid = D((x + y) / 2).squeeze(1)
        avg = (D(x) + D(y)).squeeze(1) / 2
    torch.testing.assert_close(mid[same], avg[same], atol=1e-12, rtol=0)
    assert 0 < same.float().mean() < 1
    bits = gn.activation_pattern(D, x, return_bits=True)
    assert bits.shape == (400, 32)


def test_discontinuity_exists_but_is_rare() -> None:
    D = mlp(11, width=64, depth=2)
    x = torch.empty(20_000, 2, dtype=F64).uniform_(-4, 4, generator=torch.Generator().manual_seed(3))
    ratios = gn.lipschitz_audit(lambda z: gn.gn_iccv(D, z, create_graph=False).detach(), x, radius=1e-4)
    assert ratios.max() > 10
    assert (ratios > 1.01).mean() < 0.01


def test_hinge_equals_wasserstein_plus_two_on_gn_outputs() -> None:
    D = mlp(12)
    d_real = gn.gn_iccv(D, points(1, scale=5), create_graph=False)
    d_fake = gn.gn_iccv(D, points(2, scale=5), create_graph=False)
    diff = gn.critic_loss(d_real, d_fake, "hinge") - gn.critic_loss(d_real, d_fake, "wass")
    assert abs(float(diff.detach()) - 2.0) < 1e-12
    assert torch.equal(gn.generator_loss(d_fake, "hinge"), gn.generator_loss(d_fake, "wass"))


def test_bce_loss_is_softplus_form() -> None:
    r, f = torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    expected = -torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean()
    torch.testing.assert_close(gn.critic_loss(r, f, "bce"), expected)
    torch.testing.assert_close(gn.generator_loss(f, "bce"), -torch.log(torch.sigmoid(f)).mean())


# ----------------------------------------------------------------------------- per-sample gradients
def test_batched_exact_and_loop_agree_without_coupling() -> None:
    D = mlp(13, width=16, depth=2)
    x = points(13, n=12)
    outs = {m: gn.critic_grad(D, x, create_graph=False, method=m) for m in gn.METHODS}
    for m in ("exact", "loop"):
        for a, b in zip(outs["batched"], outs[m]):
            torch.testing.assert_close(a.detach(), b.detach(), atol=1e-12, rtol=0)
    assert gn.batch_coupling(D, x) == 0.0
    assert gn.check_batched_shortcut(D, x) < 1e-12


def test_batchnorm_breaks_the_batched_shortcut_and_exact_path_is_right() -> None:
    D = mlp(14, width=8, depth=2, batchnorm=True).train()
    x = points(14, n=10)
    state = {k: v.clone() for k, v in D.state_dict().items()}
    _, w_exact, g_exact = gn.critic_grad(D, x, create_graph=False, method="exact")
    for k, v in D.state_dict().items():  # exact path leaves running stats alone
        assert torch.equal(v, state[k]), k
    _, w_loop, _ = gn.critic_grad(D, x, create_graph=False, method="loop")
    torch.testing.assert_close(w_exact, w_loop, atol=1e-12, rtol=0)
    with pytest.warns(UserWarning, match="BatchNorm"):
        _, w_batched, _ = gn.critic_grad(D, x, create_graph=False, method="batched")
    assert (w_batched - w_loop).abs().max() > 1e-3
    assert gn.batch_coupling(D, x) > 1e-3
    with pytest.raises(ValueError, match="couples samples"):
        gn.check_batched_shortcut(D, x)
    D.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gn.check_batched_shortcut(D, x) < 1e-12


def test_exact_path_is_differentiable_like_the_loop() -> None:
    """Double backprop through the torch.func path: parameter and input gradients equal the loop twin."""
    D = mlp(15, width=8, depth=2, batchnorm=True).train()
    G = nn.Linear(3, 2).double()
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    grads = {}
    for m in ("exact", "loop"):
        D.zero_grad()
        G.zero_grad()
        f, _, g = gn.critic_grad(D, G(z), method=m)
        (f / (g + f.abs())).sum().backward()
        grads[m] = [p.grad.clone() for p in list(D.parameters()) + list(G.parameters())]
    for a, b in zip(grads["exact"], grads["loop"]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_inputs_are_not_mutated() -> None:
    D = mlp(16)
    x = points(16, n=8)
    x0 = x.clone()
    for fn in (gn.gn_iccv, gn.gran, gn.gn_raw, gn.gn_inner):
        fn(D, x)
    gn.gradient_penalty(D, x, x.flip(0))
    assert not x.requires_grad and torch.equal(x, x0)


def test_official_formula_parity_on_images() -> None:
    """Same as basiclab/GNGAN-PyTorch normalize_gradient on a small conv critic with [B, 3, 8, 8] inputs."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(8, 8, 4, 2, 1),
                      nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(8 * 16, 1)).double()
    x = torch.randn(5, 3, 8, 8, dtype=F64)
    xr = x.clone().requires_grad_(True)
    f = D(xr)
    (grad,) = torch.autograd.grad(f, [xr], torch.ones_like(f), create_graph=True)
    grad_norm = torch.norm(torch.flatten(grad, start_dim=1), p=2, dim=1).view(-1, *[1] * (f.dim() - 1))
    official = (f / (grad_norm + torch.abs(f))).squeeze(1)
    torch.testing.assert_close(gn.gn_iccv(D, x), official, atol=1e-14, rtol=0)


# ----------------------------------------------------------------------------- baselines
def test_gradient_penalty_on_linear_critics() -> None:
    x_r, x_f = points(17, n=32, d=3), points(18, n=32, d=3)
    for norm, expected in ((1.0, 0.0), (2.0, 1.0)):
        lin = nn.Linear(3, 1, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]], dtype=F64) / 3 * norm)
        assert abs(float(gn.gradient_penalty(lin, x_r, x_f).detach()) - expected) < 1e-12


def test_clip_weights_in_place() -> None:
    D = mlp(19)
    before = [p.detach().clone() for p in D.parameters()]
    gn.clip_weights_(D, 0.05)
    for b, p in zip(before, D.parameters()):
        torch.testing.assert_close(p.detach(), b.clamp(-0.05, 0.05))


def test_spectral_norm_critic_is_one_lipschitz() -> None:
    torch.manual_seed(20)
    D = gn.make_mlp(2, 1, 32, 2, spectral=True).double()
    x = points(20, n=512)
    for _ in range(200):  # power iterations run in train-mode forwards
        D(x)
    D.eval()
    for m in D:
        if isinstance(m, nn.Linear):
            assert abs(float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) - 1) < 1e-4
    with torch.no_grad():
        ratios = gn.lipschitz_audit(lambda z: D(z).squeeze(1), x, radius=1e-3, n_dirs=4)
    assert ratios.max() <= 1 + 1e-4


def test_saved_tensor_bytes_counts_what_autograd_saves() -> None:
    x = torch.randn(10, 3, dtype=F64, requires_grad=True)
    w = torch.randn(10, 3, dtype=F64, requires_grad=True)
    assert gn.saved_tensor_bytes(lambda: (x * w).sum()) == x.nbytes + w.nbytes  # mul saves both factors
    assert gn.saved_tensor_bytes(lambda: (x * x).sum()) == x.nbytes  # one storage, counted once
    assert gn.saved_tensor_bytes(lambda: (x.detach() * 2).sum()) == 0
    sizes = gn.step_graph_bytes(gn.GANConfig(critic="gn", batch=8, g_width=8, d_width=8))
    assert set(sizes) == {"d_bytes", "g_bytes"} and min(sizes.values()) > 0


# ----------------------------------------------------------------------------- data and metrics
def test_mixtures_and_mode_stats() -> None:
    c = gn.mixture_centers("ring")
    torch.testing.assert_close(c.norm(dim=1), torch.full((8,), 2.0))
    assert gn.mixture_centers("grid").shape == (25, 2)
    s = gn.sample_mixture(4000, "ring", generator=torch.Generator().manual_seed(0))
    hq, modes = gn.mode_stats(s, c, tol=0.1, min_count=20)
    assert modes == 8 and hq > 0.99
    # brute-force twin
    s2 = 2.5 * torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    near = [min(range(8), key=lambda k: float((p - c[k]).norm())) for p in s2]
    good = [float((p - c[k]).norm()) < 0.3 for p, k in zip(s2, near)]
    counts = np.bincount([k for k, ok in zip(near, good) if ok], minlength=8)
    assert gn.mode_stats(s2, c, tol=0.3, min_count=3) == pytest.approx((np.mean(good), int((counts >= 3).sum())))


def test_sliced_w1_identities_and_scipy_parity() -> None:
    from scipy.stats import wasserstein_distance

    a = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert gn.sliced_w1(a, a) == 0.0
    c = 0.7
    got = gn.sliced_w1(a, a + torch.tensor([c, 0.0], dtype=F64), n_proj=4000)
    assert got == pytest.approx(2 * c / math.pi, rel=0.05)
    b = torch.randn(170, 2, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.3
    th = torch.randn(2, 16, generator=torch.Generator().manual_seed(5), dtype=F64)
    th = th / th.norm(dim=0, keepdim=True)
    ref = np.mean([wasserstein_distance((a @ th)[:, j].numpy(), (b @ th)[:, j].numpy()) for j in range(16)])
    assert gn.sliced_w1(a, b, n_proj=16, seed=5) == pytest.approx(ref, rel=1e-10)


def test_frechet_distance_closed_forms() -> None:
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2, m1, m2 = A @ A.T + np.eye(4), B @ B.T + np.eye(4), rng.normal(size=4), rng.normal(size=4)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert gn.frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-9)
    assert gn.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) \
        == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)
    a, b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.5, 2.0])
    mu1, mu2 = np.zeros(3), np.ones(3)
    expected = 3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert gn.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # rotation invariance: rotate both Gaussians by the same orthogonal Q
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    got = gn.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)
    f = np.random.default_rng(1).normal(size=(200, 4))
    assert abs(gn.feature_fid(f, f)) < 1e-8


def test_classifier_score_and_coverage() -> None:
    eye = np.eye(10)
    assert gn.classifier_score(np.repeat(eye, 5, axis=0)) == pytest.approx(10.0)
    assert gn.classifier_score(np.tile(np.full((1, 10), 0.1), (7, 1))) == pytest.approx(1.0)
    p = np.repeat(eye[:3], [50, 30, 1], axis=0)
    assert gn.class_coverage(p, threshold=0.9, min_frac=0.02) == 2  # class 2 has 1/81 < 2 %


def test_digits_split_and_judge_shapes() -> None:
    Xtr, ytr, Xte, yte = gn.load_digits_split()
    assert Xtr.shape[1] == 64 and len(Xtr) + len(Xte) == 1797
    assert Xtr.min() >= -1 and Xtr.max() <= 1
    assert set(ytr.tolist()) == set(range(10))
    judge = gn.train_digits_judge(Xtr[:200], ytr[:200], epochs=1)
    assert judge.features(Xte[:7]).shape == (7, 64)
    torch.testing.assert_close(judge.probs(Xte[:7]).sum(1), torch.ones(7))
    assert abs(judge.evaluate(Xte, Xte)["fid"]) < 1e-6


# ----------------------------------------------------------------------------- training loop
def test_train_gan_is_deterministic_and_fast_g_matches_double_backprop() -> None:
    kw = dict(steps=4, n_dis=1, batch=32, log_every=2, n_eval=64, landscape=8, g_width=16, d_width=16)
    a = gn.train_gan(gn.GANConfig(critic="gn", **kw))
    b = gn.train_gan(gn.GANConfig(critic="gn", **kw))
    c = gn.train_gan(gn.GANConfig(critic="gn", fast_g=True, **kw))
    assert [h["step"] for h in a["history"]] == [0, 2, 4]
    assert a["snapshots"][-1]["landscape"].shape == (8, 8)
    np.testing.assert_array_equal(a["snapshots"][-1]["samples"], b["snapshots"][-1]["samples"])
    np.testing.assert_allclose(a["snapshots"][-1]["samples"], c["snapshots"][-1]["samples"], atol=1e-4)
    cost = gn.step_costs(gn.GANConfig(critic="gn", **kw), reps=2)
    assert set(cost) == {"d_ms", "g_ms"} and min(cost.values()) > 0
    for critic in ("none", "clip", "gp", "sn", "gran", "inner"):
        r = gn.train_gan(gn.GANConfig(critic=critic, **{**kw, "steps": 2}))
        assert len(r["history"]) == 2
        D, cfg = gn.critic_from_run(r)  # the rebuilt critic reproduces the last recorded landscape
        t = torch.linspace(-cfg.extent, cfg.extent, cfg.landscape)
        xy = torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)
        got = gn.critic_scores(D, xy, cfg, create_graph=False).detach().reshape(8, 8).numpy()
        np.testing.assert_allclose(got, r["snapshots"][-1]["landscape"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- validation
def test_errors_name_the_argument() -> None:
    D = mlp(0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        gn.gn_iccv(D, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="x must have shape"):
        gn.gn_iccv(D, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="method must be one of"):
        gn.critic_grad(D, points(0), method="fast")
    with pytest.raises(ValueError, match="eps must be"):
        gn.gran(D, points(0), eps=-1.0)
    with pytest.raises(ValueError, match="one score per sample"):
        gn.gn_iccv(nn.Linear(2, 3).double(), points(0))
    with pytest.raises(ValueError, match="critic must be one of"):
        gn.GANConfig(critic="wgan")
    with pytest.raises(ValueError, match="x_real and x_fake"):
        gn.gradient_penalty(D, points(0, n=4), points(0, n=5))
    with pytest.raises(TypeError, match="D must be a callable"):
        gn.critic_grad(3, points(0))


# ----------------------------------------------------------------------------- a user's mistakes (contents)
def test_class_coverage_of_no_samples_raises_instead_of_covering_everything() -> None:
    with pytest.raises(ValueError, match="N ≥ 1"):
        gn.class_coverage(np.zeros((0, 10)))
    with pytest.raises(ValueError, match="N ≥ 1"):
        gn.classifier_score(np.zeros((0, 10)))


def test_class_coverage_rejects_logits_passed_as_probabilities() -> None:
    logits = np.random.default_rng(0).normal(size=(20, 10)) * 5
    with pytest.raises(ValueError, match="not logits"):
        gn.class_coverage(logits)
    with pytest.raises(ValueError, match="finite"):
        gn.classifier_score(np.full((3, 10), np.nan))


def test_sliced_w1_rejects_zero_projections_and_nan_samples() -> None:
    a = torch.randn(10, 2)
    with pytest.raises(ValueError, match="n_proj must be"):
        gn.sliced_w1(a, a, n_proj=0)
    bad = a.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="b must be finite"):
        gn.sliced_w1(a, bad)
    with pytest.raises(ValueError, match="finite"):
        gn.mode_stats(bad, gn.mixture_centers("ring"))


def test_negative_gp_lambda_and_fractional_mode_count_are_refused() -> None:
    with pytest.raises(ValueError, match="gp_lambda must be"):
        gn.GANConfig(critic="gp", gp_lambda=-10.0)
    with pytest.raises(ValueError, match="gp_lambda must be"):
        gn.Member("gp", gp_lambda=-1.0)
    with pytest.raises(TypeError, match="k must be an int"):
        gn.mixture_centers("ring", k=2.5)
    with pytest.raises(ValueError, match="finite"):
        gn.frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))


# ----------------------------------------------------------------------------- ensembles and memory
def test_masked_adam_equals_torch_adam_and_skipping_is_not_stepping() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(2, 3, 4))
    twins = [nn.Parameter(w.detach()[k].clone()) for k in range(2)]
    opt = gn.MaskedAdam([w], 2, betas=(0.5, 0.9))
    ref = [torch.optim.Adam([t], lr=lr, betas=(0.5, 0.9)) for t, lr in zip(twins, (1e-2, 3e-3))]
    for step in range(6):
        target = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(step))
        active = torch.tensor([True, step % 2 == 0])  # member 1 sits out every other step
        w.grad = 2 * (w.detach() - target)
        opt.step(torch.tensor([1e-2, 3e-3]), active)
        for k in range(2):
            if active[k]:
                twins[k].grad = 2 * (twins[k].detach() - target[k])
                ref[k].step()
    for k in range(2):
        torch.testing.assert_close(w.detach()[k], twins[k].detach(), rtol=1e-5, atol=1e-6)


def test_batched_mlp_members_are_independent_and_spectral_norm_is_the_top_singular_value() -> None:
    net = gn.BatchedMLP(3, 1, 8, 2, seeds=[0, 1, 0], spectral=[False, True, False])
    x = torch.randn(3, 5, 3)
    y = net(x)
    torch.testing.assert_close(y[0], y[2] * 0 + net.member(0)(x[:1])[0])
    torch.testing.assert_close(net.member(2)(x[:1])[0], net.member(0)(x[:1])[0])  # same seed, same init
    for _ in range(200):
        with torch.no_grad():
            for i in range(3):
                net._power_iteration(i)
    for i, W in enumerate(net.weights):
        torch.testing.assert_close(net.sigma(i)[1], torch.linalg.matrix_norm(W[1].detach(), ord=2), rtol=1e-4, atol=1e-6)
    # spectral-normalized member: every layer's effective weight has spectral norm 1, so the net is 1-Lipschitz
    ratios = gn.lipschitz_audit(lambda z: net.member(1).eval()(z.unsqueeze(0))[0, :, 0], torch.randn(200, 3), radius=1e-2)
    assert ratios.max() <= 1 + 1e-4


def test_ensemble_scores_match_the_single_critic_formulas() -> None:
    net = gn.BatchedMLP(2, 1, 16, 2, seeds=[3, 4]).double()
    x = points(5, n=32).unsqueeze(0).expand(4, -1, -1)
    kinds = ["gn", "gran", "gn_raw", "inner"]
    four = gn.BatchedMLP(2, 1, 16, 2, seeds=[3, 3, 3, 3]).double()
    cfg = gn.EnsembleConfig()
    got = gn.ensemble_scores(four, x, kinds, cfg, create_graph=False)
    single = lambda z: four.member(0)(z.unsqueeze(0))[0]  # noqa: E731
    want = [gn.gn_iccv(single, x[0], create_graph=False), gn.gran(single, x[0], eps=cfg.gran_eps, create_graph=False),
            gn.gn_raw(single, x[0], eps=cfg.gran_eps, create_graph=False), gn.gn_inner(single, x[0], create_graph=False)]
    for k in range(4):
        torch.testing.assert_close(got[k], want[k].detach())
    assert net.K == 2


def test_a_member_trains_the_same_alone_or_inside_an_ensemble() -> None:
    cfg = gn.EnsembleConfig(steps=4, log_every=2, batch=16, n_eval=64, landscape=6, g_width=16, d_width=16)
    me = gn.Member("gn", lr=1e-3, n_dis=2, seed=1)
    alone = gn.train_gan_ensemble([me], cfg)["members"][0]
    crowd = gn.train_gan_ensemble([gn.Member("gp", lr=2e-4, n_dis=2, seed=1), me, gn.Member("sn", n_dis=1, seed=2),
                                   gn.Member("gn", lr=1e-3, n_dis=2, seed=3)], cfg)["members"]
    np.testing.assert_allclose(crowd[1]["snapshots"][-1]["samples"], alone["snapshots"][-1]["samples"], rtol=1e-5, atol=1e-6)
    assert [h["step"] for h in alone["history"]] == [0, 2, 4]
    assert alone["snapshots"][-1]["landscape"].shape == (6, 6)
    fn = gn.ensemble_critic_fn(alone, cfg)
    t = torch.linspace(-cfg.extent, cfg.extent, 6)
    xy = torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)
    np.testing.assert_allclose(fn(xy).reshape(6, 6).numpy(), alone["snapshots"][-1]["landscape"], rtol=1e-5, atol=1e-6)


def test_peak_bytes_sees_what_is_alive_at_once() -> None:
    def two_live_then_one():
        a = torch.empty(1000, 1000)      # 4 MB
        b = torch.zeros(500, 1000)       # 2 MB, both alive: peak 6 MB
        del a
        c = torch.empty(250, 1000)       # 1 MB after a was freed
        return b, c
    assert gn.peak_bytes(two_live_then_one) == 6_000_000
    cost = gn.step_peak_bytes(gn.GANConfig(critic="gn", batch=16, g_width=8, d_width=8))
    assert set(cost) == {"d_peak", "g_peak"} and min(cost.values()) > 0
