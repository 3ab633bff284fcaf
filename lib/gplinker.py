"""GPLinker for joint entity–relation extraction (kexue.fm/archives/8888).

A relation is the 5-tuple ``(s_h, s_t, p, o_h, o_t)`` (inclusive token spans of subject and object,
predicate id). GPLinker factorises its score into four token-pair problems

.. math:: S = S_{sub}(s_h, s_t) + S_{obj}(o_h, o_t) + S_{hh}(s_h, o_h \\mid p) + S_{tt}(s_t, o_t \\mid p)

solved by three GlobalPointers: a 2-head entity GP (subject / object spans, RoPE, lower triangle masked)
and two ``n``-head link GPs (head–head and tail–tail, no RoPE, no triangle mask). A 5-tuple is decoded
iff *each* of the four scores exceeds the threshold (conjunction, not the sum).

Contents: label encoding (:func:`encode_quintuples`, :func:`pad_pairs`), a vectorised decoder
(:func:`decode_relations`) with its nested-loop twin (:func:`decode_relations_loop`), oracle logits,
micro P/R/F1, token <-> character span mapping, size arithmetic, the model heads (:class:`GPLinker`, on any
encoder of :mod:`lib.encoders`), the three training losses, and training / evaluation through
:func:`lib.train.fit` (:func:`train_relations`, :func:`evaluate`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lib.globalpointer import (
    GlobalPointer,
    check_gold_unmasked,
    efficient_globalpointer_loss,
    gp_param_count,
    multilabel_categorical_crossentropy,
    pair_mask,
    pairs_to_flat_indices,
    sparse_multilabel_categorical_crossentropy,
)

Quintuple = tuple[int, int, int, int, int]  # (s_h, s_t, p, o_h, o_t), inclusive token spans
RULES = ("and", "head_only", "sum")

__all__ = [
    "Quintuple", "RULES", "count_quintuples", "gplinker_cells", "dense_label_size", "gplinker_param_count",
    "encode_quintuples", "pad_pairs", "pairs_to_dense", "oracle_logits", "decode_relations",
    "decode_relations_loop", "decode_batch", "triple_prf", "char_span_to_tokens", "find_token_span",
    "spans_to_text", "RelationExample", "prepare_examples", "GPLinker", "gplinker_loss", "collate",
    "normalise", "noisy_logits", "TooManyCandidates", "make_batch", "batches_for", "lr_factor",
    "train_relations", "evaluate", "best_threshold", "LOSSES", "restrict_predicates",
]


# ---------------------------------------------------------------------------------- arithmetic
def _pos_int(value: object, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def count_quintuples(length: int, num_predicates: int) -> int:
    """Naive candidate count :math:`n\\,[l(l+1)/2]^2` (post, Eq. 1)."""
    l, n = _pos_int(length, "length"), _pos_int(num_predicates, "num_predicates")
    return n * (l * (l + 1) // 2) ** 2


def gplinker_cells(length: int, num_predicates: int) -> int:
    """Cells GPLinker scores per sentence: :math:`2l^2` (entity GP) + :math:`2nl^2` (link GPs)."""
    l, n = _pos_int(length, "length"), _pos_int(num_predicates, "num_predicates")
    return 2 * l * l + 2 * n * l * l


def dense_label_size(batch_size: int, num_predicates: int, length: int, include_entities: bool = False) -> int:
    """Entries of the dense multi-hot link labels per batch, :math:`2bnl^2` (+ :math:`2bl^2` for entities)."""
    b, n, l = (_pos_int(batch_size, "batch_size"), _pos_int(num_predicates, "num_predicates"),
               _pos_int(length, "length"))
    return 2 * b * n * l * l + (2 * b * l * l if include_entities else 0)


def gplinker_param_count(hidden_size: int, num_predicates: int, head_size: int = 64, *, efficient: bool,
                         bias: bool = True) -> int:
    """Head parameters of GPLinker: one 2-head entity GP plus two ``n``-head link GPs."""
    return (gp_param_count(hidden_size, 2, head_size, efficient=efficient, bias=bias)
            + 2 * gp_param_count(hidden_size, num_predicates, head_size, efficient=efficient, bias=bias))


# -------------------------------------------------------------------------------- label encoding
def _check_quintuples(quintuples: Iterable[Sequence[int]], num_predicates: int,
                      length: int | None = None) -> set[Quintuple]:
    out = set()
    for q in quintuples:
        if len(q) != 5:
            raise ValueError(f"quintuples must be (s_h, s_t, p, o_h, o_t), got {q!r}")
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in q):
            raise TypeError(f"quintuples: positions and predicate must be ints, got {q!r}")
        sh, st, p, oh, ot = (int(v) for v in q)
        if not (0 <= sh <= st and 0 <= oh <= ot):
            raise ValueError(f"quintuple spans must satisfy 0 <= head <= tail, got {q!r}")
        if not 0 <= p < num_predicates:
            raise ValueError(f"quintuple predicate must lie in [0, {num_predicates}), got {q!r}")
        if length is not None and max(st, ot) >= length:
            raise ValueError(f"quintuple positions must be < length={length}, got {q!r}")
        out.add((sh, st, p, oh, ot))
    return out


def encode_quintuples(quintuples: Iterable[Sequence[int]], num_predicates: int) -> tuple[np.ndarray, ...]:
    """Algorithm A: gold 5-tuples -> the three label sets as padded cell lists.

    Returns ``entity [2, P, 2]`` (channel 0 subjects ``(s_h, s_t)``, channel 1 objects ``(o_h, o_t)``),
    ``head [n, P, 2]`` (``(s_h, o_h)`` under predicate ``p``) and ``tail [n, P, 2]`` (``(s_t, o_t)``), int64,
    each a *set* per channel (duplicates removed), padded with ``(-1, -1)``; ``P >= 1``.
    """
    n = _pos_int(num_predicates, "num_predicates")
    quints = _check_quintuples(quintuples, n)
    entity = [set(), set()]
    head = [set() for _ in range(n)]
    tail = [set() for _ in range(n)]
    for sh, st, p, oh, ot in quints:
        entity[0].add((sh, st))
        entity[1].add((oh, ot))
        head[p].add((sh, oh))
        tail[p].add((st, ot))
    return tuple(_sets_to_array(sets) for sets in (entity, head, tail))


def _sets_to_array(sets: list[set]) -> np.ndarray:
    width = max(1, max(len(s) for s in sets))
    out = np.full((len(sets), width, 2), -1, dtype=np.int64)
    for c, cells in enumerate(sets):
        if cells:
            out[c, : len(cells)] = sorted(cells)
    return out


def pad_pairs(arrays: Sequence[np.ndarray]) -> Tensor:
    """Stack per-sample ``[C, P_b, 2]`` cell lists into ``[B, C, max P_b, 2]`` padded with -1."""
    if not arrays:
        raise ValueError("arrays must be a non-empty sequence of [C, P, 2] arrays")
    shapes = {a.shape[0] for a in arrays}
    if len(shapes) != 1 or any(a.ndim != 3 or a.shape[2] != 2 for a in arrays):
        raise ValueError(f"arrays must all have shape [C, P, 2] with one C, got {[a.shape for a in arrays]}")
    width = max(a.shape[1] for a in arrays)
    out = np.full((len(arrays), arrays[0].shape[0], width, 2), -1, dtype=np.int64)
    for b, a in enumerate(arrays):
        out[b, :, : a.shape[1]] = a
    return torch.from_numpy(out)


def pairs_to_dense(pairs: Tensor, length: int) -> Tensor:
    """Multi-hot ``[B, C, L, L]`` float labels from padded cell lists ``[B, C, P, 2]`` (the dense baseline)."""
    b, c = pairs.shape[:2]
    flat = pairs_to_flat_indices(pairs, length)  # [B, C, P], -1 = pad
    dense = torch.zeros(b, c, length * length + 1)
    dense.scatter_(-1, flat.masked_fill(flat < 0, length * length), 1.0)
    return dense[..., :-1].view(b, c, length, length)


def oracle_logits(quintuples: Iterable[Sequence[int]], num_predicates: int, length: int, pos: float = 1.0,
                  neg: float = -1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perfect score tables: ``pos`` on every gold cell of the three GPs, ``neg`` elsewhere.

    Returns ``entity [2, L, L]``, ``head [n, L, L]``, ``tail [n, L, L]`` (float32).
    """
    n, L = _pos_int(num_predicates, "num_predicates"), _pos_int(length, "length")
    quints = _check_quintuples(quintuples, n, L)
    ent = np.full((2, L, L), neg, dtype=np.float32)
    hh = np.full((n, L, L), neg, dtype=np.float32)
    tt = np.full((n, L, L), neg, dtype=np.float32)
    for sh, st, p, oh, ot in quints:
        ent[0, sh, st] = ent[1, oh, ot] = hh[p, sh, oh] = tt[p, st, ot] = pos
    return ent, hh, tt


