"""Evaluate a training run on held-out data in the release's JSONL format.

  python -m launch.eval --workdir=W [--step=N] --data=val.jsonl [--out=answers.jsonl]

Two kinds of figures:
* **held-out loss** (teacher-forced), as the run's own eval step computes it in training:
  the data packed as in training (the run's sequence length, patch budget and batch), the
  stage's losses (the reconstruction losses of stage 1 against its teacher), and the
  **per-token accuracy** over label tokens (the label is the arg max of the logits). One
  pass over the file; losses are the mean over its batches, token counts are sums.
* **generated answers**: for every sample, the turns before its last assistant turn are
  the prompt, that turn is the reference; greedy decoding (`launch.generate`'s), then
  exact match after normalisation and ChartQA's relaxed accuracy (numbers within 5%,
  `penguin_jax/evaluation.py`). `--out` writes one JSON line per sample (id, prompt,
  reference, answer, exact_match, relaxed_match).
A sample that cannot be used (missing or corrupt media, tag mismatch, too long) is named
on one line, counted and skipped (`--strict`: stop at it). The last line of stdout is
every figure as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from launch.generate import Generator, say


def held_out_loss(run, paths, mesh_flags) -> tuple[dict, object, object]:
  """-> (figures, the program, its placed params): the run's eval step over one pass of
  the ArrayRecord shards `paths`."""
  import jax
  from data_pipelines.feed import DataFeed
  from launch.train import _load_teacher
  from penguin_jax.sharding import make_mesh
  from penguin_jax.train import program as program_lib
  from penguin_jax.train.metrics import eval_summary
  from penguin_jax.train.program import put_global
  cfg = run.run_config
  cfg.data.workers = 0
  fsdp, tensor = mesh_flags
  # data parallel over as many local devices as divide the run's batch
  data = max(d for d in range(1, len(jax.devices()) // (fsdp * tensor) + 1)
             if cfg.data.global_batch % (d * fsdp) == 0)
  cfg.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  mesh = make_mesh(data, fsdp, tensor, devices=jax.devices()[:data * fsdp * tensor])
  program = program_lib.build(cfg, mesh, image_token_id=run.tokenizer.image_token_id)
  params = put_global(run.params, program.state_shardings.params)
  say(f"mesh data={data} fsdp={fsdp} tensor={tensor}; global batch {cfg.data.global_batch} "
      f"rows of {cfg.data.seq_len} tokens")
  teacher = _load_teacher(cfg, program, run.workdir, jax.random.PRNGKey(cfg.seed))
  feed = DataFeed(paths, run.tokenizer, run.sample_config, cfg, program.abstract_batch,
                  one_pass=True)
  total, batches, t = None, 0, time.perf_counter()
  with program.context():
    while True:
      try:
        batch, _ = feed.next()
      except StopIteration:
        break
      m = program.eval_step(params, batch, teacher, run.step)
      total = m if total is None else jax.tree.map(lambda a, b: a + b, total, m)
      batches += 1
  if not batches:
    raise ValueError("no held-out batch: every sample was skipped (named above)")
  out = {**eval_summary(jax.device_get(total), batches), "batches": batches}
  say(f"held-out loss {out['loss']:.4f}, per-token accuracy {out['accuracy']:.4f} "
      f"({out['label_tokens']} label tokens, {batches} batches, {time.perf_counter() - t:.1f} s)")
  return out, program, params


def answers(run, samples, base, args, mesh=None, params=None) -> tuple[dict, list]:
  """Greedy answers to every sample's prompt, scored against its reference."""
  from penguin_jax import evaluation
  g = Generator(run, max_new_tokens=args.max_new_tokens, mesh=mesh, params=params)
  records = []
  for batch in g.answer([(s, base) for s in samples], args.batch_size, args.strict,
                        need_reference=True):
    records += [{"id": p.get("id"), "prompt": p["conversations"][-1]["value"], "reference": ref,
                 "answer": text, "exact_match": evaluation.exact_match(text, ref),
                 "relaxed_match": evaluation.relaxed_match(text, ref)} for p, ref, text in batch]
    say(f"... {len(records)} of {len(samples)} answered")
  scores = evaluation.score([r["answer"] for r in records], [r["reference"] for r in records])
  scores["skipped"] = g.skipped
  say(f"answers: exact match {scores['exact_match']:.4f}, relaxed accuracy "
      f"{scores['relaxed_accuracy']:.4f} over {scores['count']} samples; {g.summary()}")
  return scores, records


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch.eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="the training run")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--data", required=True, help="held-out samples, the release's JSONL format")
  p.add_argument("--data_folder", default=None,
                 help="where its media paths are relative to (default: the JSONL's folder)")
  p.add_argument("--out", help="one JSON line per generated answer")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")
  p.add_argument("--fsdp", type=int, default=1, help="mesh: weights split over this many devices")
  p.add_argument("--tensor", type=int, default=1, help="mesh: tensor parallelism")
  p.add_argument("--skip_loss", action="store_true", help="only the generated answers")
  p.add_argument("--skip_answers", action="store_true", help="only the held-out loss")
  p.add_argument("--strict", action="store_true", help="stop at the first bad sample")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  import logging
  for noisy in ("absl", "jax._src", "orbax", "grain"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  from data_pipelines.errors import BadSample
  try:
    figures = run(args)
  except (FileNotFoundError, ValueError, KeyError, BadSample) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  print(json.dumps(figures), flush=True)
  return 0


def run(args) -> dict:
  """Every figure of `launch.eval` for parsed `args` (see `parser`); bad input raises."""
  from data_pipelines import build as build_lib, prompts
  from launch import models
  if not os.path.isfile(args.data):
    raise FileNotFoundError(f"--data={args.data}: no such file")
  base = args.data_folder or os.path.dirname(os.path.abspath(args.data))
  run = models.from_workdir(args.workdir, args.step, keep_distill_head=True)
  say(f"model: {run.source} ({run.run_config.stage}:{run.run_config.variant})")
  figures = {"workdir": os.path.abspath(run.workdir), "step": run.step, "data": args.data}
  mesh = params = None
  if not args.skip_loss:
    with tempfile.TemporaryDirectory(prefix="penguin_eval_") as tmp:
      stats = build_lib.build(args.data, base, tmp, run.sample_config, run.tokenizer,
                              strict=args.strict, log=say, allow_outside=True)
      figures["samples"], figures["skipped"] = stats["written"], stats["reasons"]
      paths = [os.path.join(tmp, s) for s in stats["shards"]]
      loss, program, params = held_out_loss(run, paths, (args.fsdp, args.tensor))
      mesh = program.mesh
    figures["held_out"] = loss
  if not args.skip_answers:
    samples = prompts.read_jsonl(args.data)
    scores, records = answers(run, samples, base, args, mesh, params)
    figures["answers"] = scores
    if args.out:
      with open(args.out, "w") as f:
        for r in records:
          f.write(json.dumps(r) + "\n")
  return figures


if __name__ == "__main__":
  sys.exit(main())
