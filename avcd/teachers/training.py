"""Training the ASR and VSR teachers on per-frame phoneme labels, and checking what they agree on.

    avcd train-teacher --config=configs/synthetic.py --workdir=runs/synthetic/teachers

Both teachers learn, by per-frame cross-entropy, the `phonemes` of the real clips of
`data.train_split` (only in real clips does the mouth say what the audio says): the ASR teacher
from the STFT, the VSR teacher from mouth crops through its own visual frontend (or stored lip
features). The result is a model checkpoint with a `teachers` item, which `teachers.checkpoint`
points a student run at, plus `report.json` and `soft_targets.png`: per-frame phoneme accuracy on
`teachers.training.eval_split`, and how the soft target 1 - D(ASR, VSR) is distributed over the
frames of real clips and of each fake method.
"""

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from avcd import checkpoints
from avcd.core import compiled, sharding
from avcd.models import build, teachers as teachers_model
from avcd.models.student import frame_mask
from avcd.training import losses, state as ts
from data_pipelines import progress
from data_pipelines.building import corpus_setup
from data_pipelines.reading import loader, split_index

TEACHER_INPUTS = ("stft", "faces", "lips", "num_frames", "phonemes")


def _teacher_data_config(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  cfg.train_real_only = True
  cfg.augment = False  # flips and rotations would move the mouth out of the crop box
  return cfg


def _masked_cross_entropy(logits, labels, valid):
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
  count = jnp.maximum(jnp.sum(valid), 1)
  accuracy = jnp.sum((jnp.argmax(logits, -1) == labels) & valid) / count
  return -jnp.sum(jnp.where(valid, picked, 0.0)) / count, accuracy


def make_update_fn(graphdef, optimizer):
  """update_fn(state, batch) -> (state, metrics): one step on both teachers' phoneme losses."""

  def update_fn(state: ts.TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    mask = frame_mask(batch["num_frames"], batch["phonemes"].shape[1])
    valid = mask & (batch["phonemes"] >= 0)

    def loss_fn(params):
      asr, vsr, batch_stats = teachers_model.forward(
        graphdef,
        (params, state.batch_stats),
        batch,
        mask,
        train=True,
        frontend_train=True,  # the visual frontend learns too
        rngs=nnx.Rngs(dropout=rng),
        copy=True,
      )
      asr_loss, asr_accuracy = _masked_cross_entropy(asr, batch["phonemes"], valid)
      vsr_loss, vsr_accuracy = _masked_cross_entropy(vsr, batch["phonemes"], valid)
      metrics = dict(
        asr_loss=asr_loss, vsr_loss=vsr_loss, asr_accuracy=asr_accuracy, vsr_accuracy=vsr_accuracy
      )
      return asr_loss + vsr_loss, (metrics, batch_stats)

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads))
    return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
    ), metrics

  return update_fn


def make_posteriors_fn(graphdef, divergence: str):
  """posteriors_fn(params, batch_stats, batch) -> per-frame predictions and soft targets."""

  def posteriors_fn(params, batch_stats, batch):
    mask = frame_mask(batch["num_frames"], batch["phonemes"].shape[1])
    asr, vsr, _ = teachers_model.forward(graphdef, (params, batch_stats), batch, mask)
    target = losses.soft_target(jax.nn.softmax(asr, -1), jax.nn.softmax(vsr, -1), divergence)
    return dict(asr=jnp.argmax(asr, -1), vsr=jnp.argmax(vsr, -1), soft_target=target, mask=mask)

  return posteriors_fn


