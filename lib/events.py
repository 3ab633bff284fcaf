"""GPLinker for joint event extraction (kexue.fm/archives/8926), chapter 8.

The post turns event extraction into three token-pair scoring problems:

* **arguments** - nested NER whose classes are the pairs ``(event type, role)``; the trigger is just
  one more role (``"触发词"``), so the label set is
  :math:`\\Lambda = \\bigcup_\\tau \\{(\\tau, \\text{触发词})\\} \\cup \\{(\\tau, r)\\}_{r \\in R_\\tau}`;
* **head-head links** :math:`HH(i, j)` and **tail-tail links** :math:`TT(i, j)` (one head each,
  upper triangle only) - two arguments are adjacent iff both their heads and their tails are linked;
* **grouping** - per event type, every *maximal clique* of the argument graph is one event.

Conventions used throughout the module

* a *node* is ``(event_type, role, h, t)`` with ``h <= t`` inclusive token (or character) indices;
* an *event* is a ``frozenset`` of nodes (all of one event type);
* a *scored argument* (what the metrics see) is ``(event_type, role, text, char_start)``;
  a scored event is a ``frozenset`` of those.

Labels, decoding, grouping and metrics are plain Python / numpy, tested against oracles
(``networkx.find_cliques``, brute force, hand cases). The model part (:class:`GPLinkerEE`) reuses
``lib.globalpointer`` from the relation chapter; ``lib.globalpointer.efficient_globalpointer_loss`` computes
the same loss as ``globalpointer_loss`` on an Efficient GlobalPointer without materialising its ``[B, C, L, L]``
logits.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import Tensor, nn

from lib.encoders import pad_features
from lib.globalpointer import GlobalPointer, efficient_globalpointer_loss, globalpointer_loss
from lib.train import length_batches

TRIGGER_ROLE = "触发词"
STRATEGIES = ("clique", "type", "trigger", "component")

Node = tuple[str, str, int, int]
Event = frozenset
Adjacency = Callable[[Any, Any], bool]


# ----------------------------------------------------------------------------------------------
# label set
# ----------------------------------------------------------------------------------------------
def build_labels(schema: Mapping[str, Sequence[str]],
                 trigger_role: str = TRIGGER_ROLE) -> list[tuple[str, str]]:
    """The label set :math:`\\Lambda`: for each event type, ``(type, trigger_role)`` then its roles.

    ``schema`` maps an event type to its list of roles (``lib.data.load_duee_schema()``).
    :math:`|\\Lambda| = \\sum_\\tau (1 + |R_\\tau|)` (282 for DuEE 1.0).
    """
    if not isinstance(schema, Mapping):
        raise TypeError(f"schema: expected a mapping event_type -> roles, got {type(schema).__name__}")
    labels: list[tuple[str, str]] = []
    for event_type, roles in schema.items():
        if isinstance(roles, str) or not isinstance(roles, Sequence):
            raise TypeError(f"schema[{event_type!r}]: expected a list of role names, got {roles!r}")
        if trigger_role in roles:
            raise ValueError(f"schema[{event_type!r}]: role {trigger_role!r} is reserved for the trigger")
        labels.append((event_type, trigger_role))
        labels.extend((event_type, role) for role in roles)
    if len(set(labels)) != len(labels):
        raise ValueError("schema: duplicate (event type, role) pairs")
    return labels


# ----------------------------------------------------------------------------------------------
# from DuEE records to events
# ----------------------------------------------------------------------------------------------
def scored_events(sentence: Any, trigger_role: str = TRIGGER_ROLE) -> list[frozenset]:
    """Gold events of a ``lib.data.EventSentence`` as sets of ``(type, role, text, char_start)``.

    The trigger is included as the argument with role ``trigger_role`` (the unified-argument view).
    """
    text = getattr(sentence, "text", None)
    if not isinstance(text, str):
        raise TypeError(f"sentence: expected an EventSentence with a str .text, got {type(sentence).__name__}")
    events = []
    for ev in _events_of(sentence):
        args = {_checked_argument(text, ev.event_type, trigger_role, ev.trigger, ev.trigger_start)}
        args.update(_checked_argument(text, ev.event_type, a.role, a.text, a.start) for a in ev.arguments)
        events.append(frozenset(args))
    return events


def _checked_argument(text: str, event_type: str, role: str, arg_text: str, start: Any) -> tuple[str, str, str, int]:
    """``(type, role, text, start)`` after checking that ``text[start:start + len(arg_text)] == arg_text``."""
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
        raise TypeError(f"sentence: argument {arg_text!r} ({event_type}/{role}) has start {start!r}, expected an int")
    start = int(start)
    if not arg_text or start < 0 or text[start:start + len(arg_text)] != arg_text:
        raise ValueError(f"sentence: argument {arg_text!r} ({event_type}/{role}) does not occur at start={start} "
                         f"of {text!r} (found {text[max(start, 0):max(start, 0) + len(arg_text)]!r}); "
                         "check the offsets of the record")
    return event_type, role, arg_text, start


def char_events(sentence: Any, trigger_role: str = TRIGGER_ROLE) -> list[frozenset]:
    """Gold events as character-span nodes ``(type, role, start, end_inclusive)``."""
    return [frozenset((ty, role, s, s + len(txt) - 1) for ty, role, txt, s in ev)
            for ev in scored_events(sentence, trigger_role)]


def align_events(events: Iterable[frozenset], offsets: Sequence[tuple[int, int]],
                 ) -> tuple[list[frozenset], int]:
    """Map character-span events to token-span events using a tokenizer's offset mapping.

    ``offsets[i] = (char_start, char_end_exclusive)`` of token ``i``; special tokens have
    ``(0, 0)`` and are never matched. A node whose first character is not the start of a token or
    whose last character is not the end of a token (sub-word split, truncation) is dropped, as in
    the reference code. Returns ``(token_events, n_dropped_nodes)``; events left
    empty are removed.
    """
    starts, ends = {}, {}
    for i, pair in enumerate(offsets):
        if len(pair) != 2 or int(pair[1]) < int(pair[0]) or int(pair[0]) < 0:
            raise ValueError(f"offsets[{i}]: expected (char_start, char_end) with 0 <= start <= end, got {pair!r}")
        s, e = pair
        if e > s:
            starts.setdefault(int(s), i)
            ends[int(e)] = i
    out, dropped = [], 0
    for ev in events:
        nodes = set()
        for node in ev:
            if len(node) != 4:
                raise ValueError(f"events: expected character-span nodes (type, role, start, end), got {node!r}")
            ty, role, s, t = node
            _check_span(s, t)
            h, tt = starts.get(int(s)), ends.get(int(t) + 1)
            if h is None or tt is None or tt < h:
                dropped += 1
            else:
                nodes.add((ty, role, h, tt))
        if nodes:
            out.append(frozenset(nodes))
    return out, dropped


def to_scored(events: Iterable[Iterable[Node]], text: str,
              offsets: Sequence[tuple[int, int]] | None = None) -> list[frozenset]:
    """Token-span events -> scored events ``(type, role, text, char_start)``.

    With ``offsets=None`` the spans are character spans (``text[h : t + 1]``).
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    limit = len(text) if offsets is None else len(offsets)
    out = []
    for ev in events:
        args = set()
        for ty, role, h, t in ev:
            _check_span(h, t)
            if t >= limit:
                what = "characters" if offsets is None else "tokens (offsets)"
                raise ValueError(f"events: span ({h}, {t}) of {ty}/{role} ends beyond the {limit} {what} of the text")
            s, e = (h, t + 1) if offsets is None else (int(offsets[h][0]), int(offsets[t][1]))
            if e > len(text) or e <= s:
                raise ValueError(f"offsets: span ({h}, {t}) of {ty}/{role} maps to characters [{s}, {e}), "
                                 f"outside the {len(text)}-character text or empty")
            args.add((ty, role, text[s:e], int(s)))
        out.append(frozenset(args))
    return out


