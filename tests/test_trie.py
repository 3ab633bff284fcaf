"""Oracle tests for lib/trie.py: brute-force sets, a brute-force argmax over the KB, transformers' own
`prefix_allowed_tokens_fn` path, the textbook LCS DP and subsequence enumeration, the official KgCLUE
scoring formula, and the post's worked numbers (spec §7)."""
from __future__ import annotations

import itertools
import math
import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from lib.trie import (
    CharVocab, DictTrie, Fact, KnowledgeBase, LookAhead, Trie, TrieLogitsProcessor, build_kb, deep_sizeof,
    kgclue_scores, lcs_f1, lcs_length, lcs_length_dp, lookahead_weights, make_bart, prefix_allowed_tokens_fn,
    split_meaning,
)

torch.set_num_threads(1)
DB = ["明月几时有", "明天会更好", "明天下雨", "明天下午开会", "明天下午放假", "明年见", "今夕是何年", "今天去哪里玩"]
EOS, BOS = 2, 1
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def chars(tokens) -> set[str]:
    return {chr(t) for t in tokens}


# ------------------------------------------------------------------ toy trie (O1, O2)
def test_toy_trie_next_tokens_and_counts():
    trie = Trie([ids(s) for s in DB])
    assert chars(trie.next_tokens([])) == {"明", "今"}
    assert chars(trie.next_tokens(ids("明"))) == {"月", "天", "年"}
    assert chars(trie.next_tokens(ids("明天"))) == {"会", "下"}
    assert chars(trie.next_tokens(ids("明天下"))) == {"雨", "午"}
    assert chars(trie.next_tokens(ids("明天下午"))) == {"开", "放"}
    assert chars(trie.next_tokens(ids("今"))) == {"夕", "天"}
    assert trie.next_tokens(ids("后")) == []
    assert len(trie) == 8
    brute = len({s[:i] for s in DB for i in range(1, len(s) + 1)})
    assert trie.num_nodes() == brute == 28
    assert sum(map(len, DB)) - trie.num_nodes() == 12


def test_toy_completions():
    trie = Trie([ids(s) for s in DB])
    got = sorted("".join(map(chr, k)) for k in trie.completions(ids("明天下午")))
    assert got == ["明天下午开会", "明天下午放假"]
    assert len(list(trie.completions([]))) == 8
    assert list(trie.completions(ids("后"))) == []


# ------------------------------------------------------------------ property tests over random key sets
token_seqs = st.lists(st.lists(st.integers(5, 12), min_size=1, max_size=6), min_size=1, max_size=25)


def with_prefixes(seqs: list[list[int]], data) -> list[list[int]]:
    """Add some prefixes of existing keys as keys of their own (prefix-is-an-entry cases)."""
    extra = [s[:data.draw(st.integers(1, len(s)))] for s in seqs[: data.draw(st.integers(0, len(seqs)))]]
    return seqs + extra


@FAST
@given(token_seqs, st.data())
def test_enumeration_equals_input_set(seqs, data):
    seqs = with_prefixes(seqs, data)
    for end in (None, EOS):
        trie = Trie(seqs, end_token=end)
        assert sorted(trie) == sorted(set(map(tuple, seqs)))
        assert len(trie) == len(set(map(tuple, seqs)))
        assert all(s in trie for s in seqs)


@FAST
@given(token_seqs, st.data())
def test_next_tokens_and_completions_match_brute_force(seqs, data):
    seqs = with_prefixes(seqs, data)
    keys = set(map(tuple, seqs))
    trie, twin = Trie(seqs), DictTrie(seqs)
    prefixes = {k[:i] for k in keys for i in range(len(k) + 1)} | {(99,), (5, 99)}
    for p in prefixes:
        brute = sorted({k[len(p)] for k in keys if k[:len(p)] == p and len(k) > len(p)})
        assert trie.next_tokens(p) == brute
        assert sorted(twin.get(p)) == brute
        assert sorted(trie.completions(p)) == sorted(k for k in keys if k[:len(p)] == p)
        assert (p in trie) == (p in keys)
    assert trie.num_nodes() == len({k[:i] for k in keys for i in range(1, len(k) + 1)})


