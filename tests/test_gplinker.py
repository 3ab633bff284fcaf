"""Oracle tests for lib.gplinker: closed forms, brute-force twins, round trips and tokenizer offsets."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.encoders import ScratchCharEncoder
from lib.globalpointer import gp_param_count
from lib.gplinker import (
    GPLinker,
    char_span_to_tokens,
    collate,
    count_quintuples,
    decode_batch,
    decode_relations,
    decode_relations_loop,
    dense_label_size,
    encode_quintuples,
    find_token_span,
    gplinker_cells,
    gplinker_loss,
    gplinker_param_count,
    oracle_logits,
    pad_pairs,
    pairs_to_dense,
    prepare_examples,
    spans_to_text,
    triple_prf,
    RelationExample,
)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- counting
def test_counts_closed_forms():
    assert count_quintuples(128, 50) == 3_408_076_800
    assert dense_label_size(64, 50, 128) == 104_857_600
    assert dense_label_size(2, 3, 4, include_entities=True) == 2 * 2 * 3 * 16 + 2 * 2 * 16
    assert gplinker_cells(128, 50) == 2 * 128**2 + 2 * 50 * 128**2


@pytest.mark.parametrize("l,n", [(1, 1), (3, 2), (5, 3), (6, 1)])
def test_count_quintuples_brute_force(l, n):
    spans = [(h, t) for h in range(l) for t in range(l) if h <= t]
    assert count_quintuples(l, n) == sum(1 for _ in itertools.product(spans, range(n), spans))


def test_param_counts_at_post_size():
    assert gplinker_param_count(768, 49, 64, efficient=False) == 9_843_200
    assert gplinker_param_count(768, 49, 64, efficient=True) == 321_096
    for eff in (True, False):
        model = GPLinker(40, 7, 8, efficient=eff)
        assert model.head_parameters() == gplinker_param_count(40, 7, 8, efficient=eff)
        assert model.head_parameters() == sum(gp_param_count(40, h, 8, efficient=eff) for h in (2, 7, 7))


# ------------------------------------------------------------------------------ label encoding
def test_encode_sets_and_padding():
    quints = [(1, 2, 0, 4, 4), (1, 2, 0, 4, 4), (1, 1, 2, 6, 7)]
    ent, head, tail = encode_quintuples(quints, 3)
    assert ent.shape == (2, 2, 2) and head.shape == (3, 1, 2) and tail.shape == (3, 1, 2)
    assert sorted(map(tuple, ent[0])) == [(1, 1), (1, 2)]
    assert head[1].tolist() == [[-1, -1]]  # empty class: exactly one pad pair
    assert head[0].tolist() == [[1, 4]] and tail[2].tolist() == [[1, 7]]
    batch = pad_pairs([ent, encode_quintuples([], 3)[0]])
    assert batch.shape == (2, 2, 2, 2) and (batch[1] == -1).all()
    dense = pairs_to_dense(batch, 9)
    assert dense[0, 0, 1, 2] == 1 and dense[0, 0, 1, 1] == 1 and dense.sum() == 4  # flat index i*L+j
    with pytest.raises(ValueError, match="predicate"):
        encode_quintuples([(0, 0, 3, 1, 1)], 3)
    with pytest.raises(ValueError, match="head <= tail"):
        encode_quintuples([(2, 1, 0, 1, 1)], 3)


# ------------------------------------------------------------------------------------ decoding
quint_strategy = st.tuples(st.integers(1, 10), st.integers(0, 2), st.integers(0, 2), st.integers(1, 10),
                           st.integers(0, 2)).map(lambda q: (q[0], q[0] + q[1], q[2], q[3], q[3] + q[4]))


def _expected_decode(gold: set, n: int) -> set:
    """Independent brute force over sets: what the conjunction rule must return on oracle scores."""
    subjects = {(q[0], q[1]) for q in gold}
    objects = {(q[3], q[4]) for q in gold}
    out = set()
    for (sh, st), (oh, ot), p in itertools.product(subjects, objects, range(n)):
        head_ok = any(g[2] == p and g[0] == sh and g[3] == oh for g in gold)
        tail_ok = any(g[2] == p and g[1] == st and g[4] == ot for g in gold)
        if head_ok and tail_ok:
            out.add((sh, st, p, oh, ot))
    return out


@given(st.sets(quint_strategy, min_size=0, max_size=7))
@settings(max_examples=150, deadline=None)
def test_round_trip_oracle(gold):
    ent, hh, tt = oracle_logits(gold, 3, 14)
    decoded = decode_relations(ent, hh, tt)
    assert gold <= decoded  # completeness
    assert decoded == _expected_decode(gold, 3)
    assert decoded == decode_relations_loop(ent, hh, tt)


def test_round_trip_seo_epo_and_nested():
    # SEO (one subject, two objects), EPO (same pair, two predicates), nested subjects sharing a head
    gold = {(1, 2, 0, 5, 5), (1, 2, 1, 7, 8), (1, 2, 2, 7, 8), (3, 3, 0, 1, 2)}
    assert decode_relations(*oracle_logits(gold, 3, 10)) == gold
    nested = {(0, 2, 0, 5, 7), (0, 4, 0, 9, 11)}
    assert decode_relations(*oracle_logits(nested, 1, 12)) == nested


def test_known_failure_shared_head_and_shared_tail():
    """Two subjects sharing a head and two objects sharing a tail, same predicate: Eq. 2 cannot tell them
    apart; the conjunction returns the two gold triples plus the two crossed ones."""
    gold = {(0, 2, 0, 5, 9), (0, 4, 0, 7, 9)}
    got = decode_relations(*oracle_logits(gold, 1, 10))
    assert got == gold | {(0, 2, 0, 7, 9), (0, 4, 0, 5, 9)}


@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.5, -0.3]))
@settings(max_examples=30, deadline=None)
def test_vectorised_equals_loop_on_noisy_logits(seed, threshold):
    rng = np.random.default_rng(seed)
    L, n = int(rng.integers(2, 12)), int(rng.integers(1, 5))
    ent = rng.normal(-1.5, 1.5, (2, L, L)).astype(np.float32)
    hh = rng.normal(-1, 1.5, (n, L, L)).astype(np.float32)
    tt = rng.normal(-1, 1.5, (n, L, L)).astype(np.float32)
    special = (0, L - 1) if seed % 2 else ()
    for rule in ("and", "head_only", "sum"):
        fast = decode_relations(ent, hh, tt, threshold, special=special, rule=rule, chunk=int(rng.integers(1, 500)))
        assert fast == decode_relations_loop(ent, hh, tt, threshold, special=special, rule=rule)


@given(st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_rule_ordering_at_zero(seed):
    rng = np.random.default_rng(seed)
    L, n = 8, 3
    ent, hh, tt = (rng.normal(-0.5, 1, s).astype(np.float32) for s in [(2, L, L), (n, L, L), (n, L, L)])
    conj = decode_relations(ent, hh, tt)
    assert conj <= decode_relations(ent, hh, tt, rule="sum")
    assert conj <= decode_relations(ent, hh, tt, rule="head_only")
    gold = {(1, 2, 0, 4, 4), (1, 1, 0, 4, 6)}
    oracle = oracle_logits(gold, 1, 8)
    assert decode_relations(*oracle) <= decode_relations(*oracle, rule="sum")


def test_special_tokens_ignored_and_batch_uses_true_length():
    gold = {(1, 2, 0, 4, 4)}
    ent, hh, tt = oracle_logits(gold, 1, 6)
    ent[:, 0, :] = 5.0
    ent[:, :, 5] = 5.0
    hh[:] = tt[:] = 5.0
    assert decode_relations(ent, hh, tt, special=(0, 5)) == gold
    assert decode_relations(ent, hh, tt) != gold
    # batched: padded length 9, true length 6 -> [SEP] at 5, not at 8
    pad = lambda a: np.pad(a, ((0, 0), (0, 3), (0, 3)), constant_values=-1.0)  # noqa: E731
    batch = [torch.from_numpy(np.stack([pad(x), pad(x)])) for x in (ent, hh, tt)]
    assert decode_batch(*batch, lengths=[6, 6]) == [gold, gold]


def test_decode_validation():
    ent, hh, tt = oracle_logits(set(), 2, 4)
    with pytest.raises(ValueError, match="rule"):
        decode_relations(ent, hh, tt, rule="or")
    with pytest.raises(ValueError, match="entity"):
        decode_relations(ent[:1], hh, tt)
    with pytest.raises(ValueError, match="head and tail"):
        decode_relations(ent, hh, tt[:1])
    with pytest.raises(TypeError, match="entity"):
        decode_relations([[0]], hh, tt)


# ------------------------------------------------------------------------------------- metric
def test_triple_prf():
    a, b, c = ("x", "p", "y"), ("x", "q", "z"), ("u", "p", "v")
    assert triple_prf([{a, b}], [{a, c}]) == (0.5, 0.5, 0.5)
    assert triple_prf([set()], [{a}]) == (0.0, 0.0, 0.0)
    assert triple_prf([{a}, set()], [{a}, {b, c}]) == (1.0, 1 / 3, 0.5)
    with pytest.raises(ValueError, match="same length"):
        triple_prf([set()], [])


# ------------------------------------------------------------------------------ span mapping
@pytest.fixture(scope="module")
def minilm_tokenizer():
    from lib import encoders
    return encoders.tokenizer("minilm")


@pytest.fixture(scope="module")
def chinese_tokenizer():
    from lib import encoders
    return encoders.tokenizer("monpa")


words = st.lists(st.sampled_from(["Alan", "Bean", "was", "born", "in", "Wheeler", ",", "Texas", "1932",
                                  "A.C.", "Cesena", "unbelievably", "São", "Paulo", "(", ")", "x-ray"]),
                 min_size=1, max_size=12)


@given(words, st.data())
@settings(max_examples=60, deadline=None)
def test_wordpiece_span_round_trip(minilm_tokenizer, ws, data):
    text = " ".join(ws)
    i = data.draw(st.integers(0, len(ws) - 1))
    j = data.draw(st.integers(i, len(ws) - 1))
    entity = " ".join(ws[i:j + 1])
    enc = minilm_tokenizer(text, return_offsets_mapping=True)
    span = find_token_span(text, enc["offset_mapping"], entity)
    assert span is not None and 1 <= span[0] <= span[1] < len(enc["input_ids"]) - 1
    assert spans_to_text(text, enc["offset_mapping"], span) == entity
    # the token span decodes back to the same (lower-cased, accent-stripped) token sequence
    ids = enc["input_ids"][span[0]: span[1] + 1]
    assert ids == minilm_tokenizer(entity, add_special_tokens=False)["input_ids"]


@given(st.text(alphabet="中国人民银行北京大学成立于年月日的是", min_size=2, max_size=30), st.data())
@settings(max_examples=60, deadline=None)
def test_chinese_char_span_round_trip(chinese_tokenizer, text, data):
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    enc = chinese_tokenizer(text, return_offsets_mapping=True)
    span = char_span_to_tokens(enc["offset_mapping"], start, end)
    assert span == (start + 1, end)  # one token per character, [CLS] first
    assert spans_to_text(text, enc["offset_mapping"], span) == text[start:end]


def test_unaligned_occurrence_is_skipped(minilm_tokenizer):
    text = "Washington is a city; ton is a unit"
    enc = minilm_tokenizer(text, return_offsets_mapping=True)
    span = find_token_span(text, enc["offset_mapping"], "ton")
    assert spans_to_text(text, enc["offset_mapping"], span) == "ton" and span[0] > 1
    assert find_token_span(text, enc["offset_mapping"], "ashing") is None
    with pytest.raises(ValueError, match="span"):
        spans_to_text(text, enc["offset_mapping"], (3, 1))


def test_prepare_examples_and_decode_text(minilm_tokenizer):
    from lib.data import RelationSentence, Triple
    sents = [RelationSentence("Alan Bean was born in Wheeler , Texas .",
                              [Triple("Alan Bean", "birthPlace", "Wheeler , Texas"),
                               Triple("Alan Bean", "nationality", "United States")])]
    ex = prepare_examples(sents, minilm_tokenizer, ["birthPlace", "nationality"])[0]
    assert ex.dropped == 1 and len(ex.quintuples) == 1 and len(ex.gold) == 2
    assert ex.decode_text(ex.quintuples, ["birthPlace", "nationality"]) == {("Alan Bean", "birthPlace",
                                                                             "Wheeler , Texas")}
    batch = collate([ex, ex], 2)
    logits = [torch.from_numpy(np.stack([x, x])) for x in oracle_logits(ex.quintuples, 2, len(ex.input_ids))]
    assert decode_batch(*logits, lengths=batch["lengths"]) == [ex.quintuples] * 2


# --------------------------------------------------------------------------------- model + loss
def _toy_batch(seed: int = 0, n: int = 3, B: int = 4, L: int = 12):
    rng = np.random.default_rng(seed)
    exs = []
    for _ in range(B):
        length = int(rng.integers(6, L + 1))
        quints = set()
        for _ in range(int(rng.integers(0, 3))):
            sh = int(rng.integers(1, length - 2)); oh = int(rng.integers(1, length - 2))
            quints.add((sh, min(sh + 1, length - 2), int(rng.integers(n)), oh, oh))
        exs.append(RelationExample("", list(rng.integers(1, 50, length)), [(0, 0)] * length, quints))
    return collate(exs, n)


@pytest.mark.parametrize("efficient", [True, False])
def test_sparse_loss_equals_dense_loss(efficient):
    torch.manual_seed(0)
    batch = _toy_batch()
    model = GPLinker(16, 3, 8, efficient=efficient, encoder=ScratchCharEncoder(50, 16, dropout=0.0)).double().eval()
    out = model(batch["input_ids"], batch["attention_mask"])
    sparse = gplinker_loss(out, batch, "sparse")
    dense = gplinker_loss(out, batch, "dense")
    assert torch.isfinite(sparse) and sparse.item() == pytest.approx(dense.item(), rel=1e-9)
    bce = gplinker_loss(out, batch, "bce")
    assert bce.item() >= sparse.item() - 1e-9  # BCE >= MLCE cell set by cell set
    with pytest.raises(ValueError, match="loss"):
        gplinker_loss(out, batch, "focal")


def test_tiny_training_reduces_loss():
    torch.manual_seed(0)
    batch = _toy_batch(1, B=16)
    model = GPLinker(32, 3, 16, encoder=ScratchCharEncoder(50, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = gplinker_loss(model(batch["input_ids"], batch["attention_mask"]), batch)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ------------------------------------------------------------------- encoders, batching, evaluation
def test_batches_for_partition_and_bounds():
    from lib.gplinker import batches_for
    exs = [RelationExample("", [1] * n, [(0, 0)] * n, set()) for n in [5, 3, 9, 3, 7, 4, 4]]
    for shuffle in (False, True):
        batches = batches_for(exs, batch_size=3, max_cells=3 * 7 * 7, shuffle=shuffle, seed=1)
        assert sorted(i for b in batches for i in b) == list(range(len(exs)))
        assert all(len(b) <= 3 and len(b) * max(len(exs[i].input_ids) for i in b) ** 2 <= 3 * 49 or len(b) == 1
                   for b in batches)


def test_make_batch_with_features_pads_and_checks_lengths():
    from lib.gplinker import make_batch
    exs = [RelationExample("", [3, 4, 5], [(0, 0)] * 3, {(1, 1, 0, 2, 2)}),
           RelationExample("", [3, 4], [(0, 0)] * 2, set())]
    feats = [torch.randn(3, 4).half(), torch.randn(2, 4).half()]
    b = make_batch(exs, [0, 1], 1, feats)
    assert b["inputs"].shape == (2, 3, 4) and b["inputs"].dtype == torch.float32
    assert torch.equal(b["inputs"][1, :2], feats[1].float()) and (b["inputs"][1, 2] == 0).all()
    with pytest.raises(ValueError, match="features"):
        make_batch(exs, [0, 1], 1, [feats[1], feats[0]])


def test_lr_factor_schedules():
    from lib.gplinker import lr_factor
    assert [lr_factor(s, 10, 2) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0) and lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 10, 2, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, 2, "step")


class _OracleModel(torch.nn.Module):
    """Stub model returning oracle scores for the examples it is given (looked up by input ids)."""

    def __init__(self, examples, n):
        super().__init__()
        self.table = {tuple(e.input_ids): e.quintuples for e in examples}
        self.n = n

    def forward(self, inputs, attention_mask):
        outs = [[], [], []]
        L = inputs.shape[1]
        for row, m in zip(inputs, attention_mask):
            ids = tuple(row[: int(m.sum())].tolist())
            for k, t in enumerate(oracle_logits(self.table[ids], self.n, L)):
                outs[k].append(torch.from_numpy(t))
        return tuple(torch.stack(o) for o in outs)


def test_evaluate_with_oracle_model_gives_f1_one(minilm_tokenizer):
    from lib.data import RelationSentence, Triple
    from lib.gplinker import evaluate
    preds = ["birthPlace", "leader"]
    sents = [RelationSentence("Alan Bean was born in Wheeler , Texas .", [Triple("Alan Bean", "birthPlace", "Wheeler , Texas")]),
             RelationSentence("Texas is led by Greg Abbott , who was born in Wichita Falls .",
                              [Triple("Texas", "leader", "Greg Abbott"), Triple("Greg Abbott", "birthPlace", "Wichita Falls")])]
    exs = prepare_examples(sents, minilm_tokenizer, preds)
    res = evaluate(_OracleModel(exs, 2), exs, preds, thresholds=(0.0, 2.0))
    assert res["prf"][0.0] == (1.0, 1.0, 1.0) and res["prf"][2.0] == (0.0, 0.0, 0.0)
    assert res["pred"] == [e.gold for e in exs]


def test_noisy_logits_contains_gold_at_high_signal():
    from lib.gplinker import noisy_logits
    ent, hh, tt, gold = noisy_logits(32, 5, mean=-4.0, std=0.3, seed=1)
    assert (ent[:, 5, 2] < -1e30).all()  # lower triangle masked
    assert len(gold) >= 4 and decode_relations(ent, hh, tt) == _expected_decode(gold, 5)


def test_train_relations_runs_validates_and_evaluates_each_round():
    from lib.gplinker import train_relations
    exs = [RelationExample("", [3, 4, 5, 6, 7, 8], [(0, 0)] * 6, {(1, 2, 0, 4, 4)})] * 8
    torch.manual_seed(0)
    model = GPLinker(16, 2, 8, encoder=ScratchCharEncoder(20, 16))
    seen = []
    hist = train_relations(model, exs, 2, steps=6, batch_size=4, lr_heads=1e-2, lr_encoder=1e-3, rounds=3,
                           evaluate=lambda r: seen.append(r) or {"round": r})
    assert len(hist.losses) == 6 and all(np.isfinite(hist.losses)) and seen == [0, 1, 2]
    with pytest.raises(ValueError, match="loss"):
        train_relations(model, exs, 2, steps=1, loss="hinge")
    with pytest.raises(ValueError, match="steps"):
        train_relations(model, exs, 2, steps=0)


def test_max_pairs_guard():
    from lib.gplinker import TooManyCandidates, evaluate
    ent = np.where(np.triu(np.ones((2, 6, 6))) > 0, 1.0, -1.0).astype(np.float32)  # 21 spans per channel
    hh = tt = np.ones((1, 6, 6), dtype=np.float32)
    assert len(decode_relations(ent, hh, tt, max_pairs=10_000)) == 21 * 21
    with pytest.raises(TooManyCandidates):
        decode_relations(ent, hh, tt, max_pairs=100)


@given(st.sets(quint_strategy, min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_decode_of_encoded_labels_as_plus_minus_logits(gold):
    """encode -> multi-hot labels -> ±1 logits -> decode: the label encoding and the decoder agree."""
    L, n = 14, 3
    ent, head, tail = encode_quintuples(gold, n)
    tables = [2.0 * pairs_to_dense(pad_pairs([a]), L)[0].numpy() - 1.0 for a in (ent, head, tail)]
    assert decode_relations(*tables) == _expected_decode(gold, n)
    assert gold <= decode_relations(*tables)


def test_full_path_gplinker_on_the_whole_minilm(minilm_tokenizer):
    """The FULL=1 path: the PretrainedEncoder itself is GPLinker's (trainable) encoder."""
    from lib import encoders as enc
    encoder = enc.load_encoder("minilm", "cpu")
    batch = minilm_tokenizer(["Alan Bean was born in Texas .", "Hi ."], padding=True, return_tensors="pt")
    model = GPLinker(encoder.hidden_size, 3, 8, encoder=encoder)
    with torch.no_grad():
        ent, head, tail = model(batch["input_ids"], batch["attention_mask"])
    L = batch["input_ids"].shape[1]
    assert ent.shape == (2, 2, L, L) and head.shape == tail.shape == (2, 3, L, L)