# ----------------------------------------------------------------------------------------------
# training targets and oracle scores
# ----------------------------------------------------------------------------------------------
@dataclass
class EventTargets:
    """Sparse targets of one sentence: argument cells ``(label, h, t)`` and link cells ``(i, j)``."""

    arguments: set[tuple[int, int, int]] = field(default_factory=set)
    head_links: set[tuple[int, int]] = field(default_factory=set)
    tail_links: set[tuple[int, int]] = field(default_factory=set)


def encode_events(events: Iterable[Iterable[Node]],
                  label_index: Mapping[tuple[str, str], int]) -> EventTargets:
    """Eq. (4): argument cells and canonical head-head / tail-tail link cells.

    For every event and every unordered pair of its nodes :math:`(h_k, t_k), (h_{k'}, t_{k'})`:
    :math:`HH` is positive at :math:`(\\min(h_k, h_{k'}), \\max(h_k, h_{k'}))` and :math:`TT` at
    :math:`(\\min(t_k, t_{k'}), \\max(t_k, t_{k'}))`. Two nodes on the same span give a diagonal cell.
    The link matrices are shared by all events and types of the sentence.
    """
    out = EventTargets()
    events = [frozenset(e) for e in events]
    for ev in events:
        nodes = sorted(ev)
        for ty, role, h, t in nodes:
            _check_span(h, t)
            if (ty, role) not in label_index:
                raise ValueError(f"events: label {(ty, role)!r} is not in label_index")
            out.arguments.add((label_index[(ty, role)], h, t))
    out.head_links, out.tail_links = _link_cells(events)
    return out


def _link_cells(events: Iterable[Iterable[Node]]) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Canonical head-head and tail-tail cells of every pair of nodes of every event (Eq. 4)."""
    hh: set[tuple[int, int]] = set()
    tt: set[tuple[int, int]] = set()
    for ev in events:
        for (_, _, h1, t1), (_, _, h2, t2) in itertools.combinations(sorted(set(ev)), 2):
            hh.add((min(h1, h2), max(h1, h2)))
            tt.add((min(t1, t2), max(t1, t2)))
    return hh, tt


def oracle_logits(events: Iterable[Iterable[Node]], label_index: Mapping[tuple[str, str], int],
                  length: int, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perfect scores: ``+margin`` on the gold cells of Eq. (4), ``-margin`` elsewhere.

    Returns ``argu [C, L, L]``, ``head [L, L]``, ``tail [L, L]`` with ``C = len(label_index)``.
    """
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length: expected a positive int, got {length!r}")
    targets = encode_events(events, label_index)
    argu = np.full((len(label_index), length, length), -margin, dtype=np.float32)
    head = np.full((length, length), -margin, dtype=np.float32)
    tail = np.full((length, length), -margin, dtype=np.float32)
    for c, h, t in targets.arguments:
        if t >= length:
            raise ValueError(f"events: span end {t} does not fit length={length}")
        argu[c, h, t] = margin
    for i, j in targets.head_links:
        head[i, j] = margin
    for i, j in targets.tail_links:
        tail[i, j] = margin
    return argu, head, tail


# ----------------------------------------------------------------------------------------------
# decoding: arguments, links, groups
# ----------------------------------------------------------------------------------------------
def predict_arguments(argu_logits: np.ndarray, labels: Sequence[tuple[str, str]],
                      threshold: float = 0.0, valid: np.ndarray | None = None) -> list[Node]:
    """Eq. (2): every cell :math:`A_\\lambda(i, j) > \\theta_a` with ``i <= j`` is a node.

    ``argu_logits [C, L, L]``; ``valid [L]`` bool marks the positions allowed as span ends
    (``False`` for ``[CLS]``, ``[SEP]`` and padding). Returns sorted nodes.
    """
    argu_logits = np.asarray(argu_logits)
    if argu_logits.ndim != 3 or argu_logits.shape[1] != argu_logits.shape[2]:
        raise ValueError(f"argu_logits: expected shape [C, L, L], got {argu_logits.shape}")
    _check_labels(labels)
    if argu_logits.shape[0] != len(labels):
        raise ValueError(f"labels: expected {argu_logits.shape[0]} labels (C), got {len(labels)}")
    _check_threshold("predict_arguments", "threshold", threshold)
    _check_finite_scores("predict_arguments", "argu_logits", argu_logits)
    L = argu_logits.shape[1]
    keep = np.triu(np.ones((L, L), dtype=bool))
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (L,):
            raise ValueError(f"valid: expected shape [{L}], got {valid.shape}")
        keep &= valid[:, None] & valid[None, :]
    c, h, t = np.nonzero((argu_logits > threshold) & keep[None])
    return sorted((*labels[ci], int(hi), int(ti)) for ci, hi, ti in zip(c, h, t))


def link_adjacency(head_logits: np.ndarray, tail_logits: np.ndarray,
                   threshold: float = 0.0) -> Adjacency:
    """Eq. (5): nodes ``a``, ``b`` are adjacent iff both canonical link cells exceed the threshold.

    :math:`HH(\\min(h_a, h_b), \\max(h_a, h_b)) > \\theta_\\ell \\wedge
    TT(\\min(t_a, t_b), \\max(t_a, t_b)) > \\theta_\\ell`; ``head_logits``, ``tail_logits`` ``[L, L]``.
    The predicate depends on spans only (not on type or role) and is symmetric.
    """
    head, tail = np.asarray(head_logits), np.asarray(tail_logits)
    if head.ndim != 2 or head.shape[0] != head.shape[1] or head.shape != tail.shape:
        raise ValueError(f"head_logits/tail_logits: expected two [L, L] arrays, got {head.shape} and {tail.shape}")
    _check_threshold("link_adjacency", "threshold", threshold)
    _check_finite_scores("link_adjacency", "head_logits", head)
    _check_finite_scores("link_adjacency", "tail_logits", tail)
    hh, tt = head > threshold, tail > threshold

    def adjacent(a: Node, b: Node) -> bool:
        h1, t1, h2, t2 = a[2], a[3], b[2], b[3]
        return bool(hh[min(h1, h2), max(h1, h2)] and tt[min(t1, t2), max(t1, t2)])

    return adjacent


