"""Training loop: one linear function, in sections, big_vision style.

    avcd train --config=configs/synthetic.py --workdir=runs/synthetic

Resume order: the newest intact checkpoint in WORKDIR/checkpoints (a corrupt one is moved aside
and the one before it used), else `train.init_from` (an avcd training or model checkpoint, e.g.
converted PyTorch weights), else from scratch. SIGTERM checkpoints the current step and returns;
Ctrl-C checkpoints it and raises preemption.Interrupted; see docs/checkpoints.md.

Log, checkpoint and evaluation each ask the same question after a step (`_its_time`). A step
evaluated between checkpoints is evaluated before it is saved, so that its save carries the
metrics that rank it among the best checkpoints (a failing evaluation there costs at most the
steps since the last checkpoint); the final step is saved before its evaluation, so a failing
final evaluation loses no trained step.
"""

import contextlib
import dataclasses
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from avcd import checkpoints, config_checks, workdir_lock
from avcd.core import compiled, sharding
from avcd.evaluation import evaluate, metrics
from avcd.teachers import setup as teachers_setup
from avcd.training import flops, losses, preemption, state as ts, steps, writers
from data_pipelines import progress
from data_pipelines.building import corpus_setup
from data_pipelines.reading import loader, split_index

# Steps before a profile (train.profile_steps) starts: the first compiles and warms the pipeline.
PROFILE_AFTER_STEPS = 3


class NonFiniteLossError(FloatingPointError):
  pass


def _initial_state(config, checkpointer, latest: int | None, step: steps.TrainStep, train_iter):
  """Resume from step `latest` of the workdir, else start from train.init_from, else anew."""
  if latest is not None:
    logging.info("resuming from %s step %d", checkpointer.directory, latest)
    return checkpointer.restore(latest, step.state, data_iterator=train_iter, expected=config.model)
  state = step.init_state()
  if config.train.init_from:
    student = checkpoints.restore_student(config.train.init_from, config=config, mesh=step.mesh)
    state = state.replace(params=student.params, batch_stats=student.batch_stats)
    logging.info("initialised the student from %s", student.source)
  return state


def _corpus_identity(data_cfg: ml_collections.ConfigDict) -> dict:
  """What identifies the training split's records wherever the corpus lies: its builder, split
  and shard files (name, slice, size). Stored in every checkpoint's meta."""
  split = split_index.open_split(data_cfg.builder, data_cfg.data_dir, data_cfg.train_split)
  return dict(
    builder=split.builder,
    split=split.split,
    shards=[shard[:4] for shard in split_index.shard_files(split)],  # without the mtime
  )


def _check_same_corpus(checkpointer, step: int, data_dirs: list[str], corpus: dict) -> None:
  """A resumed run may read its corpus from another data.data_dir only if the training split's
  files there are the ones the checkpoint was trained on; else ResumeRefusedError."""
  old_dir, new_dir = data_dirs
  trained_on = checkpointer.metadata(step).get("corpus")
  if trained_on is None:  # written before checkpoints recorded it: the old path may still tell
    try:
      trained_on = _corpus_identity(
        ml_collections.ConfigDict(
          dict(builder=corpus["builder"], data_dir=old_dir, train_split=corpus["split"])
        )
      )
    except (FileNotFoundError, ValueError):
      pass
  if json.loads(json.dumps(trained_on)) != json.loads(json.dumps(corpus)):
    reason = (
      "its training split's files differ"
      if trained_on
      else f"the checkpoint does not record its corpus and {old_dir} no longer holds it"
    )
    raise checkpoints.ResumeRefusedError(
      f"data.data_dir: checkpoint {old_dir}, this run {new_dir}: {reason}, so it may not be the "
      f"corpus step {step} was trained on. Train into a new --workdir, or set "
      f"--config.data.data_dir={old_dir}"
    )


def _clip_ids(config: ml_collections.ConfigDict, records: np.ndarray) -> list[str]:
  """The ids of a batch's clips (filler rows dropped), for error messages."""
  index = split_index.load_index(
    split_index.open_split(config.data.builder, config.data.data_dir, config.data.train_split)
  )
  return sorted({str(i) for i in index.clips(records[records >= 0])["id"]})


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, start_over: bool = False
) -> dict:
  """Trains the student on `config`, evaluates it, and returns the final evaluation metrics
  ({} when preemption stopped it after a checkpoint).

  The workdir is locked for the run (workdir_lock). `start_over`: train from step 0 although every
  checkpoint of the workdir was found corrupt and moved aside (refused otherwise).
  """
  config_checks.check(config)
  config_checks.check_mesh(config)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  with contextlib.ExitStack() as cleanup:
    cleanup.enter_context(workdir_lock.WorkdirLock(workdir))
    return _train_and_evaluate(config, workdir, cleanup, start_over)


