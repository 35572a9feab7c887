"""Penguin-VL end to end: release key names, HF round trip, and the forward against an
independent PyTorch composition (our torch encoder + projector + transformers Qwen3)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import penguin_jax
from penguin_jax import hf, patches as P, registry
from penguin_jax.model_config import EncoderConfig, Qwen3Config, VLMConfig
from penguin_jax.vlm import PenguinVL
from torch_reference import TorchPenguinEncoder, encoder_hf_config

IMG = 300  # image token id of this tiny vocabulary


def tiny_vlm_config(**runtime):
  llm = Qwen3Config(vocab_size=320, hidden_size=48, intermediate_size=96, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=True)
  enc = EncoderConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16)
  return VLMConfig(llm=llm, encoder=enc, image_token_index=IMG,
                   teacher_hidden_size=32).replace_runtime(**runtime)


@pytest.fixture(scope="module")
def saved_vlm(tmp_path_factory):
  path = tmp_path_factory.mktemp("vlm")
  cfg = tiny_vlm_config()
  model = PenguinVL(cfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  # make norms non-trivial so a mix-up shows
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 1.3 if "scale" in jax.tree_util.keystr(p) else x, params)
  penguin_jax.save_pretrained(model, params, str(path))
  return path, model, params


def test_saved_vlm_uses_release_key_names(saved_vlm):
  from safetensors.torch import load_file
  path, _, _ = saved_vlm
  keys = set(load_file(str(path / "model.safetensors")))
  for k in ["model.embed_tokens.weight", "model.layers.1.self_attn.k_norm.weight",
            "model.norm.weight",
            "model.vision_encoder.vision_encoder.embeddings.patch_embedding.weight",
            "model.vision_encoder.vision_encoder.encoder.layers.0.mlp.up_proj.weight",
            "model.vision_encoder.vision_encoder.encoder.norm.weight",
            "model.vision_projector.readout.0.weight", "model.vision_projector.readout.2.bias",
            "vision_distill_layer.weight"]:
    assert k in keys, k
  assert "lm_head.weight" not in keys  # tied
  cfg = json.load(open(path / "config.json"))
  assert cfg["model_type"] == "penguinvl_qwen3" and cfg["image_token_index"] == IMG
  enc_cfg = json.load(open(path / "penguin_encoder" / "config.json"))
  assert enc_cfg["model_type"] == "penguinvl_vision_encoder" and enc_cfg["hidden_size"] == 64


@pytest.mark.parametrize("scan", [False, True])
def test_vlm_roundtrip_bit_exact(saved_vlm, tmp_path, scan):
  from safetensors.torch import load_file
  path, _, params = saved_vlm
  model, loaded = penguin_jax.from_pretrained(str(path), scan_layers=scan)
  assert model.cfg.teacher_hidden_size == 32 and model.cfg.encoder.hidden_size == 64
  penguin_jax.save_pretrained(model, loaded, str(tmp_path))
  a, b = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def _torch_vlm(path):
  from safetensors.torch import load_file
  sd = load_file(str(path / "model.safetensors"))
  cfg = json.load(open(path / "config.json"))
  enc = TorchPenguinEncoder(encoder_hf_config())
  pre = "model.vision_encoder.vision_encoder."
  enc.load_state_dict({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)})
  proj = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.GELU(), torch.nn.Linear(48, 48))
  proj.load_state_dict({k[len("model.vision_projector.readout."):]: v for k, v in sd.items()
                        if k.startswith("model.vision_projector.readout.")})
  qcfg = transformers.Qwen3Config(
      vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
      rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"])
  llm = transformers.Qwen3ForCausalLM(qcfg).eval()
  llm_sd = {k: v for k, v in sd.items() if not k.startswith(("model.vision", "vision_"))}
  llm_sd["lm_head.weight"] = llm_sd["model.embed_tokens.weight"]
  llm.load_state_dict(llm_sd)
  return enc, proj, llm


def test_vlm_forward_matches_torch_composition(saved_vlm):
  path, model, params = saved_vlm
  enc, proj, llm = _torch_vlm(path)
  rs = np.random.RandomState(0)
  # Row 0: text, a 4x4 image (merge 1, 16 tokens), text. Row 1: a 2-frame video (merge 2).
  rows = [([rs.randint(0, 299, 3), [IMG] * 16, rs.randint(0, 299, 5)], [(1, 4, 4)], [1]),
          ([rs.randint(0, 299, 2), [IMG] * 8, rs.randint(0, 299, 14)], [(2, 4, 4)], [2])]
  seq, n_patch, n_tok = 24, 32, 16
  batch = {k: [] for k in ["input_ids", "patches", "patch_segment_ids", "patch_positions",
                           "merge_index", "merge_weight", "visual_positions"]}
  ref_logits = []
  for parts, grids, merges in rows:
    ids = np.concatenate([np.asarray(p, np.int64) for p in parts])
    npatch = sum(int(np.prod(g)) for g in grids)
    pix = rs.randn(npatch, 588).astype(np.float32)
    lay = P.pack_items(grids, merges, max_patches=n_patch, max_tokens=n_tok)
    vis_pos = np.full(n_tok, seq)
    img_pos = np.nonzero(ids == IMG)[0]
    vis_pos[:len(img_pos)] = img_pos
    batch["input_ids"].append(ids)
    batch["patches"].append(np.pad(pix, ((0, n_patch - npatch), (0, 0))))
    for k in ["patch_segment_ids", "patch_positions", "merge_index", "merge_weight"]:
      batch[k].append(lay[k])
    batch["visual_positions"].append(vis_pos)
    with torch.no_grad():  # the reference: embeddings with features at image positions
      feats = proj(enc(torch.tensor(pix), grids, merges))
      t_ids = torch.tensor(ids)[None]
      emb = llm.model.embed_tokens(t_ids).clone()
      emb[t_ids == IMG] = feats
      ref_logits.append(llm(inputs_embeds=emb).logits[0].numpy())
  batch = {k: jnp.asarray(np.stack(v)) for k, v in batch.items()}
  ours = np.asarray(model.apply({"params": params}, **batch))
  np.testing.assert_allclose(ours, np.stack(ref_logits), atol=1e-4, rtol=1e-4)


def test_vlm_greedy_generation_from_multimodal_prompt(saved_vlm):
  """Prefill with visual features written in, then KV-cache decoding, equals greedy
  decoding by full recomputation of the VLM."""
  from penguin_jax.decoding import greedy_generate
  _, model, params = saved_vlm
  rs = np.random.RandomState(5)
  n_new, p_len = 6, 10
  ids = np.concatenate([rs.randint(0, 299, 2), [IMG] * 4, rs.randint(0, 299, 4)])[None]
  lay = P.pack_items([(1, 2, 2)], [1])
  vis = {"patches": jnp.asarray(rs.randn(1, 4, 588).astype(np.float32)),
         "patch_segment_ids": jnp.asarray(lay["patch_segment_ids"])[None],
         "patch_positions": jnp.asarray(lay["patch_positions"])[None],
         "merge_index": jnp.asarray(lay["merge_index"])[None],
         "merge_weight": jnp.asarray(lay["merge_weight"])[None],
         "visual_positions": jnp.asarray([[2, 3, 4, 5]])}
  embeds, _ = model.apply({"params": params}, jnp.asarray(ids), **vis,
                          method=PenguinVL.embed_multimodal)
  new = np.asarray(greedy_generate(registry.build_model(model.cfg.llm),
                                   params["llm"], prompt_embeds=embeds, max_new_tokens=n_new))
  seq = np.zeros((1, p_len + n_new), np.int64)
  seq[:, :p_len] = ids
  fwd = jax.jit(lambda s: model.apply({"params": params}, s, **vis))
  for n in range(p_len, p_len + n_new):
    seq[:, n] = np.argmax(np.asarray(fwd(jnp.asarray(seq)))[:, n - 1], -1)
  np.testing.assert_array_equal(new, seq[:, p_len:])


def test_splash_backend_in_the_model_equals_xla(saved_vlm):
  path, _, _ = saved_vlm
  ids = jnp.asarray(np.random.RandomState(6).randint(0, 299, (1, 128)))
  seg = jnp.asarray([[1] * 70 + [2] * 50 + [0] * 8])
  pos = jnp.asarray([list(range(70)) + list(range(50)) + [0] * 8])
  outs = []
  for impl in ["xla", "splash"]:
    model, params = penguin_jax.from_pretrained(str(path), attention=impl, splash_block_size=128)
    outs.append(np.asarray(model.apply({"params": params}, ids, seg, pos)))
  np.testing.assert_allclose(outs[1][0, :120], outs[0][0, :120], atol=1e-4, rtol=1e-4)
