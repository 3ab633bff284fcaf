"""Oracle tests for lib/init_std.py: scipy's truncnorm, transformers' `_init_weights` and schedules,
torch's SELU constants and optimizers, closed forms (B3/B4/C2) and brute-force twins."""
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lib import init_std as I

torch.set_num_threads(1)


# ---------------------------------------------------------------- A1: truncated normal

@pytest.mark.parametrize("a", [1.0, 2.0, 3.0, 0.5, 4.0])
def test_variance_factor_matches_scipy_truncnorm(a):
    assert I.trunc_normal_variance_factor(a) == pytest.approx(scipy.stats.truncnorm(-a, a).var(), abs=1e-12)


def test_bert_constants():
    g2 = I.trunc_normal_variance_factor(2.0)
    assert g2 == pytest.approx(0.7737413035, abs=1e-9)
    assert 1 / math.sqrt(g2) == pytest.approx(1.1368472343, abs=1e-9)
    s = I.realised_std(0.02)
    assert s == pytest.approx(0.02 * scipy.stats.truncnorm(-2, 2).std(), abs=1e-12)
    assert s == pytest.approx(0.0175925, abs=1e-6)
    assert 768 * s**2 == pytest.approx(0.237693, abs=1e-5)
    assert s * math.sqrt(768) == pytest.approx(0.48754, abs=1e-5)
    assert I.realised_std(0.02, a=None) == 0.02


def test_tf_truncated_normal_matches_scipy_distribution():
    g = torch.Generator().manual_seed(0)
    x = I.tf_truncated_normal_(torch.empty(1_000_000, dtype=torch.float64), 1.0, 2.0, g)
    assert x.abs().max() <= 2.0
    assert x.std().item() == pytest.approx(0.87963, abs=0.002)
    assert abs(x.mean().item()) < 0.003
    # same distribution as scipy's truncnorm (KS test on a fixed-seed subsample)
    assert scipy.stats.kstest(x[:20000].numpy(), scipy.stats.truncnorm(-2, 2).cdf).pvalue > 1e-3


def test_torch_trunc_normal_absolute_bounds_trap():
    g = torch.Generator().manual_seed(1)
    w = torch.empty(400_000)
    torch.nn.init.trunc_normal_(w, std=0.02, generator=g)  # bounds are ±2 in ABSOLUTE units
    assert w.std().item() == pytest.approx(0.02, rel=0.01)  # nothing is cut
    assert w.abs().max().item() > 2 * 0.02
    torch.nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04, generator=g)  # TF semantics by hand
    ours = I.tf_truncated_normal_(torch.empty(400_000), 0.02, 2.0, g)
    assert w.std().item() == pytest.approx(ours.std().item(), rel=0.01)
    assert w.std().item() == pytest.approx(I.realised_std(0.02), rel=0.01)


@settings(max_examples=25, deadline=None)
@given(std=st.floats(1e-4, 10.0), a=st.floats(0.3, 5.0), seed=st.integers(0, 2**31 - 1))
def test_tf_truncated_normal_respects_bounds(std, a, seed):
    x = I.tf_truncated_normal_(torch.empty(2000, dtype=torch.float64), std, a, torch.Generator().manual_seed(seed))
    assert x.abs().max().item() <= a * std * (1 + 1e-12)


# ---------------------------------------------------------------- BERT init vs transformers

def _tiny_bert(seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=2000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=64)
    return BertModel(cfg)


def test_bert_init_torch_semantics_matches_transformers_init_weights():
    hf = _tiny_bert(0)  # transformers' own _init_weights (normal_, std=initializer_range)
    ours = _tiny_bert(1)
    realised = I.bert_init_(ours, 0.02, "torch", torch.Generator().manual_seed(2))
    assert realised == 0.02
    hf_p, our_p = dict(hf.named_parameters()), dict(ours.named_parameters())
    assert hf_p.keys() == our_p.keys()
    for name, p in hf_p.items():
        q = our_p[name]
        if name.endswith("LayerNorm.weight"):
            assert torch.all(p == 1) and torch.all(q == 1), name
        elif p.dim() == 1:
            assert torch.all(p == 0) and torch.all(q == 0), name
        else:
            a, b = p.detach(), q.detach()
            if "word_embeddings" in name:  # padding row zero in both
                assert torch.all(a[0] == 0) and torch.all(b[0] == 0)
                a, b = a[1:], b[1:]
            tol = 4 / math.sqrt(2 * a.numel()) + 0.005
            assert a.std().item() == pytest.approx(0.02, rel=tol), name
            assert b.std().item() == pytest.approx(a.std().item(), rel=2 * tol), name
            if a.numel() >= 10_000:  # both untruncated normals: excess kurtosis 0 (std error √(24/n))
                tol_k = 5 * math.sqrt(24 / a.numel())
                assert scipy.stats.kurtosis(a.flatten().numpy()) == pytest.approx(0.0, abs=tol_k), name
                assert scipy.stats.kurtosis(b.flatten().numpy()) == pytest.approx(0.0, abs=tol_k), name


