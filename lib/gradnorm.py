"""Gradient-normalized WGAN critics (GN-GAN, ICCV 2021; GraN-GAN, WACV 2022) and their baselines.

Chapter "WGAN with gradient normalization" (kexue.fm/archives/8757). Notation used throughout:

* ``f = D(x)``: the raw critic score per sample, shape ``[B]``;
* ``w = ∇_x D(x)``: its input gradient per sample, shape ``[B, ...]`` (same shape as ``x``);
* ``g = ‖flatten(w)‖₂``: the per-sample gradient norm, shape ``[B]``.

Normalized critics (all return ``[B]``):

* GN-GAN (ICCV):  ``f̂ = f / (g + |f|)``                 bounded in ``(-1, 1)``;
* GraN (WACV):    ``f̂ = K · f g / (g² + ε)``            unbounded (≈ signed distance);
* raw GN:         ``f̂ = f / (g + ε)``;
* Su's "inner" variant: ``f̂ = ⟨w / ‖w‖, x⟩``.

Inside a linear region of a piecewise-linear critic (ReLU / LeakyReLU, no BatchNorm) ``w`` is
constant, so ``‖∇_x f̂‖ = g² / (g + |f|)²`` (GN-GAN) and ``g² / (g² + ε)`` (GraN), both ≤ 1.

Per-sample gradients. The usual shortcut ``autograd.grad(f.sum(), x)`` returns
``Σ_j ∂f_j/∂x_i`` for row ``i``; it equals the per-sample gradient ``∂f_i/∂x_i`` only when
samples do not interact. A train-mode BatchNorm couples them; ``method="exact"`` then takes
the diagonal blocks of the full Jacobian with :func:`torch.func.jacrev`, and
:func:`check_batched_shortcut` says when the shortcut is wrong.

The rest of the module: baselines (weight clipping, gradient penalty, spectral norm via torch's
``spectral_norm`` parametrization), the GAN losses, 2-D mixtures and the scikit-learn digits,
metrics (sliced W1, modes covered, a digits classifier with FID on its features and class
coverage), piecewise-linear geometry tools and a small GAN training loop.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from lib.checks import check_choice, check_positive

__all__ = [
    "critic_grad", "check_batched_shortcut", "make_critic", "critic_from_run", "critic_scores", "batch_coupling", "gn_iccv", "gran", "gn_raw",
    "gn_inner", "normalized_critic", "gn_closed_form_input_grad", "gn_iccv_fast_generator",
    "gradient_penalty", "clip_weights_", "make_mlp", "critic_loss", "generator_loss",
    "activation_pattern", "lipschitz_audit", "mixture_centers", "sample_mixture",
    "load_digits_split", "sliced_w1", "mode_stats", "frechet_distance", "feature_fid",
    "classifier_score", "class_coverage", "DigitsJudge", "train_digits_judge", "GANConfig",
    "train_gan", "eval_2d", "step_costs", "saved_tensor_bytes", "step_graph_bytes", "peak_bytes",
    "step_peak_bytes", "Member", "EnsembleConfig", "BatchedMLP", "MaskedAdam", "ensemble_scores", "train_gan_ensemble",
    "ensemble_critic_fn",
]

METHODS = ("batched", "exact", "loop")
NORMALIZERS = ("gn", "gran", "gn_raw", "inner")


# --------------------------------------------------------------------------- validation
def _check_critic(D: object, name: str = "D") -> None:
    if not callable(D):
        raise TypeError(f"{name} must be a callable critic (nn.Module or function), got {type(D).__name__}")


def _check_batch(x: object, name: str = "x", min_dim: int = 2) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, ...], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [B, ...] with B ≥ 1 and ≥ {min_dim} dims, got {tuple(x.shape)}")


def _scores(out: Tensor, B: int) -> Tensor:
    """Critic output ``[B]`` or ``[B, 1]`` → ``[B]``."""
    if out.numel() != B:
        raise ValueError(f"the critic must return one score per sample ([B] or [B, 1], B={B}), got {tuple(out.shape)}")
    return out.reshape(B)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """``[B]`` → ``[B, 1, ..., 1]`` broadcastable against ``like`` of shape ``[B, ...]``."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------- critic gradients
def _train_mode_batchnorm(D: object) -> bool:
    if not isinstance(D, nn.Module):
        return False
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in D.modules())


