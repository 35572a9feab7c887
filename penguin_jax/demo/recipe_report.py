"""The miniature recipe's report (`recipe.py`): WORKDIR/results.md (the stages' table and
the answers by question kind), loss_curves.png; for the ablation, ablation.md, .png and
.json (mean +- std over seeds, ddof 1)."""
from __future__ import annotations

import json
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")                 # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def by_kind(answers_jsonl: str) -> dict:
  """Exact match per question kind (the id's last part) of a launch.eval answers file."""
  kinds = {}
  for r in map(json.loads, open(answers_jsonl)):
    kinds.setdefault(r["id"].rsplit("-", 1)[-1], []).append(r["exact_match"])
  return {k: sum(v) / len(v) for k, v in sorted(kinds.items())}


# ------------------------------------------------------------------------ reports
def _mmss(s: float) -> str:
  return f"{int(s) // 60}:{int(s) % 60:02d}"


def write_report(w: str, st: dict, stages: list) -> str:
  """results.md and loss_curves.png from the recipe's state `st` (`stages`: its stage keys)."""
  rows = ["| stage | steps | wall time | training loss first -> last | held-out LM loss | "
          "held-out token accuracy | answer exact match |", "|---|---|---|---|---|---|---|",
          f"| data | | {_mmss(st['data']['seconds'])} | | | | |"]
  for key in stages:
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
  total = sum(st[k]["seconds"] for k in ("data", "teacher", "export", *stages))
  total += sum(v["seconds"] for k, v in st.items() if k.startswith("eval_"))
  text = ("# launch.demo: the Penguin recipe in miniature\n\n" + "\n".join(rows) +
          f"\n\nTotal {_mmss(total)} (minutes:seconds). Validation: {st['eval_stage3']['answers']}"
          " (one line per question).\n\n## Answers by question kind (exact match)\n\n" +
          "\n".join(kinds) + "\n")
  with open(os.path.join(w, "results.md"), "w") as f:
    f.write(text)
  print(text, flush=True)
  _plot_curves(w, st, stages)
  return text


def _plot_curves(w: str, st: dict, stages: list):
  fig, ax = plt.subplots(figsize=(10, 4.5))
  offset = 0
  for key in stages:
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


def write_ablation(w: str, st: dict, seeds: int, arms: list) -> str:
  """ablation.md, .json and .png from the recipe's state (`arms`: the arms' names)."""
  rows = ["| arm | seeds | held-out LM loss (mean +- std) | answer exact match (mean +- std) |",
          "|---|---|---|---|"]
  summary = {}
  for arm in arms:
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
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, title in zip(axes, ("loss", "exact_match"),
                            ("held-out LM loss", "answer exact match")):
    vals = [summary[a][key] for a in arms]
    ax.bar(range(len(arms)), [np.mean(v) for v in vals],
           yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals], capsize=4)
    for i, v in enumerate(vals):
      ax.plot([i] * len(v), v, "k.", ms=4)
    ax.set_xticks(range(len(arms)), list(arms), rotation=20, fontsize=8)
    ax.set_title(title)
  axes[1].axhline(b["exact_match"], color="red", ls="--", label="text-only baseline")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(w, "ablation.png"), dpi=100)
  plt.close(fig)
  return text




def write_finetune(w: str, st: dict, arms: list) -> str:
  """finetune.md and finetune.png from the recipe's state (`arms`: the fine-tuning arms)."""
  b = st["eval_finetune/before"]
  rows = ["| arm | trainable parameters | step time (median) | wall time | training loss "
          "first -> last | held-out LM loss | answer exact match |",
          "|---|---|---|---|---|---|---|",
          f"| before (the recipe's stage-3 export) | | | | | {b['held_out_lm_loss']:.3f} | "
          f"{b['exact_match']:.3f} |"]
  for arm in arms:
    r, e = st[f"finetune/{arm}"], st[f"eval_finetune/{arm}"]
    rows.append(f"| {arm} | {r['trainable']:,} | {1000 * r['step_time']:.0f} ms | "
                f"{_mmss(r['seconds'])} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} | "
                f"{e['held_out_lm_loss']:.3f} | {e['exact_match']:.3f} |")
  text = ("# launch.demo --finetune: adapting the recipe's model to a new question kind\n\n"
          f"Every arm: {st['finetune_steps']} steps from the same export, the same data and "
          "seed.\n\n" + "\n".join(rows) + "\n")
  with open(os.path.join(w, "finetune.md"), "w") as f:
    f.write(text)
  print(text, flush=True)
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  for arm in arms:
    steps, loss, _ = zip(*st[f"finetune/{arm}"]["curve"])
    ax.plot(steps, loss, label=arm)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.legend(fontsize=8)
  names = ["before", *arms]
  ev = [b] + [st[f"eval_finetune/{a}"] for a in arms]
  x = np.arange(len(names))
  bx.bar(x - 0.2, [e["held_out_lm_loss"] for e in ev], 0.4, label="held-out LM loss")
  bx2 = bx.twinx()
  bx2.bar(x + 0.2, [e["exact_match"] for e in ev], 0.4, color="tab:orange", label="exact match")
  bx2.set_ylim(0, 1)
  bx.set_xticks(x, names, fontsize=8)
  bx.set_ylabel("held-out LM loss")
  bx2.set_ylabel("answer exact match")
  bars = [bx.get_legend_handles_labels(), bx2.get_legend_handles_labels()]
  bx.legend(bars[0][0] + bars[1][0], bars[0][1] + bars[1][1], loc="upper center", fontsize=8)
  fig.suptitle("launch.demo --finetune: full fine-tuning, LoRA, QLoRA int8 / nf4")
  fig.tight_layout()
  fig.savefig(os.path.join(w, "finetune.png"), dpi=100)
  plt.close(fig)
  return text


def write_benchmarks(w: str, st: dict) -> str:
  """benchmarks.md from the recipe's state: each benchmark's score before and after the
  fine-tuning on its instruction formats."""
  before, after, ft = st["benchmarks/before"], st["benchmarks/after"], st["benchmarks/finetune"]
  rows = ["| benchmark | metric | questions | the recipe's final model | after fine-tuning on "
          "the formats |", "|---|---|---|---|---|"]
  for name, b in before.items():
    rows.append(f"| {name} | {b['metric']} | {b['n']} | {b['score']:.3f} | "
                f"{after[name]['score']:.3f} |")
  text = ("# launch.demo --benchmarks: the paper's benchmark formats in miniature\n\n"
          "The demo's questions in each benchmark's released layout, prompted as lmms-eval "
          "prompts Penguin-VL and scored by the benchmark's metric; the fine-tuning: "
          f"{st['benchmarks_data']['train_questions']} other questions in those formats, "
          f"{ft['steps']} steps ({_mmss(ft['seconds'])}), full fine-tuning of the export.\n\n"
          + "\n".join(rows) + "\n")
  with open(os.path.join(w, "benchmarks.md"), "w") as f:
    f.write(text)
  print(text, flush=True)
  return text
