"""Conversation formatting and labels (docs/design.md §2.3), as the release's processor does it.

Input: one sample of the release's JSONL, `{"id", "image": [...], "video": [...],
"conversations": [{"from": "human"|"gpt"|"system", "value": "... <image> ..."}]}`, and the
number of LLM tokens of each visual item (known once images are resized / TRA has run).

* Messages: `<|im_start|>{role}\\n{content}<|im_end|>\\n`, each tokenised on its own.
* A user turn is split at its `<image>` (or, for video samples, `<video>`) tags; text chunks
  are stripped. An image becomes its tokens + `\\n`; a video becomes, per frame,
  `Time {t:.1f}s:` + the frame's tokens, frames joined by `,`, `\\n` after the last.
* A non-thinking assistant reply (no `<think>`) is prefixed with `<think>\\n\\n</think>\\n\\n`.
* Labels (-100 = ignore): only assistant turns; their header (and the think scaffold of
  non-thinking replies) masked, content and `<|im_end|>` trained, trailing `\\n` masked;
  image tokens and the token after each masked; `<think>` and a `\\n` token right after it
  masked.
* Like the release: leading non-user turns are dropped, and a sample with images (or a
  video) but no tag gets one tag at the start of its first turn.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from data_pipelines.errors import BadSample
from data_pipelines.tokenizer import IMAGE_TOKEN, Tokenizer

IGNORE_INDEX = -100
VIDEO_TAG = "<video>"
THINK_SCAFFOLD = "<think>\n\n</think>\n\n"
# The same format as a Jinja chat template, for exported tokenizers
# (`tokenizer.apply_chat_template`): `<|im_start|>{role}\n{content}<|im_end|>\n` per
# message; list content as the release's template writes it (an image item is `<image>\n`,
# to be expanded to the image's tokens by the processor); the generation prompt opens an
# assistant turn with the empty think block unless `enable_thinking` (Qwen3's name) or
# `add_think_prompt` (the release's) is true.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if not ((enable_thinking is defined and enable_thinking) or "
    "(add_think_prompt is defined and add_think_prompt)) -%}"
    "{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}{%- endif -%}")
# `from` -> role (docs/design.md §2.3). A deliberate difference from the release, which maps every
# `from` other than "human" to `assistant` (a system prompt is then trained on, with the
# think scaffold): here "system" stays an untrained `system` turn, as the Qwen3 template
# means it; "user" is a user. Any other `from` is a BadSample ("unknown_role").
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}


@dataclasses.dataclass(frozen=True)
class Visual:
  """LLM tokens of one visual item: an image (one frame, no timestamp) or a video
  (one entry per frame, with timestamps in seconds)."""
  tokens_per_frame: tuple
  timestamps: Optional[tuple] = None

  @property
  def is_video(self) -> bool:
    return self.timestamps is not None


def _placeholder(v: Visual) -> str:
  if not v.is_video:
    return IMAGE_TOKEN * v.tokens_per_frame[0] + "\n"
  frames = [f"Time {t:.1f}s:" + IMAGE_TOKEN * n for t, n in zip(v.timestamps, v.tokens_per_frame)]
  return ",".join(frames) + "\n"


def normalize_conversation(sample: dict, prompt_only: bool = False) -> list[tuple[str, str]]:
  """Validated (role, text) turns of a JSONL sample, leading non-user turns dropped.
  `prompt_only`: a prompt for generation, which must end with a user turn."""
  sid = sample.get("id")
  conv = sample.get("conversations")
  if not isinstance(conv, list) or not conv:
    raise BadSample("empty_conversation", sample_id=sid)
  turns = []
  for t in conv:
    if not isinstance(t, dict) or not isinstance(t.get("value"), str) or "from" not in t:
      raise BadSample("malformed_conversation", sample_id=sid, detail="each turn needs 'from' and a string 'value'")
    if t["from"] not in ROLES:
      raise BadSample("unknown_role", sample_id=sid, detail=repr(t["from"]))
    turns.append((ROLES[t["from"]], t["value"]))
  while turns and turns[0][0] == "assistant":
    turns.pop(0)
  if prompt_only:
    if not turns or turns[-1][0] != "user":
      raise BadSample("malformed_conversation", sample_id=sid,
                      detail="a prompt must end with a user turn")
  elif not any(r == "assistant" for r, _ in turns):
    raise BadSample("no_assistant_turn", sample_id=sid)
  return turns


def split_answer(sample: dict) -> tuple[dict, str]:
  """A JSONL sample -> (the prompt: its turns before the last assistant turn, the
  reference answer: that turn's text), for evaluating generated answers."""
  turns = sample.get("conversations") or []
  last = max((i for i, t in enumerate(turns)
              if isinstance(t, dict) and ROLES.get(t.get("from")) == "assistant"), default=None)
  if last is None:
    raise BadSample("no_assistant_turn", sample_id=sample.get("id"))
  return {**sample, "conversations": turns[:last]}, turns[last]["value"]


def format_sample(tokenizer: Tokenizer, sample: dict, visuals: Sequence[Visual],
                  prompt_only: bool = False):
  """-> (input_ids int32 [n], labels int32 [n]); raises BadSample. `prompt_only`: the
  sample is a prompt (it ends with a user turn), followed by the generation prompt, an
  open assistant turn with the empty think block (`CHAT_TEMPLATE`'s
  add_generation_prompt); its labels are all IGNORE_INDEX."""
  sid = sample.get("id")
  turns = normalize_conversation(sample, prompt_only)
  video = any(v.is_video for v in visuals)
  tag = VIDEO_TAG if video else IMAGE_TOKEN
  n_tags = sum(text.count(tag) for role, text in turns if role == "user")
  if visuals and n_tags == 0:  # the release adds the missing tag
    first = next(i for i, (r, _) in enumerate(turns) if r == "user")
    turns[first] = ("user", tag + "\n" + turns[first][1])
    n_tags = 1
  if n_tags != len(visuals):
    raise BadSample("image_tag_mismatch", sample_id=sid,
                    detail=f"{n_tags} {tag} tags, {len(visuals)} {'videos' if video else 'images'}")
  if any(tag in text for role, text in turns if role != "user"):
    raise BadSample("image_tag_mismatch", sample_id=sid, detail=f"{tag} outside a user turn")

  enc = tokenizer.encode
  image_id = tokenizer.token_to_id(IMAGE_TOKEN)
  think_id = tokenizer.token_to_id("<think>")
  newline_id = tokenizer.token_to_id("\n")
  header_len = {r: len(enc(f"<|im_start|>{r}\n")) for r in ("assistant",)}
  scaffold_len = len(enc(f"<|im_start|>assistant\n{THINK_SCAFFOLD}"))
  ids_all, labels_all, vi = [], [], 0
  for role, text in turns:
    if role == "user":
      chunks = text.split(tag)
      parts = []
      for i, chunk in enumerate(chunks):
        if i > 0:
          parts.append(_placeholder(visuals[vi]))
          vi += 1
        parts.append(chunk.strip())
      content = "".join(parts)
    else:
      content = text
    prompt_len = None
    if role == "assistant":
      if "<think>" not in content:
        content = THINK_SCAFFOLD + content
        prompt_len = scaffold_len
      else:
        prompt_len = header_len["assistant"]
    ids = np.asarray(enc(f"<|im_start|>{role}\n{content}<|im_end|>\n"), np.int32)
    labels = np.full_like(ids, IGNORE_INDEX)
    if role == "assistant":
      labels[prompt_len:-1] = ids[prompt_len:-1]
      vis = np.nonzero(ids == image_id)[0]
      labels[vis] = IGNORE_INDEX
      labels[np.minimum(vis + 1, len(ids) - 1)] = IGNORE_INDEX
      think = np.nonzero(labels == think_id)[0]
      labels[think] = IGNORE_INDEX
      after = think + 1
      after = after[(after < len(ids))]
      after = after[ids[after] == newline_id]
      labels[after] = IGNORE_INDEX
    ids_all.append(ids)
    labels_all.append(labels)
  if prompt_only:
    ids = np.asarray(enc(f"<|im_start|>assistant\n{THINK_SCAFFOLD}"), np.int32)
    ids_all.append(ids)
    labels_all.append(np.full_like(ids, IGNORE_INDEX))
  return np.concatenate(ids_all), np.concatenate(labels_all)
