"""The benchmarks' own scores of a generated answer (the paper's tables are scored so).

  anls              DocVQA, InfoVQA: Average Normalized Levenshtein Similarity
  vqa_accuracy      TextVQA (VQA v2's rule): min(#humans who gave the answer / 3, 1),
                    averaged over the 10 leave-one-out subsets of the 10 human answers
  relaxed_accuracy  ChartQA: numbers within 5% (evaluation.relaxed_match)
  multiple_choice   AI2D, MMMU, MMBench: the option a free answer names (`parse_choice`)
  ocrbench          OCRBench: the reference contained in the answer
  numeric           MathVista-style: the answer's last number against the reference's

Each is a pure function of strings, written from the benchmark's definition (docs/
evaluation.md cites them); `SCORERS` maps the names `launch.eval --score` takes to
`(answer, reference, options) -> float in [0, 1]`.
"""
from __future__ import annotations

import itertools
import json
import re

from penguin_jax import evaluation


# --------------------------------------------------------------------------- ANLS
def levenshtein(a: str, b: str) -> int:
  """Edit distance (insertions, deletions, substitutions). Our own: a few lines of dynamic
  programming instead of a compiled dependency, for strings of answer length."""
  if len(a) < len(b):
    a, b = b, a
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def anls(answer: str, references, threshold: float = 0.5) -> float:
  """Best over the references of 1 - NL, NL = edit distance / the longer length, 0 where
  1 - NL < threshold (0.5: DocVQA's tau). As the DocVQA / InfoVQA evaluation script (and
  lmms-eval, whose figures the paper reports) computes it: the distance between the strings
  lower-cased with spaces collapsed, the length of the strings as given (so extra spaces
  lengthen the denominator), and 1 - NL = 0.5 kept (Biten et al. 2019 zero it)."""
  norm = lambda s: " ".join(s.strip().lower().split())
  a, best = norm(answer), 0.0
  for ref in _as_list(references):
    longest = max(len(answer.upper()), len(ref.upper()))   # the script's lengths, as given
    score = 1.0 - levenshtein(a, norm(ref)) / longest if longest else 1.0
    best = max(best, score if score >= threshold else 0.0)
  return best


# --------------------------------------------------------------------------- VQA accuracy
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# English contractions as VQA's answer normalisation restores them: an answer word written
# without its apostrophes ("dont", "couldntve") becomes the contraction. (The official
# list also spells "Im", "Id", "Ive" capitalised, which never match its lower-cased words:
# the I- forms are left out here for the same effect.)
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll let's "
    "ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't "
    "'ow's'at shan't she'd've she's should've shouldn't shouldn't've somebody'd "
    "somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's "
    "something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'd've who'll who're "
    "who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
    "y'all'd've you'd you'd've you'll you're you've").split()


def _without_apostrophes(word: str):
  """Every spelling of `word` with one or more of its apostrophes dropped."""
  parts = word.split("'")
  for keep in itertools.product((True, False), repeat=len(parts) - 1):
    if all(keep):
      continue
    yield parts[0] + "".join(("'" if k else "") + p for k, p in zip(keep, parts[1:]))


_CONTRACTIONS = {v: w for w in _CONTRACTED for v in _without_apostrophes(w)}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
          "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")     # (the official pattern, its look-behind typo kept)


def vqa_normalize(answer: str) -> str:
  """VQA's answer normalisation (its evaluation script's punctuation, digit and article
  steps; applied to every answer and every human answer, as lmms-eval's TextVQA task
  does): newlines and tabs to spaces; punctuation removed where it
  touches a space (or the answer has a number with a comma), else turned into a space;
  periods not inside numbers removed; lower case; number words zero..ten as digits;
  articles dropped; contractions restored."""
  text = answer.replace("\n", " ").replace("\t", " ").strip()
  out = text
  for p in _PUNCT:
    if p + " " in text or " " + p in text or _COMMA_IN_NUMBER.search(text):
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  out = _PERIOD.sub("", out)
  words = []
  for w in out.lower().split():
    w = _NUMBER_WORDS.get(w, w)
    if w not in _ARTICLES:
      words.append(_CONTRACTIONS.get(w, w))
  return " ".join(words)


def vqa_accuracy(answer: str, references) -> float:
  """The human answers (VQA / TextVQA: 10) normalised as the answer is; for each human,
  min(#other humans who gave the answer / 3, 1); the mean over the humans (the 10
  leave-one-out subsets of 9). Needs at least 2 human answers."""
  refs = [vqa_normalize(r) for r in _as_list(references)]
  if len(refs) < 2:
    raise ValueError(f"vqa_accuracy needs the human answers (2 or more, VQA has 10), got "
                     f"{len(refs)}")
  a = vqa_normalize(answer)
  matches = sum(r == a for r in refs)
  return sum(min((matches - (r == a)) / 3, 1.0) for r in refs) / len(refs)