@FAST
@given(token_seqs, st.data())
def test_vectorised_cursor_equals_walk(seqs, data):
    trie = Trie(seqs, end_token=EOS)
    paths = [list(s) + [EOS] for s in seqs] + [[5, 99, 6], [13, 5]]
    for path in paths:
        node = torch.tensor([0])
        for i, t in enumerate(path):
            node = trie.advance(node, torch.tensor([t]))
            assert int(node) == trie.node(path[: i + 1])


def test_values_accumulate_and_get():
    trie = Trie([[5, 6], [5], [5, 6]], values=["a", "b", "c"], end_token=EOS)
    assert trie.get([5, 6]) == ["a", "c"]
    assert trie.get([5]) == ["b"]
    assert trie.get([6]) is None and trie.get([5, 6, 7], "x") == "x"
    assert len(trie) == 2 and trie.nbytes() > 0


def test_allowed_set_never_empty():
    trie = Trie([[5, 6], [5, 7, 8]], end_token=EOS)
    proc = TrieLogitsProcessor(trie, EOS)
    nodes = torch.tensor([0, trie.node([5]), trie.node([5, 6, EOS]), -1])
    mask = proc.allowed_mask(nodes, 10)
    assert mask.sum(1).tolist() == [1, 2, 1, 1]
    assert mask[0, 5] and mask[1, 6] and mask[1, 7] and mask[2, EOS] and mask[3, EOS]


def test_input_validation():
    with pytest.raises(TypeError, match="sequences"):
        Trie("abc")
    with pytest.raises(ValueError, match="non-negative"):
        Trie([[1, -2]])
    with pytest.raises(ValueError, match="end_token"):
        Trie([[1, 2]], end_token=2)
    with pytest.raises(ValueError, match="values"):
        Trie([[1]], values=[1, 2])
    with pytest.raises(ValueError, match="num_beams"):
        TrieLogitsProcessor(Trie([[5]]), EOS, num_beams=0)
    with pytest.raises(TypeError, match="trie"):
        TrieLogitsProcessor({}, EOS)
    proc = TrieLogitsProcessor(Trie([[50]]), EOS)
    with pytest.raises(ValueError, match="columns"):
        proc(torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 10))
    with pytest.raises(ValueError, match="input_ids"):
        proc(torch.ones(2, 1, dtype=torch.long), torch.zeros(1, 10))


# ------------------------------------------------------------------ constrained generation with a random BART
V = 24


@pytest.fixture(scope="module")
def tiny_bart():
    return make_bart(V, d_model=32, layers=1, heads=2, ffn=64, max_len=32, seed=0)


def generate(model, src, num_beams, processors=None, **kw):
    return model.generate(
        input_ids=src, num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=10,
        do_sample=False, length_penalty=0.0, pad_token_id=0, eos_token_id=EOS, decoder_start_token_id=BOS,
        logits_processor=LogitsProcessorList(processors or []), **kw)


def strip(row: list[int]) -> tuple[int, ...]:
    row = row[1:]
    return tuple(row[: row.index(EOS)] if EOS in row else row)