def edge_adjacency(edges: Iterable[tuple[Hashable, Hashable]]) -> Adjacency:
    """A symmetric adjacency predicate from a list of undirected edges ``(u, v)`` (pairs of distinct nodes)."""
    es = set()
    for e in edges:
        if isinstance(e, (str, bytes)) or not isinstance(e, Iterable):
            raise ValueError(f"edges: expected pairs (u, v), got {e!r}")
        e = tuple(e)
        if len(e) != 2 or e[0] == e[1]:
            raise ValueError(f"edges: expected pairs (u, v) of two distinct nodes, got {e!r}")
        es.add(frozenset(e))
    return lambda u, v: frozenset((u, v)) in es


@dataclass
class SearchStats:
    """Work done by :func:`clique_search`: recursive calls and candidate neighbourhoods generated."""

    calls: int = 0
    generated: int = 0
    max_calls: int | None = None


class SearchBudgetExceeded(RuntimeError):
    """The post's recursion made more calls than its budget allows (its worst case is exponential)."""


MAX_CALLS = 100_000


def clique_search(nodes: Iterable[Hashable], adjacent: Adjacency,
                  stats: SearchStats | None = None, max_calls: int | None = MAX_CALLS) -> list[tuple]:
    """Algorithm 1 of the post: the maximal cliques of the graph on ``nodes``.

    If every pair of ``V`` is adjacent, ``V`` is a clique. Otherwise, for **every** non-adjacent
    pair ``(u, v)`` form the closed neighbourhoods :math:`N_V[u]` and :math:`N_V[v]` *inside* ``V``
    and recurse on each (duplicates removed at every level). Each call is on a strictly smaller set
    (:math:`v \\notin N_V[u]`), so it terminates; the output is every maximal clique, each as a sorted
    tuple, in sorted order (independent of the order of ``nodes``). Worst case exponential: after
    ``max_calls`` recursive calls (``None``: no limit) it raises :class:`SearchBudgetExceeded`; the
    16-node Moon-Moser graph needs millions (``maximal_cliques``, i.e. ``search="networkx"``, is fast).
    """
    _check_adjacent(adjacent)
    if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1):
        raise ValueError(f"max_calls: expected a positive int or None, got {max_calls!r}")
    V = tuple(sorted(set(nodes)))
    if not V:
        return []
    stats = stats if stats is not None else SearchStats()
    stats.max_calls = max_calls
    return sorted(_search(V, adjacent, stats))


def _search(V: tuple, adjacent: Adjacency, stats: SearchStats) -> list[tuple]:
    """One level of Algorithm 1 on the node set ``V``: a clique, or recurse on both closed
    neighbourhoods of every non-adjacent pair, results deduplicated."""
    stats.calls += 1
    if stats.max_calls is not None and stats.calls > stats.max_calls:
        raise SearchBudgetExceeded(f"clique_search: more than max_calls={stats.max_calls} recursive calls on a "
                                   f"graph of {len(V)}+ nodes (the recursion is exponential in the worst case); "
                                   "use search='networkx' (maximal_cliques) or raise max_calls")
    candidates: dict[tuple, None] = {}
    for i, u in enumerate(V):
        for v in V[i + 1:]:
            if not adjacent(u, v):
                for w in (u, v):
                    stats.generated += 1
                    candidates.setdefault(tuple(x for x in V if x == w or adjacent(w, x)), None)
    if not candidates:
        return [V]
    found: dict[tuple, None] = {}
    for W in candidates:
        for clique in _search(W, adjacent, stats):
            found.setdefault(clique, None)
    return list(found)


def maximal_cliques(nodes: Iterable[Hashable], adjacent: Adjacency) -> list[tuple]:
    """The maximal cliques via ``networkx.find_cliques`` (Bron-Kerbosch with pivoting).

    Same contract as :func:`clique_search` (sorted tuples, sorted list); output-polynomial per clique.
    """
    _check_adjacent(adjacent)
    V = sorted(set(nodes))
    graph = nx.Graph()
    graph.add_nodes_from(V)
    graph.add_edges_from((u, v) for u, v in itertools.combinations(V, 2) if adjacent(u, v))
    return sorted(tuple(sorted(c)) for c in nx.find_cliques(graph))