# ------------------------------------------------------------------ a user's mistakes (contents checks)
def test_bce_loss_on_fp16_logits_is_finite_and_equals_fp32():
    """Mistake: evaluating the BCE loss on half-precision logits (B = 8, L = 128 sums ~10^5 cells)."""
    torch.manual_seed(0)
    batch = _toy_batch(B=8, L=128)
    L = batch["attention_mask"].shape[1]
    logits = tuple(torch.randn(8, c, L, L) * 3 for c in (2, 3, 3))
    ref = gplinker_loss(logits, batch, "bce")
    half = gplinker_loss(tuple(x.half() for x in logits), batch, "bce")
    assert torch.isfinite(half) and half.item() == pytest.approx(ref.item(), rel=1e-3)


def test_spans_to_text_with_offsets_beyond_the_text_raises(minilm_tokenizer):
    """Mistake: offsets of one sentence used to cut another, shorter one."""
    enc = minilm_tokenizer("Alan Bean was born in Wheeler , Texas .", return_offsets_mapping=True)
    with pytest.raises(ValueError, match="offsets"):
        spans_to_text("Alan Bean", enc["offset_mapping"], (5, 7))


def test_encode_quintuples_rejects_float_positions():
    """Mistake: positions computed by division (3.7 would silently become 3)."""
    with pytest.raises(TypeError, match="int"):
        encode_quintuples([(1, 3.7, 0, 5, 6)], 2)
    with pytest.raises(TypeError, match="int"):
        encode_quintuples([(1.0, 3, 0, 5, 6)], 2)


