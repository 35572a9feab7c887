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



def say(msg: str):
  """A progress / result line on stderr (stdout holds only the answers)."""
  print(msg, file=sys.stderr, flush=True)


def add_model_flags(p: argparse.ArgumentParser):
  """The flags that pick a model (shared with launch.eval)."""
  p.add_argument("--workdir", help="a training workdir (its latest checkpoint, or --step)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir")
  p.add_argument("--hf_dir", help="an HF folder: a workdir-to-hf export or the release's layout")
  p.add_argument("--dtype", default=None,
                 help="parameter dtype, e.g. bfloat16 (default: as stored; float32 for --hf_dir)")
  p.add_argument("--tensor", type=int, default=1, help="devices for tensor parallelism")
  p.add_argument("--fsdp", type=int, default=1, help="devices the weights are split over (ZeRO-3)")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")


class Generator:
  """A loaded model on a (1, fsdp, tensor) mesh of local devices: batches of prompts ->
  answers, each program compiled once per padded shape."""

  def __init__(self, loaded, fsdp: int = 1, tensor: int = 1, max_new_tokens: int = 128,
               mesh=None, params=None):
    """`mesh` and `params`: parameters already placed on a mesh (launch.eval shares the
    training program's); by default `loaded.params` are split over fsdp x tensor local
    devices."""
    import jax
    from launch.models import shard
    from penguin_jax import hf, registry
    from penguin_jax.sharding import make_mesh
    n = fsdp * tensor
    if mesh is None and n > len(jax.local_devices()):
      raise ValueError(f"--fsdp={fsdp} x --tensor={tensor} needs {n} devices, "
                       f"{len(jax.local_devices())} are local")
    self.mesh = mesh or make_mesh(1, fsdp, tensor, devices=jax.local_devices()[:n])
    self.loaded, self.max_new_tokens = loaded, max_new_tokens
    self.params = params if params is not None else shard(loaded, self.mesh)
    self.llm = registry.build_model(loaded.model.cfg.llm)
    tok = loaded.tokenizer
    self.stop_ids = sorted({tok.eos_id, tok.pad_id})
    self._compiled, self.skipped = {}, 0
    self.times = {"compile": 0.0, "prefill": 0.0, "decode": 0.0}
    self.counts = {"prompt_tokens": 0, "decode_steps": 0, "decode_tokens": 0}

  def _program(self, name, fn, *args):
    """The jitted fn lowered and compiled for these shapes (once), timed apart."""
    import jax
    key = (name, tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args)))
    if key not in self._compiled:
      t = time.perf_counter()
      self._compiled[key] = fn.lower(*args).compile()
      self.times["compile"] += time.perf_counter() - t
    return self._compiled[key]

  def generate(self, batch: dict, on_tokens=None) -> list[list[int]]:
    """A `prompts.prompt_batch` -> each row's new tokens (up to its stop token, which is
    left out). `on_tokens(step_tokens [b])` is called as each step's tokens arrive."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from penguin_jax import decoding as gen
    from penguin_jax.vlm import PenguinVL
    rep = NamedSharding(self.mesh, PartitionSpec())
    x = jax.device_put(batch, rep)
    vlm, llm, params = self.loaded.model, self.llm, self.params
    names = ("input_ids", "patches", "patch_segment_ids", "patch_positions", "merge_index",
             "merge_weight", "visual_positions")
    b, p = batch["input_ids"].shape
    steps = self.max_new_tokens

    def prefill(params, x):
      embeds, _ = vlm.apply({"params": params}, *[x[k] for k in names],
                            method=PenguinVL.embed_multimodal)
      return gen.prefill(llm, params["llm"], embeds, x["prompt_mask"], max_length=p + steps)

    prefill_c = self._program("prefill", jax.jit(prefill), params, x)
    t = time.perf_counter()
    cache, tok, lengths = prefill_c(params, x)
    first = np.asarray(tok)
    self.times["prefill"] += time.perf_counter() - t
    self.counts["prompt_tokens"] += int(batch["prompt_mask"].sum())
    decode = jax.jit(lambda p, c, t, pos: gen.decode_step(llm, p, c, t, pos), donate_argnums=1)
    step_c = self._program("decode", decode, params["llm"], cache, tok, lengths)
    out, stopped = [[] for _ in range(b)], np.zeros(b, bool)
    t = time.perf_counter()
    for i in range(steps):
      host = first if i == 0 else np.asarray(tok)
      if on_tokens is not None:
        on_tokens(np.where(stopped, -1, host))
      for r in range(b):
        if not stopped[r]:
          if host[r] in self.stop_ids:
            stopped[r] = True
          else:
            out[r].append(int(host[r]))
      if stopped.all() or i == steps - 1:
        break
      cache, tok = step_c(params["llm"], cache, tok, lengths + i)
      self.counts["decode_steps"] += 1
      self.counts["decode_tokens"] += int((~stopped).sum())
    self.times["decode"] += time.perf_counter() - t
    return out

  def answer(self, items, batch_size: int, strict: bool = False, need_reference: bool = False,
             on_tokens=None):
    """[(sample, folder its media paths are relative to)] -> yields, one batch at a time,
    [(prompt, reference or None, answer text)]. A bad sample (or, with `need_reference`,
    one without an answer to compare with) is named on one line and counted in
    `self.skipped`; `strict`: raised instead."""
    from data_pipelines import prompts
    from data_pipelines.errors import BadSample
    tok, scfg = self.loaded.tokenizer, self.loaded.sample_config
    for start in range(0, len(items), batch_size):
      feats, chunk = [], []
      for sample, base in items[start:start + batch_size]:
        try:
          prompt, reference = prompts.as_prompt(sample)
          if need_reference and reference is None:
            raise BadSample("no_assistant_turn", "no reference answer", sample.get("id"))
          feats.append(prompts.features(prompt, tok, scfg, base))
          chunk.append((prompt, reference))
        except BadSample as e:
          if strict:
            raise
          self.skipped += 1
          say(f"skip {e}")
      if feats:
        ids = self.generate(prompts.prompt_batch(feats, tok.pad_id), on_tokens)
        yield [(p, r, tok.decode(a).strip()) for (p, r), a in zip(chunk, ids)]

  def summary(self) -> str:
    t, c = self.times, self.counts
    pre = c["prompt_tokens"] / max(t["prefill"], 1e-9)
    dec = c["decode_tokens"] / max(t["decode"], 1e-9)
    return (f"prefill: {c['prompt_tokens']} prompt tokens in {t['prefill']:.2f} s "
            f"({pre:,.0f} tokens/s, vision encoder included); decode: {c['decode_steps']} "
            f"steps, {c['decode_tokens']} tokens in {t['decode']:.2f} s ({dec:,.1f} tokens/s); "
            f"compilation {t['compile']:.1f} s")


def collect_prompts(args) -> list[tuple[dict, str]]:
  """-> [(prompt sample, folder its media paths are relative to)]."""
  from data_pipelines import prompts
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
  for noisy in ("absl", "jax._src", "orbax"):     # e.g. orbax's missing-metadata warning
    logging.getLogger(noisy).setLevel(logging.ERROR)
  from data_pipelines.errors import BadSample
  try:
    return _run(args)
  except (FileNotFoundError, ValueError, KeyError, BadSample) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2


def _run(args) -> int:
  import jax
  from launch import models
  items = collect_prompts(args)
  t = time.perf_counter()
  loaded = models.load(args.workdir, args.hf_dir, args.step, args.dtype)
  n = sum(x.size for x in jax.tree.leaves(loaded.params))
  say(f"model: {loaded.source} ({n:,} parameters, loaded in {time.perf_counter() - t:.1f} s)")
  g = Generator(loaded, args.fsdp, args.tensor, args.max_new_tokens)
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
