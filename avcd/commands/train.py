"""avcd train --config=configs/X.py [--config.field=value ...] --workdir=DIR"""

import pathlib

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
_START_OVER = flags.DEFINE_bool(
  "start_over",
  False,
  "Train from step 0 although every checkpoint in WORKDIR/checkpoints was "
  "found corrupt and moved aside (STEP.corrupt-*); without it such a workdir is refused.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top

  from avcd import train  # pylint: disable=g-import-not-at-top
  from avcd.core import sharding  # pylint: disable=g-import-not-at-top
  from avcd.evaluation import evaluate  # pylint: disable=g-import-not-at-top

  sharding.initialize_distributed()
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, start_over=_START_OVER.value)
  if results and jax.process_index() == 0:
    workdir = pathlib.Path(_WORKDIR.value).absolute()
    print(evaluate.summary(results, workdir, f"the final step in {workdir / 'checkpoints'}"))
    print(f"\nmetrics.jsonl and tensorboard/ in {workdir}: tensorboard --logdir={workdir}")


if __name__ == "__main__":
  app.run(main)
