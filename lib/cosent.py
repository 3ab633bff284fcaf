"""CoSENT: a ranking loss on cosine similarities (Su Jianlin, kexue.fm/archives/8847).

Notation: a batch holds ``B`` labelled sentence pairs; pair ``a`` has sentence vectors ``u_a, v_a``,
label ``y_a`` and score ``c_a = cos(u_a, v_a)``. With scale ``lam`` (the post uses 20)

    L = log(1 + sum_{a, b: y_a > y_b} exp(lam * (c_b - c_a)))

Pairs with a higher label should get a higher cosine; ties contribute nothing.

Contents
--------
* losses: :func:`cosent_loss` (sort + suffix log-sum-exp, O(B log B), analytic backward),
  :func:`cosent_loss_dense` (the O(B^2) masked matrix of the official code), :func:`cosent_loss_reference`
  (explicit double loop, for tests), :class:`CoSENTLoss` (sentence-transformers calling convention),
  the naive cosine losses, :func:`cosine_mse_loss`, :class:`SBERTHead` (softmax on
  ``[u; v; |u-v|]``).
* evaluation: :func:`spearman`, :func:`best_threshold`, :func:`comparison_mask`.
* synthetic mechanisms: :func:`make_synthetic_pairs`, :class:`PairEncoder`, :func:`linear_probe_accuracy`.
* real encoders (on :mod:`lib.encoders`): :func:`pooled_features` (frozen encoder, mean-pooled, cached),
  :class:`LinearTop` (the trainable top on those vectors, identity at the start), :class:`PooledEncoder`
  (a token encoder + mean pooling, trained end to end), :class:`CharEncoder` (a bag-of-characters baseline
  trained from scratch), :func:`encode_texts`, :func:`pad_ids`, :func:`compact_vocab`.
* training: :func:`pair_loss`, :func:`train_siamese` (one loop for every method and encoder, through
  :func:`lib.train.fit`), :func:`evaluate_spearman`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lib.checks import check_tensor

__all__ = [
    "METHODS", "pairwise_cos", "cosent_loss", "cosent_loss_dense", "cosent_loss_reference",
    "cosent_loss_from_embeddings", "CoSENTLoss", "naive_cosine_loss", "threshold_cosine_loss",
    "cosine_mse_loss", "SBERTHead", "comparison_mask", "spearman", "best_threshold",
    "make_synthetic_pairs", "PairEncoder", "linear_probe_accuracy", "PooledEncoder", "LinearTop",
    "encode_texts", "pooled_features", "pad_ids", "CharEncoder", "compact_vocab",
    "pair_loss", "train_siamese", "encode_in_chunks", "evaluate_spearman",
]

METHODS = ("cosent", "sbert", "cosine_mse", "naive_linear", "naive_square", "naive_threshold")


# ----------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------
def _check_scores_labels(scores: Any, labels: Any) -> tuple[Tensor, Tensor]:
    check_tensor("scores", scores, 1)
    check_tensor("labels", labels)
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating tensor, got dtype {scores.dtype}")
    labels = labels.reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have one entry per score ({scores.shape[0]}), got {labels.numel()}")
    _check_finite("scores", scores)
    if labels.dtype == torch.bool:
        labels = labels.int()
    _check_finite("labels", labels)
    return scores, labels


def _check_finite(name: str, x: Tensor) -> None:
    """Raise if a floating tensor holds NaN or +-inf (a diverged model or a damaged label file)."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/inf value(s) of {x.numel()}: check the model "
                         "for divergence or the data for missing values")


def _check_unit_targets(name: str, t: Tensor, binary_only: bool = False) -> None:
    """Targets documented as lying in [0, 1] (or being 0/1): reject e.g. raw 0-5 STS scores."""
    _check_finite(name, t)
    if not t.numel():
        return
    if binary_only and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{name} must be 0/1 (pass binarize_at= for graded scores), got values in "
                         f"[{float(t.min()):g}, {float(t.max()):g}]")
    if float(t.min()) < 0 or float(t.max()) > 1:
        raise ValueError(f"{name} must lie in [0, 1] (rescale e.g. 0-5 STS scores by label_range or binarize_at), "
                         f"got values in [{float(t.min()):g}, {float(t.max()):g}]")


def _check_scale(scale: Any) -> float:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0 or math.isinf(scale):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