def test_bert_init_tf_semantics_truncates_and_shrinks_std():
    model = _tiny_bert(0)
    realised = I.bert_init_(model, 0.02, "tf", torch.Generator().manual_seed(0))
    assert realised == pytest.approx(0.0175925, abs=1e-6)
    w = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if p.dim() == 2 and "word" not in n])
    assert w.abs().max().item() <= 0.04
    assert w.std().item() == pytest.approx(realised, rel=0.01)


def test_bert_weight_stats_kinds_and_values():
    rows = I.bert_weight_stats(_tiny_bert(0))
    kinds = {r["kind"] for r in rows}
    assert "other" not in kinds
    assert {"query", "key", "value", "attention output", "FFN in", "FFN out", "word embedding"} <= kinds
    for r in rows:
        assert r["std"] == pytest.approx(0.02, rel=0.1), r["name"]
        assert r["std_x_sqrt_fan_in"] == pytest.approx(r["std"] * math.sqrt(r["fan_in"]))


# ---------------------------------------------------------------- A2/A3/A5: moments

def test_activation_second_moments_and_selu_constants():
    assert I.activation_second_moment("sigmoid", 1.0) == pytest.approx(0.2933790, abs=1e-6)
    assert I.activation_second_moment("gelu", 1.0) == pytest.approx(0.4252215, abs=1e-6)
    assert I.activation_second_moment("gelu", 0.2376933) == pytest.approx(0.0786962, abs=1e-6)
    assert I.activation_second_moment("relu", 2.0) == pytest.approx(1.0, abs=1e-9)  # E[relu(z)^2] = v/2
    lam, alp = I.selu_constants()
    selu = torch.nn.SELU()
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    ref = selu(x)  # torch's constants are the oracle
    assert lam == pytest.approx(ref[1].item(), abs=1e-6)
    assert lam * alp * (math.exp(-1) - 1) == pytest.approx(ref[0].item(), abs=1e-6)


def test_second_moment_through_a_layer():
    lecun = I.second_moment_profile(512, 1, "lecun", "identity", n=4096, seed=0)
    assert lecun[1] / lecun[0] == pytest.approx(1.0, rel=0.03)
    he = I.second_moment_profile(512, 1, "he", "relu", n=4096, seed=0)
    assert he[1] / he[0] == pytest.approx(1.0, rel=0.04)
    bert = I.second_moment_profile(256, 3, "bert", "identity", n=2048, seed=0)
    per_layer = (bert[3] / bert[0]) ** (1 / 3)
    assert per_layer == pytest.approx(256 * I.realised_std(0.02) ** 2, rel=0.05)


def test_attention_logit_second_moment_is_d():
    s = I.attention_softmax_stats(64, T=64, scale=True, n=2000, seed=0)
    assert s["second_moment_over_d"] == pytest.approx(1.0, rel=0.03)
    assert s["entropy"] <= math.log(64) + 1e-9


# ---------------------------------------------------------------- B3/B4: identity path

def test_postln_coefficient_closed_form():
    for l in range(1, 13):
        assert I.postln_coefficient([1.0] * l)[-1] == pytest.approx(2 ** (-l / 2), rel=1e-12)
    assert np.all(I.postln_coefficient([0.0] * 5) == 1.0)
    with pytest.raises(ValueError, match="sigmas2"):
        I.postln_coefficient([1.0, -0.1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=40))
def test_postln_coefficient_monotone_in_unit_interval(s2):
    c = I.postln_coefficient(s2)
    assert np.all(np.diff(c) <= 1e-15) and np.all(c <= 1.0) and np.all(c > 0)


