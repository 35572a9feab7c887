"""penguin-jax: Penguin-VL in JAX/Flax.

Public API:
  from_pretrained(path, dtype=...) -> (model, params)   HF directory (qwen3 LLM,
                                                          penguinvl_vision_encoder, penguinvl_qwen3)
  save_pretrained(model, params, out_dir)                 config.json + safetensors, HF layout
  encode_images(model, params, pixel_values, grid_sizes, merge_sizes) -> np.ndarray
  encoder_from_qwen3(path) -> (encoder model, params)     the paper's LLM-initialised encoder
"""
from penguin_jax.api import encode_images
from penguin_jax.hf import encoder_from_qwen3, from_pretrained, save_pretrained

__all__ = ["from_pretrained", "save_pretrained", "encode_images", "encoder_from_qwen3"]