def group_arguments(nodes: Iterable[Node], adjacent: Adjacency, strategy: str = "clique",
                    trigger_role: str = TRIGGER_ROLE, search: str = "networkx") -> list[frozenset]:
    """Split predicted nodes into events, separately for each event type.

    ``strategy``:

    * ``"clique"`` - every maximal clique of the type's argument graph (the post);
    * ``"type"`` - all nodes of the type form one event;
    * ``"trigger"`` - one event per trigger: the trigger and every non-trigger node adjacent to it
      (a trigger-first pipeline); non-trigger nodes attached to no trigger form one trigger-less event;
    * ``"component"`` - connected components of the type's argument graph.

    ``search`` picks the clique routine: ``"networkx"`` (:func:`maximal_cliques`) or ``"post"``
    (:func:`clique_search`); both return the same sets.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if search not in ("networkx", "post"):
        raise ValueError(f"search: expected 'networkx' or 'post', got {search!r}")
    by_type: dict[str, list[Node]] = {}
    for node in sorted(set(nodes)):
        by_type.setdefault(node[0], []).append(node)
    events: list[frozenset] = []
    for group in by_type.values():
        events.extend(_group_one_type(group, adjacent, strategy, trigger_role, search))
    return events


def _group_one_type(group: list[Node], adjacent: Adjacency, strategy: str, trigger_role: str,
                    search: str) -> list[frozenset]:
    if strategy == "clique":
        finder = maximal_cliques if search == "networkx" else clique_search
        return [frozenset(c) for c in finder(group, adjacent)]
    if strategy == "type":
        return [frozenset(group)]
    if strategy == "component":
        graph = nx.Graph()
        graph.add_nodes_from(group)
        graph.add_edges_from((u, v) for u, v in itertools.combinations(group, 2) if adjacent(u, v))
        return [frozenset(c) for c in sorted(nx.connected_components(graph), key=sorted)]
    triggers = [n for n in group if n[1] == trigger_role]
    others = [n for n in group if n[1] != trigger_role]
    if not triggers:
        return [frozenset(group)]
    events = [frozenset([tr, *(n for n in others if adjacent(tr, n))]) for tr in triggers]
    orphans = [n for n in others if not any(adjacent(tr, n) for tr in triggers)]
    return events + ([frozenset(orphans)] if orphans else [])


def decode_events(argu_logits: np.ndarray, head_logits: np.ndarray, tail_logits: np.ndarray,
                  labels: Sequence[tuple[str, str]], *, threshold_arg: float = 0.0,
                  threshold_link: float = 0.0, strategy: str = "clique",
                  valid: np.ndarray | None = None, require_trigger: bool = False,
                  trigger_role: str = TRIGGER_ROLE, search: str = "networkx") -> list[frozenset]:
    """Algorithm 2: nodes (Eq. 2) -> adjacency (Eq. 5) -> per-type grouping -> events.

    ``argu_logits [C, L, L]``, ``head_logits``/``tail_logits`` ``[L, L]``. With
    ``require_trigger`` events without a trigger node are dropped (prediction mode). Returns a
    sorted list of distinct events (frozensets of nodes).
    """
    _check_threshold("decode_events", "threshold_arg", threshold_arg)
    _check_threshold("decode_events", "threshold_link", threshold_link)
    for name, x in (("argu_logits", argu_logits), ("head_logits", head_logits), ("tail_logits", tail_logits)):
        _check_finite_scores("decode_events", name, x)
    nodes = predict_arguments(argu_logits, labels, threshold_arg, valid)
    adjacent = link_adjacency(head_logits, tail_logits, threshold_link)
    events = group_arguments(nodes, adjacent, strategy, trigger_role, search)
    if require_trigger:
        events = [e for e in events if any(n[1] == trigger_role for n in e)]
    return sorted(set(events), key=sorted)


def remove_subsumed(events: Iterable[frozenset]) -> list[frozenset]:
    """Submission post-processing: drop an event contained in another event of the same type."""
    evs = list(dict.fromkeys(frozenset(e) for e in events))
    return [e for e in evs
            if not any(e < f and _etype(e) == _etype(f) for f in evs)]


def moon_moser_graph(m: int) -> tuple[list[int], Adjacency]:
    """Complement of a perfect matching on ``2m`` nodes: :math:`2^m` maximal cliques of size ``m``."""
    if not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m: expected a positive int, got {m!r}")
    return list(range(2 * m)), lambda u, v: u != v and u // 2 != v // 2


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PRF:
    """Precision, recall, F1 plus the counts they came from."""

    precision: float
    recall: float
    f1: float
    correct: float
    predicted: float
    gold: float


def _prf(correct: float, predicted: float, gold: float) -> PRF:
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return PRF(p, r, f, correct, predicted, gold)


def event_prf(pred_docs: Sequence[Iterable[Iterable]], gold_docs: Sequence[Iterable[Iterable]],
              trigger_role: str = TRIGGER_ROLE, require_trigger: bool = True) -> PRF:
    """Event-level P/R/F1 of the reference code (Eq. 8).

    Per sentence, predicted events (only those with a trigger when ``require_trigger``) and gold
    events are deduplicated; a predicted event is correct iff it equals a gold event exactly
    (trigger included). Counts are summed over sentences: :math:`P = x/y, R = x/z`.
    """
    _check_docs(pred_docs, gold_docs)
    x = y = z = 0
    for pred, gold in zip(pred_docs, gold_docs):
        R = {frozenset(e) for e in pred}
        if require_trigger:
            R = {e for e in R if any(a[1] == trigger_role for a in e)}
        T = {frozenset(e) for e in gold}
        x, y, z = x + len(R & T), y + len(R), z + len(T)
    return _prf(x, y, z)


def argument_prf(pred_docs: Sequence[Iterable[Iterable]], gold_docs: Sequence[Iterable[Iterable]],
                 trigger_role: str = TRIGGER_ROLE) -> PRF:
    """Argument-level P/R/F1 of the reference code: the set of non-trigger
    ``(type, role, text, start)`` of all events per sentence, exact match, micro-averaged."""
    _check_docs(pred_docs, gold_docs)
    x = y = z = 0
    for pred, gold in zip(pred_docs, gold_docs):
        R = {a for e in pred for a in e if a[1] != trigger_role}
        T = {a for e in gold for a in e if a[1] != trigger_role}
        x, y, z = x + len(R & T), y + len(R), z + len(T)
    return _prf(x, y, z)


def char_f1(pred: str, gold: str) -> float:
    """Character-level F1 of the official DuEE metric (case-insensitive, bag of characters).

    :math:`c = |\\mathrm{chars}(a) \\cap \\mathrm{chars}(g)|` (multiset), :math:`p = c/|a|`,
    :math:`r = c/|g|`, :math:`f = 2pr/(p + r)`; e.g. ``char_f1("北京市", "北京") = 0.8``.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        raise TypeError(f"pred, gold: expected two str, got {type(pred).__name__}, {type(gold).__name__}")
    a, g = Counter(pred.lower()), Counter(gold.lower())
    c = sum((a & g).values())
    if c == 0:
        return 0.0
    p, r = c / len(pred), c / len(gold)
    return 2 * p * r / (p + r)


def official_prf(pred_docs: Sequence[Iterable[Iterable]], gold_docs: Sequence[Iterable[Iterable]],
                 trigger_role: str = TRIGGER_ROLE) -> PRF:
    """Official DuEE 1.0 style score (Eq. 9), offsets ignored.

    Per sentence, the distinct predicted non-trigger ``(type, role, text)`` each score the best
    :func:`char_f1` against gold arguments of the same type and role; :math:`S = \\sum` scores,
    :math:`P = S/\\#\\text{pred}`, :math:`R = S/\\#\\text{gold}` (gold also deduplicated),
    :math:`F_1 = 2PR/(P+R)`.
    """
    _check_docs(pred_docs, gold_docs)
    score = n_pred = n_gold = 0
    for pred, gold in zip(pred_docs, gold_docs):
        P = {a[:3] for e in pred for a in e if a[1] != trigger_role}
        G = {a[:3] for e in gold for a in e if a[1] != trigger_role}
        for ty, role, txt in P:
            score += max((char_f1(txt, g[2]) for g in G if g[:2] == (ty, role)), default=0.0)
        n_pred, n_gold = n_pred + len(P), n_gold + len(G)
    p = score / n_pred if n_pred else 0.0
    r = score / n_gold if n_gold else 0.0
    return PRF(p, r, 2 * p * r / (p + r) if p + r else 0.0, score, n_pred, n_gold)


# ----------------------------------------------------------------------------------------------
# synthetic overlap patterns (position space, for oracle decoding)
# ----------------------------------------------------------------------------------------------
PATTERNS = ("single", "two_types", "same_type", "shared_trigger", "shared_argument",
            "nested_spans", "nested_event", "triangle")
IDENTIFIABLE = {"single": True, "two_types": True, "same_type": True, "shared_trigger": True,
                "shared_argument": True, "nested_spans": True, "nested_event": False,
                "triangle": False}


