"""The train state pytree and the pieces that build it: networks, optimizer, abstract layouts,
and the student restored from a checkpoint."""

import dataclasses
import pathlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx

from avcd import checkpoints, config_lib
from avcd.models.student import Student
from avcd.models.teachers import Teachers
from avcd.training import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes. `rng` is raw uint32 key data (checkpoint-friendly)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  skipped_steps: jax.Array  # updates skipped for a non-finite loss (train.on_nonfinite='skip')


def build_student(model_cfg: ml_collections.ConfigDict, seed: int) -> Student:
  return Student(model_cfg, rngs=nnx.Rngs(params=seed))


def build_teachers(teachers_cfg: ml_collections.ConfigDict, seed: int = 0) -> Teachers:
  return Teachers(teachers_cfg, rngs=nnx.Rngs(params=seed))


def split_model(model: nnx.Module):
  """(graphdef, params, batch_stats); a model holds no other state."""
  return nnx.split(model, nnx.Param, nnx.BatchStat)


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
  _, params, batch_stats = split_model(student)
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
    lambda: build_student(config.model, config.seed), optimizer, config.seed, mesh
  )


@dataclasses.dataclass(frozen=True)
class RestoredStudent:
  """A checkpoint's student in eval form, the config it runs with and where it came from."""

  graphdef: nnx.GraphDef
  params: Any
  batch_stats: Any
  config: ml_collections.ConfigDict
  source: dict  # checkpoint directory, step and item
  shardings: Any  # of the TrainState the params and batch statistics are part of


def restore_student(
  path: str | pathlib.Path,
  step: int | None = None,
  *,
  config: ml_collections.ConfigDict | None = None,
  mesh=None,
) -> RestoredStudent:
  """The student of a training run or model checkpoint: the one restore path of `avcd eval`,
  `avcd export`, `avcd predict` and `train.init_from`.

  Args:
    path: a training workdir (its checkpoints/), a directory of steps, one step's directory, or a
      model checkpoint with a `student` item (`avcd convert`).
    step: a step of it; None takes the newest intact step (checkpoints.select_step: corrupt ones
      are skipped with a warning; a step asked for must verify). Where the step is deleted while
      it is read (a training run's retention), None takes the newest step left, a step asked
      for raises checkpoints.StepRetiredError.
    config: the config whose model the checkpoint must fit; None reads the one stored with it.
    mesh: where the parameters go (default: this process's first device).

  Raises:
    FileNotFoundError, checkpoints.CorruptCheckpointError, checkpoints.CheckpointMismatchError,
    checkpoints.StepRetiredError; ValueError when no config is given and the checkpoint stores none.
  """
  step_dir = checkpoints.select_step(path, step)
  while True:
    identity = checkpoints.step_identity(step_dir)
    try:
      return _restore_student(step_dir, config, mesh)
    except Exception as e:  # pylint: disable=broad-except
      # A training run's retention may delete the step while it is read: Orbax then fails in
      # TensorStore (e.g. "Truncated Zstd-compressed stream"), which reads like corruption.
      if not checkpoints.step_retired(step_dir, identity):
        raise
      if step is not None:
        raise checkpoints.StepRetiredError(
          f"checkpoint {step_dir} was deleted while it was read (the training run writing there "
          "keeps only its latest and best steps); ask for a step it keeps, or leave out "
          "the step for the newest one"
        ) from e
      retired, step_dir = step_dir, checkpoints.select_step(path)
      logging.warning(
        "step %s of %s was deleted while it was read (the training run's retention); using "
        "step %s, the newest one left",
        retired.name,
        retired.parent,
        step_dir.name,
      )


def _restore_student(step_dir: pathlib.Path, config, mesh) -> RestoredStudent:
  if config is None:
    config = checkpoints.read_config(step_dir)
    if config is None:
      raise ValueError(
        f"checkpoint {step_dir} stores no config (no {checkpoints.CONFIG!r} item); "
        "its model's config cannot be known"
      )
  if mesh is None:
    mesh = sharding.make_mesh(
      ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.local_devices()[:1]
    )
  # The optimizer only shapes a training state's restore target; model checkpoints have none.
  optimizer = make_optimizer(
    config.optim if "optim" in config else config_lib.optimizer(), steps_per_epoch=1
  )
  with_seed = ml_collections.ConfigDict(dict(model=config.model, seed=config.get("seed", 0)))
  graphdef, abstract, shardings, _ = abstract_train_state(with_seed, optimizer, mesh)
  params, batch_stats, item = checkpoints.restore_student_arrays(
    step_dir, checkpoints.abstract_like(abstract, shardings), expected=config.model
  )
  return RestoredStudent(
    graphdef,
    params,
    batch_stats,
    config,
    dict(checkpoint_dir=str(step_dir.parent), step=int(step_dir.name), item=item),
    shardings,
  )
