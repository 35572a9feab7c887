"""Model configurations (docs/design.md §1), read from and written to HF `config.json`.

Three frozen dataclasses, one per module of the paper:

* `Qwen3Config`   the LLM (decoder), `model_type: qwen3`.
* `EncoderConfig` the Penguin-Encoder (Qwen3 layers, bidirectional, 2D RoPE),
                  `model_type: penguinvl_vision_encoder`.
* `VLMConfig`     Penguin-VL = encoder + projector + LLM, `model_type: penguinvl_qwen3`.
* `TeacherConfig` VL3-SigLIP-NaViT, the frozen teacher of stage 1a (docs/design.md §1.6),
                  `model_type: video_llama_3_vision` (transformers) or
                  `videollama3_vision_encoder` (the hub checkpoint's remote code).

Besides the checkpoint's sizes, each config carries *runtime* fields (dtypes, attention
backend, layer scan, remat policy). They never go to `config.json` and can be changed with
`dataclasses.replace` or the `**overrides` of `from_hf_dict`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

# Runtime fields: how to run the model, not what the model is.
_RUNTIME_FIELDS = ("dtype", "param_dtype", "attention", "scan_layers", "remat_policy",
                   "splash_block_size", "lora")

# model_type strings (docs/design.md §1.5).
LLM_MODEL_TYPE = "qwen3"
ENCODER_MODEL_TYPE = "penguinvl_vision_encoder"
VLM_MODEL_TYPE = "penguinvl_qwen3"
TEACHER_MODEL_TYPES = ("video_llama_3_vision", "videollama3_vision_encoder")  # docs/design.md §1.6


def _rope_theta(d: dict, default: float) -> float:
  """Older checkpoints write a top-level `rope_theta`; newer transformers write
  `rope_parameters` (docs/design.md §1.2, last bullet). Read both."""
  if d.get("rope_theta") is not None:
    return float(d["rope_theta"])
  rp = d.get("rope_parameters") or {}
  if isinstance(rp, dict) and rp.get("rope_theta") is not None:
    return float(rp["rope_theta"])
  return default


def _dtype_name(dt) -> str:
  return jnp.dtype(dt).name


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes shared by the LLM and the encoder (both are stacks of Qwen3 layers)."""
  hidden_size: int = 1024
  intermediate_size: int = 3072
  num_layers: int = 28
  num_heads: int = 16
  num_kv_heads: int = 8
  head_dim: int = 128
  rms_norm_eps: float = 1e-6          # docs/design.md §1.1
  rope_theta: float = 1_000_000.0     # docs/design.md §1.1
  # --- runtime (not saved) ---
  dtype: Any = jnp.float32            # activation / compute dtype
  param_dtype: Any = jnp.float32      # master weights
  attention: str = "auto"             # "auto" | "xla" | "cudnn" | "splash" (layers.attention)
  scan_layers: bool = False           # nn.scan over layers (params get a leading layer axis)
  remat_policy: str = "none"          # "none" | "full" | "dots" | "dots_no_batch" (layers.REMAT_POLICIES)
  splash_block_size: int = 512        # splash attention block size (TPU); must divide seq len
  lora: Any = None                    # lora.LoraSpec of the q/k/v/o, gate/up/down layers (LoRA)

  def runtime(self) -> dict:
    return {k: getattr(self, k) for k in _RUNTIME_FIELDS}

  def replace_runtime(self, **runtime) -> "TransformerConfig":
    """Set runtime fields (dtype, attention, ...)."""
    return dataclasses.replace(self, **runtime)

  def _hf_common(self) -> dict:
    return {
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
    }

  @staticmethod
  def _common_from_hf(d: dict, default_theta: float) -> dict:
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    head_dim = d.get("head_dim") or hidden // heads
    return dict(
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(d, default_theta),
    )