key_sets = st.lists(st.lists(st.integers(5, V - 1), min_size=1, max_size=5), min_size=1, max_size=12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(key_sets, st.data())
def test_every_constrained_output_is_a_key_and_matches_hf_hook(tiny_bart, keys, data):
    keys = with_prefixes(keys, data)
    trie = Trie(keys, end_token=EOS)
    src = torch.randint(5, V, (3, 6), generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    for num_beams in (1, 3, 5):
        proc = TrieLogitsProcessor(trie, EOS, num_beams=num_beams)
        ours = generate(tiny_bart, src, num_beams, [proc])
        hook = generate(tiny_bart, src, num_beams, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, EOS))
        assert torch.equal(ours, hook)
        assert proc.fallback_walks == 0
        for row in ours.tolist():
            out = strip(row)
            if num_beams == 1 or out in trie:  # beam slots beyond the number of keys may be junk, scored -inf
                assert out in trie, out
        best = [strip(r) for r in ours[::num_beams].tolist()]
        assert all(b in trie for b in best)


def test_renormalised_outputs_are_keys_and_wrong_num_beams_falls_back(tiny_bart):
    rng = random.Random(1)
    keys = [[rng.randrange(5, V) for _ in range(rng.randint(1, 6))] for _ in range(30)]
    trie = Trie(keys, end_token=EOS)
    src = torch.randint(5, V, (4, 7), generator=torch.Generator().manual_seed(1))
    proc = TrieLogitsProcessor(trie, EOS, num_beams=4, renormalize=True)
    for row in generate(tiny_bart, src, 4, [proc]).tolist():
        assert strip(row) in trie
    wrong = TrieLogitsProcessor(trie, EOS, num_beams=1)  # parents are then searched in groups of one
    out = generate(tiny_bart, src, 4, [wrong])
    assert torch.equal(out, generate(tiny_bart, src, 4, [TrieLogitsProcessor(trie, EOS, num_beams=4)]))


def brute_force_best(model, src, keys, renormalize):
    """argmax over the keys of sum_t log p~(y_t | y_<t) (eq. 3), allowed sets from the key list itself."""
    paths = [tuple(k) + (EOS,) for k in set(map(tuple, keys))]
    best, best_score = None, -math.inf
    with torch.no_grad():
        for path in paths:
            dec = torch.tensor([[BOS, *path[:-1]]])
            logp = model(input_ids=src, decoder_input_ids=dec).logits[0].log_softmax(-1)
            score = 0.0
            for t, tok in enumerate(path):
                row = logp[t]
                if renormalize:
                    allowed = sorted({p[t] for p in paths if p[:t] == path[:t]})
                    row = row[allowed].log_softmax(-1)
                    score += float(row[allowed.index(tok)])
                else:
                    score += float(row[tok])
            if score > best_score:
                best, best_score = path[:-1], score
    return best


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_equals_brute_force_argmax(tiny_bart, renormalize, seed):
    rng = random.Random(seed)
    keys = [[rng.randrange(5, 9) for _ in range(rng.randint(1, 4))] for _ in range(10)]
    trie = Trie(keys, end_token=EOS)
    src = torch.randint(5, V, (1, 6), generator=torch.Generator().manual_seed(seed))
    beams = trie.num_nodes() + 1  # wider than any level of the trie: the search is exhaustive
    proc = TrieLogitsProcessor(trie, EOS, num_beams=beams, renormalize=renormalize)
    out = tiny_bart.generate(input_ids=src, num_beams=beams, max_new_tokens=8, do_sample=False,
                             length_penalty=0.0, early_stopping=False, pad_token_id=0, eos_token_id=EOS,
                             decoder_start_token_id=BOS, logits_processor=LogitsProcessorList([proc]))
    assert strip(out[0].tolist()) == brute_force_best(tiny_bart, src, keys, renormalize)


# ------------------------------------------------------------------ LCS, F1, metrics (O5, O6, eq. 10)
def brute_lcs(a: str, b: str) -> int:
    subs = lambda s: {"".join(c) for r in range(len(s) + 1) for c in itertools.combinations(s, r)}
    return max(len(x) for x in subs(a) & subs(b))


def test_lcs_known_values():
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert lcs_length("", "abc") == 0 and lcs_length("abc", "") == 0
    assert lcs_length([1, 2, 3], [3, 1, 2]) == 2
    assert lcs_f1("abc", "abc") == 1.0 and lcs_f1("", "") == 0.0 and lcs_f1("ab", "cd") == 0.0
    assert lcs_f1("abcd", "abxd") == 0.75
    with pytest.raises(TypeError):
        lcs_f1("a", 1)


@settings(max_examples=200, deadline=None)
@given(st.text("abcd", max_size=7), st.text("abcd", max_size=7))
def test_lcs_bit_parallel_equals_dp_and_enumeration(a, b):
    n = lcs_length(a, b)
    assert n == lcs_length_dp(a, b) == lcs_length(b, a) == brute_lcs(a, b)
    assert lcs_length(a, a) == len(a)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=60), st.lists(st.integers(0, 5), max_size=60))
def test_lcs_long_sequences_equal_dp(a, b):
    assert lcs_length(a, b) == lcs_length_dp(a, b)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text("ab", max_size=4), st.text("ab", max_size=4)), min_size=1, max_size=20))
