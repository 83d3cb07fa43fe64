"""Model checkpoints and loading a model for inference: where a path's step is, which step a
read-only command restores, the config stored with it, and the student restored from it.

Model checkpoints (`avcd train-teacher`, `avcd convert`) are one Orbax step 0 with items
`student` and/or `teachers` (nnx.State of params and batch statistics) plus `config` and `meta`.
A student restores from them or from a training run's `state` item (its parameters and batch
statistics only). Every step is verified against its checksums before it is read; a read-only
command never moves a corrupt step aside, it stops with an error naming it, or (no step asked
for) takes the newest intact one.
"""

import dataclasses
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from avcd import version
from avcd.checkpoints import integrity, layout
from avcd.checkpoints.integrity import CONFIG, META, STATE, STUDENT, TEACHERS
from avcd.core import inference, sharding
from avcd.models import build


class StepRetiredError(RuntimeError):
  """A step asked for by number was deleted while it was read (a training run's retention)."""


def save_model(
  directory: str | pathlib.Path,
  *,
  student_state=None,
  teachers_state=None,
  config: ml_collections.ConfigDict | None = None,
  meta: dict | None = None,
) -> None:
  """Writes a model checkpoint (step 0) with whichever of student / teachers is given."""
  items = {}
  if student_state is not None:
    items[STUDENT] = ocp.args.StandardSave(student_state)
  if teachers_state is not None:
    items[TEACHERS] = ocp.args.StandardSave(teachers_state)
  if config is not None:
    items[CONFIG] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
  items[META] = ocp.args.JsonSave(dict(meta or {}, avcd_version=version.VERSION))
  with ocp.CheckpointManager(
    pathlib.Path(directory).absolute(), options=integrity.manager_options(create=True)
  ) as manager:
    manager.save(0, args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()


def _is_dir(path: pathlib.Path) -> bool:
  """path.is_dir(); where the directory holding `path` cannot be read, a PermissionError naming
  that directory (the error of the probe names `path`, e.g. WORKDIR/checkpoints/checkpoints)."""
  try:
    return path.is_dir()
  except PermissionError as e:
    raise PermissionError(
      e.errno, f"cannot read the directory ({e.strerror})", str(path.parent)
    ) from None


def locate(path: str | pathlib.Path) -> pathlib.Path:
  """The step directory a checkpoint path means.

  `path` may be a directory of steps (WORKDIR/checkpoints, a model checkpoint), a training
  workdir (its checkpoints/ are used), or one step's directory; a directory of steps means its
  latest complete step.
  """
  path = pathlib.Path(path).absolute()
  if _is_dir(path / "checkpoints"):
    path = path / "checkpoints"
  if path.name.isdigit() and not _is_dir(path) and _is_dir(path.parent):
    with integrity.read_only_manager(path.parent) as manager:
      steps = list(manager.all_steps())
    raise FileNotFoundError(f"no checkpoint for step {path.name} in {path.parent} (steps: {steps})")
  if not _is_dir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if path.name.isdigit() and (path / "_CHECKPOINT_METADATA").exists():
    return path
  with integrity.read_only_manager(path) as manager:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
      f"{path} holds no complete checkpoint (expected a directory of "
      "checkpoint steps, a training workdir or one step's directory)"
    )
  return path / str(step)