def noisy_logits(length: int, num_predicates: int, mean: float = -3.0, std: float = 1.5, num_triples: int = 6,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[Quintuple]]:
    """Untrained-like scores for decoder benchmarks: oracle scores of ``num_triples`` random gold 5-tuples
    (``+6`` on gold cells) plus i.i.d. noise N(mean, std^2); the entity
    lower triangle is masked to ``finfo.min`` as the model would. Returns ``(entity, head, tail, gold)``."""
    L, n = _pos_int(length, "length"), _pos_int(num_predicates, "num_predicates")
    if L < 6:
        raise ValueError(f"length must be >= 6, got {L}")
    rng = np.random.default_rng(seed)
    gold = set()
    for _ in range(num_triples):
        sh, oh = rng.integers(1, L - 4, 2)
        gold.add((int(sh), int(sh + rng.integers(0, 3)), int(rng.integers(n)), int(oh), int(oh + rng.integers(0, 3))))
    ent, hh, tt = oracle_logits(gold, n, L, pos=6.0, neg=0.0)
    for table in (ent, hh, tt):
        table += rng.normal(mean, std, table.shape).astype(np.float32)
    rows, cols = np.tril_indices(L, -1)
    ent[:, rows, cols] = np.finfo(np.float32).min
    return ent, hh, tt, gold


