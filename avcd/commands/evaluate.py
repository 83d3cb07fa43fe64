"""avcd eval --config=configs/X.py --workdir=DIR [--checkpoint=STEP|PATH]"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A step of WORKDIR/checkpoints (default: the latest), or the path of an "
    "avcd checkpoint, e.g. one written by `avcd convert`.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from avcd import evaluate, sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed()
  evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)


if __name__ == "__main__":
  app.run(main)
