"""The Penguin recipe in miniature: every stage, on the embedded demo corpus, on a laptop
CPU, no downloads (issue 11).

  python -m launch.demo --workdir=/tmp/demo              # the recipe (see README for times)
  python -m launch.demo --workdir=/tmp/demo --quick      # a smoke version (the test suite's)
  python -m launch.demo --workdir=/tmp/demo --ablation [--seeds=3]

The recipe, each step a command of this project, logged as it runs (WORKDIR/STAGE/train.log
has a stage's whole log), so that any step can be re-run alone:
  data     the demo corpus (`data_pipelines/demo_data.py`): a mixed training split, a
           validation split of questions only the image answers (balanced classes), and
           both without their media; a SentencePiece tokenizer; the TFDS dataset
           penguin_vl/demo (data_pipelines/tfds_penguin.py)
  stage0   a tiny text-only Qwen3 trained on the corpus's text (`configs/stage0.py`),
           written as an HF Qwen3 folder: it plays Qwen3-0.6B (the encoder starts from it)
           and Qwen3-1.7B (the decoder); asked the questions without images, it is the
           text-only baseline
  teacher  a tiny VL3-SigLIP-NaViT, SigLIP-pre-trained on the training images
           (`launch/demo_teacher.py`)
  stage1a  the encoder from the stage-0 LLM (`init.encoder_from_qwen3`, the paper's init),
           reconstruction losses against the teacher; stage1b, stage2, stage3: each from
           the previous stage's checkpoint (`init.init_from`)
  export   `launch.convert workdir-to-hf`; its answers are checked against the workdir's
  eval     `launch.eval` of every stage on the validation split: held-out LM loss
           (teacher-forced) and answer exact match (greedy); `--quick`: of the baseline
           and the final model only
Output: WORKDIR/results.md (the table, and the answers per question kind for the
baseline and the final model), WORKDIR/loss_curves.png, WORKDIR/results.json. A step
already done (WORKDIR/results.json) is not run again: run the same command to go on after
an interruption.

`--ablation`: the paper's encoder ablation, in miniature (WORKDIR/ablation.md, .png, .json).
Every arm gets the same budget, stage 1a then stage 2 (everything trainable; stages 1b and
3 left out for time; fewer steps than the recipe's), on the same stage-0 LLM and teacher
(made first if missing), for each of `--seeds` seeds (the seed of the runs'
initialisation and data order), scored like the recipe's stages:
  paper            encoder from the text-only LLM; warm-up with the reconstruction losses
  random_init      encoder initialised at random; the same warm-up
  no_reconstruction  encoder from the LLM; the warm-up with the LM loss alone
  no_relation      encoder from the LLM; the warm-up without the relation loss
(The paper also compares a contrastively pre-trained ViT; that arm is not built.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = (("stage0", "stage0.py"), ("stage1a", "stage1.py"), ("stage1b", "stage1_hres.py"),
          ("stage2", "stage2.py"), ("stage3", "stage3.py"))
ARMS = {  # --ablation: arm -> stage 1a flags
    "paper": [],
    "random_init": ["--config.init.encoder_from_qwen3="],
    "no_reconstruction": ["--config.loss.reconstruction_weight=0",
                          "--config.loss.reconstruction_weight_end=-1"],
    "no_relation": ["--config.loss.relation_scope=none"],
}


@dataclasses.dataclass(frozen=True)
class Budget:
  """Sizes and steps of a demo run."""
  train_samples: int
  val_samples: int
  steps: dict                    # stage (or "teacher") -> optimizer steps
  ablation_steps: dict           # --ablation: each arm's stage1a and stage2 steps
  max_new_tokens: int
  eval_every_stage: bool = True  # else the baseline and the final model only


FULL = Budget(train_samples=480, val_samples=120, max_new_tokens=12,
              steps={"stage0": 300, "teacher": 300, "stage1a": 200, "stage1b": 60,
                     "stage2": 150, "stage3": 250},
              ablation_steps={"stage1a": 100, "stage2": 150})
QUICK = Budget(train_samples=48, val_samples=12, max_new_tokens=6, eval_every_stage=False,
               steps={"stage0": 4, "teacher": 10, "stage1a": 3, "stage1b": 2, "stage2": 2,
                      "stage3": 3},
               ablation_steps={"stage1a": 2, "stage2": 2})


def say(msg: str):
  print(msg, file=sys.stderr, flush=True)


_KEEP = re.compile(r"^\S+ \S+ \d+ (?:train|metrics|checkpoint)\.py:\d+\] ")


class Demo:
  def __init__(self, workdir: str, budget: Budget):
    self.w, self.b = os.path.abspath(workdir), budget
    self.data = os.path.join(self.w, "data")
    self.state_file = os.path.join(self.w, "results.json")
    self.state = {}
    if os.path.isfile(self.state_file):
      with open(self.state_file) as f:
        self.state = json.load(f)

  def _done(self, key: str, result: dict):
    self.state[key] = result
    with open(self.state_file, "w") as f:
      json.dump(self.state, f, indent=1)

  # ------------------------------------------------------------------------ the steps
  def prepare_data(self):
    if "data" in self.state:
      return
    t = time.time()
    from configs import stage0
    from launch.train import prepare_data
    cfg = stage0.get_config("tiny")
    cfg.data.update(demo_dir=self.data, demo_samples=self.b.train_samples,
                    demo_val_samples=self.b.val_samples)
    say(f"== data: the demo corpus in {self.data}")
    prepare_data(cfg, self.w)
    self._done("data", {"seconds": time.time() - t})

  def train(self, key: str, config: str, steps: int, *flags, seed: int = 0) -> dict:
    """`python -m launch.train` of one stage into WORKDIR/KEY; -> its figures."""
    if key in self.state:
      return self.state[key]
    wd = os.path.join(self.w, key)
    cmd = [sys.executable, "-m", "launch.train", f"--config=configs/{config}:tiny",
           f"--workdir={wd}", f"--config.total_steps={steps}",
           f"--config.log_every={max(steps // 10, 1)}", f"--config.checkpoint_every={steps}",
           f"--config.data.demo_dir={self.data}", f"--config.seed={seed}", *flags]
    say(f"== {key}: {' '.join(cmd[1:])}")
    os.makedirs(wd, exist_ok=True)
    t = time.time()
    with open(os.path.join(wd, "train.log"), "w") as logf:
      p = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=logf, text=True)
      for line in p.stderr:
        logf.write(line)
        if _KEEP.match(line):
          say("   " + _KEEP.sub("", line.rstrip()))
      if p.wait():
        raise RuntimeError(f"{key} failed (exit {p.returncode}); its log: {wd}/train.log")
    recs = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    train = [r for r in recs if "loss" in r and "eval" not in r]
    out = {"workdir": wd, "steps": steps, "seconds": time.time() - t,
           "loss_first": train[0]["loss"], "loss_last": train[-1]["loss"],
           "curve": [(r["step"], r["loss"], r.get("lm_loss", r["loss"])) for r in train]}
    self._done(key, out)
    return out

  def export_llm(self) -> str:
    """The stage-0 run's LLM as an HF Qwen3 folder (what `init.llm` and
    `init.encoder_from_qwen3` read, as they read a released Qwen3)."""
    out = os.path.join(self.w, "stage0", "qwen3")
    if not os.path.isfile(os.path.join(out, "config.json")):
      from launch import models
      from penguin_jax import hf, registry
      run = models.from_workdir(os.path.join(self.w, "stage0"))
      hf.save_pretrained(registry.build_model(run.model.cfg.llm), run.params["llm"], out)
    return out

  def teacher(self) -> str:
    out = os.path.join(self.w, "teacher")
    if "teacher" not in self.state:
      from configs.common import base
      from launch import demo_teacher
      from launch.train import sample_config
      cfg = base("tiny")
      say(f"== teacher: SigLIP pre-training of a tiny VL3-SigLIP-NaViT ({out})")
      t = time.time()
      r = demo_teacher.pretrain(self.data, out, cfg.model.teacher.to_dict(),
                                sample_config(cfg), steps=self.b.steps["teacher"],
                                log=lambda m: say("   " + m))
      self._done("teacher", {**r, "seconds": time.time() - t})
    return out

  def evaluate(self, key: str, workdir: str, text_only: bool = False) -> dict:
    """launch.eval of a run on the validation split (its text alone for the baseline)."""
    ek = f"eval_{key}"
    if ek in self.state:
      return self.state[ek]
    from launch import eval as eval_lib
    data = os.path.join(self.data, "raw", "val_text.jsonl" if text_only else "val.jsonl")
    out = os.path.join(workdir, "answers.jsonl")
    say(f"== eval {key}: launch.eval --workdir={workdir} --data={data}")
    t = time.time()
    fig = eval_lib.run(eval_lib.parser().parse_args(
        [f"--workdir={workdir}", f"--data={data}", f"--out={out}",
         f"--max_new_tokens={self.b.max_new_tokens}", "--batch_size=16"]))
    res = {"held_out_lm_loss": fig["held_out"]["lm_loss"],
           "held_out_accuracy": fig["held_out"]["accuracy"],
           "exact_match": fig["answers"]["exact_match"], "answers": out,
           "by_kind": _by_kind(out), "seconds": time.time() - t}
    self._done(ek, res)
    return res

  def export_and_check(self, workdir: str) -> dict:
    """workdir-to-hf of the final run; the export answers the validation prompts as the
    workdir did (launch.generate's Generator on the HF folder)."""
    if "export" in self.state:
      return self.state["export"]
    from data_pipelines import prompts
    from launch import convert, models
    from launch.generate import Generator
    out = os.path.join(self.w, "hf")
    say(f"== export: launch.convert workdir-to-hf --workdir={workdir} --out={out}")
    t = time.time()
    if convert.main(["workdir-to-hf", f"--workdir={workdir}", f"--out={out}",
                     "--dtype=float32"]):
      raise RuntimeError("workdir-to-hf failed (above)")
    seconds = time.time() - t
    mine = {r["id"]: r["answer"] for r in map(json.loads, open(os.path.join(workdir, "answers.jsonl")))}
    raw = os.path.join(self.data, "raw")
    samples = prompts.read_jsonl(os.path.join(raw, "val.jsonl"))
    g = Generator(models.from_hf_dir(out), max_new_tokens=self.b.max_new_tokens)
    same = total = 0
    for batch in g.answer([(s, raw) for s in samples], 16, strict=True, need_reference=True):
      for p, _, text in batch:
        same += text == mine[p["id"]]
        total += 1
    say(f"   the export gives the workdir's answer on {same} of {total} validation prompts")
    res = {"hf_dir": out, "seconds": seconds, "same_answers": same, "prompts": total}
    self._done("export", res)
    return res

  # ------------------------------------------------------------------------ recipes
  def foundation(self) -> tuple[str, str]:
    """What the recipe and the ablation both start from: the corpus, the stage-0 LLM (an
    HF Qwen3 folder) and the SigLIP teacher; -> (LLM folder, teacher folder)."""
    self.prepare_data()
    self.train("stage0", "stage0.py", self.b.steps["stage0"])
    return self.export_llm(), self.teacher()

  def recipe(self):
    t0 = time.time()
    llm, teacher = self.foundation()
    s = self.b.steps
    prev = None
    for key, config in STAGES[1:]:
      init = ([f"--config.init.init_from={prev}"] if prev else
              [f"--config.init.encoder_from_qwen3={llm}", f"--config.init.llm={llm}",
               f"--config.init.teacher={teacher}"])
      prev = self.train(key, config, s[key], *init)["workdir"]
    self.evaluate("stage0", os.path.join(self.w, "stage0"), text_only=True)
    for key, _ in STAGES[1:]:
      if self.b.eval_every_stage or key == "stage3":
        self.evaluate(key, os.path.join(self.w, key))
    self.export_and_check(prev)
    write_report(self.w, self.state)
    say(f"== done in {time.time() - t0:.0f} s: {self.w}/results.md, {self.w}/loss_curves.png")

  def ablation(self, seeds: int):
    llm, teacher = self.foundation()
    self.evaluate("stage0", os.path.join(self.w, "stage0"), text_only=True)
    s = self.b.ablation_steps
    for seed in range(seeds):
      for arm, flags in ARMS.items():
        base = f"ablation/{arm}/seed{seed}"
        a = self.train(f"{base}/stage1a", "stage1.py", s["stage1a"],
                       f"--config.init.encoder_from_qwen3={llm}", f"--config.init.llm={llm}",
                       f"--config.init.teacher={teacher}", *flags, seed=seed)
        b = self.train(f"{base}/stage2", "stage2.py", s["stage2"],
                       f"--config.init.init_from={a['workdir']}", seed=seed)
        self.evaluate(base, b["workdir"])
    self._done("ablation_steps", s)
    write_ablation(self.w, self.state, seeds)
    say(f"== ablation done: {self.w}/ablation.md, {self.w}/ablation.png")


def _by_kind(answers_jsonl: str) -> dict:
  """Exact match per question kind (the id's last part) of a launch.eval answers file."""
  kinds = {}
  for r in map(json.loads, open(answers_jsonl)):
    kinds.setdefault(r["id"].rsplit("-", 1)[-1], []).append(r["exact_match"])
  return {k: sum(v) / len(v) for k, v in sorted(kinds.items())}


# ------------------------------------------------------------------------ reports
def _mmss(s: float) -> str:
  return f"{int(s) // 60}:{int(s) % 60:02d}"


def write_report(w: str, st: dict) -> str:
  rows = ["| stage | steps | wall time | training loss first -> last | held-out LM loss | "
          "held-out token accuracy | answer exact match |", "|---|---|---|---|---|---|---|",
          f"| data | | {_mmss(st['data']['seconds'])} | | | | |"]
  for key, _ in STAGES:
    r, e = st[key], st.get(f"eval_{key}")
    name = "stage0 (text only: the baseline)" if key == "stage0" else key
    scores = (f"{e['held_out_lm_loss']:.3f} | {e['held_out_accuracy']:.3f} | "
              f"{e['exact_match']:.3f}" if e else "not evaluated (--quick) | |")
    rows.append(f"| {name} | {r['steps']} | {_mmss(r['seconds'])} | {r['loss_first']:.3f} -> "
                f"{r['loss_last']:.3f} | {scores} |")
    if key == "stage0":
      t = st["teacher"]
      rows.append(f"| teacher (SigLIP) | {t['steps']} | {_mmss(t['seconds'])} | "
                  f"{t['loss_first']:.3f} -> {t['loss_last']:.3f} | | | image -> text "
                  f"retrieval {t['val_retrieval_accuracy']:.3f} ({t['val_texts']} texts) |")
  x = st["export"]
  rows.append(f"| export | | {_mmss(x['seconds'])} | | | | same answers as the workdir: "
              f"{x['same_answers']}/{x['prompts']} |")
  base, final = st["eval_stage0"]["by_kind"], st["eval_stage3"]["by_kind"]
  kinds = ["| question kind | text-only baseline | final model (stage 3) |", "|---|---|---|"]
  kinds += [f"| {k} | {base.get(k, 0):.3f} | {final[k]:.3f} |" for k in final]
  total = sum(st[k]["seconds"] for k in ("data", "teacher", "export", *[s for s, _ in STAGES]))
  total += sum(v["seconds"] for k, v in st.items() if k.startswith("eval_"))
  text = ("# launch.demo: the Penguin recipe in miniature\n\n" + "\n".join(rows) +
          f"\n\nTotal {_mmss(total)} (minutes:seconds). Validation: {st['eval_stage3']['answers']}"
          " (one line per question).\n\n## Answers by question kind (exact match)\n\n" +
          "\n".join(kinds) + "\n")
  with open(os.path.join(w, "results.md"), "w") as f:
    f.write(text)
  print(text, flush=True)
  _plot_curves(w, st)
  return text


def _pyplot():
  """matplotlib's pyplot without a display (files only)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _plot_curves(w: str, st: dict):
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(10, 4.5))
  offset = 0
  for key, _ in STAGES:
    steps, loss, lm = zip(*st[key]["curve"])
    x = [offset + s for s in steps]
    line, = ax.plot(x, lm, label=f"{key} LM loss")
    if key == "stage1a":
      ax.plot(x, loss, "--", color=line.get_color(), label="stage1a total (with reconstruction)")
    offset += st[key]["steps"]
    ax.axvline(offset, color="grey", lw=0.5)
  ax.set_xlabel("step (stages end to end)")
  ax.set_ylabel("training loss")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  ax.set_title("launch.demo: loss curves of the stages")
  fig.tight_layout()
  fig.savefig(os.path.join(w, "loss_curves.png"), dpi=100)
  plt.close(fig)


def write_ablation(w: str, st: dict, seeds: int) -> str:
  import numpy as np
  rows = ["| arm | seeds | held-out LM loss (mean +- std) | answer exact match (mean +- std) |",
          "|---|---|---|---|"]
  summary = {}
  for arm in ARMS:
    ev = [st[f"eval_ablation/{arm}/seed{s}"] for s in range(seeds)]
    loss = np.array([e["held_out_lm_loss"] for e in ev])
    em = np.array([e["exact_match"] for e in ev])
    summary[arm] = {"loss": loss.tolist(), "exact_match": em.tolist()}
    rows.append(f"| {arm} | {seeds} | {loss.mean():.3f} +- {loss.std(ddof=1) if seeds > 1 else 0:.3f} "
                f"| {em.mean():.3f} +- {em.std(ddof=1) if seeds > 1 else 0:.3f} |")
  seconds = sum(v["seconds"] for k, v in st.items()
                if k.startswith(("ablation/", "eval_ablation/")))
  b = st["eval_stage0"]
  rows.append(f"| text-only baseline (stage 0) | 1 | {b['held_out_lm_loss']:.3f} (text alone) | "
              f"{b['exact_match']:.3f} |")
  text = ("# launch.demo --ablation: the encoder ablation in miniature\n\n"
          f"Each arm: stage 1a ({st['ablation_steps']['stage1a']} steps) then stage 2 "
          f"({st['ablation_steps']['stage2']} steps); std over seeds (ddof 1); "
          f"{_mmss(seconds)} (minutes:seconds) for all arms and seeds, training and "
          "evaluation.\n\n" +
          "\n".join(rows) + "\n")
  with open(os.path.join(w, "ablation.md"), "w") as f:
    f.write(text)
  with open(os.path.join(w, "ablation.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(text, flush=True)
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, title in zip(axes, ("loss", "exact_match"),
                            ("held-out LM loss", "answer exact match")):
    vals = [summary[a][key] for a in ARMS]
    ax.bar(range(len(ARMS)), [np.mean(v) for v in vals],
           yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals], capsize=4)
    for i, v in enumerate(vals):
      ax.plot([i] * len(v), v, "k.", ms=4)
    ax.set_xticks(range(len(ARMS)), list(ARMS), rotation=20, fontsize=8)
    ax.set_title(title)
  axes[1].axhline(b["exact_match"], color="red", ls="--", label="text-only baseline")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(w, "ablation.png"), dpi=100)
  plt.close(fig)
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test)")
  p.add_argument("--ablation", action="store_true", help="the encoder ablation instead")
  p.add_argument("--seeds", type=int, default=3, help="--ablation: seeds per arm")
  args = p.parse_args(argv)
  import logging
  for noisy in ("absl", "jax._src", "orbax", "grain"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  os.makedirs(args.workdir, exist_ok=True)
  demo = Demo(args.workdir, QUICK if args.quick else FULL)
  try:
    demo.ablation(args.seeds) if args.ablation else demo.recipe()
  except (RuntimeError, FileNotFoundError, ValueError) as e:
    say(f"error: {e}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