# ----------------------------------------------------------------------------------------- decode
def _as_numpy(x: object, name: str, ndim: int) -> np.ndarray:
    """numpy view of scores in their own precision (bfloat16, which numpy lacks, becomes float32)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point scores, got dtype {x.dtype}")
    if x.size and np.isnan(x.max()):  # max propagates NaN, and allocates no boolean table
        raise ValueError(f"decode_relations: {name} contains NaN scores; a diverged model produces them "
                         "(check the training loss and the learning rate)")
    return x


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if math.isnan(threshold):
        raise ValueError("decode_relations: threshold is NaN; a threshold chosen on the scores of a diverged "
                         "model comes out NaN (check the model and how the threshold was chosen)")
    return threshold


def _check_decode_inputs(entity, head, tail, rule):
    entity, head, tail = (_as_numpy(entity, "entity", 3), _as_numpy(head, "head", 3), _as_numpy(tail, "tail", 3))
    L = entity.shape[-1]
    if entity.shape != (2, L, L):
        raise ValueError(f"entity must have shape [2, L, L], got {entity.shape}")
    if head.shape != tail.shape or head.shape[1:] != (L, L):
        raise ValueError(f"head and tail must have shape [n, {L}, {L}], got {head.shape} and {tail.shape}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return entity, head, tail


def _entity_candidates(entity: np.ndarray, threshold: float, special: Iterable[int]):
    ent = entity.copy()
    special = [int(s) for s in special]
    if special:
        ent[:, special, :] = -np.inf
        ent[:, :, special] = -np.inf
    subj = np.argwhere(ent[0] > threshold)  # [ns, 2] rows (h, t), sorted
    obj = np.argwhere(ent[1] > threshold)
    return ent, subj, obj


class TooManyCandidates(ValueError):
    """Raised by :func:`decode_relations` when ``|S| * |O|`` exceeds ``max_pairs`` (an untrained model at a
    low threshold would otherwise enumerate millions of triples)."""


def decode_relations(entity, head, tail, threshold: float = 0.0, special: Iterable[int] = (),
                     rule: str = "and", chunk: int = 1 << 22, max_pairs: int | None = None) -> set[Quintuple]:
    """Vectorised Algorithm B: scores of one sentence -> set of 5-tuples ``(s_h, s_t, p, o_h, o_t)``.

    entity ``[2, L, L]``, head ``[n, L, L]``, tail ``[n, L, L]`` (numpy or torch). Subjects
    :math:`\\mathcal S = \\{(h,t): E_0(h,t) > \\theta\\}`, objects :math:`\\mathcal O` likewise; the join
    gathers the boolean hit tables ``head > θ`` and ``tail > θ`` (laid out ``[L, L, n]``) at
    ``(s_h, o_h)`` and ``(s_t, o_t)`` for all ``|S| x |O|`` candidate pairs at once (pairs without any
    link are filtered first; subjects are processed in chunks of at most ``chunk`` cells) and keeps

    * ``rule="and"``: :math:`HH_p > \\theta \\wedge TT_p > \\theta` (the post's decision rule);
    * ``rule="head_only"``: :math:`HH_p > \\theta`;
    * ``rule="sum"``: :math:`E_0 + E_1 + HH_p + TT_p > \\theta` (Eq. 2 read literally).

    ``special`` lists positions (``[CLS]``, ``[SEP]``) that may not start or end an entity.
    With ``max_pairs``, more than ``max_pairs`` subject-object candidate pairs raise :class:`TooManyCandidates`.
    """
    entity, head, tail = _check_decode_inputs(entity, head, tail, rule)
    threshold = _check_threshold(threshold)
    ent, subj, obj = _entity_candidates(entity, threshold, special)
    n = head.shape[0]
    if len(subj) == 0 or len(obj) == 0:
        return set()
    if max_pairs is not None and len(subj) * len(obj) > max_pairs:
        raise TooManyCandidates(f"{len(subj)} subjects x {len(obj)} objects exceed max_pairs={max_pairs}")
    rows = max(1, chunk // max(1, n * len(obj)))
    out: set[Quintuple] = set()
    if rule != "sum":
        # boolean hit tables laid out [L, L, n], so that one gathered cell is n contiguous bytes
        head_ok = np.ascontiguousarray((head > threshold).transpose(1, 2, 0))
        tail_ok = np.ascontiguousarray((tail > threshold).transpose(1, 2, 0)) if rule == "and" else None
        head_any = head_ok.any(-1)  # [L, L]: some predicate links these two heads
        tail_any = tail_ok.any(-1) if rule == "and" else None
    for start in range(0, len(subj), rows):
        s = subj[start:start + rows]
        if rule == "sum":
            total = (head[:, s[:, 0, None], obj[None, :, 0]] + tail[:, s[:, 1, None], obj[None, :, 1]]
                     + ent[0, s[:, 0], s[:, 1]][:, None] + ent[1, obj[:, 0], obj[:, 1]][None, :])
            p, i, j = np.nonzero(total > threshold)
        else:
            pair_ok = head_any[s[:, 0, None], obj[None, :, 0]]  # [s, o] candidate pairs with any head link
            if rule == "and":
                pair_ok &= tail_any[s[:, 1, None], obj[None, :, 1]]
            i, j = np.nonzero(pair_ok)
            hits = head_ok[s[i, 0], obj[j, 0]]  # [pairs, n]
            if rule == "and":
                hits &= tail_ok[s[i, 1], obj[j, 1]]
            k, p = np.nonzero(hits)
            i, j = i[k], j[k]
        si, oj = s[i], obj[j]
        out.update(zip(si[:, 0].tolist(), si[:, 1].tolist(), p.tolist(), oj[:, 0].tolist(), oj[:, 1].tolist()))
    return out


def decode_relations_loop(entity, head, tail, threshold: float = 0.0, special: Iterable[int] = (),
                          rule: str = "and") -> set[Quintuple]:
    """Nested-loop twin of :func:`decode_relations`, written like the public ports (slow, obvious)."""
    entity, head, tail = _check_decode_inputs(entity, head, tail, rule)
    threshold = _check_threshold(threshold)
    ent, _, _ = _entity_candidates(entity, threshold, special)
    L = ent.shape[-1]
    subjects, objects = [], []
    for h in range(L):
        for t in range(L):
            if ent[0, h, t] > threshold:
                subjects.append((h, t))
            if ent[1, h, t] > threshold:
                objects.append((h, t))
    out = set()
    for sh, st in subjects:
        for oh, ot in objects:
            if rule == "sum":
                total = ent[0, sh, st] + ent[1, oh, ot] + head[:, sh, oh] + tail[:, st, ot]
                preds = set(np.where(total > threshold)[0])
            else:
                p1 = set(np.where(head[:, sh, oh] > threshold)[0])
                p2 = set(np.where(tail[:, st, ot] > threshold)[0]) if rule == "and" else p1
                preds = p1 & p2
            for p in preds:
                out.add((sh, st, int(p), oh, ot))
    return out


def decode_batch(entity: Tensor, head: Tensor, tail: Tensor, lengths: Sequence[int], threshold: float = 0.0,
                 rule: str = "and", max_pairs: int | None = None) -> list[set[Quintuple]]:
    """Decode a padded batch: ``[B, 2, L, L]``, ``[B, n, L, L]``, ``[B, n, L, L]``; ``lengths`` are the
    true token counts including ``[CLS]`` and ``[SEP]`` (the specials at ``0`` and ``length - 1``)."""
    if len(lengths) != entity.shape[0]:
        raise ValueError(f"lengths must have one entry per sample ({entity.shape[0]}), got {len(lengths)}")
    out = []
    for b, n_tok in enumerate(lengths):
        n_tok = int(n_tok)
        out.append(decode_relations(entity[b, :, :n_tok, :n_tok], head[b, :, :n_tok, :n_tok],
                                    tail[b, :, :n_tok, :n_tok], threshold, special=(0, n_tok - 1), rule=rule,
                                    max_pairs=max_pairs))
    return out


# -------------------------------------------------------------------------------------- metrics
def triple_prf(pred: Sequence[set], gold: Sequence[set]) -> tuple[float, float, float]:
    """Micro precision, recall and F1 over a corpus (Algorithm C).

    With :math:`X=\\sum|R\\cap T|`, :math:`Y=\\sum|R|`, :math:`Z=\\sum|T|`: P = X/Y, R = X/Z,
    F1 = 2X/(Y+Z); a ratio with a zero denominator is defined as 0 (no predictions -> P = 0).
    """
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold must have the same length, got {len(pred)} and {len(gold)}")
    x = y = z = 0
    for r, t in zip(pred, gold):
        r, t = set(r), set(t)
        x, y, z = x + len(r & t), y + len(r), z + len(t)
    p = x / y if y else 0.0
    rec = x / z if z else 0.0
    f1 = 2 * x / (y + z) if y + z else 0.0
    return p, rec, f1


# --------------------------------------------------------------------------------- span mapping
def _check_offsets(offsets: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    out = []
    for o in offsets:
        if len(o) != 2 or o[0] > o[1]:
            raise ValueError(f"offsets must be (start, end) pairs with start <= end, got {o!r}")
        out.append((int(o[0]), int(o[1])))
    return out


def char_span_to_tokens(offsets: Sequence[Sequence[int]], start: int, end: int) -> tuple[int, int] | None:
    """Character span ``[start, end)`` -> inclusive token span ``(h, t)``, or None if not token-aligned.

    ``offsets`` is the tokenizer's ``offset_mapping`` (``[start, end)`` per token; special tokens carry
    ``(0, 0)`` and are never matched). The span must begin at a token start and finish at a token end.
    """
    offsets = _check_offsets(offsets)
    if not 0 <= start < end:
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    heads = [i for i, (a, b) in enumerate(offsets) if a == start and b > a]
    tails = [i for i, (a, b) in enumerate(offsets) if b == end and b > a]
    if not heads or not tails or tails[-1] < heads[0]:
        return None
    h = heads[0]
    t = next(t for t in tails if t >= h)
    return h, t


def find_token_span(text: str, offsets: Sequence[Sequence[int]], entity: str) -> tuple[int, int] | None:
    """First token-aligned occurrence of ``entity`` in ``text`` as an inclusive token span, else None.

    Occurrences that cut through a token (e.g. ``"ton"`` inside ``"Washington"``) are skipped. Like the
    reference scripts this labels only one mention per entity string (one labelled mention per entity string).
    """
    if not isinstance(text, str) or not isinstance(entity, str):
        raise TypeError("text and entity must be str")
    if not entity:
        return None
    offsets = _check_offsets(offsets)
    start = text.find(entity)
    while start >= 0:
        span = char_span_to_tokens(offsets, start, start + len(entity))
        if span is not None:
            return span
        start = text.find(entity, start + 1)
    return None


def spans_to_text(text: str, offsets: Sequence[Sequence[int]], span: tuple[int, int]) -> str:
    """Inclusive token span ``(h, t)`` -> the substring ``text[offsets[h][0] : offsets[t][1]]``.

    Raises if the span or its offsets fall outside ``text`` (offsets from another text or tokenizer)."""
    offsets = _check_offsets(offsets)
    h, t = span
    if not 0 <= h <= t < len(offsets):
        raise ValueError(f"span must satisfy 0 <= h <= t < {len(offsets)}, got {span!r}")
    start, end = offsets[h][0], offsets[t][1]
    if start < 0 or end > len(text):
        raise ValueError(f"offsets: span {span!r} covers characters [{start}, {end}) but text has {len(text)} "
                         "characters (offsets from another text or tokenizer?)")
    return text[start:end]


def normalise(entity: str) -> str:
    """Whitespace-normalised entity string used to compare predicted and gold triples."""
    return " ".join(entity.split())


# ------------------------------------------------------------------------------------ examples
@dataclass
class RelationExample:
    """One tokenised sentence: ``input_ids [L]``, ``offsets [L]``, token-level gold 5-tuples, string triples."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    quintuples: set[Quintuple]
    gold: set[tuple[str, str, str]] = field(default_factory=set)
    dropped: int = 0  # gold triples that could not be located within maxlen (kept in `gold`)

    def decode_text(self, quintuples: Iterable[Quintuple], predicates: Sequence[str]) -> set[tuple[str, str, str]]:
        """Token 5-tuples -> ``(subject, predicate, object)`` strings via the offsets."""
        return {(normalise(spans_to_text(self.text, self.offsets, (sh, st))), predicates[p],
                 normalise(spans_to_text(self.text, self.offsets, (oh, ot))))
                for sh, st, p, oh, ot in quintuples}


