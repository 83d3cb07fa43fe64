"""Orbax checkpoints: training runs, and model-only checkpoints (teachers, converted weights).

Training checkpoints (`WORKDIR/checkpoints/STEP/`) hold the items
  state   the TrainState (params, batch statistics, optimizer state, step, RNG),
  data    the Grain training iterator's position (one JSON file per process),
  config  the run's config as JSON, and
  meta    JSON: step, evaluation metrics, avcd version, process and device counts.
`config` and `meta` are plain JSON files (`STEP/config/metadata`, `STEP/meta/metadata`), readable
without avcd. Saves are asynchronous; a step directory gets its final name only once complete, so
a crash leaves the previous step restorable, and the half-written one is deleted at the next start.

Model checkpoints (`avcd train-teacher`, `avcd convert`) are one Orbax step 0 with items
`student` and/or `teachers` (nnx.State of params and batch statistics) plus `config` and `meta`.

Every step avcd writes carries `avcd_checksums.json`: the size and SHA-256 of each of its files,
written just before the step is committed (in the same atomic rename), so a committed step always
has it. Orbax does not checksum data: a flipped bit loads silently and a truncated file fails deep
inside TensorStore. Restoring verifies the step first; a training run resuming from a step that
fails falls back to the previous one and says so (the bad step is moved aside to
`STEP.corrupt-TIME`); anything else (init_from, teachers, eval) stops with an error naming it.
A run resumes only with the config its checkpoint was trained with, but for the fields in
RESUMABLE_CHANGES (resume_config_changes). See docs/checkpoints.md.
"""

import asyncio
import hashlib
import json
import math
import os
import pathlib
import re
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from avcd import config_lib, version

STATE, DATA, CONFIG, META = "state", "data", "config", "meta"
STUDENT, TEACHERS = "student", "teachers"
CHECKSUMS = "avcd_checksums.json"
# Orbax rewrites these in the step directory after the checksums are taken, during its commit.
_COMMIT_BOOKKEEPING = ("_CHECKPOINT_METADATA", "commit_success.txt")
# The config section that shapes an item's arrays (for naming the fields that differ).
_CONFIG_SECTION = {STATE: "model", STUDENT: "model", TEACHERS: "teachers"}


