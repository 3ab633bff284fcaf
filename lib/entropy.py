r"""Entropy normalization of probability distributions, and the entropy-invariant attention scale.

Su Jianlin, 概率分布的熵归一化 (kexue.fm/archives/8829) and 从熵不变性看Attention的Scale操作 (archives/8823).

Distributions live on the last axis ``[..., n]``; targets and exponents are ``[...]``. Every function takes
NumPy arrays or torch tensors and returns the same kind; the computation runs in float64 torch, in log space.

The power transform :math:`\tilde p = p^\gamma / \sum_j p_j^\gamma` is softmax temperature scaling:
with :math:`\ell = \log p`, :math:`\tilde p = \mathrm{softmax}(\gamma \ell)`. Along this path

.. math::  H(\gamma) = \log Z(\gamma) - \gamma\,\mathbb{E}_\gamma[\ell], \qquad
           H'(\gamma) = -\gamma\,\mathrm{Var}_\gamma[\ell],

so the entropy falls monotonically for :math:`\gamma > 0` from :math:`\log n_+` (uniform on the support)
to :math:`\log m` (uniform on the :math:`m` tied maxima). Entropy normalization solves :math:`H(\Gamma) = H^*`.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

Array = Any  # np.ndarray | torch.Tensor

__all__ = [
    "entropy", "log_power", "power_transform", "entropy_path", "entropy_range", "entropy_normalize_post",
    "entropy_normalize", "temperature_for_entropy", "attention_entropy", "attention_scale",
    "meanfield_entropy_deficit", "EntropyNormalizationLogitsProcessor", "NormalizeResult", "PostIteration",
]


# ------------------------------------------------------------------------------------------ plumbing
def _as_tensor(x: Array, name: str) -> tuple[torch.Tensor, bool]:
    """(float64 tensor, was_numpy). Raises TypeError for anything that is not array-like numbers."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        return x.detach().to(torch.float64), False
    if isinstance(x, (np.ndarray, list, tuple, float, int)):
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        return torch.from_numpy(arr.astype(np.float64)), True
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _out(x: torch.Tensor, as_numpy: bool) -> Array:
    return x.numpy() if as_numpy else x


def _check_probabilities(p: torch.Tensor, name: str = "p") -> None:
    if p.ndim == 0:
        raise ValueError(f"{name} must have a last axis of classes, got a scalar")
    if torch.isnan(p).any() or (p < 0).any():
        raise ValueError(f"{name} must be non-negative probabilities without NaN")
    sums = p.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
        bad = sums[(sums - 1).abs() > 1e-6].flatten()[:3].tolist()
        raise ValueError(f"{name} must sum to 1 along its last axis, got sums such as {bad}")


def _check_log_rows(x: torch.Tensor, name: str) -> None:
    """Logits or log-probabilities [..., n]: no NaN, no +inf, and every row keeps at least one finite entry
    (a row of -inf only has no probability mass: its distribution, and so its entropy, is undefined)."""
    if torch.isnan(x).any() or (x == math.inf).any():
        raise ValueError(f"{name} must not contain NaN or +inf")
    empty = ~torch.isfinite(x).any(-1)
    if empty.any():
        index = tuple(torch.nonzero(empty)[0].tolist())
        raise ValueError(f"{name} has {int(empty.sum())} row(s) that are entirely -inf (fully masked, no "
                         f"probability mass), e.g. row {index}: the distribution is undefined; drop or fill such rows")


