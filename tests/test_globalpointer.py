"""Oracle tests for lib.globalpointer (analytic identities and brute-force twins)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib import globalpointer as gp
from lib.globalpointer import (
    GlobalPointer,
    globalpointer_loss,
    gp_param_count,
    multilabel_categorical_crossentropy as dense_mlce,
    pair_mask,
    pairs_to_flat_indices,
    rope,
    rope_matrix,
    sparse_multilabel_categorical_crossentropy as sparse_mlce,
)

torch.set_num_threads(1)


def _random_sets(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int, max_k: int):
    """Random positive sets (including empty and all-but-one) as dense labels and padded indices."""
    rows = int(np.prod(shape))
    labels = np.zeros((rows, num_classes))
    sets = []
    for r in range(rows):
        kind = r % 4
        if kind == 0:
            chosen = []
        elif kind == 1:
            chosen = list(rng.choice(num_classes, num_classes - 1, replace=False))
        else:
            chosen = list(rng.choice(num_classes, rng.integers(1, max_k + 1), replace=False))
        labels[r, chosen] = 1
        sets.append(chosen)
    k = max(len(s) for s in sets) + 2
    idx = np.full((rows, k), -1)
    for r, chosen in enumerate(sets):
        idx[r, : len(chosen)] = chosen
    return labels.reshape(*shape, num_classes), idx.reshape(*shape, k)


# ------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("method", ["mask", "subtract"])
def test_sparse_equals_dense(dtype, tol, method):
    rng = np.random.default_rng(0)
    labels, idx = _random_sets(rng, (3, 4), 50, 10)
    logits = torch.tensor(rng.normal(0, 3, (3, 4, 50)), dtype=dtype)
    dense = dense_mlce(torch.tensor(labels), logits)
    sparse = sparse_mlce(torch.tensor(idx), logits, method=method)
    assert torch.allclose(dense, sparse, atol=tol, rtol=tol)


def test_sparse_duplicates_and_padding_are_ignored():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(0, 2, (5, 30)))
    idx = torch.tensor([[3, 7, -1], [0, -1, -1], [-1, -1, -1], [29, 1, 2], [5, 5, 5]])
    dup = torch.tensor([[7, 3, 3, 7, -1, -1], [0, 0, -1, -1, -1, 0], [-1] * 6,
                        [2, 29, 1, 1, -1, 2], [5, -1, -1, -1, -1, -1]])
    assert torch.allclose(sparse_mlce(idx, logits), sparse_mlce(dup, logits), atol=1e-12)
    labels = torch.zeros(5, 30)
    for r, row in enumerate(idx.tolist()):
        for c in row:
            if c >= 0:
                labels[r, c] = 1
    assert torch.allclose(sparse_mlce(dup, logits), dense_mlce(labels, logits), atol=1e-12)
    # a different pad value
    assert torch.allclose(sparse_mlce(idx.masked_fill(idx < 0, 99), logits, pad_index=99),
                          sparse_mlce(idx, logits), atol=1e-12)
    # no label columns at all = all negatives
    assert torch.allclose(sparse_mlce(torch.zeros(5, 0, dtype=torch.long), logits),
                          dense_mlce(torch.zeros(5, 30), logits))


def test_closed_form_zero_logits():
    # L = log(1 + K - k) + log(1 + k)
    loss = dense_mlce(torch.tensor([[1.0, 1, 0, 0, 0]]), torch.zeros(1, 5, dtype=torch.float64))
    assert loss.item() == pytest.approx(2.484906650, abs=1e-9)
    for K, k in [(1, 0), (1, 1), (7, 3), (40, 0), (40, 40)]:
        idx = torch.tensor([list(range(k)) + [-1]])
        got = sparse_mlce(idx, torch.zeros(1, K, dtype=torch.float64)).item()
        assert got == pytest.approx(math.log(1 + K - k) + math.log(1 + k), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_limits(dtype):
    K, pos = 20, [0, 3, 4, 11]
    labels = torch.zeros(K, dtype=dtype)
    labels[pos] = 1
    good = torch.where(labels.bool(), 20.0, -20.0).to(dtype)
    idx = torch.tensor(pos)
    exact = math.log1p((K - 4) * math.exp(-20)) + math.log1p(4 * math.exp(-20))
    for loss in (dense_mlce(labels, good), sparse_mlce(idx, good)):
        assert torch.isfinite(loss) and 0 < loss.item() <= K * math.exp(-20) * (1 + 1e-5)
        assert loss.item() == pytest.approx(exact, rel=1e-5)
    bad = -good
    expect = math.log1p((K - 4) * math.exp(20)) + math.log1p(4 * math.exp(20))
    for loss in (dense_mlce(labels, bad), sparse_mlce(idx, bad)):
        assert loss.item() == pytest.approx(expect, rel=1e-6)


def test_subtract_form_fails_where_mask_form_does_not():
    """The post's Eq. 11 cancels catastrophically when positives dominate (bert4keras #436/#500)."""
    logits = torch.full((1, 10), -30.0)
    logits[0, :3] = 30.0
    idx = torch.tensor([[0, 1, 2]])
    exact = math.log1p(7 * math.exp(-30)) + math.log1p(3 * math.exp(-30))
    assert sparse_mlce(idx, logits).item() == pytest.approx(exact, rel=1e-5)
    assert abs(sparse_mlce(idx, logits, method="subtract").item() - exact) > 1e-3  # clipped log(eps)