def test_decode_relations_with_nan_threshold_or_scores_raises():
    """Mistake: decoding the scores of a diverged model (NaN everywhere) or a threshold that came out NaN."""
    ent, hh, tt = oracle_logits({(1, 2, 0, 4, 4)}, 2, 6)
    with pytest.raises(ValueError, match="decode_relations.*diverged model"):
        decode_relations(ent, hh, tt, threshold=float("nan"))
    bad = hh.copy(); bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="decode_relations.*diverged model"):
        decode_relations(ent, bad, tt)
    with pytest.raises(ValueError, match="diverged model"):
        decode_relations(torch.from_numpy(ent) * float("nan"), torch.from_numpy(hh), torch.from_numpy(tt))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decode_compares_thresholds_in_the_inputs_own_precision(dtype):
    """Mistake (of the old code): a float64 tensor scored 0.5 + 1e-9 against 0.5 decoded unlike the array."""
    gold = {(1, 2, 0, 4, 4)}
    ent, hh, tt = (np.where(x > 0, 0.5 + 1e-9, -1.0).astype(dtype) for x in oracle_logits(gold, 1, 6))
    from_numpy = decode_relations(ent, hh, tt, threshold=0.5)
    from_torch = decode_relations(torch.from_numpy(ent), torch.from_numpy(hh), torch.from_numpy(tt), threshold=0.5)
    assert from_numpy == from_torch
    assert from_numpy == (gold if dtype == np.float64 else set())  # 0.5 + 1e-9 rounds to 0.5 in float32