def prepare_examples(sentences: Sequence, tokenizer, predicates: Sequence[str], maxlen: int = 128
                     ) -> list[RelationExample]:
    """Tokenise ``RelationSentence``s (``.text``, ``.triples`` of (subject, predicate, object)).

    Each entity is located at its first token-aligned occurrence (truncated to ``maxlen`` tokens incl.
    ``[CLS]``/``[SEP]``); triples that cannot be located are dropped from the training labels but stay
    in ``gold`` (they cost recall at evaluation, as in the reference script).
    """
    pred_id = {p: i for i, p in enumerate(predicates)}
    out = []
    for sent in sentences:
        enc = tokenizer(sent.text, truncation=True, max_length=maxlen, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        quints, dropped = set(), 0
        for s, p, o in sent.triples:
            if p not in pred_id:
                raise ValueError(f"predicate {p!r} is not in predicates")
            ss, os_ = find_token_span(sent.text, offsets, s), find_token_span(sent.text, offsets, o)
            if ss is None or os_ is None:
                dropped += 1
                continue
            quints.add((ss[0], ss[1], pred_id[p], os_[0], os_[1]))
        gold = {(normalise(s), p, normalise(o)) for s, p, o in sent.triples}
        out.append(RelationExample(sent.text, list(enc["input_ids"]), offsets, quints, gold, dropped))
    return out


def restrict_predicates(examples: Sequence[RelationExample], predicates: Sequence[str], keep: Sequence[str]
                        ) -> list[RelationExample]:
    """The same sentences with only the relations whose predicate is in ``keep`` (a smaller task).

    Token 5-tuples keep their spans and get the predicate id of their name's position in ``keep``; ``gold``
    keeps the string triples of those predicates; ``dropped`` counts the kept gold triples that no kept
    5-tuple represents. Every sentence stays (one without a kept relation is a negative example)."""
    keep = list(keep)
    unknown = [p for p in keep if p not in predicates]
    if not keep or len(set(keep)) != len(keep) or unknown:
        raise ValueError(f"keep must be distinct names from predicates, got {keep!r} (unknown: {unknown!r})")
    new_id = {predicates.index(p): i for i, p in enumerate(keep)}
    out = []
    for e in examples:
        quints = {(sh, st, new_id[p], oh, ot) for sh, st, p, oh, ot in e.quintuples if p in new_id}
        gold = {t for t in e.gold if t[1] in keep}
        example = RelationExample(e.text, list(e.input_ids), list(e.offsets), quints, gold, 0)
        example.dropped = len(gold - example.decode_text(quints, keep))
        out.append(example)
    return out


def collate(examples: Sequence[RelationExample], num_predicates: int, pad_id: int = 0,
            with_labels: bool = True) -> dict:
    """Batch: ``input_ids [B, L]``, ``attention_mask [B, L]``, ``lengths`` and (``with_labels``) the label
    cell lists ``entity [B, 2, P, 2]``, ``head``/``tail [B, n, P, 2]`` (padded with -1)."""
    if not examples:
        raise ValueError("examples must be non-empty")
    L = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), L, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[b, : len(e.input_ids)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "lengths": [len(e.input_ids) for e in examples]}
    if with_labels:
        labels = [encode_quintuples(e.quintuples, num_predicates) for e in examples]
        batch.update(entity=pad_pairs([lab[0] for lab in labels]), head=pad_pairs([lab[1] for lab in labels]),
                     tail=pad_pairs([lab[2] for lab in labels]))
    return batch


