"""The jitted update step: it learns, keeps teachers frozen, and handles non-finite losses."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from avcd import config_lib
from avcd.core import sharding
from avcd.models import build
from avcd.training import steps

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "tiny.py"
FACE = 32


def _config(**overrides):
  return config_lib.load_config(CONFIG, {"data.augment": False, **overrides})


def _batch(seed=0, rows=4, frames=12):
  rng = np.random.default_rng(seed)
  lengths = np.array([frames, frames - 3, frames - 5, 0][:rows], np.int32)
  return dict(
    mfcc=rng.normal(size=(rows, 4 * frames, 13)).astype(np.float32) * 5,
    faces=rng.integers(0, 256, (rows, frames, FACE, FACE), dtype=np.uint8),
    stft=np.abs(rng.normal(size=(rows, 4 * frames, 321))).astype(np.float16),
    num_frames=lengths,
    label=np.array([0, 1, 1, 0][:rows], np.int32),
  )


def _setup(config):
  """The train step as avcd train builds it, on one device; its initial state and teachers."""
  mesh = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1)), jax.local_devices()[:1])
  step = steps.make_train_step(config, mesh, steps_per_epoch=100)
  state, teachers_state = step.initial_arguments()
  return state, step.update_fn, teachers_state


def test_steps_change_parameters_and_lower_the_loss_on_a_fixed_batch():
  config = _config(**{"optim.learning_rate": 3e-3})
  state, update_fn, teachers_state = _setup(config)
  batch = jax.tree.map(jnp.asarray, _batch())
  initial_params = jax.tree.map(np.asarray, state.params)
  initial_teachers = jax.tree.map(np.asarray, teachers_state)
  losses = []
  for _ in range(8):
    state, metrics = update_fn(state, batch, teachers_state)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 8
  changed = jax.tree.map(
    lambda a, b: not np.allclose(a, b), initial_params, jax.tree.map(np.asarray, state.params)
  )
  assert all(jax.tree.leaves(changed)), "some student parameter received no update"
  assert losses[-1] < losses[0] * 0.8, losses
  unchanged = jax.tree.map(
    np.array_equal, initial_teachers, jax.tree.map(np.asarray, teachers_state)
  )
  assert all(jax.tree.leaves(unchanged)), "teachers changed"


def test_teachers_are_deterministic_unless_configured_like_the_reference():
  batch = jax.tree.map(jnp.asarray, _batch())
  mask = jnp.arange(12)[None] < batch["num_frames"][:, None]
  for dropout, same in ((False, True), (True, False)):
    config = _config(**{"teachers.dropout_in_train": dropout})
    teachers = build.build_teachers(config.teachers, 0)
    graphdef, *state = build.split_model(teachers)
    run = lambda seed: steps.teacher_posteriors(
      graphdef, tuple(state), batch, mask, dropout=dropout, rng=jax.random.key(seed)
    )[0]
    assert np.array_equal(run(0), run(1)) == same


def test_nonfinite_step_is_skipped_and_counted():
  config = _config(**{"optim.learning_rate": 1e30, "train.on_nonfinite": "skip"})
  state, update_fn, teachers_state = _setup(config)
  batch = jax.tree.map(jnp.asarray, _batch())
  for _ in range(4):
    previous = jax.tree.map(np.asarray, state.params)
    state, metrics = update_fn(state, batch, teachers_state)
    if not bool(metrics["finite"]):
      assert all(
        jax.tree.leaves(
          jax.tree.map(np.array_equal, previous, jax.tree.map(np.asarray, state.params))
        )
      )
  assert int(state.skipped_steps) > 0
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_gradient_accumulation_equals_the_full_batch_step():
  """Micro-batch a takes rows a, a + 2, ...: with rows (x, x, y, y) both micro-batches are (x, y),
  whose losses and BatchNorm statistics equal the full batch's, so the steps must agree."""
  pair = _batch(rows=2, frames=12)
  pair["num_frames"][:] = 12  # equal lengths: per-micro-batch frame means equal the batch mean
  batch = {k: np.repeat(v, 2, axis=0) for k, v in pair.items()}
  batch = jax.tree.map(jnp.asarray, batch)
  updates = []
  for accum_steps in (1, 2):
    config = _config(**{"model.dropout": 0.0, "optim.grad_accum_steps": accum_steps})
    state, update_fn, teachers_state = _setup(config)
    before = [np.ravel(x) for x in jax.tree.leaves(state.params)]
    state, metrics = update_fn(state, batch, teachers_state)
    after = [np.ravel(x) for x in jax.tree.leaves(state.params)]
    updates.append((np.concatenate([a - b for a, b in zip(after, before)]), metrics))
  (full, full_metrics), (accumulated, accumulated_metrics) = updates
  np.testing.assert_allclose(accumulated_metrics["loss"], full_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(accumulated_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-4)
  cosine = full @ accumulated / np.linalg.norm(full) / np.linalg.norm(accumulated)
  assert cosine > 0.999, cosine


def test_roll_within_clips_keeps_each_clip_and_its_padding():
  x = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6, 1)
  rolled = steps._roll_within_clips(x, jnp.array([2, -1]), jnp.array([4, 6]))
  np.testing.assert_array_equal(rolled[0, :, 0], [2, 3, 0, 1, 4, 5])  # frames 4, 5 are padding
  np.testing.assert_array_equal(rolled[1, :, 0], [11, 6, 7, 8, 9, 10])


def test_sync_control_trains_without_teachers_and_counts_real_clips_only():
  config = _config(
    **{
      "loss.distill_weight": 0.0,
      "loss.metric_weight": 0.0,
      "loss.sync_weight": 1.0,
      "optim.learning_rate": 3e-3,
    }
  )
  state, update_fn, teachers_state = _setup(config)
  batch = jax.tree.map(jnp.asarray, _batch())
  losses = []
  for _ in range(6):
    state, metrics = update_fn(state, batch, teachers_state)
    losses.append((float(metrics["loss"]), float(metrics["loss_sync"]), float(metrics["loss_ce"])))
  assert losses[0][1] > 0 and losses[-1][1] < losses[0][1], losses
  np.testing.assert_allclose([t for t, _, _ in losses], [s + c for _, s, c in losses], rtol=1e-5)
  only_fakes = dict(batch, label=jnp.ones_like(batch["label"]))
  _, metrics = update_fn(state, only_fakes, teachers_state)
  assert float(metrics["loss_sync"]) == 0.0
