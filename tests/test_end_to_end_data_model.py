"""Demo corpus -> its JSONL read as it is -> Grain pipeline -> Penguin-VL train step: the halves fit, and
the loss falls on real packed batches (small SentencePiece tokenizer, tiny model)."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax

from data_pipelines import demo_data, pipeline as P, records, sample as S
from data_pipelines.tokenizer import SentencePieceTokenizer
from penguin_jax import registry
from penguin_jax.train.step import TrainState, make_train_step
from penguin_jax.losses import LossConfig
from penguin_jax.vlm import PenguinVL
from test_vlm import tiny_vlm_config


@pytest.mark.slow
def test_pipeline_batches_train_the_vlm(tmp_path):
  demo_data.generate(str(tmp_path / "d"), 24, 0, seed=2)
  lines = [json.loads(l) for l in open(tmp_path / "d" / "train.jsonl")]
  sp = SentencePieceTokenizer.train(
      [t["value"] for l in lines for t in l["conversations"]] * 4, str(tmp_path / "sp"), 512)
  scfg = S.SampleConfig(min_tokens=4, max_tokens=32, seq_len=256)
  cfg = P.PipelineConfig(max_patches=384, max_visual_tokens=192, packing_bins=4)
  it = iter(P.make_dataset(records.JsonlSource(str(tmp_path / "d" / "train.jsonl")), sp, scfg,
                           cfg, batch_size=2))
  batch = {k: jnp.asarray(v) for k, v in next(it).items()}
  vcfg = tiny_vlm_config()
  vcfg = dataclasses.replace(vcfg, image_token_index=sp.image_token_id,
                             llm=dataclasses.replace(vcfg.llm, vocab_size=sp.vocab_size))
  model = PenguinVL(vcfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  opt = optax.adam(3e-3)
  step = jax.jit(make_train_step(model, opt, LossConfig(max_label_tokens=128, chunk_size=64)))
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  losses = []
  for _ in range(6):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses
  assert int(m["label_tokens"]) > 0 and int(m["dropped_label_tokens"]) == 0
