"""Answer metrics for evaluating generated answers against references (issue 11's
`launch.eval` builds on them): exact match after normalisation, and ChartQA's relaxed
accuracy (a numeric answer counts when within 5% of the reference).

Normalisation (the SQuAD / VQA habit): lower case, no punctuation except inside numbers,
no articles (a, an, the), single spaces; numbers written the same way ("1,000" -> "1000",
"3.50" -> "3.5", "50%" -> "50").
"""
from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?%?$|^[-+]?\.\d+%?$")


def to_number(text: str):
  """A float if `text` is one number ("1,234.5", "-3", "12%"), else None."""
  t = text.strip().rstrip(".")
  if not _NUMBER.match(t):
    return None
  return float(t.replace(",", "").rstrip("%"))


def normalize(text: str) -> str:
  words = []
  for w in text.lower().split():
    n = to_number(w)
    if n is not None:
      words.append(f"{n:.15g}")             # 1000.0 -> 1000, 3.50 -> 3.5, exact digits kept
      continue
    w = w.translate(str.maketrans("", "", string.punctuation))
    words.append(w)
  return " ".join(_ARTICLES.sub(" ", " ".join(words)).split())


def exact_match(prediction: str, reference: str) -> bool:
  return normalize(prediction) == normalize(reference)


def relaxed_match(prediction: str, reference: str, tolerance: float = 0.05) -> bool:
  """ChartQA's relaxed accuracy: numbers within `tolerance` of the reference (relative;
  exact when the reference is 0), anything else by exact match after normalisation."""
  p, r = to_number(prediction), to_number(reference)
  if p is not None and r is not None:
    return p == r if r == 0 else abs(p - r) / abs(r) <= tolerance
  return exact_match(prediction, reference)


def score(predictions, references) -> dict:
  """Mean exact match and relaxed accuracy over pairs (and their count)."""
  pairs = list(zip(predictions, references, strict=True))
  n = max(len(pairs), 1)
  return {"count": len(pairs),
          "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
          "relaxed_accuracy": sum(relaxed_match(p, r) for p, r in pairs) / n}
