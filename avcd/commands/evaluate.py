"""avcd eval --config=configs/X.py --workdir=DIR [--checkpoint=STEP|PATH] [--perturbations=SPEC]"""

import pathlib

from absl import app, flags
from ml_collections import config_flags

from avcd.commands import arguments

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
  "edge_silence; data_pipelines/reading/perturbations.py). Writes robustness.{json,md,png} per "
  "split.",
)
_PERTURBATION_SEED = flags.DEFINE_integer(
  "perturbation_seed", 0, "Seed of the random degradations (noise)."
)
flags.mark_flags_as_required(["config", "workdir"])


def evaluate_checkpoint(
  config,
  workdir: str,
  checkpoint: str | None = None,
  *,
  perturbations: list | None = None,
  perturbation_seed: int = 0,
) -> dict[str, dict]:
  """`avcd eval`: restores a student, scores the config's splits, prints the tables.

  `checkpoint`: a step of WORKDIR/checkpoints (default: the newest intact one), or the path of any
  avcd checkpoint (a training run's, or a model checkpoint from `avcd convert`); read-only either
  way. The checkpoint is found and verified before the corpus is prepared. `perturbations`
  (data_pipelines.reading.perturbations.Setting list): also score every split under each, seeded by
  `perturbation_seed` (avcd.evaluation.robustness).
  """
  # Imported here: `avcd eval --help` stays instant.
  import jax  # pylint: disable=g-import-not-at-top

  from avcd import checkpoints, config_checks  # pylint: disable=g-import-not-at-top
  from avcd.core import inference, sharding  # pylint: disable=g-import-not-at-top
  from avcd.evaluation import (  # pylint: disable=g-import-not-at-top
    calibration as calibration_lib,
    evaluate,
    robustness,
  )
  from data_pipelines.building import corpus_setup  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir).absolute()
  if checkpoint is None or str(checkpoint).isdigit():
    path, step = workdir / "checkpoints", None if checkpoint is None else int(checkpoint)
  else:
    path, step = pathlib.Path(checkpoint), None
  mesh = sharding.make_mesh(config.mesh)
  student = checkpoints.restore_student(path, step, config=config, mesh=mesh)
  config = corpus_setup.prepare_corpus(config, workdir)
  config_checks.check_splits(config)
  predict_fn = inference.make_predict_step(student.graphdef, student.shardings, mesh)
  model = (predict_fn, student.params, student.batch_stats, config, mesh, workdir)
  results = evaluate.evaluate_splits(*model, source=student.source)
  source = student.source
  if jax.process_index() == 0:
    print(
      evaluate.summary(results, workdir, f"checkpoint {source['checkpoint_dir']}/{source['step']}")
    )
  if perturbations:
    fitted = next(iter(results.values()))["calibration"]["map"]
    robust = robustness.evaluate_robustness(
      *model,
      perturbations,
      seed=perturbation_seed,
      calibration=None if fitted is None else calibration_lib.Calibration(**fitted),
    )
    if jax.process_index() == 0:
      for name, result in robust.items():
        print("\n" + robustness.markdown(result))
        print(f"written to {workdir / 'eval' / name}: {', '.join(robustness.FILES)}")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpoint = _CHECKPOINT.value
  if checkpoint is None or checkpoint.isdigit():  # a step of WORKDIR/checkpoints
    arguments.existing_directory("workdir", _WORKDIR.value)
  elif not pathlib.Path(checkpoint).exists():
    raise app.UsageError(f"--checkpoint={checkpoint}: neither a step number nor an existing path")
  settings = None
  if _PERTURBATIONS.value is not None:
    from data_pipelines.reading import perturbations  # pylint: disable=g-import-not-at-top

    try:
      settings = perturbations.parse(_PERTURBATIONS.value)
    except ValueError as e:
      raise app.UsageError(f"--perturbations: {e}") from e
  from avcd import config_checks  # pylint: disable=g-import-not-at-top
  from avcd.core import sharding  # pylint: disable=g-import-not-at-top

  config_checks.check(_CONFIG.value)
  sharding.initialize_distributed()
  config_checks.check_mesh(_CONFIG.value)
  try:
    evaluate_checkpoint(
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