def _train_and_evaluate(
  config, workdir: pathlib.Path, cleanup: contextlib.ExitStack, start_over: bool
) -> dict:
  start_time = time.perf_counter()

  # ---- Checkpoints: what to resume from, before any other work ---------------------------------
  checkpointer = checkpoints.TrainCheckpointer(
    workdir / "checkpoints",
    keep_latest=config.train.keep_checkpoints,
    keep_best=config.train.keep_best,
    best_metric=config.train.best_metric,
    best_mode="min" if config.train.best_metric in metrics.LOWER_IS_BETTER else "max",
  )
  cleanup.callback(checkpointer.close)
  resume_step = checkpointer.restorable_step(start_over=start_over)
  config_changes = {}
  if resume_step is not None:
    config_changes = checkpoints.resume_config_changes(
      checkpointer.directory / str(resume_step), corpus_setup.resolve_corpus(config, workdir)
    )

  # ---- Devices, data and logging ---------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  logging.info(
    "mesh %s over %d devices (%d processes)",
    dict(mesh.shape),
    jax.device_count(),
    jax.process_count(),
  )
  config = corpus_setup.prepare_corpus(config, workdir)  # the config as run: its data resolved
  config_checks.check_splits(config)
  corpus = _corpus_identity(config.data)
  if "data.data_dir" in config_changes:
    _check_same_corpus(checkpointer, resume_step, config_changes["data.data_dir"], corpus)
  writer = cleanup.enter_context(writers.MetricWriters(workdir))
  _record_config(config, workdir, writer, resume_step, config_changes)
  batch_multiple = sharding.local_batch_multiple(mesh) * config.optim.grad_accum_steps
  steps_per_epoch = loader.steps_per_epoch(
    config.data, process_count=jax.process_count(), batch_multiple=batch_multiple
  )
  total_steps = steps_per_epoch * config.train.num_epochs
  logging.info("%d steps per epoch, %d steps", steps_per_epoch, total_steps)

  # ---- Teachers (frozen), or their cached posteriors -------------------------------------------
  teachers = teachers_setup.prepare(config, workdir, mesh)

  # ---- Training batches ------------------------------------------------------------------------
  train_data = loader.train_dataset(
    config.data,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    batch_multiple=batch_multiple,
    teacher_posteriors=teachers.posteriors,
  )
  train_iter = iter(train_data)

  # ---- Train step and state -------------------------------------------------------------------
  step = steps.make_train_step(config, mesh, steps_per_epoch)
  state = _initial_state(config, checkpointer, resume_step, step, train_iter)
  first_step = int(state.step)
  if first_step > total_steps:
    raise config_checks.ConfigError(
      f"train.num_epochs={config.train.num_epochs}: the workdir's checkpoint is at step "
      f"{first_step}, past this config's last step {total_steps}"
    )
  run = _Run(
    config, workdir, mesh, checkpointer, writer, train_iter, corpus, steps_per_epoch, total_steps
  )

  # ---- Training loop ---------------------------------------------------------------------------
  state, results = _train_loop(run, step, state, teachers.state, cleanup)
  if state is None:  # preempted after a checkpoint
    return {}

  # ---- Final evaluation (the final step is saved first: a failing evaluation loses nothing) ---
  if results is None:  # the loop ran to the last step (not stopped at its target)
    if first_step == total_steps and checkpointer.latest_step() != total_steps:
      checkpointer.save(
        total_steps,
        state,
        data_iterator=train_iter,
        config=config,
        meta=dict(corpus=corpus),
        force=True,
      )
    checkpointer.wait()
    results = _evaluate(run, run.predict_fn, state, total_steps)
  else:
    checkpointer.wait()  # the save of the step that reached the target
  logging.info(
    "done in %s: reports in %s",
    progress.duration(time.perf_counter() - start_time),
    workdir / "eval",
  )
  multihost_utils.sync_global_devices("avcd train done")
  return results


