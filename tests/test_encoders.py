"""lib.encoders against untunable oracles: the transformers models' own outputs, MONPA's own model, and
exact offset round-trips."""
import importlib.util
import io
import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lib import encoders as enc
from lib.train import length_batches

MIXED = "2022年3月，NBA球星 LeBron 在洛杉矶（美国）得了 40 分！篮球、罚球：县城车辆…ok?"


@pytest.fixture(scope="module")
def monpa():
    return enc.load_encoder("monpa", "cpu")


@pytest.fixture(scope="module")
def minilm():
    return enc.load_encoder("minilm", "cpu")


def _batch(tokenizer, texts, max_length=64):
    out = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


@pytest.mark.parametrize("name", ["monpa", "minilm"])
def test_forward_equals_the_transformers_model(name, request):
    encoder = request.getfixturevalue(name)
    ids, mask = _batch(encoder.tokenizer, [MIXED, "短句", "a short one"])
    with torch.no_grad():
        ours = encoder(ids, mask)
        theirs = encoder.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    keep = mask.bool()
    assert torch.allclose(ours[keep], theirs.last_hidden_state[keep], atol=1e-5)
    for k in range(encoder.num_layers + 1):
        with torch.no_grad():
            h = encoder.hidden_states(ids, mask, k)
        assert torch.allclose(h[keep], theirs.hidden_states[k][keep], atol=1e-5), k


@pytest.mark.parametrize("name", ["monpa", "minilm"])
def test_frozen_bottom_plus_trainable_top_equals_the_full_model(name, request):
    encoder = request.getfixturevalue(name)
    ids, mask = _batch(encoder.tokenizer, [MIXED, "另一个句子。", "x"])
    keep = mask.bool()
    with torch.no_grad():
        full = encoder(ids, mask)
    for k in range(encoder.num_layers):
        top = encoder.top(k)
        with torch.no_grad():
            out = top(encoder.hidden_states(ids, mask, k), mask)
        assert torch.allclose(out[keep], full[keep], atol=1e-5), k
    # through the cached-feature path (float32 storage, ragged sequences, re-padded)
    sequences = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    feats = enc.compute_features(encoder, sequences, encoder.num_layers - 1, dtype=torch.float32, max_tokens=40)
    hidden, pad_mask = enc.pad_features(feats)
    with torch.no_grad():
        out = encoder.top(encoder.num_layers - 1)(hidden, pad_mask)
    assert torch.allclose(out[pad_mask.bool()], full[keep], atol=1e-5)


def test_top_is_a_copy_and_albert_shares_one_layer(monpa, minilm):
    top = monpa.top(5)
    assert len(top.layers) == 1 and top.schedule == [0, 0, 0]
    before = monpa.model.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight.clone()
    with torch.no_grad():
        top.layers[0].ffn.weight.add_(1.0)
    assert torch.equal(monpa.model.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight, before)
    assert len(minilm.top(4).layers) == 2 and minilm.top(4).schedule == [0, 1]
    assert all(p.requires_grad for p in top.parameters())


def test_monpa_hidden_states_match_monpas_own_model(monpa):
    """MONPA's packaged model (its own ALBERT implementation) gives the same hidden states."""
    with contextlib.redirect_stdout(io.StringIO()):  # monpa prints a banner on import
        import monpa as monpa_package
        from monpa.configuration_albert import AlbertConfig as MonpaConfig
        from monpa.modeling_albert import AlbertModel as MonpaAlbert
    folder = enc.monpa_dir()
    config = MonpaConfig.from_pretrained(str(folder / "albert_config" / "albert_config_mo.json"))
    config.output_hidden_states = True
    theirs = MonpaAlbert(config)
    missing, unexpected = theirs.load_state_dict(enc.monpa_state_dict(), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    theirs.eval()
    text = "蔡英文在台北市政府發表演說"
    ids = torch.tensor([monpa.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        reference = theirs(ids)[2]  # (sequence, pooled, hidden_states)
        ours = [monpa.hidden_states(ids, None, k) for k in range(monpa.num_layers + 1)]
    assert len(reference) == len(ours) == 9
    for k, (a, b) in enumerate(zip(ours, reference)):
        assert torch.allclose(a, b, atol=1e-4), k
    assert monpa_package.__version__ == "0.3.3"


def test_monpa_tokenizer_offsets_round_trip_on_mixed_text(monpa):
    tok = monpa.tokenizer
    out = tok(MIXED, return_offsets_mapping=True)
    ids, offsets = out["input_ids"], out["offset_mapping"]
    assert len(ids) == len(MIXED) + 2 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert [MIXED[a:b] for a, b in offsets[1:-1]] == list(MIXED)
    assert offsets[0] == offsets[-1] == (0, 0)
    spaces = [i for i, c in enumerate(MIXED) if c == " "]
    assert all(ids[i + 1] == tok.sp_token_id for i in spaces)
    # simplified characters missing from the traditional-leaning vocabulary are converted, not lost
    for simplified, traditional in [("篮", "籃"), ("罚", "罰"), ("县", "縣"), ("辆", "輛")]:
        assert simplified not in tok.vocab and traditional in tok.vocab
        assert tok.char_ids(simplified) == [tok.vocab[traditional]]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(MIXED + "　\t\n①Ａｂ😀")), max_size=40), st.integers(3, 50))