# ----------------------------------------------------------------------------------------------
# cosine and the CoSENT loss
# ----------------------------------------------------------------------------------------------
def pairwise_cos(u: Tensor, v: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise cosine ``c_a = <u_a, v_a> / (|u_a| |v_a|)``; norms clamped at ``eps``, so a zero vector
    has cosine 0 with everything.

    u, v: ``[B, d]`` -> ``[B]`` in the inputs' dtype. Half precision (float16/bfloat16) is computed in
    float32, where neither the norms of large vectors overflow nor ``eps`` underflows.
    """
    check_tensor("u", u, 2, floating=True)
    check_tensor("v", v, 2, floating=True)
    if u.shape != v.shape:
        raise ValueError(f"u and v must have the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    out_dtype = torch.promote_types(u.dtype, v.dtype)
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    u, v = u.to(work), v.to(work)
    cos = (u * v).sum(-1) / (u.norm(dim=-1).clamp_min(eps) * v.norm(dim=-1).clamp_min(eps))
    return cos.to(out_dtype)


# exp(x - max) stays a normal float for x - max above these bounds (float32: e^-80 > 1.2e-38)
_SAFE_SPREAD = {torch.float32: 80.0, torch.float64: 700.0}


def _logcumsumexp(x: Tensor) -> Tensor:
    """``log(cumsum(exp(x)))`` along dim 0 for a finite ``[B]`` tensor.

    When the spread of ``x`` is small enough that no ``exp(x - max)`` underflows (always the case for
    cosines times 20), the shifted ``exp -> cumsum -> log`` is exact to rounding and several times faster
    than ``torch.logcumsumexp``; otherwise the latter is used.
    """
    hi, lo = x.max(), x.min()
    if float(hi - lo) < _SAFE_SPREAD.get(x.dtype, 0.0):
        return (x - hi).exp_().cumsum_(0).log_().add_(hi)
    return torch.logcumsumexp(x, 0)


class _SortedCoSENT(torch.autograd.Function):
    """The sort-based CoSENT loss with an analytic backward.

    Sort pairs by label. For sorted position ``a`` the strictly-higher labels form the suffix starting at
    ``hi_a = searchsorted(y, y_a, right=True)`` and the strictly-lower ones the prefix ending before
    ``lo_a = searchsorted(y, y_a, right=False)``. With ``s = lam * c``:

        t_a = s_a + LSE_{b >= hi_a}(-s_b),            L = log(1 + sum_a e^{t_a}) = LSE([0, t]).

    Gradient: ``dL/ds_x = e^{t_x - L} - e^{-s_x + LSE_{a < lo_x}(s_a) - L}``: pair x is pushed down by
    the more-similar pairs it violates (first term) and up by the less-similar ones (second term). Both
    exponents are log-weights of terms of ``Z = e^L``, so they are <= 0 and never overflow.
    """

    @staticmethod
    def forward(ctx, s: Tensor, labels: Tensor) -> Tensor:  # noqa: D401 - autograd signature
        y, order = labels.sort()
        s_sorted = s[order]
        hi = torch.searchsorted(y, y, right=True)
        neg_inf = s.new_full((1,), -math.inf)
        suffix = torch.cat((_logcumsumexp(-s_sorted.flip(0)).flip(0), neg_inf))
        t = s_sorted + suffix[hi]
        loss = torch.logsumexp(torch.cat((s.new_zeros(1), t)), 0)
        ctx.save_for_backward(s_sorted, t, y, order, loss)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # noqa: D401 - autograd signature
        s_sorted, t, y, order, loss = ctx.saved_tensors
        lo = torch.searchsorted(y, y, right=False)
        prefix = torch.cat((s_sorted.new_full((1,), -math.inf), _logcumsumexp(s_sorted)))
        g_sorted = torch.exp(t - loss) - torch.exp(prefix[lo] - s_sorted - loss)
        grad = torch.empty_like(g_sorted)
        grad[order] = g_sorted
        return grad * grad_out, None


def cosent_loss(scores: Tensor, labels: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT loss in O(B log B): sort by label, suffix log-sum-exp, analytic backward.

    scores: ``[B]`` similarities (cosines); labels: ``[B]`` any ordered dtype (ties allowed).
    Returns a scalar. Half-precision scores are computed in float32, float64 stays float64.
    ``L = log(1 + sum_{y_a > y_b} exp(scale * (c_b - c_a)))``; 0 when all labels are equal.
    """
    scores, labels = _check_scores_labels(scores, labels)
    scale = _check_scale(scale)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if scores.numel() == 0:
        return scores.sum() * 0.0
    return _SortedCoSENT.apply(scores * scale, labels.detach())


def comparison_mask(labels: Tensor) -> Tensor:
    """``M[a, b] = y_a < y_b``: pair ``a`` should be *less* similar than pair ``b``.

    labels: ``[B]`` -> bool ``[B, B]``. Strict: ties (and the diagonal) are never compared.
    """
    check_tensor("labels", labels, 1)
    return labels[:, None] < labels[None, :]


def cosent_loss_dense(scores: Tensor, labels: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT loss with the O(B^2) masked difference matrix, the form of the official code.

    ``D[a, b] = scale * (c_a - c_b)`` kept where ``y_a < y_b`` (else ``-inf``);
    ``L = logsumexp([0, vec(D)])``. scores, labels: ``[B]`` -> scalar. Memory ``[B, B]``.
    """
    scores, labels = _check_scores_labels(scores, labels)
    scale = _check_scale(scale)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    s = scores * scale
    diff = (s[:, None] - s[None, :]).masked_fill(~comparison_mask(labels), -math.inf)
    return torch.logsumexp(torch.cat((s.new_zeros(1), diff.reshape(-1))), 0)


def cosent_loss_reference(scores: Sequence[float] | Tensor, labels: Sequence[float] | Tensor,
                          scale: float = 20.0) -> float:
    """Explicit enumeration of every ordered couple ``y_a > y_b`` in pure Python (float64). Tests only."""
    c = [float(x) for x in scores]
    y = [float(x) for x in labels]
    if len(c) != len(y):
        raise ValueError(f"labels must have one entry per score ({len(c)}), got {len(y)}")
    terms = [scale * (c[b] - c[a]) for a in range(len(c)) for b in range(len(c)) if y[a] > y[b]]
    m = max([0.0] + terms)
    return m + math.log(math.exp(-m) + sum(math.exp(t - m) for t in terms))


def cosent_loss_from_embeddings(u: Tensor, v: Tensor, labels: Tensor, scale: float = 20.0) -> Tensor:
    """``cosent_loss(pairwise_cos(u, v), labels, scale)``; u, v: ``[B, d]``, labels ``[B]``."""
    return cosent_loss(pairwise_cos(u, v), labels, scale)


class CoSENTLoss(nn.Module):
    """CoSENT with the calling convention of ``sentence_transformers.losses.CoSENTLoss``.

    ``forward(sentence_features, labels)`` runs ``model`` on each feature dict (taking
    ``out["sentence_embedding"]`` when the model returns a dict) and calls
    :meth:`compute_loss_from_embeddings` with the two ``[B, d]`` embeddings.
    """

    def __init__(self, model: nn.Module | None = None, scale: float = 20.0,
                 similarity_fct: Callable[[Tensor, Tensor], Tensor] = pairwise_cos) -> None:
        super().__init__()
        self.model = model
        self.scale = _check_scale(scale)
        self.similarity_fct = similarity_fct

    def forward(self, sentence_features: Iterable[Any], labels: Tensor) -> Tensor:
        if self.model is None:
            raise ValueError("model is None: use compute_loss_from_embeddings or pass a model")
        embeddings = []
        for features in sentence_features:
            out = self.model(features)
            embeddings.append(out["sentence_embedding"] if isinstance(out, dict) else out)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: Sequence[Tensor], labels: Tensor) -> Tensor:
        """embeddings: two ``[B, d]`` tensors; labels ``[B]`` -> scalar loss."""
        if len(embeddings) != 2:
            raise ValueError(f"embeddings must hold 2 tensors (one per side of the pair), got {len(embeddings)}")
        return cosent_loss(self.similarity_fct(embeddings[0], embeddings[1]), labels, self.scale)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": getattr(self.similarity_fct, "__name__", "?")}


# ----------------------------------------------------------------------------------------------
# baselines: naive cosine losses and the SBERT head
# ----------------------------------------------------------------------------------------------
def _check_targets(scores: Tensor, targets: Tensor) -> Tensor:
    check_tensor("scores", scores, 1, floating=True)
    check_tensor("targets", targets)
    _check_finite("scores", scores)
    targets = targets.reshape(-1).to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    if targets.shape != scores.shape:
        raise ValueError(f"targets must have one entry per score ({scores.shape[0]}), got {targets.numel()}")
    _check_unit_targets("targets", targets)
    return targets


def naive_cosine_loss(scores: Tensor, targets: Tensor, kind: str = "linear") -> Tensor:
    """Regress the cosine directly; ``targets`` in {0, 1}, batch mean.

    linear: ``t (1 - c) + (1 - t)(1 + c)``  (targets +1 / -1);
    square: ``t (1 - c)^2 + (1 - t) c^2``  (targets 1 / 0).
    """
    t = _check_targets(scores, targets)
    if kind not in ("linear", "square"):
        raise ValueError(f"kind must be 'linear' or 'square', got {kind!r}")
    scores, t = _work_precision(scores), _work_precision(t)
    if kind == "linear":
        return (t * (1 - scores) + (1 - t) * (1 + scores)).mean()
    return (t * (1 - scores) ** 2 + (1 - t) * scores ** 2).mean()


def threshold_cosine_loss(scores: Tensor, targets: Tensor, tau: float = 0.7) -> Tensor:
    """The naive loss with a hinge on negatives: ``t (1 - c) + (1 - t) relu(c - tau)``: a negative is only pushed while ``c > tau``."""
    t = _check_targets(scores, targets)
    if not -1.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [-1, 1], got {tau}")
    scores, t = _work_precision(scores), _work_precision(t)
    return (t * (1 - scores) + (1 - t) * F.relu(scores - tau)).mean()


def cosine_mse_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """``mean((c - t)^2)``: sentence-transformers' ``CosineSimilarityLoss`` (targets scaled to [0, 1])."""
    t = _check_targets(scores, targets)
    return F.mse_loss(_work_precision(scores), _work_precision(t))


def _work_precision(x: Tensor) -> Tensor:
    """Half-precision tensors are computed in float32 (results in float32); others unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SBERTHead(nn.Module):
    """InferSent / Sentence-BERT classifier: ``logits = W [u; v; |u - v|] + b``, ``W: [K, 3d]``.

    forward(u ``[B, d]``, v ``[B, d]``) -> logits ``[B, K]``. Train with cross-entropy, predict with cos(u, v).
    """

    def __init__(self, dim: int, num_labels: int = 2) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        self.dim, self.num_labels = dim, num_labels
        self.classifier = nn.Linear(3 * dim, num_labels)

    @staticmethod
    def features(u: Tensor, v: Tensor) -> Tensor:
        """``[u; v; |u - v|]``: ``[B, 3d]``."""
        return torch.cat((u, v, (u - v).abs()), dim=-1)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        check_tensor("u", u, 2)
        check_tensor("v", v, 2)
        if u.shape != v.shape or u.shape[1] != self.dim:
            raise ValueError(f"u and v must both be [B, {self.dim}], got {tuple(u.shape)} and {tuple(v.shape)}")
        return self.classifier(self.features(u, v))


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def _rank_average(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties replaced by their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    ranks_sorted = np.empty(len(x))
    for lo, hi in zip(boundaries[:-1], boundaries[1:]):
        ranks_sorted[lo:hi] = (lo + hi + 1) / 2.0  # mean of lo+1 .. hi
    ranks = np.empty(len(x))
    ranks[order] = ranks_sorted
    return ranks


def spearman(pred: Any, gold: Any) -> float:
    """Spearman's rho: Pearson correlation of average ranks. pred, gold: ``[N]``. NaN if constant."""
    p = np.asarray(pred.detach().cpu() if isinstance(pred, Tensor) else pred, dtype=np.float64).ravel()
    g = np.asarray(gold.detach().cpu() if isinstance(gold, Tensor) else gold, dtype=np.float64).ravel()
    if p.shape != g.shape or p.size < 2:
        raise ValueError(f"pred and gold must have the same length >= 2, got {p.size} and {g.size}")
    for name, x in (("pred", p), ("gold", g)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} must be finite, got {int((~np.isfinite(x)).sum())} NaN/inf value(s): "
                             "check the model for divergence or the labels for missing values")
    rp, rg = _rank_average(p), _rank_average(g)
    rp, rg = rp - rp.mean(), rg - rg.mean()
    denom = math.sqrt(float((rp ** 2).sum() * (rg ** 2).sum()))
    return float((rp * rg).sum() / denom) if denom > 0 else float("nan")


def best_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """Exact sweep for the accuracy-maximising threshold: predict 1 iff ``score > threshold``.

    scores ``[N]`` floats, labels ``[N]`` in {0, 1}. Returns ``(threshold, accuracy)``; the threshold is a
    midpoint between consecutive distinct sorted scores (or below/above all of them).
    """
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64).ravel()
    y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels).ravel()
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"scores and labels must have the same non-zero length, got {s.size} and {y.size}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite, got {int((~np.isfinite(s)).sum())} NaN/inf value(s)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    order = np.argsort(s, kind="mergesort")
    s, y = s[order], y[order].astype(np.int64)
    # threshold just below index i: predict 1 for s[i:], i.e. correct = (#zeros in [:i]) + (#ones in [i:])
    zeros_before = np.r_[0, np.cumsum(1 - y)]
    ones_after = y.sum() - np.r_[0, np.cumsum(y)]
    valid = np.r_[True, s[1:] != s[:-1], True]  # can only cut between distinct values
    correct = np.where(valid, zeros_before + ones_after, -1)
    i = int(np.argmax(correct))
    if i == 0:
        thr = s[0] - 1.0
    elif i == len(s):
        thr = s[-1] + 1.0
    else:
        thr = (s[i - 1] + s[i]) / 2.0
    return float(thr), float(correct[i] / len(s))