# --------------------------------------------------------------------------- multiple choice
def parse_choice(answer: str, options: dict):
  """The option letter a free answer names, as MMMU's parser reads one (in lmms-eval's
  copy, which every multiple-choice benchmark here uses): the answer stripped of , . ! ? ;
  : ' at its ends and padded with a space each side; then the first rule that finds a
  letter: "(B)"; "B " (a capital letter followed by a space, so also the end of "USA ");
  "B."; for answers over 5 words, an option's text (case ignored). Several found: the one
  named last (for a bare letter, the last " B "; none such: the first in option order).
  None when nothing is named (MMMU then picks at random; here the answer is simply
  wrong, so scores are reproducible)."""
  letters = list(options)
  text = answer
  for ch in ",.!?;:'":
    text = text.strip(ch)
  text = f" {text} "
  rules = ((lambda c: f"({c})" in text, lambda c: text.rfind(f"({c})")),
           (lambda c: f"{c} " in text, lambda c: text.rfind(f" {c} ")),
           (lambda c: f"{c}." in text, lambda c: text.rfind(f" {c} ")))
  for named, where in rules:
    found = [c for c in letters if named(c)]
    if found:
      break
  if not found and len(text.split()) > 5:
    found = [c for c in letters if str(options[c]).lower() in text.lower()]
    where = lambda c: text.lower().rfind(str(options[c]).lower())
  if not found:
    return None
  return max(found, key=where)                   # the first of equal positions


def multiple_choice(answer: str, reference: str, options: dict) -> float:
  """1 when the parsed option letter is the reference letter."""
  if not options:
    raise ValueError("multiple_choice needs the options ({\"A\": ..., \"B\": ...})")
  if reference not in options:
    raise ValueError(f"the reference {reference!r} is not one of the options {list(options)}")
  return float(parse_choice(answer, options) == reference)


# --------------------------------------------------------------------------- MMMU open answers
# MMMU's open-answer evaluation (its eval_utils, which lmms-eval's mmmu task uses): the
# answer's key phrases (what follows the last indicator word of each line) and every number
# in them are the candidates; a candidate number equal to a reference number (2 decimals),
# or a candidate phrase containing a reference string, is right.
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ",
                   "result ")
_NUMBER_FORMS = (re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),                 # 1,234,567
                 re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),               # 1.5e-3
                 re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"))


def _open_normalize(text: str) -> list:
  """A number -> [it rounded to 2 decimals]; else the lower-cased text (one character: padded
  with a space on either side, so that a letter does not match inside any word)."""
  text = text.strip()
  try:
    return [round(float(text.replace(",", "")), 2)]
  except ValueError:
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_phrases(answer: str) -> list:
  """Per line, the shortest non-empty text after an indicator (the last line also takes
  "="); none found: the whole answer. The answer is lower-cased first, so MMMU's sentence split
  (". " before a capital) never applies: only lines split, as in MMMU."""
  text = answer.strip().strip(".").lower()
  lines = re.split(r"\.\s(?=[A-Z])|\n", text)
  keys = []
  for i, line in enumerate(lines):
    indicators = _KEY_INDICATORS + (("=",) if i == len(lines) - 1 else ())
    shortest = ""
    for tail in (line.split(ind)[-1].strip() for ind in indicators if ind in line):
      if not shortest or len(tail) < len(shortest):    # an empty tail gives way, as in MMMU
        shortest = tail
    if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
      keys.append(shortest)
  return keys or [text]


def parse_open(answer: str) -> list:
  """The candidates MMMU reads from a free answer: key phrases and their numbers, normalised
  (`_open_normalize`), without repeats."""
  keys = _key_phrases(answer)
  found = keys + [n for k in keys for form in _NUMBER_FORMS for n in form.findall(k)]
  return list(dict.fromkeys(x for f in found for x in _open_normalize(f)))


def mmmu_open(answer: str, references) -> float:
  """1 when a candidate of `parse_open(answer)` is a reference number, or a candidate
  phrase contains a reference string (both normalised by `_open_normalize`)."""
  refs = [x for r in _as_list(references) for x in _open_normalize(r)]
  for cand in parse_open(answer):
    if isinstance(cand, str):
      if any(isinstance(r, str) and r in cand for r in refs):
        return 1.0
    elif cand in refs:
      return 1.0
  return 0.0


# --------------------------------------------------------------------------- OCRBench, numbers
def _fold_fullwidth(text: str) -> str:
  """Full-width ASCII (U+FF01..U+FF5E) to ASCII and the ideographic space to a space, as
  lmms-eval's OCRBench folds both sides (no wider Unicode normalisation)."""
  return "".join(chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else
                 " " if c == "\u3000" else c for c in text)