@given(st.integers(0, 10_000), st.floats(0.1, 200.0))
@settings(max_examples=40, deadline=None)
def test_sparse_never_negative_nor_nan(seed, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 25, generator=g) * scale
    idx = torch.randint(-1, 25, (4, 6), generator=g)
    loss = sparse_mlce(idx, logits)
    assert torch.isfinite(loss).all() and (loss >= 0).all()


def test_gradient_mass():
    torch.manual_seed(0)
    s = torch.randn(60, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(60, dtype=torch.float64)
    y[[1, 5, 9, 30]] = 1
    dense_mlce(y, s).backward()
    g, neg, pos = s.grad, ~y.bool(), y.bool()
    sd = s.detach()
    closed_neg = sd[neg].exp() / (1 + sd[neg].exp().sum())
    closed_pos = -(-sd[pos]).exp() / (1 + (-sd[pos]).exp().sum())
    assert torch.allclose(g[neg], closed_neg, atol=1e-12) and torch.allclose(g[pos], closed_pos, atol=1e-12)
    assert 0 < g[neg].sum() < 1 and -1 < g[pos].sum() < 0
    s2 = sd.clone().requires_grad_(True)
    sparse_mlce(torch.tensor([1, 5, 9, 30]), s2).backward()
    assert torch.allclose(s2.grad, g, atol=1e-12)


def test_bce_upper_bounds_mlce():
    rng = np.random.default_rng(3)
    for _ in range(20):
        K = int(rng.integers(1, 30))
        s = torch.tensor(rng.normal(0, 3, K))
        y = torch.tensor((rng.random(K) < 0.3).astype(float))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="sum")
        assert bce.item() >= dense_mlce(y, s).item() - 1e-9
    # equality when |P| <= 1 and |N| <= 1
    for s, y in [([0.3, -1.2], [1.0, 0.0]), ([2.0], [0.0]), ([-0.7], [1.0])]:
        s, y = torch.tensor(s, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="sum")
        assert bce.item() == pytest.approx(dense_mlce(y, s).item(), abs=1e-12)


