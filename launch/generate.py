"""Ask a trained Penguin-VL about images or a video: greedy decoding with a KV cache.

  python -m launch.generate --workdir=W [--step=N] --image=cat.jpg --prompt="What is this?"
  python -m launch.generate --hf_dir=penguin_vl_hf --video=clip.mp4 --prompt="What happens?"
  python -m launch.generate --workdir=W --prompts=questions.jsonl [--out=answers.jsonl]

The model comes from a training workdir (a checkpoint: the latest or --step) or an HF
folder (a `workdir-to-hf` export or the release's layout), with the tokenizer and image
settings it was trained with. Prompts are processed as in training (the release's chat
format, image resizing, TRA for video), then the generation prompt (an open assistant
turn with the empty think block). Decoding is greedy and stops at `<|im_end|>` or after
--max_new_tokens. One prompt streams its answer as it is produced; a --prompts file
(the release's JSONL format, or {"prompt", "image"} lines) runs in left-padded batches
and prints each answer. Parameters are split over the local devices by the training's
sharding rules (--tensor / --fsdp), in --dtype. The last lines give prefill and decode
tokens/s (compilation timed apart).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import jax

from data_pipelines import prompts
from data_pipelines.errors import BadSample
from penguin_jax import inference
from penguin_jax.train import runtime


def say(msg: str):
  """A progress / result line on stderr (stdout holds only the answers)."""
  print(msg, file=sys.stderr, flush=True)


def add_model_flags(p: argparse.ArgumentParser):
  """The flags that pick a model (launch.eval has the same ones)."""
  p.add_argument("--workdir", help="a training workdir (its latest checkpoint, or --step)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir")
  p.add_argument("--hf_dir", help="an HF folder: a workdir-to-hf export or the release's layout")
  p.add_argument("--dtype", default=None,
                 help="parameter dtype, e.g. bfloat16 (default: as stored; float32 for --hf_dir)")
  p.add_argument("--tensor", type=int, default=1, help="devices for tensor parallelism")
  p.add_argument("--fsdp", type=int, default=1, help="devices the weights are split over (ZeRO-3)")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")


def collect_prompts(args) -> list[tuple[dict, str]]:
  """-> [(prompt sample, folder its media paths are relative to)]."""
  if args.prompts:
    if args.image or args.video or args.prompt:
      raise ValueError("--prompts is a file of prompts with their media: give it without "
                       "--prompt / --image / --video")
    base = args.data_folder or os.path.dirname(os.path.abspath(args.prompts))
    return [(s, base) for s in prompts.read_jsonl(args.prompts)]
  if args.prompt is None:
    raise ValueError("give --prompt=TEXT (with --image / --video) or --prompts=FILE.jsonl")
  sample = {"id": "prompt", "prompt": args.prompt, "image": args.image or [],
            "video": [args.video] if args.video else []}
  return [(sample, args.data_folder or ".")]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.generate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_model_flags(p)
  p.add_argument("--prompt", help="the question (an <image> / <video> tag places the media; "
                                  "without one it goes first, as in the release)")
  p.add_argument("--image", action="append", help="an image file (repeatable)")
  p.add_argument("--video", help="a video file (frames sampled at the run's fps, TRA)")
  p.add_argument("--prompts", help="a JSONL file of prompts (release format or {\"prompt\", "
                                   "\"image\"} lines)")
  p.add_argument("--data_folder", default=None,
                 help="where media paths of --prompts are relative to (default: its folder)")
  p.add_argument("--out", help="write {id, prompt, answer, reference} per prompt to this JSONL")
  p.add_argument("--strict", action="store_true",
                 help="stop at the first bad prompt (default: name it, skip it, go on)")
  args = p.parse_args(argv)
  runtime.cpu_if_idle()
  for noisy in ("absl", "jax._src", "orbax"):     # e.g. orbax's missing-metadata warning
    logging.getLogger(noisy).setLevel(logging.ERROR)
  try:
    return _run(args)
  except (FileNotFoundError, ValueError, KeyError, BadSample) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2


def _run(args) -> int:
  items = collect_prompts(args)
  t = time.perf_counter()
  loaded = inference.load(args.workdir, args.hf_dir, args.step, args.dtype)
  n = sum(x.size for x in jax.tree.leaves(loaded.params))
  say(f"model: {loaded.source} ({n:,} parameters, loaded in {time.perf_counter() - t:.1f} s)")
  g = inference.Generator(loaded, args.fsdp, args.tensor, args.max_new_tokens, log=say)
  stream = len(items) == 1 and args.out is None
  out = open(args.out, "w") if args.out else None
  try:
    for batch in g.answer(items, args.batch_size, args.strict,
                          on_tokens=_Streamer(loaded.tokenizer) if stream else None):
      if stream:
        print(flush=True)
      for prompt, reference, text in batch:
        if not stream:
          print(f"[{prompt['id']}] {text}", flush=True)
        if out:
          out.write(json.dumps({"id": prompt["id"], "prompt": prompt["conversations"][-1]["value"],
                                "answer": text, "reference": reference}) + "\n")
  finally:
    if out:
      out.close()
  say(g.summary())
  if g.skipped:
    say(f"{g.skipped} of {len(items)} prompt(s) skipped (named above)")
  return 0 if g.skipped < len(items) else 2


class _Streamer:
  """Prints row 0's answer as its tokens arrive (decoding the whole answer each time, so
  multi-token characters come out whole)."""

  def __init__(self, tokenizer):
    self.tok, self.ids, self.shown = tokenizer, [], ""

  def __call__(self, step_tokens):
    t = int(step_tokens[0])
    if t < 0 or t in (self.tok.eos_id, self.tok.pad_id):
      return
    self.ids.append(t)
    text = self.tok.decode(self.ids).lstrip()
    if text.startswith(self.shown) and not text.endswith("\ufffd"):
      sys.stdout.write(text[len(self.shown):])
      sys.stdout.flush()
      self.shown = text


if __name__ == "__main__":
  sys.exit(main())
