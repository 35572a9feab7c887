"""A trained Penguin-VL answering prompts: the model with its tokenizer and image settings,
and greedy decoding of batches of prompts.

`load(workdir=... | hf_dir=...)`: from a training workdir (one checkpoint's parameters,
never the optimizer state, and the run's own config: tokenizer, normalisation, token
budget) or from an HF folder (a `workdir-to-hf` export, or a checkpoint in the release's
layout: `preprocessor_config.json` and config.json give the image settings).

`Generator(loaded)`: the parameters on a (1, fsdp, tensor) mesh of local devices; prompts
(the release's JSONL samples) are processed as in training (`data_pipelines.prompts`: the
chat format, image resizing, TRA for video), left-padded into batches, prefilled and
decoded greedily with a KV cache (`penguin_jax.decoding`), each program compiled once per
padded shape. `launch.generate`, `launch.eval` and `launch.convert workdir-to-hf` use it.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from data_pipelines import prompts
from data_pipelines.errors import BadSample
from data_pipelines.records import JsonlSource
from data_pipelines.sample import SampleConfig
from data_pipelines.tokenizer import from_model_dir
from penguin_jax import decoding, evaluation, hf, preprocessor, registry, sharding
from penguin_jax.train import checkpoint as ckpt, data as data_lib, evaluate, init as init_lib
from penguin_jax.train.program import model_config, put_global
from penguin_jax.vlm import PenguinVL


@dataclasses.dataclass
class Loaded:
  model: Any                  # PenguinVL
  params: dict
  tokenizer: Any
  sample_config: SampleConfig
  source: str                 # for log lines: "WORKDIR step N" / "HF_DIR"
  run_config: Any = None      # the run's ConfigDict (workdir only)
  step: Optional[int] = None  # the checkpoint's step (workdir only)
  workdir: Optional[str] = None


def from_workdir(workdir: str, step: Optional[int] = None, dtype=None,
                 keep_distill_head: bool = False) -> Loaded:
  """A run's checkpoint (default: the latest). `dtype`: the parameters' dtype (cast while
  reading; default as stored). The stage-1 distill head is dropped unless asked for
  (inference does not use it)."""
  step, run, params = ckpt.read_run(workdir, step, dtype=dtype)
  cfg = ConfigDict(run)
  root = workdir.rstrip("/")
  if os.path.basename(root) == "checkpoints":
    root = os.path.dirname(root)
  tok = data_lib.tokenizer(cfg, root)
  vocab = params["llm"]["embed_tokens"]["embedding"].shape[0]
  vcfg, _ = model_config(cfg, vocab_size=vocab, image_token_id=tok.image_token_id)
  if "vision_distill_layer" in params and not keep_distill_head:
    params = {k: v for k, v in params.items() if k != "vision_distill_layer"}
    vcfg = dataclasses.replace(vcfg, teacher_hidden_size=None)
  scfg = data_lib.prompt_sample_config(cfg)
  return Loaded(registry.build_model(vcfg), params, tok, scfg, f"{root} step {step}", cfg,
                step, root)


def from_hf_dir(path: str, dtype=None) -> Loaded:
  """An HF folder (ours or the release's layout; see `penguin_jax.from_pretrained`)."""
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path}: no config.json there (not a model folder)")
  model, params = hf.from_pretrained(path, dtype=jnp.dtype(dtype or "float32"))
  if not isinstance(model, PenguinVL):
    raise ValueError(f"{path}: a {type(model).__name__}, not a Penguin-VL model")
  with open(os.path.join(path, "config.json")) as f:
    d = json.load(f)
  scfg = SampleConfig(max_frames=int(d.get("max_frames", 180)))
  norm = preprocessor.read(path)
  if norm is not None:
    with open(os.path.join(path, preprocessor.FILE)) as f:
      pc = json.load(f)
    scfg = dataclasses.replace(scfg, image_mean=norm[0], image_std=norm[1],
                               min_tokens=int(pc.get("min_tokens", scfg.min_tokens)),
                               max_tokens=int(pc.get("max_tokens", scfg.max_tokens)))
  return Loaded(model, params, from_model_dir(path), scfg, path)


def load(workdir: Optional[str] = None, hf_dir: Optional[str] = None,
         step: Optional[int] = None, dtype=None) -> Loaded:
  if (workdir is None) == (hf_dir is None):
    raise ValueError("give one of --workdir or --hf_dir")
  if hf_dir is not None:
    if step is not None:
      raise ValueError("--step goes with --workdir (an HF folder holds one model)")
    return from_hf_dir(hf_dir, dtype)
  return from_workdir(workdir, step, dtype)


def shard(loaded: Loaded, mesh, rules=None) -> dict:
  """The parameters placed on `mesh` by the logical-axis rules (tensor / fsdp split of
  weights, as in training)."""
  boxed = registry.abstract_params(loaded.model, boxed=True)
  shardings = sharding.params_shardings(boxed, mesh, rules or sharding.LOGICAL_RULES)
  return jax.device_put(loaded.params, shardings)


