"""The one error type for bad input: a short stable `reason` (counted by the builder and
the pipeline), a detail for people, and the sample's id once known."""
from __future__ import annotations


# Every reason, in a fixed order (new ones at the end): skips made in data worker processes
# travel to the trainer inside the batches as (index in REASONS, count) (pipeline.Featurize).
REASONS = (
    "corrupt_record", "invalid_json", "malformed_sample", "malformed_conversation",
    "empty_conversation", "unknown_role", "no_assistant_turn", "image_tag_mismatch",
    "no_label_tokens", "missing_file", "outside_data_folder", "corrupt_image",
    "zero_size_image", "image_too_large", "aspect_ratio", "corrupt_video", "truncated_video",
    "too_long", "unexpected_error", "unknown", "invalid_utf8",
)


class BadSample(ValueError):

  def __init__(self, reason: str, detail: str = "", sample_id=None):
    if reason not in REASONS:             # a programming error: register it in REASONS
      raise TypeError(f"BadSample reason {reason!r} is not in errors.REASONS")
    self.reason, self.detail, self.sample_id = reason, detail, sample_id
    where = f"sample {sample_id!r}: " if sample_id is not None else ""
    super().__init__(f"{where}{reason}" + (f" ({detail})" if detail else ""))

  def with_id(self, sample_id) -> "BadSample":
    return BadSample(self.reason, self.detail, sample_id)