def test_mean_f1_at_least_mean_em(pairs):
    pairs = [(p, g) for p, g in pairs if p or g]
    if not pairs:
        return
    m = kgclue_scores([("s", "p", p) for p, _ in pairs], [("s", "p", g) for _, g in pairs])
    assert m["F1_O"] >= m["EM_O"] - 1e-12


def official_evaluate(pred_answers: list[str], gold_answers: list[str]) -> dict:
    """The logic of CLUEbenchmark/KgCLUE baselines/evaluate_f1_em.py on 'S ||| P ||| O' strings
    (pylcs.lcs replaced by the DP; returns fractions instead of '%.3f' of percentages)."""
    norm = lambda t: " ".join(t.lower().split())
    f1 = lambda a, b: 0.0 if not a and not b else 2.0 * lcs_length_dp(a, b) / (len(a) + len(b))
    m = {f"{i}_{j}": 0.0 for i in ("EM", "F1") for j in ("All", "S", "P", "O")}
    for source, target in zip(pred_answers, gold_answers):
        s1, p1, o1 = map(norm, source.split(" ||| "))
        s2, p2, o2 = map(norm, target.split(" ||| "))
        m["EM_S"] += s1 == s2
        m["EM_P"] += p1 == p2
        m["EM_O"] += o1 == o2
        m["EM_All"] += (s1, p1, o1) == (s2, p2, o2)
        m["F1_S"] += f1(s1, s2)
        m["F1_P"] += f1(p1, p2)
        m["F1_O"] += f1(o1, o2)
        m["F1_All"] += f1(s1 + p1 + o1, s2 + p2 + o2)
    m = {k: v / len(gold_answers) for k, v in m.items()}
    m["EMF1"] = 0.5 * m["EM_O"] + 0.5 * m["F1_O"]
    return m


def test_scores_match_official_formula_on_hand_cases():
    gold = ["守望星光（韩玉玲、刘东考演唱歌曲） ||| 出品公司 ||| 韩玉玲原创音乐",
            "龙晶（游戏） ||| 繁体 ||| 龍晶", "A ||| B ||| abcd", "X ||| Y ||| Hello  World"]
    pred = ["守望星光 ||| 出品公司 ||| 韩玉玲原创音乐", "龙晶（游戏） ||| 繁体 ||| 龍晶",
            "A ||| C ||| abxd", "X ||| Y ||| hello world"]
    ours = kgclue_scores([tuple(p.split(" ||| ")) for p in pred], [tuple(g.split(" ||| ")) for g in gold])
    ref = official_evaluate(pred, gold)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
    # by hand: O is right 3 times out of 4, F1_O = (1 + 1 + 0.75 + 1) / 4
    assert ours["EM_O"] == 0.75 and ours["F1_O"] == pytest.approx(3.75 / 4)
    assert ours["EMF1"] == pytest.approx((0.75 + 3.75 / 4) / 2)
    s_f1 = 2 * 4 / (len("守望星光（韩玉玲、刘东考演唱歌曲）") + 4)
    assert ours["F1_S"] == pytest.approx((s_f1 + 3) / 4)


def test_both_empty_objects_give_em_one_f1_zero():
    m = kgclue_scores([("s", "p", "")], [("s", "p", "")])
    assert m["EM_O"] == 1.0 and m["F1_O"] == 0.0
    with pytest.raises(ValueError, match="length"):
        kgclue_scores([], [("a", "b", "c")])


# ------------------------------------------------------------------ look-ahead (O7, O8)
def test_lookahead_weights_post_example():
    q = "张三主讲课程有哪些"
    w = lookahead_weights("主", q, ["主讲课程", "主要成就"])
    assert w == {"讲": 4, "要": 1}
    with pytest.raises(ValueError, match="extend"):
        lookahead_weights("主", q, ["次要"])


