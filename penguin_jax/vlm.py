"""Penguin-VL: encoder -> merge -> projector -> written into the LLM's token embeddings
at image-token positions -> Qwen3 decoder (docs/design.md §1).

Everything has static shapes. A batch (see `patches.pack_items` and the data pipeline):

  input_ids, segment_ids, positions   [b, s]       text rows (packed)
  patches                             [b, P, 588]  pixel patches of the same rows
  patch_segment_ids                   [b, P]       one id per image / video frame, 0 = pad
  patch_positions                     [b, P, 2]    (row, col)
  merge_index, merge_weight           [b, V, 4]    the merge resize as a gather
  visual_positions                    [b, V]       where each visual token goes in the row
                                                   (s = padding slot, dropped)

Visual features *replace* the embeddings at those positions (the release zeroes the
image-token embedding and adds the features). No boolean indexing inside jit: a scatter
with static shapes and mode="drop" for the padding slots.
"""
from __future__ import annotations


import jax.numpy as jnp
from flax import linen as nn

from penguin_jax.model_config import VLMConfig
from penguin_jax.encoder import PenguinEncoder, merge
from penguin_jax.projector import DistillHead, build_projector
from penguin_jax.qwen3 import Qwen3ForCausalLM


def scatter_visual(embeds, features, visual_positions):
  """embeds [b, s, e]; features [b, V, e]; visual_positions [b, V] (s = drop)."""
  rows = jnp.broadcast_to(jnp.arange(embeds.shape[0])[:, None], visual_positions.shape)
  return embeds.at[rows, visual_positions].set(features.astype(embeds.dtype), mode="drop")


class PenguinVL(nn.Module):
  cfg: VLMConfig
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    self.vision_encoder = PenguinEncoder(cfg.encoder)
    self.vision_projector = build_projector(cfg.projector_type, cfg.llm.hidden_size,
                                            cfg.llm.dtype, cfg.llm.param_dtype,
                                            lora=cfg.projector_lora)
    self.llm = Qwen3ForCausalLM(cfg.llm, decode=self.decode)
    if cfg.teacher_hidden_size is not None:
      self.vision_distill_layer = DistillHead(cfg.teacher_hidden_size, cfg.encoder.dtype,
                                              cfg.encoder.param_dtype)

  def visual_features(self, patches, patch_segment_ids, patch_positions, merge_index,
                      merge_weight):
    """Encoder + merge: [b, V, encoder_hidden] (before the projector)."""
    feats = self.vision_encoder(patches, patch_segment_ids, patch_positions)   # [b, P, e_enc]
    return merge(feats, merge_index, merge_weight)                              # [b, V, e_enc]

  def distill(self, merged):
    """The distill head on merged student features (stage 1a)."""
    return self.vision_distill_layer(merged)

  def embed_multimodal(self, input_ids, patches, patch_segment_ids, patch_positions,
                       merge_index, merge_weight, visual_positions):
    """Token embeddings with projected visual features written in. Returns
    (embeds [b, s, e_llm], merged encoder features [b, V, e_enc])."""
    merged = self.visual_features(patches, patch_segment_ids, patch_positions,
                                  merge_index, merge_weight)
    vis = self.vision_projector(merged)                                          # [b, V, e_llm]
    vis = nn.with_logical_constraint(vis, ("batch", "length", "act_embed"))
    embeds = scatter_visual(self.llm.embed(input_ids), vis, visual_positions)
    return embeds, merged

  def logits(self, hidden):
    return self.llm.logits(hidden)

  def head_kernel(self):
    """The LLM's LM head as an [e, vocab] matrix (see `Qwen3ForCausalLM.head_kernel`)."""
    return self.llm.head_kernel()

  def __call__(self, input_ids, segment_ids=None, positions=None, *, patches=None,
               patch_segment_ids=None, patch_positions=None, merge_index=None,
               merge_weight=None, visual_positions=None, return_hidden: bool = False):
    """Returns logits [b, s, vocab] (or, with return_hidden, (hidden [b, s, e_llm],
    merged visual features [b, V, e_enc]) for losses computed outside)."""
    if patches is None:
      embeds, merged = self.llm.embed(input_ids), None
    else:
      embeds, merged = self.embed_multimodal(input_ids, patches, patch_segment_ids,
                                             patch_positions, merge_index, merge_weight,
                                             visual_positions)
    hidden = self.llm.hidden_states(embeds, segment_ids, positions)
    if self.is_initializing() and merged is not None and self.cfg.teacher_hidden_size:
      self.distill(merged)  # create the distill head's parameters
    if return_hidden:
      return hidden, merged
    return self.llm.logits(hidden)


def dummy_inputs(cfg: VLMConfig, batch: int = 1, seq: int = 8, num_patches: int = 4,
                 num_tokens: int = 4) -> dict:
  """Zero inputs of the right shapes and dtypes, e.g. for `model.init`."""
  return dict(
      input_ids=jnp.zeros((batch, seq), jnp.int32),
      patches=jnp.zeros((batch, num_patches, cfg.encoder.patch_dim), jnp.float32),
      patch_segment_ids=jnp.ones((batch, num_patches), jnp.int32),
      patch_positions=jnp.zeros((batch, num_patches, 2), jnp.int32),
      merge_index=jnp.zeros((batch, num_tokens, 4), jnp.int32),
      merge_weight=jnp.zeros((batch, num_tokens, 4), jnp.float32),
      visual_positions=jnp.full((batch, num_tokens), seq, jnp.int32),
  )
