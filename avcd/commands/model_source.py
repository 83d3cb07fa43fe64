"""The model a scoring command runs (`avcd predict`, `avcd serve`): --workdir [--checkpoint] or
--saved-model, checked before any work and loaded the same way by both. Not a command itself."""

from absl import app

from avcd.commands import arguments


def check(workdir: str | None, saved_model: str | None) -> None:
  """UsageError unless exactly one of the two names a model that can be read."""
  if (workdir is None) == (saved_model is None):
    raise app.UsageError("give exactly one of --workdir and --saved-model")
  if saved_model is not None:
    arguments.require_tensorflow("--saved-model")
    arguments.existing_directory("saved-model", saved_model)
    from avcd.serving import export  # pylint: disable=g-import-not-at-top

    try:
      export.read_metadata(saved_model)
    except (FileNotFoundError, ValueError) as e:
      raise app.UsageError(f"--saved-model={saved_model}: {e}") from e
  else:
    arguments.existing_directory("workdir", workdir)


def load(workdir: str | None, checkpoint: int | None, saved_model: str | None, calibrate=True):
  """The predict.Scorer of the model check() accepted; a SavedModel's graph is checked first."""
  from avcd.serving import predict  # pylint: disable=g-import-not-at-top

  if saved_model is not None:
    return predict.SavedModelScorer(saved_model)
  try:
    return predict.CheckpointScorer(workdir, checkpoint, calibrate=calibrate)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f"--workdir={workdir}: {e}") from e