def test_branch_variance_bert_base():
    s = I.realised_std(0.02)
    assert I.branch_variance_linear(768, s) == pytest.approx(0.2376933, abs=1e-6)
    ffn = I.branch_variance_ffn(768, s)
    assert ffn == pytest.approx(0.074822, abs=1e-5)
    assert 1 / math.sqrt(1 + ffn) == pytest.approx(0.96457, abs=1e-5)


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_identity_path_noise_toy_matches_closed_form(sigma):
    cfg = I.StackConfig(d=4096, L=10, heads=1, kind="post", branch="noise", sigma=sigma)
    g = torch.Generator().manual_seed(0)
    rec = I.record_stack(I.ResidualStack(cfg, g), torch.randn(4, 16, 4096, generator=g))
    expected = (1 + sigma**2) ** (-np.arange(1, 11) / 2)
    assert np.max(np.abs(rec["c"] - expected)) < 0.005
    assert np.max(np.abs(rec["predicted_c"] - expected)) < 0.005


def test_preln_noise_toy_variance_grows_linearly():
    cfg = I.StackConfig(d=4096, L=10, heads=1, kind="pre", branch="noise", sigma=0.5)
    g = torch.Generator().manual_seed(0)
    rec = I.record_stack(I.ResidualStack(cfg, g), torch.randn(4, 16, 4096, generator=g))
    np.testing.assert_allclose(rec["stream_sq"], 1 + 0.25 * np.arange(1, 11), rtol=0.03)
    assert np.max(np.abs(rec["c"] - 1)) < 0.01


@pytest.mark.parametrize("alpha", [0.4875, 1.0])
def test_transformer_identity_coefficient_matches_b4(alpha):
    cfg = I.StackConfig(d=128, L=12, heads=4, ff=512, kind="post", alpha=alpha)
    rec = I.probe_stack(cfg, B=16, T=32, seed=0)
    assert len(rec["c"]) == 24 and len(rec["weight_grad"]) == 24
    assert abs(rec["c"][-1] - rec["predicted_c"][-1]) < 0.03


def test_gradient_profile_matches_autograd_brute_force():
    cfg = I.StackConfig(d=32, L=3, heads=2, ff=64, kind="pre", alpha=1.0)
    g = torch.Generator().manual_seed(0)
    model = I.ResidualStack(cfg, g)
    x0, target = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    prof = I.gradient_profile(model, x0, target)
    # brute force: gradient w.r.t. the input of the first sublayer is d loss / d x0
    x = x0.clone().requires_grad_(True)
    F.mse_loss(model(x), target).backward()
    assert prof["input_grad"][0] == pytest.approx(x.grad.norm().item(), rel=1e-5)
    last = model.sublayers[-1].branch
    assert prof["weight_grad"][-1] == pytest.approx(
        math.sqrt(sum(p.grad.pow(2).sum().item() for p in last.parameters())), rel=1e-5)


def test_weight_std_of_stack_is_alpha_over_sqrt_d():
    cfg = I.StackConfig(d=256, L=2, heads=4, ff=1024, alpha=0.5)
    model = I.ResidualStack(cfg, torch.Generator().manual_seed(0))
    w = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert w.std().item() == pytest.approx(0.5 / 16, rel=0.01)


# ---------------------------------------------------------------- B7: Adam vs SGD

def test_adam_first_step_is_lr_sign():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    step = I.first_step_update(g, "adam", lr=1e-3, eps=1e-8)
    torch.testing.assert_close(step, -1e-3 * g / (g.abs() + 1e-8), atol=1e-7, rtol=0)
    bound = 1e-3 * 1e-8 / g.abs().min().item()  # |lr·g/(|g|+eps) - lr·sign(g)| <= lr·eps/|g|
    torch.testing.assert_close(step, -1e-3 * g.sign(), atol=bound, rtol=0)
    torch.testing.assert_close(I.first_step_update(g, "sgd", lr=1e-3), -1e-3 * g, atol=1e-15, rtol=0)


