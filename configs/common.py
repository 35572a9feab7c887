"""Shared training config (docs/design.md §3). Each stage file starts from `base()` and sets what
its stage changes; variants: `tiny` (2 CPU cores, embedded demo data, no downloads),
`2b` (Qwen3-1.7B LLM) and `8b` (Qwen3-8B LLM)."""
from __future__ import annotations

import ml_collections as mlc

from data_pipelines import pipeline, sample as sample_lib
from penguin_jax import lora, losses, settings

VARIANTS = ("tiny", "2b", "8b")


def model_sizes(variant: str) -> mlc.ConfigDict:
  """Encoder and LLM sizes (docs/design.md §1.1 / 1.2); tiny is laptop-sized."""
  m = mlc.ConfigDict()
  if variant == "tiny":
    m.encoder = dict(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=32)
    m.llm = dict(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=32, tie_word_embeddings=True)
    m.teacher = dict(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2)
  else:  # encoder from Qwen3-0.6B; LLM Qwen3-1.7B or Qwen3-8B; teacher VL3-SigLIP-NaViT
    m.encoder = dict(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                     num_kv_heads=8, head_dim=128)
    big = variant == "8b"
    m.llm = dict(hidden_size=4096 if big else 2048, intermediate_size=12288 if big else 6144,
                 num_layers=36 if big else 28, num_heads=32 if big else 16, num_kv_heads=8,
                 head_dim=128, tie_word_embeddings=not big)
    m.teacher = dict(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16)
  return m


