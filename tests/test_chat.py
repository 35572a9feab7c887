"""Chat formatting and labels (docs/design.md §2.3), written out by hand from the spec."""
import pytest

from data_pipelines.chat import IGNORE_INDEX, Visual, format_sample
from data_pipelines.errors import BadSample
from data_pipelines.tokenizer import Qwen3Tokenizer


@pytest.fixture(scope="module")
def tok():
  return Qwen3Tokenizer.from_vocab_file()


def _trained_text(tok, ids, labels):
  return tok.decode(ids[labels != IGNORE_INDEX])


def test_image_sample_text_and_labels(tok):
  sample = {"id": "s1", "image": ["a.jpg"], "conversations": [
      {"from": "human", "value": "<image>\nWhat is shown?"},
      {"from": "gpt", "value": "A penguin."},
      {"from": "human", "value": "Where?"},
      {"from": "gpt", "value": "On ice."}]}
  ids, labels = format_sample(tok, sample, [Visual((3,))])
  expect = ("<|im_start|>user\n<image><image><image>\nWhat is shown?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nA penguin.<|im_end|>\n"
            "<|im_start|>user\nWhere?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nOn ice.<|im_end|>\n")
  assert tok.decode(ids) == expect
  # each message is tokenised on its own (as the release does)
  messages = expect.replace("<|im_end|>\n", "<|im_end|>\n\0").split("\0")[:-1]
  assert ids.tolist() == sum((tok.encode(m) for m in messages), [])
  # trained: exactly the replies and their <|im_end|>, nothing else
  assert _trained_text(tok, ids, labels) == "A penguin.<|im_end|>On ice.<|im_end|>"
  assert (ids == 151669).sum() == 3 and (labels[ids == 151669] == IGNORE_INDEX).all()


def test_video_placeholders_with_timestamps(tok):
  sample = {"id": "v1", "video": ["clip.mp4"], "conversations": [
      {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It jumps."}]}
  ids, labels = format_sample(tok, sample, [Visual((2, 1, 2), (0.0, 1.0, 2.5))])
  assert tok.decode(ids).startswith(
      "<|im_start|>user\nTime 0.0s:<image><image>,Time 1.0s:<image>,Time 2.5s:<image><image>\n"
      "What happens?<|im_end|>\n")
  assert _trained_text(tok, ids, labels) == "It jumps.<|im_end|>"


def test_thinking_reply_masks_think_and_newline(tok):
  sample = {"id": "t", "conversations": [
      {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "<think>\nadd</think>\n\n4"}]}
  ids, labels = format_sample(tok, sample, [])
  assert "<think>\n\n</think>" not in tok.decode(ids)
  # `<think>` and the "\n" token after it are masked; the rest of the reply is trained
  assert _trained_text(tok, ids, labels) == "add</think>\n\n4<|im_end|>"


def test_missing_tag_is_added_and_mismatch_is_an_error(tok):
  s = {"id": "m", "image": ["a.jpg"], "conversations": [
      {"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Ok."}]}
  ids, _ = format_sample(tok, s, [Visual((2,))])
  assert tok.decode(ids).startswith("<|im_start|>user\n<image><image>\nDescribe.")
  s2 = {"id": "m2", "image": ["a.jpg"], "conversations": [
      {"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "Ok."}]}
  with pytest.raises(BadSample) as e:
    format_sample(tok, s2, [Visual((2,))])
  assert e.value.reason == "image_tag_mismatch" and "'m2'" in str(e.value)


@pytest.mark.parametrize("conv,reason", [
    ([], "empty_conversation"),
    ([{"from": "human"}], "malformed_conversation"),
    ([{"from": "robot", "value": "x"}], "unknown_role"),
    ([{"from": "human", "value": "x"}], "no_assistant_turn"),
])
def test_bad_conversations_are_named(tok, conv, reason):
  with pytest.raises(BadSample) as e:
    format_sample(tok, {"id": "b", "conversations": conv}, [])
  assert e.value.reason == reason


def test_roles_system_stays_an_untrained_system_turn_and_user_is_a_user(tok):
  """docs/design.md §2.3: a documented difference from the release (which trains "system" as an
  assistant turn): "system" is a `system` turn, never trained; "user" maps to `user`."""
  sample = {"id": "r", "conversations": [
      {"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi?"},
      {"from": "assistant", "value": "Hello."}]}
  ids, labels = format_sample(tok, sample, [])
  assert tok.decode(ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                             "<|im_start|>user\nHi?<|im_end|>\n"
                             "<|im_start|>assistant\n<think>\n\n</think>\n\nHello.<|im_end|>\n")
  assert _trained_text(tok, ids, labels) == "Hello.<|im_end|>"
  with pytest.raises(BadSample) as e:
    format_sample(tok, {"id": "x", "conversations": [{"from": "bot", "value": "a"}]}, [])
  assert e.value.reason == "unknown_role"
