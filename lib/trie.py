"""Seq2Seq + prefix tree (kexue.fm/archives/8802): an integer trie, constrained decoding as a
`transformers.LogitsProcessor`, the look-ahead re-weighting and the KgCLUE knowledge base and metrics.

Layout of the module

* `Trie`: a prefix tree over integer token sequences, stored as flat arrays. Nodes are numbered in
  depth-first (pre-)order, so node ``n``'s subtree is the contiguous range ``[n, subtree_end[n])``; the
  children of ``n`` are ``child_token[child_ptr[n]:child_ptr[n + 1]]`` (sorted) and ``child_node[...]``.
* `DictTrie`: the GENRE-style nested-``dict`` trie walked from the root on every call; the slow,
  obviously-correct twin used by the tests and the benchmark.
* `TrieLogitsProcessor`: masks every token outside the allowed set with one scatter per step. Each beam
  keeps a cursor (its trie node) that advances by one child lookup per step; a beam whose prefix has left
  the trie (possible when there are fewer valid continuations than beams) or sits on a leaf is only
  allowed the end token, so the allowed set is never empty.
* `prefix_allowed_tokens_fn`: the same constraint through ``generate(prefix_allowed_tokens_fn=...)``.
* `lcs_length`, `lookahead_weights`, `LookAhead`: the post's look-ahead, eqs. (6)-(8).
* `split_meaning`, `KnowledgeBase`, `build_kb`, `CharVocab`: KgCLUE (S, M, P, O) facts, trie keys.
* `lcs_f1`, `kgclue_scores`: the official KgCLUE EM / F1 (``baselines/evaluate_f1_em.py``).
* `make_seq2seq`, `train_seq2seq`, `decode_keys`, `answers_from_keys`, `trace_greedy`: the small from-scratch
  encoder-decoder of the chapter, its decoding and the mapping from decoded keys to KB answers.
"""
from __future__ import annotations

import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from lib.checks import check_index_range

__all__ = [
    "Trie", "DictTrie", "TrieLogitsProcessor", "prefix_allowed_tokens_fn", "lcs_length", "lcs_length_dp",
    "lookahead_weights", "LookAhead", "split_meaning", "Fact", "KnowledgeBase", "build_kb", "CharVocab",
    "normalize_answer", "lcs_f1", "kgclue_scores", "deep_sizeof", "make_seq2seq", "make_bart", "train_seq2seq", "decode_keys",
    "answers_from_keys", "trace_greedy", "trie_figure",
]


MAX_TOKEN_ID = 2**31  # ids are stored as int32


def _check_sequences(sequences: object, name: str = "sequences") -> list[tuple[int, ...]]:
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Iterable):
        raise TypeError(f"{name} must be an iterable of integer sequences, got {type(sequences).__name__}")
    out = []
    for i, seq in enumerate(sequences):
        if isinstance(seq, (torch.Tensor, np.ndarray)):
            if seq.dtype.is_floating_point if isinstance(seq, torch.Tensor) else seq.dtype.kind not in "iu":
                raise TypeError(f"{name}[{i}] must hold integer token ids, got dtype {seq.dtype}")
            seq = seq.tolist()
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise TypeError(f"{name}[{i}] must be a sequence of ints, got {type(seq).__name__}")
        for t in seq:
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"{name}[{i}] must hold integer token ids, got {t!r} ({type(t).__name__})")
            if not 0 <= t < MAX_TOKEN_ID:
                raise ValueError(f"{name}[{i}] must hold non-negative token ids below 2**31 (stored as int32), got {t}")
        out.append(tuple(int(t) for t in seq))
    return out