class Generator:
  """A loaded model on a (1, fsdp, tensor) mesh of local devices: batches of prompts ->
  answers, each program compiled once per padded shape."""

  def __init__(self, loaded: Loaded, fsdp: int = 1, tensor: int = 1, max_new_tokens: int = 128,
               mesh=None, params=None, log=print):
    """`mesh` and `params`: parameters already placed on a mesh (launch.eval shares the
    training program's); by default `loaded.params` are split over fsdp x tensor local
    devices. `log`: where a skipped prompt's line goes."""
    n = fsdp * tensor
    if mesh is None and n > len(jax.local_devices()):
      raise ValueError(f"--fsdp={fsdp} x --tensor={tensor} needs {n} devices, "
                       f"{len(jax.local_devices())} are local")
    self.mesh = mesh or sharding.make_mesh(1, fsdp, tensor, devices=jax.local_devices()[:n])
    self.loaded, self.max_new_tokens, self.log = loaded, max_new_tokens, log
    self.params = params if params is not None else shard(loaded, self.mesh)
    self.llm = registry.build_model(loaded.model.cfg.llm)
    tok = loaded.tokenizer
    self.stop_ids = sorted({tok.eos_id, tok.pad_id})
    self._compiled, self.skipped = {}, 0
    self.times = {"compile": 0.0, "prefill": 0.0, "decode": 0.0}
    self.counts = {"prompt_tokens": 0, "decode_steps": 0, "decode_tokens": 0}

  def _program(self, name, fn, *args):
    """The jitted fn lowered and compiled for these shapes (once), timed apart."""
    key = (name, tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args)))
    if key not in self._compiled:
      t = time.perf_counter()
      self._compiled[key] = fn.lower(*args).compile()
      self.times["compile"] += time.perf_counter() - t
    return self._compiled[key]

  def generate(self, batch: dict, on_tokens=None, max_new_tokens: Optional[int] = None
               ) -> list[list[int]]:
    """A `prompts.prompt_batch` -> each row's new tokens (up to its stop token, which is
    left out; at most `max_new_tokens`, default the generator's). `on_tokens(step_tokens
    [b])` is called as each step's tokens arrive. Multi-process (training's mesh): every
    process passes the same batch and gets the same tokens."""
    rep = NamedSharding(self.mesh, PartitionSpec())
    x = put_global(batch, jax.tree.map(lambda _: rep, batch))
    vlm, llm, params = self.loaded.model, self.llm, self.params
    names = ("input_ids", "patches", "patch_segment_ids", "patch_positions", "merge_index",
             "merge_weight", "visual_positions")
    b, p = batch["input_ids"].shape
    steps = max_new_tokens or self.max_new_tokens

    def prefill(params, x):
      embeds, _ = vlm.apply({"params": params}, *[x[k] for k in names],
                            method=PenguinVL.embed_multimodal)
      return decoding.prefill(llm, params["llm"], embeds, x["prompt_mask"], max_length=p + steps)

    prefill_c = self._program("prefill", jax.jit(prefill), params, x)
    t = time.perf_counter()
    cache, tok, lengths = prefill_c(params, x)
    first = _host(tok)
    self.times["prefill"] += time.perf_counter() - t
    self.counts["prompt_tokens"] += int(batch["prompt_mask"].sum())
    decode = jax.jit(lambda p, c, t, pos: decoding.decode_step(llm, p, c, t, pos),
                     donate_argnums=1)
    step_c = self._program("decode", decode, params["llm"], cache, tok, lengths)
    out, stopped = [[] for _ in range(b)], np.zeros(b, bool)
    t = time.perf_counter()
    for i in range(steps):
      host = first if i == 0 else _host(tok)
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

  def answer_each(self, makers, batch_size: int, strict: bool = False, on_tokens=None,
                  max_new_tokens: Optional[int] = None):
    """`makers`: callables, each -> (key, a prompt's per-sample arrays: `prompts.features`)
    or raising BadSample -> yields, one batch at a time, [(key, answer text)]. A BadSample
    is named on one line and counted in `self.skipped` (`strict`: raised)."""
    tok, it = self.loaded.tokenizer, iter(makers)
    while chunk := list(itertools.islice(it, batch_size)):
      feats, keys = [], []
      for make in chunk:
        try:
          key, f = make()
        except BadSample as e:
          if strict:
            raise
          self.skipped += 1
          self.log(f"skip {e}")
          continue
        keys.append(key)
        feats.append(f)
      if feats:
        ids = self.generate(prompts.prompt_batch(feats, tok.pad_id), on_tokens, max_new_tokens)
        yield [(k, tok.decode(a).strip()) for k, a in zip(keys, ids)]

  def answer(self, items, batch_size: int, strict: bool = False, need_reference: bool = False,
             on_tokens=None):
    """[(sample, folder its media paths are relative to)] -> yields, one batch at a time,
    [(prompt, reference or None, answer text)]. A bad sample (or, with `need_reference`,
    one without an answer to compare with) is named on one line and counted in
    `self.skipped`; `strict`: raised instead."""
    tok, scfg = self.loaded.tokenizer, self.loaded.sample_config

    def maker(sample, base):
      def make():
        prompt, reference = prompts.as_prompt(sample)
        if need_reference and reference is None:
          raise BadSample("no_assistant_turn", "no reference answer", sample.get("id"))
        return (prompt, reference), prompts.features(prompt, tok, scfg, base)
      return make
    for batch in self.answer_each((maker(s, b) for s, b in items), batch_size, strict,
                                  on_tokens):
      yield [(p, r, text) for (p, r), text in batch]

  def summary(self) -> str:
    t, c = self.times, self.counts
    pre = c["prompt_tokens"] / max(t["prefill"], 1e-9)
    dec = c["decode_tokens"] / max(t["decode"], 1e-9)
    return (f"prefill: {c['prompt_tokens']} prompt tokens in {t['prefill']:.2f} s "
            f"({pre:,.0f} tokens/s, vision encoder included); decode: {c['decode_steps']} "
            f"steps, {c['decode_tokens']} tokens in {t['decode']:.2f} s ({dec:,.1f} tokens/s); "
            f"compilation {t['compile']:.1f} s")