def test_restrict_predicates_equals_preparing_with_the_kept_triples_only(minilm_tokenizer):
    """Oracle: restricting prepared examples = preparing the sentences with the other triples removed."""
    from lib.data import RelationSentence, Triple
    from lib.gplinker import restrict_predicates
    preds = ["birthPlace", "nationality", "leader"]
    sents = [RelationSentence("Alan Bean was born in Wheeler , Texas , United States .",
                              [Triple("Alan Bean", "birthPlace", "Wheeler , Texas"),
                               Triple("Alan Bean", "nationality", "United States"),
                               Triple("Alan Bean", "leader", "Nobody")]),
             RelationSentence("Texas is led by Greg Abbott .", [Triple("Texas", "leader", "Greg Abbott")])]
    keep = ["leader", "birthPlace"]
    got = restrict_predicates(prepare_examples(sents, minilm_tokenizer, preds), preds, keep)
    kept = [RelationSentence(s.text, [t for t in s.triples if t.predicate in keep]) for s in sents]
    want = prepare_examples(kept, minilm_tokenizer, keep)
    assert [(g.quintuples, g.gold, g.dropped, g.input_ids) for g in got] == \
        [(w.quintuples, w.gold, w.dropped, w.input_ids) for w in want]
    assert got[0].dropped == 1 and len(got[1].quintuples) == 1
    with pytest.raises(ValueError, match="keep"):
        restrict_predicates(got, preds, ["nope"])
    with pytest.raises(ValueError, match="keep"):
        restrict_predicates(got, preds, ["leader", "leader"])


