"""The benchmarks' scores (penguin_jax/scoring.py) on hand-made cases, each expected value
worked out by hand from the benchmark's definition (the arithmetic in the comments)."""
import json
import os

import pytest

from penguin_jax import evaluation
from penguin_jax import scoring as S

# lmms-eval's own scoring functions run on hand-picked answers (fixtures/lmms_eval_scores)
LMMS_EVAL = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures",
                                        "lmms_eval_scores", "reference.json")))


def test_levenshtein():
  assert S.levenshtein("kitten", "sitting") == 3          # k->s, e->i, +g
  assert S.levenshtein("", "abc") == 3 and S.levenshtein("abc", "abc") == 0


@pytest.mark.parametrize("answer,refs,want", [
    ("Hello  World", ["hello world"], 1.0),               # case and spaces do not count
    ("helo world", ["hello world"], 1 - 1 / 11),          # one deletion over 11 characters
    ("abcde", ["abxde"], 0.8),                            # 1 - 1/5
    ("abcd", ["abxy"], 0.5),                              # 1 - 2/4 = 0.5: not below tau, kept
    ("abcde", ["abxyz"], 0.0),                            # 1 - 3/5 = 0.4 < 0.5
    ("  abc  ", ["abd"], 1 - 1 / 7),                      # distance of the normalised strings
                                                          # over the length as given (7)
    ("ABC", ["abd"], 1 - 1 / 3),
    ("abc", ["xyz"], 0.0),
    ("1999", ["nineteen ninety nine", "1998"], 0.75),     # the best reference: 1 - 1/4
    ("", ["abc"], 0.0),                                   # an empty answer
    ("", [""], 1.0),
])
def test_anls(answer, refs, want):
  assert S.anls(answer, refs) == pytest.approx(want)


TEN = lambda *groups: [a for n, a in groups for _ in range(n)]


@pytest.mark.parametrize("answer,refs,want", [
    # 3 humans said 2, 7 said 3: each "2" human sees 2 others agree (2/3), each "3"
    # human sees all 3 (1): (3 x 2/3 + 7 x 1) / 10
    ("two", TEN((3, "2"), (7, "3")), 0.9),
    ("2", TEN((1, "2"), (9, "3")), 0.3),                  # 9 x 1/3 / 10; its own human 0
    ("3", TEN((1, "2"), (9, "3")), 1.0),                  # (1 + 9 x min(8/3, 1)) / 10
    ("Yes.", TEN((10, "yes")), 1.0),                      # the period goes
    ("the dog", TEN((10, "dog")), 1.0),                   # articles go
    ("dont", TEN((10, "don't")), 1.0),                    # contractions restored
    ("do not", TEN((10, "don't")), 0.0),
    ("1,000", TEN((10, "1000")), 1.0),                    # a comma inside a number
    ("t-shirt", TEN((10, "t shirt")), 1.0),               # a hyphen becomes a space
    ("cat", TEN((10, "dog")), 0.0),
])
def test_vqa_accuracy(answer, refs, want):
  assert S.vqa_accuracy(answer, refs) == pytest.approx(want)


def test_vqa_accuracy_needs_the_human_answers():
  with pytest.raises(ValueError, match="2 or more"):
    S.vqa_accuracy("yes", "yes")


OPTIONS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("answer,want", [
    ("(B)", "B"), ("The answer is (C).", "C"), ("B", "B"), ("B.", "B"),
    ("I think it is A or maybe B", "B"),                  # two named: the last one
    ("(A) is wrong, the answer is (D)", "D"),
    ("The animal in the picture is clearly a dog sitting", "B"),   # its text, > 5 words
    ("dog", None),                                        # text alone in a short answer
    ("Unclear", None),
])
def test_parse_choice(answer, want):
  assert S.parse_choice(answer, OPTIONS) == want


def test_multiple_choice_scores_and_rejects_a_reference_outside_the_options():
  assert S.multiple_choice("(B)", "B", OPTIONS) == 1.0
  assert S.multiple_choice("(A)", "B", OPTIONS) == 0.0
  with pytest.raises(ValueError, match="not one of the options"):
    S.multiple_choice("(A)", "E", OPTIONS)