@pytest.mark.parametrize("p_jiang, expected", [(0.05, (0.4408, 0.5592)), (0.2, (0.5271, 0.4729))])
def test_lookahead_processor_reproduces_o7(p_jiang, expected):
    vocab = {c: i + 5 for i, c in enumerate("张三主讲课程有哪些要成就")}
    enc = lambda s: [vocab[c] for c in s]
    trie = Trie([enc("主讲课程"), enc("主要成就")], end_token=EOS)
    probs = torch.full((1, 20), 0.0)
    probs[0, vocab["讲"]], probs[0, vocab["要"]] = p_jiang, 0.6
    probs[0, 0] = 1 - probs.sum()
    la = LookAhead([enc("张三主讲课程有哪些")], sep_token_id=None)
    proc = TrieLogitsProcessor(trie, EOS, renormalize=True, lookahead=la)
    out = proc(torch.tensor([[BOS, vocab["主"]]]), probs.log()).exp()[0]
    assert (round(float(out[vocab["讲"]]), 4), round(float(out[vocab["要"]]), 4)) == expected
    assert la.calls == 1


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-6, 0.999), st.floats(1.0, 10.0))
def test_power_reweighting_never_shrinks(p, w):
    assert p ** (1 / w) >= p
    assert (p ** (1 / w) == p) == (w == 1.0) or abs(p ** (1 / w) - p) < 1e-12


def test_lookahead_waits_for_separator():
    trie = Trie([[5, 3, 6], [5, 3, 7], [5, 8]], end_token=EOS)
    la = LookAhead([[6]], sep_token_id=3)
    proc = TrieLogitsProcessor(trie, EOS, lookahead=la)
    proc(torch.tensor([[BOS, 5]]), torch.zeros(1, 10))
    assert la.calls == 0  # [SEP] not decoded yet
    out = proc(torch.tensor([[BOS, 5, 3]]), torch.zeros(1, 10))
    assert la.calls == 1 and out[0, 6] > out[0, 7]


# ------------------------------------------------------------------ KgCLUE helpers (O9, O12)
def test_split_meaning():
    assert split_meaning("牛郎织女（中国民间故事）") == ("牛郎织女", "中国民间故事")
    assert split_meaning("龙晶（游戏）") == ("龙晶", "游戏")
    assert split_meaning("武汉交通职业学院计算机协会") == ("武汉交通职业学院计算机协会", "")
    assert split_meaning("A（B（C））") == ("A", "B（C）")
    assert split_meaning("A（B）C") == ("A（B）C", "")
    assert split_meaning("（仅括号）") == ("（仅括号）", "")
    with pytest.raises(TypeError):
        split_meaning(3)


class Rec:
    def __init__(self, subject, relation, obj):
        self.subject, self.relation, self.object = subject, relation, obj


def test_build_kb_keeps_gold_first_and_adds_distractors():
    recs = [Rec("守望星光（韩玉玲、刘东考演唱歌曲）", "出品公司", "韩玉玲原创音乐"),
            Rec("龙晶（游戏）", "繁体", "龍晶"), Rec("龙晶（游戏）", "繁体", "另一个"),
            Rec("张三（教授）", "主讲课程", "物理"), Rec("李四", "出品公司", "某公司")]
    kb = build_kb(recs, n_relations=3, p_homonym=1.0, seed=0)
    assert kb.facts[0] == Fact("守望星光", "韩玉玲、刘东考演唱歌曲", "出品公司", "韩玉玲原创音乐")
    assert kb.lookup("龙晶", "游戏", "繁体") == "龍晶"  # first object wins (P11)
    assert len(kb) > len(recs)
    keys = [(f.subject, f.meaning, f.relation) for f in kb.facts[len(recs):]]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {(f.subject, f.meaning, f.relation) for f in kb.facts[:len(recs)]}
    assert kb.facts[0].full_subject == "守望星光（韩玉玲、刘东考演唱歌曲）"
    with pytest.raises(ValueError, match="p_homonym"):
        build_kb(recs, p_homonym=2)


def test_char_vocab_roundtrip_and_keys():
    fake_vocab = {c: i + 100 for i, c in enumerate("明天下午开会abc1")}
    voc = CharVocab(fake_vocab, ["明天 下午", "ABC1", "开会？"])
    assert len(voc) == len(CharVocab.SPECIALS) + 10
    assert voc.decode(voc.encode("明天下午ab")) == "明天下午ab"
    assert voc.encode("？") == [CharVocab.UNK]
    key = voc.key(Fact("明天", "会", "下午", "x"), "SPM")
    assert voc.decode(key) == "明天|下午|会"
    assert voc.decode(voc.key(Fact("明天", "会", "下午", "x"), "SMP")) == "明天|会|下午"
    with pytest.raises(ValueError, match="order"):
        voc.key(Fact("a", "b", "c", "d"), "PSM")
    with pytest.raises(ValueError, match="ids must hold ids in"):
        voc.decode([0, -1])  # a -1 would silently print the last token
    with pytest.raises(ValueError, match="ids must hold ids in"):
        voc.decode(torch.tensor([len(voc)]))


