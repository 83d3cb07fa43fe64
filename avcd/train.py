"""Training loop: one linear function, in sections, big_vision style.

    avcd train --config=configs/synthetic.py --workdir=runs/synthetic

Resume order: a checkpoint already in WORKDIR/checkpoints, else `train.init_from` (an avcd
training or model checkpoint, e.g. converted PyTorch weights), else from scratch.
"""

import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from avcd import checkpoints, evaluate, sharding, steps, teachers_setup, writers
from avcd import train_state as ts
from data_pipelines import corpus_setup, loader

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
  """Resume from the workdir, else start from train.init_from, else from scratch."""
  latest = checkpointer.latest_step()
  target = checkpoints.abstract_like(abstract, shardings)
  if latest is not None:
    logging.info("resuming from %s step %d", checkpointer.directory, latest)
    return checkpointer.restore(latest, target, data_iterator=train_iter)
  state = jax.jit(init_fn, out_shardings=shardings)()
  if config.train.init_from:
    params, batch_stats = checkpoints.restore_student(config.train.init_from, target)
    state = state.replace(params=params, batch_stats=batch_stats)
    logging.info("initialised the student from %s", config.train.init_from)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the student on `config`, evaluates it, and returns the final evaluation metrics."""
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
  train_data = loader.train_dataset(config.data, seed=config.seed,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count(),
                                    batch_multiple=batch_multiple)
  train_iter = iter(train_data)
  logging.info("%d steps per epoch, %d steps", steps_per_epoch, total_steps)

  # ---- Teachers (frozen) -----------------------------------------------------------------------
  teachers_graphdef, teachers_state = teachers_setup.frozen_teachers(config, workdir, mesh)

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
  update_fn = jax.jit(steps.make_update_fn(graphdef, teachers_graphdef, optimizer, config),
                      in_shardings=(shardings, batch_sharding, teachers_sharding),
                      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  predict_fn = jax.jit(steps.make_predict_fn(graphdef),
                       in_shardings=(shardings.params, shardings.batch_stats, batch_sharding),
                       out_shardings=sharding.replicated(mesh))

  def run_evaluation(step: int) -> dict:
    """Evaluates every split (reports in WORKDIR/eval) and returns the checkpoint's metrics."""
    results = evaluate.evaluate_splits(predict_fn, state.params, state.batch_stats, config, mesh,
                                       workdir)
    scalars = {f"{split}/{k}": v for split, m in results.items() for k, v in m.items()
               if k in ("auc", "eer", "acc", "bacc", "ap") and v is not None}
    writer.write_scalars(step, scalars)
    logging.info("step %d evaluation: %s", step, scalars)
    return results

  def checkpoint_metrics(results: dict) -> dict:
    value = results[config.eval.splits[0]].get(config.train.best_metric)
    return {config.train.best_metric: value}

  # ---- Training loop ---------------------------------------------------------------------------
  pending = None       # the previous step's (step, metrics, records), checked one step late
  interval = []        # host metrics since the last log line
  interval_start = time.perf_counter()

  def check(pending_step):
    step, metrics, records = pending_step
    metrics = jax.tree.map(float, metrics)
    if not metrics["finite"] and config.train.on_nonfinite == "raise":
      last_good = checkpointer.latest_step()
      raise NonFiniteLossError(
          f"non-finite loss {metrics['loss']} at step {step}; clips (records of split "
          f"{config.data.train_split!r}) {sorted(set(records[records >= 0].tolist()))}; last "
          f"good checkpoint: "
          f"{checkpointer.directory / str(last_good) if last_good is not None else 'none'}")
    interval.append(metrics)

  for step in range(first_step + 1, total_steps + 1):
    batch = next(train_iter)
    inputs = sharding.global_batch({k: v for k, v in batch.items() if k in TRAIN_INPUTS}, mesh)
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
          learning_rate=float(ts.learning_rate_schedule(config.optim, steps_per_epoch)(step)),
          skipped_steps=float(state.skipped_steps), epoch=step / steps_per_epoch)
      writer.write_scalars(step, summary)
      logging.info("step %d/%d loss %.4f (ce %.4f bce %.4f metric %.4f) %.0f frames/s", step,
                   total_steps, summary["loss"], summary["loss_ce"], summary["loss_bce"],
                   summary["loss_metric"], summary["frames_per_second"])
      interval, interval_start = [], time.perf_counter()

    if step == total_steps:
      break
    results = None
    if config.eval.every_steps and step % config.eval.every_steps == 0:
      results = run_evaluation(step)
    if step % config.train.checkpoint_every_steps == 0:
      checkpointer.save(step, state, data_iterator=train_iter, config=config,
                        metrics=checkpoint_metrics(results) if results else None)

  # ---- Final evaluation and checkpoint -----------------------------------------------------------
  results = run_evaluation(total_steps)
  if checkpointer.latest_step() != total_steps:
    checkpointer.save(total_steps, state, data_iterator=train_iter, config=config,
                      metrics=checkpoint_metrics(results), force=True)
  checkpointer.wait()
  checkpointer.close()
  writer.flush()
  multihost_utils.sync_global_devices("avcd train done")
  return results