def base(variant: str) -> mlc.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
  tiny = variant == "tiny"
  c = mlc.ConfigDict()
  c.variant = variant
  c.stage = ""
  c.seed = 0
  # JAX's persistent compilation cache (as MaxText's jax_cache_dir): a restarted or resumed
  # run, or the next stage with the same shapes, loads its compiled step instead of
  # compiling it again. "auto": $JAX_COMPILATION_CACHE_DIR, else .jax_cache beside the
  # workdir (its parent folder: one recipe's stages share it); a folder (local or gs://);
  # "" = off (penguin_jax/train/runtime.py).
  c.jax_cache_dir = "auto"
  c.total_steps = 30 if tiny else 100_000
  c.log_every = 5 if tiny else 50
  c.checkpoint_every = 20 if tiny else 1000
  c.keep_checkpoints = 3
  # A failed checkpoint write (disk full, permissions) is reported at once and training
  # goes on; this many failures in a row stop the run (exit 4, naming the step on disk).
  c.checkpoint_failures_before_stop = 3
  # Multi-process runs: a process not heard from for this long is lost, and the others stop
  # with one line (exit 6) instead of waiting in a collective (runtime.PeerWatch).
  c.lost_process_timeout_s = 60
  c.max_nonfinite_in_a_row = 5     # read on log / checkpoint steps (no per-step host sync)
  c.debug_nan_steps = ()           # testing: poison the batch of these steps with NaN
  # jax.profiler trace of the num_steps steps after step start_step, into WORKDIR/profile
  # (TensorBoard's profile plugin or Perfetto); num_steps = 0: off.
  c.profile = mlc.ConfigDict({"start_step": 5 if tiny else 100, "num_steps": 0})

  # Held-out loss during training: every `every` steps (0 = never), over the first
  # `batches` global batches of the split `split` of data.tfds_name (the demo corpus's:
  # "val"; several, comma-separated, each a split or NAME/CONFIG:SPLIT, are reported apart
  # as SOURCE/loss, ...), the same batches each time. Into metrics.jsonl and TensorBoard
  # as eval/loss, eval/lm_loss, ...; it never touches the training state or data order
  # (resume stays exact). `files`: unused, kept so that older run configs load.
  # Benchmarks during training (penguin_jax/benchmark.py), on the same steps: "NAME:DIR[:N]"
  # comma-separated (NAME: docvqa, chartqa, mmmu, ... of data_pipelines/benchmarks.py; DIR:
  # its released files, a local folder on every host; N: its first N questions, default
  # `benchmark_samples`), answered greedily, scored by the benchmark's metric, reported as
  # eval/NAME/METRIC. `batches` = 0: the benchmarks only, no held-out loss.
  c.eval = mlc.ConfigDict({"every": 0, "split": "val", "files": (), "batches": 2,
                           "benchmarks": "", "benchmark_samples": 32})

  c.model = model_sizes(variant)
  c.model.use_teacher = False
  c.model.dtype = "float32" if tiny else "bfloat16"       # compute; master weights fp32
  # Qwen3's 151,936 rows; tiny: the demo corpus's SentencePiece tokenizer (1,024 pieces).
  c.model.vocab_size = 1024 if tiny else 151_936
  c.model.attention = "auto"       # splash on TPU, cudnn on GPU, xla on CPU (layers.attention)
  c.model.scan_layers = not tiny
  # Gradient checkpointing (layers.REMAT_POLICIES). 8b: the saved layer inputs (4.5 GiB
  # per row for the LLM) go to host memory, or 8b does not fit v5e-64 (launch.aot).
  c.model.remat_policy = {"tiny": "none", "2b": "full", "8b": "offload"}[variant]
  # "auto": the least recompute that fits with 10% headroom, chosen by compiling
  # (penguin_jax/train/remat.py; docs/scale.md lists the policies).
  # Quantized training of the towers' linear layers (penguin_jax/quant.py, Qwix): "none",
  # "int8" (TPU v5e / v6e: twice the bf16 rate) or "fp8" (GPU).
  c.model.quant = "none"
  # Initialisation (not resuming): where each module comes from.
  c.init = mlc.ConfigDict()
  c.init.encoder_from_qwen3 = ""   # HF dir of a text-only Qwen3 (the paper's init); "" = random
  c.init.llm = ""                  # HF dir of the Qwen3 LLM; "" = random
  c.init.init_from = ""            # an earlier stage's workdir / checkpoint; overrides the above
  c.init.modules = ("vision_encoder", "vision_projector", "llm")  # what init_from loads
  # Stage 1a's frozen teacher (model.use_teacher): an HF folder of VL3-SigLIP-NaViT
  # (DAMO-NLP-SG/VL3-SigLIP-NaViT, or transformers' VideoLlama3VisionModel), or "random":
  # a random one of model.teacher's size written to WORKDIR/random_teacher and read back
  # (tiny; smoke tests). Saved with the run's checkpoints: a resume uses the same teacher.
  c.init.teacher = "random" if tiny else ""

  # Data: where it is (below), and two groups of settings declared as dataclasses, whose
  # fields become config fields of the same name (help: `python -m launch.train --help`):
  # what a sample becomes (data_pipelines/sample.py: SampleConfig) and how samples fill
  # rows (data_pipelines/pipeline.py: PipelineConfig).
  sample = (sample_lib.SampleConfig(seq_len=512, min_tokens=4, max_tokens=64) if tiny else
            sample_lib.STAGES)
  packing = (pipeline.PipelineConfig(max_patches=640, max_visual_tokens=384, packing_bins=16)
             if tiny else pipeline.PipelineConfig(max_patches=20480, max_visual_tokens=10240,
                                                  packing_bins=256, workers=8))
  c.data = mlc.ConfigDict({**settings.to_config(sample), **settings.to_config(packing)})
  c.data.demo = tiny               # generate + build the embedded demo corpus in the workdir
  c.data.demo_samples = 240
  c.data.demo_val_samples = 24     # the demo corpus's validation split (held-out loss)
  c.data.demo_dir = ""             # where the demo corpus goes; "" = WORKDIR/demo_data
  c.data.demo_text_only = False    # the corpus without its media (launch.demo's stage 0)
  # The training data: a TFDS dataset of the release's JSONL (data_pipelines/tfds_penguin.py;
  # `python -m data_pipelines.tfds_build --manual_dir=DATA --data_dir=DIR`), its split read
  # with tfds.data_source; the demo corpus is built as one ("penguin_vl/demo").
  c.data.tfds_name = ""            # e.g. "penguin_vl/release"
  c.data.tfds_data_dir = ""        # its --data_dir; "" = TFDS's default, ~/tensorflow_datasets
  c.data.split = "train"           # the training split (tfds_name, demo)
  # A weighted mixture instead of one split (data_pipelines/mixture.py): "SOURCE:WEIGHT,...",
  # SOURCE a split of tfds_name or NAME/CONFIG:SPLIT of another TFDS dataset, e.g.
  # "train:3,penguin_vl/video:train:1". Its data_dir: tfds_data_dirs ("NAME/CONFIG=DIR,...")
  # or tfds_data_dir. Samples per source go into metrics.jsonl (data_sources).
  c.data.mixture = ""
  c.data.tfds_data_dirs = ""
  # Mixtures by step range: ("0=MIXTURE", "START=MIXTURE", ...), e.g. the paper's SFT,
  # image and video, then video-centric: ("0=image:1,video:1", "20000=video:3,image:1").
  c.data.phases = ()
  c.data.tokenizer = ""            # dir with tokenizer.json; "" = offline Qwen3 (tiny: SentencePiece)
  c.data.global_batch = 4 if tiny else 128   # rows per optimizer step (docs/design.md §3: 128)
  # Rows each data-parallel chip processes at once; the step accumulates gradients over
  # global_batch / (rows_per_chip x data-parallel chips) micro-batches. 0 = all at once.
  c.data.rows_per_chip = 0 if tiny else 1
  # Data shards: each packs its own slice of the records into global_batch / shards rows.
  # 0 = one per process. Fix it (e.g. 2) to get the same global batches, and an exact
  # resume, whatever the number of processes (it must be a multiple of them).
  c.data.num_shards = 0
  # A checkpoint with another number of shards is an error naming both; True: resume it
  # anyway, the data starting again from a new shuffle (a warning; samples may repeat).
  c.data.reshard = False
  # A checkpoint's preprocessor_config.json (the file or its folder, e.g. a released
  # encoder's) wins over image_mean / image_std; the run records the values it used.
  c.data.preprocessor_config = ""

  c.optim = mlc.ConfigDict()
  c.optim.lr = mlc.ConfigDict({"vision_encoder": 1e-3, "vision_projector": 1e-3})
  c.optim.trainable = ("vision_encoder", "vision_projector")
  c.optim.warmup_frac = 0.03
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0
  # Adam's moments in host memory between steps (fetched for the update, written back:
  # 2 x their bytes over the host link per step; MaxText's optimizer_memory_host_offload).
  # Frees 8 bytes per trained parameter / chips of HBM; launch.aot counts the transfers.
  c.optim.offload_opt_state = False

  # The losses (penguin_jax/losses.py: LossConfig, one field per setting).
  c.loss = mlc.ConfigDict(settings.to_config(losses.LossConfig()))
  # LoRA / QLoRA (penguin_jax/lora.py: LoraConfig): rank 0 = off, the trainable modules
  # train in full; rank > 0: the modules of lora.modules train their adapters only.
  c.lora = mlc.ConfigDict(settings.to_config(lora.LoraConfig()))

  # tiny: plain data parallelism; real sizes: parameters, gradients and optimizer state
  # split over every chip (ZeRO-3). -1 = the remaining devices.
  c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1} if tiny else
                          {"data": 1, "fsdp": -1, "tensor": 1})
  if tiny:
    c.optim.lr = mlc.ConfigDict({k: v * 3 for k, v in c.optim.lr.items()})
  return c