def _record_config(config, workdir: pathlib.Path, writer, resume_step, config_changes) -> None:
  """The config as run: hyperparameters in the metric writers, WORKDIR/config.json, and the
  changes a resumed run made (checkpoints.record_config_changes)."""
  writer.write_hparams(config.to_dict())
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    if config_changes:
      checkpoints.record_config_changes(workdir, resume_step, config_changes)
      logging.info(
        "resuming step %d with config changes (recorded in %s): %s",
        resume_step,
        workdir / checkpoints.CONFIG_HISTORY,
        "; ".join(f"{k}: {old} -> {new}" for k, (old, new) in config_changes.items()),
      )


@dataclasses.dataclass
class _Run:
  """What the loop and the evaluations of one run share."""

  config: ml_collections.ConfigDict  # as run: its corpus resolved
  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  checkpointer: checkpoints.TrainCheckpointer
  writer: writers.MetricWriters
  train_iter: object  # the Grain iterator (checkpointed with each step)
  corpus: dict  # _corpus_identity, stored in every checkpoint's meta
  steps_per_epoch: int
  total_steps: int
  predict_fn: compiled.ShapeCompiled | None = None  # set by the loop


def _its_time(step: int, every: int, *, also: bool = False) -> bool:
  """Whether a periodic action (log, checkpoint, evaluation) is due after `step`: every `every`
  steps (0: never), or whenever `also`."""
  return also or (every > 0 and step % every == 0)


def _train_loop(run: _Run, step: steps.TrainStep, state, teachers_state, cleanup):
  """Trains from `state` to the run's last step, or to the first evaluation that reaches the
  target of `train.stop_metrics`. Returns (final state, that evaluation's results or None), or
  (None, None) when preemption stopped the run after checkpointing its current step."""
  config, checkpointer, workdir = run.config, run.checkpointer, run.workdir
  first_step = int(state.step)
  update_fn = compiled.ShapeCompiled(step.update_fn, "train step")
  step_flops = flops.StepFlops(step.update_fn, config.optim.grad_accum_steps)
  run.predict_fn = compiled.ShapeCompiled(step.predict_step(), "predict step")
  log = _Progress(run, update_fn)
  watcher = preemption.PreemptionWatcher()
  cleanup.callback(watcher.close)
  profile = _Profile(config.train.profile_steps, first_step, run.total_steps, workdir)
  # Stops a trace still running when the loop ends early (preemption, a non-finite loss), so the
  # steps traced so far are written.
  cleanup.enter_context(profile.stack)

  if (
    config.train.stop_metrics
    and 0 < first_step < run.total_steps
    and _its_time(first_step, config.eval.every_steps)
  ):
    # The step resumed from may have been preempted before its evaluation, or may be where an
    # earlier start stopped at its target: evaluate it before training on.
    results = _evaluate(run, run.predict_fn, state, first_step)
    if _at_target(config.train, results, first_step):
      return state, results
  for step_number in range(first_step + 1, run.total_steps + 1):
    batch = next(run.train_iter)
    inputs = sharding.global_batch(
      {k: v for k, v in batch.items() if k in steps.TRAIN_INPUTS}, run.mesh
    )
    log.flops += step_flops(state, inputs, teachers_state)
    profile.before(step_number)
    with jax.profiler.StepTraceAnnotation("train", step_num=step_number):
      state, step_metrics = update_fn(state, inputs, teachers_state)
    profile.after(step_number, state)
    last = step_number == run.total_steps
    logged = _its_time(step_number, config.train.log_every_steps, also=last)
    if logged:
      # A step is logged only once the saves before it are committed: after a failed save the
      # run stops before any later step is reported (one wait per save at most, usually none).
      checkpointer.wait()
    else:
      checkpointer.raise_if_failed()  # a failed background save stops the run at once
    log.add(step_number, step_metrics, batch["record"])  # checks the previous step
    if logged:
      log.check_pending()
      log.write(step_number, state)

    preempted = watcher.stop_requested(step_number)
    results = None
    if not (preempted or last) and _its_time(step_number, config.eval.every_steps):
      # Evaluated before it is saved, so that the save carries the metrics that rank it among the
      # best checkpoints; a crash here costs at most the steps since the last checkpoint.
      results = _evaluate(run, run.predict_fn, state, step_number)
    at_target = results is not None and _at_target(config.train, results, step_number)
    final = preempted or last or at_target
    if _its_time(step_number, config.train.checkpoint_every_steps, also=final):
      log.check_pending()  # a step is checkpointed only once its loss is known to be finite
      checkpointer.save(
        step_number,
        state,
        data_iterator=run.train_iter,
        config=config,
        metrics=_checkpoint_metrics(config, results) if results else None,
        meta=dict(corpus=run.corpus),
        force=final,
      )
    if preempted:
      _stop_preempted(checkpointer, watcher, step_number)
      return None, None
    if at_target:
      if not logged:
        log.check_pending()
        log.write(step_number, state)
      return state, results
  return state, None


