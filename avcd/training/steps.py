"""The train step: a pure function over state pytrees, and the one place that jits it with
shardings for a mesh.

`make_train_step(config, mesh)` is the train step of `avcd train`; `avcd compile`, the
benchmarks and the tests build it through the same function (MaxText's pattern), so the program
that is compiled ahead of time, benchmarked and tested is the program that trains. Its predict
step is `avcd.core.inference.make_predict_step` on the same mesh and parameter layout.
"""

import dataclasses

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from avcd import checkpoints
from avcd.core import inference, sharding
from avcd.models import build, teachers as teachers_model
from avcd.models.student import frame_mask
from avcd.training import losses, state as ts
from avcd.training.state import TrainState
from data_pipelines import schema
from data_pipelines.reading import augment

NONFINITE_POLICIES = ("raise", "skip")
# What the train step reads of a loader batch; the rest (ids, phonemes, ...) stays on the host.
TRAIN_INPUTS = (
  "mfcc",
  "faces",
  "stft",
  "lips",
  "num_frames",
  "label",
  "frame_labels",
  "augment",
  "asr_probs",
  "vsr_probs",
)
# The batch field each `train.labels` choice trains the frame classifier on: the clip label on
# every frame (the reference), or the frames' own labels (partially forged clips).
TRAIN_LABEL_FIELDS = {"clip": "label", "frame": "frame_labels"}


def teacher_posteriors(
  teachers_graphdef,
  teachers_state,
  batch: dict,
  mask: jax.Array,
  *,
  dropout: bool,
  rng: jax.Array | None,
):
  """(B, T, K) ASR and VSR posteriors: the batch's cached ones, or the frozen teachers' forward
  (models.teachers.posteriors)."""
  if "asr_probs" in batch and "vsr_probs" in batch:
    return batch["asr_probs"], batch["vsr_probs"]
  return teachers_model.posteriors(
    teachers_graphdef, teachers_state, batch, mask, dropout=dropout, rng=rng
  )


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
    return einops.rearrange(x, "(rows micro) ... -> micro rows ...", micro=count)

  return jax.tree.map(split, batch)


def make_update_fn(
  graphdef,
  teachers_graphdef,
  optimizer: optax.GradientTransformation,
  cfg: ml_collections.ConfigDict,
):
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
  label_field = TRAIN_LABEL_FIELDS[cfg.train.labels]

  def micro_step(params, batch_stats, teachers_state, batch, rng):
    dropout_rng, teacher_rng = jax.random.split(rng)
    roll_rng = jax.random.fold_in(rng, 1)  # drawn apart so the other streams stay as they were
    mask = frame_mask(batch["num_frames"], batch["faces"].shape[1])
    asr, vsr = teacher_posteriors(
      teachers_graphdef,
      teachers_state,
      batch,
      mask,
      dropout=cfg.teachers.dropout_in_train,
      rng=teacher_rng,
    )
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
        rolled = student.cross_attend(
          audio, out["visual_frontend"], out["mask"], train=True, rngs=rngs
        )
      total, parts = losses.detector_losses(
        out, asr, vsr, batch[label_field], cfg.loss, rolled_embeds=rolled
      )
      return total, (parts, nnx.state(student, nnx.BatchStat))

    (_, (parts, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # The total and every term the losses computed (loss_phoneme_* only with phoneme heads).
    metrics = {k: v for k, v in parts.items() if k == "loss" or k.startswith("loss_")}
    metrics["soft_target"] = jnp.sum(jnp.where(mask, parts["soft_target"], 0.0)) / jnp.maximum(
      jnp.sum(mask), 1
    )
    return grads, new_batch_stats, metrics

  def update_fn(state: TrainState, batch: dict, teachers_state):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if accum_steps == 1:
      grads, batch_stats, metrics = micro_step(
        state.params, state.batch_stats, teachers_state, batch, rng
      )
    else:
      grads, batch_stats, metrics = _accumulated(
        micro_step, state, teachers_state, batch, rng, accum_steps
      )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    if cfg.train.on_nonfinite == "skip":
      kept = state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
    metrics.update(
      grad_norm=grad_norm, finite=finite, frames=jnp.sum(batch["num_frames"]).astype(jnp.float32)
    )
    return new_state, metrics

  return update_fn


def _accumulated(micro_step, state: TrainState, teachers_state, batch: dict, rng, accum_steps: int):
  """micro_step over `accum_steps` micro-batches in turn: the mean gradient, the BatchNorm
  statistics after the last one, and the mean of each metric."""

  def body(carry, inputs):
    grad_sum, batch_stats = carry
    micro, index = inputs
    grads, batch_stats, metrics = micro_step(
      state.params, batch_stats, teachers_state, micro, jax.random.fold_in(rng, index)
    )
    return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), metrics

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grad_sum, batch_stats), metrics = jax.lax.scan(
    body,
    (zeros, state.batch_stats),
    (_microbatches(batch, accum_steps), jnp.arange(accum_steps)),
  )
  grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
  return grads, batch_stats, jax.tree.map(jnp.mean, metrics)


def train_batch_spec(
  rows: int, length: int, *, with_lips: bool, teacher_classes: tuple[int, int] | None = None
) -> dict:
  """ShapeDtypeStructs of a loader training batch, as far as the train step reads it.

  `teacher_classes`: (ASR, VSR) classes when batches carry cached teacher posteriors.
  """
  fields = [
    f for f in schema.ARRAY_FIELDS if f.name in TRAIN_INPUTS and (with_lips or f.name != "lips")
  ]
  spec = {f.name: jax.ShapeDtypeStruct((rows, *f.shape(length)), f.dtype) for f in fields}
  spec.update(
    num_frames=jax.ShapeDtypeStruct((rows,), np.int32),
    label=jax.ShapeDtypeStruct((rows,), np.int32),
    augment={k: jax.ShapeDtypeStruct((rows,), dtype) for k, dtype in augment.PARAM_DTYPES.items()},
  )
  if teacher_classes:
    spec.update(
      {
        name: jax.ShapeDtypeStruct((rows, length, classes), np.float32)
        for name, classes in zip(("asr_probs", "vsr_probs"), teacher_classes)
      }
    )
  return spec