def _host(x) -> np.ndarray:
  """A replicated jax.Array's value on this host (one of its local copies when it spans
  processes: every copy is the same)."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def score_answers(generator: Generator, items, batch_size: int, strict: bool = False,
                  log=print) -> tuple[dict, list]:
  """Greedy answers to every [(sample, media folder)]'s prompt, scored against its
  reference (its last assistant turn) -> (scores, one record per sample)."""
  records = []
  for batch in generator.answer(items, batch_size, strict, need_reference=True):
    records += [{"id": p.get("id"), "prompt": p["conversations"][-1]["value"], "reference": ref,
                 "answer": text, "exact_match": evaluation.exact_match(text, ref),
                 "relaxed_match": evaluation.relaxed_match(text, ref)} for p, ref, text in batch]
    log(f"... {len(records)} of {len(items)} answered")
  scores = evaluation.score([r["answer"] for r in records], [r["reference"] for r in records])
  scores["skipped"] = generator.skipped
  log(f"answers: exact match {scores['exact_match']:.4f}, relaxed accuracy "
      f"{scores['relaxed_accuracy']:.4f} over {scores['count']} samples; {generator.summary()}")
  return scores, records


def evaluate_run(workdir: str, data: str, *, step: Optional[int] = None,
                 data_folder: Optional[str] = None, out: Optional[str] = None,
                 max_new_tokens: int = 64, batch_size: int = 8, fsdp: int = 1, tensor: int = 1,
                 skip_loss: bool = False, skip_answers: bool = False, strict: bool = False,
                 log=print) -> dict:
  """`launch.eval`: a run's held-out loss and per-token accuracy on a JSONL file (read as
  it is, `records.JsonlSource`, with the run's eval step: `evaluate.held_out_loss`), then
  its greedy answers scored (`score_answers`; one record per sample into `out`). -> every
  figure. Bad input raises (FileNotFoundError, ValueError, BadSample)."""
  if not os.path.isfile(data):
    raise FileNotFoundError(f"--data={data}: no such file")
  base = data_folder or os.path.dirname(os.path.abspath(data))
  run = from_workdir(workdir, step, keep_distill_head=True)
  cfg = run.run_config
  log(f"model: {run.source} ({cfg.stage}:{cfg.variant})")
  figures = {"workdir": os.path.abspath(run.workdir), "step": run.step, "data": data}
  mesh = params = None
  if not skip_loss:
    program = evaluate.eval_program(cfg, run.tokenizer.image_token_id, fsdp, tensor)
    mesh, params = program.mesh, put_global(run.params, program.state_shardings.params)
    log(f"mesh {dict(mesh.shape)}; global batch {cfg.data.global_batch} rows of "
        f"{cfg.data.seq_len} tokens")
    teacher = init_lib.load_teacher(cfg, program, run.workdir, jax.random.PRNGKey(cfg.seed))
    source = JsonlSource(data, base, allow_outside=True)
    figures["held_out"], skipped = evaluate.held_out_loss(
        program, params, teacher, source, run.tokenizer, program.cfg, run.step, log_fn=log)
    if strict and skipped:
      raise ValueError(f"--strict: {sum(skipped.values())} sample(s) cannot be used (named above)")
    figures["samples"], figures["skipped"] = len(source) - sum(skipped.values()), skipped
  if not skip_answers:
    g = Generator(run, max_new_tokens=max_new_tokens, mesh=mesh, params=params, log=log)
    items = [(s, base) for s in prompts.read_jsonl(data)]
    figures["answers"], records = score_answers(g, items, batch_size, strict, log=log)
    if out:
      with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
  return figures
