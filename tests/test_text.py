"""lib.text: the Chinese tokenizer is character level with the documented special ids; the MiniLM encoder
reproduces sentence-transformers' embeddings (mean pooling + normalisation) on real sentences."""
import torch

from lib import data, text


def test_chinese_tokenizer_is_character_level_with_offsets():
    tok = text.chinese_tokenizer()
    assert len(tok) == 21128
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id] == [0, 100, 101, 102]
    question = data.load_kgclue("dev")[0].question
    enc = tok(question, return_offsets_mapping=True, add_special_tokens=False)
    chinese = [i for i, ch in enumerate(question) if "\u4e00" <= ch <= "\u9fff"]
    spans = [tuple(o) for o in enc["offset_mapping"]]
    assert all((i, i + 1) in spans for i in chinese)
    assert tok.unk_token_id not in enc["input_ids"]


def test_minilm_encoder_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    sentences = [p.sentence1 for p in data.load_stsb_en("test")[:8]]
    reference = SentenceTransformer(str(text.minilm_dir()), device="cpu").encode(sentences, convert_to_tensor=True)
    tok, model = text.load_minilm_tokenizer(), text.load_minilm_encoder()
    batch = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    ours = torch.nn.functional.normalize(mean, dim=-1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
