"""Fine-tune a released Penguin-VL (or any run or export) on your data: the paper's SFT
settings (docs/design.md §3, stage 3), from the checkpoint `init.init_from` names.

  python -m launch.train --config=configs/finetune.py:2b --workdir=W \\
      --config.init.init_from=Penguin-VL-2B --config.data.tfds_name=penguin_vl/mine \\
      [--config.lora.rank=64] [--config.lora.base_dtype=nf4]

init_from: a Hugging Face folder (the release's layout, a workdir-to-hf export), an orbax
checkpoint of `launch.convert hf-to-orbax`, or a training workdir; the model's sizes, the
tokenizer and the image normalisation come from it (docs/finetune.md). Everything trains
at 1e-5 (tiny: 3e-4); with `lora.rank` > 0 the LLM trains LoRA adapters on its frozen base
(the release's --lora_enable: r 64, alpha 16, dropout 0.05), and only the adapters train,
as in the release (`lora.train_in_full` adds whole modules, e.g. vision_projector);
`lora.base_dtype` int8 / nf4 is QLoRA (the release's --bits 8 / 4).
"""
from configs import stage3


def get_config(arg: str = "2b"):
  c = stage3.get_config(arg)              # the paper's SFT: stage 3's settings
  c.stage = "finetune"
  c.lora.rank = 0                         # --config.lora.rank=64: the release's LoRA
  return c