def test_adam_trajectory_is_invariant_to_gradient_scale_sgd_is_not():
    def run(c, opt_name):
        gen = torch.Generator().manual_seed(0)
        w = torch.nn.Parameter(torch.randn(50, generator=gen, dtype=torch.float64))
        A = torch.randn(80, 50, generator=gen, dtype=torch.float64)
        y = torch.randn(80, generator=gen, dtype=torch.float64)
        w0 = w.detach().clone()
        opt = torch.optim.Adam([w], lr=1e-2, eps=0.0) if opt_name == "adam" else torch.optim.SGD([w], lr=1e-3)
        for _ in range(5):
            opt.zero_grad()
            (c * ((A @ w - y) ** 2).mean()).backward()
            opt.step()
        return w.detach() - w0
    torch.testing.assert_close(run(1e-3, "adam"), run(1.0, "adam"), rtol=1e-6, atol=0)
    sgd_small, sgd_big = run(1e-3, "sgd"), run(1.0, "sgd")
    assert not torch.allclose(sgd_small, sgd_big)
    one = lambda c: I.first_step_update(torch.full((3,), 0.5, dtype=torch.float64) * c, "sgd", lr=0.1)  # noqa: E731
    torch.testing.assert_close(one(1e-3), 1e-3 * one(1.0), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- B8: warmup

@pytest.mark.parametrize("total", [None, 40])
def test_linear_warmup_matches_transformers_schedules(total):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=3e-3)
    sched = (get_constant_schedule_with_warmup(opt, 10) if total is None
             else get_linear_schedule_with_warmup(opt, 10, total))
    for t in range(45):
        assert opt.param_groups[0]["lr"] == pytest.approx(I.linear_warmup(t, 10, 3e-3, total), abs=1e-15)
        opt.step()
        sched.step()
    assert I.linear_warmup(0, 10, 1.0) == 0.0 and I.linear_warmup(10, 10, 1.0) == 1.0
    assert I.linear_warmup(0, 0, 1.0) == 1.0


# ---------------------------------------------------------------- D3: batched trainer vs torch.optim twin

def test_batched_warmup_grid_equals_separate_torch_adam_runs():
    runs = [I.WarmupRun("post", 1.0, 3e-3, 0), I.WarmupRun("post", 0.5, 1e-3, 3, seed=1),
            I.WarmupRun("pre", 1.0, 2e-3, 2), I.WarmupRun("pre", 1.0, 2e-3, 2, seed=2)]
    cfg = I.WarmupGridConfig(d=16, L=3, steps=6, batch=8, seed=0)
    grid, drift, early = I.train_warmup_grid(runs, cfg, early_steps=4)
    np.testing.assert_array_equal(grid, I.train_warmup_grid(runs, cfg))  # deterministic, same with/without drift
    assert drift.shape == (4, cfg.L) and early.shape == (4, 4, cfg.L)
    sample = cfg.task.sampler()
    for i, r in enumerate(runs):  # the brute-force twin: one torch.optim.Adam run per grid cell, its own seed
        seed = cfg.seed + r.seed
        batched = I.BatchedResidualMLP(1, cfg.task.din, cfg.d, cfg.L, cfg.task.classes, r.kind, [r.alpha], seeds=[seed])
        m, w0 = batched.member(0).double(), batched.member(0)
        o = torch.optim.Adam(m.parameters(), lr=r.lr)
        sch = torch.optim.lr_scheduler.LambdaLR(o, lambda t, w=r.warmup: I.linear_warmup(t, w, 1.0))
        data_gen = torch.Generator().manual_seed(seed + 10_000)

        def block_drift(b):
            moved = (m.w1[b].weight - w0.w1[b].weight.double()).pow(2).sum() + (m.w2[b].weight - w0.w2[b].weight.double()).pow(2).sum()
            size = w0.w1[b].weight.pow(2).sum() + w0.w2[b].weight.pow(2).sum()
            return (moved / size).sqrt().item()

        for t in range(cfg.steps):
            x, y = sample(cfg.batch, data_gen)
            loss = F.cross_entropy(m(x.double()), y)
            o.zero_grad()
            loss.backward()
            o.step()
            sch.step()
            assert grid[i, t] == pytest.approx(loss.item(), rel=1e-4), (i, t)
            if t < 4:
                assert early[i, t] == pytest.approx([block_drift(b) for b in range(cfg.L)], rel=1e-3), (i, t)
        assert drift[i] == pytest.approx([block_drift(b) for b in range(cfg.L)], rel=1e-3)