class CorruptCheckpointError(RuntimeError):
  """A committed checkpoint step whose files are missing, truncated or altered."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the networks (or optimizer) the config builds."""


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint step failed (a full disk, a lost mount, ...); earlier steps are intact."""


class StepRetiredError(RuntimeError):
  """A step asked for by number was deleted while it was read (a training run's retention)."""


class ResumeRefusedError(RuntimeError):
  """Every checkpoint of a workdir was corrupt and moved aside; training will not silently start
  over until told to."""


def _root_cause(error: BaseException) -> str:
  """The innermost cause of an error chain, in one line (Orbax wraps a failed write a few times)."""
  while error.__cause__ is not None or (
    error.__context__ is not None and not error.__suppress_context__
  ):
    error = error.__cause__ or error.__context__
  if isinstance(error, OSError) and error.strerror:
    return error.strerror + (f" ({error.filename})" if error.filename else "")
  text = " ".join(str(error).split())
  # TensorStore puts the errno after long context, as "[OS error 28: No space left on device]"
  # or as "...: No space left on device [os_error_code='28']", depending on the code path.
  os_error = re.search(r"\[OS error (\d+): [^\]]+\]|\[os_error_code='(\d+)'\]", text)
  if os_error:
    path = re.search(r'writing (?:local file )?"([^"]+)"', text)
    return os.strerror(int(os_error.group(1) or os_error.group(2))) + (
      f" ({path.group(1)})" if path else ""
    )
  return text or type(error).__name__


def _file_digest(path: pathlib.Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _checksummed_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  files = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = pathlib.Path(root) / name
      relative = path.relative_to(step_dir)
      if len(relative.parts) == 1 and name in (*_COMMIT_BOOKKEEPING, CHECKSUMS):
        continue
      files.append(relative)
  return sorted(files)


def write_checksums(step_dir: str | pathlib.Path) -> None:
  """Writes STEP_DIR/avcd_checksums.json: {relative path: {bytes, sha256}} of every data file."""
  step_dir = pathlib.Path(step_dir)
  files = {
    str(p): dict(bytes=(step_dir / p).stat().st_size, sha256=_file_digest(step_dir / p))
    for p in _checksummed_files(step_dir)
  }
  partial = step_dir / (CHECKSUMS + ".partial")
  partial.write_text(json.dumps(dict(format=1, algorithm="sha256", files=files), indent=1))
  partial.replace(step_dir / CHECKSUMS)


def verify_checksums(step_dir: str | pathlib.Path) -> bool:
  """Checks every file a step's checksums list; True if they all match.

  Returns False (with a warning) when the step has no checksums: written by an older avcd or by
  another tool, it cannot be verified, only read once through (what fails to read is corrupt; a
  changed value that still reads goes unnoticed).

  Raises:
    CorruptCheckpointError: naming the step and each missing, truncated or altered file, or the
    read that failed.
  """
  step_dir = pathlib.Path(step_dir)
  manifest_path = step_dir / CHECKSUMS
  if not manifest_path.exists():
    logging.warning(
      "%s has no %s (written by an older avcd or another tool): it cannot be verified, only read",
      step_dir,
      CHECKSUMS,
    )
    _read_through(step_dir)
    return False
  try:
    files = json.loads(manifest_path.read_text())["files"]
  except (ValueError, KeyError) as e:
    raise CorruptCheckpointError(f"checkpoint {step_dir}: unreadable {CHECKSUMS} ({e})") from e
  problems = []
  for name, expected in files.items():
    path = step_dir / name
    if not path.is_file():
      problems.append(f"{name} (missing)")
      continue
    size = path.stat().st_size
    if size != expected["bytes"]:
      problems.append(
        f"{name} ({'truncated: ' if size < expected['bytes'] else ''}{size} bytes, "
        f"{expected['bytes']} written)"
      )
    elif _file_digest(path) != expected["sha256"]:
      problems.append(f"{name} (contents changed since it was written)")
  if problems:
    raise CorruptCheckpointError(
      f"checkpoint {step_dir} is corrupt: {len(problems)} of {len(files)} files fail their "
      f"checksums: "
      + ", ".join(problems[:10])
      + (f", ... ({len(problems) - 10} more)" if len(problems) > 10 else "")
    )
  return True


def _read_through(step_dir: pathlib.Path) -> None:
  """Reads every array item of a step onto the host; CorruptCheckpointError if that fails (OCDBT
  checks its own index: a damaged one fails in TensorStore with DATA_LOSS)."""
  for item in (STATE, STUDENT, TEACHERS):
    if not (step_dir / item).is_dir():
      continue
    try:
      stored = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / item))
      on_host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
      with _read_only_manager(step_dir.parent) as manager:
        manager.restore(
          int(step_dir.name),
          args=ocp.args.Composite(**{item: ocp.args.PyTreeRestore(restore_args=on_host)}),
        )
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
        f"checkpoint {step_dir} is corrupt: its {item!r} item fails to read ({_root_cause(e)}); "
        f"it has no {CHECKSUMS} to name the damaged file"
      ) from e