def pattern_events(pattern: str, types: Sequence[str] = ("A", "B"),
                   roles: Sequence[str] = ("r1", "r2", "r3"),
                   trigger_role: str = TRIGGER_ROLE) -> list[frozenset]:
    """Gold events of one overlap pattern, on consecutive 2-token spans (the post's cases).

    * ``shared_trigger``: ``{T, a1, b1}``, ``{T, a2, b2}`` (the 程杰 / 王少伟 sentence);
    * ``shared_argument``: ``{T1, a, d}``, ``{T2, b, d}`` (the post's figure, D shared);
    * ``nested_spans``: one event whose two arguments are nested spans;
    * ``nested_event``: ``{T, a}`` and ``{T, a, b}`` - not identifiable (only maximal cliques);
    * ``triangle``: ``{T, a, b}``, ``{T, b, c}``, ``{T, a, c}`` - not identifiable.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern: expected one of {PATTERNS}, got {pattern!r}")
    pos = itertools.count(0, 3)

    def span() -> tuple[int, int]:
        s = next(pos)
        return s, s + 1

    A, B = types[0], types[1]
    r1, r2, r3 = roles[:3]
    tr = trigger_role
    if pattern == "single":
        return [frozenset({(A, tr, *span()), (A, r1, *span()), (A, r2, *span())})]
    if pattern == "two_types":
        return [frozenset({(A, tr, *span()), (A, r1, *span())}),
                frozenset({(B, tr, *span()), (B, r1, *span())})]
    if pattern == "same_type":
        return [frozenset({(A, tr, *span()), (A, r1, *span())}),
                frozenset({(A, tr, *span()), (A, r1, *span())})]
    if pattern == "shared_trigger":
        T = (A, tr, *span())
        return [frozenset({T, (A, r1, *span()), (A, r2, *span())}),
                frozenset({T, (A, r1, *span()), (A, r2, *span())})]
    if pattern == "shared_argument":
        D = (A, r3, *span())
        return [frozenset({(A, tr, *span()), (A, r1, *span()), D}),
                frozenset({(A, tr, *span()), (A, r1, *span()), D})]
    if pattern == "nested_spans":
        s, _ = span()
        next(pos)
        return [frozenset({(A, tr, *span()), (A, r1, s, s + 3), (A, r2, s + 1, s + 2)})]
    if pattern == "nested_event":
        T, a = (A, tr, *span()), (A, r1, *span())
        return [frozenset({T, a}), frozenset({T, a, (A, r2, *span())})]
    T, a, b, c = (A, tr, *span()), (A, r1, *span()), (A, r2, *span()), (A, r3, *span())
    return [frozenset({T, a, b}), frozenset({T, b, c}), frozenset({T, a, c})]


def oracle_group(events: Iterable[Iterable[Node]], strategy: str = "clique",
                 trigger_role: str = TRIGGER_ROLE, search: str = "networkx") -> list[frozenset]:
    """Decode *perfect* scores without materialising them.

    Perfect scores predict exactly the gold nodes and exactly the gold link cells of Eq. (4), so
    the adjacency is "both canonical cells are gold cells". Equal to ``decode_events`` on
    :func:`oracle_logits` (tested); works for long sentences where ``[C, L, L]`` would be large.
    """
    events = [frozenset(e) for e in events]
    hh, tt = _link_cells(events)

    def adjacent(a: Node, b: Node) -> bool:
        return ((min(a[2], b[2]), max(a[2], b[2])) in hh
                and (min(a[3], b[3]), max(a[3], b[3])) in tt)

    nodes = set().union(*events) if events else set()
    return sorted(set(group_arguments(nodes, adjacent, strategy, trigger_role, search)), key=sorted)


def overlap_kinds(events: Iterable[Iterable[Node]], trigger_role: str = TRIGGER_ROLE) -> set[str]:
    """Which overlap patterns a sentence's gold events show, per event type.

    ``"same_type"`` (>= 2 events of one type), ``"shared_trigger"`` (two of them share the trigger
    node), ``"shared_argument"`` (they share a non-trigger node), ``"not_identifiable"`` (the gold
    events are not exactly the maximal cliques that perfect links give).
    """
    events = list(dict.fromkeys(frozenset(e) for e in events))
    kinds: set[str] = set()
    by_type: dict[str, list[frozenset]] = {}
    for ev in events:
        if ev:
            by_type.setdefault(_etype(ev), []).append(ev)
    for evs in by_type.values():
        if len(evs) < 2:
            continue
        kinds.add("same_type")
        for e1, e2 in itertools.combinations(evs, 2):
            shared = e1 & e2
            if any(n[1] == trigger_role for n in shared):
                kinds.add("shared_trigger")
            if any(n[1] != trigger_role for n in shared):
                kinds.add("shared_argument")
    if set(oracle_group(events, "clique", trigger_role)) != set(e for e in events if e):
        kinds.add("not_identifiable")
    return kinds


def pattern_corpus(n: int, weights: Mapping[str, float], seed: int = 0) -> list[tuple[str, list[frozenset]]]:
    """``n`` sentences drawn from :data:`PATTERNS` with the given (unnormalised) weights.

    Returns ``(pattern, gold_events)`` pairs; the events of one pattern are those of
    :func:`pattern_events` (the patterns are structural, so repeating them is enough for oracle F1).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    unknown = set(weights) - set(PATTERNS)
    if unknown:
        raise ValueError(f"weights: unknown patterns {sorted(unknown)}; expected a subset of {PATTERNS}")
    names = [p for p in PATTERNS if weights.get(p, 0) > 0]
    if not names:
        raise ValueError("weights: expected at least one positive weight")
    w = np.array([weights[p] for p in names], dtype=float)
    draws = np.random.default_rng(seed).choice(len(names), size=n, p=w / w.sum())
    return [(names[k], pattern_events(names[k])) for k in draws]


def pattern_length(events: Iterable[Iterable[Node]]) -> int:
    """The smallest sequence length that holds every span of ``events``."""
    return 1 + max(t for ev in events for _, _, _, t in ev)


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------
def _check_span(h: int, t: int) -> None:
    if not (isinstance(h, (int, np.integer)) and isinstance(t, (int, np.integer))) or not 0 <= h <= t:
        raise ValueError(f"events: expected spans with 0 <= h <= t, got ({h!r}, {t!r})")


def _check_labels(labels: Any) -> None:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"labels: expected a list of (event_type, role) tuples, got {type(labels).__name__}")
    for lab in labels:
        if not (isinstance(lab, tuple) and len(lab) == 2 and all(isinstance(x, str) for x in lab)):
            raise TypeError(f"labels: expected (event_type, role) tuples as build_labels returns them, got {lab!r}")