def test_runs_with_the_same_seed_share_init_and_batches():
    a, b = I.WarmupRun("post", 1.0, 1e-3, 0, seed=5), I.WarmupRun("post", 1.0, 1e-3, 0, seed=5)
    grid = I.train_warmup_grid([a, b, I.WarmupRun("post", 1.0, 1e-3, 0, seed=6)], I.WarmupGridConfig(d=8, L=2, steps=3, batch=4))
    np.testing.assert_array_equal(grid[0], grid[1])
    assert not np.array_equal(grid[0], grid[2])


def test_untied_mlm_has_its_own_output_matrix():
    tied = I.TinyMLM(V=16, T=8, L=1, d=8, heads=2, ff=16, generator=torch.Generator().manual_seed(0))
    untied = I.TinyMLM(V=16, T=8, L=1, d=8, heads=2, ff=16, generator=torch.Generator().manual_seed(0), tied=False)
    assert tied.output_matrix is tied.tok.weight
    assert untied.output_matrix is untied.out_emb.weight and untied.output_matrix is not untied.tok.weight
    tokens = I.make_markov_corpus(16, 8, 4, seed=0)
    untied.loss(tokens, torch.Generator().manual_seed(0)).backward()
    # input side: only the looked-up rows (and [MASK]) get a gradient; the output matrix gets a dense one
    rows = (untied.tok.weight.grad.abs().sum(1) > 0)
    assert rows.sum() <= len(tokens.unique()) + 1
    assert (untied.out_emb.weight.grad.abs().sum(1) > 0).all()


def test_smooth_is_moving_average():
    a = np.arange(10.0)
    np.testing.assert_allclose(I.smooth(a, 3), np.convolve(a, np.ones(3) / 3, mode="valid"))


# ---------------------------------------------------------------- C2 / D4: logits, tiny MLM

def test_logit_entropy_at_init_matches_c2():
    s = I.realised_std(0.02)
    pred = I.predicted_logit_entropy(768, 30522, s)
    assert pred == pytest.approx(10.2070, abs=1e-3)
    assert I.softmax_entropy_at_init(768, 30522, s, n=16, seed=0) == pytest.approx(pred, abs=0.01)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 6), T=st.integers(1, 20), p=st.floats(0.01, 0.99), seed=st.integers(0, 10**6))
def test_mask_tokens_properties(B, T, p, seed):
    tokens = torch.randint(0, 50, (B, T), generator=torch.Generator().manual_seed(seed))
    inputs, masked = I.mask_tokens(tokens, 50, p, torch.Generator().manual_seed(seed + 1))
    assert masked.dtype == torch.bool and masked.any(1).all()
    assert torch.all(inputs[masked] == 50) and torch.all(inputs[~masked] == tokens[~masked])


def test_markov_corpus_follows_its_successor_table():
    seq = I.make_markov_corpus(V=64, T=20, n=200, seed=0, successors=3)
    assert seq.shape == (200, 20) and seq.min() >= 0 and seq.max() < 64
    nexts = {}
    for a, b in zip(seq[:, :-1].flatten().tolist(), seq[:, 1:].flatten().tolist()):
        nexts.setdefault(a, set()).add(b)
    assert max(len(v) for v in nexts.values()) <= 3


def test_tiny_mlm_is_tied_and_scores_masked_positions_only():
    model = I.TinyMLM(V=40, T=8, L=1, d=16, heads=2, ff=32, head=True, generator=torch.Generator().manual_seed(0))
    big = [n for n, p in model.named_parameters() if p.shape == (41, 16)]
    assert big == ["tok.weight"]  # no separate output matrix: the projection IS the embedding
    tokens = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(1))
    inputs, masked = I.mask_tokens(tokens, model.mask_id, 0.3, torch.Generator().manual_seed(2))
    logits = model(inputs, masked)
    assert logits.shape == (int(masked.sum()), 41)
    # brute force: full-sequence scores with the embedding matrix, then select the masked rows
    h = model.encoder(model.emb_norm(model.tok(inputs) + model.pos(torch.arange(8))))
    u = model.head_norm(F.gelu(model.head_dense(h)))
    torch.testing.assert_close(logits, (u @ model.tok.weight.T + model.out_bias)[masked])
    rows = I.embedding_grad_rows(model, tokens)
    assert rows["tied_total"] == 1.0 and rows["input_side"] < 1.0