@dataclasses.dataclass(frozen=True)
class Qwen3Config(TransformerConfig):
  """Qwen3 decoder (docs/design.md §1.1). Defaults: Qwen3-0.6B."""
  vocab_size: int = 151_936
  tie_word_embeddings: bool = True
  max_position_embeddings: int = 40_960

  def to_hf_dict(self) -> dict:
    d = self._hf_common()
    d.update(
        model_type=LLM_MODEL_TYPE,
        architectures=["Qwen3ForCausalLM"],
        vocab_size=self.vocab_size,
        tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings,
        torch_dtype=_dtype_name(self.param_dtype),
        use_cache=True,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    return d

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "Qwen3Config":
    kw = cls._common_from_hf(d, 1_000_000.0)
    kw.update(
        vocab_size=int(d["vocab_size"]),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings", 40_960)),
    )
    kw.update(overrides)
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class EncoderConfig(TransformerConfig):
  """Penguin-Encoder (docs/design.md §1.2). Defaults: the Qwen3-0.6B sizes it starts from."""
  patch_size: int = 14
  num_channels: int = 3

  @property
  def patch_dim(self) -> int:
    return self.num_channels * self.patch_size * self.patch_size

  def to_hf_dict(self) -> dict:
    # The release's config class has defaults that are not Qwen3-0.6B's sizes, so every
    # size is spelled out (docs/design.md §1.2).
    d = self._hf_common()
    d.update(
        model_type=ENCODER_MODEL_TYPE,
        architectures=["PenguinVLVisionEncoderModel"],
        patch_size=self.patch_size,
        num_channels=self.num_channels,
        layer_norm_eps=self.rms_norm_eps,  # unused by the release; rms_norm_eps is used
        torch_dtype=_dtype_name(self.param_dtype),
    )
    return d

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "EncoderConfig":
    kw = cls._common_from_hf(d, 1_000_000.0)
    kw.update(patch_size=int(d.get("patch_size", 14)),
              num_channels=int(d.get("num_channels", 3)))
    kw.update(overrides)
    return cls(**kw)

  @classmethod
  def from_llm(cls, llm: Qwen3Config, patch_size: int = 14) -> "EncoderConfig":
    """The paper's key idea: an encoder with the sizes of a text-only Qwen3."""
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    return cls(**{k: getattr(llm, k) for k in fields}, patch_size=patch_size)


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """VL3-SigLIP-NaViT (docs/design.md §1.6). Defaults: the released teacher's sizes."""
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  patch_size: int = 14
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  # --- runtime (not saved) ---
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = "auto"           # layers.attention backend
  scan_layers: bool = False         # blocks stacked under layers/layers (teacher.py)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def replace_runtime(self, **runtime) -> "TeacherConfig":
    """Set the runtime fields the teacher has (it has no remat policy: it is frozen)."""
    names = {f.name for f in dataclasses.fields(self)}
    return dataclasses.replace(self, **{k: v for k, v in runtime.items() if k in names})

  @property
  def patch_dim(self) -> int:
    return self.num_channels * self.patch_size * self.patch_size

  def to_hf_dict(self) -> dict:
    """transformers' native `VideoLlama3VisionConfig`."""
    return {
        "model_type": TEACHER_MODEL_TYPES[0],
        "architectures": ["VideoLlama3VisionModel"],
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_channels": self.num_channels,
        "patch_size": self.patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": self.layer_norm_eps,
        "attention_dropout": 0.0,
        "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "axial"},
        "torch_dtype": _dtype_name(self.param_dtype),
    }

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "TeacherConfig":
    """Either layout: the native config or the hub's remote-code one (no rope field:
    theta 1e4, docs/design.md §1.6)."""
    if d.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
      raise ValueError(f"teacher hidden_act {d['hidden_act']!r}; VL3-SigLIP-NaViT uses "
                       "gelu_pytorch_tanh")
    kw = dict(hidden_size=int(d["hidden_size"]), intermediate_size=int(d["intermediate_size"]),
              num_layers=int(d["num_hidden_layers"]), num_heads=int(d["num_attention_heads"]),
              patch_size=int(d.get("patch_size", 14)), num_channels=int(d.get("num_channels", 3)),
              layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)),
              rope_theta=_rope_theta(d, 10_000.0))
    kw.update(overrides)
    return cls(**kw)


# docs/design.md §1.5 / 1.6: the names the release writes for the encoder and the stage-1 teacher.
RELEASE_ENCODER = "tencent/Penguin-Encoder"
RELEASE_TEACHER = "DAMO-NLP-SG/VL3-SigLIP-NaViT"
ENCODER_DIRNAME = "penguin_encoder"   # our exports' encoder folder; the release needs "penguin"