def select_step(path: str | pathlib.Path, step: int | None = None) -> pathlib.Path:
  """The verified step directory a read-only command (eval, export, predict) restores.

  `path`: anything `locate` accepts. `step`: a step of it; None takes the newest step whose files
  match their checksums, skipping corrupt ones with a warning that names them (never moving them:
  reading changes nothing). A step asked for by number must verify.

  Raises:
    FileNotFoundError: no such directory or step; CorruptCheckpointError: the step asked for, or
    every step, fails its checksums.
  """
  if step is not None:
    step_dir = locate(locate_root(path) / str(step))
    integrity.verify_once(step_dir)
    return step_dir
  newest = locate(path)
  root = newest.parent
  chosen, problems = -1, []
  if jax.process_index() == 0:
    with integrity.read_only_manager(root) as manager:
      candidates = sorted(manager.all_steps(), reverse=True)
    for candidate in candidates:
      try:
        integrity.verify_checksums(root / str(candidate))
      except integrity.CorruptCheckpointError as e:
        problems.append(str(e))
        logging.warning("%s; trying the step before it", e)
        continue
      chosen = candidate
      break
  if jax.process_count() > 1:
    chosen = int(multihost_utils.broadcast_one_to_all(np.int32(chosen)))
  if chosen < 0:
    raise integrity.CorruptCheckpointError(
      f"no step of {root} is intact: " + " | ".join(problems)
      if problems
      else f"no step of {root} is intact"
    )
  if problems:
    logging.warning("using step %d of %s: every newer step is corrupt", chosen, root)
  step_dir = root / str(chosen)
  integrity.mark_verified(step_dir)
  return step_dir


def locate_root(path: str | pathlib.Path) -> pathlib.Path:
  """The directory of steps a path means: WORKDIR/checkpoints for a training workdir, else the
  path itself (a directory of steps or a model checkpoint)."""
  path = pathlib.Path(path).absolute()
  if _is_dir(path / "checkpoints"):
    return path / "checkpoints"
  if not _is_dir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  return path


def read_config(step_dir: str | pathlib.Path) -> ml_collections.ConfigDict | None:
  """The config a step was written with (locked, its tuples restored), or None when it has none."""
  step_dir = pathlib.Path(step_dir)
  if not (step_dir / CONFIG).is_dir():
    return None
  with integrity.read_only_manager(step_dir.parent) as manager:
    return config_from_json(
      manager.restore(
        int(step_dir.name), args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
      )[CONFIG]
    )


def config_from_json(data: dict) -> ml_collections.ConfigDict:
  """The locked ConfigDict a config's JSON (a checkpoint's, an export's) was written from.

  JSON turns the config files' tuples into lists; they become tuples again, so that the networks
  see the values the config file gave.
  """

  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value

  config = ml_collections.ConfigDict(tuples(data))
  config.lock()
  return config


def model_items(directory: str | pathlib.Path) -> set[str]:
  """The items stored in a model or training checkpoint's step (see `locate`)."""
  return {p.name for p in locate(directory).iterdir() if p.is_dir()}


def restore_item(
  directory: str | pathlib.Path,
  item: str,
  abstract_state,
  expected: ml_collections.ConfigDict | None = None,
  *,
  partial: bool = False,
):
  """One item (student / teachers / state) of a checkpoint step, onto abstract_state's layout.

  `directory` is any path `locate` accepts. The step is verified against its checksums first.
  `expected` is the config section the target was built from (`model` for student and state,
  `teachers` for teachers): if the arrays do not fit, the error lists the fields that differ.
  `partial`: restore only the arrays `abstract_state` names (a dict of some of the item's
  top-level fields), e.g. a training state's parameters without its optimizer state.

  Raises:
    CorruptCheckpointError, CheckpointMismatchError; ValueError if the step has no such item.
  """
  step_dir = locate(directory)
  items = {p.name for p in step_dir.iterdir() if p.is_dir()}
  if item not in items:
    raise ValueError(f"checkpoint {step_dir} has no {item!r} item (it has {sorted(items)})")
  integrity.verify_once(step_dir)
  layout.check_layout(step_dir, item, abstract_state, expected, partial=partial)
  if partial:
    restore = ocp.args.PyTreeRestore(
      item=abstract_state,
      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
      partial_restore=True,
    )
  else:
    restore = ocp.args.StandardRestore(abstract_state)
  with integrity.read_only_manager(step_dir.parent) as manager:
    restored = manager.restore(int(step_dir.name), args=ocp.args.Composite(**{item: restore}))
  logging.info("restored %s from %s", item, step_dir)
  return restored[item]


