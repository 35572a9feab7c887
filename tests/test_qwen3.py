"""The Qwen3 decoder against transformers' PyTorch Qwen3 (docs/design.md §1.1)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import penguin_jax
from penguin_jax.decoding import greedy_generate


def _torch_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("fixture", ["qwen3_tied", "qwen3_untied"])
def test_logits_match_transformers(fixture, request):
  path, hf_model = request.getfixturevalue(fixture)
  model, params = penguin_jax.from_pretrained(str(path), dtype=jnp.float32)
  assert model.cfg.tie_word_embeddings == (fixture == "qwen3_tied")
  ids = np.random.RandomState(0).randint(0, 320, size=(2, 24))
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
  ref = _torch_logits(hf_model, ids)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_packed_row_equals_sequences_alone(qwen3_tied, scan):
  path, _ = qwen3_tied
  model, params = penguin_jax.from_pretrained(str(path), scan_layers=scan)
  rs = np.random.RandomState(1)
  a, b = rs.randint(0, 320, size=9), rs.randint(0, 320, size=6)
  row = np.concatenate([a, b, np.zeros(3, int)])[None]                 # 9 + 6 + 3 padding
  seg = np.array([[1] * 9 + [2] * 6 + [0] * 3])
  pos = np.array([list(range(9)) + list(range(6)) + [0] * 3])
  packed = np.asarray(model.apply({"params": params}, jnp.asarray(row), jnp.asarray(seg),
                                  jnp.asarray(pos)))
  alone_a = np.asarray(model.apply({"params": params}, jnp.asarray(a[None])))
  alone_b = np.asarray(model.apply({"params": params}, jnp.asarray(b[None])))
  np.testing.assert_allclose(packed[0, :9], alone_a[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 9:15], alone_b[0], atol=1e-5, rtol=1e-5)
  assert np.isfinite(packed).all()


def test_greedy_generation_with_kv_cache_equals_recomputation(qwen3_untied):
  path, _ = qwen3_untied
  model, params = penguin_jax.from_pretrained(str(path))
  prompt = jnp.asarray(np.random.RandomState(2).randint(0, 320, size=(2, 5)))
  new = np.asarray(greedy_generate(model, params, prompt, max_new_tokens=16))
  # Full recomputation, one token at a time, no cache. The row is padded to a fixed
  # length (one compilation); causal attention makes the padding invisible.
  forward = jax.jit(lambda ids: model.apply({"params": params}, ids))
  seq = np.zeros((2, 21), np.int64)
  seq[:, :5] = np.asarray(prompt)
  for n in range(5, 21):
    logits = np.asarray(forward(jnp.asarray(seq)))
    seq[:, n] = np.argmax(logits[:, n - 1], -1)
  np.testing.assert_array_equal(new, seq[:, 5:])


def test_left_padded_batch_and_streaming_equal_transformers_generate(qwen3_untied):
  """Prompts of different lengths in one left-padded batch: the scanned program and the
  streaming loop both give transformers' greedy `generate` (attention_mask, left pad)."""
  import torch
  import transformers
  from penguin_jax.decoding import stream_greedy
  path, _ = qwen3_untied
  model, params = penguin_jax.from_pretrained(str(path))
  rs = np.random.RandomState(7)
  lens, p, n_new = [7, 3, 5], 7, 10
  ids = np.zeros((3, p), np.int64)
  mask = np.zeros((3, p), np.int64)
  for r, n in enumerate(lens):
    ids[r, p - n:] = rs.randint(1, 320, n)
    mask[r, p - n:] = 1
  ref = transformers.Qwen3ForCausalLM.from_pretrained(str(path)).eval()
  with torch.no_grad():
    out = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                       max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0)
  expected = out[:, p:].numpy()
  new = np.asarray(greedy_generate(model, params, jnp.asarray(ids), max_new_tokens=n_new,
                                   prompt_mask=jnp.asarray(mask)))
  np.testing.assert_array_equal(new, expected)
  streamed = np.stack(list(stream_greedy(model, params, jnp.asarray(ids), max_new_tokens=n_new,
                                         prompt_mask=jnp.asarray(mask))), axis=1)
  np.testing.assert_array_equal(streamed, expected)
  # stop tokens: the loop ends at the step where the last row has produced one
  stop = {int(expected[r, 3 + r]) for r in range(3)}
  first = [min(i for i in range(n_new) if expected[r, i] in stop) for r in range(3)]
  steps = list(stream_greedy(model, params, jnp.asarray(ids), max_new_tokens=n_new,
                             prompt_mask=jnp.asarray(mask), stop_ids=sorted(stop)))
  assert len(steps) == max(first) + 1


@pytest.mark.parametrize("fixture", ["qwen3_tied", "qwen3_untied"])
def test_export_loads_in_transformers_with_same_logits(fixture, request, tmp_path):
  import transformers
  path, _ = request.getfixturevalue(fixture)
  model, params = penguin_jax.from_pretrained(str(path))
  params = jax.tree.map(lambda x: x * 1.01, params)  # not the source weights
  penguin_jax.save_pretrained(model, params, str(tmp_path))
  reloaded = transformers.Qwen3ForCausalLM.from_pretrained(str(tmp_path)).eval()
  ids = np.random.RandomState(3).randint(0, 320, size=(1, 12))
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
  np.testing.assert_allclose(_torch_logits(reloaded, ids), ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scan", [False, True])
def test_hf_roundtrip_is_bit_exact(qwen3_untied, tmp_path, scan):
  from safetensors.torch import load_file
  path, _ = qwen3_untied
  model, params = penguin_jax.from_pretrained(str(path), scan_layers=scan)
  penguin_jax.save_pretrained(model, params, str(tmp_path), max_shard_bytes=20_000)
  index = json.load(open(tmp_path / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) > 1  # sharded write exercised
  src = load_file(str(path / "model.safetensors"))
  out = {}
  for f in set(index["weight_map"].values()):
    out.update(load_file(str(tmp_path / f)))
  assert sorted(src) == sorted(out)
  for k in src:
    assert torch.equal(src[k], out[k]), k


def test_bf16_checkpoint_roundtrip_bit_exact(tmp_path):
  from safetensors.torch import load_file
  from conftest import tiny_qwen3_hf
  hf = tiny_qwen3_hf(tmp_path / "src", tied=False)
  hf.to(torch.bfloat16).save_pretrained(str(tmp_path / "src"), safe_serialization=True)
  model, params = penguin_jax.from_pretrained(str(tmp_path / "src"), dtype=jnp.bfloat16)
  assert params["norm"]["scale"].dtype == jnp.bfloat16
  penguin_jax.save_pretrained(model, params, str(tmp_path / "out"))
  a, b = load_file(str(tmp_path / "src/model.safetensors")), load_file(str(tmp_path / "out/model.safetensors"))
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
