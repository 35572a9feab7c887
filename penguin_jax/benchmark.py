"""A model answering one of the paper's benchmarks: its questions (`data_pipelines/
benchmarks.py`: the released files, lmms-eval's prompts) answered by greedy decoding
(`inference.Generator`, the paper's decoding), each scored by the benchmark's own metric
(`scoring.py`), into one record per question and a summary.

  summary  {"benchmark", "metric", "score": mean over the scored questions, "n",
            "skipped": questions that could not be asked (each named on one line),
            "groups": {group: mean} where the benchmark has sub-scores (ChartQA's human
            and augmented splits, MMMU / MMBench / OCRBench categories, VideoMME's
            durations)}
  record   {"id", "prompt", "answer", "reference", "options"?, "group", "metric", "score"}:
           the line format of `launch.eval --score`, so a file can be scored again.

`launch.eval --benchmark` runs it on a workdir or HF folder; training runs it on a fixed
subset every `eval.every` steps (`train/evaluate.py`, `config.eval.benchmarks`).
"""
from __future__ import annotations

import json
from typing import Optional

from data_pipelines import benchmarks, sample as sample_lib
from data_pipelines.errors import BadSample
from penguin_jax import inference, scoring


def score_one(q: benchmarks.Question, answer: str) -> float:
  """`answer` to question `q` scored by `q.metric`."""
  if q.metric == "ocrbench_formula":          # OCRBench's handwritten formulas: case kept
    return scoring.ocrbench(answer, list(q.references), formula=True)
  refs = q.references[0] if q.metric == "multiple_choice" else list(q.references)
  return scoring.SCORERS[q.metric](answer, refs, q.options)


def ask(generator, questions: list, batch_size: int = 8, strict: bool = False,
        max_new_tokens: Optional[int] = None):
  """Greedy answers to `questions` -> yields, a batch at a time, [(question, answer)]. A
  question whose media cannot be read is named on one line and counted in
  `generator.skipped` (`strict`: raised)."""
  tok, scfg = generator.loaded.tokenizer, generator.loaded.sample_config

  def maker(q):
    def make():
      try:
        return q, sample_lib.features(benchmarks.record(q), tok, scfg, prompt_only=True)
      except BadSample as e:
        raise e.with_id(q.id) if e.sample_id is None else e
    return make
  yield from generator.answer_each((maker(q) for q in questions), batch_size, strict,
                                   max_new_tokens=max_new_tokens)


def summarize(name: str, records: list, skipped: int) -> dict:
  """Per-question records -> the summary (module docstring)."""
  n = len(records)
  groups = {}
  for r in records:
    if r["group"]:
      groups.setdefault(r["group"], []).append(r["score"])
  return {"benchmark": name, "metric": benchmarks.SPECS[name].metric,
          "score": sum(r["score"] for r in records) / n if n else 0.0, "n": n,
          "skipped": skipped,
          "groups": {g: sum(v) / len(v) for g, v in sorted(groups.items())}}


def evaluate_questions(generator, name: str, questions: list, *, batch_size: int = 8,
             strict: bool = False, max_new_tokens: Optional[int] = None, out: Optional[str] = None,
             log=print) -> tuple[dict, list]:
  """Answer and score `questions` of benchmark `name` -> (summary, records); `out`: the
  records as JSONL. `max_new_tokens`: default the benchmark's cap (`Spec`)."""
  cap = max_new_tokens or benchmarks.SPECS[name].max_new_tokens
  skipped_before, records = generator.skipped, []
  for batch in ask(generator, questions, batch_size, strict, cap):
    for q, answer in batch:
      rec = {"id": q.id, "prompt": q.prompt, "answer": answer,
             "reference": q.references[0] if q.metric == "multiple_choice"
             else list(q.references)}
      if q.options:
        rec["options"] = q.options
      records.append({**rec, "group": q.group, "metric": q.metric,
                      "score": score_one(q, answer)})
    log(f"... {name}: {len(records)} of {len(questions)} answered")
  summary = summarize(name, records, generator.skipped - skipped_before)
  if out:
    with open(out, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  return summary, records


def run(generator, name: str, data_dir: str, *, limit: Optional[int] = None,
        strict: bool = False, log=print, **kw) -> dict:
  """Benchmark `name`'s files under `data_dir` (its first `limit` questions) answered and
  scored -> the summary. Unusable questions in the files are named and counted."""
  questions, bad = benchmarks.read(name, data_dir, limit)
  for b in bad[:5]:
    log(f"skip {b}")
  if bad and strict:
    raise bad[0]
  if len(bad) > 5:
    log(f"... and {len(bad) - 5} more unusable questions")
  summary, _ = evaluate_questions(generator, name, questions, strict=strict, log=log, **kw)
  summary["skipped"] += len(bad)
  log(f"{name}: {summary['metric']} {summary['score']:.4f} over {summary['n']} questions"
      f" ({summary['skipped']} skipped); {generator.summary()}")
  return summary


def parse_config(spec: str, samples: int) -> list[tuple[str, str, int]]:
  """`config.eval.benchmarks`, "NAME:DIR[:N],..." -> [(name, dir, questions)] (N: default
  `samples`; DIR may hold ":", as gs://b/x does not here: local folders)."""
  out = []
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    name, sep, rest = part.partition(":")
    if not sep or not rest:
      raise ValueError(f"config.eval.benchmarks: {part!r} is not NAME:DIR[:N]")
    if name not in benchmarks.SPECS:
      raise ValueError(f"config.eval.benchmarks: unknown benchmark {name!r} (one of "
                       f"{', '.join(benchmarks.SPECS)})")
    head, sep, tail = rest.rpartition(":")
    n = samples
    if sep and tail.isdigit():
      rest, n = head, int(tail)
    out.append((name, rest, n))
  return out


def training_evaluator(cfg, model, tokenizer, sample_config, mesh, log=print):
  """`config.eval.benchmarks` during training -> evaluate(params) -> {NAME/METRIC: score,
  NAME/n: questions scored}: the first N questions of each benchmark (read now: a missing
  file stops the run before its first step), answered greedily with the training
  parameters where they lie (`mesh`), the programs compiled at the first call and kept.
  Reads nothing of the training state but its parameters, and no training data."""
  sets = []
  for name, folder, n in parse_config(cfg.eval.benchmarks, cfg.eval.benchmark_samples):
    questions, bad = benchmarks.read(name, folder, n)
    for b in bad[:5]:
      log(f"benchmark {name}: skip {b}")
    sets.append((name, questions))
    log(f"benchmark {name}: {len(questions)} questions from {folder} every "
        f"{cfg.eval.every} steps")
  loaded = inference.Loaded(model, None, tokenizer, sample_config, "training")
  state = {}

  def evaluate(params) -> dict:
    if "g" not in state:
      state["g"] = inference.Generator(loaded, mesh=mesh, params=params, log=log)
    g = state["g"]
    g.params, out = params, {}
    for name, questions in sets:
      s, _ = evaluate_questions(g, name, questions, log=lambda m: None)
      out[f"{name}/{s['metric']}"], out[f"{name}/n"] = s["score"], s["n"]
    return out
  return evaluate