@dataclasses.dataclass(frozen=True)
class RestoredStudent:
  """A checkpoint's student in eval form, the config it runs with and where it came from."""

  graphdef: nnx.GraphDef
  params: Any
  batch_stats: Any
  config: ml_collections.ConfigDict
  source: dict  # checkpoint directory, step and item
  shardings: inference.ModelShardings  # where params and batch_stats lie on the mesh


def restore_student(
  path: str | pathlib.Path,
  step: int | None = None,
  *,
  config: ml_collections.ConfigDict | None = None,
  mesh=None,
) -> RestoredStudent:
  """The student of a training run or model checkpoint: the one restore path of `avcd eval`,
  `avcd export`, `avcd predict` and `train.init_from`. Only what inference needs is read: the
  student's parameters and batch statistics (a training state's optimizer state stays on disk).

  Args:
    path: a training workdir (its checkpoints/), a directory of steps, one step's directory, or a
      model checkpoint with a `student` item (`avcd convert`).
    step: a step of it; None takes the newest intact step (select_step: corrupt ones are skipped
      with a warning; a step asked for must verify). Where the step is deleted while it is read (a
      training run's retention), None takes the newest step left, a step asked for raises
      StepRetiredError.
    config: the config whose model the checkpoint must fit; None reads the one stored with it.
    mesh: where the parameters go (default: this process's first device).

  Raises:
    FileNotFoundError, CorruptCheckpointError, CheckpointMismatchError, StepRetiredError;
    ValueError when no config is given and the checkpoint stores none.
  """
  step_dir = select_step(path, step)
  while True:
    identity = integrity.step_identity(step_dir)
    try:
      return _restore_student(step_dir, config, mesh)
    except Exception as e:  # pylint: disable=broad-except
      # A training run's retention may delete the step while it is read: Orbax then fails in
      # TensorStore (e.g. "Truncated Zstd-compressed stream"), which reads like corruption.
      if not integrity.step_retired(step_dir, identity):
        raise
      if step is not None:
        raise StepRetiredError(
          f"checkpoint {step_dir} was deleted while it was read (the training run writing there "
          "keeps only its latest and best steps); ask for a step it keeps, or leave out "
          "the step for the newest one"
        ) from e
      retired, step_dir = step_dir, select_step(path)
      logging.warning(
        "step %s of %s was deleted while it was read (the training run's retention); using "
        "step %s, the newest one left",
        retired.name,
        retired.parent,
        step_dir.name,
      )


def _restore_student(step_dir: pathlib.Path, config, mesh) -> RestoredStudent:
  if config is None:
    config = read_config(step_dir)
    if config is None:
      raise ValueError(
        f"checkpoint {step_dir} stores no config (no {CONFIG!r} item); "
        "its model's config cannot be known"
      )
  if mesh is None:
    mesh = sharding.make_mesh(
      ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.local_devices()[:1]
    )
  graphdef, params, batch_stats = build.split_model(
    nnx.eval_shape(lambda: build.build_student(config.model, config.get("seed", 0)))
  )
  shardings = inference.ModelShardings(*sharding.state_shardings((params, batch_stats), mesh))
  target = layout.abstract_like(dict(params=params, batch_stats=batch_stats), shardings._asdict())
  items = model_items(step_dir)
  if STUDENT not in items and STATE not in items:
    raise ValueError(
      f"{step_dir} holds neither a student model nor a training state (items: {sorted(items)})"
    )
  item = STUDENT if STUDENT in items else STATE
  restored = restore_item(step_dir, item, target, config.model, partial=item == STATE)
  return RestoredStudent(
    graphdef,
    restored["params"],
    restored["batch_stats"],
    config,
    dict(checkpoint_dir=str(step_dir.parent), step=int(step_dir.name), item=item),
    shardings,
  )