def test_loss_input_validation():
    with pytest.raises(ValueError, match="labels"):
        dense_mlce(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="0/1"):
        dense_mlce(torch.full((3, 4), 2.0), torch.zeros(3, 4))
    with pytest.raises(TypeError, match="label_indices"):
        sparse_mlce(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        sparse_mlce(torch.tensor([[4]]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="leading shape"):
        sparse_mlce(torch.zeros(2, 1, dtype=torch.long), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="method"):
        sparse_mlce(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 4), method="x")


# --------------------------------------------------------------------------------------- RoPE
def test_rope_identity_norms_and_matrix():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y = rope(x)
    assert torch.allclose(y[:, 0], x[:, 0])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-12)
    for i in range(9):
        assert torch.allclose(y[:, i], x[:, i] @ rope_matrix(i, 16).T, atol=1e-12)
    for i, j in [(0, 3), (2, 7), (5, 1), (8, 8)]:
        assert torch.allclose(rope_matrix(i, 16).T @ rope_matrix(j, 16), rope_matrix(j - i, 16), atol=1e-12)


@pytest.mark.parametrize("efficient", [False, True])
def test_rope_scores_depend_on_offset_only(efficient):
    """Constant hidden state at every position -> with RoPE the score matrix is Toeplitz."""
    torch.manual_seed(0)
    gp = GlobalPointer(8, 3, 16, rope=True, tril_mask=False, efficient=efficient).double()
    h = torch.randn(1, 1, 8, dtype=torch.float64).expand(2, 12, 8)
    s = gp(h)
    for c in range(1, 5):
        assert torch.allclose(s[..., c:, c:], s[..., :-c, :-c], atol=1e-10)
    assert s[0, 0].std() > 1e-3  # not trivially constant
    flat = GlobalPointer(8, 3, 16, rope=False, tril_mask=False, efficient=efficient).double()(h)
    assert torch.allclose(flat, flat[..., :1, :1].expand_as(flat), atol=1e-12)


def test_rope_relative_on_random_inputs():
    """(R_i q)^T (R_j k) == q^T R_{j-i} k for arbitrary q, k."""
    torch.manual_seed(1)
    q, k = torch.randn(10, 8, dtype=torch.float64), torch.randn(10, 8, dtype=torch.float64)
    s = rope(q) @ rope(k).T
    for i in range(10):
        for j in range(10):
            assert s[i, j].item() == pytest.approx((q[i] @ rope_matrix(j - i, 8) @ k[j]).item(), abs=1e-10)


# ------------------------------------------------------------------------------------ masks
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.booleans(), st.booleans())
@settings(max_examples=30, deadline=None)
def test_masks_property(lengths, tril, efficient):
    torch.manual_seed(0)
    L = max(lengths) + 1
    am = torch.tensor([[1] * n + [0] * (L - n) for n in lengths])
    gp = GlobalPointer(6, 2, 4, tril_mask=tril, efficient=efficient)
    out = gp(torch.randn(len(lengths), L, 6), am)
    assert out.shape == (len(lengths), 2, L, L)
    big_neg = torch.finfo(out.dtype).min
    for b, n in enumerate(lengths):
        for i in range(L):
            for j in range(L):
                masked = i >= n or j >= n or (tril and j < i)
                assert (out[b, :, i, j] == big_neg).all() == masked
                assert (out[b, :, i, j] <= -1e11).all() == masked


def test_pair_mask_none_and_loss_finite_with_masked_cells():
    assert pair_mask(None, 5, tril_mask=False) is None
    gp = GlobalPointer(6, 2, 4)
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    logits = gp(torch.randn(2, 4, 6), am)
    pairs = torch.tensor([[[[0, 1], [-1, -1]], [[2, 2], [1, 2]]], [[[3, 3], [-1, -1]], [[-1, -1], [-1, -1]]]])
    loss = globalpointer_loss(logits, pairs)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in gp.parameters())