def _at_target(train_config: ml_collections.ConfigDict, results: dict, step_number: int) -> bool:
  """Whether every scalar of `train.stop_metrics` reached `train.stop_at_least` (never, when a
  named scalar was not evaluated: that is logged)."""
  names = tuple(train_config.stop_metrics)
  if not names:
    return False
  scalars = _scalars(results)
  missing = [name for name in names if name not in scalars]
  if missing:
    logging.warning("train.stop_metrics: %s not in this evaluation's scalars", missing)
    return False
  if not all(scalars[name] >= train_config.stop_at_least for name in names):  # NaN: not reached
    return False
  logging.info(
    "step %d: %s all at least %g; training stops here (train.stop_metrics)",
    step_number,
    {name: round(scalars[name], 4) for name in names},
    train_config.stop_at_least,
  )
  return True


def _stop_preempted(checkpointer, watcher, step_number: int) -> None:
  """After the preempted step's save: waits for it; raises Interrupted on Ctrl-C."""
  checkpointer.wait()
  if watcher.interrupted:
    raise preemption.Interrupted(
      f"interrupted: saved step {step_number} in {checkpointer.directory}; the same command "
      "resumes there"
    )
  logging.warning(
    "preempted: saved step %d in %s and stopped; the next start resumes there",
    step_number,
    checkpointer.directory,
  )


class _Profile:
  """A jax.profiler trace of `train.profile_steps` steps, from PROFILE_AFTER_STEPS after the
  first step of this start, into WORKDIR/profile."""

  def __init__(self, profile_steps: int, first_step: int, total_steps: int, workdir):
    self.steps, self.workdir = profile_steps, workdir
    self.first = first_step + PROFILE_AFTER_STEPS + 1
    self.last = min(self.first + profile_steps - 1, total_steps)
    self.stack = contextlib.ExitStack()
    if profile_steps and self.first > total_steps:
      logging.warning(
        "train.profile_steps: no profile, the run ends at step %d, before step %d where "
        "profiling would start",
        total_steps,
        self.first,
      )

  def before(self, step_number: int) -> None:
    if self.steps and step_number == self.first:
      jax.profiler.start_trace(str(self.workdir / "profile"))
      self.stack.callback(jax.profiler.stop_trace)

  def after(self, step_number: int, state) -> None:
    if self.steps and step_number == self.last:
      jax.block_until_ready(state)
      self.stack.close()  # stops the trace
      logging.info(
        "profiled steps %d-%d into %s", self.first, step_number, self.workdir / "profile"
      )


