"""GlobalPointer, Efficient GlobalPointer, RoPE and multi-label categorical cross-entropy.

Shared by the GPLinker relation chapter (`lib.gplinker`) and the GPLinker event chapter (`lib.events`).

A GlobalPointer is a *token-pair classifier*: for every head (class) ``alpha`` and every pair of
positions ``(i, j)`` it produces a score

.. math::  s_\\alpha(i, j) = \\frac{(\\mathcal R_i q_{i,\\alpha})^\\top (\\mathcal R_j k_{j,\\alpha})}{\\sqrt d}

where ``q``/``k`` are linear projections of the encoder states and ``R_i`` is the rotary position
embedding (RoPE, interleaved-pair layout as in bert4keras). The pair ``(i, j)`` is predicted for class
``alpha`` iff ``s_alpha(i, j) > 0``; training uses the multi-label "softmax + cross-entropy"

.. math::  \\mathcal L = \\log\\Big(1 + \\sum_{i\\in\\mathcal N} e^{s_i}\\Big)
                      + \\log\\Big(1 + \\sum_{j\\in\\mathcal P} e^{-s_j}\\Big)

over the flattened ``L*L`` cells of each head (kexue.fm/archives/7359, /8373, /8877, /8888).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "GlobalPointer",
    "rope",
    "rope_matrix",
    "gp_param_count",
    "pair_mask",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
    "pairs_to_flat_indices",
    "globalpointer_loss",
    "efficient_globalpointer_loss",
    "check_gold_unmasked",
]


def _work(x: Tensor) -> Tensor:
    """Half-precision logits (float16, bfloat16) are upcast to float32: sums over L^2 cells overflow or
    lose every small term in 16 bits. float32 and float64 are used as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ----------------------------------------------------------------------------------------- RoPE
def _check_tensor(x: object, name: str, ndim_min: int = 1) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimensions, got shape {tuple(x.shape)}")


