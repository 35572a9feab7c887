"""An independent PyTorch Penguin-Encoder for parity tests, written from docs/design.md §1.2 on
top of transformers' Qwen3 layers (it shares no code with penguin_jax)."""
import json
import os

import torch
import torch.nn.functional as F
import transformers
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm


def encoder_hf_config(**kw):
  c = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, patch_size=14, num_channels=3,
           rms_norm_eps=1e-6, rope_theta=1_000_000.0)
  c.update(kw)
  return c


class _Embeddings(torch.nn.Module):
  def __init__(self, c):
    super().__init__()
    self.patch_embedding = torch.nn.Conv2d(c["num_channels"], c["hidden_size"],
                                           c["patch_size"], c["patch_size"])


class _Stack(torch.nn.Module):
  def __init__(self, qcfg, n):
    super().__init__()
    self.layers = torch.nn.ModuleList(Qwen3DecoderLayer(qcfg, i) for i in range(n))
    self.norm = Qwen3RMSNorm(qcfg.hidden_size, eps=qcfg.rms_norm_eps)


class TorchPenguinEncoder(torch.nn.Module):
  """Module attributes give the release's checkpoint key names."""

  def __init__(self, c, seed=0):
    super().__init__()
    self.c = c
    qcfg = transformers.Qwen3Config(
        vocab_size=16, hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"])
    qcfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    self.embeddings = _Embeddings(c)
    self.encoder = _Stack(qcfg, c["num_hidden_layers"])
    with torch.no_grad():
      for n, p in self.named_parameters():
        if "norm" in n:
          p.uniform_(0.5, 1.5)
        elif p.ndim >= 2:
          p.normal_(0, 0.05)
        else:
          p.normal_(0, 0.02)
    self.eval()

  def save(self, path):
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in self.state_dict().items()},
              os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump({"model_type": "penguinvl_vision_encoder", **self.c}, f)

  @staticmethod
  def positions(t, h, w, m):
    """(row, col) per patch in merge-block order (t, h/m, w/m, m, m)."""
    r = torch.arange(h)[:, None].expand(h, w)
    c = torch.arange(w)[None, :].expand(h, w)
    blk = lambda a: a.reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).reshape(-1)
    return torch.stack([blk(r), blk(c)], -1).repeat(t, 1)

  @torch.no_grad()
  def forward(self, pixel_values, grid_sizes, merge_sizes):
    c = self.c
    d, theta = c["head_dim"], c["rope_theta"]
    ps = c["patch_size"]
    x = self.embeddings.patch_embedding(pixel_values.view(-1, c["num_channels"], ps, ps))
    x = x.view(-1, c["hidden_size"])[None]                              # [1, N, e]
    pos = torch.cat([self.positions(t, h, w, m) for (t, h, w), m in zip(grid_sizes, merge_sizes)])
    f = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.cat([pos[:, :1].float() * f, pos[:, 1:].float() * f], -1)  # row | col halves
    cos, sin = ang.cos()[None], ang.sin()[None]
    # Block-diagonal mask: one segment per frame.
    seg = torch.cat([torch.arange(t).repeat_interleave(h * w) + 1000 * i
                     for i, ((t, h, w), _) in enumerate(zip(grid_sizes, merge_sizes))])
    mask = torch.where(seg[:, None] == seg[None, :], 0.0, torch.finfo(torch.float32).min)
    mask = mask[None, None]
    for layer in self.encoder.layers:
      out = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
      x = out[0] if isinstance(out, tuple) else out
    x = self.encoder.norm(x)[0]
    outs, start = [], 0
    for (t, h, w), m in zip(grid_sizes, merge_sizes):
      n = t * h * w
      y = x[start:start + n].view(t, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5)
      y = y.reshape(t, h, w, -1).permute(0, 3, 1, 2)
      y = F.interpolate(y, size=(h // m, w // m), mode="bilinear", align_corners=False)
      outs.append(y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]))
      start += n
    return torch.cat(outs)