# ----------------------------------------------------------------------------------------------
# synthetic pairs (mechanisms) and the toy encoder
# ----------------------------------------------------------------------------------------------
def make_synthetic_pairs(n: int, kind: str = "binary", lex_weight: float = 0.7, hard_frac: float = 0.8,
                         n_flip: int = 8, noise: float = 0.3, world_seed: int = 0, seed: int = 0,
                         dim: int = 64, k_sem: int = 16, k_lex: int = 16):
    """Pairs of "frozen pretrained features" mixing meaning ``s`` and wording ``l``.

    ``x = s A + lex_weight * l B + noise * eps`` with fixed maps ``A [k_sem, dim]``, ``B [k_lex, dim]``
    (drawn from ``world_seed``). kind:
      * ``binary``: positive (p=0.5): ``s' = s + 0.3 eps``, ``l' = 0.5 l + sqrt(.75) eps``; hard negative
        (fraction ``hard_frac`` of negatives): ``l' = l + 0.2 eps`` and ``n_flip`` coordinates of s resampled;
        random negative: independent.
      * ``nli``: 2 = positive, 1 = ``n_flip // 2`` flips with lower overlap, 0 = hard negative.
      * ``graded``: relatedness ``rho ~ U(-0.2, 1)``; label = round(5 clip(cos(s, s'), 0, 1)) in 0..5.
    Returns ``(x1 [n, dim], x2 [n, dim], labels [n] float, meta)``, meta["type"]: 0 pos / 1 hard / 2 random
    (binary), else the label.
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if kind not in ("binary", "nli", "graded"):
        raise ValueError(f"kind must be 'binary', 'nli' or 'graded', got {kind!r}")
    if not 0.0 <= hard_frac <= 1.0:
        raise ValueError(f"hard_frac must lie in [0, 1], got {hard_frac}")
    if not 0 <= n_flip <= k_sem:
        raise ValueError(f"n_flip must lie in [0, {k_sem}], got {n_flip}")
    gw = torch.Generator().manual_seed(world_seed)
    A = torch.randn(k_sem, dim, generator=gw) / math.sqrt(k_sem)
    B = torch.randn(k_lex, dim, generator=gw) / math.sqrt(k_lex)
    g = torch.Generator().manual_seed(10_000 + seed)
    rn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    s, l = rn(n, k_sem), rn(n, k_lex)

    def flip(s_: Tensor, count: int) -> Tensor:
        out = s_.clone()
        idx = torch.rand(n, k_sem, generator=g).argsort(1)[:, :count]
        out.scatter_(1, idx, rn(n, count) if count else out.gather(1, idx))
        return out

    if kind == "graded":
        rho = torch.rand(n, 1, generator=g) * 1.2 - 0.2
        s2 = rho * s + (1 - rho ** 2).clamp_min(0).sqrt() * rn(n, k_sem)
        rho_l = (rho + 0.3 * rn(n, 1)).clamp(-1, 1)
        l2 = rho_l * l + (1 - rho_l ** 2).clamp_min(0).sqrt() * rn(n, k_lex)
        labels = (5 * F.cosine_similarity(s, s2, dim=1).clamp(0, 1)).round()
        ptype = labels.clone()
    else:
        u = torch.rand(n, generator=g)
        pos = u < 0.5
        if kind == "binary":
            hard = (~pos) & (torch.rand(n, generator=g) < hard_frac)
            s_pos, l_pos = s + 0.3 * rn(n, k_sem), 0.5 * l + math.sqrt(0.75) * rn(n, k_lex)
            s_hard, l_hard = flip(s, n_flip), l + 0.2 * rn(n, k_lex)
            s_rand, l_rand = rn(n, k_sem), rn(n, k_lex)
            s2 = torch.where(pos[:, None], s_pos, torch.where(hard[:, None], s_hard, s_rand))
            l2 = torch.where(pos[:, None], l_pos, torch.where(hard[:, None], l_hard, l_rand))
            labels = pos.float()
            ptype = torch.where(pos, 0, torch.where(hard, 1, 2)).float()
        else:
            mid = (~pos) & (u < 0.75)
            s_pos, l_pos = s + 0.3 * rn(n, k_sem), 0.5 * l + math.sqrt(0.75) * rn(n, k_lex)
            s_mid, l_mid = flip(s, n_flip // 2), 0.3 * l + math.sqrt(0.91) * rn(n, k_lex)
            s_neg, l_neg = flip(s, n_flip), l + 0.2 * rn(n, k_lex)
            s2 = torch.where(pos[:, None], s_pos, torch.where(mid[:, None], s_mid, s_neg))
            l2 = torch.where(pos[:, None], l_pos, torch.where(mid[:, None], l_mid, l_neg))
            labels = torch.where(pos, 2.0, torch.where(mid, 1.0, 0.0))
            ptype = labels.clone()
    x1 = s @ A + lex_weight * l @ B + noise * rn(n, dim)
    x2 = s2 @ A + lex_weight * l2 @ B + noise * rn(n, dim)
    return x1, x2, labels, {"type": ptype}


class PairEncoder(nn.Module):
    """Toy "pretrained" encoder ``f(x) = W_skip x + mlp_scale * MLP(x)``, ``W_skip`` starts at the identity.

    forward(x ``[B, dim]``) -> ``[B, out]`` (out must equal dim for the identity start).
    """

    def __init__(self, dim: int = 64, hidden: int = 256, out: int = 64, mlp_scale: float = 0.1) -> None:
        super().__init__()
        if out != dim:
            raise ValueError(f"out must equal dim for an identity skip, got dim={dim}, out={out}")
        self.skip = nn.Linear(dim, out, bias=False)
        with torch.no_grad():
            self.skip.weight.copy_(torch.eye(dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))
        self.mlp_scale = mlp_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.mlp_scale * self.mlp(x)


def linear_probe_accuracy(features: Any, labels: Any, seed: int = 0) -> float:
    """Training accuracy of an L2-regularised logistic regression (scikit-learn, lbfgs). features ``[N, d]``."""
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"features must be [N, d] with N = len(labels) = {y.shape[0]}, got {X.shape}")
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(X, y)
    return float(clf.score(X, y))


# ----------------------------------------------------------------------------------------------
# real encoders: sentence vectors from lib.encoders
# ----------------------------------------------------------------------------------------------
def _trim_padding(ids: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """ids ``[B, L]`` right-padded -> (ids, attention mask) without the padding columns the whole batch shares."""
    mask = (ids != pad_id).long()
    width = max(int(mask.sum(1).max()) if ids.numel() else 1, 1)
    return ids[:, :width], mask[:, :width]


class PooledEncoder(nn.Module):
    """Sentence vectors from a token encoder: ``mean_pool(encoder(ids, mask), mask)``.

    ``encoder``: any module ``forward(input_ids [B, L], attention_mask [B, L]) -> [B, L, D]`` (a
    :class:`lib.encoders.PretrainedEncoder` fine-tuned end to end, or a
    :class:`lib.encoders.ScratchCharEncoder`). forward(ids ``[B, L]``, right-padded with ``pad_id``) -> ``[B, D]``.
    """

    def __init__(self, encoder: nn.Module, pad_id: int = 0) -> None:
        super().__init__()
        self.encoder, self.pad_id = encoder, int(pad_id)

    def forward(self, ids: Tensor) -> Tensor:
        from lib.encoders import mean_pool

        check_tensor("ids", ids, 2)
        ids, mask = _trim_padding(ids, self.pad_id)
        return mean_pool(self.encoder(ids, mask), mask)


class LinearTop(nn.Module):
    """The trainable top on frozen sentence vectors: ``f(x) = W x + b`` with ``W = I, b = 0`` at the start,
    so the untrained top reproduces the frozen encoder exactly (its zero-shot score).

    forward(x ``[B, D]``) -> ``[B, D]``. Mean pooling is linear, so this equals a token-wise linear layer
    applied before the pooling."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 2, floating=True)
        return self.linear(x)


