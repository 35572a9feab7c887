"""Answer metrics (penguin_jax/evaluation.py) on hand-made predictions."""
import pytest

from penguin_jax import evaluation as ev


@pytest.mark.parametrize("pred,ref,same", [
    ("The red one.", "red one", True),           # articles, case, punctuation
    ("  Blue  ", "blue", True),
    ("1,000", "1000", True), ("3.50", "3.5", True), ("50%", "50", True),
    ("seven", "7", False),                       # words are not numbers
    ("red", "reddish", False), ("12", "12.5", False),
    ("1234567", "1234568", False), ("1,234,567", "1234567", True)])
def test_exact_match_after_normalisation(pred, ref, same):
  assert ev.exact_match(pred, ref) is same


@pytest.mark.parametrize("pred,ref,ok", [
    ("104", "100", True), ("105", "100", True), ("105.1", "100", False), ("95", "100", True),
    ("94.9", "100", False), ("-2.05", "-2", True), ("0", "0", True), ("0.01", "0", False),
    ("1,040", "1000", True), ("12%", "12.5", True),
    ("Yes.", "yes", True), ("no", "yes", False), ("100 apples", "100", False)])
def test_relaxed_accuracy_within_five_percent(pred, ref, ok):
  assert ev.relaxed_match(pred, ref) is ok


def test_score_means_over_pairs():
  s = ev.score(["104", "the cat", "dog"], ["100", "Cat", "bird"])
  assert s == {"count": 3, "exact_match": pytest.approx(1 / 3),
               "relaxed_accuracy": pytest.approx(2 / 3)}
  with pytest.raises(ValueError):
    ev.score(["a"], ["a", "b"])