def test_efficient_difference_is_row_plus_column():
    torch.manual_seed(0)
    gp = GlobalPointer(10, 4, 8, efficient=True, tril_mask=False).double()
    s = gp(torch.randn(1, 7, 10, dtype=torch.float64))[0]
    delta = s[0] - s[2]
    for (i, ip, j, jp) in [(0, 3, 1, 5), (2, 6, 0, 4), (6, 1, 6, 2)]:
        assert abs(delta[i, j] - delta[i, jp] - delta[ip, j] + delta[ip, jp]) < 1e-10
    with torch.no_grad():
        gp.q_dense.weight.zero_()
        gp.q_dense.bias.zero_()
    s = gp(torch.randn(1, 7, 10, dtype=torch.float64))[0]
    assert torch.allclose(s, s[:1].expand_as(s))


def test_standard_matches_explicit_einsum():
    """Brute-force twin of the standard head: explicit loops over heads and cells."""
    torch.manual_seed(0)
    gp = GlobalPointer(5, 2, 4, rope=True, tril_mask=False).double()
    h = torch.randn(1, 6, 5, dtype=torch.float64)
    out = gp(h)[0]
    u = gp.dense(h)[0].view(6, 2, 8)
    for a in range(2):
        for i in range(6):
            for j in range(6):
                qi = rope_matrix(i, 4) @ u[i, a, :4]
                kj = rope_matrix(j, 4) @ u[j, a, 4:]
                assert out[a, i, j].item() == pytest.approx((qi @ kj).item() / 2.0, abs=1e-10)


# ------------------------------------------------------------------------------ param counts
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("efficient", [True, False])
def test_param_count_formula_matches_modules(bias, efficient):
    for D, h, d in [(768, 2, 64), (768, 49, 64), (32, 5, 8)]:
        m = GlobalPointer(D, h, d, efficient=efficient, bias=bias)
        assert sum(p.numel() for p in m.parameters()) == gp_param_count(D, h, d, efficient=efficient, bias=bias)


def test_param_counts_at_duie_size():
    def total(efficient, bias):
        return sum(gp_param_count(768, h, 64, efficient=efficient, bias=bias) for h in (2, 49, 49))
    assert total(False, True) == 9_843_200
    assert total(True, True) == 321_096
    assert total(False, False) == 9_830_400
    assert total(True, False) == 320_512