def random_train_batch(spec: dict, rng: np.random.Generator) -> dict:
  """Numpy arrays in the layout of `spec` (a `train_batch_spec`): every clip full length, clip
  labels alternating real and fake (on every frame), features random, augmentations drawn as the
  loader draws them."""
  rows, length = spec["faces"].shape[:2]

  def random_values(name, x):
    if x.dtype == np.uint8:
      return rng.integers(0, 256, x.shape, dtype=np.uint8)
    if name.endswith("_probs"):
      values = rng.random(x.shape, dtype=np.float32)
      return values / values.sum(axis=-1, keepdims=True)
    return rng.standard_normal(x.shape).astype(x.dtype)

  labels = ("num_frames", "label", "frame_labels", "augment")
  batch = {k: random_values(k, v) for k, v in spec.items() if k not in labels}
  label = (np.arange(rows) % 2).astype(np.int32)
  batch.update(
    num_frames=np.full(rows, length, np.int32),
    label=label,
    frame_labels=np.repeat(label[:, None], length, axis=1).astype(np.uint8),
    augment=augment.sample_params(rng, rows),
  )
  return batch


def _shardings(layout):
  return jax.tree.map(lambda x: x.sharding, layout)


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The jitted train step of a config on a mesh and the layouts (ShapeDtypeStructs with
  shardings) of its arguments; nothing is allocated until `initial_arguments`."""

  update_fn: jax.stages.Wrapped  # (state, batch, teachers_state) -> (state, metrics)
  graphdef: nnx.GraphDef  # the student's
  teachers_graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  state: TrainState  # abstract, with shardings
  teachers_state: tuple | None  # (params, batch_stats) layout; None when batches carry posteriors
  with_lips: bool  # batches carry lip features (the VSR teacher has no frontend)
  teacher_classes: tuple[int, int] | None  # (ASR, VSR) classes of cached posteriors
  mesh: jax.sharding.Mesh
  init_fns: tuple  # () -> TrainState, () -> untrained teachers (params, batch_stats)

  @property
  def state_shardings(self):
    return _shardings(self.state)

  def batch(self, length: int, rows: int) -> dict:
    """The layout of a global batch of `rows` clips of `length` frames."""
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(self.mesh)),
      train_batch_spec(
        rows, length, with_lips=self.with_lips, teacher_classes=self.teacher_classes
      ),
    )

  def arguments(self, length: int, rows: int) -> tuple:
    """Abstract (state, batch, teachers_state) of a batch of `rows` clips of `length` frames."""
    return self.state, self.batch(length, rows), self.teachers_state

  def lower(self, length: int, rows: int) -> jax.stages.Lowered:
    return self.update_fn.lower(*self.arguments(length, rows))

  def init_state(self) -> TrainState:
    """The seed's initial train state, on the mesh."""
    return jax.jit(self.init_fns[0], out_shardings=self.state_shardings)()

  def initial_arguments(self) -> tuple:
    """(state, teachers_state) on the mesh: the seed's initialisation, untrained teachers."""
    state = self.init_state()
    if self.teachers_state is None:
      return state, None
    return state, jax.jit(self.init_fns[1], out_shardings=_shardings(self.teachers_state))()

  def predict_step(self):
    """The jitted predict step on the same mesh and parameter layout."""
    return inference.make_predict_step(self.graphdef, self.state_shardings, self.mesh)


def make_train_step(config: ml_collections.ConfigDict, mesh, steps_per_epoch: int = 1) -> TrainStep:
  """The train step of `config` on `mesh`: optimizer, abstract state and its shardings, the
  teachers' layout, jit with donation.

  With `teachers.cache` the batches carry the teachers' posteriors and the step takes no
  teachers. `steps_per_epoch` only sets the learning-rate schedule, a constant of the program:
  it changes neither buffers nor FLOPs.
  """
  optimizer = ts.make_optimizer(config.optim, steps_per_epoch)
  graphdef, abstract, shardings, init_fn = ts.abstract_train_state(config, optimizer, mesh)

  def init_teachers():
    return tuple(build.split_model(build.build_teachers(config.teachers, config.seed))[1:])

  teachers_graphdef, *teachers = build.split_model(
    nnx.eval_shape(lambda: build.build_teachers(config.teachers, config.seed))
  )
  teachers_state, teacher_classes = None, None
  if config.teachers.cache:
    teacher_classes = (config.teachers.asr.num_classes, config.teachers.vsr.num_classes)
  else:
    teachers_state = checkpoints.abstract_like(
      tuple(teachers), sharding.state_shardings(tuple(teachers), mesh)
    )
  update_fn = sharding.jit_update(
    make_update_fn(graphdef, teachers_graphdef, optimizer, config),
    shardings,
    mesh,
    None if teachers_state is None else _shardings(teachers_state),
  )
  return TrainStep(
    update_fn,
    graphdef,
    teachers_graphdef,
    optimizer,
    checkpoints.abstract_like(abstract, shardings),
    teachers_state,
    with_lips=not config.teachers.vsr.use_frontend,
    teacher_classes=teacher_classes,
    mesh=mesh,
    init_fns=(init_fn, init_teachers),
  )