def test_ocrbench_containment():
  assert S.ocrbench("The text says HELLO world", "hello") == 1.0
  assert S.ocrbench("The text says HELLO world", ["goodbye", "world"]) == 1.0
  assert S.ocrbench("hel lo", "hello") == 0.0
  assert S.ocrbench("x ^ 2", "x^2", formula=True) == 1.0
  assert S.ocrbench("X^2", "x^2", formula=True) == 0.0   # case kept for formulas


@pytest.mark.parametrize("answer,ref,precision,want", [
    ("The answer is 12.", "12", None, 1.0),
    ("1,000 apples", "1000", None, 1.0),
    ("12.7", "12", None, 1.0),                            # integer: truncated (MathVista)
    ("13", "12", None, 0.0),
    ("about 3.14159", "3.14", 2, 1.0),
    ("3.15", "3.14", 2, 0.0),
    ("first 5 then 7", "7", None, 1.0),                   # the last number
    ("no number", "7", None, 0.0),
])
def test_numeric(answer, ref, precision, want):
  assert S.numeric(answer, ref, precision) == want


@pytest.mark.parametrize("answer,ref,parsed,want", [
    # no indicator word: the whole answer, lower-cased, and its number
    ("14", "14", [14.0], 1.0),
    ("The answer is 14.", "14", [14.0], 1.0),             # the text after "is ", a number
    ("The answer is 13.", "14", [13.0], 0.0),
    # "so " -> "the total is 1,400 dollars", "is " -> "1,400 dollars" (shorter); its numbers:
    # "1,400" (with commas) and "400" (the simple form, which cannot start before a comma)
    ("so the total is 1,400 dollars", "1400", ["1,400 dollars", 1400.0, 400.0], 1.0),
    ("It is 3.14159", "3.14", [3.14], 1.0),               # both rounded to 2 decimals
    ("It is 3.15", "3.14", [3.15], 0.0),
    ("the value is 2.5e3", "2500", [2500.0, 2.0, 3.0], 1.0),   # scientific, and "2", "3"
    ("The capital is Paris", "paris", ["paris"], 1.0),    # the text contains the reference
    ("Paris is the capital", "paris", ["the capital"], 0.0),   # the key is after "is "
    # lines: the first has no indicator; "=" counts on the last line only
    ("x = 5\nso x is five", "5", ["five"], 0.0),
    ("so x is five\nx = 5", "5", ["five", 5.0], 1.0),
    # one character: padded, so a letter does not match inside a word
    ("The answer is b", "a", [" b", "b "], 0.0),
    ("The answer is banana", "a", ["banana"], 0.0),
    # an empty tail ("is " ends the line) gives way to the next indicator's
    ("the answer is \n42", "42", ["is"], 0.0),
])
def test_mmmu_open(answer, ref, parsed, want):
  assert S.parse_open(answer) == parsed
  assert S.mmmu_open(answer, ref) == want
  assert S.SCORERS["mmmu_open"](answer, [ref]) == want


@pytest.mark.parametrize("case", LMMS_EVAL["anls"], ids=lambda c: repr(c["answer"]))
def test_anls_equals_lmms_evals(case):
  assert S.anls(case["answer"], case["references"]) == case["anls"]


def test_the_anls_fixture_tells_the_length_as_given_from_the_normalised_one():
  """Negative control: ANLS over the normalised lengths (Biten et al.) misses the fixture."""
  norm = lambda s: " ".join(s.strip().lower().split())
  biten = lambda a, refs: max(
      (lambda nl: 1 - nl if nl < 0.5 else 0.0)(
          S.levenshtein(norm(a), norm(r)) / max(len(norm(a)), len(norm(r)), 1)) for r in refs)
  assert any(biten(c["answer"], c["references"]) != c["anls"] for c in LMMS_EVAL["anls"])