def rope(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding along the position axis, interleaved-pair layout (bert4keras).

    x: ``[..., L, d]`` with even ``d``; position ``i`` is the index along axis ``-2`` (0-based).
    With :math:`\\theta_m = \\text{base}^{-2m/d}` the pair :math:`(x_{2m}, x_{2m+1})` at position ``i``
    is rotated by the angle :math:`i\\theta_m`. Property: :math:`\\mathcal R_i^\\top \\mathcal R_j =
    \\mathcal R_{j-i}`, so :math:`(\\mathcal R_i q)^\\top(\\mathcal R_j k)` depends on ``j - i`` only.
    Returns a tensor of the same shape and dtype.
    """
    _check_tensor(x, "x", 2)
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"x: the last dimension (head size) must be even, got {d}")
    if not base > 0:
        raise ValueError(f"base must be > 0, got {base}")
    length = x.shape[-2]
    m = torch.arange(d // 2, dtype=torch.float64, device=x.device)
    theta = base ** (-2.0 * m / d)  # [d/2]
    angles = torch.arange(length, dtype=torch.float64, device=x.device)[:, None] * theta  # [L, d/2]
    cos = angles.cos().to(x.dtype).repeat_interleave(2, dim=-1)  # [L, d]
    sin = angles.sin().to(x.dtype).repeat_interleave(2, dim=-1)
    # rotate_every_two: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)
    x2 = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    return x * cos + x2 * sin


def rope_matrix(position: int, d: int, base: float = 10000.0) -> Tensor:
    """Explicit ``[d, d]`` (float64) rotation matrix :math:`\\mathcal R_i` with ``rope(x)[i] = R_i @ x[i]``."""
    if not isinstance(position, int):
        raise TypeError(f"position must be an int, got {type(position).__name__}")
    if not isinstance(d, int) or d <= 0 or d % 2:
        raise ValueError(f"d must be a positive even int, got {d!r}")
    r = torch.zeros(d, d, dtype=torch.float64)
    for m in range(d // 2):
        a = position * base ** (-2.0 * m / d)
        c, s = math.cos(a), math.sin(a)
        r[2 * m, 2 * m], r[2 * m, 2 * m + 1] = c, -s
        r[2 * m + 1, 2 * m], r[2 * m + 1, 2 * m + 1] = s, c
    return r


# ---------------------------------------------------------------------------------------- masks
def pair_mask(attention_mask: Tensor | None, length: int, *, tril_mask: bool,
              device: torch.device | None = None) -> Tensor | None:
    """Boolean ``[B or 1, 1, L, L]`` mask of cells to *discard* (True = masked).

    A cell ``(i, j)`` is masked when position ``i`` or ``j`` is padding (``attention_mask == 0``)
    or, with ``tril_mask``, when ``j < i`` (strict lower triangle). Returns None if nothing is masked.
    """
    masked = None
    if attention_mask is not None:
        keep = attention_mask.to(torch.bool)
        masked = ~(keep[:, None, :, None] & keep[:, None, None, :])  # [B, 1, L, L]
    if tril_mask:
        tri = torch.ones(length, length, dtype=torch.bool, device=device).tril(-1)[None, None]
        masked = tri if masked is None else masked | tri
    return masked


# ----------------------------------------------------------------------------- GlobalPointer
class GlobalPointer(nn.Module):
    """GlobalPointer (standard or Efficient) producing token-pair logits.

    Standard (kexue.fm/archives/8373): one Dense ``D -> num_heads * 2 * head_size``; per head the first
    ``head_size`` channels are ``q``, the last ``head_size`` are ``k``;
    :math:`s_\\alpha(i,j) = (\\mathcal R_i q_{i\\alpha})^\\top(\\mathcal R_j k_{j\\alpha})/\\sqrt d`.

    Efficient (kexue.fm/archives/8877, ``efficient=True``): a shared Dense ``D -> 2 * head_size`` gives
    :math:`u_i`, with ``q = u[0::2]``, ``k = u[1::2]``; a per-type Dense ``2 d -> 2 h`` on the
    *pre-RoPE* ``u`` gives ``c``, and
    :math:`s_\\alpha(i,j) = (\\mathcal R_i q_i)^\\top(\\mathcal R_j k_j)/\\sqrt d + \\tfrac12 c_{i,2\\alpha+1}
    + \\tfrac12 c_{j,2\\alpha}`.

    Args:
        hidden_size: encoder width ``D``.
        num_heads: number of classes ``h`` (entity types, predicates, ...).
        head_size: ``d`` (64 in the post's code).
        rope: apply RoPE to ``q`` and ``k`` (on for entity spans, off for GPLinker's link matrices).
        tril_mask: mask the strict lower triangle ``j < i`` (spans need ``i <= j``; links do not).
        efficient: Efficient GlobalPointer instead of the standard one.
        bias: use biases in the Dense layers (the reference code does).

    forward(hidden_states ``[B, L, D]``, attention_mask ``[B, L]`` (1 keep / 0 pad) or None)
    -> logits ``[B, num_heads, L, L]``; masked cells hold ``torch.finfo(dtype).min`` (via masked_fill).
    """

    def __init__(self, hidden_size: int, num_heads: int, head_size: int = 64, *, rope: bool = True,
                 tril_mask: bool = True, efficient: bool = False, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("head_size", head_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if rope and head_size % 2:
            raise ValueError(f"head_size must be even when rope=True, got {head_size}")
        self.hidden_size, self.num_heads, self.head_size = hidden_size, num_heads, head_size
        self.rope, self.tril_mask, self.efficient = bool(rope), bool(tril_mask), bool(efficient)
        if efficient:
            self.p_dense = nn.Linear(hidden_size, 2 * head_size, bias=bias)
            self.q_dense = nn.Linear(2 * head_size, 2 * num_heads, bias=bias)
        else:
            self.dense = nn.Linear(hidden_size, num_heads * 2 * head_size, bias=bias)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_size={self.head_size}, "
                f"rope={self.rope}, tril_mask={self.tril_mask}, efficient={self.efficient}")

    def _check(self, hidden_states: Tensor, attention_mask: Tensor | None) -> None:
        _check_tensor(hidden_states, "hidden_states", 3)
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden_states must have shape [B, L, {self.hidden_size}], "
                             f"got {tuple(hidden_states.shape)}")
        if attention_mask is not None:
            _check_tensor(attention_mask, "attention_mask", 2)
            if tuple(attention_mask.shape) != tuple(hidden_states.shape[:2]):
                raise ValueError(f"attention_mask must have shape [B, L] = {tuple(hidden_states.shape[:2])}, "
                                 f"got {tuple(attention_mask.shape)}")

    def efficient_parts(self, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""The three terms of an Efficient GlobalPointer's unmasked score
        :math:`s_\alpha(i, j) = g(i, j) + r_\alpha(i) + c_\alpha(j)`: the shared ``g [B, L, L]``
        (:math:`q_i^\top k_j/\sqrt d`), ``row [B, h, L]`` (:math:`r_\alpha(i)`) and ``col [B, h, L]``
        (:math:`c_\alpha(j)`). Callers that need less than all ``h L^2`` scores combine them themselves."""
        if not self.efficient:
            raise ValueError("efficient_parts: only an Efficient GlobalPointer (efficient=True) has these terms")
        u = self.p_dense(hidden_states)  # [B, L, 2d]
        q, k = u[..., ::2], u[..., 1::2]  # [B, L, d]
        if self.rope:
            q, k = rope(q), rope(k)
        shared = torch.einsum("bmd,bnd->bmn", q, k) / math.sqrt(self.head_size)
        c = self.q_dense(u).transpose(1, 2) / 2  # [B, 2h, L]
        return shared, c[:, 1::2], c[:, 0::2]

    def scores(self, hidden_states: Tensor) -> Tensor:
        """Unmasked pair scores ``[B, num_heads, L, L]`` (no padding / triangle mask)."""
        d = self.head_size
        if self.efficient:
            shared, row, col = self.efficient_parts(hidden_states)
            return shared[:, None] + col[:, :, None, :] + row[:, :, :, None]
        b, length, _ = hidden_states.shape
        u = self.dense(hidden_states).view(b, length, self.num_heads, 2 * d).transpose(1, 2)  # [B, h, L, 2d]
        q, k = u[..., :d], u[..., d:]
        if self.rope:
            q, k = rope(q), rope(k)
        return torch.einsum("bhmd,bhnd->bhmn", q, k) / math.sqrt(d)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        self._check(hidden_states, attention_mask)
        logits = self.scores(hidden_states)
        masked = pair_mask(attention_mask, hidden_states.shape[1], tril_mask=self.tril_mask,
                           device=hidden_states.device)
        if masked is not None:
            logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
        return logits


def gp_param_count(hidden_size: int, num_heads: int, head_size: int = 64, *, efficient: bool = False,
                   bias: bool = True) -> int:
    """Closed-form parameter count of a GlobalPointer.

    standard: :math:`D\\cdot 2dh + 2dh` ; efficient: :math:`(D\\cdot 2d + 2d) + (2d\\cdot 2h + 2h)`
    (the ``+`` terms are the biases and vanish with ``bias=False``).
    """
    for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("head_size", head_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    D, h, d = hidden_size, num_heads, head_size
    if efficient:
        return D * 2 * d + 2 * d * 2 * h + (2 * d + 2 * h) * bias
    return D * 2 * d * h + 2 * d * h * bias


# --------------------------------------------------------------------------------------- losses
def _log1p_sum_exp(scores: Tensor, exclude: Tensor) -> Tensor:
    """:math:`\\log(1 + \\sum_{c \\notin \\text{exclude}} e^{s_c})` over the last axis, computed stably."""
    lse = torch.logsumexp(scores.masked_fill(exclude, float("-inf")), dim=-1)
    return torch.logaddexp(lse, torch.zeros_like(lse))


def multilabel_categorical_crossentropy(labels: Tensor, logits: Tensor) -> Tensor:
    """Dense multi-label categorical cross-entropy (kexue.fm/archives/7359), one value per row.

    labels: multi-hot ``[..., C]`` (0/1, any dtype); logits: ``[..., C]`` -> loss ``[...]``:

    .. math:: \\log(1+\\textstyle\\sum_{\\mathcal N} e^{s_i}) + \\log(1+\\sum_{\\mathcal P} e^{-s_j}).

    Computed with ``logsumexp`` on ``masked_fill(-inf)`` copies, so it is exact for extreme logits
    (masked cells at ``finfo.min`` simply drop out).
    """
    _check_tensor(labels, "labels")
    _check_tensor(logits, "logits")
    if labels.shape != logits.shape:
        raise ValueError(f"labels must have the shape of logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")
    if ((labels != 0) & (labels != 1)).any():
        raise ValueError("labels must be multi-hot (0/1 only), got other values")
    logits = _work(logits)
    pos = labels.to(torch.bool)
    neg_term = _log1p_sum_exp(logits, pos)
    pos_term = _log1p_sum_exp(-logits, ~pos)
    return neg_term + pos_term


def sparse_multilabel_categorical_crossentropy(label_indices: Tensor, logits: Tensor, *, pad_index: int = -1,
                                               method: str = "mask", eps: float = 1e-7) -> Tensor:
    """Sparse multi-label categorical cross-entropy from positive class indices only (post 8888, Eq. 11).

    label_indices: ``[..., K]`` int, positive class indices in ``[0, C)``, padded with ``pad_index``;
    repeated indices count once (a *set* of positives). logits: ``[..., C]`` -> loss ``[...]``, equal to
    :func:`multilabel_categorical_crossentropy` with the corresponding multi-hot labels.

    The positive term :math:`\\log(1+\\sum_{\\mathcal P} e^{-s})` only needs the gathered positive logits.
    For the negative term, with :math:`a=\\log(1+\\sum_{\\mathcal A} e^{s})` and
    :math:`b=\\log\\sum_{\\mathcal P} e^{s}`:

    * ``method="subtract"`` — the post's Eq. 11, :math:`a + \\log(1 - e^{b-a})` with
      :math:`1-e^{b-a}` clipped to ``[eps, 1]`` (as in bert4keras). Suffers cancellation when positives
      dominate (bert4keras #436 NaN / #500 negative loss; clipping trades those for a bias).
    * ``method="mask"`` (default) — :math:`\\log(1+\\sum_{\\mathcal N} e^{s})` directly, from a copy of
      the logits with the positive entries scattered to ``-inf``: exact, never negative, no NaN.
      Its extra memory is one logits-sized copy, the same as the concatenation Eq. 11 needs.

    float16 / bfloat16 logits are computed in float32 (the loss comes back in float32).
    """
    _check_tensor(label_indices, "label_indices")
    _check_tensor(logits, "logits")
    if label_indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"label_indices must be an integer tensor, got {label_indices.dtype}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")
    if label_indices.shape[:-1] != logits.shape[:-1]:
        raise ValueError(f"label_indices [..., K] and logits [..., C] must share the leading shape; got "
                         f"{tuple(label_indices.shape)} and {tuple(logits.shape)}")
    if method not in ("mask", "subtract"):
        raise ValueError(f"method must be 'mask' or 'subtract', got {method!r}")
    logits = _work(logits)
    num_classes = logits.shape[-1]
    if label_indices.shape[-1] == 0:  # no positives anywhere
        zero = torch.zeros_like(logits[..., 0])
        return torch.logaddexp(torch.logsumexp(logits, dim=-1), zero)
    idx = label_indices.long()
    valid = idx != pad_index
    if (valid & ((idx < 0) | (idx >= num_classes))).any():
        raise ValueError(f"label_indices must lie in [0, {num_classes}) or equal pad_index={pad_index}")
    # de-duplicate: sort, then a value equal to its left neighbour is a repeat
    idx = torch.where(valid, idx, torch.full_like(idx, -1))
    idx, _ = idx.sort(dim=-1)
    valid = idx >= 0
    if idx.shape[-1] > 1:
        repeat = torch.zeros_like(valid)
        repeat[..., 1:] = idx[..., 1:] == idx[..., :-1]
        valid = valid & ~repeat
    safe = idx.clamp(min=0)
    pos_logits = logits.gather(-1, safe)  # [..., K]
    pos_term = _log1p_sum_exp(-pos_logits, ~valid)
    if method == "mask":
        # -inf at the positives: count the valid indices per cell (scatter_add is exact with repeats and
        # padding, which add 0), then mask. Gradients flow to every negative logit exactly once.
        counts = torch.zeros(logits.shape, dtype=torch.int32, device=logits.device)
        is_positive = counts.scatter_add_(-1, safe, valid.to(torch.int32)) > 0
        neg_scores = logits.masked_fill(is_positive, float("-inf"))
        neg_term = torch.logaddexp(torch.logsumexp(neg_scores, dim=-1), logits.new_zeros(()))
        return neg_term + pos_term
    a = torch.logaddexp(torch.logsumexp(logits, dim=-1), logits.new_zeros(()))
    b = torch.logsumexp(pos_logits.masked_fill(~valid, float("-inf")), dim=-1)
    aux = torch.clamp(1 - torch.exp(b - a), eps, 1)
    return a + torch.log(aux) + pos_term


def pairs_to_flat_indices(pairs: Tensor, length: int, *, pad_index: int = -1) -> Tensor:
    """Map ``(i, j)`` cell pairs ``[..., P, 2]`` to flat indices ``i * L + j`` ``[..., P]``.

    A pair with a negative coordinate is padding and maps to ``pad_index``. ``length`` must be the
    padded length ``L`` of the logits being flattened (not a sentence's own length).
    """
    _check_tensor(pairs, "pairs", 2)
    if pairs.is_floating_point() or pairs.is_complex() or pairs.dtype == torch.bool:
        raise TypeError(f"pairs must be an integer tensor of cell positions, got dtype {pairs.dtype} "
                        "(float positions would be truncated)")
    if pairs.shape[-1] != 2:
        raise ValueError(f"pairs must have shape [..., P, 2], got {tuple(pairs.shape)}")
    if not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive int, got {length!r}")
    pairs = pairs.long()
    pad = (pairs < 0).any(-1)
    if ((pairs >= length) & ~pad[..., None]).any():
        raise ValueError(f"pairs must have coordinates < length={length}")
    flat = pairs[..., 0] * length + pairs[..., 1]
    return flat.masked_fill(pad, pad_index)


def globalpointer_loss(logits: Tensor, pairs: Tensor) -> Tensor:
    """Sparse GlobalPointer loss: sum over heads, mean over the batch (the reference reduction).

    logits: ``[B, C, L, L]``; pairs: ``[B, C, P, 2]`` int, positive cells ``(i, j)``, padded with ``-1``.
    Returns a scalar.
    """
    _check_tensor(logits, "logits", 4)
    if logits.dim() != 4 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must have shape [B, C, L, L], got {tuple(logits.shape)}")
    if pairs.dim() != 4 or tuple(pairs.shape[:2]) != tuple(logits.shape[:2]) or pairs.shape[-1] != 2:
        raise ValueError(f"pairs must have shape [B, C, P, 2] with B, C = {tuple(logits.shape[:2])}, "
                         f"got {tuple(pairs.shape)}")
    b, c, length, _ = logits.shape
    flat = pairs_to_flat_indices(pairs, length)
    check_gold_unmasked(flat, logits.reshape(b, c, length * length), "pairs")
    loss = sparse_multilabel_categorical_crossentropy(flat, logits.reshape(b, c, length * length))
    return loss.sum(dim=1).mean()


def _log1p_sum_exp_parts(*parts: Tensor) -> Tensor:
    """:math:`\\log(1 + \\sum e^{x})` over the last axis of the concatenated ``parts``.

    A zero is prepended, so the result is finite (and its gradient defined) even when every entry is
    ``-inf`` - an all-padding row, or a class without positives."""
    first = parts[0]
    return torch.logsumexp(torch.cat([first.new_zeros(*first.shape[:-1], 1), *parts], dim=-1), dim=-1)


def _unique_cells(flat: Tensor, empty: int) -> Tensor:
    """Sort the last axis and replace repeats by ``empty`` (which sorts last): ``[..., K] -> [..., K]``."""
    flat = flat.sort(dim=-1).values
    if flat.shape[-1] > 1:
        repeat = torch.zeros_like(flat, dtype=torch.bool)
        repeat[..., 1:] = flat[..., 1:] == flat[..., :-1]
        flat = flat.masked_fill(repeat, empty).sort(dim=-1).values
    return flat


def _check_gold_cells(pairs: object, B: int, C: int, valid: Tensor, tril_mask: bool) -> Tensor:
    """``pairs [B, C, P, 2]``: integer cells ``(i, j)`` inside the sentence (with ``i <= j`` under
    ``tril_mask``), or ``(-1, -1)``."""
    if not isinstance(pairs, Tensor):
        raise TypeError(f"pairs: expected a torch.Tensor [B, C, P, 2], got {type(pairs).__name__}")
    if pairs.dim() != 4 or tuple(pairs.shape[:2]) != (B, C) or pairs.shape[-1] != 2:
        raise ValueError(f"pairs: expected shape [{B}, {C}, P, 2], got {tuple(pairs.shape)}")
    if pairs.is_floating_point() or pairs.dtype == torch.bool:
        raise TypeError(f"pairs: expected an integer tensor, got dtype {pairs.dtype}")
    pairs = pairs.long()
    pad = (pairs == -1).all(-1)
    L = valid.shape[-1]
    inside = ((pairs >= 0) & (pairs < L)).all(-1)
    if (~pad & ~inside).any():
        raise ValueError(f"pairs: cells must lie in [0, {L}) or be (-1, -1) padding, got values in "
                         f"[{int(pairs.min())}, {int(pairs.max())}]")
    i, j = pairs[..., 0].clamp(0, L - 1), pairs[..., 1].clamp(0, L - 1)
    b = torch.arange(B, device=pairs.device)[:, None, None]
    bad = ~pad & ~valid[b, i, j]
    if bad.any():
        b0, c0, p0 = (int(x[0]) for x in torch.nonzero(bad, as_tuple=True))
        where = "lower triangle i > j, or a padding position" if tril_mask else "a padding position"
        raise ValueError(f"pairs: gold cell {tuple(pairs[b0, c0, p0].tolist())} of batch row {b0}, class {c0} "
                         f"is masked ({where}): the model can never score it")
    return pairs


def efficient_globalpointer_loss(gp: "GlobalPointer", hidden: Tensor, attention_mask: Tensor, pairs: Tensor) -> Tensor:
    """``globalpointer_loss(gp(hidden, attention_mask), pairs)`` for an Efficient GlobalPointer (with or
    without RoPE and the lower-triangle mask), computed without materialising the ``[B, C, L, L]`` logits.

    The Efficient GP score is :math:`s_\\alpha(i, j) = S_{ij} + r_{i\\alpha} + c_{j\\alpha}` (a shared
    ``[L, L]`` term plus per-class row and column terms, :meth:`GlobalPointer.efficient_parts`), so a sum
    over cells factorises into a matrix product, :math:`\\sum_{ij} W_{ij} e^{s_\\alpha(i,j)} = \\sum_i
    e^{r_{i\\alpha}} [(W \\circ e^{S}) e^{c_{\\cdot\\alpha}}]_i`. The loss per class is

    .. math:: \\log\\Big(1 + \\sum_{\\mathcal N_\\alpha} e^{s_\\alpha}\\Big)
              + \\log\\Big(1 + \\sum_{\\mathcal P_\\alpha} e^{-s_\\alpha}\\Big),

    and the negative sum is formed directly, never as "all minus positives" (which cancels once a
    positive dominates): ``U`` is the union over classes of the sentence's positive cells (a few
    dozen). The GEMM sums every valid cell outside ``U`` (:math:`W = M \\circ (1 - U)`, with
    :math:`M_{ij}`: both positions real, and :math:`i \\le j` under ``tril_mask``); the cells of ``U``
    that are negatives *of class* :math:`\\alpha` are gathered and added. Float64 inside with
    max-shifts; a batch row that is all padding contributes 0. Summed over classes, averaged over the
    batch (the reduction of :func:`globalpointer_loss`). ``hidden [B, L, D]``, ``attention_mask [B, L]``,
    ``pairs [B, C, P, 2]`` (padding ``-1``); returns a scalar in ``hidden``'s dtype (float32 for half).
    """
    if not isinstance(gp, GlobalPointer):
        raise TypeError(f"gp: expected a GlobalPointer, got {type(gp).__name__}")
    if not gp.efficient:
        raise ValueError("gp: expected an Efficient GlobalPointer (efficient=True), got a standard one")
    if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
        raise ValueError(f"hidden: expected a float tensor [B, L, D], got "
                         f"{tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__}")
    B, L, _ = hidden.shape
    C = gp.num_heads
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, L):
        raise ValueError(f"attention_mask: expected shape [{B}, {L}], got "
                         f"{tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else attention_mask!r}")
    keep = attention_mask.bool()                               # [B, L]
    valid = keep[:, :, None] & keep[:, None, :]                # [B, L, L]
    if gp.tril_mask:
        valid = valid & torch.ones(L, L, dtype=torch.bool, device=hidden.device).triu()
    pairs = _check_gold_cells(pairs, B, C, valid, gp.tril_mask)
    work = torch.float64
    S, row, col = (x.to(work) for x in gp.efficient_parts(hidden))  # [B, L, L], [B, C, L], [B, C, L]
    row, col = row.transpose(1, 2), col.transpose(1, 2)        # [B, L, C]: s(i,j) = S_ij + row_i + col_j
    neg_inf = float("-inf")
    # positive cells as flat indices i * L + j, per class and their union per sentence (pad: L * L)
    none = L * L
    is_pos = pairs[..., 0] >= 0                                # [B, C, P]
    flat = torch.where(is_pos, pairs[..., 0] * L + pairs[..., 1], torch.full_like(pairs[..., 0], none))
    flat = _unique_cells(flat, none)                           # [B, C, P], repeats -> none
    union = _unique_cells(flat.reshape(B, -1), none)           # [B, C * P]
    width = max(1, int((union < none).sum(-1).max()))
    union = union[:, :width]                                   # [B, K]
    in_union = torch.zeros(B, none + 1, dtype=torch.bool, device=hidden.device)
    in_union.scatter_(1, union, True)
    # 1) every valid cell outside the union, all classes at once (one GEMM per sentence)
    rest = valid & ~in_union[:, :none].view(B, L, L)
    S_rest = S.masked_fill(~rest, neg_inf)
    mS = S_rest.detach().amax(dim=(1, 2), keepdim=True)
    mS = torch.where(torch.isfinite(mS), mS, torch.zeros_like(mS))          # [B, 1, 1]
    row_m, col_m = row.masked_fill(~keep[..., None], neg_inf), col.masked_fill(~keep[..., None], neg_inf)
    mr, mc = row_m.detach().amax(1, keepdim=True), col_m.detach().amax(1, keepdim=True)  # [B, 1, C]
    mr = torch.where(torch.isfinite(mr), mr, torch.zeros_like(mr))
    mc = torch.where(torch.isfinite(mc), mc, torch.zeros_like(mc))
    total = (torch.exp(row_m - mr) * (torch.exp(S_rest - mS) @ torch.exp(col_m - mc))).sum(1)  # [B, C]
    tiny = torch.finfo(work).tiny
    log_rest = torch.where(total > 0, torch.log(total.clamp_min(tiny)) + mS[:, :, 0] + mr[:, 0] + mc[:, 0],
                           torch.full_like(total, neg_inf))    # [B, C]
    # 2) the union's cells that are negatives of class a
    b_idx = torch.arange(B, device=hidden.device)
    ui, uj = union.clamp(max=none - 1) // L, union.clamp(max=none - 1) % L       # [B, K]
    s_union = (S[b_idx[:, None], ui, uj][:, None, :] + row[b_idx[:, None], ui].transpose(1, 2)
               + col[b_idx[:, None], uj].transpose(1, 2))      # [B, C, K]
    positive_here = (union[:, None, :, None] == flat[:, :, None, :]).any(-1)    # [B, C, K]
    s_union = s_union.masked_fill(positive_here | (union >= none)[:, None, :], neg_inf)
    neg_term = _log1p_sum_exp_parts(log_rest[..., None], s_union)    # [B, C]
    # positive term from the gathered positive scores
    pi, pj = flat.clamp(max=none - 1) // L, flat.clamp(max=none - 1) % L       # [B, C, P]
    a_idx = torch.arange(C, device=hidden.device)[None, :, None]
    s_pos = S[b_idx[:, None, None], pi, pj] + row[b_idx[:, None, None], pi, a_idx] + col[b_idx[:, None, None], pj, a_idx]
    pos_term = _log1p_sum_exp_parts(torch.where(flat < none, -s_pos, torch.full_like(s_pos, neg_inf)))
    out_dtype = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    return (neg_term + pos_term).sum(1).mean().to(out_dtype)


def check_gold_unmasked(flat: Tensor, logits: Tensor, name: str = "pairs") -> None:
    """Raise if a gold cell (flat indices ``[..., K]``, ``-1`` = padding) points at a *masked* logit of
    ``logits [..., C]`` (``finfo.min``, or bert4keras' ``-1e12``: padding or, for spans, the lower triangle
    ``j < i``). Such a label
    cannot be learnt and would make the loss ~3.4e38 — it means the labels and the mask disagree (a span
    given as ``(tail, head)``, or a position beyond the sentence)."""
    if flat.shape[-1] == 0:
        return
    valid = flat >= 0
    gathered = logits.detach().gather(-1, flat.clamp(min=0).long())
    # finfo.min is this library's mask; -1e12 is bert4keras' (any real score is far above -1e11)
    info = torch.finfo(logits.dtype)
    floor = -1e11 if info.max > 1e12 else info.min / 2
    bad = valid & (gathered <= floor)
    if bad.any():
        where = [int(v) for v in torch.nonzero(bad)[0]]
        raise ValueError(f"{name}: gold cell (flat index {int(flat[tuple(where)])}, at {where}) lies on a masked "
                         "logit (padding or the masked lower triangle j < i): spans must be (head, tail) with "
                         "head <= tail inside the sentence")
