"""The frozen teachers a student run uses: loaded from a checkpoint, or (tests only) random.

Training them (`teachers.source='train'` with no checkpoint yet) is the train loop's job, in its
teachers section; loading never trains.
"""

import pathlib

import jax
import ml_collections
from absl import logging
from flax import nnx

from avcd import checkpoints
from avcd.core import sharding
from avcd.models import build

SOURCES = ("checkpoint", "train", "random")


def directory(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(config.teachers.checkpoint or pathlib.Path(workdir) / "teachers")


def load(config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh):
  """(graphdef, (params, batch_stats)) of the teachers, placed on the mesh.

  `teachers.source`: 'checkpoint' and 'train' restore `teachers.checkpoint` (default
  WORKDIR/teachers); 'random' keeps the initialisation (meaningless targets; for tests of the
  machinery).
  """
  source = config.teachers.source
  if source not in SOURCES:
    raise ValueError(f"teachers.source={source!r}; choose one of {SOURCES}")
  teachers = nnx.eval_shape(lambda: build.build_teachers(config.teachers, config.seed))
  graphdef, params, batch_stats = build.split_model(teachers)
  shardings = sharding.state_shardings((params, batch_stats), mesh)
  if source == "random":
    logging.warning(
      "teachers.source='random': the correlation targets come from untrained teachers"
    )
    init = lambda: build.split_model(build.build_teachers(config.teachers, config.seed))[1:]
    return graphdef, jax.jit(init, out_shardings=shardings)()

  path = directory(config, workdir)
  if not has_checkpoint(config, workdir):
    raise FileNotFoundError(
      f"no teacher checkpoint at {str(path)!r}. Set --config.teachers.checkpoint to a directory "
      "written by `avcd train-teacher` or by `avcd convert --asr=audio-only.pt "
      "--vsr=video-only.pt --vsr-frontend=visual_frontend.pt` (deep_avsr's released weights), "
      "or use --config.teachers.source=train to train them on a corpus with phoneme labels."
    )
  target = checkpoints.abstract_like(
    dict(params=params, batch_stats=batch_stats),
    dict(params=shardings[0], batch_stats=shardings[1]),
  )
  restored = checkpoints.restore_item(path, checkpoints.TEACHERS, target, expected=config.teachers)
  return graphdef, (restored["params"], restored["batch_stats"])


def has_checkpoint(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> bool:
  """Whether the teachers' directory holds a checkpoint with a `teachers` item."""
  try:
    return checkpoints.TEACHERS in checkpoints.model_items(directory(config, workdir))
  except FileNotFoundError:
    return False