def _evaluate(posteriors_fn, state, config, data_cfg, split, mesh) -> dict:
  """Per-frame phoneme accuracy on real clips; soft-target distribution per method."""
  dataset = loader.eval_dataset(
    data_cfg,
    config.eval,
    split=split,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    batch_multiple=sharding.local_batch_multiple(mesh),
  )
  index = split_index.load_index(split_index.open_split(data_cfg.builder, data_cfg.data_dir, split))
  correct = {"asr": 0, "vsr": 0}
  counted = 0
  targets_by_method = {}
  for batch in dataset:
    inputs = sharding.global_batch({k: v for k, v in batch.items() if k in TEACHER_INPUTS}, mesh)
    out = jax.tree.map(np.asarray, posteriors_fn(state.params, state.batch_stats, inputs))
    for row, record in enumerate(batch["record"]):
      if record < 0:
        continue
      valid = out["mask"][row]
      method = str(index.method[record])
      targets_by_method.setdefault(method, []).append(out["soft_target"][row][valid])
      if index.label[record] == 0:
        known = valid & (batch["phonemes"][row] >= 0)
        counted += int(known.sum())
        for name in correct:
          correct[name] += int((out[name][row] == batch["phonemes"][row])[known].sum())
  targets = {m: np.concatenate(v) for m, v in sorted(targets_by_method.items())}
  return dict(
    split=split,
    asr_frame_accuracy=correct["asr"] / max(counted, 1),
    vsr_frame_accuracy=correct["vsr"] / max(counted, 1),
    frames=counted,
    soft_target={
      m: dict(
        mean=float(v.mean()),
        median=float(np.median(v)),
        p10=float(np.percentile(v, 10)),
        p90=float(np.percentile(v, 90)),
        frames=int(v.size),
      )
      for m, v in targets.items()
    },
  ), targets


def _plot_soft_targets(targets: dict, path: pathlib.Path, divergence: str) -> None:
  """One panel per method (real first), on shared bins: overlaid, the methods whose targets sit
  at 1 hid each other and flattened the rest. Each panel gives the share of frames above 0.95."""
  from matplotlib import colormaps, figure  # pylint: disable=g-import-not-at-top

  methods = sorted(targets, key=lambda m: (m != "real", m))
  low = min(float(v.min()) for v in targets.values())
  bins = np.linspace(min(low, 0.0), 1.0, 41)
  fig = figure.Figure(figsize=(7, 1.3 + 1.1 * len(methods)), dpi=110, layout="constrained")
  axes = fig.subplots(len(methods), 1, sharex=True, squeeze=False)[:, 0]
  colours = [colormaps["tab10"](i % 10) for i in range(len(methods))]
  for ax, method, colour in zip(axes, methods, colours):
    values = targets[method]
    weights = np.full(values.shape, 100.0 / max(values.size, 1))
    ax.hist(values, bins=bins, weights=weights, color=colour)
    ax.text(
      0.01,
      0.8,
      f"{method}: median {np.median(values):.2f}, {100 * np.mean(values > 0.95):.0f}% above 0.95",
      transform=ax.transAxes,
      fontsize="small",
    )
    ax.set_ylabel("% frames", fontsize="small")
  axes[-1].set_xlabel(f"soft target 1 - D ({divergence}) per frame: teachers agree at 1")
  fig.suptitle("Teacher agreement by generation method")
  fig.savefig(path)


def _train(update_fn, state, train_iter, mesh, steps_per_epoch: int, total_steps: int):
  """The teachers' training loop: `total_steps` steps, a log line after every epoch."""
  start = interval_start = time.perf_counter()
  log, frames = [], 0
  for step in range(1, total_steps + 1):
    batch = next(train_iter)
    inputs = sharding.global_batch({k: v for k, v in batch.items() if k in TEACHER_INPUTS}, mesh)
    state, metrics = update_fn(state, inputs)
    log.append(metrics)
    frames += int(np.sum(batch["num_frames"]))
    if step % steps_per_epoch == 0 or step == total_steps:
      summary = {k: float(np.mean([float(m[k]) for m in log])) for k in log[0]}
      if not np.isfinite(summary["loss"]):
        raise FloatingPointError(f"teacher loss is {summary['loss']} at step {step}")
      now = time.perf_counter()
      seconds = max(now - interval_start - update_fn.compile_seconds, 1e-9)
      update_fn.compile_seconds = 0.0  # counted once
      logging.info(
        "teachers step %d/%d loss %.3f, frame accuracy ASR %.3f VSR %.3f | %.2f steps/s "
        "%.0f frames/s | elapsed %s, ETA %s",
        step,
        total_steps,
        summary["loss"],
        summary["asr_accuracy"],
        summary["vsr_accuracy"],
        len(log) / seconds,
        frames / seconds,
        progress.duration(now - start),
        progress.duration((total_steps - step) * seconds / len(log)),
      )
      log, frames, interval_start = [], 0, time.perf_counter()
  return state