def test_mmmu_open_equals_mmmus_parser_and_check():
  by_kind = lambda x: (isinstance(x, str), x)
  for c in LMMS_EVAL["mmmu_open"]:
    assert sorted(S.parse_open(c["answer"]), key=by_kind) == c["mmmu_parsed"], c
    assert S.mmmu_open(c["answer"], c["reference"]) == float(c["mmmu_correct"]), c
  # negative control: exact match, which open questions had before, disagrees with MMMU
  assert any(evaluation.exact_match(c["answer"], c["reference"]) != c["mmmu_correct"]
             for c in LMMS_EVAL["mmmu_open"])
  # docs/evaluation.md: lmms-eval >= 0.4 counts every open answer wrong, right ones too
  assert sum(c["mmmu_correct"] for c in LMMS_EVAL["mmmu_open"]) >= 10
  assert not any(c["lmms_eval_correct"] for c in LMMS_EVAL["mmmu_open"])


@pytest.mark.parametrize("case", LMMS_EVAL["vqa_accuracy"], ids=lambda c: repr(c["answer"]))
def test_vqa_accuracy_equals_lmms_evals_textvqa(case):
  assert S.vqa_accuracy(case["answer"], case["references"]) == pytest.approx(
      case["vqa_accuracy"], abs=1e-12)


def test_relaxed_accuracy_ocrbench_and_the_choice_parser_equal_lmms_evals():
  for c in LMMS_EVAL["relaxed_accuracy"]:
    assert S.SCORERS["relaxed_accuracy"](c["answer"], [c["reference"]]) == c["relaxed_accuracy"], c
  for c in LMMS_EVAL["ocrbench"]:
    got = S.ocrbench(c["answer"], [c["reference"]], formula=c["dataset"] == "HME100k")
    assert got == c["ocrbench"], c
  for c in LMMS_EVAL["multiple_choice"]:
    assert S.parse_choice(c["answer"], c["options"]) == c["letter"], c   # None: random there
  # negative controls: the lenient relaxed match of the training evaluation, and OCRBench
  # without full-width folding, miss the fixture
  assert any(evaluation.relaxed_match(c["answer"], c["reference"]) != c["relaxed_accuracy"]
             for c in LMMS_EVAL["relaxed_accuracy"])
  assert any(float(c["reference"].lower() in c["answer"].lower()) != c["ocrbench"]
             for c in LMMS_EVAL["ocrbench"] if c["dataset"] != "HME100k")


def test_every_metric_of_the_score_command_is_there():
  assert set(S.SCORERS) == {"exact_match", "anls", "vqa_accuracy", "relaxed_accuracy",
                            "mmmu_open",
                            "multiple_choice", "ocrbench", "numeric"}
  assert S.SCORERS["exact_match"]("The Cat", ["dog", "cat"]) == 1.0
  assert S.SCORERS["relaxed_accuracy"]("10.4", ["7", "10"]) == 1.0   # within 5% of 10


def test_score_command_scores_a_file_and_names_malformed_lines(tmp_path):
  """`launch.eval --score`: 3 good lines (ANLS 1, 1 - 1/11, 0), 4 malformed ones named and
  counted; the last line is the JSON figure."""
  import json
  import subprocess
  import sys
  from train_runs import ENV, REPO
  lines = [json.dumps({"answer": "Hello world", "reference": ["hello world", "x"]}),
           json.dumps({"answer": "helo world", "reference": "hello world"}),
           json.dumps({"answer": "abc", "reference": "xyz"}),
           "{not json", json.dumps({"answer": "a"}), json.dumps(["a", "b"]),
           json.dumps({"answer": 3, "reference": "3"})]
  f = tmp_path / "p.jsonl"
  f.write_text("\n".join(lines) + "\n")
  r = subprocess.run([sys.executable, "-m", "launch.eval", f"--score={f}", "--metric=anls"],
                     cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  got = json.loads(r.stdout.strip().splitlines()[-1])
  assert got["n"] == 3 and got["malformed"] == 4
  assert got["anls"] == pytest.approx((1 + (1 - 1 / 11) + 0) / 3)
  for n, why in ((4, "Expecting property name"), (5, "no field 'reference'"),
                 (6, "not a JSON object"), (7, '"answer" must be a string')):
    assert f"line {n} not scored: {why}" in r.stderr, (n, r.stderr)
  missing = subprocess.run([sys.executable, "-m", "launch.eval", f"--score={tmp_path}/no.jsonl",
                            "--metric=anls"], cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=300)
  assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
      f"error: {tmp_path}/no.jsonl: No such file or directory"]