class _Progress:
  """The host side of the steps since the last log line: each step's metrics are read one step
  late (reading them at once would leave the device idle), checked for a non-finite loss, and
  summarised into the log line and the metric writers."""

  def __init__(self, run: _Run, update_fn: compiled.ShapeCompiled):
    self.run, self.update_fn = run, update_fn
    self.pending = None  # the previous step's (step, metrics, records), checked one step late
    self.interval = []  # host metrics since the last log line
    self.flops = 0.0
    self.compiled_before = 0.0  # update_fn.compile_seconds at the start of the interval
    self.peak_flops = flops.peak_flops_per_device()
    self.start = self.loop_start = time.perf_counter()

  def add(self, step_number: int, step_metrics: dict, records) -> None:
    """A step's metrics, still on the device; the previous step's are checked now."""
    self.check_pending()
    self.pending = (step_number, step_metrics, records)

  def check_pending(self) -> None:
    if self.pending is None:
      return
    step_number, step_metrics, records = self.pending
    self.pending = None
    config, checkpointer = self.run.config, self.run.checkpointer
    step_metrics = jax.tree.map(float, step_metrics)
    if not step_metrics["finite"] and config.train.on_nonfinite == "raise":
      checkpointer.wait()  # the last good checkpoint may still be being written
      last_good = checkpointer.latest_step()
      raise NonFiniteLossError(
        f"non-finite loss {step_metrics['loss']} at step {step_number}; clips of split "
        f"{config.data.train_split!r} in this process's batch: {_clip_ids(config, records)}; "
        f"last good checkpoint: "
        f"{checkpointer.directory / str(last_good) if last_good is not None else 'none'}"
      )
    if not step_metrics["finite"]:
      logging.warning(
        "non-finite loss %s at step %d: update skipped (train.on_nonfinite='skip'; "
        "counted as skipped_steps)",
        step_metrics["loss"],
        step_number,
      )
    self.interval.append(step_metrics)

  def write(self, step_number: int, state) -> None:
    """Logs the interval up to `step_number` and starts the next."""
    run, config = self.run, self.run.config
    now = time.perf_counter()
    compiling = self.update_fn.compile_seconds - self.compiled_before
    elapsed = max(now - self.start - compiling, 1e-9)
    self.compiled_before = self.update_fn.compile_seconds
    frames = sum(m["frames"] for m in self.interval)
    summary = {
      k: float(np.mean([m[k] for m in self.interval]))
      for k in self.interval[0]
      if k not in ("finite", "frames")
    }
    steps_per_second = len(self.interval) / elapsed
    schedule = ts.learning_rate_schedule(config.optim, run.steps_per_epoch)
    summary.update(
      steps_per_second=steps_per_second,
      frames_per_second=frames / elapsed,
      frames_per_second_per_device=frames / elapsed / jax.device_count(),
      flops_per_second=self.flops / elapsed,
      learning_rate=float(schedule(step_number)),
      skipped_steps=float(state.skipped_steps),
      epoch=step_number / run.steps_per_epoch,
    )
    mfu = flops.utilisation(summary["flops_per_second"], jax.device_count(), self.peak_flops)
    if mfu is not None:
      summary["mfu"] = mfu
    run.writer.write_scalars(step_number, summary)
    remaining = (run.total_steps - step_number) / max(steps_per_second, 1e-9)
    logged_losses = " ".join(
      f"{name} {summary[losses.metric_name(name)]:.4f}"
      for name, weight in losses.LOSS_TERMS.items()
      if config.loss[weight]
    )
    logging.info(
      "step %d/%d loss %.4f (%s) | epoch %.1f | %.2f steps/s %.0f frames/s | elapsed %s, ETA %s",
      step_number,
      run.total_steps,
      summary["loss"],
      logged_losses,
      summary["epoch"],
      steps_per_second,
      summary["frames_per_second"],
      progress.duration(now - self.loop_start),
      progress.duration(remaining),
    )
    self.interval, self.flops, self.start = [], 0.0, time.perf_counter()


def _evaluate(run: _Run, predict_fn, state, at_step: int) -> dict:
  """Evaluates every split (reports in WORKDIR/eval) and returns the checkpoint's metrics."""
  results = evaluate.evaluate_splits(
    predict_fn,
    state.params,
    state.batch_stats,
    run.config,
    run.mesh,
    run.workdir,
    source=dict(checkpoint_dir=str(run.checkpointer.directory), step=at_step),
  )
  scalars = _scalars(results)
  run.writer.write_scalars(at_step, scalars)
  logging.info(
    "step %d evaluation: %s",
    at_step,
    {k: round(v, 4) for k, v in scalars.items() if k.count("/") == 1},
  )
  return results


def _scalars(results: dict) -> dict[str, float]:
  """An evaluation's logged scalars: SPLIT/METRIC and SPLIT/auc/METHOD."""
  scalars = {
    f"{split}/{k}": v
    for split, m in results.items()
    for k, v in m.items()
    if k in ("auc", "eer", "acc", "bacc", "ap") and v is not None
  }
  scalars.update(
    {
      f"{split}/auc/{method}": v["auc"]
      for split, m in results.items()
      for method, v in m.get("per_method", {}).items()
      if v.get("auc") is not None
    }
  )
  return scalars


def _checkpoint_metrics(config, results: dict) -> dict:
  value = next(iter(results.values())).get(config.train.best_metric)  # first split, variant
  return {config.train.best_metric: value}