# What a slice smaller than the paper's needs, applied by `launch.aot --topology=SLICE` and
# by `launch.train` on SLICE's chips (each says so in one line), except to the fields the
# command line sets: (stage, variant, slice) -> {field: value}. 8b stages 2 and 3 on 16 v5e
# chips: Adam's moments in host memory and tensor parallelism 2 (launch.aot: 13.97 GiB,
# 88.7% of usable HBM; without them 19.34 GiB). On v5e-64 the defaults are 12.5% faster
# (docs/scale.md), so they stay the defaults.
SLICE_SETTINGS = {
    (stage, "8b", "v5e-16"): {"optim.offload_opt_state": True, "mesh.tensor": 2}
    for stage in ("stage2", "stage3")}


def for_slice(c: mlc.ConfigDict, slice_name: str, explicit=()) -> dict:
  """Apply SLICE_SETTINGS of (c.stage, c.variant, slice_name) to `c`, leaving the fields in
  `explicit` (set on the command line) alone -> {field: value} applied."""
  applied = {}
  for field, value in SLICE_SETTINGS.get((c.stage, c.variant, slice_name), {}).items():
    if field in explicit:
      continue
    node, *path = field.split(".")
    target = c[node]
    for key in path[:-1]:
      target = target[key]
    target[path[-1]] = value
    applied[field] = value
  return applied