@dataclasses.dataclass(frozen=True)
class VLMConfig:
  """Penguin-VL: encoder -> merge -> projector -> Qwen3 (docs/design.md §1)."""
  llm: Qwen3Config = Qwen3Config()
  encoder: EncoderConfig = EncoderConfig()
  projector_type: str = "mlp2x_gelu"   # docs/design.md §1.3
  image_token_index: int = 151_669     # docs/design.md §1.1: `<image>`, first free id
  # Width of the frozen teacher for the reconstruction losses (docs/design.md §1.4); None: no
  # distill head. 1152 for the release's VL3-SigLIP-NaViT.
  teacher_hidden_size: Optional[int] = None
  # The release's `vision_encoder_teacher`: the teacher's hub id or folder (stage 1).
  teacher_name: str = RELEASE_TEACHER
  # --- runtime (not saved) ---
  projector_lora: Any = None           # lora.LoraSpec of the projector's two linears (LoRA)

  def replace_runtime(self, **runtime) -> "VLMConfig":
    """Set runtime fields (dtype, attention, ...) on both towers at once."""
    return dataclasses.replace(self, llm=dataclasses.replace(self.llm, **runtime),
                               encoder=dataclasses.replace(self.encoder, **runtime))

  def to_hf_dict(self, encoder_ref: str = ENCODER_DIRNAME) -> dict:
    """The release's config.json (docs/design.md §1.5). `encoder_ref` is what the release resolves
    to the encoder's folder (a hub id, or a path it reads from the working directory):
    `mm_vision_encoder` and `vision_encoder` both name it. The encoder's own config is
    also kept inline (`vision_encoder_config`, ignored by the release) so that the folder
    alone describes the model."""
    d = self.llm.to_hf_dict()
    d.update(
        model_type=VLM_MODEL_TYPE,
        architectures=["PenguinVLQwen3ForCausalLM"],
        image_token_index=self.image_token_index,
        vision_projector_type=self.projector_type,
        vision_hidden_size=self.encoder.hidden_size,
        mm_vision_encoder=encoder_ref,     # read first; its presence makes the release build the encoder
        vision_encoder=encoder_ref,
        mm_vision_select_layer=-1,
        mm_vision_select_feature="patch",
        vision_encoder_config=self.encoder.to_hf_dict(),
        use_reconstruct=self.teacher_hidden_size is not None,
    )
    if self.teacher_hidden_size is not None:   # the release requires a teacher to build
      d.update(vision_encoder_teacher=self.teacher_name,
               teacher_hidden_size=self.teacher_hidden_size)
    return d

  @classmethod
  def from_hf_dict(cls, d: dict, encoder_dict: Optional[dict] = None,
                   teacher_hidden_size: Optional[int] = None, **runtime) -> "VLMConfig":
    """`encoder_dict`: the encoder folder's config.json (else the inline copy).
    `teacher_hidden_size`: the distill head's width when the config says
    `use_reconstruct` without one (released stage-1 configs; hf.py reads it from the
    tensors)."""
    enc = encoder_dict if encoder_dict is not None else d.get("vision_encoder_config")
    if enc is None:
      raise ValueError(
          "penguinvl_qwen3 config.json has no `vision_encoder_config` and no encoder "
          f"config.json was found for {d.get('mm_vision_encoder') or d.get('vision_encoder')!r}")
    width = d.get("teacher_hidden_size") or teacher_hidden_size
    return cls(
        llm=Qwen3Config.from_hf_dict(d, **runtime),
        encoder=EncoderConfig.from_hf_dict(enc, **runtime),
        projector_type=d.get("vision_projector_type", "mlp2x_gelu"),
        image_token_index=int(d.get("image_token_index", 151_669)),
        teacher_hidden_size=int(width) if d.get("use_reconstruct") and width else None,
        teacher_name=d.get("vision_encoder_teacher") or RELEASE_TEACHER,
    )


CONFIG_OF_MODEL_TYPE = {LLM_MODEL_TYPE: Qwen3Config, ENCODER_MODEL_TYPE: EncoderConfig,
                        VLM_MODEL_TYPE: VLMConfig,
                        **{t: TeacherConfig for t in TEACHER_MODEL_TYPES}}


def config_from_hf_dict(d: dict, encoder_dict: Optional[dict] = None,
                        teacher_hidden_size: Optional[int] = None, **runtime):
  """The config for a `config.json` dict, by its `model_type`; `encoder_dict` and
  `teacher_hidden_size` are the VLM's (see `VLMConfig.from_hf_dict`)."""
  cls = CONFIG_OF_MODEL_TYPE.get(d.get("model_type"))
  if cls is None:
    raise ValueError(f"unknown model_type {d.get('model_type')!r}; expected one of "
                     + ", ".join(repr(t) for t in CONFIG_OF_MODEL_TYPE))
  vlm = dict(encoder_dict=encoder_dict, teacher_hidden_size=teacher_hidden_size)
  return cls.from_hf_dict(d, **(vlm if cls is VLMConfig else {})).replace_runtime(**runtime)


# The paper's sizes (docs/design.md §1.1).
QWEN3_0_6B = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                         num_kv_heads=8, head_dim=128, tie_word_embeddings=True)
QWEN3_1_7B = Qwen3Config(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                         num_kv_heads=8, head_dim=128, tie_word_embeddings=True)
QWEN3_8B = Qwen3Config(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32,
                       num_kv_heads=8, head_dim=128, tie_word_embeddings=False)