def _exact_jacobian(D: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """Full Jacobian ``J[j, i, ...] = ∂f_j/∂x_i`` with :func:`torch.func.jacrev`, and ``f``.

    Shapes: ``x [B, ...]`` → ``(J [B, B, ...], f [B])``. Memory O(B² · numel(x[0])).
    Module buffers (BatchNorm running statistics) are cloned inside the transformed function, so
    the caller's module is not mutated and functorch does not see an in-place write to a
    captured tensor. The result stays differentiable w.r.t. the parameters and w.r.t. ``x``.
    """
    B = x.shape[0]
    if isinstance(D, nn.Module):
        params = dict(D.named_parameters())

        def call(inp: Tensor) -> Tensor:
            buffers = {k: v.clone() for k, v in D.named_buffers()}
            return functional_call(D, (params, buffers), (inp,))
    else:
        call = D

    def fn(inp: Tensor) -> tuple[Tensor, Tensor]:
        out = _scores(call(inp), B)
        return out, out

    J, f = jacrev(fn, has_aux=True)(x)
    return J, f


def critic_grad(D: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = True,
                method: str = "batched") -> tuple[Tensor, Tensor, Tensor]:
    """Score, per-sample input gradient and its norm: ``(f [B], w [B, ...], g [B])``.

    ``g_i = ‖flatten(∂f_i/∂x_i)‖₂``. ``x`` is never modified: when it does not already require
    grad a detached alias with ``requires_grad=True`` is used (the official code calls
    ``x.requires_grad_()`` on the caller's tensor). When ``x`` is part of a graph (generator
    output) gradients flow back through it.

    method:
      * ``"batched"`` – ``autograd.grad(f.sum(), x)``: one backward pass; exact only when the
        critic treats samples independently (warns if a train-mode BatchNorm is present);
      * ``"exact"``  – diagonal blocks of the Jacobian from :func:`torch.func.jacrev`
        (O(B²) memory; BatchNorm buffers are not updated by this path);
      * ``"loop"``   – one backward per sample (the slow, obviously-correct twin).

    ``create_graph=True`` keeps the graph so that a loss on ``g`` can be back-propagated to the
    critic's parameters (double backprop, required by GN in both the D and the G step).
    """
    _check_critic(D)
    _check_batch(x)
    check_choice("method", method, METHODS)
    B = x.shape[0]
    xi = x if x.requires_grad else x.detach().requires_grad_(True)
    if method == "batched":
        if _train_mode_batchnorm(D):
            warnings.warn("critic_grad(method='batched'): the critic has a BatchNorm in train mode, which "
                          "couples samples; the batched gradient mixes them. Use method='exact'.",
                          stacklevel=2)
        f = _scores(D(xi), B)
        (w,) = torch.autograd.grad(f.sum(), xi, create_graph=create_graph)
    elif method == "exact":
        with torch.enable_grad():
            J, f = _exact_jacobian(D, xi)
        idx = torch.arange(B, device=x.device)
        w = J[idx, idx]
        if not create_graph:
            w = w.detach()
    else:
        f = _scores(D(xi), B)
        rows = [torch.autograd.grad(f[i], xi, retain_graph=True, create_graph=create_graph)[0][i]
                for i in range(B)]
        w = torch.stack(rows)
    g = w.flatten(1).norm(dim=1)
    return f, w, g


def batch_coupling(D: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """Largest off-diagonal Jacobian entry ``max_{j≠i} |∂f_j/∂x_i|`` (0 iff samples are independent).

    Uses the exact Jacobian (no side effect on the critic). ``x [B, ...]`` → float.
    """
    _check_critic(D)
    _check_batch(x)
    B = x.shape[0]
    with torch.enable_grad():
        J, _ = _exact_jacobian(D, x.detach())
    mask = ~torch.eye(B, dtype=torch.bool, device=x.device)
    off = J.detach().flatten(2).abs().amax(dim=2)[mask]
    return float(off.max()) if off.numel() else 0.0


def check_batched_shortcut(D: Callable[[Tensor], Tensor], x: Tensor, *, atol: float = 1e-6) -> float:
    """Raise ``ValueError`` when ``autograd.grad(f.sum(), x)`` is not the per-sample gradient.

    Compares the batched shortcut with the exact ``torch.func`` path on ``x [B, ...]`` and
    returns the max abs difference when it is within ``atol``.
    """
    check_positive("atol", atol)
    if isinstance(D, nn.Module):
        _, w_b, _ = _batched_quiet(D, x)
    else:
        _, w_b, _ = critic_grad(D, x.detach(), create_graph=False, method="batched")
    _, w_e, _ = critic_grad(D, x.detach(), create_graph=False, method="exact")
    err = float((w_b.detach() - w_e.detach()).abs().max())
    if err > atol:
        raise ValueError(
            f"the batched gradient shortcut is wrong for this critic: max |Σ_j ∂f_j/∂x_i − ∂f_i/∂x_i| = "
            f"{err:.3g} > atol={atol:g}; the critic couples samples (e.g. BatchNorm in train mode). "
            f"Use critic_grad(..., method='exact') or put the critic in eval mode.")
    return err


def _batched_quiet(D: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batched shortcut on a train-mode BatchNorm critic without touching its running stats."""
    B = x.shape[0]
    params = dict(D.named_parameters())
    buffers = {k: v.clone() for k, v in D.named_buffers()}
    xi = x.detach().requires_grad_(True)
    f = _scores(functional_call(D, (params, buffers), (xi,)), B)
    (w,) = torch.autograd.grad(f.sum(), xi)
    return f, w, w.flatten(1).norm(dim=1)


# --------------------------------------------------------------------------- normalized critics
def gn_iccv(D: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = True,
            method: str = "batched") -> Tensor:
    """GN-GAN critic ``f̂ = f / (g + |f|)``, shape ``[B]``, values in ``(-1, 1)``.

    With ``s = f/g`` (signed distance to the region's hyperplane), ``f̂ = s / (1 + |s|)``:
    softsign of the signed distance. ``0/0`` (dead critic) returns 0.
    """
    f, _, g = critic_grad(D, x, create_graph=create_graph, method=method)
    den = (g + f.abs()).clamp_min(torch.finfo(f.dtype).tiny)
    return f / den


def gran(D: Callable[[Tensor], Tensor], x: Tensor, *, eps: float = 1e-4, K: float = 1.0,
         create_graph: bool = True, method: str = "batched") -> Tensor:
    """GraN critic ``f̂ = K · f g / (g² + ε)``, shape ``[B]`` (unbounded).

    ``‖∇f̂‖ = K g² / (g² + ε)`` inside a linear region. Placing ``K`` as an output multiplier is
    this book's assumption (the paper's "piecewise K-Lipschitz" constant).
    """
    check_positive("eps", eps, allow_zero=True)
    check_positive("K", K)
    f, _, g = critic_grad(D, x, create_graph=create_graph, method=method)
    den = (g * g + eps).clamp_min(torch.finfo(f.dtype).tiny)
    return K * f * g / den


def gn_raw(D: Callable[[Tensor], Tensor], x: Tensor, *, eps: float = 0.0, create_graph: bool = True,
           method: str = "batched") -> Tensor:
    """Raw GN ``f̂ = f / (g + ε)``, shape ``[B]``; with ε = 0 the signed distance to the region's hyperplane."""
    check_positive("eps", eps, allow_zero=True)
    f, _, g = critic_grad(D, x, create_graph=create_graph, method=method)
    return f / (g + eps).clamp_min(torch.finfo(f.dtype).tiny)


def gn_inner(D: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = True,
             method: str = "batched") -> Tensor:
    """Su's variant ``f̂ = ⟨w/‖w‖, x⟩``, shape ``[B]``.

    Same gradient as raw GN a.e. (a unit vector), but it drops the piecewise-constant term
    ``b_region / ‖w_region‖``; equal to raw GN for bias-free ReLU nets (Euler's identity).
    """
    _check_batch(x)
    xi = x if x.requires_grad else x.detach().requires_grad_(True)
    _, w, g = critic_grad(D, xi, create_graph=create_graph, method=method)
    unit = w / _bcast(g.clamp_min(torch.finfo(w.dtype).tiny), w)
    return (unit * xi).flatten(1).sum(1)


def normalized_critic(D: Callable[[Tensor], Tensor], x: Tensor, kind: str, *, eps: float = 1e-4,
                      K: float = 1.0, create_graph: bool = True, method: str = "batched") -> Tensor:
    """Dispatch ``kind`` ∈ {gn, gran, gn_raw, inner} → ``[B]`` (``eps``/``K`` used by gran, ``eps`` by gn_raw)."""
    check_choice("kind", kind, NORMALIZERS)
    kw = dict(create_graph=create_graph, method=method)
    if kind == "gn":
        return gn_iccv(D, x, **kw)
    if kind == "gran":
        return gran(D, x, eps=eps, K=K, **kw)
    if kind == "gn_raw":
        return gn_raw(D, x, eps=eps, **kw)
    return gn_inner(D, x, **kw)


def gn_closed_form_input_grad(f: Tensor, w: Tensor, g: Tensor) -> Tensor:
    """``∇_x f̂ = g w / (g + |f|)²`` for GN-GAN inside a linear region; ``f [B], w [B, ...], g [B]`` → ``[B, ...]``."""
    _check_batch(w, "w", min_dim=2)
    for name, t in (("f", f), ("g", g)):
        if not isinstance(t, Tensor) or t.shape != (w.shape[0],):
            raise ValueError(f"{name} must have shape [B]=({w.shape[0]},), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    return _bcast(g / (g + f.abs()) ** 2, w) * w


def gn_iccv_fast_generator(D: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """GN-GAN score for the generator step without double backprop, ``x [B, ...]`` → ``[B]``.

    Value = ``gn_iccv(D, x)``; gradient w.r.t. ``x`` = the closed form ``g w / (g + |f|)²``
    (exact a.e. for piecewise-linear critics, the idea of the authors' "Faster GN-GAN"); no
    gradient reaches the critic's parameters (as in a generator step with a frozen critic).
    """
    _check_batch(x)
    f, w, g = critic_grad(D, x.detach(), create_graph=False)
    f, w, g = f.detach(), w.detach(), g.detach()
    value = f / (g + f.abs()).clamp_min(torch.finfo(f.dtype).tiny)
    slope = gn_closed_form_input_grad(f, w, g)
    return value + ((x - x.detach()) * slope).flatten(1).sum(1)


# --------------------------------------------------------------------------- baselines
def gradient_penalty(D: Callable[[Tensor], Tensor], x_real: Tensor, x_fake: Tensor, *,
                     generator: torch.Generator | None = None, center: float = 1.0) -> Tensor:
    """WGAN-GP penalty ``E[(‖∇D(x̃)‖ − center)²]``, ``x̃ = αx_r + (1−α)x_f``, ``α ~ U[0,1]`` per sample.

    ``x_real, x_fake [B, ...]`` → scalar (multiply by λ outside).
    """
    _check_critic(D)
    _check_batch(x_real, "x_real")
    _check_batch(x_fake, "x_fake")
    if x_real.shape != x_fake.shape:
        raise ValueError(f"x_real and x_fake must have the same shape, got {tuple(x_real.shape)} and {tuple(x_fake.shape)}")
    alpha = torch.rand(x_real.shape[0], generator=generator, dtype=x_real.dtype).to(x_real.device)
    alpha = _bcast(alpha, x_real)
    x_hat = (alpha * x_real.detach() + (1 - alpha) * x_fake.detach()).requires_grad_(True)
    _, _, g = critic_grad(D, x_hat, create_graph=True)
    return ((g - center) ** 2).mean()


@torch.no_grad()
def clip_weights_(D: nn.Module, c: float = 0.01) -> None:
    """WGAN weight clipping: every parameter clamped in place to ``[-c, c]``."""
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    check_positive("c", c)
    for p in D.parameters():
        p.clamp_(-c, c)


_ACTS: dict[str, Callable[[float], nn.Module]] = {
    "relu": lambda s: nn.ReLU(),
    "leaky_relu": lambda s: nn.LeakyReLU(s),
    "softplus": lambda s: nn.Softplus(),
    "tanh": lambda s: nn.Tanh(),
}


def make_mlp(din: int, dout: int, width: int, depth: int, *, act: str = "leaky_relu", slope: float = 0.2,
             bias: bool = True, batchnorm: bool = False, spectral: bool = False,
             out_act: str | None = None) -> nn.Sequential:
    """MLP ``din → width (×depth) → dout``: ``[B, din] → [B, dout]``.

    ``spectral=True`` wraps every Linear in ``torch.nn.utils.parametrizations.spectral_norm``
    (one power iteration per train-mode forward). ``batchnorm=True`` adds BatchNorm1d after each
    hidden Linear (couples samples in train mode). ``out_act='tanh'`` squashes the output.
    """
    for name, v in (("din", din), ("dout", dout), ("width", width), ("depth", depth)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "depth" else 1):
            raise ValueError(f"{name} must be a positive int (depth ≥ 0), got {v!r}")
    check_choice("act", act, tuple(_ACTS))
    if out_act is not None:
        check_choice("out_act", out_act, ("tanh",))
    wrap = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
    layers: list[nn.Module] = []
    d = din
    for _ in range(depth):
        layers.append(wrap(nn.Linear(d, width, bias=bias)))
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(_ACTS[act](slope))
        d = width
    layers.append(wrap(nn.Linear(d, dout, bias=bias)))
    if out_act == "tanh":
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- losses
LOSSES = ("wass", "hinge", "bce")


def critic_loss(d_real: Tensor, d_fake: Tensor, loss: str = "wass") -> Tensor:
    """Critic loss on scores ``[B]``: wass ``E f̂_f − E f̂_r``; hinge ``E relu(1−f̂_r) + E relu(1+f̂_f)``;
    bce ``E softplus(−f̂_r) + E softplus(f̂_f)``. For GN-GAN (|f̂| < 1) hinge = wass + 2 exactly."""
    check_choice("loss", loss, LOSSES)
    if loss == "wass":
        return d_fake.mean() - d_real.mean()
    if loss == "hinge":
        return torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
    return nn.functional.softplus(-d_real).mean() + nn.functional.softplus(d_fake).mean()


def generator_loss(d_fake: Tensor, loss: str = "wass") -> Tensor:
    """Generator loss on ``[B]`` scores: ``−E f̂`` (wass, hinge) or non-saturating ``E softplus(−f̂)`` (bce)."""
    check_choice("loss", loss, LOSSES)
    if loss == "bce":
        return nn.functional.softplus(-d_fake).mean()
    return -d_fake.mean()


# --------------------------------------------------------------------------- geometry
@torch.no_grad()
def activation_pattern(D: nn.Module, x: Tensor, *, return_bits: bool = False) -> Tensor:
    """Linear-region id per point: ``x [B, d] → LongTensor [B]`` (ids comparable within one call).

    The region of a ReLU/LeakyReLU net is its on/off pattern: the sign of every unit's
    pre-activation. ``return_bits=True`` returns the bool pattern ``[B, n_units]`` instead.
    """
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    _check_batch(x)
    bits: list[Tensor] = []

    def hook(_m: nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> None:
        bits.append((inp[0] > 0).flatten(1))

    handles = [m.register_forward_hook(hook) for m in D.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    if not handles:
        raise ValueError("D has no ReLU/LeakyReLU module: it is not piecewise linear in the sense used here")
    try:
        D(x)
    finally:
        for h in handles:
            h.remove()
    pattern = torch.cat(bits, dim=1)
    if return_bits:
        return pattern
    return torch.unique(pattern, dim=0, return_inverse=True)[1]


def lipschitz_audit(fn: Callable[[Tensor], Tensor], x: Tensor, *, radius: float = 1e-4, n_dirs: int = 1,
                    seed: int = 0) -> np.ndarray:
    """Apparent Lipschitz ratios ``|fn(x+δ) − fn(x)| / ‖δ‖`` with ``‖δ‖ = radius`` in random directions.

    ``fn: [N, ...] → [N]``; ``x [B, ...]`` → ``ndarray [B·n_dirs]``. A globally 1-Lipschitz ``fn``
    gives ratios ≤ 1; a jump of size J across a region boundary gives ≈ J / radius.
    """
    _check_batch(x)
    check_positive("radius", radius)
    if not isinstance(n_dirs, int) or n_dirs < 1:
        raise ValueError(f"n_dirs must be a positive int, got {n_dirs!r}")
    gen = torch.Generator().manual_seed(seed)
    xr = x.detach().repeat(n_dirs, *([1] * (x.dim() - 1)))
    d = torch.randn(xr.shape, generator=gen, dtype=x.dtype).to(x.device)
    d = d / _bcast(d.flatten(1).norm(dim=1), d) * radius
    a, b = fn(xr), fn(xr + d)
    return ((b - a).abs().reshape(-1) / radius).detach().cpu().numpy()


# --------------------------------------------------------------------------- data
def mixture_centers(kind: str = "ring", *, k: int | None = None, radius: float = 2.0,
                    spacing: float = 1.0) -> Tensor:
    """Mode centres ``[K, 2]``: ``ring`` (k=8 on a circle of ``radius``) or ``grid`` (k×k, k=5, ``spacing``)."""
    check_choice("kind", kind, ("ring", "grid"))
    if k is not None:
        check_positive("k", k, integer=True)
    check_positive("radius", radius)
    check_positive("spacing", spacing)
    if kind == "ring":
        k = 8 if k is None else k
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        return torch.stack([radius * torch.cos(ang), radius * torch.sin(ang)], 1).float()
    k = 5 if k is None else k
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    r = (torch.arange(k, dtype=torch.float32) - (k - 1) / 2) * spacing
    return torch.cartesian_prod(r, r)


def sample_mixture(n: int, kind: str = "ring", *, std: float = 0.02, generator: torch.Generator | None = None,
                   **kw: float) -> Tensor:
    """``n`` samples ``[n, 2]`` from an equal-weight Gaussian mixture on :func:`mixture_centers`."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    check_positive("std", std, allow_zero=True)
    c = mixture_centers(kind, **kw)
    idx = torch.randint(len(c), (n,), generator=generator)
    return c[idx] + std * torch.randn(n, 2, generator=generator)


def load_digits_split(test_size: float = 0.3, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's bundled 8×8 digits scaled to [-1, 1]: ``(X_train [N,64], y_train [N], X_test, y_test)``.

    Stratified split with ``sklearn.model_selection.train_test_split(random_state=seed)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    to = lambda a: torch.tensor(a / 8.0 - 1.0, dtype=torch.float32)  # noqa: E731
    return to(Xtr), torch.tensor(ytr), to(Xte), torch.tensor(yte)


# --------------------------------------------------------------------------- metrics
def sliced_w1(a: Tensor, b: Tensor, *, n_proj: int = 64, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance ``E_θ W1(θᵀa, θᵀb)`` over ``n_proj`` random unit directions.

    ``a [N, d]``, ``b [M, d]``. Equal sizes: mean |sorted difference|; otherwise the exact 1-D W1
    between the two empirical quantile functions.
    """
    _check_batch(a, "a")
    _check_batch(b, "b")
    check_positive("n_proj", n_proj, integer=True)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"a and b must share the feature shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    for name, t in (("a", a), ("b", b)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(t)).sum())} NaN/inf entries")
    a, b = a.detach().double().flatten(1), b.detach().double().flatten(1)
    gen = torch.Generator().manual_seed(seed)
    th = torch.randn(a.shape[1], n_proj, generator=gen, dtype=torch.float64)
    th = th / th.norm(dim=0, keepdim=True)
    pa, pb = (a @ th).sort(0).values, (b @ th).sort(0).values
    if len(pa) == len(pb):
        return float((pa - pb).abs().mean())
    return float(np.mean([_w1_1d(pa[:, j].numpy(), pb[:, j].numpy()) for j in range(n_proj)]))


def _w1_1d(u: np.ndarray, v: np.ndarray) -> float:
    """W1 between sorted 1-D samples via their CDFs (same formula as scipy.stats.wasserstein_distance)."""
    allv = np.sort(np.concatenate([u, v]))
    deltas = np.diff(allv)
    cu = np.searchsorted(u, allv[:-1], side="right") / len(u)
    cv = np.searchsorted(v, allv[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cu - cv) * deltas))


def mode_stats(samples: Tensor, centers: Tensor, *, tol: float = 0.1, min_count: int = 20) -> tuple[float, int]:
    """``(hq, modes)``: fraction of ``samples [N, 2]`` within ``tol`` of their nearest centre, and the
    number of ``centers [K, 2]`` that receive at least ``min_count`` such samples."""
    _check_batch(samples, "samples")
    _check_batch(centers, "centers")
    check_positive("tol", tol)
    if not (torch.isfinite(samples).all() and torch.isfinite(centers).all()):
        raise ValueError("samples and centers must be finite (NaN samples mean a diverged generator)")
    d = torch.cdist(samples.detach().double(), centers.double())
    dist, idx = d.min(1)
    good = dist < tol
    counts = torch.bincount(idx[good], minlength=len(centers))
    return float(good.double().mean()), int((counts >= min_count).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: ``‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}``.

    ``tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(Σ₁Σ₂)``: the eigenvalues of a product of PSD matrices are real and
    ≥ 0 (it is similar to Σ₁^{1/2} Σ₂ Σ₁^{1/2}), which avoids ``sqrtm`` on singular covariances.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(s1).astype(np.float64), np.atleast_2d(s2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes must be mu [d], sigma [d, d] for both, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, s1, mu2, s2)):
        raise ValueError("means and covariances must be finite (NaN features mean diverged samples)")
    lam = np.linalg.eigvals(s1 @ s2).real
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def feature_fid(fa: np.ndarray | Tensor, fb: np.ndarray | Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, d]`` and ``[M, d]``."""
    fa = np.asarray(fa.detach().cpu() if isinstance(fa, Tensor) else fa, dtype=np.float64)
    fb = np.asarray(fb.detach().cpu() if isinstance(fb, Tensor) else fb, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1] or min(len(fa), len(fb)) < 2:
        raise ValueError(f"features must be [N, d] and [M, d] with N, M ≥ 2, got {fa.shape} and {fb.shape}")
    return frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))


def _probabilities(probs: np.ndarray | Tensor, name: str = "probs") -> np.ndarray:
    """``probs [N, C]`` as float64, checked: N ≥ 1, finite, rows of probabilities (not logits)."""
    p = np.asarray(probs.detach().cpu() if isinstance(probs, Tensor) else probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} must be [N, C] with N ≥ 1 samples, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(p)).sum())} NaN/inf entries "
                         "(a diverged generator? check the samples)")
    if (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-6):
        raise ValueError(f"{name} must be rows of probabilities (≥ 0, summing to 1); got min {p.min():.3g} and "
                         f"row sums in [{p.sum(1).min():.3g}, {p.sum(1).max():.3g}]: pass softmax(logits), not logits")
    return p


def classifier_score(probs: np.ndarray | Tensor) -> float:
    """Inception-score analogue ``exp E_x KL(p(y|x) ‖ p(y))`` for ``probs [N, C]`` (1 … C)."""
    p = _probabilities(probs)
    py = p.mean(0, keepdims=True)
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(py, 1e-12, None)))).sum(1)
    return float(np.exp(kl.mean()))


def class_coverage(probs: np.ndarray | Tensor, *, threshold: float = 0.9, min_frac: float = 0.02) -> int:
    """Number of classes that receive at least ``min_frac`` of the samples among those predicted
    with confidence ≥ ``threshold``; ``probs [N, C]`` (rows of probabilities, N ≥ 1) → int in 0 … C."""
    p = _probabilities(probs)
    check_positive("threshold", threshold)
    check_positive("min_frac", min_frac)
    conf, pred = p.max(1), p.argmax(1)
    counts = np.bincount(pred[conf >= threshold], minlength=p.shape[1])
    return int((counts >= min_frac * len(p)).sum())


class DigitsJudge(nn.Module):
    """A digits classifier ``[N, 64] → logits [N, 10]`` whose penultimate layer gives FID features."""

    def __init__(self, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = 64
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``[N, hidden[-1]]``."""
        _check_batch(x)
        return self.body(x.reshape(len(x), 64).float())

    @torch.no_grad()
    def probs(self, x: Tensor) -> Tensor:
        """Class probabilities ``[N, 10]``."""
        _check_batch(x)
        return torch.softmax(self(x.reshape(len(x), 64).float()), 1)

    @torch.no_grad()
    def evaluate(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        """FID on the judge's features against ``reference`` images, class coverage and classifier score."""
        p = self.probs(samples).numpy()
        return {"fid": feature_fid(self.features(samples), self.features(reference)),
                "coverage": class_coverage(p), "score": classifier_score(p),
                "confident": float((p.max(1) >= 0.9).mean())}


def train_digits_judge(X: Tensor, y: Tensor, *, hidden: Sequence[int] = (128, 64), epochs: int = 40,
                       batch: int = 64, lr: float = 1e-3, seed: int = 0) -> DigitsJudge:
    """Train :class:`DigitsJudge` on ``X [N, 64]`` (in [-1, 1]), ``y [N]`` with Adam + cross-entropy."""
    _check_batch(X, "X")
    if not isinstance(y, Tensor) or y.shape != (len(X),):
        raise ValueError(f"y must be a [N]={len(X)} label tensor, got {getattr(y, 'shape', type(y))}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitsJudge(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch):
            j = perm[i:i + batch]
            loss = nn.functional.cross_entropy(model(X[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


# --------------------------------------------------------------------------- training
CRITICS = ("none", "clip", "gp", "sn", "gn", "gran", "gn_raw", "inner")


@dataclass(frozen=True)
class GANConfig:
    """One toy GAN run. ``steps`` counts generator updates; each has ``n_dis`` critic updates."""

    data: str = "ring"            # ring | grid | digits
    critic: str = "gn"            # none | clip | gp | sn | gn | gran | gn_raw | inner
    loss: str = "wass"            # wass | hinge | bce
    steps: int = 500
    n_dis: int = 2
    batch: int = 128
    z_dim: int = 8
    g_width: int = 64
    g_depth: int = 2
    d_width: int = 64
    d_depth: int = 2
    lr_d: float = 1e-3
    lr_g: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    clip: float = 0.01
    gp_lambda: float = 0.1
    gran_eps: float = 1e-4
    gran_K: float = 1.0
    fast_g: bool = False
    seed: int = 0
    log_every: int = 50
    n_eval: int = 1000
    landscape: int = 40           # grid side for 2-D critic snapshots (0: none)
    extent: float = 3.0

    def __post_init__(self) -> None:
        check_choice("data", self.data, ("ring", "grid", "digits"))
        check_choice("critic", self.critic, CRITICS)
        check_choice("loss", self.loss, LOSSES)
        for name in ("steps", "n_dis", "batch", "log_every", "n_eval"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("gp_lambda", "gran_eps"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("lr_d", "lr_g", "clip", "gran_K"):
            check_positive(name, getattr(self, name))


def make_critic(cfg: GANConfig, dim: int) -> nn.Sequential:
    """The run's critic ``[B, dim] → [B, 1]``: LeakyReLU(0.2) MLP, spectral-normalized for ``critic='sn'``."""
    return make_mlp(dim, 1, cfg.d_width, cfg.d_depth, act="leaky_relu", slope=0.2, spectral=cfg.critic == "sn")


def critic_from_run(result: dict) -> tuple[nn.Sequential, GANConfig]:
    """Rebuild the final critic of a :func:`train_gan` result (eval mode) and its config."""
    conf = dict(result["config"])
    conf["betas"] = tuple(conf["betas"])
    cfg = GANConfig(**conf)
    state = result["critic_state"]
    last = [k for k in state if k.endswith("weight") or k.endswith("original")][0]
    D = make_critic(cfg, state[last].shape[1])
    D.load_state_dict(state)
    return D.eval(), cfg


def critic_scores(D: nn.Module, x: Tensor, cfg: GANConfig, *, create_graph: bool = True) -> Tensor:
    """Scores ``[B]`` of the critic as trained in run ``cfg`` (normalized for gn / gran / gn_raw / inner)."""
    if cfg.critic in ("none", "clip", "gp", "sn"):
        return D(x).reshape(-1)
    return normalized_critic(D, x, cfg.critic, eps=cfg.gran_eps, K=cfg.gran_K, create_graph=create_graph)


def _critic_scores(D: nn.Module, x: Tensor, cfg: GANConfig, *, generator_step: bool = False) -> Tensor:
    """The (possibly normalized) critic that the run trains, ``[B, ...] → [B]``."""
    if cfg.critic in ("none", "clip", "gp", "sn"):
        return D(x).reshape(-1)
    if cfg.critic == "gn" and generator_step and cfg.fast_g:
        return gn_iccv_fast_generator(D, x)
    return normalized_critic(D, x, cfg.critic, eps=cfg.gran_eps, K=cfg.gran_K)


def _landscape(D: nn.Module, cfg: GANConfig) -> np.ndarray:
    n = cfg.landscape
    t = torch.linspace(-cfg.extent, cfg.extent, n)
    xy = torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)
    was_training = D.training
    D.eval()  # no spectral-norm power iteration while looking
    try:
        with torch.enable_grad():
            v = _critic_scores(D, xy, cfg).detach()
    finally:
        D.train(was_training)
    return v.reshape(n, n).numpy()


def eval_2d(samples: Tensor, kind: str, *, seed: int = 12345, tol: float = 0.1) -> dict[str, float]:
    """Sliced W1 to a fixed real sample of the same size, plus :func:`mode_stats` (min_count = 25% of a fair share)."""
    ref = sample_mixture(len(samples), kind, generator=torch.Generator().manual_seed(seed))
    centers = mixture_centers(kind)
    hq, modes = mode_stats(samples, centers, tol=tol, min_count=max(1, int(0.25 * len(samples) / len(centers))))
    sw = sliced_w1(samples, ref) if torch.isfinite(samples).all() else float("inf")
    return {"sw1": sw, "hq": hq, "modes": modes}


def _d_step(D: nn.Module, opt_d: torch.optim.Optimizer, xr: Tensor, xf: Tensor, cfg: GANConfig,
            gen: torch.Generator) -> Tensor:
    """One critic update on real ``xr`` and (detached) fake ``xf`` ``[B, dim]``; returns the loss."""
    scores = _critic_scores(D, torch.cat([xr, xf]), cfg)
    loss_d = critic_loss(scores[:len(xr)], scores[len(xr):], cfg.loss)
    if cfg.critic == "gp":
        loss_d = loss_d + cfg.gp_lambda * gradient_penalty(D, xr, xf, generator=gen)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    if cfg.critic == "clip":
        clip_weights_(D, cfg.clip)
    return loss_d


def _g_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, z: Tensor, cfg: GANConfig) -> Tensor:
    """One generator update with the critic frozen; ``z [B, z_dim]``; returns the loss."""
    D.requires_grad_(False)
    try:
        loss_g = generator_loss(_critic_scores(D, G(z), cfg, generator_step=True), cfg.loss)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    finally:
        D.requires_grad_(True)
    return loss_g


def _step_probe(cfg: GANConfig, dim: int):
    """A fresh run ``cfg`` with its optimizers and one random batch (real ``xr [batch, dim]``, noise
    ``z [batch, z_dim]``): what :func:`step_costs` and :func:`step_peak_bytes` time and measure."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    G = make_mlp(cfg.z_dim, dim, cfg.g_width, cfg.g_depth, act="relu")
    D = make_critic(cfg, dim)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    xr = torch.randn(cfg.batch, dim, generator=gen)
    z = torch.randn(cfg.batch, cfg.z_dim, generator=gen)
    return G, D, opt_g, opt_d, xr, z, gen


def step_costs(cfg: GANConfig, *, reps: int = 20, dim: int = 2) -> dict[str, float]:
    """Median CPU milliseconds of one critic step and one generator step for run ``cfg`` (random data).

    Same code path as :func:`train_gan`; the first 3 repetitions are warm-up.
    """
    if not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be a positive int, got {reps!r}")
    G, D, opt_g, opt_d, xr, z, gen = _step_probe(cfg, dim)
    d_ms, g_ms = [], []
    for _ in range(reps + 3):
        with torch.no_grad():
            xf = G(z)
        t = time.process_time()
        _d_step(D, opt_d, xr, xf, cfg, gen)
        d_ms.append(1e3 * (time.process_time() - t))
        t = time.process_time()
        _g_step(G, D, opt_g, z, cfg)
        g_ms.append(1e3 * (time.process_time() - t))
    return {"d_ms": float(np.median(d_ms[3:])), "g_ms": float(np.median(g_ms[3:]))}


def train_gan(cfg: GANConfig, *, evaluate: Callable[[Tensor], dict] | None = None,
              real: Tensor | None = None, keep_samples: int | None = None) -> dict:
    """Train one GAN and record metrics and snapshots every ``cfg.log_every`` generator steps.

    Data: ``ring``/``grid`` draw fresh mixture samples; ``digits`` draws rows of ``real [N, 64]``
    (required). ``evaluate(samples [n_eval, dim]) -> dict`` defaults to :func:`eval_2d` for 2-D.
    Returns ``{"config", "history": [ {step, d_loss, g_loss, seconds, **metrics} ], "snapshots":
    [ {step, samples, landscape} ], "seconds", "diverged"}``.
    """
    if not isinstance(cfg, GANConfig):
        raise TypeError(f"cfg must be a GANConfig, got {type(cfg).__name__}")
    two_d = cfg.data in ("ring", "grid")
    if not two_d and (real is None or real.dim() != 2):
        raise ValueError("train_gan(data='digits') needs real=[N, 64] training images")
    if evaluate is None:
        if not two_d:
            raise ValueError("train_gan(data='digits') needs an evaluate callable")
        evaluate = lambda s: eval_2d(s, cfg.data)  # noqa: E731
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dim = 2 if two_d else real.shape[1]
    G = make_mlp(cfg.z_dim, dim, cfg.g_width, cfg.g_depth, act="relu", out_act=None if two_d else "tanh")
    D = make_critic(cfg, dim)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    z_fix = torch.randn(cfg.n_eval, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    keep = cfg.n_eval if keep_samples is None else keep_samples

    def draw_real(n: int) -> Tensor:
        if two_d:
            return sample_mixture(n, cfg.data, generator=gen)
        return real[torch.randint(len(real), (n,), generator=gen)]

    history: list[dict] = []
    snapshots: list[dict] = []
    d_acc, g_acc, n_acc = 0.0, 0.0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    diverged = False

    def record(step: int) -> None:
        with torch.no_grad():
            s = G(z_fix)
        m = evaluate(s) if torch.isfinite(s).all() else {}
        history.append({"step": step, "d_loss": d_acc / max(n_acc, 1), "g_loss": g_acc / max(n_acc, 1),
                        "seconds": time.perf_counter() - t0, **m})
        snap = {"step": step, "samples": s[:keep].numpy().astype(np.float32)}
        if two_d and cfg.landscape:
            snap["landscape"] = _landscape(D, cfg).astype(np.float32)
        snapshots.append(snap)

    record(0)
    for step in range(1, cfg.steps + 1):
        for _ in range(cfg.n_dis):
            xr = draw_real(cfg.batch)
            with torch.no_grad():
                xf = G(torch.randn(cfg.batch, cfg.z_dim, generator=gen))
            loss_d = _d_step(D, opt_d, xr, xf, cfg, gen)
        loss_g = _g_step(G, D, opt_g, torch.randn(cfg.batch, cfg.z_dim, generator=gen), cfg)
        ld, lg = float(loss_d.detach()), float(loss_g.detach())
        d_acc, g_acc, n_acc = d_acc + ld, g_acc + lg, n_acc + 1
        if not (math.isfinite(ld) and math.isfinite(lg)):
            diverged = True
        if step % cfg.log_every == 0 or step == cfg.steps or diverged:
            record(step)
            d_acc, g_acc, n_acc = 0.0, 0.0, 0
        if diverged:
            break
    critic_state = {k: v.detach().clone() for k, v in D.state_dict().items()}
    return {"config": asdict(cfg), "history": history, "snapshots": snapshots, "critic_state": critic_state,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "diverged": diverged}


def saved_tensor_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn()`` builds its graph.

    Uses :func:`torch.autograd.graph.saved_tensors_hooks`; tensors sharing storage are counted
    once. This is the memory a graph keeps alive until ``backward`` (a proxy for the extra memory
    of double backprop), not the process's peak.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable building a graph, got {type(fn).__name__}")
    seen: dict[tuple[int, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


def step_graph_bytes(cfg: GANConfig, *, dim: int = 2) -> dict[str, int]:
    """:func:`saved_tensor_bytes` of the critic loss and of the generator loss of run ``cfg`` (one batch)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    G = make_mlp(cfg.z_dim, dim, cfg.g_width, cfg.g_depth, act="relu")
    D = make_critic(cfg, dim)
    xr = torch.randn(cfg.batch, dim, generator=gen)
    z = torch.randn(cfg.batch, cfg.z_dim, generator=gen)
    with torch.no_grad():
        xf = G(z)

    def d_loss() -> Tensor:
        scores = _critic_scores(D, torch.cat([xr, xf]), cfg)
        loss = critic_loss(scores[:len(xr)], scores[len(xr):], cfg.loss)
        if cfg.critic == "gp":
            loss = loss + cfg.gp_lambda * gradient_penalty(D, xr, xf, generator=gen)
        return loss

    def g_loss() -> Tensor:
        D.requires_grad_(False)
        try:
            return generator_loss(_critic_scores(D, G(z), cfg, generator_step=True), cfg.loss)
        finally:
            D.requires_grad_(True)

    return {"d_bytes": saved_tensor_bytes(d_loss), "g_bytes": saved_tensor_bytes(g_loss)}


# --------------------------------------------------------------------------- ensembles: many GANs at once
@dataclass(frozen=True)
class Member:
    """One GAN of an ensemble: critic kind, loss, learning rate (generator and critic), critic steps per
    generator step, GP weight (used by ``critic='gp'``) and seed (init, data and noise; members with the same
    seed share all three, so they are paired)."""

    critic: str = "gn"
    loss: str = "wass"
    lr: float = 1e-3
    n_dis: int = 3
    gp_lambda: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("critic", self.critic, CRITICS)
        check_choice("loss", self.loss, ("wass", "hinge"))
        check_positive("lr", self.lr)
        check_positive("n_dis", self.n_dis, integer=True)
        check_positive("gp_lambda", self.gp_lambda, allow_zero=True)
        check_positive("seed", self.seed, integer=True, allow_zero=True)


@dataclass(frozen=True)
class EnsembleConfig:
    """What every member of an ensemble shares: data, length, batch and network sizes, Adam betas."""

    data: str = "ring"            # ring | grid | digits
    steps: int = 500              # generator updates
    batch: int = 64
    z_dim: int = 8
    g_width: int = 64
    g_depth: int = 2
    d_width: int = 64
    d_depth: int = 2
    betas: tuple[float, float] = (0.5, 0.9)
    clip: float = 0.01
    gran_eps: float = 1e-4
    gran_K: float = 1.0
    log_every: int = 50
    n_eval: int = 1000
    landscape: int = 40
    extent: float = 3.0

    def __post_init__(self) -> None:
        check_choice("data", self.data, ("ring", "grid", "digits"))
        for name in ("steps", "batch", "z_dim", "g_width", "d_width", "log_every", "n_eval"):
            check_positive(name, getattr(self, name), integer=True)
        if self.steps % self.log_every:
            raise ValueError(f"steps must be a multiple of log_every, got {self.steps} and {self.log_every}")


class BatchedMLP(nn.Module):
    """K independent MLPs ``din → width (×depth) → dout`` as stacked weights: ``[K, B, din] → [K, B, dout]``.

    Member k draws nn.Linear's default init (``U(±1/√fan_in)``) from its own ``seeds[k]``. Where
    ``spectral[k]`` is true every layer of member k is spectrally normalized as by Miyato et al. and torch's
    ``spectral_norm``: a persistent vector u per layer, 15 power iterations at init, then one per
    ``forward(x, power_iteration=True)`` in train mode; ``W / σ̂`` with ``σ̂ = vᵀ W u`` (u, v constants).
    """

    def __init__(self, din: int, dout: int, width: int, depth: int, seeds: Sequence[int], *,
                 act: str = "leaky_relu", slope: float = 0.2, out_act: str | None = None,
                 spectral: Sequence[bool] | None = None) -> None:
        super().__init__()
        check_choice("act", act, tuple(_ACTS))
        if out_act is not None:
            check_choice("out_act", out_act, ("tanh",))
        K = len(seeds)
        if K < 1:
            raise ValueError("seeds must name at least one member")
        dims = [din] + [width] * depth + [dout]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1 / math.sqrt(a)
            self.weights.append(nn.Parameter(torch.stack([(torch.rand(a, b, generator=g) * 2 - 1) * bound for g in gens])))
            self.biases.append(nn.Parameter(torch.stack([(torch.rand(1, b, generator=g) * 2 - 1) * bound for g in gens])))
        self.act, self.out_act, self.K = _ACTS[act](slope), out_act, K
        sn = torch.zeros(K, dtype=torch.bool) if spectral is None else torch.as_tensor(list(spectral), dtype=torch.bool)
        if sn.shape != (K,):
            raise ValueError(f"spectral must have one flag per member ({K}), got {tuple(sn.shape)}")
        self.register_buffer("sn", sn)
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            u = nn.functional.normalize(torch.stack([torch.randn(b, generator=g) for g in gens]), dim=1)
            self.register_buffer(f"u{i}", u)
            self.register_buffer(f"v{i}", torch.zeros(K, a))
            with torch.no_grad():
                for _ in range(15):
                    self._power_iteration(i)

    def _power_iteration(self, i: int) -> None:
        W, u = self.weights[i].detach(), getattr(self, f"u{i}")
        v = nn.functional.normalize(torch.bmm(W, u.unsqueeze(-1)).squeeze(-1), dim=1)   # [K, in]
        u = nn.functional.normalize(torch.bmm(v.unsqueeze(1), W).squeeze(1), dim=1)     # [K, out]
        getattr(self, f"u{i}").copy_(u)
        getattr(self, f"v{i}").copy_(v)

    def sigma(self, i: int) -> Tensor:
        """The spectral-norm estimate ``vᵀ W_i u`` of layer i, ``[K]`` (differentiable in W)."""
        return torch.einsum("ki,kio,ko->k", getattr(self, f"v{i}"), self.weights[i], getattr(self, f"u{i}"))

    def forward(self, x: Tensor, power_iteration: bool = False) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[0] != self.K:
            raise ValueError(f"x must be [K={self.K}, B, din], got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            if bool(self.sn.any()):
                if power_iteration and self.training:
                    with torch.no_grad():
                        self._power_iteration(i)
                W = torch.where(self.sn[:, None, None], W / self.sigma(i)[:, None, None], W)
            x = torch.baddbmm(b, x, W)
            if i < last:
                x = self.act(x)
        return torch.tanh(x) if self.out_act == "tanh" else x

    def member(self, k: int) -> "BatchedMLP":
        """A one-member copy of member k (weights, biases and spectral-norm state)."""
        one = BatchedMLP.__new__(BatchedMLP)
        nn.Module.__init__(one)
        one.weights = nn.ParameterList([nn.Parameter(w.detach()[k:k + 1].clone()) for w in self.weights])
        one.biases = nn.ParameterList([nn.Parameter(b.detach()[k:k + 1].clone()) for b in self.biases])
        one.act, one.out_act, one.K = self.act, self.out_act, 1
        for name, buf in self.named_buffers():
            one.register_buffer(name, buf[k:k + 1].clone())
        return one.train(self.training)


class MaskedAdam:
    """Adam (torch's formula) on stacked parameters ``[K, ...]`` with a per-member lr ``[K]`` and a mask of the
    members that update this step; each member keeps its own step count, so a member that sits out a step
    is exactly as if that step had not happened (tested against ``torch.optim.Adam``)."""

    def __init__(self, params: Sequence[nn.Parameter], K: int, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.t = torch.zeros(K, dtype=torch.float64)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr: Tensor, active: Tensor) -> None:
        self.t += active.double()
        t = self.t.clamp_min(1)
        c1, c2 = (1 - self.b1 ** t).float(), (1 - self.b2 ** t).float()
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            a = active.view(shape)
            g = torch.nan_to_num(p.grad)
            m.copy_(torch.where(a, self.b1 * m + (1 - self.b1) * g, m))
            v.copy_(torch.where(a, self.b2 * v + (1 - self.b2) * g * g, v))
            update = lr.view(shape) * (m / c1.view(shape)) / ((v / c2.view(shape)).sqrt() + self.eps)
            p.sub_(torch.where(a, update, torch.zeros_like(update)))


_GN_KINDS = ("gn", "gran", "gn_raw", "inner")


def ensemble_scores(D: BatchedMLP, x: Tensor, kinds: Sequence[str], cfg: EnsembleConfig, *,
                    power_iteration: bool = False, create_graph: bool = True) -> Tensor:
    """Scores ``[K, N]`` of every member's critic on ``x [K, N, d]``: raw ``D`` for none / clip / gp / sn,
    normalized (same formulas as :func:`gn_iccv`, :func:`gran`, :func:`gn_raw`, :func:`gn_inner`) otherwise.
    The per-sample gradient is the batched shortcut, exact here: members and samples do not interact."""
    if len(kinds) != D.K:
        raise ValueError(f"kinds must have one entry per member ({D.K}), got {len(kinds)}")
    if not any(k in _GN_KINDS for k in kinds):
        return D(x, power_iteration).squeeze(-1)
    xi = x if x.requires_grad else x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = D(xi, power_iteration).squeeze(-1)
        (w,) = torch.autograd.grad(f.sum(), xi, create_graph=create_graph)
    g = w.norm(dim=-1)
    tiny = torch.finfo(f.dtype).tiny
    choice = {
        "gn": lambda: f / (g + f.abs()).clamp_min(tiny),
        "gran": lambda: cfg.gran_K * f * g / (g * g + cfg.gran_eps).clamp_min(tiny),
        "gn_raw": lambda: f / (g + cfg.gran_eps).clamp_min(tiny),
        "inner": lambda: (w / g.clamp_min(tiny).unsqueeze(-1) * xi).sum(-1),
    }
    out = f
    for kind in set(kinds) & set(_GN_KINDS):
        mask = torch.tensor([k == kind for k in kinds])[:, None]
        out = torch.where(mask, choice[kind](), out)
    return out


def _ensemble_penalty(D: BatchedMLP, xr: Tensor, xf: Tensor, gen: torch.Generator) -> Tensor:
    """Per-member WGAN-GP penalty ``E (‖∇D(x̃)‖ − 1)²`` on interpolates, ``[K, B, d]`` → ``[K]``."""
    alpha = torch.rand(xr.shape[0], xr.shape[1], 1, generator=gen)
    x_hat = (alpha * xr + (1 - alpha) * xf).detach().requires_grad_(True)
    f = D(x_hat).squeeze(-1)
    (w,) = torch.autograd.grad(f.sum(), x_hat, create_graph=True)
    return ((w.norm(dim=-1) - 1) ** 2).mean(1)


def _ensemble_group(members: Sequence[Member], cfg: EnsembleConfig, real: Tensor | None,
                    evaluate: Callable[[Tensor], dict], keep: int) -> list[dict]:
    """Train members that share one ``n_dis`` (and one kind of critic computation) as one batched ensemble (see :func:`train_gan_ensemble`)."""
    from lib.train import fit

    K, two_d = len(members), cfg.data in ("ring", "grid")
    dim = 2 if two_d else real.shape[1]
    seeds = sorted({m.seed for m in members})
    which = torch.tensor([seeds.index(m.seed) for m in members])
    kinds = [m.critic for m in members]
    G = BatchedMLP(cfg.z_dim, dim, cfg.g_width, cfg.g_depth, [m.seed for m in members], act="relu",
                   out_act=None if two_d else "tanh")
    D = BatchedMLP(dim, 1, cfg.d_width, cfg.d_depth, [m.seed + 50_000 for m in members],
                   spectral=[m.critic == "sn" for m in members])
    lr = torch.tensor([m.lr for m in members])
    opt_g = MaskedAdam(list(G.parameters()), K, cfg.betas)
    opt_d = MaskedAdam(list(D.parameters()), K, cfg.betas)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    gp_weight = torch.tensor([m.gp_lambda if m.critic == "gp" else 0.0 for m in members])
    hinge = torch.tensor([m.loss == "hinge" for m in members])
    clip = torch.tensor([m.critic == "clip" for m in members])
    z_fix = torch.stack([torch.randn(cfg.n_eval, cfg.z_dim, generator=torch.Generator().manual_seed(s + 1))
                         for s in seeds])[which]
    alive = torch.ones(K, dtype=torch.bool)
    n_dis = members[0].n_dis
    out = [{"member": asdict(m), "history": [], "snapshots": [], "diverged": False} for m in members]
    acc = {"d": torch.zeros(K, dtype=torch.float64), "g": torch.zeros(K, dtype=torch.float64), "n": 0}

    def draw_real() -> Tensor:
        if two_d:
            return torch.stack([sample_mixture(cfg.batch, cfg.data, generator=g) for g in gens])[which]
        return torch.stack([real[torch.randint(len(real), (cfg.batch,), generator=g)] for g in gens])[which]

    def draw_z() -> Tensor:
        return torch.stack([torch.randn(cfg.batch, cfg.z_dim, generator=g) for g in gens])[which]

    def record(step: int) -> None:
        with torch.no_grad():
            s = G(z_fix)
        if two_d and cfg.landscape:
            t = torch.linspace(-cfg.extent, cfg.extent, cfg.landscape)
            xy = torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(1, -1, 2).expand(K, -1, -1)
            D.eval()
            land = ensemble_scores(D, xy, kinds, cfg, create_graph=False).detach()
            D.train()
        for k in range(K):
            finite = bool(alive[k]) and bool(torch.isfinite(s[k]).all())
            metrics = evaluate(s[k]) if finite else {}
            n = max(acc["n"], 1)
            out[k]["history"].append({"step": step, "d_loss": float(acc["d"][k]) / n, "g_loss": float(acc["g"][k]) / n,
                                      **metrics})
            snap = {"step": step, "samples": s[k, :keep].numpy().astype(np.float32)}
            if two_d and cfg.landscape:
                snap["landscape"] = land[k].reshape(cfg.landscape, cfg.landscape).numpy().astype(np.float32)
            out[k]["snapshots"].append(snap)
        acc["d"].zero_(), acc["g"].zero_()
        acc["n"] = 0

    def step(_: int) -> float:
        for _ in range(n_dis):
            xr = draw_real()
            with torch.no_grad():
                xf = G(draw_z())
            scores = ensemble_scores(D, torch.cat([xr, xf], 1), kinds, cfg, power_iteration=True)
            sr, sf = scores[:, :cfg.batch], scores[:, cfg.batch:]
            loss_d = torch.where(hinge, torch.relu(1 - sr).mean(1) + torch.relu(1 + sf).mean(1), sf.mean(1) - sr.mean(1))
            if bool((gp_weight > 0).any()):
                loss_d = loss_d + gp_weight * _ensemble_penalty(D, xr, xf, gens[0])
            alive.logical_and_(torch.isfinite(loss_d.detach()))
            D.zero_grad(set_to_none=True)
            torch.where(alive, loss_d, torch.zeros_like(loss_d)).sum().backward()
            opt_d.step(lr, alive)
            if bool(clip.any()):
                with torch.no_grad():
                    for p in D.parameters():
                        p.copy_(torch.where(clip.view(-1, *([1] * (p.dim() - 1))), p.clamp(-cfg.clip, cfg.clip), p))
        D.requires_grad_(False)
        try:
            loss_g = -ensemble_scores(D, G(draw_z()), kinds, cfg).mean(1)
            alive.logical_and_(torch.isfinite(loss_g.detach()))
            G.zero_grad(set_to_none=True)
            torch.where(alive, loss_g, torch.zeros_like(loss_g)).sum().backward()
            opt_g.step(lr, alive)
        finally:
            D.requires_grad_(True)
        for k in torch.nonzero(~alive).flatten().tolist():
            out[k]["diverged"] = True
        acc["d"] += torch.nan_to_num(loss_d.detach().double(), nan=0.0, posinf=0.0, neginf=0.0)
        acc["g"] += torch.nan_to_num(loss_g.detach().double(), nan=0.0, posinf=0.0, neginf=0.0)
        acc["n"] += 1
        return float(loss_d.detach()[alive].sum()) if bool(alive.any()) else 0.0

    record(0)
    state = {"step": 0}

    def after_epoch(epoch: int) -> dict:
        state["step"] = (epoch + 1) * cfg.log_every if not _smoke() else acc["n"] + state["step"]
        record(state["step"])
        return {}

    fit(step, lambda epoch: range(cfg.log_every), cfg.steps // cfg.log_every, evaluate=after_epoch,
        desc=f"GAN ensemble ({K} members, n_dis={n_dis})")
    for k in range(K):
        out[k]["critic"] = D.member(k).eval()
        out[k]["generator"] = G.member(k).eval()
    return out


def _smoke() -> bool:
    from lib import utils
    return utils.SMOKE


def train_gan_ensemble(members: Sequence[Member], cfg: EnsembleConfig, *, real: Tensor | None = None,
                       evaluate: Callable[[Tensor], dict] | None = None, keep_samples: int | None = None) -> dict:
    """Train every member's GAN at once: members with the same ``n_dis`` form one batched ensemble
    (:class:`BatchedMLP` generators and critics, :class:`MaskedAdam`), trained through ``lib.train.fit``
    (one epoch = ``cfg.log_every`` generator steps; ``BOOK_SMOKE=1`` runs 3 steps).

    The training step is :func:`train_gan`'s for every member: ``n_dis`` critic updates on fresh real and
    (detached) fake batches, then one generator update with the critic frozen; GP adds ``λ`` times the
    penalty on interpolates; SN members do one power iteration per critic update; clip members are clamped
    after each critic update. A member whose loss becomes NaN / inf is frozen and marked ``diverged``.

    Returns ``{"config", "members": [ {member, history: [{step, d_loss, g_loss, **metrics}], snapshots:
    [{step, samples, landscape?}], diverged, critic, generator} ], "seconds", "cpu_seconds"}`` in the order
    of `members`; ``critic`` / ``generator`` are one-member :class:`BatchedMLP` (``[1, B, d]`` inputs).
    """
    if not members or not all(isinstance(m, Member) for m in members):
        raise TypeError(f"members must be a non-empty sequence of Member, got {members!r}")
    if not isinstance(cfg, EnsembleConfig):
        raise TypeError(f"cfg must be an EnsembleConfig, got {type(cfg).__name__}")
    two_d = cfg.data in ("ring", "grid")
    if not two_d:
        if not isinstance(real, Tensor) or real.dim() != 2 or len(real) == 0 or not torch.isfinite(real).all():
            raise ValueError("train_gan_ensemble(data='digits') needs real=[N, 64] finite training images")
        if evaluate is None:
            raise ValueError("train_gan_ensemble(data='digits') needs an evaluate callable")
    if evaluate is None:
        evaluate = lambda s: eval_2d(s, cfg.data)  # noqa: E731
    keep = cfg.n_eval if keep_samples is None else keep_samples
    t0, c0 = time.perf_counter(), time.process_time()
    results: list[dict | None] = [None] * len(members)
    # one batched ensemble per (n_dis, kind of critic computation): a plain critic does not pay for the
    # double backward of the normalized ones, nor for the penalty of GP
    group = lambda m: (m.n_dis, m.critic in _GN_KINDS, m.critic == "gp")  # noqa: E731
    for key in sorted({group(m) for m in members}):
        idx = [i for i, m in enumerate(members) if group(m) == key]
        for i, r in zip(idx, _ensemble_group([members[i] for i in idx], cfg, real, evaluate, keep)):
            results[i] = r
    return {"config": asdict(cfg), "members": results, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}


def ensemble_critic_fn(result: dict, cfg: EnsembleConfig) -> Callable[[Tensor], Tensor]:
    """The trained critic of one member of :func:`train_gan_ensemble` as the generator saw it:
    ``x [N, d] → scores [N]`` (normalized for GN-type critics)."""
    D, kind = result["critic"], result["member"]["critic"]
    return lambda x: ensemble_scores(D, x.unsqueeze(0), [kind], cfg, create_graph=False)[0].detach()


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of torch CPU memory allocated while ``fn()`` runs, above what was allocated before.

    Measured with ``torch.profiler`` (``profile_memory=True``): every allocation (an op's self memory) and
    every free (a ``[memory]`` event) in time order; the peak of their running sum. Counts torch tensors
    only (not Python objects); ``tracemalloc`` cannot see torch's allocator, peak RSS cannot be reset."""
    from torch.profiler import ProfilerActivity, profile

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return int(peak)


def step_peak_bytes(cfg: GANConfig, *, dim: int = 2) -> dict[str, int]:
    """:func:`peak_bytes` of one critic step and of one generator step of run ``cfg`` (forward, backward and
    optimizer update; one warm-up iteration first so Adam's state already exists), on random data ``[batch, dim]``."""
    check_positive("dim", dim, integer=True)
    G, D, opt_g, opt_d, xr, z, gen = _step_probe(cfg, dim)
    with torch.no_grad():
        xf = G(z)
    _d_step(D, opt_d, xr, xf, cfg, gen)
    _g_step(G, D, opt_g, z, cfg)
    return {"d_peak": peak_bytes(lambda: _d_step(D, opt_d, xr, xf, cfg, gen)),
            "g_peak": peak_bytes(lambda: _g_step(G, D, opt_g, z, cfg))}
