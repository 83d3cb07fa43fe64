"""Orbax checkpoints: training runs, and model-only checkpoints (teachers, converted weights).

Training checkpoints (`WORKDIR/checkpoints/STEP/`) hold the items
  state   the TrainState (params, batch statistics, optimizer state, step, RNG),
  data    the Grain training iterator's position,
  config  the run's config as JSON, and
  meta    JSON: step, evaluation metrics, avcd version (readable without the model code).
Saves are asynchronous; a step directory gets its final name only once complete, so a crash
leaves the previous step restorable.

Model checkpoints (`avcd train-teacher`, `avcd convert`) are one Orbax step 0 with items
`student` and/or `teachers` (nnx.State of params and batch statistics) plus `config` and `meta`.
"""

import json
import math
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from avcd import version

STATE, DATA, CONFIG, META = "state", "data", "config", "meta"
STUDENT, TEACHERS = "student", "teachers"


def _metric_value(name: str):
  def value(metrics) -> float:
    v = metrics.get(name)
    return -math.inf if v is None or not math.isfinite(v) else float(v)
  return value


class TrainCheckpointer:
  """Keeps the latest K checkpoints and the best M by an evaluation metric."""

  def __init__(self, directory: str | pathlib.Path, *, keep_latest: int, keep_best: int,
               best_metric: str, best_mode: str = "max"):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', not {best_mode!r}")
    sign = 1.0 if best_mode == "max" else -1.0
    score = _metric_value(best_metric)
    policies = [checkpoint_managers.LatestN(n=keep_latest)]
    if keep_best:
      # keep_checkpoints_without_metrics=False: saves without an evaluation are LatestN's alone.
      # (max_to_keep combined with best_fn would delete the newest step; see STACK.md.)
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: sign * score(m), n=keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=score if keep_best else None, best_mode=best_mode,
        enable_async_checkpointing=True, cleanup_tmp_directories=True, create=True)
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  @property
  def manager(self) -> ocp.CheckpointManager:
    return self._manager

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, *, data_iterator=None, config=None,
           metrics: dict | None = None, force: bool = False) -> bool:
    items = {STATE: ocp.args.StandardSave(state),
             META: ocp.args.JsonSave(dict(step=step, metrics=metrics or {},
                                          avcd_version=version.VERSION))}
    if config is not None:
      items[CONFIG] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    if data_iterator is not None:
      import grain  # pylint: disable=g-import-not-at-top
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                              force=force)

  def restore(self, step: int, abstract_state, *, data_iterator=None):
    """Restores the state onto the shardings of `abstract_state` (any mesh) and the iterator."""
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      import grain  # pylint: disable=g-import-not-at-top
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE]

  def metadata(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def save_model(directory: str | pathlib.Path, *, student_state=None, teachers_state=None,
               config: ml_collections.ConfigDict | None = None, meta: dict | None = None) -> None:
  """Writes a model checkpoint (step 0) with whichever of student / teachers is given."""
  items = {}
  if student_state is not None:
    items[STUDENT] = ocp.args.StandardSave(student_state)
  if teachers_state is not None:
    items[TEACHERS] = ocp.args.StandardSave(teachers_state)
  if config is not None:
    items[CONFIG] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
  items[META] = ocp.args.JsonSave(dict(meta or {}, avcd_version=version.VERSION))
  with ocp.CheckpointManager(pathlib.Path(directory).absolute(),
                             options=ocp.CheckpointManagerOptions(create=True)) as manager:
    manager.save(0, args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()


def model_items(directory: str | pathlib.Path) -> set[str]:
  """The items stored in a model or training checkpoint's latest step."""
  step_dir = _latest_step_dir(directory)
  return {p.name for p in step_dir.iterdir() if p.is_dir()}


def _latest_step_dir(directory) -> pathlib.Path:
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False,
                                                                            read_only=True)) as m:
    step = m.latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory} holds no complete checkpoint")
  return directory / str(step)


def restore_item(directory: str | pathlib.Path, item: str, abstract_state):
  """One item (student / teachers / state) of the latest step, onto abstract_state's layout."""
  directory = pathlib.Path(directory).absolute()
  items = model_items(directory)
  if item not in items:
    raise ValueError(f"checkpoint {directory} has no {item!r} item (it has {sorted(items)})")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False,
                                                                            read_only=True)) as m:
    step = m.latest_step()
    restored = m.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(
        abstract_state)}))
  logging.info("restored %s from %s step %d", item, directory, step)
  return restored[item]


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with concrete shardings, if given) describing a restore target."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def restore_student(directory: str | pathlib.Path, state_target):
  """(params, batch_stats) of the student in a model checkpoint or a training checkpoint.

  `state_target` is the abstract TrainState of the run (its params/batch_stats give the layout);
  a training checkpoint must have been written with the same model and optimizer structure.
  """
  items = model_items(directory)
  if STUDENT in items:
    restored = restore_item(directory, STUDENT, dict(params=state_target.params,
                                                     batch_stats=state_target.batch_stats))
    return restored["params"], restored["batch_stats"]
  if STATE in items:
    restored = restore_item(directory, STATE, state_target)
    return restored.params, restored.batch_stats
  raise ValueError(f"{directory} holds neither a student model nor a training state "
                   f"(items: {sorted(items)})")
