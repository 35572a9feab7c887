"""The real sizes, built abstractly (`jax.eval_shape`, nothing allocated): the `2b` and
`8b` LLMs have the parameters of transformers' Qwen3ForCausalLM made from Qwen3-1.7B's /
Qwen3-8B's published config.json (on PyTorch's meta device), and the encoder those of
Qwen3-0.6B without its embedding; the counts round to the model cards' figures (0.6B / 0.44B
without embedding, 1.7B / 1.4B, 8.2B / 6.95B)."""
import jax
import numpy as np
import pytest

from configs import stage3
from penguin_jax import registry
from penguin_jax.train import program
from penguin_jax.vlm import PenguinVL

# the hub's config.json of each (Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B, Qwen/Qwen3-8B)
QWEN3 = {
    "Qwen3-0.6B": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       tie_word_embeddings=True),
    "Qwen3-1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       tie_word_embeddings=True),
    "Qwen3-8B": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     tie_word_embeddings=False),
}
# the model cards' "Number of Parameters" and "Non-Embedding", in billions, as printed
CARD = {"Qwen3-0.6B": ("0.6", "0.44"), "Qwen3-1.7B": ("1.7", "1.4"), "Qwen3-8B": ("8.2", "6.95")}


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _as_printed(n: int, card: str) -> str:
  """`n` in billions with the card figure's decimals."""
  return f"{n / 1e9:.{len(card.split('.')[1])}f}"


def _hf(name: str):
  """(all parameters, non-embedding parameters) of transformers' Qwen3ForCausalLM."""
  import torch
  import transformers
  cfg = transformers.Qwen3Config(vocab_size=151936, **QWEN3[name])
  with torch.device("meta"):
    model = transformers.Qwen3ForCausalLM(cfg)
  total = sum(p.numel() for p in model.parameters())           # tied: counted once
  emb = model.model.embed_tokens.weight.numel() * (1 if cfg.tie_word_embeddings else 2)
  return total, total - emb


@pytest.mark.parametrize("variant,llm", [("2b", "Qwen3-1.7B"), ("8b", "Qwen3-8B")])
def test_the_real_sizes_have_qwen3s_published_parameter_counts(variant, llm):
  vcfg, _ = program.model_config(stage3.get_config(variant))
  params = registry.abstract_params(PenguinVL(vcfg))
  total, non_embedding = _hf(llm)
  assert _count(params["llm"]) == total
  assert _count(params["llm"]["layers"]) + _count(params["llm"]["norm"]) == non_embedding
  assert tuple(_as_printed(n, c) for n, c in zip((total, non_embedding), CARD[llm])) == CARD[llm]
  enc = params["vision_encoder"]             # Qwen3-0.6B's layers and norm, then its own
  enc_total, enc_non_embedding = _hf("Qwen3-0.6B")   # patch embedding (not Qwen3's)
  assert _count(enc["layers"]) + _count(enc["norm"]) == enc_non_embedding
  assert (_as_printed(enc_total, "0.6"), _as_printed(enc_non_embedding, "0.44")) == CARD["Qwen3-0.6B"]