def _check_threshold(fn: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or np.isnan(value):
        raise ValueError(f"{fn}: {name} must be a number (not NaN), got {value!r}; a NaN threshold usually "
                         "comes from tuning on the scores of a diverged model")


def _check_finite_scores(fn: str, name: str, values: np.ndarray) -> None:
    if np.isnan(np.asarray(values, dtype=float)).any():
        raise ValueError(f"{fn}: {name} contains NaN - the scores of a diverged model? Check the training "
                         "loss and the inputs before decoding")


def _check_adjacent(adjacent: Any) -> None:
    if not callable(adjacent):
        raise TypeError(f"adjacent: expected a callable (u, v) -> bool, got {type(adjacent).__name__}")


def _check_docs(pred_docs: Sequence, gold_docs: Sequence) -> None:
    if len(pred_docs) != len(gold_docs):
        raise ValueError(f"pred_docs, gold_docs: expected the same number of sentences, "
                         f"got {len(pred_docs)} and {len(gold_docs)}")


def _etype(event: frozenset) -> str:
    return next(iter(event))[0] if event else ""


def _events_of(sentence: Any) -> list:
    events = getattr(sentence, "events", None)
    if events is None:
        raise TypeError(f"sentence: expected an EventSentence with .events, got {type(sentence).__name__}")
    return events


# ----------------------------------------------------------------------------------------------
# model: a from-scratch character encoder + three GlobalPointers (chapter 7's lib.globalpointer)
# ----------------------------------------------------------------------------------------------
@dataclass
class EncodedSentence:
    """One tokenized sentence with its training targets and its gold events for scoring."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    targets: EventTargets
    gold: list[frozenset]
    dropped: int


def encode_sentences(sentences: Sequence[Any], tokenizer: Any,
                     label_index: Mapping[tuple[str, str], int], max_length: int = 128,
                     trigger_role: str = TRIGGER_ROLE) -> list[EncodedSentence]:
    """Tokenize DuEE sentences (``[CLS] ... [SEP]``, truncated to ``max_length``) and build targets.

    Gold events for scoring stay the full character-level ones (nothing dropped), so alignment and
    truncation losses count against the model, as they should.
    """
    if not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"max_length: expected an int >= 3, got {max_length!r}")
    out = []
    for s in sentences:
        enc = tokenizer(s.text, return_offsets_mapping=True, truncation=True, max_length=max_length)
        offsets = [tuple(map(int, o)) for o in enc["offset_mapping"]]
        token_events, dropped = align_events(char_events(s, trigger_role), offsets)
        out.append(EncodedSentence(s.text, list(enc["input_ids"]), offsets,
                                   encode_events(token_events, label_index),
                                   scored_events(s, trigger_role), dropped))
    return out


def _pairs_tensor(groups: list[list[list[tuple[int, int]]]]) -> Tensor:
    """Nested ``[B][C][cells]`` lists of ``(i, j)`` -> ``[B, C, P, 2]`` padded with ``-1``."""
    P = max(1, max((len(cells) for per_b in groups for cells in per_b), default=1))
    out = torch.full((len(groups), len(groups[0]), P, 2), -1, dtype=torch.long)
    for b, per_b in enumerate(groups):
        for c, cells in enumerate(per_b):
            if cells:
                out[b, c, :len(cells)] = torch.tensor(sorted(cells))
    return out


def collate(items: Sequence[EncodedSentence], num_labels: int,
            features: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
    """Pad a batch: ``inputs`` - token ids ``[B, L]``, or with ``features`` (one ``[L_i, D]`` tensor per
    item, e.g. cached frozen hidden states of ``lib.encoders``) the padded ``[B, L, D]`` features -,
    ``attention_mask [B, L]``, ``argu_pairs [B, C, P, 2]``, ``head_pairs``/``tail_pairs`` ``[B, 1, P, 2]``
    (padding ``-1``, the format of :func:`lib.globalpointer.globalpointer_loss`)."""
    if not items:
        raise ValueError("items: expected a non-empty batch")
    if features is not None:
        if len(features) != len(items):
            raise ValueError(f"features: expected one tensor per item ({len(items)}), got {len(features)}")
        for it, f in zip(items, features):
            if f.shape[0] != len(it.input_ids):
                raise ValueError(f"features: a [{f.shape[0]}, D] tensor for a sentence of {len(it.input_ids)} "
                                 "tokens; were they computed from these items' input_ids?")
    L = max(len(it.input_ids) for it in items)
    ids = torch.zeros(len(items), L, dtype=torch.long)
    mask = torch.zeros(len(items), L, dtype=torch.long)
    argu: list[list[list[tuple[int, int]]]] = []
    for b, it in enumerate(items):
        ids[b, :len(it.input_ids)] = torch.tensor(it.input_ids)
        mask[b, :len(it.input_ids)] = 1
        per_label: list[list[tuple[int, int]]] = [[] for _ in range(num_labels)]
        for c, h, t in it.targets.arguments:
            per_label[c].append((h, t))
        argu.append(per_label)
    inputs = ids if features is None else pad_features(features)[0]
    return {"inputs": inputs, "attention_mask": mask, "argu_pairs": _pairs_tensor(argu),
            "head_pairs": _pairs_tensor([[sorted(it.targets.head_links)] for it in items]),
            "tail_pairs": _pairs_tensor([[sorted(it.targets.tail_links)] for it in items])}


class CachedFeatures(nn.Module):
    """The encoder of a heads-only model: the cached hidden states of a frozen pretrained encoder are the
    representation, ``forward(hidden [B, L, D], attention_mask [B, L]) -> hidden`` (no parameters)."""

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
            raise ValueError("hidden: expected float features [B, L, D] (lib.encoders.cached_features, padded), "
                             f"got {tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__}")
        if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"attention_mask: expected shape {tuple(hidden.shape[:2])}, got "
                             f"{tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else attention_mask!r}")
        return hidden


class GPLinkerEE(nn.Module):
    """GPLinker for events: an encoder and three GlobalPointers (the post's model, §3 Eqs. 2-3).

    ``encoder(inputs, attention_mask) -> [B, L, hidden_size]``: a character encoder on token ids
    ``[B, L]`` (``lib.encoders.ScratchCharEncoder``, a full ``PretrainedEncoder``) or a trainable top on
    cached features ``[B, L, D]`` (``PretrainedEncoder.top(k)``, or :class:`CachedFeatures` for heads only).

    * arguments: ``num_labels`` heads, RoPE on, lower triangle masked -> ``[B, C, L, L]``;
    * head-head and tail-tail links: one head each, RoPE **off**, lower triangle masked (diagonal
      kept) -> ``[B, 1, L, L]`` each.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, head_size: int = 64,
                 efficient: bool = True, score_offset: float = 0.0) -> None:
        super().__init__()
        if isinstance(score_offset, bool) or not isinstance(score_offset, (int, float)) or not math.isfinite(score_offset):
            raise ValueError(f"score_offset: expected a finite number, got {score_offset!r}")
        if score_offset and not efficient:
            raise ValueError("score_offset: only an Efficient GlobalPointer has the per-class bias it sets")
        self.encoder = encoder
        self.argu = GlobalPointer(hidden_size, num_labels, head_size, rope=True, tril_mask=True,
                                  efficient=efficient)
        self.head = GlobalPointer(hidden_size, 1, head_size, rope=False, tril_mask=True, efficient=efficient)
        self.tail = GlobalPointer(hidden_size, 1, head_size, rope=False, tril_mask=True, efficient=efficient)
        if score_offset:
            for gp in (self.argu, self.head, self.tail):
                _start_scores_at(gp, -float(score_offset))

    def encode(self, inputs: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's output ``[B, L, H]`` with padding positions zeroed."""
        hidden = self.encoder(inputs, attention_mask)
        return hidden * attention_mask[..., None].to(hidden.dtype)

    def forward(self, inputs: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.encode(inputs, attention_mask)
        return (self.argu(hidden, attention_mask), self.head(hidden, attention_mask),
                self.tail(hidden, attention_mask))


def _start_scores_at(gp: GlobalPointer, offset: float) -> None:
    """Shift every initial score of an Efficient GlobalPointer by ``offset``.

    Its score is :math:`S_{ij} + r_{i\alpha} + c_{j\alpha}` with ``[c, r] = q_dense(u) / 2``; adding
    ``offset`` to each bias of ``q_dense`` adds ``offset / 2`` to both terms. A negative offset is the
    "prior probability" initialisation for rare positives: almost every one of the ``C L^2 / 2`` cells is a
    negative, so starting their scores far below zero skips the first phase of training, in which the
    model only learns to push all of them down."""
    if gp.q_dense.bias is None:
        raise ValueError("score_offset: the GlobalPointer has no bias (bias=False)")
    with torch.no_grad():
        gp.q_dense.bias.add_(offset)


def gplinker_loss(model: "GPLinkerEE", batch: Mapping[str, Tensor]) -> Tensor:
    """Sum of the three sparse multi-label CE losses (each summed over heads, mean over the batch).

    The argument GP uses :func:`~lib.globalpointer.efficient_globalpointer_loss` when it is an Efficient GP (same value as
    ``lib.globalpointer.globalpointer_loss`` on its logits, tested), else the dense logits.
    """
    mask = batch["attention_mask"]
    hidden = model.encode(batch["inputs"], mask)
    if model.argu.efficient:
        loss = efficient_globalpointer_loss(model.argu, hidden, mask, batch["argu_pairs"])
    else:
        loss = globalpointer_loss(model.argu(hidden, mask), batch["argu_pairs"])
    return (loss + globalpointer_loss(model.head(hidden, mask), batch["head_pairs"])
            + globalpointer_loss(model.tail(hidden, mask), batch["tail_pairs"]))


@dataclass
class SentenceScores:
    """Model scores of one sentence, kept sparse: argument cells above ``floor`` and the link matrices."""

    cells: np.ndarray   # [N, 3] int: (label, h, t)
    scores: np.ndarray  # [N] float
    head: np.ndarray    # [L, L]
    tail: np.ndarray    # [L, L]


@torch.no_grad()
def predict_scores(model: GPLinkerEE, items: Sequence[EncodedSentence], features: Sequence[Tensor] | None = None,
                   max_cells: int = 16 * 64 * 64, floor: float = -4.0, keep_top: int = 64) -> list[SentenceScores]:
    """Run the model in eval mode; per sentence keep the ``keep_top`` highest argument cells with score > ``floor``.

    :func:`decode_scores` with ``max_nodes <= keep_top`` decodes these exactly as it would decode every cell
    (it keeps the highest-scoring nodes above its threshold); the cap bounds memory for an untrained model,
    whose cells are nearly all above any floor.

    ``features``: one ``[L_i, D]`` tensor per item when the model's encoder reads cached features.
    Rows and columns of ``[CLS]``/``[SEP]`` are excluded (they are never a span), padding is cropped.
    """
    if features is not None and len(features) != len(items):
        raise ValueError(f"features: expected one tensor per item ({len(items)}), got {len(features)}")
    model.eval()
    device = next(model.parameters()).device
    out: list[SentenceScores | None] = [None] * len(items)
    for idx in length_batches([len(it.input_ids) for it in items], max_cells=max_cells, batch_size=64,
                              shuffle=False):
        batch = collate([items[i] for i in idx], model.argu.num_heads,
                        None if features is None else [features[i] for i in idx])
        inputs, mask = batch["inputs"].to(device), batch["attention_mask"].to(device)
        if model.argu.efficient:
            hidden = model.encode(inputs, mask)
            head, tail = (x.float().cpu() for x in (model.head(hidden, mask), model.tail(hidden, mask)))
            shared, row, col = (x.float().cpu() for x in model.argu.efficient_parts(hidden))
            parts = (shared, col.transpose(1, 2), row.transpose(1, 2))  # [B, L, L], [B, L, C], [B, L, C]
        else:
            argu, head, tail = (x.float().cpu() for x in model(inputs, mask))
        for b, i in enumerate(idx):
            n = len(items[i].input_ids)
            if model.argu.efficient:
                classes, a = _classes_above(*(x[b] for x in parts), n, floor)
            else:
                classes, a = torch.arange(argu.shape[1]), argu[b, :, 1:n - 1, 1:n - 1]
            values, flat = a.reshape(-1).topk(min(keep_top, a.numel()))
            flat = flat[values > floor]
            m = a.shape[-1]
            k, h, t = flat // (m * m), (flat // m) % m, flat % m
            out[i] = SentenceScores(torch.stack([classes[k], h + 1, t + 1], 1).numpy(), a[k, h, t].numpy(),
                                    head[b, 0, :n, :n].numpy(), tail[b, 0, :n, :n].numpy())
    return out  # type: ignore[return-value]


def _classes_above(S: Tensor, col: Tensor, row: Tensor, n: int, floor: float) -> tuple[Tensor, Tensor]:
    """The classes of one sentence that can have a cell above ``floor`` and their scores ``[K, n-2, n-2]``.

    Cells are the upper triangle between ``[CLS]`` and ``[SEP]``; a class whose upper bound
    :math:`\\max S + \\max_j c_{j\\alpha} + \\max_i r_{i\\alpha}` is not above ``floor`` has no such cell, so
    skipping it changes nothing (an untrained or a confident model has few classes above any floor)."""
    m = max(n - 2, 0)
    S, col, row = S[1:n - 1, 1:n - 1], col[1:n - 1], row[1:n - 1]
    S = S.masked_fill(~torch.ones(m, m, dtype=torch.bool).triu(), float("-inf"))
    if m == 0:
        return torch.zeros(0, dtype=torch.long), S.new_zeros(0, 0, 0)
    bound = S.max() + col.max(0).values + row.max(0).values   # [C]
    classes = torch.nonzero(bound > floor).flatten()
    return classes, S[None] + col[:, classes].T[:, None, :] + row[:, classes].T[:, :, None]


def decode_scores(scores: SentenceScores, labels: Sequence[tuple[str, str]], *, threshold_arg: float = 0.0,
                  threshold_link: float = 0.0, strategy: str = "clique", require_trigger: bool = False,
                  trigger_role: str = TRIGGER_ROLE, max_nodes: int | None = 64,
                  search: str = "networkx") -> list[frozenset]:
    """Algorithm 2 on sparse scores: nodes above ``threshold_arg``, links above ``threshold_link``.

    ``search`` picks the clique routine (see :func:`group_arguments`).

    ``max_nodes`` keeps only the highest-scoring nodes of a sentence (an untrained model
    at a low threshold yields thousands of nodes and dense graphs, whose maximal cliques explode);
    ``None`` disables the cap. Gold DuEE sentences have at most a few dozen nodes.
    """
    if max_nodes is not None and (not isinstance(max_nodes, int) or max_nodes < 1):
        raise ValueError(f"max_nodes: expected a positive int or None, got {max_nodes!r}")
    _check_threshold("decode_scores", "threshold_arg", threshold_arg)
    _check_threshold("decode_scores", "threshold_link", threshold_link)
    _check_finite_scores("decode_scores", "scores.scores", scores.scores)
    keep = np.flatnonzero(scores.scores > threshold_arg)
    if max_nodes is not None and len(keep) > max_nodes:
        keep = keep[np.argsort(-scores.scores[keep], kind="stable")[:max_nodes]]
    nodes = [(*labels[c], int(h), int(t)) for c, h, t in scores.cells[keep]]
    adjacent = link_adjacency(scores.head, scores.tail, threshold_link)
    events = group_arguments(nodes, adjacent, strategy, trigger_role, search)
    if require_trigger:
        events = [e for e in events if any(n[1] == trigger_role for n in e)]
    return sorted(set(events), key=sorted)


def trigger_prf(pred_docs: Sequence[Iterable[Iterable]], gold_docs: Sequence[Iterable[Iterable]],
                trigger_role: str = TRIGGER_ROLE) -> PRF:
    """Trigger-level P/R/F1: the set of ``(type, trigger_role, text, start)`` per sentence, exact match.

    Not a metric of the post; a diagnostic of the first thing a model learns (type + trigger)."""
    _check_docs(pred_docs, gold_docs)
    x = y = z = 0
    for pred, gold in zip(pred_docs, gold_docs):
        R = {a for e in pred for a in e if a[1] == trigger_role}
        T = {a for e in gold for a in e if a[1] == trigger_role}
        x, y, z = x + len(R & T), y + len(R), z + len(T)
    return _prf(x, y, z)


# ----------------------------------------------------------------------------------------------
# training and evaluation (both encoders of the chapter go through lib.train.fit)
# ----------------------------------------------------------------------------------------------
def warmup_linear_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor for step ``s``: linear warmup to 1 over ``warmup_steps``, then linear decay to 0
    at ``total_steps``."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: expected a positive int, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps: expected an int in [0, {total_steps}), got {warmup_steps!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / (total_steps - warmup_steps))

    return factor


def _adamw(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """AdamW without weight decay; the fused kernel where torch has one for ``device`` (on a CPU it is ~4x
    faster than the per-tensor loop for the 1.4M-parameter character model: the step is a fixed cost per
    batch), else ``foreach``. Both compute the same update."""
    try:
        return torch.optim.AdamW(groups, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=0.0, foreach=device.type != "cpu" or None)


def train_gplinker(model: GPLinkerEE, items: Sequence[EncodedSentence], *, steps: int, lr: float,
                   encoder_lr: float | None = None, warmup: float = 0.06, max_cells: int = 8 * 48 * 48,
                   batch_size: int = 64, features: Sequence[Tensor] | None = None, chunks: int = 4,
                   evaluate: Callable[[int], dict] | None = None, seed: int = 0,
                   desc: str = "GPLinker") -> Any:
    """Train ``model`` for ``steps`` AdamW steps on ``items`` with :func:`lib.train.fit`.

    Batches come from :func:`lib.train.length_batches` (``B * L^2 <= max_cells``, ``B <= batch_size``; a
    new seeded order each pass over the data). The heads use ``lr``, the encoder ``encoder_lr`` (default
    ``lr``); both follow :func:`warmup_linear_decay` with ``warmup * steps`` warmup steps. The steps are
    cut into ``chunks`` equal parts, the "epochs" of ``fit``: ``evaluate(chunk)`` runs after each (a
    learning curve). ``features``: one ``[L_i, D]`` tensor per item when the encoder reads cached
    features. Returns ``fit``'s History (loss per step, metrics per chunk)."""
    from lib.train import fit

    for name, value in (("steps", steps), ("chunks", chunks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if not items:
        raise ValueError("items: expected at least one training sentence")
    if features is not None and len(features) != len(items):
        raise ValueError(f"features: expected one tensor per item ({len(items)}), got {len(features)}")
    device = next(model.parameters()).device
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in encoder_ids], "lr": lr},
              {"params": list(model.encoder.parameters()), "lr": lr if encoder_lr is None else encoder_lr}]
    optimizer = _adamw([g for g in groups if g["params"]], device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(steps, int(warmup * steps)))
    lengths = [len(it.input_ids) for it in items]
    num_labels = model.argu.num_heads

    def stream():
        passes = 0
        while True:
            yield from length_batches(lengths, max_cells=max_cells, batch_size=batch_size, shuffle=True,
                                      seed=seed + passes)
            passes += 1

    order = stream()
    per_chunk = -(-steps // chunks)

    def batches(chunk: int) -> list[list[int]]:
        return [next(order) for _ in range(max(0, min(per_chunk, steps - chunk * per_chunk)))]

    def step(idx: list[int]) -> float:
        model.train()
        batch = collate([items[i] for i in idx], num_labels, None if features is None else [features[i] for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = gplinker_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.item()

    return fit(step, batches, chunks, evaluate=evaluate, desc=desc)


def score_documents(scores: Sequence[SentenceScores], items: Sequence[EncodedSentence],
                    labels: Sequence[tuple[str, str]], *, threshold_arg: float = 0.0, threshold_link: float = 0.0,
                    strategy: str = "clique") -> dict[str, PRF]:
    """Decode every sentence (:func:`decode_scores`) and score it against its gold events: ``trigger``,
    ``argument``, ``official`` and ``event`` P/R/F1."""
    if len(scores) != len(items):
        raise ValueError(f"scores, items: expected one SentenceScores per item, got {len(scores)} and {len(items)}")
    pred = [to_scored(decode_scores(sc, labels, threshold_arg=threshold_arg, threshold_link=threshold_link,
                                    strategy=strategy), it.text, it.offsets) for sc, it in zip(scores, items)]
    gold = [it.gold for it in items]
    return {"trigger": trigger_prf(pred, gold), "argument": argument_prf(pred, gold),
            "official": official_prf(pred, gold), "event": event_prf(pred, gold)}
