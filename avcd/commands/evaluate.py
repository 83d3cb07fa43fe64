"""avcd eval --config=configs/X.py --workdir=DIR [--checkpoint=STEP|PATH] [--perturbations=SPEC]"""

import pathlib

from absl import app, flags
from ml_collections import config_flags

from avcd import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint",
  None,
  "A step of WORKDIR/checkpoints (default: the latest), or the path of an "
  "avcd checkpoint, e.g. one written by `avcd convert`.",
)
_PERTURBATIONS = flags.DEFINE_string(
  "perturbations",
  None,
  "Also score every split with its media degraded: NAME[:LEVEL...] joined by commas, or 'all' "
  "(names: h264_crf, h264_bitrate, downscale, blur, noise, fps, snr, aac, mp3, resample, "
  "edge_silence; data_pipelines/perturbations.py). Writes robustness.{json,md,png} per split.",
)
_PERTURBATION_SEED = flags.DEFINE_integer(
  "perturbation_seed", 0, "Seed of the random degradations (noise)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpoint = _CHECKPOINT.value
  if checkpoint is None or checkpoint.isdigit():  # a step of WORKDIR/checkpoints
    cli.existing_directory("workdir", _WORKDIR.value)
  elif not pathlib.Path(checkpoint).exists():
    raise app.UsageError(f"--checkpoint={checkpoint}: neither a step number nor an existing path")
  settings = None
  if _PERTURBATIONS.value is not None:
    from data_pipelines import perturbations  # pylint: disable=g-import-not-at-top

    try:
      settings = perturbations.parse(_PERTURBATIONS.value)
    except ValueError as e:
      raise app.UsageError(f"--perturbations: {e}") from e
  from avcd import config_checks  # pylint: disable=g-import-not-at-top
  from avcd.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from avcd.training import sharding  # pylint: disable=g-import-not-at-top

  config_checks.check(_CONFIG.value)
  sharding.initialize_distributed()
  try:
    evaluate.evaluate_checkpoint(
      _CONFIG.value,
      _WORKDIR.value,
      checkpoint,
      perturbations=settings,
      perturbation_seed=_PERTURBATION_SEED.value,
    )
  except FileNotFoundError as e:  # the step asked for, or any checkpoint at all, is not there
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  app.run(main)