class _ChecksummedRenamePath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic-rename commit, with avcd's checksums written into a step just before it.

  Orbax also commits each item directory through this class; only step directories, named by
  their integer step, get checksums. Multi-process saves finalize on the primary process after
  every process has written its files.
  """

  async def finalize(self):
    tmp_dir = pathlib.Path(str(self.get()))
    if self.get_final().name.isdigit():
      start = time.perf_counter()
      await asyncio.to_thread(write_checksums, tmp_dir)
      logging.info("checksummed %s in %.2f s", self.get_final(), time.perf_counter() - start)
    await super().finalize()


def _manager_options(**options) -> ocp.CheckpointManagerOptions:
  return ocp.CheckpointManagerOptions(temporary_path_class=_ChecksummedRenamePath, **options)


def _read_only_manager(root: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    root, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
  )


def _verify(step_dir: pathlib.Path) -> None:
  """verify_checksums on process 0 (the files are shared); every process raises if it fails."""
  problem = ""
  if jax.process_index() == 0:
    try:
      verify_checksums(step_dir)
    except CorruptCheckpointError as e:
      problem = str(e)
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(bool(problem))))
    if failed and not problem:
      problem = f"checkpoint {step_dir} failed verification on process 0 (see its log)"
  if problem:
    raise CorruptCheckpointError(problem)


_VERIFIED = {}  # step directory -> its checksums file's (mtime, size) when it verified


def _verify_once(step_dir: pathlib.Path) -> None:
  """_verify, unless this process verified the step already and its checksums are unchanged."""
  manifest = step_dir / CHECKSUMS
  stamp = (manifest.stat().st_mtime_ns, manifest.stat().st_size) if manifest.exists() else None
  if stamp is None or _VERIFIED.get(step_dir) != stamp:
    _verify(step_dir)
    if stamp is not None:
      _VERIFIED[step_dir] = stamp


def _path_name(key_path) -> str:
  parts = []
  for key in key_path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  if parts and parts[-1] == "value":  # an nnx.Variable's payload
    parts.pop()
  return "/".join(parts)


def _flat_config(config, prefix: str = "") -> dict:
  if not isinstance(config, dict):
    return {prefix: config}
  flat = {}
  for key, value in config.items():
    flat.update(_flat_config(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def _config_differences(
  step_dir: pathlib.Path, item: str, expected: ml_collections.ConfigDict | None
) -> list[str]:
  """'field: checkpoint X, this run Y' for the config section that shapes `item`."""
  section = _CONFIG_SECTION.get(item)
  if expected is None or section is None or not (step_dir / CONFIG).is_dir():
    return []
  with _read_only_manager(step_dir.parent) as manager:
    stored = manager.restore(
      int(step_dir.name), args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
    )[CONFIG]
  if not isinstance(stored, dict) or section not in stored:
    return []
  ours = _flat_config(json.loads(expected.to_json_best_effort()))
  theirs = _flat_config(stored[section])
  absent = "(absent)"
  return [
    f"{section}.{k}: checkpoint {theirs.get(k, absent)}, this run {ours.get(k, absent)}"
    for k in sorted(ours.keys() | theirs.keys())
    if ours.get(k) != theirs.get(k)
  ]


def _check_layout(
  step_dir: pathlib.Path, item: str, target, expected: ml_collections.ConfigDict | None = None
) -> None:
  """Raises CheckpointMismatchError, with a short diff, if `item` does not fit `target`."""
  stored = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / item))
  on_disk = {
    _path_name(p): tuple(getattr(m, "shape", ()))
    for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]
  }
  wanted = {
    _path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(target)[0]
  }
  missing = sorted(wanted.keys() - on_disk.keys())
  unexpected = sorted(on_disk.keys() - wanted.keys())
  mismatched = [
    f"{k} {on_disk[k]} (this run {wanted[k]})"
    for k in sorted(wanted.keys() & on_disk.keys())
    if on_disk[k] != wanted[k]
  ]
  if not (missing or unexpected or mismatched):
    return
  lines = [
    f"the {item!r} item of checkpoint {step_dir} does not fit the networks this config builds:"
  ]
  for title, names in (
    ("arrays this run needs are not in it", missing),
    ("arrays in it this run does not have", unexpected),
    ("shapes differ", mismatched),
  ):
    if names:
      lines.append(
        f"  {len(names)} {title}: "
        + ", ".join(names[:8])
        + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
      )
  differences = _config_differences(step_dir, item, expected)
  if differences:
    lines.append("  the config it was written with differs: " + "; ".join(differences[:12]))
  raise CheckpointMismatchError("\n".join(lines))


# Config fields a resumed run may change: they extend the run or only observe it, and leave what
# every step computes as it was. Any other field changes the model the steps train (a different
# learning rate, loss, network, batch plan or seed), and resuming would mix two runs. A name
# ending in "." allows its whole section. docs/checkpoints.md gives each one's reason.
RESUMABLE_CHANGES = (
  "train.num_epochs",  # more (or fewer) steps of the same schedule: it counts steps, not epochs
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
  return _flat_config(json.loads(config_lib.defaults().to_json_best_effort()))


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
  with _read_only_manager(step_dir.parent) as manager:
    stored = manager.restore(
      int(step_dir.name), args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
    )[CONFIG]
  theirs = _flat_config(stored)
  ours = _flat_config(json.loads(config.to_json_best_effort()))
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
    options = _manager_options(
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
        f"{_root_cause(e)}; the steps before it are intact"
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
        f"{_root_cause(e)}; the steps before it are intact"
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
          verify_checksums(self.directory / str(step))
        except CorruptCheckpointError as e:
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
      raise CorruptCheckpointError(
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
      _verify(step_dir)
      self._verified.add(step)
    _check_layout(step_dir, STATE, abstract_state, expected)
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
        f"failed: {_root_cause(e)}; the steps before it are intact"
      ) from e
    self.raise_if_failed()

  def close(self) -> None:
    """Releases Orbax's threads. After a failed save its own errors are already reported."""
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.debug("closing the checkpoint manager: %s", e)


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
    pathlib.Path(directory).absolute(), options=_manager_options(create=True)
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
    with _read_only_manager(path.parent) as manager:
      steps = list(manager.all_steps())
    raise FileNotFoundError(f"no checkpoint for step {path.name} in {path.parent} (steps: {steps})")
  if not _is_dir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if path.name.isdigit() and (path / "_CHECKPOINT_METADATA").exists():
    return path
  with _read_only_manager(path) as manager:
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
    _verify_once(step_dir)
    return step_dir
  newest = locate(path)
  root = newest.parent
  chosen, problems = -1, []
  if jax.process_index() == 0:
    with _read_only_manager(root) as manager:
      candidates = sorted(manager.all_steps(), reverse=True)
    for candidate in candidates:
      try:
        verify_checksums(root / str(candidate))
      except CorruptCheckpointError as e:
        problems.append(str(e))
        logging.warning("%s; trying the step before it", e)
        continue
      chosen = candidate
      break
  if jax.process_count() > 1:
    chosen = int(multihost_utils.broadcast_one_to_all(np.int32(chosen)))
  if chosen < 0:
    raise CorruptCheckpointError(
      f"no step of {root} is intact: " + " | ".join(problems)
      if problems
      else f"no step of {root} is intact"
    )
  if problems:
    logging.warning("using step %d of %s: every newer step is corrupt", chosen, root)
  step_dir = root / str(chosen)
  if (step_dir / CHECKSUMS).exists():
    _VERIFIED[step_dir] = (
      (step_dir / CHECKSUMS).stat().st_mtime_ns,
      (step_dir / CHECKSUMS).stat().st_size,
    )
  return step_dir