def encode_texts(name: str, texts: Sequence[str], max_length: int = 128) -> list[list[int]]:
    """Token ids (special tokens included, truncated to ``max_length``) of each text with encoder ``name``'s
    tokenizer (``lib.encoders.tokenizer``)."""
    from lib import encoders as enc

    if isinstance(texts, str) or not len(texts) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    return enc.tokenizer(name)(list(texts), truncation=True, max_length=max_length)["input_ids"]


def pooled_features(name: str, texts: Sequence[str], k: int, max_length: int = 128) -> Tensor:
    """Mean-pooled hidden states after ``k`` layer applications of encoder ``name`` for each text:
    ``[N, D]`` float32, computed once with :func:`lib.encoders.compute_features` and cached on disk
    (key: encoder, k, the token ids, the code of lib.encoders and of this function)."""
    from lib import encoders as enc
    from lib.utils import cached

    ids = encode_texts(name, texts, max_length)

    def compute() -> Tensor:
        feats = enc.compute_features(enc.load_encoder(name, "cpu"), ids, k)
        return torch.stack([f.float().mean(0) for f in feats])

    config = {"encoder": name, "k": int(k), "ids": enc.sequences_digest(ids), "n": len(ids)}
    return cached(f"pooled_{name}_{int(k)}", config, compute, code=(enc, pooled_features))


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> Tensor:
    """Right-pad token-id lists into ``[N, max_len]`` (long)."""
    if not len(sequences) or any(len(s) == 0 for s in sequences):
        raise ValueError("sequences must be a non-empty list of non-empty id lists")
    out = torch.full((len(sequences), max(len(s) for s in sequences)), int(pad_id), dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


class CharEncoder(nn.Module):
    """Small from-scratch character encoder: embeddings + learned positions, an optional residual
    convolution over ``conv_kernel`` neighbouring characters (``h + GELU(conv(h))``, makes it order-aware),
    ``num_layers`` Pre-LN transformer layers, LayerNorm and masked mean pooling.
    forward(ids ``[B, L]``) -> ``[B, dim]``. With ``conv_kernel=0, num_layers=0`` it is a bag of characters."""

    def __init__(self, vocab_size: int, dim: int = 128, num_layers: int = 1, num_heads: int = 4,
                 ffn: int = 256, max_len: int = 64, pad_id: int = 0, dropout: float = 0.1,
                 conv_kernel: int = 0) -> None:
        super().__init__()
        if vocab_size <= 0 or dim % num_heads:
            raise ValueError(f"vocab_size must be > 0 and dim divisible by num_heads, got vocab_size={vocab_size}, "
                             f"dim={dim}, num_heads={num_heads}")
        self.pad_id, self.dim, self.max_len = pad_id, dim, max_len
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.tok.weight[pad_id].zero_()
        layer = nn.TransformerEncoderLayer(dim, num_heads, ffn, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        if conv_kernel < 0 or (conv_kernel and conv_kernel % 2 == 0):
            raise ValueError(f"conv_kernel must be 0 or an odd positive int, got {conv_kernel}")
        self.conv = nn.Conv1d(dim, dim, conv_kernel, padding=conv_kernel // 2) if conv_kernel else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:
        from lib.encoders import mean_pool

        check_tensor("ids", ids, 2)
        if ids.shape[1] > self.max_len:
            raise ValueError(f"ids must have at most max_len={self.max_len} columns, got {ids.shape[1]}")
        ids, mask = _trim_padding(ids, self.pad_id)
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        if self.conv is not None:
            h = h.masked_fill(~mask.bool()[..., None], 0.0)  # padding must look like the conv's own zero padding
            h = h + F.gelu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        if self.layers is not None:
            h = self.layers(h, src_key_padding_mask=~mask.bool())
        return mean_pool(self.norm(h), mask)


def compact_vocab(*ids: Tensor, pad_id: int = 0) -> tuple[list[Tensor], int]:
    """Renumber token ids to ``0..V-1`` over the ids that occur (``pad_id`` -> 0), V = #distinct + 1.

    A from-scratch encoder only ever updates the embedding rows of tokens it sees, so shrinking the table to
    the occurring ids changes nothing but the cost of dense embedding gradients and Adam updates.
    ids: integer tensors ``[N_i, L]`` of non-negative ids -> (renumbered tensors, V).
    """
    if not ids:
        raise ValueError("ids: pass at least one tensor")
    for i, x in enumerate(ids):
        check_tensor(f"ids[{i}]", x, 2)
        if x.is_floating_point() or x.dtype == torch.bool:
            raise TypeError(f"ids[{i}] must be an integer tensor, got dtype {x.dtype}")
        if x.numel() and int(x.min()) < 0:
            raise ValueError(f"ids[{i}] must hold non-negative token ids (pad with pad_id={pad_id}, not -1), "
                             f"got minimum {int(x.min())}")
    used = torch.unique(torch.cat([x.reshape(-1) for x in ids]))
    used = used[used != pad_id]
    table = torch.zeros(int(max(int(x.max()) for x in ids if x.numel())) + 1 if used.numel() else 1, dtype=torch.long)
    table[used] = torch.arange(1, used.numel() + 1)
    return [table[x] for x in ids], int(used.numel()) + 1


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def _check_label_range(label_range: Any) -> tuple[float, float]:
    if (not isinstance(label_range, (tuple, list)) or len(label_range) != 2
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in label_range)):
        raise ValueError(f"label_range must be a pair of finite numbers (lo, hi), got {label_range!r}")
    lo, hi = float(label_range[0]), float(label_range[1])
    if not hi > lo:
        raise ValueError(f"label_range must have hi > lo to rescale labels to [0, 1] (all-equal labels give "
                         f"no target range), got {label_range!r}")
    return lo, hi


def pair_loss(method: str, u: Tensor, v: Tensor, labels: Tensor, *, head: SBERTHead | None = None,
              scale: float = 20.0, tau: float = 0.7, binarize_at: float | None = None,
              label_range: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor | None]:
    """Loss of one batch for ``method`` in :data:`METHODS`. u, v ``[B, d]``, labels ``[B]``.

    cosent uses the raw (ordered) labels; sbert / naive_* use binary targets ``labels > binarize_at``
    (or the labels themselves when ``binarize_at`` is None, then they must be 0/1); cosine_mse regresses
    ``cos`` on the labels rescaled from ``label_range`` (``hi > lo``) to [0, 1]. Returns ``(loss, logits or None)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    binary = labels if binarize_at is None else (labels > binarize_at).to(labels.dtype)
    if method == "sbert":
        if head is None:
            raise ValueError("method 'sbert' needs head=SBERTHead(...)")
        _check_unit_targets("labels", binary, binary_only=True)
        logits = head(u, v)
        return F.cross_entropy(logits, binary.long()), logits
    c = pairwise_cos(u, v)
    if method == "cosent":
        return cosent_loss(c, labels, scale), None
    if method == "cosine_mse":
        lo, hi = _check_label_range(label_range)
        return cosine_mse_loss(c, (labels - lo) / (hi - lo)), None
    if method == "naive_threshold":
        return threshold_cosine_loss(c, binary, tau), None
    return naive_cosine_loss(c, binary, method.split("_")[1]), None


@torch.no_grad()
def encode_in_chunks(encoder: nn.Module, x: Tensor, chunk: int = 512) -> Tensor:
    """Eval-mode embeddings of ``x [N, ...]`` in chunks -> ``[N, d]`` (restores the training mode).

    Padded token ids (when ``encoder`` has a ``pad_id``) are processed in order of length, so each chunk is
    trimmed to little padding."""
    was = encoder.training
    encoder.eval()
    lengths = _lengths(encoder, x)
    order = lengths.argsort(stable=True) if lengths is not None else torch.arange(x.shape[0])
    parts = [encoder(x[order[i:i + chunk]]) for i in range(0, x.shape[0], chunk)]
    out = torch.empty(x.shape[0], parts[0].shape[1], dtype=parts[0].dtype)
    out[order] = torch.cat(parts).cpu()
    encoder.train(was)
    return out


def evaluate_spearman(encoder: nn.Module, data: tuple[Tensor, Tensor, Tensor], chunk: int = 512) -> float:
    """Spearman of ``cos(f(x1), f(x2))`` against the labels over the whole set."""
    x1, x2, y = data
    return spearman(pairwise_cos(encode_in_chunks(encoder, x1, chunk), encode_in_chunks(encoder, x2, chunk)), y)


def _lengths(encoder: nn.Module, x: Any) -> Tensor | None:
    """Token counts per row when ``x`` holds padded integer ids and ``encoder`` has a ``pad_id``, else None."""
    pad_id = getattr(encoder, "pad_id", None)
    if isinstance(x, Tensor) and not x.is_floating_point() and pad_id is not None and x.dim() == 2:
        return (x != pad_id).sum(1)
    return None


def train_siamese(encoder: nn.Module, method: str, train: tuple[Tensor, Tensor, Tensor],
                  evals: dict[str, tuple[Tensor, Tensor, Tensor]] | None = None, *, epochs: int = 1,
                  batch_size: int = 32, lr: float = 1e-3, scale: float = 20.0, tau: float = 0.7,
                  binarize_at: float | None = None, label_range: tuple[float, float] | None = None,
                  num_labels: int = 2, seed: int = 0, weight_decay: float = 0.0, eval_chunk: int = 512,
                  group_by_length: bool = False) -> dict:
    """Train ``encoder`` (siamese: both sides share it) with ``method`` through :func:`lib.train.fit`.

    train: ``(x1 [N, ...], x2 [N, ...], labels [N])``; ``encoder(x[idx]) -> [B, d]``. Each epoch's batches
    come from :func:`lib.train.length_batches` seeded with ``(seed, epoch)``: random batches, or, with
    ``group_by_length`` (padded token ids and an ``encoder.pad_id``), batches of similar length. Before
    training and after every epoch the Spearman of cosines on each set of ``evals`` is logged, with the
    epoch's mean loss and the SBERT classifier's running training accuracy. Models and batches live on
    ``lib.utils.device()``. Returns ``{"history": [dict(step, epoch, loss, acc, <set>...)], "steps",
    "seconds", "head"}``.
    """
    from lib.train import fit, length_batches
    from lib.utils import device

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x1, x2, y = train
    for name, x in (("train[0]", x1), ("train[1]", x2), ("train[2]", y)):
        check_tensor(name, x)
    n = y.shape[0]
    if x1.shape[0] != n or x2.shape[0] != n:
        raise ValueError(f"train tensors must share their first dimension, got {x1.shape[0]}, {x2.shape[0]}, {n}")
    if method == "cosine_mse":
        label_range = _check_label_range((float(y.min()), float(y.max())) if label_range is None else label_range)
    dev = device()
    torch.manual_seed(seed)
    encoder.to(dev)
    head = None
    params = list(encoder.parameters())
    if method == "sbert":
        dim = encode_in_chunks(encoder, x1[:2].to(dev)).shape[1]
        head = SBERTHead(dim, num_labels).to(dev)
        params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    lengths = [0] * n
    if group_by_length:
        l1, l2 = _lengths(encoder, x1), _lengths(encoder, x2)
        if l1 is None or l2 is None:
            raise ValueError("group_by_length needs padded integer token ids and an encoder with a pad_id")
        lengths = torch.maximum(l1, l2).tolist()
    evals = evals or {}
    acc = {"correct": 0, "seen": 0}

    def evaluate(_epoch: int | None = None) -> dict:
        out = {"acc": acc["correct"] / acc["seen"] if acc["seen"] else float("nan")}
        out.update({name: evaluate_spearman(encoder, tuple(t.to(dev) for t in data), eval_chunk)
                    for name, data in evals.items()})
        acc["correct"] = acc["seen"] = 0
        encoder.train()
        return out

    def batches(epoch: int) -> list[list[int]]:
        return length_batches(lengths, batch_size=batch_size, seed=seed * 100_003 + epoch)

    def step(idx: list[int]) -> float:
        t = torch.as_tensor(idx)
        u, v, labels = encoder(x1[t].to(dev)), encoder(x2[t].to(dev)), y[t].to(dev)
        loss, logits = pair_loss(method, u, v, labels, head=head, scale=scale, tau=tau,
                                 binarize_at=binarize_at, label_range=label_range or (0.0, 1.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if logits is not None:
            target = labels if binarize_at is None else (labels > binarize_at).to(labels.dtype)
            acc["correct"] += int((logits.argmax(1) == target.long()).sum())
            acc["seen"] += len(idx)
        return loss.item()

    history = [{"step": 0, "epoch": 0, "loss": float("nan"), **evaluate()}]
    fitted = fit(step, batches, epochs, evaluate=evaluate, desc=method, progress=False)
    per_epoch = len(fitted.losses) // len(fitted.metrics)
    for e, m in enumerate(fitted.metrics):
        history.append({"step": per_epoch * (e + 1), "epoch": e + 1, **{k: v for k, v in m.items() if k != "epoch"}})
    return {"history": history, "steps": len(fitted.losses), "seconds": fitted.seconds, "head": head}