def _log_probs(p: Array | None, logits: Array | None, logp: Array | None) -> tuple[torch.Tensor, bool]:
    """Exactly one of p / logits / logp -> (log-probabilities [..., n] in float64, was_numpy)."""
    given = [(n, v) for n, v in (("p", p), ("logits", logits), ("logp", logp)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of p, logits, logp; got {[n for n, _ in given] or 'none'}")
    name, value = given[0]
    x, as_numpy = _as_tensor(value, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have a last axis of classes, got a scalar")
    if name == "p":
        _check_probabilities(x)
        return torch.log(x), as_numpy
    _check_log_rows(x, name)
    return torch.log_softmax(x, dim=-1), as_numpy


def _centre(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities shifted so each row's maximum is 0, zeros (−inf) replaced by 0, and the support
    mask (None when every entry is non-zero)."""
    support = torch.isfinite(logp)
    if bool(support.all()):
        return logp - logp.amax(-1, keepdim=True), None
    top = torch.where(support, logp, -math.inf).amax(-1, keepdim=True)
    return torch.where(support, logp - top, 0.0), support


def _moments(logp: torch.Tensor, gamma: torch.Tensor, centred=None) -> tuple[torch.Tensor, ...]:
    r"""Entropy and cumulants of :math:`\ell` under :math:`\mathrm{softmax}(\gamma\ell)`, shifted for accuracy.

    logp [..., n] (−inf for zeros), gamma [...] (any real) → (H, Var, third central moment), each [...]. Shifting
    :math:`\ell` by its maximum keeps :math:`\log Z - \gamma E[\ell]` free of cancellation when
    :math:`\gamma` is large. `centred` = `_centre(logp)` may be passed to skip recomputing it."""
    centred, support = _centre(logp) if centred is None else centred
    scaled = gamma[..., None] * centred
    if support is not None:
        scaled = scaled.masked_fill(~support, -math.inf)
    log_z = torch.logsumexp(scaled, -1)
    q = torch.exp(scaled - log_z[..., None])
    mean = (q * centred).sum(-1)
    dev = centred - mean[..., None]
    q_dev2 = q * dev * dev
    var = q_dev2.sum(-1)
    third = (q_dev2 * dev).sum(-1)
    return log_z - gamma * mean, var.clamp_min(0.0), third


# ---------------------------------------------------------------------------------------- basics
def entropy(p: Array | None = None, logits: Array | None = None, dim: int = -1) -> Array:
    r"""Shannon entropy in nats, :math:`H = -\sum_i p_i\log p_i` with :math:`0\log 0 = 0`.

    p or logits [..., n] (on axis `dim`) → H [...]."""
    logp, as_numpy = _log_probs(None if p is None else _move(p, dim), None if logits is None else _move(logits, dim),
                                None)
    q = torch.exp(logp)
    return _out(0.0 - (torch.where(q > 0, q * logp, 0.0)).sum(-1), as_numpy)


def _move(x: Array, dim: int) -> Array:
    if dim == -1:
        return x
    return np.moveaxis(np.asarray(x), dim, -1) if not isinstance(x, torch.Tensor) else x.movedim(dim, -1)


def _gamma_like(value: Array, batch_shape: torch.Size, name: str = "gamma") -> torch.Tensor:
    g, _ = _as_tensor(value, name)
    if torch.isnan(g).any():
        raise ValueError(f"{name} must not contain NaN")
    try:
        return torch.broadcast_to(g, batch_shape).clone()
    except RuntimeError as error:
        raise ValueError(f"{name} must broadcast to the batch shape {tuple(batch_shape)}, got {tuple(g.shape)}") \
            from error


def _broadcast_rows(x: torch.Tensor, gamma: Array) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast rows x [..., n] against gamma [...] -> (x [B..., n], gamma [B...])."""
    g, _ = _as_tensor(gamma, "gamma")
    if torch.isnan(g).any():
        raise ValueError("gamma must not contain NaN")
    try:
        shape = torch.broadcast_shapes(x.shape[:-1], g.shape)
    except RuntimeError as error:
        raise ValueError(f"gamma {tuple(g.shape)} must broadcast with the batch shape {tuple(x.shape[:-1])}") \
            from error
    return x.expand(*shape, x.shape[-1]), g.expand(shape)


def log_power(logp: Array, gamma: Array, dim: int = -1) -> Array:
    r"""Power transform in log space: :math:`\log\tilde p_i = \gamma\ell_i - \mathrm{LSE}_j(\gamma\ell_j)`.

    logp [..., n] (−inf marks zeros, which stay zeros for every γ), gamma scalar or [...] → [..., n].
    NaN, +inf or a row of −inf only (no mass) raise ValueError naming `logp`."""
    x, as_numpy = _as_tensor(_move(logp, dim), "logp")
    _check_log_rows(x, "logp")
    x, g = _broadcast_rows(x, gamma)
    support = torch.isfinite(x)
    scaled = torch.where(support, g[..., None] * torch.where(support, x, 0.0), -math.inf)
    out = scaled - torch.logsumexp(scaled, -1, keepdim=True)
    out = out if dim == -1 else out.movedim(-1, dim)
    return _out(out, as_numpy)


def power_transform(p: Array, gamma: Array, dim: int = -1) -> Array:
    r""":math:`\tilde p_i = p_i^\gamma/\sum_j p_j^\gamma` computed as :math:`\mathrm{softmax}(\gamma\log p)`.

    p [..., n], gamma scalar or [...] → [..., n]. γ = 0 gives the uniform distribution on the support,
    γ < 0 reverses the ranking."""
    x, as_numpy = _as_tensor(_move(p, dim), "p")
    _check_probabilities(x)
    out = torch.exp(log_power(torch.log(x), gamma))
    return _out(out if dim == -1 else out.movedim(-1, dim), as_numpy)


def entropy_path(logp: Array, gamma: Array, dim: int = -1) -> tuple[Array, Array]:
    r"""Entropy along the power path and its derivative, :math:`(H(\gamma),\ -\gamma\,\mathrm{Var}_\gamma[\log p])`.

    logp [..., n], gamma scalar or [...] → (H [...], dH/dγ [...]). Valid for any real γ; NaN, +inf or a row
    of −inf only raise ValueError naming `logp`."""
    x, as_numpy = _as_tensor(_move(logp, dim), "logp")
    _check_log_rows(x, "logp")
    x, g = _broadcast_rows(x, gamma)
    ent, var, _ = _moments(x, g)
    return _out(ent, as_numpy), _out(-g * var, as_numpy)


def _range_from_logp(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    support = torch.isfinite(logp)
    top = torch.where(support, logp, -math.inf).amax(-1, keepdim=True)
    n_max = (logp == top).sum(-1).to(torch.float64)
    return torch.log(n_max), torch.log(support.sum(-1).to(torch.float64))


def entropy_range(p: Array | None = None, logits: Array | None = None, dim: int = -1) -> tuple[Array, Array]:
    r"""Entropies reachable by the power transform with γ > 0: the open interval :math:`(\log m, \log n_+)`.

    m = number of entries tied at the maximum, n₊ = number of non-zero entries. p or logits [..., n] →
    (H_min [...], H_max [...])."""
    logp, as_numpy = _log_probs(None if p is None else _move(p, dim), None if logits is None else _move(logits, dim),
                                None)
    low, high = _range_from_logp(logp)
    return _out(low, as_numpy), _out(high, as_numpy)


# ------------------------------------------------------------------------------- the post's iteration
class PostIteration(NamedTuple):
    """Result of `entropy_normalize_post`: the final distribution, the total exponent Γ = Πγ_t, and per
    step the (γ_t, Γ_t, H_t) history, each [iters, ...]."""

    probs: Array
    gamma: Array
    step_gammas: Array
    total_gammas: Array
    entropies: Array


def entropy_normalize_post(p: Array, target: Array, iters: int = 10, log_space: bool = False) -> PostIteration:
    r"""The post's iteration, exactly as written: a first-order model of :math:`H` around γ = 1.

    Repeat: :math:`H \leftarrow H(p)`; :math:`\gamma \leftarrow 1 + (H^* - H)/(H^2 - \sum_i p_i \log^2 p_i)`;
    :math:`p \leftarrow p^\gamma/\sum_j p_j^\gamma`. With ``log_space=False`` it works on probabilities like
    the post's NumPy snippet (exact zeros appear for large exponents and ``log 0`` poisons the next step);
    with ``log_space=True`` it carries :math:`\log p` instead. p [..., n], target scalar or [...]."""
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    x, as_numpy = _as_tensor(p, "p")
    _check_probabilities(x)
    tgt = _gamma_like(target, x.shape[:-1])
    total = torch.ones_like(tgt)
    steps, totals, ents = [], [], []
    logp = torch.log(x)
    for _ in range(iters):
        if log_space:
            q = torch.exp(logp)
            ent = -(torch.where(q > 0, q * logp, 0.0)).sum(-1)
            second = (torch.where(q > 0, q * logp**2, 0.0)).sum(-1)
        else:  # literal: p * log(p) with whatever zeros the previous power produced
            ent = -(x * torch.log(x)).sum(-1)
            second = (x * torch.log(x) ** 2).sum(-1)
        gamma = 1 + (tgt - ent) / (ent**2 - second)
        total = total * gamma
        steps.append(gamma)
        totals.append(total.clone())
        ents.append(ent)
        if log_space:
            logp = gamma[..., None] * logp
            logp = logp - torch.logsumexp(logp, -1, keepdim=True)
            x = torch.exp(logp)
        else:
            powered = x ** gamma[..., None]
            x = powered / powered.sum(-1, keepdim=True)
    stack = lambda items: _out(torch.stack(items), as_numpy)  # noqa: E731
    return PostIteration(_out(x, as_numpy), _out(total, as_numpy), stack(steps), stack(totals), stack(ents))


# ------------------------------------------------------------------------------------ robust solver
class NormalizeResult(NamedTuple):
    """Result of `entropy_normalize`: probs [..., n] with entropy = target, the exponent Γ [...] (so that
    probs = softmax(Γ · log p) and the temperature is 1/Γ), entropy evaluations used per row, and whether
    every row converged."""

    probs: Array
    gamma: Array
    evaluations: Array
    converged: bool


METHODS = ("safeguarded", "newton", "bisect")


def _validate_targets(logp: torch.Tensor, target: torch.Tensor, clip: bool, eps: float) -> torch.Tensor:
    low, high = _range_from_logp(logp)
    flat = high - low < 1e-15  # uniform on its support: the entropy cannot move
    if clip:
        return torch.where(flat, high, torch.minimum(torch.maximum(target, low + eps), high - eps))
    bad = ~flat & ((target <= low) | (target >= high)) | flat & ((target - high).abs() > 1e-12)
    if bad.any():
        index = tuple(torch.nonzero(bad)[0].tolist())
        raise ValueError(
            f"target must lie in the reachable open interval (log m, log n_plus) of each row; row {index} "
            f"has range ({low[index].item():.6g}, {high[index].item():.6g}) and target {target[index].item():.6g} "
            "(m = entries tied at the maximum, n_plus = non-zero entries); pass clip=True to clip targets"
        )
    return target


def entropy_normalize(
    logits: Array | None = None,
    *,
    p: Array | None = None,
    logp: Array | None = None,
    target: Array,
    tol: float = 1e-10,
    max_iter: int = 100,
    method: str = "safeguarded",
    clip: bool = False,
) -> NormalizeResult:
    r"""Batched entropy normalization: find Γ > 0 with :math:`H(\mathrm{softmax}(\Gamma\ell)) = H^*` per row.

    Give exactly one of logits / p / logp [..., n]; target scalar or [...]. Methods:

    * ``"safeguarded"`` (default): Newton on the transformed equation
      :math:`F(t) = \log(\log n_+ - H) - \log(H - \log m) = F^*` in :math:`t = \log\Gamma`. Using the second
      derivative (third cumulant, free in the same pass) each step fits :math:`F \approx a t + b e^t + c`,
      which is exact in both limits (small Γ: :math:`\log n_+ - H \approx \Gamma^2 V/2`; large Γ:
      :math:`H - \log m \sim e^{-\Gamma\Delta}`), and solves it; a per-row bracket falls back to bisection.
    * ``"newton"``: plain Newton on Γ, i.e. the post's iteration — it may leave Γ > 0 or diverge; a row is
      reported converged only if it reached the target with Γ > 0 (Γ ≤ 0 would keep or reverse the ranking
      on the wrong side of the uniform distribution).
    * ``"bisect"``: bisection on t = log Γ, the slow obviously-correct twin.

    Targets outside :math:`(\log m, \log n_+)` raise ValueError unless ``clip=True``. Rows that are uniform
    on their support are returned unchanged when the target equals their entropy."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (isinstance(tol, float) and tol > 0):
        raise ValueError(f"tol must be a positive float, got {tol!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    ell, as_numpy = _log_probs(p, logits, logp)
    tgt = _gamma_like(target, ell.shape[:-1], "target")
    tgt = _validate_targets(ell, tgt, clip, eps=1e-9)
    solver = {"safeguarded": _solve_safeguarded, "newton": _solve_newton, "bisect": _solve_bisect}[method]
    gamma, evaluations, done = solver(ell, tgt, tol, max_iter)
    probs = torch.exp(log_power(ell, gamma))
    return NormalizeResult(_out(probs, as_numpy), _out(gamma, as_numpy), _out(evaluations, as_numpy),
                           bool(done.all()))


def _solve_safeguarded(ell, target, tol, max_iter):
    low, high = _range_from_logp(ell)
    flat = high - low < 1e-15
    f_star = torch.log(high - target) - torch.log(target - low)
    t = torch.zeros_like(target)
    lo, hi = torch.full_like(t, -math.inf), torch.full_like(t, math.inf)
    f_lo, f_hi = torch.full_like(t, math.nan), torch.full_like(t, math.nan)
    done, evaluations = flat.clone(), torch.zeros_like(target, dtype=torch.int64)
    centred, support = _centre(ell.reshape(-1, ell.shape[-1]))
    for _ in range(max_iter):
        rows = torch.nonzero(~done.flatten()).squeeze(1)  # work only on the rows still running
        if rows.numel() == 0:
            break
        bracket = tuple(x.flatten()[rows] for x in (lo, hi, f_lo, f_hi))
        new_t, new_bracket, finished = _safeguarded_step(
            (centred[rows], None if support is None else support[rows]), t.flatten()[rows], bracket,
            target.flatten()[rows], low.flatten()[rows], high.flatten()[rows], f_star.flatten()[rows], tol)
        for state, value in zip((t, lo, hi, f_lo, f_hi, done), (new_t, *new_bracket, finished)):
            state.view(-1)[rows] = value
        evaluations.view(-1)[rows] += 1
    return torch.where(flat, torch.ones_like(t), torch.exp(t)), evaluations, done


def _safeguarded_step(centred, t, bracket, target, low, high, f_star, tol):
    """One evaluation for the running rows (`centred` = `_centre` of their log-probabilities).

    `bracket` = (lo, hi, F(lo), F(hi)) in t = log Γ. Returns the next t, the updated bracket and which rows
    are done. A proposal outside the bracket is replaced by false position inside it (kept away from the
    ends), or by a step of ±2 in t while the bracket is still open."""
    lo, hi, f_lo, f_hi = bracket
    gamma = torch.exp(t)
    ent, var, third = _moments(None, gamma, centred)
    converged = (ent - target).abs() < tol
    above, below = high - ent, ent - low
    f = torch.log(above) - torch.log(below)
    f_h, f_hh = -1 / above - 1 / below, -1 / above**2 + 1 / below**2
    h_t = -gamma**2 * var
    h_tt = -2 * gamma**2 * var - gamma**3 * third
    f_t, f_tt = f_h * h_t, f_hh * h_t**2 + f_h * h_tt
    valid = ~torch.isnan(f)
    move_lo, move_hi = valid & (f < f_star), valid & (f > f_star)
    lo, f_lo = torch.where(move_lo, t, lo), torch.where(move_lo, f, f_lo)
    hi, f_hi = torch.where(move_hi, t, hi), torch.where(move_hi, f, f_hi)
    proposal = _solve_local_model(t, f, f_t, f_tt, f_star)
    inside = torch.isfinite(proposal) & (proposal > lo) & (proposal < hi)
    closed = torch.isfinite(lo) & torch.isfinite(hi)
    share = ((f_star - f_lo) / (f_hi - f_lo)).clamp(0.1, 0.9)
    share = torch.where(torch.isfinite(share), share, 0.5)
    fallback = torch.where(closed, lo + share * (hi - lo), torch.where(torch.isfinite(lo), t + 2.0, t - 2.0))
    new_t = torch.where(inside, proposal, fallback)
    tiny_step = inside & ((new_t - t).abs() < 1e-13)
    return torch.where(converged, t, new_t), (lo, hi, f_lo, f_hi), converged | tiny_step


def _solve_local_model(t, f, f_t, f_tt, f_star, inner_steps: int = 40):
    r"""Solve :math:`a t' + b e^{t'} + c = F^*` where the model matches F, F', F'' at t (b ≥ 0, a ≥ 0);
    falls back to the Newton step when the fitted model is not monotone."""
    b = f_tt * torch.exp(-t)
    a = f_t - f_tt
    model_ok = (a >= 0) & (b >= 0) & torch.isfinite(a) & torch.isfinite(b)
    a = torch.where(model_ok, a, f_t)
    b = torch.where(model_ok, b, 0.0)
    c = f - a * t - b * torch.exp(t)
    x = t.clone()
    for _ in range(inner_steps):  # convex increasing: Newton converges from any start after one step
        exp_x = torch.exp(x)
        x = x - (a * x + b * exp_x + c - f_star) / (a + b * exp_x)
    return x


def _solve_newton(ell, target, tol, max_iter):
    gamma = torch.ones_like(target)
    done, evaluations = torch.zeros_like(target, dtype=torch.bool), torch.zeros_like(target, dtype=torch.int64)
    for _ in range(max_iter):
        ent, dent = entropy_path(ell, gamma)
        evaluations += (~done).long()
        converged = (ent - target).abs() < tol
        gamma = torch.where(done | converged, gamma, gamma + (target - ent) / dent)
        done = done | converged | ~torch.isfinite(gamma)
        if done.all():
            break
    return gamma, evaluations, done & torch.isfinite(gamma) & (gamma > 0)


def _solve_bisect(ell, target, tol, max_iter):
    low_t, high_t = torch.full_like(target, -40.0), torch.full_like(target, 40.0)  # Γ in [4e-18, 2e17]
    centred = _centre(ell)
    evaluations = torch.zeros_like(target, dtype=torch.int64)
    done = torch.zeros_like(target, dtype=torch.bool)
    t = (low_t + high_t) / 2
    for _ in range(max_iter):
        ent = _moments(ell, torch.exp(t), centred)[0]
        evaluations += (~done).long()
        done = done | ((ent - target).abs() < tol)
        low_t = torch.where(~done & (ent > target), t, low_t)
        high_t = torch.where(~done & (ent < target), t, high_t)
        t = torch.where(done, t, (low_t + high_t) / 2)
        if done.all():
            break
    return torch.exp(t), evaluations, done


def temperature_for_entropy(logits: Array, target: Array, **solver_kw) -> Array:
    """The softmax temperature T = 1/Γ at which softmax(logits / T) has entropy `target`. logits [..., n]."""
    result = entropy_normalize(logits, target=target, **solver_kw)
    return 1.0 / result.gamma


# ------------------------------------------------------------------------------------ attention scale
SCALE_KINDS = ("standard", "entropy_invariant", "chiang_cholak", "qwen")


def attention_scale(n: int, d: int, kind: str = "standard", base: int = 512, position: int | None = None) -> float:
    r"""The attention scale λ for n keys and head dimension d.

    * standard: :math:`1/\sqrt d`;
    * entropy_invariant (8823): :math:`\log_{base} n/\sqrt d` (equals the standard scale at n = base);
    * chiang_cholak: :math:`\log n/\sqrt d` (natural log);
    * qwen: :math:`\max(1, \log_{base} i)/\sqrt d` for the 1-based query `position` i (``use_logn_attn``)."""
    if kind not in SCALE_KINDS:
        raise ValueError(f"kind must be one of {SCALE_KINDS}, got {kind!r}")
    for name, value in (("n", n), ("d", d), ("base", base)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if base < 2:
        raise ValueError(f"base must be at least 2, got {base}")
    standard = 1.0 / math.sqrt(d)
    if kind == "standard":
        return standard
    if kind == "entropy_invariant":
        return math.log(n) / math.log(base) * standard
    if kind == "chiang_cholak":
        return math.log(n) * standard
    if position is None or position < 1:
        raise ValueError(f"position must be a 1-based int for kind='qwen', got {position!r}")
    return max(1.0, math.log(position) / math.log(base)) * standard


def attention_entropy(q: Array, k: Array, scale: float, causal: bool = False,
                      attention_mask: Array | None = None) -> Array:
    r"""Row entropies of :math:`a_i = \mathrm{softmax}(\lambda\, q_i K^\top)` over the visible keys.

    q [..., n_q, d], k [..., n_k, d], attention_mask [..., n_k] (1 keep / 0 pad) → H [..., n_q]. With
    ``causal=True`` query i sees keys 0..i (so row i has entropy ≤ log(i + 1)). A query that sees no key
    (an all-zero mask row, or left padding under ``causal``) has no attention distribution: ValueError."""
    qt, as_numpy = _as_tensor(q, "q")
    kt, _ = _as_tensor(k, "k")
    if qt.shape[-1] != kt.shape[-1]:
        raise ValueError(f"q and k must share the last dimension d, got {qt.shape[-1]} and {kt.shape[-1]}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    scores = scale * qt @ kt.transpose(-1, -2)
    hidden = torch.zeros(scores.shape, dtype=torch.bool)
    if causal:
        n_q, n_k = scores.shape[-2:]
        hidden |= torch.ones(n_q, n_k, dtype=torch.bool).triu(1 + n_k - n_q)
    if attention_mask is not None:
        mask, _ = _as_tensor(attention_mask, "attention_mask")
        if torch.isnan(mask).any() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (pad) and 1 (keep)")
        hidden |= (mask == 0)[..., None, :]
    blind = hidden.all(-1)
    if blind.any():
        index = tuple(torch.nonzero(blind)[0].tolist())
        raise ValueError(f"attention_mask (with causal={causal}) hides every key from {int(blind.sum())} "
                         f"query row(s), e.g. {index}: such a row has no attention distribution")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("q and k must be finite (their scores contain NaN or inf)")
    return _out(entropy(logits=scores.masked_fill(hidden, -math.inf)), as_numpy)


def meanfield_entropy_deficit(lam: float, d: int, grid: int = 200001) -> float:
    r"""The n → ∞ entropy deficit :math:`\delta = \log n - H` for scores :math:`\lambda d\cos\theta`, θ the
    angle between two random directions in d dimensions (density of :math:`c=\cos\theta \propto
    (1-c^2)^{(d-3)/2}`):  :math:`\delta(\lambda) = \lambda d\,\mathbb{E}_w[c] - \log\mathbb{E}[e^{\lambda d c}]`
    with :math:`\mathbb{E}_w` the :math:`e^{\lambda d c}`-tilted expectation, by 1-D quadrature."""
    if not isinstance(d, int) or d < 3:
        raise ValueError(f"d must be an int >= 3, got {d!r}")
    if not (isinstance(lam, (int, float)) and lam >= 0):
        raise ValueError(f"lam must be a non-negative number, got {lam!r}")
    c = np.linspace(-1.0, 1.0, grid)[1:-1]
    log_density = (d - 3) / 2 * np.log1p(-c * c)
    log_density -= np.logaddexp.reduce(log_density)
    log_tilt = log_density + lam * d * c
    log_norm = np.logaddexp.reduce(log_tilt)
    tilted_mean = float(np.sum(np.exp(log_tilt - log_norm) * c))
    return lam * d * tilted_mean - float(log_norm)


# -------------------------------------------------------------------------------- generation helper
class EntropyNormalizationLogitsProcessor:
    """A `transformers` logits processor that sets every row's next-token entropy to `target` nats.

    `__call__(input_ids [B, L], scores [B, V]) -> [B, V]` log-probabilities; the ranking of tokens is kept
    (Γ > 0). Targets outside a row's reachable range are clipped (a row can never be made flatter than
    uniform or sharper than its tied maxima). A row with no finite score (every token banned by an earlier
    processor) is returned unchanged, all −inf, for `generate` to handle as it would without this processor.
    Usable in `LogitsProcessorList`."""

    def __init__(self, target: float, **solver_kw):
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not (0 < target < math.inf):
            raise ValueError(f"target must be a positive finite entropy in nats, got {target!r}")
        self.target = float(target)
        self.solver_kw = {"clip": True, **solver_kw}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
            raise ValueError(f"scores must be a [batch, vocab] tensor, got {getattr(scores, 'shape', scores)!r}")
        if torch.isnan(scores).any():
            raise ValueError("scores contain NaN: the model's logits diverged upstream of this processor")
        live = torch.isfinite(scores).any(-1)
        out = torch.full_like(scores, -math.inf)
        if live.any():
            result = entropy_normalize(scores[live], target=self.target, **self.solver_kw)
            out[live] = torch.log(result.probs).to(scores.dtype)
        return out