def step_identity(step_dir: pathlib.Path) -> tuple[int, bool] | None:
  """The step directory's inode and whether it has checksums (None if it is gone), for
  `step_retired`."""
  try:
    return step_dir.stat().st_ino, (step_dir / CHECKSUMS).is_file()
  except FileNotFoundError:
    return None


def step_retired(step_dir: pathlib.Path, identity: tuple[int, bool] | None) -> bool:
  """Whether a step read after `identity = step_identity(step_dir)` was deleted meanwhile: its
  directory is gone or replaced, or files its checksums list are (Orbax deletes a step file by
  file, so a failed read can see it half deleted)."""
  now = step_identity(step_dir)
  if now is None or identity is None or now[0] != identity[0]:
    return True
  if not identity[1]:  # nothing tells which files it had
    return False
  try:
    files = json.loads((step_dir / CHECKSUMS).read_text())["files"]
  except FileNotFoundError:
    return True
  except (ValueError, KeyError):
    return False
  return any(not (step_dir / name).is_file() for name in files)


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
  with _read_only_manager(step_dir.parent) as manager:
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
):
  """One item (student / teachers / state) of a checkpoint step, onto abstract_state's layout.

  `directory` is any path `locate` accepts. The step is verified against its checksums first.
  `expected` is the config section the target was built from (`model` for student and state,
  `teachers` for teachers): if the arrays do not fit, the error lists the fields that differ.

  Raises:
    CorruptCheckpointError, CheckpointMismatchError; ValueError if the step has no such item.
  """
  step_dir = locate(directory)
  items = {p.name for p in step_dir.iterdir() if p.is_dir()}
  if item not in items:
    raise ValueError(f"checkpoint {step_dir} has no {item!r} item (it has {sorted(items)})")
  _verify_once(step_dir)
  _check_layout(step_dir, item, abstract_state, expected)
  with _read_only_manager(step_dir.parent) as manager:
    restored = manager.restore(
      int(step_dir.name),
      args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_state)}),
    )
  logging.info("restored %s from %s", item, step_dir)
  return restored[item]


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with concrete shardings, if given) describing a restore target."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def restore_student_arrays(
  directory: str | pathlib.Path, state_target, expected: ml_collections.ConfigDict | None = None
):
  """(params, batch_stats, item) of the student in a model checkpoint or a training checkpoint.

  `state_target` is the abstract TrainState of the run (its params/batch_stats give the layout);
  a training checkpoint must have been written with the same model and optimizer structure.
  `directory` is any path `locate` accepts; `expected` the run's model config (see restore_item).
  """
  items = model_items(directory)
  if STUDENT in items:
    restored = restore_item(
      directory,
      STUDENT,
      dict(params=state_target.params, batch_stats=state_target.batch_stats),
      expected,
    )
    return restored["params"], restored["batch_stats"], STUDENT
  if STATE in items:
    restored = restore_item(directory, STATE, state_target, expected)
    return restored.params, restored.batch_stats, STATE
  raise ValueError(
    f"{locate(directory)} holds neither a student model nor a training state "
    f"(items: {sorted(items)})"
  )
