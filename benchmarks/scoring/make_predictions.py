"""Prediction files for `launch.eval --score`, one per metric, 300 lines each, made from a
fixed seed: answers right, slightly off and wrong in known shares, in the shapes the
benchmarks produce (document strings, ten human answers, chart numbers, free answers to
multiple-choice questions, OCR sentences, math answers, MMMU's open answers), plus a few malformed lines.

  python benchmarks/scoring/make_predictions.py --out=/tmp/preds
  for m in exact_match anls vqa_accuracy relaxed_accuracy multiple_choice ocrbench numeric mmmu_open; do
    python -m launch.eval --score=/tmp/preds/$m.jsonl --metric=$m | tail -1
  done

benchmarks/scoring/README.md has the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random

WORDS = ("invoice total date name address amount tax page chart year sales north south "
         "red blue green dog cat bird fish apple tree car house river").split()
N = 300


def typo(s: str, rng) -> str:
  i = rng.randrange(len(s))
  return s[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + s[i + 1:]


def make(metric: str, rng) -> list:
  rows = []
  for i in range(N):
    kind = i % 3                       # 0 right, 1 slightly off, 2 wrong
    ref = " ".join(rng.sample(WORDS, 2)) + f" {rng.randrange(100, 999)}"
    if metric in ("exact_match", "anls"):
      ans = [ref.upper(), typo(ref, rng), " ".join(rng.sample(WORDS, 3))][kind]
      rows.append({"answer": ans, "reference": [ref, "n/a"]})
    elif metric == "vqa_accuracy":
      a, b = rng.sample(WORDS, 2)
      k = rng.randrange(0, 11)                     # humans who said a
      humans = [a] * k + [b] * (10 - k)
      rows.append({"answer": [f"The {a}.", b, "none of these"][kind], "reference": humans})
    elif metric == "relaxed_accuracy":
      x = rng.uniform(1, 1000)
      ans = [x * rng.uniform(0.97, 1.03), x * rng.uniform(1.06, 1.2), x * 3][kind]
      rows.append({"answer": f"{ans:.2f}", "reference": f"{x:.2f}"})
    elif metric == "multiple_choice":
      opts = dict(zip("ABCD", rng.sample(WORDS, 4)))
      ref = rng.choice("ABCD")
      other = rng.choice([c for c in "ABCD" if c != ref])
      ans = [rng.choice([f"({ref})", f"{ref}.", f"The answer is {ref}",
                         f"I believe the picture shows a {opts[ref]} in the middle"]),
             f"It could be ({other}) but it is ({ref})", f"({other})"][kind]
      rows.append({"answer": ans, "reference": ref, "options": opts})
    elif metric == "ocrbench":
      ans = [f"The sign reads {ref.upper()} in large letters", f"It says {typo(ref, rng)}",
             "I cannot read it"][kind]
      rows.append({"answer": ans, "reference": ref})
    elif metric == "numeric":
      x = rng.randrange(1, 5000)
      ans = [f"So the answer is {x:,}.", f"about {x + 1}", "it cannot be determined"][kind]
      rows.append({"answer": ans, "reference": str(x)})
    elif metric == "mmmu_open":                    # MMMU's open questions
      x = rng.randrange(1000, 99999)
      word = rng.choice(WORDS)
      ans = [rng.choice([f"Thus the total is {x:,}", f"The {word} is {x}.0 units", f"{x}"]),
             f"The answer is {x + 1}.\nIt is not {x}", f"It is {word}"][kind]
      rows.append({"answer": ans, "reference": str(x)})
  lines = [json.dumps(r) for r in rows]
  lines += ["{broken", json.dumps({"answer": "x"})]          # 2 malformed lines, named
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  for metric in ("exact_match", "anls", "vqa_accuracy", "relaxed_accuracy", "multiple_choice",
                 "ocrbench", "numeric", "mmmu_open"):
    with open(os.path.join(args.out, f"{metric}.jsonl"), "w") as f:
      f.write("\n".join(make(metric, random.Random(metric))) + "\n")
  print(f"wrote 8 files of {N} predictions (+2 malformed lines) in {args.out}")


if __name__ == "__main__":
  main()