def _fact_batch(seed=0, n=5, lengths=(9, 12, 7, 12), dim=16):
    rng = np.random.default_rng(seed)
    exs = []
    for L in lengths:
        q = set()
        for _ in range(3):
            sh, oh = int(rng.integers(1, L - 2)), int(rng.integers(1, L - 2))
            q.add((sh, sh + 1, int(rng.integers(n)), oh, oh))
        exs.append(RelationExample("", list(rng.integers(1, 50, L)), [(0, 0)] * L, q))
    batch = collate(exs, n)
    batch["inputs"] = torch.randn(len(lengths), max(lengths), dim, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(seed))
    return batch


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_efficient_loss_on_link_heads_equals_the_dense_loss_value_and_gradient(seed, scale):
    """Oracle: the dense multi-label CE on the materialised logits (float64), for ordinary and confident
    (large-score) models; gradients of every parameter too."""
    from lib.globalpointer import efficient_globalpointer_loss
    batch = _fact_batch(seed)
    batch["inputs"] = batch["inputs"] * scale
    torch.manual_seed(seed)
    model = GPLinker(16, 5, 8, efficient=True).double()
    ref = gplinker_loss(model(batch["inputs"], batch["attention_mask"]), batch, "dense")
    got = model.loss(batch)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    g_got = torch.autograd.grad(got, list(model.parameters()))
    assert got.dtype == torch.float64
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-9)
    for a, b in zip(g_got, g_ref):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)
    one = efficient_globalpointer_loss(model.head, batch["inputs"], batch["attention_mask"], batch["head"])
    assert torch.isfinite(one)


