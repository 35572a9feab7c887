"""`tfds build` for the `penguin_vl` dataset, without TensorFlow.

  python -m data_pipelines.tfds_build --manual_dir=DATA --data_dir=DIR \\
      [--config=release | --config='{"name": "mine", "max_length": 8192}'] [any `tfds build` flag]

is `tfds build data_pipelines/tfds_penguin.py ...`: TFDS's own `build` command (its flags,
its builder lookup by path, its JSON `--config`), started without the `tfds` entry point,
which in tensorflow-datasets 4.9.10 imports TensorFlow at start (for its
`convert_format` command) and so fails where TensorFlow is not installed.
"""
import os
import sys

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

DATASET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfds_penguin.py")


def main(argv=None) -> None:
  parse = cli_utils.make_flags_parser(build.Args, description=__doc__)
  argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
  if not any(a.endswith(".py") or not a.startswith("-") for a in argv[1:]):
    argv.insert(1, DATASET)          # the dataset to build: penguin_vl, unless named
  app.run(lambda args: args.execute(), argv=argv, flags_parser=parse)


if __name__ == "__main__":
  main()
