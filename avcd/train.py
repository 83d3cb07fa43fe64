"""Training loop: one linear function, in sections, big_vision style.

    avcd train --config=configs/synthetic.py --workdir=runs/synthetic

Resume order: the newest intact checkpoint in WORKDIR/checkpoints (a corrupt one is moved aside
and the one before it used), else `train.init_from` (an avcd training or model checkpoint, e.g.
converted PyTorch weights), else from scratch. SIGTERM checkpoints the current step and returns;
see docs/checkpoints.md.
"""

import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from avcd import checkpoints, evaluate, flops, preemption, sharding, steps, teacher_cache
from avcd import teachers_setup, writers
from avcd import train_state as ts
from data_pipelines import corpus_setup, loader, split_index

# What the train step reads; the rest of a loader batch (ids, phonemes, ...) stays on the host.
TRAIN_INPUTS = ("mfcc", "faces", "stft", "lips", "num_frames", "label", "augment", "asr_probs",
                "vsr_probs")


class NonFiniteLossError(FloatingPointError):
  pass


def abstract_train_state(config: ml_collections.ConfigDict, optimizer, mesh):
  """(graphdef, abstract TrainState, its shardings, init function)."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: ts.build_student(config.model, config.seed)))

  def init_fn():
    return ts.init_train_state(ts.build_student(config.model, config.seed), optimizer, config.seed)

  abstract = jax.eval_shape(init_fn)
  shardings = sharding.state_shardings(abstract, mesh)
  return graphdef, abstract, shardings, init_fn


def _initial_state(config, checkpointer, abstract, shardings, init_fn, train_iter):
  """Resume from the workdir's newest intact step, else start from train.init_from, else anew."""
  latest = checkpointer.restorable_step()
  target = checkpoints.abstract_like(abstract, shardings)
  if latest is not None:
    logging.info("resuming from %s step %d", checkpointer.directory, latest)
    return checkpointer.restore(latest, target, data_iterator=train_iter, expected=config.model)
  state = jax.jit(init_fn, out_shardings=shardings)()
  if config.train.init_from:
    params, batch_stats = checkpoints.restore_student(config.train.init_from, target,
                                                      expected=config.model)
    state = state.replace(params=params, batch_stats=batch_stats)
    logging.info("initialised the student from %s", config.train.init_from)
  return state