def test_efficient_loss_on_link_heads_float32_and_an_all_padding_row():
    batch = _fact_batch(3)
    batch["attention_mask"][1] = 0
    for key in ("entity", "head", "tail"):
        batch[key][1] = -1
    torch.manual_seed(0)
    model = GPLinker(16, 5, 8, efficient=True)
    batch32 = dict(batch, inputs=batch["inputs"].float())
    ref = gplinker_loss(model(batch32["inputs"], batch32["attention_mask"]), batch32)
    got = model.loss(batch32)
    got.backward()
    assert got.dtype == torch.float32 and torch.isclose(got, ref, rtol=1e-5)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_efficient_loss_on_link_heads_validates():
    from lib.globalpointer import efficient_globalpointer_loss
    from lib.globalpointer import GlobalPointer
    batch = _fact_batch(0)
    h, m = batch["inputs"].float(), batch["attention_mask"]
    with pytest.raises(ValueError, match="Efficient"):
        efficient_globalpointer_loss(GlobalPointer(16, 5, 8, rope=False, tril_mask=False), h, m, batch["head"])
    gp = GlobalPointer(16, 5, 8, rope=False, tril_mask=False, efficient=True)
    with pytest.raises(ValueError, match="pairs"):
        efficient_globalpointer_loss(gp, h, m, batch["head"][:, :3])
    bad = batch["head"].clone()
    bad[2, 0, 0] = torch.tensor([8, 8])  # sentence 2 has 7 tokens
    with pytest.raises(ValueError, match="padding"):
        efficient_globalpointer_loss(gp, h, m, bad)