@pytest.mark.parametrize("which", ["tiny_mlm", "bert"])
def test_layernorm_gains_in_forward_order_and_one_at_init(which):
    model = (I.TinyMLM(V=30, T=8, L=2, d=16, heads=2, ff=32, head=True) if which == "tiny_mlm"
             else _tiny_bert(0))
    gains = I.layernorm_gains(model)
    assert all(v == 1.0 for v in gains.values())
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: order.append(n))
             for name, m in model.named_modules() if name in gains]
    with torch.no_grad():
        if which == "tiny_mlm":
            x = torch.randint(0, 30, (2, 8))
            model(x, torch.ones_like(x, dtype=torch.bool))
        else:
            model(input_ids=torch.randint(1, 2000, (2, 8)))
    for h in hooks:
        h.remove()
    assert order == list(gains)


def test_bert_sublayer_ratio_ffn_matches_b5_at_init():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    d = 512
    model = BertModel(BertConfig(vocab_size=500, hidden_size=d, num_hidden_layers=2, num_attention_heads=8,
                                 intermediate_size=4 * d, max_position_embeddings=64)).eval()
    ids = torch.randint(1, 500, (8, 64), generator=torch.Generator().manual_seed(0))
    r = I.bert_sublayer_ratios(model, ids)
    assert r["sigma2"].shape == (4,)
    ffn_pred = I.branch_variance_ffn(d, 0.02)  # HF init: plain normal, realised std 0.02
    assert r["sigma2"][1] == pytest.approx(ffn_pred, rel=0.05)
    assert r["sigma2"][3] == pytest.approx(ffn_pred, rel=0.05)


# ---------------------------------------------------------------- input validation

@pytest.mark.parametrize("call, exc, words", [
    (lambda: I.trunc_normal_variance_factor(-1.0), ValueError, "a must be"),
    (lambda: I.tf_truncated_normal_([1.0], 0.02), TypeError, "tensor must be"),
    (lambda: I.tf_truncated_normal_(torch.zeros(3, dtype=torch.long), 0.02), TypeError, "floating-point"),
    (lambda: I.WarmupRun(seed=-1), ValueError, "seed must be"),
    (lambda: I.train_warmup_grid([I.WarmupRun()], I.WarmupGridConfig(d=8, L=1, steps=2), early_steps=-1), ValueError, "early_steps"),
    (lambda: I.TinyMLM(V=8, T=4, L=1, d=8, heads=2, ff=8, tied="no"), TypeError, "tied must be"),
    (lambda: I.bert_init_(torch.nn.Linear(2, 2), 0.02, "jax"), ValueError, "semantics must be"),
    (lambda: I.bert_init_("model"), TypeError, "module must be"),
    (lambda: I.StackConfig(kind="mid"), ValueError, "kind must be"),
    (lambda: I.StackConfig(d=10, heads=4), ValueError, "divisible"),
    (lambda: I.second_moment_profile(activation="swish"), ValueError, "activation must be"),
    (lambda: I.linear_warmup(-1, 10, 1e-3), ValueError, "step must be"),
    (lambda: I.first_step_update(torch.ones(2), "rmsprop"), ValueError, "optimizer must be"),
    (lambda: I.first_step_update(torch.tensor([1.0, float("nan")])), ValueError, "grad"),
    (lambda: I.smooth(np.ones(5), 25), ValueError, "window must be at most"),
    (lambda: I.mask_tokens(torch.ones(2, 2, dtype=torch.long), 5, 1.5), ValueError, "p must be"),
    (lambda: I.WarmupRun(lr=-1.0), ValueError, "lr must be"),
    (lambda: I.train_warmup_grid([I.WarmupRun()], cfg={"d": 8}), TypeError, "cfg must be"),
    (lambda: I.make_markov_corpus(V=3, successors=4), ValueError, "successors must be"),
    (lambda: I.bert_sublayer_ratios(torch.nn.Linear(2, 2), torch.ones(1, 2, dtype=torch.long)), TypeError, "BertModel"),
    (lambda: I.probe_stack(I.StackConfig(d=8, L=1, heads=2, ff=8), B=0), ValueError, "B must be"),
    (lambda: I.record_stack(I.ResidualStack(I.StackConfig(d=8, L=1, heads=2, ff=8)), torch.ones(2, 8)),
     ValueError, "x0 must have 3"),
])
def test_bad_inputs_raise_with_a_message(call, exc, words):
    with pytest.raises(exc, match=words):
        call()