def _clip_ids(config: ml_collections.ConfigDict, records: np.ndarray) -> list[str]:
  """The ids of a batch's clips (filler rows dropped), for error messages."""
  index = split_index.load_index(split_index.open_split(config.data.builder, config.data.data_dir,
                                                        config.data.train_split))
  return sorted({str(i) for i in index.clips(records[records >= 0])["id"]})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the student on `config`, evaluates it, and returns the final evaluation metrics
  ({} when preemption stopped it after a checkpoint)."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)

  # ---- Devices and logging ---------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  writer = writers.MetricWriters(workdir)
  writer.write_hparams(config.to_dict())

  # ---- Data ------------------------------------------------------------------------------------
  corpus_setup.prepare_corpus(config.data, workdir)
  batch_multiple = sharding.local_batch_multiple(mesh) * config.optim.grad_accum_steps
  steps_per_epoch = loader.steps_per_epoch(config.data, process_count=jax.process_count(),
                                           batch_multiple=batch_multiple)
  total_steps = steps_per_epoch * config.train.num_epochs
  logging.info("%d steps per epoch, %d steps", steps_per_epoch, total_steps)

  # ---- Teachers (frozen) -----------------------------------------------------------------------
  teachers_graphdef, teachers_state = teachers_setup.frozen_teachers(config, workdir, mesh)
  teacher_posteriors = None
  if config.teachers.cache:
    # The batches then carry the teachers' posteriors: the step neither runs nor holds teachers.
    teacher_posteriors = teacher_cache.build_or_reuse(config, workdir, mesh, teachers_graphdef,
                                                      teachers_state)
    teachers_state = None

  # ---- Training batches ------------------------------------------------------------------------
  train_data = loader.train_dataset(config.data, seed=config.seed,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count(),
                                    batch_multiple=batch_multiple,
                                    teacher_posteriors=teacher_posteriors)
  train_iter = iter(train_data)

  # ---- Student, optimizer and train state ------------------------------------------------------
  optimizer = ts.make_optimizer(config.optim, steps_per_epoch)
  graphdef, abstract, shardings, init_fn = abstract_train_state(config, optimizer, mesh)
  checkpointer = checkpoints.TrainCheckpointer(
      workdir / "checkpoints", keep_latest=config.train.keep_checkpoints,
      keep_best=config.train.keep_best, best_metric=config.train.best_metric)
  state = _initial_state(config, checkpointer, abstract, shardings, init_fn, train_iter)
  first_step = int(state.step)

  # ---- Compiled steps --------------------------------------------------------------------------
  batch_sharding = sharding.batch_sharding(mesh)
  teachers_sharding = jax.tree.map(lambda x: x.sharding, teachers_state)
  update_fn = sharding.jit_update(
      steps.make_update_fn(graphdef, teachers_graphdef, optimizer, config), shardings,
      teachers_sharding, mesh)
  step_flops = flops.StepFlops(update_fn, config.optim.grad_accum_steps)
  peak_flops = flops.peak_flops_per_device()
  predict_fn = jax.jit(steps.make_predict_fn(graphdef),
                       in_shardings=(shardings.params, shardings.batch_stats, batch_sharding),
                       out_shardings=sharding.replicated(mesh))

  def run_evaluation(step: int) -> dict:
    """Evaluates every split (reports in WORKDIR/eval) and returns the checkpoint's metrics."""
    results = evaluate.evaluate_splits(predict_fn, state.params, state.batch_stats, config, mesh,
                                       workdir)
    scalars = {f"{split}/{k}": v for split, m in results.items() for k, v in m.items()
               if k in ("auc", "eer", "acc", "bacc", "ap") and v is not None}
    scalars.update({f"{split}/auc/{method}": v["auc"] for split, m in results.items()
                    for method, v in m.get("per_method", {}).items() if v.get("auc") is not None})
    writer.write_scalars(step, scalars)
    logging.info("step %d evaluation: %s", step, scalars)
    return results

  def checkpoint_metrics(results: dict) -> dict:
    value = next(iter(results.values())).get(config.train.best_metric)  # first split, variant
    return {config.train.best_metric: value}

  # ---- Training loop ---------------------------------------------------------------------------
  pending = None       # the previous step's (step, metrics, records), checked one step late
  interval = []        # host metrics since the last log line
  interval_flops = 0.0
  interval_start = time.perf_counter()

  def check(pending_step):
    step, metrics, records = pending_step
    metrics = jax.tree.map(float, metrics)
    if not metrics["finite"] and config.train.on_nonfinite == "raise":
      checkpointer.wait()  # the last good checkpoint may still be being written
      last_good = checkpointer.latest_step()
      raise NonFiniteLossError(
          f"non-finite loss {metrics['loss']} at step {step}; clips of split "
          f"{config.data.train_split!r} in this process's batch: {_clip_ids(config, records)}; "
          f"last good checkpoint: "
          f"{checkpointer.directory / str(last_good) if last_good is not None else 'none'}")
    if not metrics["finite"]:
      logging.warning("non-finite loss %s at step %d: update skipped (train.on_nonfinite='skip'; "
                      "counted as skipped_steps)", metrics["loss"], step)
    interval.append(metrics)

  watcher = preemption.PreemptionWatcher()

  for step in range(first_step + 1, total_steps + 1):
    batch = next(train_iter)
    inputs = sharding.global_batch({k: v for k, v in batch.items() if k in TRAIN_INPUTS}, mesh)
    interval_flops += step_flops(state, inputs, teachers_state)
    state, metrics = update_fn(state, inputs, teachers_state)
    if pending is not None:
      check(pending)  # the previous step: reading it now keeps the device busy
    pending = (step, metrics, batch["record"])

    if step % config.train.log_every_steps == 0 or step == total_steps:
      check(pending)
      pending = None
      elapsed = time.perf_counter() - interval_start
      frames = sum(m["frames"] for m in interval)
      summary = {k: float(np.mean([m[k] for m in interval])) for k in interval[0]
                 if k not in ("finite", "frames")}
      summary.update(
          frames_per_second=frames / elapsed,
          frames_per_second_per_device=frames / elapsed / jax.device_count(),
          flops_per_second=interval_flops / elapsed,
          learning_rate=float(ts.learning_rate_schedule(config.optim, steps_per_epoch)(step)),
          skipped_steps=float(state.skipped_steps), epoch=step / steps_per_epoch)
      mfu = flops.utilisation(summary["flops_per_second"], jax.device_count(), peak_flops)
      if mfu is not None:
        summary["mfu"] = mfu
      writer.write_scalars(step, summary)
      logging.info("step %d/%d loss %.4f (ce %.4f bce %.4f metric %.4f) %.0f frames/s "
                   "%.3g TFLOP/s", step, total_steps, summary["loss"], summary["loss_ce"],
                   summary["loss_bce"], summary["loss_metric"], summary["frames_per_second"],
                   summary["flops_per_second"] / 1e12)
      interval, interval_flops, interval_start = [], 0.0, time.perf_counter()

    preempted = watcher.stop_requested(step)
    if step == total_steps and not preempted:
      break
    results = None
    if config.eval.every_steps and step % config.eval.every_steps == 0 and not preempted:
      results = run_evaluation(step)
    if step % config.train.checkpoint_every_steps == 0 or preempted:
      if pending is not None:
        check(pending)  # a step is checkpointed only once its loss is known to be finite
        pending = None
      checkpointer.save(step, state, data_iterator=train_iter, config=config,
                        metrics=checkpoint_metrics(results) if results else None, force=preempted)
    if preempted:
      checkpointer.wait()
      checkpointer.close()
      writer.flush()
      watcher.close()
      logging.warning("preempted: saved step %d in %s and stopped; the next start resumes there",
                      step, checkpointer.directory)
      return {}

  # ---- Final evaluation and checkpoint -----------------------------------------------------------
  results = run_evaluation(total_steps)
  if checkpointer.latest_step() != total_steps:
    checkpointer.save(total_steps, state, data_iterator=train_iter, config=config,
                      metrics=checkpoint_metrics(results), force=True)
  checkpointer.wait()
  checkpointer.close()
  writer.flush()
  watcher.close()
  multihost_utils.sync_global_devices("avcd train done")
  return results
