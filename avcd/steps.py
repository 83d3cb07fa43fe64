"""Pure step functions over state pytrees, to be jitted with explicit shardings by the caller."""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from avcd import losses
from avcd.models.student import frame_mask
from avcd.train_state import TrainState
from data_pipelines import augment

NONFINITE_POLICIES = ("raise", "skip")


def teacher_posteriors(teachers_graphdef, teachers_state, batch: dict, mask: jax.Array, *,
                       dropout: bool, rng: jax.Array | None):
  """(B, T, K) ASR and VSR posteriors, from the batch's cache or by running the teachers."""
  if "asr_probs" in batch and "vsr_probs" in batch:
    return batch["asr_probs"], batch["vsr_probs"]
  teachers = nnx.merge(teachers_graphdef, *teachers_state)
  asr, vsr = teachers.posteriors(batch["stft"], batch["faces"], batch.get("lips"), mask,
                                 train=dropout, rngs=nnx.Rngs(dropout=rng) if dropout else None)
  return jax.lax.stop_gradient(asr), jax.lax.stop_gradient(vsr)


def _roll_shifts(rng: jax.Array, count: int, frames: tuple[int, int]) -> jax.Array:
  """(count,) shifts of frames[0] to frames[1] frames (inclusive), either direction."""
  magnitude_rng, sign_rng = jax.random.split(rng)
  magnitude = jax.random.randint(magnitude_rng, (count,), frames[0], frames[1] + 1)
  return jnp.where(jax.random.bernoulli(sign_rng, shape=(count,)), magnitude, -magnitude)


def _roll_within_clips(x: jax.Array, shifts: jax.Array, num_frames: jax.Array) -> jax.Array:
  """(B, T, ...) -> each clip's valid frames rolled circularly by its shift; padding stays."""
  t = jnp.arange(x.shape[1])[None, :]
  length = jnp.maximum(num_frames[:, None], 1)
  source = jnp.where(t < num_frames[:, None], jnp.mod(t + shifts[:, None], length), t)
  return jnp.take_along_axis(x, source.reshape(*source.shape, *([1] * (x.ndim - 2))), axis=1)


def _microbatches(batch: dict, count: int) -> dict:
  """(B, ...) -> (count, B / count, ...), micro-batch a taking rows a, a + count, ... so every
  device keeps its own rows."""
  def split(x):
    if x.shape[0] % count:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into {count} micro-batches")
    return jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_update_fn(graphdef, teachers_graphdef, optimizer: optax.GradientTransformation,
                   cfg: ml_collections.ConfigDict):
  """update_fn(state, batch, teachers_state) -> (state, metrics).

  One optimizer step on the batch (split into `optim.grad_accum_steps` micro-batches whose
  gradients are averaged; BatchNorm statistics advance once per micro-batch). Teachers are frozen:
  no gradient reaches them and they run deterministically unless `teachers.dropout_in_train`.
  With `train.on_nonfinite='skip'` a step whose loss or gradients are not finite leaves the state
  unchanged except for the `skipped_steps` counter; with 'raise' the host stops on the loss.
  """
  if cfg.train.on_nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f"train.on_nonfinite must be one of {NONFINITE_POLICIES}")
  accum_steps = cfg.optim.grad_accum_steps
  use_augmentation = cfg.data.augment
  use_sync_loss = cfg.loss.sync_weight > 0

  def micro_step(params, batch_stats, teachers_state, batch, rng):
    dropout_rng, teacher_rng = jax.random.split(rng)
    roll_rng = jax.random.fold_in(rng, 1)  # drawn apart so the other streams stay as they were
    mask = frame_mask(batch["num_frames"], batch["faces"].shape[1])
    asr, vsr = teacher_posteriors(teachers_graphdef, teachers_state, batch, mask,
                                  dropout=cfg.teachers.dropout_in_train, rng=teacher_rng)
    faces = augment.apply(batch["faces"], batch["augment"]) if use_augmentation else batch["faces"]

    def loss_fn(params):
      # copy=True: the module's variables belong to this trace, so BatchNorm may update them.
      student = nnx.merge(graphdef, params, batch_stats, copy=True)
      rngs = nnx.Rngs(dropout=dropout_rng)
      out = student(batch["mfcc"], faces, batch["num_frames"], train=True, rngs=rngs)
      rolled = None
      if use_sync_loss:
        shifts = _roll_shifts(roll_rng, batch["num_frames"].shape[0], cfg.loss.sync_roll_frames)
        audio = _roll_within_clips(out["audio_frontend"], shifts, batch["num_frames"])
        rolled = student.cross_attend(audio, out["visual_frontend"], out["mask"], train=True,
                                      rngs=rngs)
      total, parts = losses.detector_losses(out, asr, vsr, batch["label"], cfg.loss,
                                            rolled_embeds=rolled)
      return total, (parts, nnx.state(student, nnx.BatchStat))

    (_, (parts, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    metrics = {k: parts[k] for k in ("loss", "loss_ce", "loss_bce", "loss_metric", "loss_sync")}
    metrics["soft_target"] = jnp.sum(jnp.where(mask, parts["soft_target"], 0.0)) / jnp.maximum(
        jnp.sum(mask), 1)
    return grads, new_batch_stats, metrics

  def update_fn(state: TrainState, batch: dict, teachers_state):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if accum_steps == 1:
      grads, batch_stats, metrics = micro_step(state.params, state.batch_stats, teachers_state,
                                               batch, rng)
    else:
      def body(carry, inputs):
        grad_sum, batch_stats = carry
        micro, index = inputs
        grads, batch_stats, metrics = micro_step(state.params, batch_stats, teachers_state, micro,
                                                 jax.random.fold_in(rng, index))
        return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), metrics

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grad_sum, batch_stats), metrics = jax.lax.scan(
          body, (zeros, state.batch_stats), (_microbatches(batch, accum_steps),
                                             jnp.arange(accum_steps)))
      grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
      metrics = jax.tree.map(jnp.mean, metrics)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    if cfg.train.on_nonfinite == "skip":
      kept = state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
    metrics.update(grad_norm=grad_norm, finite=finite,
                   frames=jnp.sum(batch["num_frames"]).astype(jnp.float32))
    return new_state, metrics

  return update_fn


def make_predict_fn(graphdef):
  """predict_fn(params, batch_stats, batch) -> clip scores and probabilities (eval mode)."""

  def predict_fn(params, batch_stats, batch: dict) -> dict:
    student = nnx.merge(graphdef, params, batch_stats)
    out = student(batch["mfcc"], batch["faces"], batch["num_frames"], train=False)
    clip = out["clip_logits"]
    return dict(score=clip[:, 1], probability=jax.nn.softmax(clip, axis=-1)[:, 1],
                frame_logits=out["frame_logits"])

  return predict_fn