def test_deep_sizeof_counts_nested_dicts():
    flat, nested = deep_sizeof({}), deep_sizeof({1: {2: {}}})
    assert nested > flat


@pytest.mark.skipif(not os.environ.get("BOOK_DATA_DIR") and not os.path.isdir("data/kgclue"),
                    reason="KgCLUE data not available")
def test_kgclue_first_train_line_parses():
    from lib import data

    rec = data.load_kgclue("train")[0]
    s, m = split_meaning(rec.subject)
    assert (s, m, rec.relation, rec.object) == ("守望星光", "韩玉玲、刘东考演唱歌曲", "出品公司", "韩玉玲原创音乐")


# ------------------------------------------------------------------ the chapter's model helpers
def test_marian_constrained_beam_matches_hook():
    model = T_make("marian")
    rng = random.Random(3)
    keys = [[rng.randrange(5, V) for _ in range(rng.randint(1, 5))] for _ in range(15)]
    trie = Trie(keys, end_token=EOS)
    src = torch.randint(5, V, (3, 6), generator=torch.Generator().manual_seed(3))
    ours = generate(model, src, 3, [TrieLogitsProcessor(trie, EOS, num_beams=3)])
    hook = generate(model, src, 3, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, EOS))
    assert torch.equal(ours, hook)
    assert all(strip(r) in trie for r in ours[::3].tolist())


def T_make(arch):
    from lib.trie import make_seq2seq

    return make_seq2seq(V, arch, d_model=32, layers=1, heads=2, ffn=64, max_len=32, seed=0)


def test_make_seq2seq_validates():
    from lib.trie import make_seq2seq

    with pytest.raises(ValueError, match="arch"):
        make_seq2seq(30, "gpt")
    with pytest.raises(ValueError, match="vocab_size"):
        make_seq2seq(3)


def test_trace_greedy_renormalisation_identity_and_validity():
    from lib.trie import trace_greedy

    model = T_make("bart")
    rng = random.Random(4)
    keys = [[rng.randrange(5, V) for _ in range(rng.randint(1, 5))] for _ in range(10)]
    trie = Trie(keys, end_token=EOS)
    steps = trace_greedy(model, [5, 6, 7], trie=trie, max_new_tokens=8)
    toks = [s["token"] for s in steps]
    assert toks[-1] == EOS and tuple(toks[:-1]) in trie
    for s in steps:  # eq. (2): p~ = p / (mass on the allowed set)
        assert s["p_after"] == pytest.approx(s["p_before"] / s["allowed_mass"], rel=1e-4)
    free = trace_greedy(model, [5, 6, 7], trie=None, max_new_tokens=4)
    assert all(s["p_after"] == s["p_before"] for s in free)


def test_decode_keys_and_answers_from_keys():
    from lib.trie import answers_from_keys, decode_keys

    fake_vocab = {c: i + 100 for i, c in enumerate("张三李四教授物理课程化学")}
    voc = CharVocab(fake_vocab, ["张三李四教授物理课程化学"])
    kb = KnowledgeBase([Fact("张三", "教授", "课程", "物理"), Fact("张三", "教授", "课程", "化学"),
                        Fact("李四", "", "课程", "化学")])
    trie = Trie([voc.key(f) for f in kb.facts], values=range(len(kb)), end_token=EOS)
    keys = [voc.key(kb.facts[0]), voc.key(kb.facts[2]), voc.encode("张三") + [CharVocab.SEP] + voc.encode("物理")]
    answers, valid = answers_from_keys(keys, trie, kb, voc, "SPM")
    assert answers[0] == ("张三（教授）", "课程", "物理")  # duplicate key: first object (P11)
    assert answers[1] == ("李四", "课程", "化学")
    assert answers[2] == ("张三", "物理", "") and valid == [True, True, False]
    model = make_bart(len(voc), d_model=32, layers=1, heads=2, ffn=64, max_len=32, seed=0)
    src = [voc.encode("张三物理"), voc.encode("李四")]
    for beams in (1, 2):
        out = decode_keys(model, src, trie=trie, num_beams=beams, lookahead=True, max_new_tokens=12)
        assert all(tuple(o) in trie for o in out)