def ocrbench(answer: str, references, formula: bool = False) -> float:
  """OCRBench: 1 when a reference, full-width folded, lower-cased and stripped, is
  contained in the answer (the same, newlines as spaces); `formula` (its handwritten-formula
  questions, HME100k): spaces and newlines removed on both sides, case kept, no folding."""
  if formula:
    squeeze = lambda s: s.replace("\n", "").replace(" ", "").strip()
  else:
    squeeze = lambda s: _fold_fullwidth(s).lower().strip().replace("\n", " ")
  a = squeeze(answer.strip())
  return float(any(squeeze(r) in a for r in _as_list(references)))


def relaxed_accuracy(answer: str, reference: str, tolerance: float = 0.05) -> float:
  """ChartQA's relaxed accuracy as its evaluation (and lmms-eval) computes it: both read as
  numbers by Python's float ("12%": 0.12; "1,234" and "twelve" are no number), then 1
  within `tolerance` of the reference (relative); otherwise (either no number, or the
  reference 0) 1 when the strings are equal, case ignored. `evaluation.relaxed_match` is
  the lenient form the training evaluation uses."""
  def number(text):
    try:
      return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
      return None
  a, r = number(answer), number(reference)
  if a is not None and r:
    return float(abs(a - r) / abs(r) <= tolerance)
  return float(answer.lower() == reference.lower())


_ANY_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def numeric(answer: str, reference: str, precision: int | None = None) -> float:
  """MathVista-style: the last number in the answer ("1,000" read as 1000) against the
  reference number, both rounded to `precision` decimals (None: an integer reference is
  compared as an integer, truncated as MathVista does; else exactly)."""
  ref = evaluation.to_number(reference)
  if ref is None:
    raise ValueError(f"the reference {reference!r} is not a number")
  nums = _ANY_NUMBER.findall(answer)
  if not nums:
    return 0.0
  got = evaluation.to_number(nums[-1].rstrip(".,"))
  if got is None:
    return 0.0
  if precision is not None:
    return float(round(got, precision) == round(ref, precision))
  if ref == int(ref):
    return float(int(got) == int(ref))
  return float(got == ref)


def _as_list(references) -> list:
  return [references] if isinstance(references, str) else list(references)


# name -> (answer, reference, options) -> score; what `launch.eval --score` runs.
SCORERS = {
    "exact_match": lambda a, r, o=None: float(any(evaluation.exact_match(a, x)
                                                 for x in _as_list(r))),
    "anls": lambda a, r, o=None: anls(a, r),
    "vqa_accuracy": lambda a, r, o=None: vqa_accuracy(a, r),
    "relaxed_accuracy": lambda a, r, o=None: max((relaxed_accuracy(a, x) for x in _as_list(r)),
                                                 default=0.0),
    "multiple_choice": lambda a, r, o=None: multiple_choice(a, r, o or {}),
    "ocrbench": lambda a, r, o=None: ocrbench(a, r),
    "numeric": lambda a, r, o=None: numeric(a, r),
    "mmmu_open": lambda a, r, o=None: mmmu_open(a, r),
}


def score_file(path: str, metric: str, log=print) -> dict:
  """Score a JSONL of predictions: one line {"answer": str, "reference": str or [str, ...]}
  (multiple_choice: also "options": {"A": str, ...}, the reference a letter). A line that
  is not that (bad JSON, a missing or mistyped field, a reference a metric cannot use) is
  named on one line (the first 5 of them), counted and not scored.
  -> {metric: mean score, "n": lines scored, "malformed": lines not scored}."""
  if metric not in SCORERS:
    raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(SCORERS)}")
  fn, total, n, bad = SCORERS[metric], 0.0, 0, 0
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = _json_line(line)
        answer, ref = rec["answer"], rec["reference"]
        if not isinstance(answer, str) or not (isinstance(ref, str) or (
            isinstance(ref, list) and ref and all(isinstance(r, str) for r in ref))):
          raise ValueError('"answer" must be a string, "reference" a string or a list of them')
        options = rec.get("options")
        if options is not None and not isinstance(options, dict):
          raise ValueError('"options" must be an object of letter: text')
        total += fn(answer, ref, options)
        n += 1
      except (ValueError, KeyError, TypeError) as e:
        bad += 1
        if bad <= 5:
          why = f"no field {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
          log(f"{path}: line {i} not scored: {why}")
  return {metric: total / n if n else 0.0, "n": n, "malformed": bad}


def _json_line(line: str) -> dict:
  rec = json.loads(line)
  if not isinstance(rec, dict):
    raise ValueError("not a JSON object")
  return rec
