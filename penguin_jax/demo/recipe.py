"""The Penguin recipe in miniature (`launch.demo`): every stage on the embedded demo corpus,
on a laptop CPU, no downloads; and the encoder ablation.

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
  teacher  a tiny VL3-SigLIP-NaViT, SigLIP-pre-trained on the training images (`siglip.py`)
  stage1a  the encoder from the stage-0 LLM (`init.encoder_from_qwen3`, the paper's init),
           reconstruction losses against the teacher; stage1b, stage2, stage3: each from
           the previous stage's checkpoint (`init.init_from`)
  export   `workdir-to-hf` (`penguin_jax.export`); its answers are checked against the
           workdir's
  eval     `launch.eval`'s evaluation (`inference.evaluate_run`) of every stage on the
           validation split: held-out LM loss (teacher-forced) and answer exact match
           (greedy); the quick budget evaluates the baseline and the final model only
Output: WORKDIR/results.md, WORKDIR/loss_curves.png, WORKDIR/results.json
(`recipe_report.py`). A step already done (in WORKDIR/results.json) is not run again.

`--benchmarks` (`Demo.benchmarks`): the final export on every benchmark's released layout
(the demo's questions written as DocVQA, ChartQA, ..., VideoMME files), before and after
fine-tuning on other questions in those instruction formats (WORKDIR/benchmarks.md).

The ablation (`Demo.ablation`): every arm gets the same budget, stage 1a then stage 2, on
the same stage-0 LLM and teacher, for each seed (of the runs' initialisation and data
order): `paper` (encoder from the LLM, reconstruction warm-up), `random_init`,
`no_reconstruction` (the warm-up with the LM loss alone), `no_relation`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

from data_pipelines import benchmarks as benchmark_files, demo_benchmarks, demo_data, prompts
from data_pipelines import tfds_penguin
from penguin_jax import benchmark, export, hf, inference, registry
from penguin_jax.demo import recipe_report, siglip
from penguin_jax.train import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = (("stage0", "stage0.py"), ("stage1a", "stage1.py"), ("stage1b", "stage1_hres.py"),
          ("stage2", "stage2.py"), ("stage3", "stage3.py"))
ARMS = {  # --ablation: arm -> stage 1a flags
    "paper": [],
    "random_init": ["--config.init.encoder_from_qwen3="],
    "no_reconstruction": ["--config.loss.reconstruction_weight=0",
                          "--config.loss.reconstruction_weight_end=-1"],
    "no_relation": ["--config.loss.relation_scope=none"],
}


# --finetune: arm -> flags of configs/finetune.py:tiny. The adapters take a 10x higher
# learning rate than full fine-tuning (the usual LoRA practice; here 3e-3 vs 3e-4).
FINETUNE_ARMS = {
    "full": [],
    "lora": ["--config.lora.rank=8", "--config.optim.lr.llm=3e-3"],
    "qlora_int8": ["--config.lora.rank=8", "--config.optim.lr.llm=3e-3",
                   "--config.lora.base_dtype=int8"],
    "qlora_nf4": ["--config.lora.rank=8", "--config.optim.lr.llm=3e-3",
                  "--config.lora.base_dtype=nf4"],
}
_TRAINABLE = re.compile(r"trainable parameters: ([\d,]+)")


@dataclasses.dataclass(frozen=True)
class Budget:
  """Sizes and steps of a demo run."""
  train_samples: int
  val_samples: int
  steps: dict                    # stage (or "teacher") -> optimizer steps
  ablation_steps: dict           # --ablation: each arm's stage1a and stage2 steps
  max_new_tokens: int
  eval_every_stage: bool = True  # else the baseline and the final model only
  finetune: tuple = (400, 40, 150)   # --finetune: training / validation samples, steps
  benchmarks: tuple = (48, 24, 400)  # --benchmarks: training / validation questions per
                                     # benchmark, fine-tuning steps


FULL = Budget(train_samples=480, val_samples=120, max_new_tokens=12,
              steps={"stage0": 300, "teacher": 300, "stage1a": 200, "stage1b": 60,
                     "stage2": 150, "stage3": 250},
              ablation_steps={"stage1a": 100, "stage2": 150})
QUICK = Budget(train_samples=48, val_samples=12, max_new_tokens=6, eval_every_stage=False,
               steps={"stage0": 4, "teacher": 10, "stage1a": 3, "stage1b": 2, "stage2": 2,
                      "stage3": 3},
               ablation_steps={"stage1a": 2, "stage2": 2}, finetune=(32, 8, 2),
               benchmarks=(2, 2, 2))


def say(msg: str):
  print(msg, file=sys.stderr, flush=True)


_KEEP = re.compile(r"^\S+ \S+ \d+ (?:loop|metrics|checkpoint|init)\.py:\d+\] ")


class Demo:
  """The recipe's steps in WORKDIR; `config`: a tiny run config (launch.demo gives
  configs/stage0.py's) whose data settings make the corpus and whose teacher sizes the
  SigLIP teacher has."""

  def __init__(self, workdir: str, budget: Budget, config):
    self.w, self.b, self.config = os.path.abspath(workdir), budget, config
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
    cfg = self.config.copy_and_resolve_references()
    cfg.data.update(demo_dir=self.data, demo_samples=self.b.train_samples,
                    demo_val_samples=self.b.val_samples)
    say(f"== data: the demo corpus in {self.data}")
    data_lib.prepare(cfg, self.w)
    self._done("data", {"seconds": time.time() - t})

  def train(self, key: str, config: str, steps: int, *flags, seed: int = 0) -> dict:
    """`python -m launch.train` of one stage into WORKDIR/KEY; -> its figures (the
    training loss, its trainable parameters, the median step time)."""
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
    with open(os.path.join(wd, "train.log")) as f:
      trainable = _TRAINABLE.search(f.read())
    times = [r["step_time_s"] for r in train[1:] if "step_time_s" in r]   # the first compiles
    out = {"workdir": wd, "steps": steps, "seconds": time.time() - t,
           "trainable": int(trainable.group(1).replace(",", "")) if trainable else None,
           "step_time": float(sorted(times)[len(times) // 2]) if times else None,
           "loss_first": train[0]["loss"], "loss_last": train[-1]["loss"],
           "curve": [(r["step"], r["loss"], r.get("lm_loss", r["loss"])) for r in train]}
    self._done(key, out)
    return out

  def export_llm(self) -> str:
    """The stage-0 run's LLM as an HF Qwen3 folder (what `init.llm` and
    `init.encoder_from_qwen3` read, as they read a released Qwen3)."""
    out = os.path.join(self.w, "stage0", "qwen3")
    if not os.path.isfile(os.path.join(out, "config.json")):
      run = inference.from_workdir(os.path.join(self.w, "stage0"))
      hf.save_pretrained(registry.build_model(run.model.cfg.llm), run.params["llm"], out)
    return out

  def teacher(self) -> str:
    out = os.path.join(self.w, "teacher")
    if "teacher" not in self.state:
      cfg = self.config
      say(f"== teacher: SigLIP pre-training of a tiny VL3-SigLIP-NaViT ({out})")
      t = time.time()
      r = siglip.pretrain(self.data, out, cfg.model.teacher.to_dict(),
                          data_lib.sample_config(cfg), steps=self.b.steps["teacher"],
                          log=lambda m: say("   " + m))
      self._done("teacher", {**r, "seconds": time.time() - t})
    return out

  def evaluate(self, key: str, workdir: str, text_only: bool = False, data: str = "") -> dict:
    """launch.eval of a run on the validation split (its text alone for the baseline), or
    on the JSONL file `data`."""
    ek = f"eval_{key}"
    if ek in self.state:
      return self.state[ek]
    data = data or os.path.join(self.data, "raw", "val_text.jsonl" if text_only else "val.jsonl")
    out = os.path.join(workdir, "answers.jsonl")
    say(f"== eval {key}: launch.eval --workdir={workdir} --data={data}")
    t = time.time()
    fig = inference.evaluate_run(workdir, data, out=out, max_new_tokens=self.b.max_new_tokens,
                                 batch_size=16, log=say)
    res = {"held_out_lm_loss": fig["held_out"]["lm_loss"],
           "held_out_accuracy": fig["held_out"]["accuracy"],
           "exact_match": fig["answers"]["exact_match"], "answers": out,
           "by_kind": recipe_report.by_kind(out), "seconds": time.time() - t}
    self._done(ek, res)
    return res

  def export_and_check(self, workdir: str) -> dict:
    """workdir-to-hf of the final run; the export answers the validation prompts as the
    workdir did (launch.generate's Generator on the HF folder)."""
    if "export" in self.state:
      return self.state["export"]
    out = os.path.join(self.w, "hf")
    say(f"== export: launch.convert workdir-to-hf --workdir={workdir} --out={out}")
    t = time.time()
    export.export_run(workdir, out, dtype="float32")
    seconds = time.time() - t
    mine = {r["id"]: r["answer"] for r in map(json.loads, open(os.path.join(workdir, "answers.jsonl")))}
    raw = os.path.join(self.data, "raw")
    samples = prompts.read_jsonl(os.path.join(raw, "val.jsonl"))
    g = inference.Generator(inference.from_hf_dir(out), max_new_tokens=self.b.max_new_tokens,
                            log=say)
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
    recipe_report.write_report(self.w, self.state, [k for k, _ in STAGES])
    say(f"== done in {time.time() - t0:.0f} s: {self.w}/results.md, {self.w}/loss_curves.png")

  def finetune(self):
    """Adapt the recipe's stage-3 export to a question kind it never trained (`position`,
    demo_data.FINETUNE_KINDS), as a user adapts a released model to their data: the JSONL
    built as a TFDS dataset with the export's tokenizer, then full fine-tuning, LoRA and
    QLoRA (int8, nf4) with the same steps from the export; each scored on the kind's
    validation split before and after (finetune.md, finetune.png)."""
    self.recipe()
    base = self.state["export"]["hf_dir"]
    n_train, n_val, steps = self.b.finetune
    root = os.path.join(self.w, "finetune")
    raw, tfds_dir = os.path.join(root, "data"), os.path.join(root, "tfds")
    if "finetune_data" not in self.state:
      say(f"== finetune data: {n_train} + {n_val} '{', '.join(demo_data.FINETUNE_KINDS)}' "
          f"questions in {raw}, built with the tokenizer of {base}")
      t = time.time()
      demo_data.generate(raw, n_train, n_val, seed=1, kinds=demo_data.FINETUNE_KINDS,
                         val_kinds=demo_data.FINETUNE_KINDS)
      config = tfds_penguin.PenguinConfig(
          name="position", tokenizer=base, sample=data_lib.sample_config(self.config),
          splits={"train": "train.jsonl", "val": "val.jsonl"})
      tfds_penguin.prepare(raw, tfds_dir, config)
      self._done("finetune_data", {"seconds": time.time() - t})
    val = os.path.join(raw, "val.jsonl")
    self.evaluate("finetune/before", os.path.join(self.w, "stage3"), data=val)
    on = [f"--config.init.init_from={base}", "--config.data.demo=False",
          "--config.data.tfds_name=penguin_vl/position", f"--config.data.tfds_data_dir={tfds_dir}"]
    for arm, flags in FINETUNE_ARMS.items():
      r = self.train(f"finetune/{arm}", "finetune.py", steps, *on, *flags)
      self.evaluate(f"finetune/{arm}", r["workdir"], data=val)
    self._done("finetune_steps", steps)
    recipe_report.write_finetune(self.w, self.state, list(FINETUNE_ARMS))
    say(f"== fine-tuning demo done: {self.w}/finetune.md, {self.w}/finetune.png")

  def benchmarks(self):
    """The recipe's final model on every benchmark's layout (the demo's questions written
    as each benchmark releases its files: `data_pipelines.demo_benchmarks`), answered and
    scored as `launch.eval --benchmark` does, before and after full fine-tuning of its
    export on other questions in those instruction formats (WORKDIR/benchmarks.md)."""
    self.recipe()
    base = self.state["export"]["hf_dir"]
    n_train, n_val, steps = self.b.benchmarks
    root = os.path.join(self.w, "benchmarks")
    train_files, val_files = os.path.join(root, "train_files"), os.path.join(root, "val_files")
    raw, tfds_dir = os.path.join(root, "data"), os.path.join(root, "tfds")
    if "benchmarks_data" not in self.state:
      say(f"== benchmark layouts: {n_train} training and {n_val} validation questions per "
          f"benchmark in {root}, built with the tokenizer of {base}")
      t = time.time()
      demo_benchmarks.write(train_files, n_train, seed=1)
      demo_benchmarks.write(val_files, n_val, seed=0)
      n = demo_benchmarks.training_jsonl(train_files, raw)
      config = tfds_penguin.PenguinConfig(
          name="benchmark_formats", tokenizer=base, sample=data_lib.sample_config(self.config),
          splits={"train": "train.jsonl"}, allow_outside=True)
      tfds_penguin.prepare(raw, tfds_dir, config)
      self._done("benchmarks_data", {"train_questions": n, "seconds": time.time() - t})
    self._benchmark_scores("before", {"hf_dir": base}, val_files)
    r = self.train("benchmarks/finetune", "finetune.py", steps, f"--config.init.init_from={base}",
                   "--config.data.demo=False", "--config.data.tfds_name=penguin_vl/benchmark_formats",
                   f"--config.data.tfds_data_dir={tfds_dir}")
    self._benchmark_scores("after", {"workdir": r["workdir"]}, val_files)
    recipe_report.write_benchmarks(self.w, self.state)
    say(f"== benchmarks done: {self.w}/benchmarks.md")

  def _benchmark_scores(self, when: str, model: dict, files: str) -> dict:
    key = f"benchmarks/{when}"
    if key not in self.state:
      say(f"== {key}: launch.eval --benchmark=NAME on {files} ({model})")
      g = inference.Generator(inference.load(**model), log=say)
      self._done(key, {name: benchmark.run(g, name, os.path.join(files, name), log=say)
                       for name in benchmark_files.SPECS})
    return self.state[key]

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
    recipe_report.write_ablation(self.w, self.state, seeds, list(ARMS))
    say(f"== ablation done: {self.w}/ablation.md, {self.w}/ablation.png")


