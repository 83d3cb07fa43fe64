"""avcd train-teacher --config=configs/X.py [--config.field=value ...] --workdir=DIR

Writes the teachers' model checkpoint, report.json and soft_targets.png into DIR; point a student
run at it with --config.teachers.checkpoint=DIR. A synthetic corpus is generated beside DIR, in
DIR/../data (unless --config.data.data_dir says where): a student run whose workdir is DIR/..
(the demo's layout, WORKDIR/teachers) then finds the same corpus.
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory for the teachers.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from avcd import config_checks  # pylint: disable=g-import-not-at-top
  from avcd.core import sharding  # pylint: disable=g-import-not-at-top
  from avcd.teachers import training as teacher_training  # pylint: disable=g-import-not-at-top

  config_checks.check(_CONFIG.value)
  sharding.initialize_distributed()
  teacher_training.train_teachers(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