# ----------------------------------------------------------------------------------------------------
# The trie
# ----------------------------------------------------------------------------------------------------
class Trie:
    """Prefix tree over integer sequences, stored as flat arrays (CSR child table, DFS node order).

    ``Trie(sequences, values=None, end_token=None)``. With ``end_token`` (GENRE style) the token is
    appended to every key, so "end" is an ordinary child and a key that is a prefix of another key stays
    reachable. Duplicate keys are stored once; their values accumulate in insertion order (the KB's
    "first object wins" rule reads ``get(key)[0]``).

    Arrays (int32; N nodes including the root = node 0, E = N - 1 edges):
    ``child_ptr [N+1]``, ``child_token [E]``, ``child_node [E]``, ``subtree_end [N]``, ``node_key [N]``
    (key index ending at this node, else -1), ``key_node [K]``.

    Allowed set (eq. 1): ``A(y) = {v : y v is a prefix of some key}`` = the children of ``y``'s node.
    """

    def __init__(self, sequences: Iterable[Sequence[int]] = (), values: Sequence | None = None,
                 end_token: int | None = None):
        seqs = _check_sequences(sequences)
        if values is not None:
            values = list(values)
            if len(values) != len(seqs):
                raise ValueError(f"values must have one entry per sequence ({len(seqs)}), got {len(values)}")
        if end_token is not None and (not isinstance(end_token, int) or end_token < 0):
            raise ValueError(f"end_token must be a non-negative int or None, got {end_token!r}")
        if end_token is not None and any(end_token in seq for seq in seqs):
            raise ValueError(f"sequences must not contain end_token={end_token}; it is appended to every key")
        self.end_token = end_token
        # distinct keys in first-insertion order, values accumulated
        index: dict[tuple[int, ...], int] = {}
        self.keys: list[tuple[int, ...]] = []
        self._values: list[list] = []
        for i, seq in enumerate(seqs):
            k = index.setdefault(seq, len(self.keys))
            if k == len(self.keys):
                self.keys.append(seq)
                self._values.append([])
            if values is not None:
                self._values[k].append(values[i])
        self._build()

    # -- construction: sort the stored paths; the DFS pre-order is the order in which nodes first appear
    def _build(self) -> None:
        paths = [key + (self.end_token,) if self.end_token is not None else key for key in self.keys]
        order = sorted(range(len(paths)), key=paths.__getitem__)
        parent, token, node_key, depth, end = [-1], [-1], [-1], [0], [0]
        stack = [0]  # stack[d] = node at depth d on the current path
        prev: tuple[int, ...] = ()
        for k in order:
            path = paths[k]
            lcp = 0
            while lcp < min(len(prev), len(path)) and prev[lcp] == path[lcp]:
                lcp += 1
            for v in stack[lcp + 1:]:  # these subtrees are complete: the next node is outside them
                end[v] = len(parent)
            del stack[lcp + 1:]
            for t in path[lcp:]:
                parent.append(stack[-1])
                token.append(t)
                node_key.append(-1)
                depth.append(len(stack))
                end.append(0)
                stack.append(len(parent) - 1)
            node_key[stack[len(path)]] = k
            prev = path
        for v in stack:
            end[v] = len(parent)
        n, i32 = len(parent), np.int32
        parent_a, token_a = np.asarray(parent, dtype=np.int64), np.asarray(token, dtype=np.int64)
        # children of a node appear in increasing node order and (sorted paths) increasing token order
        counts = np.bincount(parent_a[1:], minlength=n) if n > 1 else np.zeros(n, dtype=np.int64)
        self.child_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(i32)
        edge_order = np.argsort(parent_a[1:], kind="stable") + 1
        self.child_node = edge_order.astype(i32)
        self.child_token = token_a[edge_order].astype(i32)
        self.subtree_end = np.asarray(end, dtype=i32)
        self.node_key = np.asarray(node_key, dtype=i32)
        self.key_node = np.empty(len(self.keys), dtype=i32)
        terminal = np.flatnonzero(self.node_key >= 0)
        self.key_node[self.node_key[terminal]] = terminal
        self.parent = parent_a.astype(i32)
        self.node_token = token_a.astype(i32)  # token on the edge into each node (-1 for the root)
        self.depth = np.asarray(depth, dtype=i32)
        # global edge key parent * stride + token is sorted: cursor moves are one searchsorted
        self._stride = int(token_a.max()) + 1 if n > 1 else 1
        self._edge_key = torch.from_numpy(parent_a[edge_order] * self._stride + token_a[edge_order])
        self._child_node_t = torch.from_numpy(self.child_node)
        self._keys_by_node = np.argsort(self.key_node, kind="stable").astype(i32)
        self._sorted_key_node = self.key_node[self._keys_by_node]

    # -- sizes
    def __len__(self) -> int:
        return len(self.keys)

    def num_nodes(self) -> int:
        """Number of nodes excluding the root = number of distinct non-empty stored prefixes."""
        return len(self.parent) - 1

    def nbytes(self) -> int:
        """Bytes of every array the trie holds (int32 child table, pointers, key maps, parent, depth,
        subtree ends, and the int64 edge-key search index), i.e. the whole structure minus ``self.keys``."""
        arrays = (self.child_ptr, self.child_token, self.child_node, self.node_key, self.key_node, self.parent,
                  self.node_token, self.depth, self.subtree_end, self._keys_by_node, self._sorted_key_node)
        return int(sum(a.nbytes for a in arrays)) + self._edge_key.numel() * 8

    # -- navigation
    def node(self, prefix: Sequence[int]) -> int:
        """Node reached by walking ``prefix`` from the root; -1 if ``prefix`` leaves the trie."""
        n = 0
        for t in prefix:
            n = self.child(n, int(t))
            if n < 0:
                return -1
        return n

    def child(self, node: int, token: int) -> int:
        """The child of ``node`` along ``token`` (binary search in its sorted child table), else -1."""
        lo, hi = int(self.child_ptr[node]), int(self.child_ptr[node + 1])
        j = lo + int(np.searchsorted(self.child_token[lo:hi], token))
        return int(self.child_node[j]) if j < hi and self.child_token[j] == token else -1

    def children(self, node: int) -> list[int]:
        """Tokens of the children of ``node`` (sorted); [] for a leaf or an invalid node (-1)."""
        if node < 0:
            return []
        return self.child_token[self.child_ptr[node]:self.child_ptr[node + 1]].tolist()

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Allowed set A(prefix) (eq. 1), sorted; [] when the prefix is invalid or a leaf."""
        return self.children(self.node(prefix))

    def advance(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One cursor step for a batch: ``[R]`` nodes and ``[R]`` tokens -> ``[R]`` child nodes (-1 = left).

        One ``searchsorted`` over the global edge keys ``parent * stride + token`` (sorted by construction)."""
        nodes, tokens = nodes.long(), tokens.long()
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < self._stride)
        query = torch.where(ok, nodes * self._stride + tokens, torch.zeros_like(nodes))
        j = torch.searchsorted(self._edge_key, query).clamp(max=max(len(self._edge_key) - 1, 0))
        if len(self._edge_key) == 0:
            return torch.full_like(nodes, -1)
        hit = ok & (self._edge_key[j] == query)
        return torch.where(hit, self._child_node_t[j].long(), torch.full_like(nodes, -1))

    def __contains__(self, seq: object) -> bool:
        try:
            key = tuple(int(t) for t in seq)  # type: ignore[union-attr]
        except TypeError:
            return False
        n = self.node(key)
        if n >= 0 and self.end_token is not None:
            n = self.child(n, self.end_token)
        return n >= 0 and self.node_key[n] >= 0

    def get(self, seq: Sequence[int], default=None) -> list | None:
        """Values stored under the complete key ``seq`` (a list, insertion order), else ``default``."""
        if seq not in self:
            return default
        n = self.node(tuple(seq))
        if self.end_token is not None:
            n = self.child(n, self.end_token)
        return list(self._values[int(self.node_key[n])])

    def keys_under(self, node: int) -> np.ndarray:
        """Indices of the keys whose path runs through ``node`` (its DFS subtree), as ``[k]`` int64."""
        if node < 0:
            return np.zeros(0, dtype=np.int64)
        lo = np.searchsorted(self._sorted_key_node, node)
        hi = np.searchsorted(self._sorted_key_node, self.subtree_end[node])
        return self._keys_by_node[lo:hi]

    def completions(self, prefix: Sequence[int]) -> Iterator[tuple[int, ...]]:
        """All stored keys that extend ``prefix`` (the look-ahead candidates C(prefix)), in DFS order."""
        for k in self.keys_under(self.node(prefix)):
            yield self.keys[int(k)]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        """Enumerate the keys by walking the child table depth first (not from ``self.keys``)."""
        stack: list[tuple[int, tuple[int, ...]]] = [(0, ())]
        while stack:
            n, path = stack.pop()
            if self.node_key[n] >= 0:
                yield path[:-1] if self.end_token is not None else path
            lo, hi = self.child_ptr[n], self.child_ptr[n + 1]
            for j in range(hi - 1, lo - 1, -1):
                stack.append((int(self.child_node[j]), path + (int(self.child_token[j]),)))

    def allowed_table(self, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR of the allowed set per node, with one extra row for "left the trie" (index N).

        Row n = children of n, or ``[eos_token_id]`` when n has none (leaf or invalid): never empty.
        Returns ``(ptr [N+2], tokens [sum])``."""
        counts = np.diff(self.child_ptr)
        empty = counts == 0
        lists_ptr = np.concatenate([[0], np.cumsum(np.where(empty, 1, counts)), [0]])
        lists_ptr[-1] = lists_ptr[-2] + 1
        tokens = np.full(lists_ptr[-1], eos_token_id, dtype=np.int64)  # leaves and the extra row: eos
        edges = np.arange(len(self.child_token))
        owner = self.parent[self.child_node]                               # node owning each edge
        tokens[lists_ptr[owner] + edges - self.child_ptr[owner]] = self.child_token
        return torch.from_numpy(lists_ptr.astype(np.int64)), torch.from_numpy(tokens.astype(np.int32))


class DictTrie:
    """GENRE-style trie: nested ``dict``s, walked from the root on every ``get`` (the baseline twin)."""

    def __init__(self, sequences: Iterable[Sequence[int]] = ()):
        self.root: dict = {}
        for seq in _check_sequences(sequences):
            node = self.root
            for t in seq:
                node = node.setdefault(t, {})

    def get(self, prefix: Sequence[int]) -> list[int]:
        """Next tokens after ``prefix`` (dict order); [] for an unknown prefix or a leaf."""
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return []
        return list(node)


# ----------------------------------------------------------------------------------------------------
# Constrained decoding
# ----------------------------------------------------------------------------------------------------
class TrieLogitsProcessor(LogitsProcessor):
    """Constrain ``generate`` to the keys of ``trie`` (one scatter per step, O(1) cursor moves).

    Input ``input_ids [R, T]`` (R = batch * num_beams), ``scores [R, V]``; output ``[R, V]``.
    The first ``prompt_len`` tokens of each row (the decoder start token for BART) are not part of the key.

    * cursors: the processor remembers each row's trie node from the previous call. In beam search the
      rows are reordered between steps, so each row's parent is found among the ``num_beams`` rows of its
      group at the previous step (one batched equality test of the prefixes), then advanced by one child
      lookup. Nothing is walked from the root, except on the first call of a new ``generate`` (rows of
      length ``prompt_len``: root) or when no parent matches (counted in ``self.fallback_walks``).
    * allowed set: children of the node; a leaf or a row that has left the trie gets ``{eos}`` only.
    * masking (eq. 2): ``scores.masked_fill(~allowed, -inf)``, then ``log_softmax`` when
      ``renormalize`` (bert4keras style, sums of renormalised log-probs in beam search).
    * look-ahead (eq. 8, optional): ``log p_v <- log p_v / w_v`` on the full log-softmax *before* masking.
    """

    def __init__(self, trie: Trie, eos_token_id: int, num_beams: int = 1, prompt_len: int = 1,
                 renormalize: bool = False, lookahead: "LookAhead | None" = None):
        if not isinstance(trie, Trie):
            raise TypeError(f"trie must be a lib.trie.Trie, got {type(trie).__name__}")
        for name, value, low in (("eos_token_id", eos_token_id, 0), ("num_beams", num_beams, 1),
                                 ("prompt_len", prompt_len, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if lookahead is not None and not isinstance(lookahead, LookAhead):
            raise TypeError(f"lookahead must be a LookAhead or None, got {type(lookahead).__name__}")
        self.trie, self.eos, self.num_beams, self.prompt_len = trie, eos_token_id, num_beams, prompt_len
        self.renormalize, self.lookahead = bool(renormalize), lookahead
        self._ptr, self._tok = trie.allowed_table(eos_token_id)
        self._dead = len(trie.parent)
        self._prev_ids: torch.Tensor | None = None
        self._prev_nodes: torch.Tensor | None = None
        self.fallback_walks = 0

    def reset(self) -> None:
        """Forget the cursors (done automatically when a new ``generate`` starts)."""
        self._prev_ids = self._prev_nodes = None

    def _walk(self, rows: torch.Tensor) -> torch.Tensor:
        nodes = torch.zeros(rows.shape[0], dtype=torch.long)
        for t in range(self.prompt_len, rows.shape[1]):
            nodes = self.trie.advance(nodes, rows[:, t])
        return nodes

    def nodes_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[R, T]`` -> ``[R]`` trie node of every row (-1 = left the trie), updating the cursors."""
        R, T = input_ids.shape
        prev = self._prev_ids
        if T <= self.prompt_len:
            nodes = torch.zeros(R, dtype=torch.long)
        elif prev is not None and prev.shape == (R, T - 1) and R % self.num_beams == 0:
            k = self.num_beams
            cur = input_ids[:, :-1].reshape(R // k, k, 1, T - 1)
            same = (cur == prev.reshape(R // k, 1, k, T - 1)).all(-1)            # [B, k, k]
            found, parent = same.any(-1), same.float().argmax(-1)                 # [B, k]
            parent = (parent + torch.arange(0, R, k).unsqueeze(1)).reshape(R)
            nodes = self.trie.advance(self._prev_nodes[parent], input_ids[:, -1])
            missing = ~found.reshape(R)
            if missing.any():
                self.fallback_walks += int(missing.sum())
                nodes[missing] = self._walk(input_ids[missing])
        else:
            if T > self.prompt_len + 1 or prev is not None:
                self.fallback_walks += R
            nodes = self._walk(input_ids)
        self._prev_ids, self._prev_nodes = input_ids.clone(), nodes
        return nodes

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """``[R]`` nodes -> ``[R, V]`` bool mask of allowed tokens, built with one ``index_put_``.

        The mask is built once per *distinct* node and gathered per row, so the first step (every row at
        the root, whose allowed set can hold thousands of tokens) writes the root's row once."""
        rows_node = torch.where(nodes >= 0, nodes, torch.full_like(nodes, self._dead))
        unique, inverse = torch.unique(rows_node, return_inverse=True)
        start, stop = self._ptr[unique], self._ptr[unique + 1]
        counts = stop - start
        rows = torch.repeat_interleave(torch.arange(len(unique)), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        cols = self._tok[torch.repeat_interleave(start, counts) + offsets].long()
        if len(cols) and int(cols.max()) >= vocab_size:
            raise ValueError(f"trie holds token {int(cols.max())} but scores have only {vocab_size} columns")
        mask = torch.zeros(len(unique), vocab_size, dtype=torch.bool)
        mask.index_put_((rows, cols), torch.ones(len(cols), dtype=torch.bool))
        return mask if len(unique) == len(nodes) and bool((inverse == torch.arange(len(nodes))).all()) else mask[inverse]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError(f"expected input_ids [R, T] and scores [R, V] with the same R, got "
                             f"{tuple(input_ids.shape)} and {tuple(scores.shape)}")
        nodes = self.nodes_for(input_ids.cpu())
        mask = self.allowed_mask(nodes, scores.shape[1]).to(scores.device)
        if self.lookahead is not None:
            scores = self.lookahead.reweight(self, input_ids, nodes, scores.float().log_softmax(-1))
        scores = scores.masked_fill(~mask, -math.inf)
        return scores.log_softmax(-1) if self.renormalize else scores


def prefix_allowed_tokens_fn(trie: Trie | DictTrie, eos_token_id: int, prompt_len: int = 1
                             ) -> Callable[[int, torch.Tensor], list[int]]:
    """``fn(batch_id, input_ids [T]) -> allowed tokens`` for ``generate(prefix_allowed_tokens_fn=fn)``.

    Walks the trie from the root on every call (that is what the hook allows). Returns ``[eos]`` for a
    leaf or an invalid prefix, never ``[]`` (recent transformers raise on an empty list)."""
    if not isinstance(trie, (Trie, DictTrie)):
        raise TypeError(f"trie must be a Trie or DictTrie, got {type(trie).__name__}")

    def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        prefix = input_ids[prompt_len:].tolist()
        allowed = trie.next_tokens(prefix) if isinstance(trie, Trie) else trie.get(prefix)
        return allowed or [eos_token_id]

    return fn


# ----------------------------------------------------------------------------------------------------
# Look-ahead (eqs. 6-8)
# ----------------------------------------------------------------------------------------------------
def lcs_length_dp(a: Sequence, b: Sequence) -> int:
    """Longest common subsequence length by the textbook O(|a||b|) DP (eq. 9); the slow twin."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Longest common subsequence length, bit-parallel (Allison-Dix / Hyyrö): O(|b|) big-int operations.

    ``V`` holds one bit per position of ``a``; for each symbol ``y`` of ``b`` with match mask ``M_y``:
    ``U = V & M_y``, ``V = (V + U) | (V - U)``; the LCS is the number of zero bits of ``V``.
    Works on ``str`` or sequences of hashables."""
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        raise TypeError(f"a and b must be sequences, got {type(a).__name__} and {type(b).__name__}")
    m = len(a)
    if m == 0 or len(b) == 0:
        return 0
    masks: dict = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << m) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def lookahead_weights(prefix: Sequence, question: Sequence, completions: Iterable[Sequence]) -> dict:
    """Per-next-token weights ``w_v`` of eqs. (6)-(7).

    ``Delta(c) = LCS(c, Q) - LCS(prefix, Q)`` for each completion ``c`` (which must extend ``prefix``),
    ``w_v = max(1, max_{c: c_t = v} Delta(c) + 1)`` with ``t = len(prefix)``. Completions equal to the
    prefix (nothing left to decode) are skipped. Returns ``{v: w_v}``."""
    prefix = list(prefix)
    base = lcs_length(prefix, question)
    t, weights = len(prefix), {}
    for c in completions:
        c = list(c)
        if c[:t] != prefix:
            raise ValueError(f"completion {c} does not extend the prefix {prefix}")
        if len(c) == t:
            continue
        w = lcs_length(c, question) - base + 1
        weights[c[t]] = max(weights.get(c[t], 1), w)
    return weights


@dataclass
class LookAhead:
    """Look-ahead state for `TrieLogitsProcessor`: one question per batch item.

    ``questions[b]`` are the token ids the candidates are compared with (the encoder input of item ``b``).
    The re-weighting runs on a row when its node has at least ``min_children`` children and (if
    ``sep_token_id`` is given) the decoded prefix already holds that separator, i.e. S is finished (the
    rule of the post's code). ``strength`` is λ ≥ 0 in ``p^{1/(1 + λ Δ)}`` (λ = 1 is the post's rule,
    λ = 0 switches the re-weighting off). Candidates are the whole keys, compared with the whole question
    (as in the post's code)."""

    questions: Sequence[Sequence[int]]
    sep_token_id: int | None = None
    min_children: int = 2
    strength: float = 1.0
    calls: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength < math.inf:
            raise ValueError(f"strength must be a finite number >= 0 (λ in p^(1/(1 + λΔ))), got {strength!r}")
        if isinstance(self.min_children, bool) or not isinstance(self.min_children, int) or self.min_children < 1:
            raise ValueError(f"min_children must be a positive int, got {self.min_children!r}")

    def _key_lcs(self, trie: Trie, b: int, k: int) -> int:
        hit = self._cache.get((b, k))
        if hit is None:
            hit = self._cache[(b, k)] = lcs_length(trie.keys[k], self.questions[b])
        return hit

    def row_weights(self, trie: Trie, b: int, prefix: list[int], node: int) -> tuple[list[int], list[float]]:
        """Children tokens of ``node`` and their weights ``1 + λ·max Δ`` (computed over DFS subtrees)."""
        base = lcs_length(prefix, self.questions[b])
        tokens, weights = [], []
        lo, hi = trie.child_ptr[node], trie.child_ptr[node + 1]
        for j in range(lo, hi):
            keys = trie.keys_under(int(trie.child_node[j]))
            best = max((self._key_lcs(trie, b, int(k)) for k in keys), default=base) - base
            tokens.append(int(trie.child_token[j]))
            weights.append(1.0 + self.strength * max(best, 0))
        return tokens, weights

    def reweight(self, proc: TrieLogitsProcessor, input_ids: torch.Tensor, nodes: torch.Tensor,
                 logp: torch.Tensor) -> torch.Tensor:
        """``logp [R, V]`` (full log-softmax) -> ``logp / w`` on the children of each qualifying row."""
        trie, k = proc.trie, proc.num_beams
        if len(self.questions) * k != input_ids.shape[0]:
            raise ValueError(f"LookAhead has {len(self.questions)} questions but the batch has "
                             f"{input_ids.shape[0]} rows for num_beams={k}")
        ptr = torch.from_numpy(trie.child_ptr).long()
        counts = ptr[nodes.clamp(min=0) + 1] - ptr[nodes.clamp(min=0)]
        rows = torch.nonzero((nodes >= 0) & (counts >= self.min_children)).flatten().tolist()
        logp = logp.clone()
        for r in rows:
            prefix = input_ids[r, proc.prompt_len:].tolist()
            if self.sep_token_id is not None and self.sep_token_id not in prefix:
                continue
            tokens, weights = self.row_weights(trie, r // k, prefix, int(nodes[r]))
            self.calls += 1
            logp[r, tokens] = logp[r, tokens] / torch.tensor(weights, dtype=logp.dtype)
        return logp


# ----------------------------------------------------------------------------------------------------
# KgCLUE: facts, knowledge base, vocabulary, metrics
# ----------------------------------------------------------------------------------------------------
def split_meaning(subject: str) -> tuple[str, str]:
    """``"S（M）" -> ("S", "M")``: the text inside the *last* full-width parentheses, only when the subject
    ends with ``）`` and the group is balanced; otherwise ``(subject, "")``.

    Nested groups are taken whole: ``"A（B（C））" -> ("A", "B（C）")``."""
    if not isinstance(subject, str):
        raise TypeError(f"subject must be a str, got {type(subject).__name__}")
    s = subject.strip()
    if not s.endswith("）"):
        return s, ""
    depth = 0
    for i in range(len(s) - 1, -1, -1):
        if s[i] == "）":
            depth += 1
        elif s[i] == "（":
            depth -= 1
            if depth == 0:
                return (s[:i].strip(), s[i + 1:-1]) if i > 0 else (s, "")
    return s, ""


class Fact(NamedTuple):
    """One KB fact, the post's quadruple (S, M, P, O)."""

    subject: str
    meaning: str
    relation: str
    object: str

    @property
    def full_subject(self) -> str:
        """The subject as written in the KB and the official answers: ``S（M）`` or ``S``."""
        return f"{self.subject}（{self.meaning}）" if self.meaning else self.subject


ORDERS = {"SPM": ("subject", "relation", "meaning"), "SMP": ("subject", "meaning", "relation")}


class KnowledgeBase:
    """An ordered list of facts; ``lookup(S, M, P)`` returns the first object (the baseline's rule)."""

    def __init__(self, facts: Iterable[Fact]):
        self.facts = [Fact(*f) for f in facts]
        self._first: dict[tuple[str, str, str], str] = {}
        for f in self.facts:
            self._first.setdefault((f.subject, f.meaning, f.relation), f.object)

    def __len__(self) -> int:
        return len(self.facts)

    def lookup(self, subject: str, meaning: str, relation: str) -> str | None:
        return self._first.get((subject, meaning, relation))

    def entities(self) -> set[tuple[str, str]]:
        return {(f.subject, f.meaning) for f in self.facts}


def build_kb(records: Iterable, n_relations: int = 3, p_homonym: float = 0.3, seed: int = 0) -> KnowledgeBase:
    """A KB from KgCLUE answer triples plus distractor facts (the 20M-triple KB is not available).

    ``records`` have ``.subject`` (``S（M）``), ``.relation``, ``.object``. For every distinct entity (S, M):
    ``n_relations`` extra facts with relations drawn by corpus frequency (objects drawn from that relation's
    objects); with probability ``p_homonym`` a homonym (S, M') with a meaning M' ≠ M drawn from the meaning
    pool, holding ``n_relations + 1`` random relations. Gold facts come first (file order)."""
    if not isinstance(n_relations, int) or n_relations < 0:
        raise ValueError(f"n_relations must be a non-negative int, got {n_relations!r}")
    if not 0.0 <= float(p_homonym) <= 1.0:
        raise ValueError(f"p_homonym must be in [0, 1], got {p_homonym!r}")
    gold = []
    for r in records:
        s, m = split_meaning(r.subject)
        gold.append(Fact(s, m, r.relation.strip(), " ".join(r.object.split())))
    if not gold:
        raise ValueError("records must not be empty")
    rng = random.Random(seed)
    rel_count = Counter(f.relation for f in gold)
    relations, rel_weights = list(rel_count), list(rel_count.values())
    objects: dict[str, list[str]] = {}
    for f in gold:
        objects.setdefault(f.relation, []).append(f.object)
    meanings = sorted({f.meaning for f in gold if f.meaning})
    has: dict[tuple[str, str], set[str]] = {}
    for f in gold:
        has.setdefault((f.subject, f.meaning), set()).add(f.relation)
    subjects = {s for s, _ in has}
    taken = set(has)
    extra = []

    def add_relations(entity: tuple[str, str], n: int) -> None:
        owned = has.setdefault(entity, set())
        for _ in range(n):
            rel = rng.choices(relations, rel_weights)[0]
            if rel not in owned:
                owned.add(rel)
                extra.append(Fact(entity[0], entity[1], rel, rng.choice(objects[rel])))

    for entity in list(has):
        add_relations(entity, n_relations)
    for s in sorted(subjects):
        if meanings and rng.random() < p_homonym:
            m = rng.choice(meanings)
            if (s, m) not in taken:
                taken.add((s, m))
                add_relations((s, m), n_relations + 1)
    return KnowledgeBase(gold + extra)


class CharVocab:
    """A compact character vocabulary over the bert-base-chinese tokens that occur in ``texts``.

    Character level: every non-space character is one token, looked up (lower-cased) in the WordPiece
    vocabulary of ``tokenizer`` (``tokenizer.get_vocab()``); characters the vocabulary lacks become
    ``[UNK]`` (the post's [UNK] failure mode). Ids: 0 ``[PAD]``, 1 ``[BOS]`` (decoder start),
    2 ``[EOS]``, 3 ``[SEP]`` (field separator), 4 ``[UNK]``, 5 ``[SPM]`` and 6 ``[SMP]`` (decoder start
    tokens of a model trained on both target orders), then the occurring characters in first-seen order. Keeping only occurring tokens keeps the output softmax small."""

    PAD, BOS, EOS, SEP, UNK = 0, 1, 2, 3, 4
    ORDER_TOKENS = {"SPM": 5, "SMP": 6}  # decoder start tokens that select the target order
    SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[SEP]", "[UNK]", "[SPM]", "[SMP]")

    def __init__(self, tokenizer, texts: Iterable[str]):
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else dict(tokenizer)
        self.tokens: list[str] = list(self.SPECIALS)
        self.index: dict[str, int] = {}
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must hold str, got {type(text).__name__}")
            for ch in text.lower():
                if ch not in self.index and not ch.isspace() and ch in vocab:
                    self.index[ch] = len(self.tokens)
                    self.tokens.append(ch)
        self.bert_ids = [vocab.get(t, -1) for t in self.tokens]

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Text -> compact ids, one per non-space character (unknown characters -> ``[UNK]``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        get, unk = self.index.get, self.UNK
        return [get(ch, unk) for ch in text.lower() if not ch.isspace()]

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Compact ids -> text; ``[SEP]`` shown as ``|``, other specials by name."""
        check_index_range("ids", ids, 0, len(self.tokens))
        return "".join("|" if int(i) == self.SEP else self.tokens[int(i)] for i in ids)

    def key(self, fact: Fact, order: str = "SPM") -> list[int]:
        """The trie key of a fact: the three fields in ``order`` joined by ``[SEP]`` (no end token)."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        fields = [self.encode(getattr(fact, name)) for name in ORDERS[order]]
        return fields[0] + [self.SEP] + fields[1] + [self.SEP] + fields[2]


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, whitespace runs collapsed to one space."""
    return " ".join(text.lower().split())


def lcs_f1(a: str, b: str) -> float:
    """Official string F1 (eq. 10): ``2 LCS(a, b) / (|a| + |b|)``, 0 when both are empty."""
    if not isinstance(a, str) or not isinstance(b, str):
        raise TypeError(f"a and b must be str, got {type(a).__name__} and {type(b).__name__}")
    if not a and not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def kgclue_scores(predictions: Sequence[tuple[str, str, str]], golds: Sequence[tuple[str, str, str]]
                  ) -> dict[str, float]:
    """Official KgCLUE metrics over (S, P, O) string triples (S as written, with its ``（M）``).

    Returns fractions (the official script prints ×100): ``EM_S, EM_P, EM_O, EM_All, F1_S, F1_P, F1_O,
    F1_All`` (All: EM of the triple, F1 of the concatenation S+P+O) and ``EMF1 = (EM_O + F1_O) / 2``."""
    if len(predictions) != len(golds):
        raise ValueError(f"predictions ({len(predictions)}) and golds ({len(golds)}) differ in length")
    if not golds:
        raise ValueError("golds must not be empty")
    m = {f"{a}_{b}": 0.0 for a in ("EM", "F1") for b in ("All", "S", "P", "O")}
    for pred, gold in zip(predictions, golds):
        if len(pred) != 3 or len(gold) != 3:
            raise ValueError(f"each prediction and gold must be an (S, P, O) triple, got {pred!r}, {gold!r}")
        p, g = [normalize_answer(x) for x in pred], [normalize_answer(x) for x in gold]
        for name, i in (("S", 0), ("P", 1), ("O", 2)):
            m[f"EM_{name}"] += float(p[i] == g[i])
            m[f"F1_{name}"] += lcs_f1(p[i], g[i])
        m["EM_All"] += float(p == g)
        m["F1_All"] += lcs_f1("".join(p), "".join(g))
    m = {k: v / len(golds) for k, v in m.items()}
    m["EMF1"] = 0.5 * m["EM_O"] + 0.5 * m["F1_O"]
    return m


def deep_sizeof(obj: object) -> int:
    """Bytes of a nested container by ``sys.getsizeof`` over everything reachable (each object once)."""
    seen, stack, total = set(), [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
    return total


# ----------------------------------------------------------------------------------------------------
# The small encoder-decoder
# ----------------------------------------------------------------------------------------------------
def make_seq2seq(vocab_size: int, arch: str = "bart", d_model: int = 128, layers: int = 2, heads: int = 4,
                 ffn: int = 256, max_len: int = 96, seed: int = 0):
    """A randomly initialised transformers encoder-decoder from a small config (no download).

    ``arch="bart"``: ``BartForConditionalGeneration`` (learned positions). ``arch="marian"``:
    ``MarianMTModel``, the same Post-LN encoder-decoder with *sinusoidal* positions (nothing to learn
    there, which helps a model trained for a few CPU-minutes to copy the subject out of the question).
    Shared input/output embeddings; special ids follow `CharVocab`: pad 0, decoder start 1, eos 2;
    no forced BOS/EOS, no n-gram blocking."""
    from transformers import BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel

    if not isinstance(vocab_size, int) or vocab_size < 5:
        raise ValueError(f"vocab_size must be an int >= 5, got {vocab_size!r}")
    if arch not in ("bart", "marian"):
        raise ValueError(f"arch must be 'bart' or 'marian', got {arch!r}")
    common = dict(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn, max_position_embeddings=max_len, pad_token_id=CharVocab.PAD,
        bos_token_id=CharVocab.BOS, eos_token_id=CharVocab.EOS, decoder_start_token_id=CharVocab.BOS,
        forced_eos_token_id=None, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=True,
    )
    torch.manual_seed(seed)
    if arch == "bart":
        model = BartForConditionalGeneration(BartConfig(forced_bos_token_id=None, **common))
    else:
        model = MarianMTModel(MarianConfig(**common))
    model.eval()
    gc = model.generation_config
    gc.forced_bos_token_id = gc.forced_eos_token_id = None
    gc.no_repeat_ngram_size, gc.min_length = 0, 0
    gc.bad_words_ids = None
    return model


def make_bart(vocab_size: int, d_model: int = 128, layers: int = 2, heads: int = 4, ffn: int = 256,
              max_len: int = 96, seed: int = 0):
    """A randomly initialised ``BartForConditionalGeneration`` from a small config (`make_seq2seq`)."""
    return make_seq2seq(vocab_size, "bart", d_model, layers, heads, ffn, max_len, seed)


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def length_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar lengths (sort within chunks of 50 batches) to cut padding."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 50
    batches = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c:c + chunk], key=lambda i: lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def train_seq2seq(model, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
               epochs: float = 1.0, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
               starts: Sequence[int] | None = None, progress: bool = False) -> dict:
    """Teacher-forced cross-entropy training: ``sources`` -> ``targets + [EOS]`` (AdamW, linear decay).

    ``starts[i]`` is the decoder start token of example ``i`` (default ``[BOS]``); a different start token
    per target order lets one model learn both orders.
    ``epochs`` may be fractional (the last epoch is cut). Returns ``{"losses": [...], "seconds": s,
    "steps": n}``; the model is left in eval mode."""
    import time

    from lib.train import fit

    if len(sources) != len(targets) or not sources:
        raise ValueError(f"sources and targets must be non-empty and equally long, got {len(sources)}, {len(targets)}")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs!r}")
    starts = [CharVocab.BOS] * len(sources) if starts is None else list(starts)
    if len(starts) != len(sources):
        raise ValueError(f"starts must have one token per source ({len(sources)}), got {len(starts)}")
    full_epochs = math.ceil(epochs)
    per_epoch = math.ceil(len(sources) / batch_size)
    total = max(1, int(round(epochs * per_epoch)))
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / total))
    lengths = [len(s) + len(t) for s, t in zip(sources, targets)]

    def batches(epoch: int):
        all_b = length_batches(lengths, batch_size, seed + epoch)
        left = total - epoch * per_epoch
        for b in all_b[:max(left, 0)]:
            src = _pad([sources[i] for i in b], CharVocab.PAD)
            labels = _pad([list(targets[i]) + [CharVocab.EOS] for i in b], -100)
            dec = _pad([[starts[i]] + list(targets[i]) for i in b], CharVocab.PAD)
            yield src, dec, labels

    def step(batch) -> float:
        src, dec, labels = batch
        out = model(input_ids=src, attention_mask=src.ne(CharVocab.PAD), decoder_input_ids=dec, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return out.loss.item()

    model.train()
    start = time.perf_counter()
    history = fit(step, batches, full_epochs, desc="bart", progress=progress)
    model.eval()
    return {"losses": history.losses, "seconds": time.perf_counter() - start, "steps": len(history.losses)}


@torch.no_grad()
def decode_keys(model, sources: Sequence[Sequence[int]], *, trie: Trie | None = None, num_beams: int = 1,
                renormalize: bool = True, lookahead: bool = False, sep_token_id: int | None = CharVocab.SEP,
                max_new_tokens: int = 64, batch_size: int = 64, start_token_id: int = CharVocab.BOS,
                lookahead_strength: float = 1.0) -> list[list[int]]:
    """Decode every source; returns the generated key tokens (decoder start, EOS and padding removed).

    ``trie=None``: unconstrained. Otherwise `TrieLogitsProcessor` (``renormalize``; ``lookahead`` uses
    the source ids as the question, ``lookahead_strength`` is λ in ``p^{1/(1+λΔ)}``). Beam search uses
    ``length_penalty=0`` (plain sums of log-probs, eq. 3)."""
    from transformers import LogitsProcessorList

    outputs: list[list[int]] = []
    for start in range(0, len(sources), batch_size):
        chunk = list(sources[start:start + batch_size])
        src = _pad(chunk, CharVocab.PAD)
        processors = LogitsProcessorList()
        if trie is not None:
            la = LookAhead(chunk, sep_token_id=sep_token_id, strength=lookahead_strength) if lookahead else None
            processors.append(TrieLogitsProcessor(trie, CharVocab.EOS, num_beams=num_beams,
                                                  renormalize=renormalize, lookahead=la))
        beam_kw = {"length_penalty": 0.0, "early_stopping": False} if num_beams > 1 else {}
        gen = model.generate(input_ids=src, attention_mask=src.ne(CharVocab.PAD), num_beams=num_beams,
                             do_sample=False, max_new_tokens=max_new_tokens, logits_processor=processors, **beam_kw,
                             pad_token_id=CharVocab.PAD, eos_token_id=CharVocab.EOS,
                             decoder_start_token_id=start_token_id)
        for row in gen.tolist():
            row = row[1:]
            if CharVocab.EOS in row:
                row = row[:row.index(CharVocab.EOS)]
            outputs.append([t for t in row if t != CharVocab.PAD])
    return outputs


def answers_from_keys(keys: Sequence[Sequence[int]], trie: Trie, kb: KnowledgeBase, vocab: CharVocab,
                      order: str = "SPM") -> tuple[list[tuple[str, str, str]], list[bool]]:
    """Decoded keys -> ``(S（M）, P, O)`` answers and a validity flag per key.

    A key in the trie maps to the first KB fact stored under it and its first object (the official
    baseline's rule). A key outside the KB is *invalid*: S and P are read from its text (split at ``[SEP]``)
    and the object is ``""`` (there is nothing to look up)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
    answers, valid = [], []
    for key in keys:
        hit = trie.get(key)
        if hit:
            f = kb.facts[hit[0]]
            answers.append((f.full_subject, f.relation, kb.lookup(f.subject, f.meaning, f.relation) or ""))
            valid.append(True)
        else:
            fields = (vocab.decode(key).split("|") + ["", "", ""])[:3]
            named = dict(zip(ORDERS[order], fields))
            s = f"{named['subject']}（{named['meaning']}）" if named["meaning"] else named["subject"]
            answers.append((s, named["relation"], ""))
            valid.append(False)
    return answers, valid


class LexicalBaseline:
    """The string-matching baseline: no model, only the question and the KB.

    For a question Q: among the KB's subjects that occur in Q as a substring take the longest, then among
    that subject's facts the key with the largest ``LCS(S + P + M, Q)``; ties go to the earliest fact.
    Equivalently, the fact maximising ``(len(S) if S in Q else -1, LCS(S + P + M, Q))``. Returns
    ``(S（M）, P, O)`` with O the KB's first object for (S, M, P), or ``("", "", "")`` when no subject occurs."""

    def __init__(self, kb: KnowledgeBase):
        if not isinstance(kb, KnowledgeBase):
            raise TypeError(f"kb must be a KnowledgeBase, got {type(kb).__name__}")
        self.kb = kb
        self.by_subject: dict[str, list[int]] = {}
        for i, f in enumerate(kb.facts):
            if f.subject:
                self.by_subject.setdefault(f.subject, []).append(i)
        self.max_len = max((len(s) for s in self.by_subject), default=0)

    def subjects_in(self, question: str) -> list[str]:
        """The longest KB subjects that occur in `question` as substrings (several on a tie in length)."""
        for length in range(min(self.max_len, len(question)), 0, -1):
            found = {question[i:i + length] for i in range(len(question) - length + 1)} & self.by_subject.keys()
            if found:
                return sorted(found)
        return []

    def __call__(self, question: str) -> tuple[str, str, str]:
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        candidates = [i for s in self.subjects_in(question) for i in self.by_subject[s]]
        if not candidates:
            return ("", "", "")
        facts = self.kb.facts
        best = max(candidates, key=lambda i: (lcs_length(facts[i].subject + facts[i].relation + facts[i].meaning,
                                                         question), -i))
        f = self.kb.facts[best]
        return (f.full_subject, f.relation, self.kb.lookup(f.subject, f.meaning, f.relation) or "")


@torch.no_grad()
def trace_greedy(model, source: Sequence[int], trie: Trie | None = None, lookahead: bool = False,
                 sep_token_id: int | None = CharVocab.SEP, max_new_tokens: int = 64, top: int = 5,
                 start_token_id: int = CharVocab.BOS) -> list[dict]:
    """Greedy decoding of one question, step by step, with the probabilities before and after the
    constraint (masking + renormalisation, and the look-ahead re-weighting when asked).

    Returns one dict per step: ``token``, ``p_before`` / ``p_after`` (of the chosen token),
    ``allowed_mass`` (model mass on the allowed set before masking), ``n_allowed``, ``top_before``
    (``top`` most likely tokens of the unconstrained distribution, as (token, p))."""
    src = torch.tensor([list(source)], dtype=torch.long)
    encoder_outputs = model.get_encoder()(input_ids=src)
    proc = None
    if trie is not None:
        la = LookAhead([list(source)], sep_token_id=sep_token_id) if lookahead else None
        proc = TrieLogitsProcessor(trie, CharVocab.EOS, renormalize=True, lookahead=la)
    dec, steps = [start_token_id], []
    for _ in range(max_new_tokens):
        ids = torch.tensor([dec])
        logits = model(encoder_outputs=encoder_outputs, decoder_input_ids=ids).logits[0, -1]
        before = logits.float().log_softmax(-1)
        if proc is None:
            after, mass, n_allowed = before, 1.0, before.numel()
        else:
            after = proc(ids, before[None])[0]
            allowed = torch.isfinite(after)
            mass, n_allowed = float(before[allowed].exp().sum()), int(allowed.sum())
        tok = int(after.argmax())
        top_p, top_i = before.exp().topk(top)
        steps.append({"token": tok, "p_before": float(before[tok].exp()), "p_after": float(after[tok].exp()),
                      "allowed_mass": mass, "n_allowed": n_allowed,
                      "top_before": list(zip(top_i.tolist(), top_p.tolist()))})
        dec.append(tok)
        if tok == CharVocab.EOS:
            break
    return steps


def trie_figure(trie: Trie, label: Callable[[int], str] = chr, prefix: Sequence[int] = (), title: str = ""):
    """A plotly drawing of a (small) trie: nodes laid out depth by depth, leaves spread left to right.

    The path of ``prefix`` is drawn in orange and its allowed next tokens in green. Plotly renders the
    labels in the browser, so CJK characters need no local font."""
    import plotly.graph_objects as go

    n = len(trie.parent)
    if n > 400:
        raise ValueError(f"trie has {n} nodes; trie_figure is meant for small tries (<= 400 nodes)")
    x = np.zeros(n)
    leaf = 0
    for v in range(n - 1, -1, -1):  # children have larger ids than their parent (DFS pre-order)
        kids = trie.child_node[trie.child_ptr[v]:trie.child_ptr[v + 1]]
        if len(kids) == 0:
            x[v] = leaf
            leaf += 1
        else:
            x[v] = x[kids].mean()
    x = x.max() - x  # pre-order was walked backwards: flip so the smallest token is on the left
    path_nodes, node = {0}, 0
    for t in prefix:
        node = trie.child(node, int(t)) if node >= 0 else -1
        if node >= 0:
            path_nodes.add(node)
    allowed = set(trie.child_node[trie.child_ptr[node]:trie.child_ptr[node + 1]].tolist()) if node >= 0 else set()
    ex, ey = [], []
    for v in range(1, n):
        ex += [x[trie.parent[v]], x[v], None]
        ey += [-trie.depth[trie.parent[v]], -trie.depth[v], None]
    colours = ["#ff7f0e" if v in path_nodes else "#2ca02c" if v in allowed else "#cfd8e3" for v in range(n)]
    text = ["ROOT"] + [label(int(trie.node_token[v])) for v in range(1, n)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#9aa5b1", width=1), hoverinfo="skip",
                             showlegend=False))
    fig.add_trace(go.Scatter(x=x, y=-trie.depth, mode="markers+text", text=text, textposition="middle center",
                             marker=dict(size=24, color=colours, line=dict(color="#555", width=0.5)),
                             textfont=dict(size=13), hoverinfo="text", showlegend=False))
    fig.update_layout(title=title, height=360, margin=dict(l=10, r=10, t=50, b=10),
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig
