"""The training checkpointer: a run's latest and best steps, resuming from the newest intact one,
and the config changes a resumed run may make.

Training checkpoints (`WORKDIR/checkpoints/STEP/`) hold the items
  state   the TrainState (params, batch statistics, optimizer state, step, RNG),
  data    the Grain training iterator's position (one JSON file per process),
  config  the run's config as JSON, and
  meta    JSON: step, evaluation metrics, avcd version, process and device counts.
`config` and `meta` are plain JSON files (`STEP/config/metadata`, `STEP/meta/metadata`), readable
without avcd. Saves are asynchronous; a step directory gets its final name only once complete, so
a crash leaves the previous step restorable, and the half-written one is deleted at the next start.
A training run resuming from a step that fails its checksums falls back to the previous one and
says so (the bad step is moved aside to `STEP.corrupt-TIME`). A run resumes only with the config
its checkpoint was trained with, but for the fields in RESUMABLE_CHANGES (resume_config_changes).
See docs/checkpoints.md.
"""

import json
import math
import pathlib
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from avcd import config_lib, version
from avcd.checkpoints import integrity, layout
from avcd.checkpoints.integrity import CONFIG, DATA, META, STATE


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint step failed (a full disk, a lost mount, ...); earlier steps are intact."""


class ResumeRefusedError(RuntimeError):
  """Every checkpoint of a workdir was corrupt and moved aside; training will not silently start
  over until told to."""


# Config fields a resumed run may change: they extend the run or only observe it, and leave what
# every step computes as it was. Any other field changes the model the steps train (a different
# learning rate, loss, network, batch plan or seed), and resuming would mix two runs. A name
# ending in "." allows its whole section. docs/checkpoints.md gives each one's reason.
RESUMABLE_CHANGES = (
  "train.num_epochs",  # more (or fewer) steps of the same schedule: it counts steps, not epochs
  "train.stop_metrics",  # when the run ends, like num_epochs
  "train.stop_at_least",
  "train.log_every_steps",
  "train.checkpoint_every_steps",
  "train.keep_checkpoints",
  "train.keep_best",
  "train.best_metric",  # which steps are kept, not what they hold
  "train.profile_steps",
  "eval.",  # evaluation reads the state and changes nothing of it
  "data.num_workers",  # the same batches, read by other workers
  "data.prefetch",
  "data.data_dir",  # only when the train split's files are the same (avcd/train.py checks)
  "mesh.",  # the state restores onto any mesh (the same batches; summation order may differ)
  "teachers.cache_dir",  # where posterior caches live; a cache is found by its fingerprint
)
CONFIG_HISTORY = "config_history.jsonl"


def _resumable_change(field: str) -> bool:
  return any(
    field.startswith(name) if name.endswith(".") else field == name for name in RESUMABLE_CHANGES
  )


def _field_defaults() -> dict:
  """Every field config_lib defines, at its default: a field added to avcd after a checkpoint was
  written is absent from its config, which is no change while the run keeps the default."""
  return layout.flat_config(json.loads(config_lib.defaults().to_json_best_effort()))


def resume_config_changes(step_dir: str | pathlib.Path, config: ml_collections.ConfigDict) -> dict:
  """The config changes a run resuming from `step_dir` makes, all of them RESUMABLE_CHANGES:
  {field: [checkpoint's value, this run's]} ({} when the step stores no config).

  `config`: the run's config with its corpus resolved (corpus_setup.resolve_corpus), as stored.

  Raises:
    ResumeRefusedError: any other field differs; the one line names each with both values.
  """
  step_dir = pathlib.Path(step_dir)
  if not (step_dir / CONFIG).is_dir():
    return {}
  with integrity.read_only_manager(step_dir.parent) as manager:
    stored = manager.restore(
      int(step_dir.name), args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
    )[CONFIG]
  theirs = layout.flat_config(stored)
  ours = layout.flat_config(json.loads(config.to_json_best_effort()))
  defaults = _field_defaults()
  absent = "(absent)"
  changes, refused = {}, []
  for field in sorted(ours.keys() | theirs.keys()):
    old, new = theirs.get(field, absent), ours.get(field, absent)
    if old == new or (old is absent and field in defaults and new == defaults[field]):
      continue
    if _resumable_change(field):
      changes[field] = [old, new]
    else:
      refused.append(f"{field}: checkpoint {old}, this run {new}")
  if refused:
    raise ResumeRefusedError(
      f"{step_dir} was trained with another config, and resuming it would mix two runs: "
      + "; ".join(refused)
      + ". Train into a new --workdir, or revert these fields to the checkpoint's values "
      "(changes that only extend or observe a run are allowed: docs/checkpoints.md)"
    )
  return changes


def record_config_changes(workdir: str | pathlib.Path, step: int, changes: dict) -> None:
  """Appends the allowed changes a resumed run made to WORKDIR/config_history.jsonl: with
  WORKDIR/config.json (the latest config) it tells which config trained which steps."""
  record = dict(
    resumed_from_step=step,  # the changes apply from the step after it
    time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    changes={field: dict(checkpoint=old, now=new) for field, (old, new) in changes.items()},
  )
  with (pathlib.Path(workdir) / CONFIG_HISTORY).open("a") as f:
    f.write(json.dumps(record) + "\n")


def _metric_value(name: str):
  def value(metrics) -> float:
    v = metrics.get(name)
    return -math.inf if v is None or not math.isfinite(v) else float(v)

  return value


class TrainCheckpointer:
  """Keeps the latest K checkpoints and the best M by an evaluation metric."""

  def __init__(
    self,
    directory: str | pathlib.Path,
    *,
    keep_latest: int,
    keep_best: int,
    best_metric: str,
    best_mode: str = "max",
  ):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', not {best_mode!r}")
    sign = 1.0 if best_mode == "max" else -1.0
    score = _metric_value(best_metric)
    policies = [checkpoint_managers.LatestN(n=keep_latest)]
    if keep_best:
      # keep_checkpoints_without_metrics=False: saves without an evaluation are LatestN's alone.
      # (max_to_keep combined with best_fn would delete the newest step; see STACK.md.)
      policies.append(
        checkpoint_managers.BestN(
          get_metric_fn=lambda m: sign * score(m),
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = integrity.manager_options(
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=score if keep_best else None,
      best_mode=best_mode,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
      create=True,
    )
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._verified = set()  # steps already checked against their checksums
    self._saving = None  # the step of the latest save started

  @property
  def manager(self) -> ocp.CheckpointManager:
    return self._manager

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def raise_if_failed(self) -> None:
    """Raises CheckpointSaveError if a save started earlier has failed in the background.

    Saves are asynchronous: the loop asks after every step, so a failed save stops training at
    once, with its cause, instead of surfacing at exit among the background threads' noise.
    """
    try:
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      step = self._saving
      raise CheckpointSaveError(
        f"saving checkpoint step {step} to {self.directory / str(step)} failed: "
        f"{integrity.root_cause(e)}; the steps before it are intact"
      ) from e

  def save(
    self,
    step: int,
    state,
    *,
    data_iterator=None,
    config=None,
    metrics: dict | None = None,
    meta: dict | None = None,
    force: bool = False,
  ) -> bool:
    """Starts saving `step`; `meta`: more fields for its `meta` item (JSON)."""
    # Orbax waits for the previous save before it starts one; waiting here first costs nothing
    # more and names the right step if that save failed.
    self.wait()
    self._saving = step
    items = {
      STATE: ocp.args.StandardSave(state),
      META: ocp.args.JsonSave(
        dict(
          step=step,
          metrics=metrics or {},
          avcd_version=version.VERSION,
          process_count=jax.process_count(),
          device_count=jax.device_count(),
          **(meta or {}),
        )
      ),
    }
    if config is not None:
      items[CONFIG] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    if data_iterator is not None:
      import grain  # pylint: disable=g-import-not-at-top

      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      return self._manager.save(
        step, args=ocp.args.Composite(**items), metrics=metrics, force=force
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(
        f"saving checkpoint step {step} to {self.directory / str(step)} failed: "
        f"{integrity.root_cause(e)}; the steps before it are intact"
      ) from e

  def corrupt_steps(self) -> list[pathlib.Path]:
    """The steps moved aside as corrupt (`STEP.corrupt-TIME`), oldest first."""
    return sorted(self.directory.glob("*.corrupt-*"))

  def restorable_step(self, *, start_over: bool = False) -> int | None:
    """The newest step whose files match their checksums; None if training starts from scratch.

    A step that fails is moved aside to `STEP.corrupt-TIME` with a warning naming it, and the step
    before it is tried. Process 0 verifies and every process gets its choice. A workdir whose
    every step was moved aside (now or by an earlier start) is not trained from scratch unless
    `start_over`: the user decides, with `avcd train --start_over` or by moving the folders.

    Raises:
      CorruptCheckpointError: there are steps, and none of them verifies.
      ResumeRefusedError: no step is left, corrupt ones were moved aside, and not `start_over`.
    """
    chosen, rejected = -1, []
    if jax.process_index() == 0:
      for step in sorted(self.all_steps(), reverse=True):
        try:
          integrity.verify_checksums(self.directory / str(step))
        except integrity.CorruptCheckpointError as e:
          aside = self.directory / f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
          (self.directory / str(step)).rename(aside)
          logging.warning(
            "%s. Moved it aside to %s; falling back to the step before it.", e, aside.name
          )
          rejected.append(str(e))
          continue
        chosen = step
        break
    moved = len(rejected)
    if jax.process_count() > 1:
      chosen, moved = (
        int(v) for v in multihost_utils.broadcast_one_to_all(np.array([chosen, moved], np.int32))
      )
      multihost_utils.sync_global_devices("avcd checkpoints verified")
    if moved:
      self._manager.reload()
    if chosen < 0 and moved:
      raise integrity.CorruptCheckpointError(
        f"no checkpoint in {self.directory} is intact; the {moved} corrupt step(s) were moved "
        "aside: " + (" | ".join(rejected) if rejected else "see the log of process 0")
      )
    if chosen < 0:
      aside = self.corrupt_steps()
      if aside and not start_over:
        raise ResumeRefusedError(
          f"{self.directory} has no intact checkpoint, only corrupt steps moved aside earlier "
          f"({', '.join(p.name for p in aside)}); training will not silently start over. Pass "
          "--start_over to train from step 0, or move those folders out of the directory."
        )
      if aside:
        logging.warning(
          "starting over in %s as asked (--start_over); the corrupt steps stay there: %s",
          self.directory,
          ", ".join(p.name for p in aside),
        )
      return None
    self._verified.add(chosen)
    return chosen

  def restore(
    self,
    step: int,
    abstract_state,
    *,
    data_iterator=None,
    expected: ml_collections.ConfigDict | None = None,
  ):
    """Restores the state onto the shardings of `abstract_state` (any mesh) and the iterator.

    `expected`: the run's model config, named field by field where the state does not fit.

    Raises:
      CorruptCheckpointError: the step fails its checksums.
      CheckpointMismatchError: the state does not fit `abstract_state`.
      ValueError: the data position was saved by a different number of processes.
    """
    step_dir = self.directory / str(step)
    if step not in self._verified:
      integrity.verify(step_dir)
      self._verified.add(step)
    layout.check_layout(step_dir, STATE, abstract_state, expected)
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      import grain  # pylint: disable=g-import-not-at-top

      saved = sorted(p.name for p in (step_dir / DATA).glob("process_*.json"))
      if f"process_{jax.process_index()}-of-{jax.process_count()}.json" not in saved:
        raise ValueError(
          f"checkpoint {step_dir} holds the data position of {len(saved)} process(es) "
          f"({', '.join(saved)}); this run has {jax.process_count()}. The model state restores "
          "onto any mesh, the data iterator only onto the same number of processes."
        )
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE]

  def metadata(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[
      META
    ]

  def wait(self) -> None:
    """Blocks until every save is committed; CheckpointSaveError if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(
        f"saving checkpoint step {self._saving} to {self.directory / str(self._saving)} "
        f"failed: {integrity.root_cause(e)}; the steps before it are intact"
      ) from e
    self.raise_if_failed()

  def close(self) -> None:
    """Releases Orbax's threads. After a failed save its own errors are already reported."""
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.debug("closing the checkpoint manager: %s", e)