def train_teachers(config: ml_collections.ConfigDict, output_dir: str | pathlib.Path) -> dict:
  """Trains both teachers on `config`, saves them to output_dir and returns the report."""
  output_dir = pathlib.Path(output_dir).absolute()
  output_dir.mkdir(parents=True, exist_ok=True)
  training = config.teachers.training

  # ---- Devices and data ------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  # A synthetic corpus goes beside the teachers' directory (DIR/../data), where a student run
  # whose workdir holds them (WORKDIR/teachers) finds it; data.data_dir puts it elsewhere.
  config = corpus_setup.prepare_corpus(config, output_dir.parent)
  data_cfg = _teacher_data_config(config.data)
  batch_multiple = sharding.local_batch_multiple(mesh)
  steps_per_epoch = loader.steps_per_epoch(
    data_cfg, process_count=jax.process_count(), batch_multiple=batch_multiple
  )
  total_steps = steps_per_epoch * training.num_epochs
  train_iter = iter(
    loader.train_dataset(
      data_cfg,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      batch_multiple=batch_multiple,
    )
  )

  # ---- Model, optimizer, state -----------------------------------------------------------------
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, training.learning_rate, min(training.warmup_steps, total_steps // 2), total_steps
  )
  optimizer = optax.adamw(schedule, weight_decay=training.weight_decay)
  graphdef, _, shardings, init_fn = ts.abstract_state(
    lambda: build.build_teachers(config.teachers, config.seed), optimizer, config.seed, mesh
  )
  state = jax.jit(init_fn, out_shardings=shardings)()
  update_fn = compiled.ShapeCompiled(
    sharding.jit_update(make_update_fn(graphdef, optimizer), shardings, mesh), "teacher step"
  )
  posteriors_fn = jax.jit(
    make_posteriors_fn(graphdef, config.loss.divergence),
    in_shardings=(shardings.params, shardings.batch_stats, sharding.batch_sharding(mesh)),
  )
  logging.info(
    "training teachers: %d steps (%d per epoch) on real clips of %s",
    total_steps,
    steps_per_epoch,
    data_cfg.train_split,
  )

  # ---- Training loop ---------------------------------------------------------------------------
  start = time.perf_counter()
  state = _train(update_fn, state, train_iter, mesh, steps_per_epoch, total_steps)

  # ---- Evaluation, report and checkpoint -------------------------------------------------------
  report, targets = _evaluate(posteriors_fn, state, config, data_cfg, training.eval_split, mesh)
  report.update(
    train_steps=total_steps,
    train_seconds=time.perf_counter() - start,
    divergence=config.loss.divergence,
  )
  logging.info(
    "teachers on %s: frame accuracy ASR %.3f, VSR %.3f; soft target medians %s",
    training.eval_split,
    report["asr_frame_accuracy"],
    report["vsr_frame_accuracy"],
    {m: round(v["median"], 3) for m, v in report["soft_target"].items()},
  )
  if jax.process_index() == 0:
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    _plot_soft_targets(targets, output_dir / "soft_targets.png", config.loss.divergence)
  checkpoints.save_model(
    output_dir,
    teachers_state=dict(params=state.params, batch_stats=state.batch_stats),
    config=ml_collections.ConfigDict(dict(teachers=config.teachers)),
    meta=dict(report=report),
  )
  return report