def test_train_seq2seq_runs_and_counts_steps():
    from lib.trie import train_seq2seq

    model = T_make("marian")
    src = [[5, 6, 7], [8, 9], [10, 11, 12, 13]] * 4
    log = train_seq2seq(model, src, [s[::-1] for s in src], epochs=1.5, batch_size=3, lr=1e-3, seed=0)
    assert log["steps"] == 6 and len(log["losses"]) == 6 and all(math.isfinite(x) for x in log["losses"])
    assert not model.training
    with pytest.raises(ValueError, match="equally long"):
        train_seq2seq(model, src, src[:-1])


def test_allowed_mask_with_repeated_nodes_equals_per_row_sets():
    rng = random.Random(5)
    keys = [[rng.randrange(5, 15) for _ in range(rng.randint(1, 4))] for _ in range(20)]
    trie = Trie(keys, end_token=EOS)
    proc = TrieLogitsProcessor(trie, EOS)
    nodes = torch.tensor([rng.choice([-1, 0, *range(1, trie.num_nodes() + 1)]) for _ in range(40)])
    mask = proc.allowed_mask(nodes, 16)
    for r, n in enumerate(nodes.tolist()):
        expected = set(trie.children(n)) or {EOS}
        assert set(torch.nonzero(mask[r]).flatten().tolist()) == expected


# ---- a user's mistakes with ids and parameters ---------------------------------------------------------
@pytest.mark.parametrize("bad", [[[2**31, 1]], [[1, 2**40]], [np.array([2**31], dtype=np.int64)]])
def test_trie_rejects_ids_that_do_not_fit_int32(bad):
    with pytest.raises(ValueError, match=r"below 2\*\*31"):
        Trie(bad)


@pytest.mark.parametrize("bad", [[[1.7, 2]], [[1.0, 2]], [np.array([1.0, 2.0])], [torch.tensor([1.5])], [[True, 2]]])
def test_trie_rejects_non_integer_tokens(bad):
    with pytest.raises(TypeError, match="integer token ids"):
        Trie(bad)


def test_trie_accepts_integer_arrays_and_the_largest_id():
    trie = Trie([np.array([3, 2**31 - 1], dtype=np.int64), torch.tensor([3, 4])])
    assert sorted(trie) == [(3, 4), (3, 2**31 - 1)]


@pytest.mark.parametrize("strength", [-0.5, math.nan, math.inf])
def test_lookahead_rejects_a_negative_or_non_finite_strength(strength):
    with pytest.raises(ValueError, match="strength"):
        LookAhead(questions=[[1, 2]], strength=strength)


def test_lexical_baseline_equals_its_brute_force_twin():
    from lib.trie import LexicalBaseline

    rng = random.Random(0)
    chars = "张三李四王五北京上海明天主讲课程要成就作者出生地"
    facts = [Fact("".join(rng.choice(chars) for _ in range(rng.randint(1, 3))), rng.choice(["", "歌曲", "人物"]),
                  "".join(rng.choice(chars) for _ in range(rng.randint(1, 4))), f"o{i}") for i in range(120)]
    kb = KnowledgeBase(facts)
    baseline = LexicalBaseline(kb)
    for _ in range(300):
        q = "".join(rng.choice(chars) for _ in range(rng.randint(1, 10)))
        scored = [((len(f.subject) if f.subject in q else -1), lcs_length_dp(f.subject + f.relation + f.meaning, q), -i)
                  for i, f in enumerate(kb.facts)]
        best = max(range(len(facts)), key=lambda i: scored[i])
        f = kb.facts[best]
        expected = ("", "", "") if scored[best][0] < 0 else (f.full_subject, f.relation,
                                                             kb.lookup(f.subject, f.meaning, f.relation))
        assert baseline(q) == expected, q
    with pytest.raises(TypeError, match="question"):
        baseline(3)
