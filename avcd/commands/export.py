"""avcd export: a checkpoint's student as a TensorFlow SavedModel.

  avcd export --workdir=DIR [--checkpoint=STEP] --output=DIR [--platforms=cpu,cuda]

--workdir is a training run's directory (its checkpoints/ are read) or a model checkpoint (a
`student` item, e.g. from `avcd convert`); the run's config is read from the checkpoint.
docs/serving.md describes the signature.
"""

import pathlib

from absl import app, flags

from avcd.commands import arguments

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax2tf lowers for

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's directory, or a model checkpoint directory."
)
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to export (default: the latest).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the SavedModel to.")
_PLATFORMS = flags.DEFINE_list(
  "platforms",
  ["cpu", "cuda"],
  "XLA platforms (cpu, cuda, rocm, tpu) to lower the model for; the SavedModel runs on these only.",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Write into a non-empty --output.")
_CALIBRATE = flags.DEFINE_bool(
  "calibrate",
  True,
  "Apply the run's calibration map (WORKDIR/calibration.json from `avcd eval` with "
  "eval.calibration_split) to the `probability` output when it was fitted for this checkpoint.",
)
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Everything the flags name is checked before a model is loaded.
  arguments.require_tensorflow("avcd export")
  unknown = sorted(set(_PLATFORMS.value) - set(PLATFORMS))
  if unknown or not _PLATFORMS.value:
    raise app.UsageError(
      f"--platforms={','.join(_PLATFORMS.value)}: choose from {', '.join(PLATFORMS)}"
    )
  arguments.existing_directory("workdir", _WORKDIR.value)
  output = pathlib.Path(_OUTPUT.value)
  if output.is_dir() and any(output.iterdir()) and not _OVERWRITE.value:
    raise app.UsageError(
      f"--output={_OUTPUT.value}: not empty (choose a new directory, or pass "
      "--overwrite to write into it)"
    )
  arguments.writable_directory("output", _OUTPUT.value)
  import time  # pylint: disable=g-import-not-at-top

  from avcd import checkpoints  # pylint: disable=g-import-not-at-top
  from avcd.evaluation import calibration  # pylint: disable=g-import-not-at-top
  from avcd.serving import export  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  try:
    student = checkpoints.restore_student(_WORKDIR.value, _CHECKPOINT.value)
  except FileNotFoundError as e:
    raise app.UsageError(f"--workdir={_WORKDIR.value}: {e}") from e
  try:
    fitted = calibration.find(student.source, _WORKDIR.value) if _CALIBRATE.value else None
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  metadata = export.export_saved_model(
    student,
    _OUTPUT.value,
    platforms=tuple(_PLATFORMS.value),
    overwrite=_OVERWRITE.value,
    calibration=fitted,
  )
  source = metadata["source"]
  print(
    f"exported {source['checkpoint_dir']} step {source['step']} ({source['item']}) to "
    f"{_OUTPUT.value} in {time.perf_counter() - start:.1f} s for {','.join(_PLATFORMS.value)}"
  )
  print(
    f"probability: calibrated ({fitted.describe()})"
    if fitted
    else "probability: uncalibrated (no calibration map for this checkpoint; see docs/serving.md)"
  )
  print(export.describe_signature(metadata["signature"]))


if __name__ == "__main__":
  app.run(main)
