"""Fine-tuning a model on the benchmarks' instruction formats, scored on the benchmarks'
layouts before and after: the demo's questions written in every benchmark's layout
(`data_pipelines.demo_benchmarks`, a training seed and a validation seed), the training
ones turned into the release's JSONL (each question's prompt exactly as the benchmark
reader builds it, the answer a letter for multiple choice, else the most common
reference), built as a TFDS dataset with the model's tokenizer, then `configs/finetune.py`
from the model's HF folder (full fine-tuning), and `launch.eval --benchmark`'s scoring of
each layout before and after.

  python benchmarks/scoring/benchmark_finetune.py --hf_dir=DEMO/hf --out=DIR \\
      [--train=48] [--val=24] [--steps=150]

(DEMO: a `python -m launch.demo` workdir; its export is the demo's final model.) Prints a
Markdown table and writes DIR/results.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from configs import finetune
from data_pipelines import benchmarks, demo_benchmarks, tfds_penguin
from penguin_jax import benchmark, inference
from penguin_jax.train import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def training_jsonl(files: str, raw: str) -> int:
  """Every benchmark's questions under `files` -> raw/train.jsonl (media as files in
  raw/media) -> lines written."""
  os.makedirs(os.path.join(raw, "media"), exist_ok=True)
  lines = []
  for name in benchmarks.SPECS:
    for q in benchmarks.read(name, os.path.join(files, name))[0]:
      rec = benchmarks.record(q)
      sample = {"id": q.id}
      if rec["images"]:
        paths = []
        for k, data in enumerate(rec["images"]):
          rel = f"media/{q.id}-{k}.img"
          with open(os.path.join(raw, rel), "wb") as f:
            f.write(data)
          paths.append(rel)
        sample["image"] = paths
      if rec["video"]:
        sample["video"] = [os.path.relpath(rec["video"], raw)]
      answer = q.references[0] if q.options else max(q.references, key=q.references.count)
      sample["conversations"] = [rec["conversations"][0], {"from": "gpt", "value": answer}]
      lines.append(sample)
  with open(os.path.join(raw, "train.jsonl"), "w") as f:
    f.writelines(json.dumps(s) + "\n" for s in lines)
  return len(lines)


def scores(model_kw: dict, files: str) -> dict:
  g = inference.Generator(inference.load(**model_kw), log=lambda m: None)
  return {name: benchmark.run(g, name, os.path.join(files, name), log=lambda m: None)["score"]
          for name in benchmarks.SPECS}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--hf_dir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--train", type=int, default=48, help="training questions per benchmark")
  ap.add_argument("--val", type=int, default=24, help="validation questions per benchmark")
  ap.add_argument("--steps", type=int, default=150)
  args = ap.parse_args(argv)
  out = os.path.abspath(args.out)
  train_files, val_files = os.path.join(out, "train_files"), os.path.join(out, "val_files")
  raw, tfds_dir = os.path.join(out, "raw"), os.path.join(out, "tfds")
  t = time.time()
  demo_benchmarks.write(train_files, args.train, seed=1)
  demo_benchmarks.write(val_files, args.val, seed=0)
  n = training_jsonl(train_files, raw)
  cfg = finetune.get_config("tiny")
  tfds_penguin.prepare(raw, tfds_dir, tfds_penguin.PenguinConfig(
      name="benchmark_formats", tokenizer=args.hf_dir, sample=data_lib.sample_config(cfg),
      splits={"train": "train.jsonl"}, allow_outside=True))
  print(f"{n} training questions built in {time.time() - t:.0f} s", file=sys.stderr)
  before = scores({"hf_dir": args.hf_dir}, val_files)
  wd = os.path.join(out, "finetune")
  t = time.time()
  subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/finetune.py:tiny",
                  f"--workdir={wd}", f"--config.total_steps={args.steps}",
                  f"--config.checkpoint_every={args.steps}", "--config.log_every=25",
                  f"--config.init.init_from={args.hf_dir}", "--config.data.demo=False",
                  "--config.data.tfds_name=penguin_vl/benchmark_formats",
                  f"--config.data.tfds_data_dir={tfds_dir}"], cwd=REPO, check=True)
  seconds = time.time() - t
  after = scores({"workdir": wd}, val_files)
  result = {"train_questions": n, "val_per_benchmark": args.val, "steps": args.steps,
            "train_seconds": round(seconds), "before": before, "after": after}
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  print("| benchmark | metric | before | after |\n|---|---|---|---|")
  for name in benchmarks.SPECS:
    print(f"| {name} | {benchmarks.SPECS[name].metric} | {before[name]:.4f} | "
          f"{after[name]:.4f} |")
  print(f"\n{n} training questions, {args.steps} steps in {seconds:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
