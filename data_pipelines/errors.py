"""The one error type for bad input: a short stable `reason` (counted by the builder and
the pipeline), a detail for people, and the sample's id once known."""
from __future__ import annotations


class BadSample(ValueError):

  def __init__(self, reason: str, detail: str = "", sample_id=None):
    self.reason, self.detail, self.sample_id = reason, detail, sample_id
    where = f"sample {sample_id!r}: " if sample_id is not None else ""
    super().__init__(f"{where}{reason}" + (f" ({detail})" if detail else ""))

  def with_id(self, sample_id) -> "BadSample":
    return BadSample(self.reason, self.detail, sample_id)