def test_flat_indices_and_gp_validation():
    pairs = torch.tensor([[[1, 2], [3, 0], [-1, -1]]])
    assert pairs_to_flat_indices(pairs, 5).tolist() == [[7, 15, -1]]
    with pytest.raises(ValueError, match="length"):
        pairs_to_flat_indices(pairs, 3)
    with pytest.raises(ValueError, match="hidden_size"):
        GlobalPointer(0, 2)
    with pytest.raises(ValueError, match="head_size"):
        GlobalPointer(4, 2, 3)
    gp = GlobalPointer(4, 2, 4)
    with pytest.raises(ValueError, match="hidden_states"):
        gp(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        gp(torch.zeros(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(TypeError, match="hidden_states"):
        gp(np.zeros((2, 3, 4)))


def test_globalpointer_loss_equals_dense_on_flattened_cells():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    pairs = torch.full((2, 3, 2, 2), -1)
    pairs[0, 0, 0] = torch.tensor([1, 2])
    pairs[1, 2] = torch.tensor([[4, 4], [0, 3]])
    labels = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    labels[0, 0, 1, 2] = labels[1, 2, 4, 4] = labels[1, 2, 0, 3] = 1
    dense = dense_mlce(labels.flatten(2), logits.flatten(2)).sum(1).mean()
    assert globalpointer_loss(logits, pairs).item() == pytest.approx(dense.item(), abs=1e-12)


def test_sparse_loss_gradient_equals_dense_with_empty_rows_padding_and_repeats():
    """Regression: a row without positives once received K times the gradient at class 0."""
    torch.manual_seed(3)
    logits = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[3, -1, -1], [-1, -1, -1], [0, 0, 5], [8, 2, -1], [-1, -1, -1], [1, 1, 1]])
    labels = torch.zeros(6, 9, dtype=torch.float64)
    for row, cols in enumerate(indices.tolist()):
        for col in cols:
            if col >= 0:
                labels[row, col] = 1.0
    sparse_grad = torch.autograd.grad(gp.sparse_multilabel_categorical_crossentropy(indices, logits).sum(), logits)[0]
    dense_grad = torch.autograd.grad(gp.multilabel_categorical_crossentropy(labels, logits).sum(), logits)[0]
    torch.testing.assert_close(sparse_grad, dense_grad, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ a user's mistakes (contents checks)
def test_pairs_to_flat_indices_rejects_float_positions():
    """Mistake: cell positions computed as floats (2.6 would silently become 2)."""
    with pytest.raises(TypeError, match="pairs.*integer"):
        pairs_to_flat_indices(torch.tensor([[[1.0, 2.6]]]), 4)


def test_globalpointer_loss_with_gold_cell_in_masked_triangle_raises():
    """Mistake: a span given as (tail, head), i.e. a gold cell in the masked lower triangle j < i."""
    layer = GlobalPointer(8, 1, 4, rope=True, tril_mask=True)
    logits = layer(torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.long))
    assert torch.isfinite(globalpointer_loss(logits, torch.tensor([[[[1, 3]]]])))
    with pytest.raises(ValueError, match="masked"):
        globalpointer_loss(logits, torch.tensor([[[[3, 1]]]]))
    padded = layer(torch.randn(1, 5, 8), torch.tensor([[1, 1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="masked"):
        globalpointer_loss(padded, torch.tensor([[[[1, 4]]]]))  # a gold cell on a padding position
    # bert4keras masks with -1e12 instead of finfo.min: the loss would be ~1e12, so that mask is seen too
    b4k = torch.randn(1, 1, 4, 4).masked_fill(torch.ones(4, 4).tril(-1).bool(), -1e12)
    with pytest.raises(ValueError, match="masked"):
        globalpointer_loss(b4k, torch.tensor([[[[3, 1]]]]))


_DTYPE_RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-12}


@given(st.sampled_from(list(_DTYPE_RTOL)), st.integers(0, 10_000), st.sampled_from([1.0, 30.0, 300.0, 3e4]),
       st.booleans())
@settings(max_examples=80, deadline=None)
def test_losses_in_every_precision_are_finite_and_match_fp64(dtype, seed, scale, masked_rows):
    """Property: dense and sparse MLCE on fp16 / bf16 / fp32 / fp64 logits (including +-large values and rows
    masked to the dtype's finfo.min) are finite and equal the float64 loss of the *same* (rounded) logits
    within the dtype's tolerance."""
    rng = np.random.default_rng(seed)
    C = 64
    x = torch.tensor(rng.normal(0, 1, (3, C)) * scale).clamp(-6e4, 6e4).to(dtype)
    labels = torch.tensor(rng.random((3, C)) < 0.1)
    labels[0] = False  # a row with no positive
    if masked_rows:
        x[1] = torch.finfo(dtype).min  # a fully masked row (padding), no positives on it
        labels[1] = False
        x[2, C // 2:] = torch.finfo(dtype).min
        labels[2, C // 2:] = False
    idx = torch.full((3, C), -1, dtype=torch.long)
    for r in range(3):
        pos = torch.nonzero(labels[r]).flatten()
        idx[r, :len(pos)] = pos
    ref = dense_mlce(labels.double(), x.double())
    scale_ref = ref.abs() + 1.0
    for value in (dense_mlce(labels.to(dtype), x), sparse_mlce(idx, x)):
        assert torch.isfinite(value).all()
        assert ((value.double() - ref).abs() <= _DTYPE_RTOL[dtype] * scale_ref).all()


def test_efficient_parts_only_for_efficient_heads():
    with pytest.raises(ValueError, match="efficient_parts: only an Efficient GlobalPointer"):
        GlobalPointer(8, 2, 4, efficient=False).efficient_parts(torch.randn(1, 3, 8))
