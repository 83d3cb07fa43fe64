"""The train state pytree and the pieces that build it: optimizer, learning-rate schedule,
abstract layouts."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from avcd.core import sharding
from avcd.models import build
from avcd.models.student import Student


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes. `rng` is raw uint32 key data (checkpoint-friendly)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  skipped_steps: jax.Array  # updates skipped for a non-finite loss (train.on_nonfinite='skip')


def learning_rate_schedule(optim_cfg: ml_collections.ConfigDict, steps_per_epoch: int):
  """The reference's StepLR: lr x decay_per_epoch after every epoch; after a linear warmup over
  `warmup_steps` (from 0) when that is set, the epochs counted from the warmup's end."""
  if optim_cfg.get("warmup_steps", 0) > 0:
    return optax.warmup_exponential_decay_schedule(
      0.0,
      optim_cfg.learning_rate,
      optim_cfg.warmup_steps,
      transition_steps=steps_per_epoch,
      decay_rate=optim_cfg.decay_per_epoch,
      staircase=True,
    )
  return optax.exponential_decay(
    optim_cfg.learning_rate,
    transition_steps=steps_per_epoch,
    decay_rate=optim_cfg.decay_per_epoch,
    staircase=True,
  )


def make_optimizer(
  optim_cfg: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  adam = optax.adam(
    learning_rate_schedule(optim_cfg, steps_per_epoch),
    b1=optim_cfg.b1,
    b2=optim_cfg.b2,
    eps=optim_cfg.eps,
  )
  if optim_cfg.clip_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.clip_grad_norm), adam)
  return adam


def init_train_state(
  student: Student, optimizer: optax.GradientTransformation, seed: int
) -> TrainState:
  _, params, batch_stats = build.split_model(student)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=optimizer.init(params),
    rng=jax.random.key_data(jax.random.key(seed)),
    skipped_steps=jnp.zeros((), jnp.int32),
  )


def abstract_state(build_model, optimizer: optax.GradientTransformation, seed: int, mesh):
  """(graphdef, abstract TrainState, its shardings on `mesh`, init function) of the model that
  `build_model()` builds, trained by `optimizer`."""
  graphdef = nnx.graphdef(nnx.eval_shape(build_model))

  def init_fn():
    return init_train_state(build_model(), optimizer, seed)

  abstract = jax.eval_shape(init_fn)
  return graphdef, abstract, sharding.state_shardings(abstract, mesh), init_fn


def abstract_train_state(config: ml_collections.ConfigDict, optimizer, mesh):
  """abstract_state of the student of `config`."""
  return abstract_state(
    lambda: build.build_student(config.model, config.seed), optimizer, config.seed, mesh
  )