def test_monpa_tokenizer_one_token_per_character(text, max_length):
    tok = enc.tokenizer("monpa")
    out = tok(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    kept = min(len(text), max_length - 2)
    assert len(out["input_ids"]) == kept + 2 == len(out["offset_mapping"])
    assert [o for o in out["offset_mapping"][1:-1]] == [(i, i + 1) for i in range(kept)]
    assert all(0 <= i < tok.vocab_size for i in out["input_ids"])


def test_minilm_offsets_point_into_the_text(minilm):
    out = minilm.tokenizer("Alan Bean, born in Wheeler (Texas), flew on Apollo 12.", return_offsets_mapping=True)
    pieces = [("Alan Bean, born in Wheeler (Texas), flew on Apollo 12."[a:b]) for a, b in out["offset_mapping"]]
    assert pieces[0] == pieces[-1] == "" and "Wheeler" in "".join(pieces)


def test_coverage_counts_every_character():
    tok = enc.tokenizer("monpa")
    cov = tok.coverage(["篮球 比赛", "abc"])
    assert cov.characters == 8 and cov.direct + cov.converted + cov.unknown == 8
    assert cov.converted >= 1 and 0 < cov.mapped <= 1


def test_cached_features_are_keyed_by_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    a = enc.cached_features("monpa", [[1, 100, 200, 2]], 7)
    b = enc.cached_features("monpa", [[1, 100, 201, 2]], 7)
    again = enc.cached_features("monpa", [[1, 100, 200, 2]], 7)
    assert len(list(tmp_path.glob("features_monpa_7-*.pt"))) == 2
    assert torch.equal(a[0], again[0]) and not torch.equal(a[0], b[0]) and a[0].dtype == torch.float16


def test_mean_pool_is_exact_in_half_precision():
    hidden = torch.full((2, 512, 4), 300.0, dtype=torch.float16)
    mask = torch.ones(2, 512, dtype=torch.long)
    mask[1] = 0
    pooled = enc.mean_pool(hidden, mask)
    assert pooled.dtype == torch.float16 and torch.equal(pooled[0], torch.full((4,), 300.0, dtype=torch.float16))
    assert torch.equal(pooled[1], torch.zeros(4, dtype=torch.float16))


def test_errors_name_the_argument(monpa):
    with pytest.raises(ValueError, match="name"):
        enc.load_encoder("bert-base")
    with pytest.raises(ValueError, match="k must be"):
        monpa.top(8)
    with pytest.raises(ValueError, match="k must be"):
        monpa.hidden_states(torch.ones(1, 3, dtype=torch.long), None, 9)
    with pytest.raises(ValueError, match="input_ids must lie"):
        monpa(torch.tensor([[1, 99999, 2]]))
    with pytest.raises(ValueError, match="input_ids must lie"):
        monpa(torch.tensor([[1, -1, 2]]))
    with pytest.raises(TypeError, match="input_ids must be an integer"):
        monpa(torch.ones(1, 3))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        monpa(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        monpa(torch.ones(1, 401, dtype=torch.long))
    with pytest.raises(ValueError, match="truncation"):
        monpa.tokenizer("长" * 10, max_length=5)
    with pytest.raises(ValueError, match="sequences"):
        enc.compute_features(monpa, [], 3)
    with pytest.raises(ValueError, match=r"sequences\[1\] is empty"):
        enc.compute_features(monpa, [[1, 2], []], 3)


def test_missing_monpa_names_the_package_and_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monpa" else real(name, *a))
    with pytest.raises(ImportError, match=r"monpa.*pip install monpa==0\.3\.3"):
        enc.monpa_dir()


# ------------------------------------------------------------------------------- the length batcher
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=60), st.sampled_from([None, 4, 16]),
       st.sampled_from([None, 200, 1000]), st.sampled_from([None, 20_000]), st.booleans(), st.integers(0, 5))
def test_length_batches_partition_and_respect_every_bound(lengths, batch_size, max_tokens, max_cells, shuffle, seed):
    if batch_size is None and max_tokens is None and max_cells is None:
        batch_size = 8
    batches = length_batches(lengths, batch_size=batch_size, max_tokens=max_tokens, max_cells=max_cells,
                             shuffle=shuffle, seed=seed)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        if len(b) > 1:
            assert batch_size is None or len(b) <= batch_size
            assert max_tokens is None or len(b) * width <= max_tokens
            assert max_cells is None or len(b) * width ** 2 <= max_cells
    again = length_batches(lengths, batch_size=batch_size, max_tokens=max_tokens, max_cells=max_cells,
                           shuffle=shuffle, seed=seed)
    assert again == batches


def test_length_batches_group_similar_lengths():
    lengths = list(np.random.default_rng(0).integers(5, 100, 400))
    batches = length_batches(lengths, batch_size=16, shuffle=True, seed=1)
    padding = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert padding < 0.05 * sum(lengths)
    with pytest.raises(ValueError, match="at least one"):
        length_batches(lengths)
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, batch_size=0)


def test_scratch_encoder_ignores_padding_and_validates():
    torch.manual_seed(0)
    model = enc.ScratchCharEncoder(50, 16, (1, 2), dropout=0.0).eval()
    ids = torch.tensor([[3, 4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    other = torch.tensor([[3, 4, 5, 9, 7]])  # different tokens in the padded positions
    with torch.no_grad():
        a, b = model(ids, mask), model(other, mask)
        short = model(ids[:, :3], mask[:, :3])
    assert torch.allclose(a, b) and torch.allclose(a[:, :3], short, atol=1e-6) and a[0, 3:].abs().max() == 0
    with pytest.raises(ValueError, match="input_ids must lie"):
        model(torch.tensor([[50]]))
    with pytest.raises(ValueError, match="kernel_size"):
        enc.ScratchCharEncoder(50, 16, kernel_size=2)