# ---------------------------------------------------------------------------------------- model
class GPLinker(nn.Module):
    """The three GlobalPointer heads of GPLinker on top of an optional encoder.

    forward(inputs, attention_mask ``[B, L]``) -> ``(entity [B, 2, L, L], head [B, n, L, L],
    tail [B, n, L, L])``. ``inputs`` are token ids ``[B, L]`` when ``encoder`` is given (called as
    ``encoder(inputs, attention_mask) -> [B, L, D]``), else hidden states ``[B, L, D]``.
    Entity GP: RoPE on, lower triangle masked; link GPs: RoPE off, no triangle mask (as in the
    reference code: a subject may follow its object).
    """

    def __init__(self, hidden_size: int, num_predicates: int, head_size: int = 64, *, efficient: bool = True,
                 encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_predicates = num_predicates
        self.entity = GlobalPointer(hidden_size, 2, head_size, rope=True, tril_mask=True, efficient=efficient)
        self.head = GlobalPointer(hidden_size, num_predicates, head_size, rope=False, tril_mask=False,
                                  efficient=efficient)
        self.tail = GlobalPointer(hidden_size, num_predicates, head_size, rope=False, tril_mask=False,
                                  efficient=efficient)

    def head_parameters(self) -> int:
        """Number of parameters in the three GlobalPointer heads."""
        return sum(p.numel() for m in (self.entity, self.head, self.tail) for p in m.parameters())

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.encoder(inputs, attention_mask) if self.encoder is not None else inputs
        return (self.entity(hidden, attention_mask), self.head(hidden, attention_mask),
                self.tail(hidden, attention_mask))

    def loss(self, batch: dict, loss: str = "sparse") -> Tensor:
        """The training loss of a :func:`collate` / :func:`make_batch` batch: :func:`gplinker_loss` of the
        forward pass; with Efficient heads and the sparse loss every term comes from
        :func:`~lib.globalpointer.efficient_globalpointer_loss` (same value, no ``[B, n, L, L]`` tensor)."""
        mask = batch["attention_mask"]
        heads = (self.entity, self.head, self.tail)
        if not (loss == "sparse" and all(gp.efficient for gp in heads)):
            return gplinker_loss(self(batch["inputs"], mask), batch, loss)
        hidden = self.encoder(batch["inputs"], mask) if self.encoder is not None else batch["inputs"]
        return sum(efficient_globalpointer_loss(gp, hidden, mask, batch[key])
                   for gp, key in zip(heads, ("entity", "head", "tail")))


# ---------------------------------------------------------------------------------------- losses
LOSSES = ("sparse", "dense", "bce")


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; half precision (and float32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _gp_loss(logits: Tensor, pairs: Tensor, attention_mask: Tensor, tril: bool, loss: str) -> Tensor:
    b, c, L, _ = logits.shape
    if loss == "sparse":
        flat = pairs_to_flat_indices(pairs, L)
        check_gold_unmasked(flat, logits.reshape(b, c, L * L), "batch")
        per = sparse_multilabel_categorical_crossentropy(flat, logits.reshape(b, c, L * L))
        return per.sum(1).mean()
    work = logits.to(_work_dtype(logits))  # half-precision sums of L^2 cells overflow: compute in fp32
    labels = pairs_to_dense(pairs, L).to(work.dtype)
    if loss == "dense":
        return multilabel_categorical_crossentropy(labels.reshape(b, c, L * L), work.reshape(b, c, L * L)
                                                   ).sum(1).mean()
    valid = ~pair_mask(attention_mask, L, tril_mask=tril, device=logits.device)  # [B, 1, L, L]
    bce = nn.functional.binary_cross_entropy_with_logits(work, labels, reduction="none")
    return (bce * valid).sum() / b


def gplinker_loss(outputs: tuple[Tensor, Tensor, Tensor], batch: dict, loss: str = "sparse") -> Tensor:
    """Entity + head + tail loss (equal weights), each summed over heads and averaged over the batch.

    ``outputs``: ``entity [B, 2, L, L]``, ``head``/``tail [B, n, L, L]`` logits; ``batch``: the label cell
    lists of :func:`collate` and ``attention_mask [B, L]``. ``loss``: "sparse" (multi-label CE from cell
    indices), "dense" (same loss from multi-hot labels ``[B, C, L, L]``) or "bce" (per-cell sigmoid
    cross-entropy summed over the unmasked cells). Half-precision logits are summed in float32 (the result
    is float32); a gold cell on a masked position raises."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    entity, head, tail = outputs
    mask = batch["attention_mask"]
    return (_gp_loss(entity, batch["entity"], mask, True, loss) + _gp_loss(head, batch["head"], mask, False, loss)
            + _gp_loss(tail, batch["tail"], mask, False, loss))


# ------------------------------------------------------------------------------- batches, model
def make_batch(examples: Sequence[RelationExample], idx: Sequence[int], num_predicates: int,
               features: Sequence[Tensor] | None = None, with_labels: bool = True) -> dict:
    """:func:`collate` the examples ``idx``; with cached ``features`` (``[L_i, D]`` each, see
    :func:`lib.encoders.cached_features`) ``inputs`` is ``[B, L, D]`` float32 (:func:`lib.encoders.pad_features`),
    else ``inputs = input_ids [B, L]``."""
    from lib.encoders import pad_features

    batch = collate([examples[i] for i in idx], num_predicates, with_labels=with_labels)
    if features is None:
        batch["inputs"] = batch["input_ids"]
        return batch
    hidden, mask = pad_features([features[i] for i in idx])
    if not torch.equal(mask, batch["attention_mask"]):
        raise ValueError("features must have one row per token of each example (lengths differ from input_ids)")
    batch["inputs"] = hidden
    return batch


def batches_for(examples: Sequence[RelationExample], *, batch_size: int, max_cells: int | None = None,
                shuffle: bool = True, seed: int = 0) -> list[list[int]]:
    """:func:`lib.train.length_batches` over the examples' token counts (``B <= batch_size``,
    ``B L^2 <= max_cells``)."""
    from lib.train import length_batches

    return length_batches([len(e.input_ids) for e in examples], batch_size=batch_size, max_cells=max_cells,
                          shuffle=shuffle, seed=seed)


def lr_factor(step: int, total: int, warmup: int, schedule: str = "linear") -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warmup over ``warmup`` steps to 1, then
    ``"linear"`` decay to 0 at ``total``, ``"cosine"`` decay to 0, or ``"constant"``."""
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule must be 'linear', 'cosine' or 'constant', got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - frac if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def train_relations(model: GPLinker, examples: Sequence[RelationExample], num_predicates: int, *, steps: int,
                    batch_size: int = 8, lr_heads: float = 5e-3, lr_encoder: float = 3e-4, warmup: float = 0.1,
                    schedule: str = "linear", loss: str = "sparse", features: Sequence[Tensor] | None = None,
                    max_cells: int | None = None, rounds: int = 1, evaluate=None, seed: int = 0,
                    clip: float = 1.0, desc: str = "gplinker"):
    """Train ``model`` for ``steps`` AdamW steps through :func:`lib.train.fit`; returns its ``History``.

    Batches come from :func:`batches_for` (a new seeded permutation each pass over the data); the learning
    rate of the heads (``lr_heads``) and of ``model.encoder`` (``lr_encoder``) warms up linearly over the first
    ``warmup`` fraction of the steps and then follows ``schedule`` (:func:`lr_factor`); gradients are clipped
    to norm ``clip``. The steps are split into ``rounds`` equal parts (``fit``'s epochs) with
    ``evaluate(round)`` after each: the learning curve. ``features``: cached ``[L_i, D]`` inputs (see
    :func:`make_batch`), else token ids go to ``model.encoder``."""
    from lib.train import fit
    from lib.utils import device

    for name, value in (("steps", steps), ("batch_size", batch_size), ("rounds", rounds)):
        _pos_int(value, name)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    torch.manual_seed(seed)
    dev = device()
    model.to(dev).train()
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad] if model.encoder is not None else []
    enc_ids = {id(p) for p in enc_params}
    head_params = [p for p in model.parameters() if id(p) not in enc_ids and p.requires_grad]
    groups = [{"params": head_params, "lr": lr_heads}] + ([{"params": enc_params, "lr": lr_encoder}] if enc_params else [])
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warm = int(round(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warm, schedule))
    order: list[list[int]] = []
    epoch = 0
    while len(order) < steps:
        order += batches_for(examples, batch_size=batch_size, max_cells=max_cells, seed=seed * 1000 + epoch)
        epoch += 1
    order = order[:steps]
    bounds = np.linspace(0, steps, rounds + 1).round().astype(int)

    def step(idx: list[int]) -> float:
        batch = make_batch(examples, idx, num_predicates, features)
        batch = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in batch.items()}
        value = model.loss(batch, loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        return value.item()

    return fit(step, lambda r: order[bounds[r]:bounds[r + 1]], rounds, evaluate=evaluate, desc=desc)


# ---------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: GPLinker, examples: Sequence[RelationExample], predicates: Sequence[str],
             thresholds: Sequence[float] = (0.0,), features: Sequence[Tensor] | None = None,
             max_cells: int = 8 * 64 * 64, rule: str = "and", max_pairs: int = 5000) -> dict:
    """Micro P/R/F1 of string triples at each threshold, plus the predictions at ``thresholds[0]``.

    Returns ``{"prf": {θ: (P, R, F1)}, "pred": [set of (s, p, o)] per example, "degenerate": [θ, ...]}``.
    A threshold at which some sentence has more than ``max_pairs`` subject x object candidates is
    *degenerate* (the model accepts almost every span there): its P/R/F1 are NaN and it is listed."""
    from lib.utils import device

    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not math.isfinite(t) for t in thresholds):
        raise ValueError(f"thresholds must be a non-empty list of finite numbers, got {thresholds!r}")
    was_training = model.training
    model.eval()
    dev = device()
    preds = {t: [set() for _ in examples] for t in thresholds}
    degenerate = set()
    for idx in batches_for(examples, batch_size=64, max_cells=max_cells, shuffle=False):
        batch = make_batch(examples, idx, len(predicates), features, with_labels=False)
        outputs = [x.float().cpu() for x in model(batch["inputs"].to(dev), batch["attention_mask"].to(dev))]
        for t in thresholds:
            if t in degenerate:
                continue
            try:
                decoded = decode_batch(*outputs, lengths=batch["lengths"], threshold=t, rule=rule, max_pairs=max_pairs)
            except TooManyCandidates:
                degenerate.add(t)
                continue
            for k, q in enumerate(decoded):
                preds[t][idx[k]] = examples[idx[k]].decode_text(q, predicates)
    model.train(was_training)
    gold = [e.gold for e in examples]
    nan = (float("nan"),) * 3
    return {"prf": {t: nan if t in degenerate else triple_prf(preds[t], gold) for t in thresholds},
            "pred": preds[thresholds[0]], "degenerate": sorted(degenerate)}


def best_threshold(prf: dict) -> float:
    """The threshold with the highest F1 in ``{θ: (P, R, F1)}`` (ties: the one closest to 0; NaN rows skipped)."""
    finite = [t for t, v in prf.items() if math.isfinite(v[2])]
    if not finite:
        raise ValueError("prf has no threshold with a finite F1 (every threshold degenerate)")
    return max(finite, key=lambda t: (prf[t][2], -abs(t)))
