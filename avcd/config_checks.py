"""Checking a whole config before any work starts: one error that names the field.

Misspelled field names are refused by the locked ConfigDict itself; this catches values that
would fail late (after a corpus is generated or a model trained) or silently (a misspelled metric
name that ranks every checkpoint at -inf). `check` needs nothing but the config; `check_splits`
runs once the corpus is prepared.
"""

import math

import jax
import ml_collections

from avcd import config_lib
from avcd.core import sharding
from avcd.evaluation import calibration, evaluate, localisation_report, metrics
from avcd.teachers import frozen
from avcd.training import losses, steps
from data_pipelines.reading import split_index

COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value avcd cannot run with; the message names the field."""


def _one_of(value, choices, field: str) -> None:
  if value not in choices:
    raise ConfigError(f"{field}={value!r}: choose one of {tuple(choices)}")


def _at_least(value, minimum, field: str) -> None:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
    raise ConfigError(f"{field}={value!r}: must be a number >= {minimum}")


SECTIONS = ("model", "teachers", "loss", "data", "eval", "optim", "train", "mesh")


def _kind(value) -> str | None:
  """'bool', 'int', 'number' (int or float), 'str', or None for anything else."""
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, int):
    return "int"
  if isinstance(value, float):
    return "number"
  return "str" if isinstance(value, str) else None


def _fits(value, reference) -> bool:
  """Whether `value` is the kind of value `reference` is (an int where a float is expected is a
  number too; tuples element by element against the reference's first element)."""
  if isinstance(reference, tuple):
    if not isinstance(value, tuple):
      return False
    return not reference or all(_fits(v, reference[0]) for v in value)
  want, got = _kind(reference), _kind(value)
  if want is None:
    return True
  return got == want or (want == "number" and got == "int")


def _check_types(config: ml_collections.ConfigDict) -> None:
  """Types before values: every field config_lib defines keeps its kind (a tuple of ints stays
  one), and no number anywhere in the config is NaN or infinite."""

  def walk(node, reference, path):
    for key, value in node.items():
      field = f"{path}{key}"
      expected = reference.get(key) if isinstance(reference, ml_collections.ConfigDict) else None
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, expected, f"{field}.")
        continue
      numbers = value if isinstance(value, tuple) else (value,)
      if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise ConfigError(f"{field}={value!r}: must be a finite number")
      if expected is not None and not _fits(value, expected):
        raise ConfigError(
          f"{field}={value!r}: must be {_describe_kind(expected)}, like the default {expected!r}"
        )

  walk(config, config_lib.defaults(), "")


def _describe_kind(reference) -> str:
  if isinstance(reference, tuple):
    plural = dict(bool="bools", int="integers", number="numbers", str="strings")
    return f"a tuple of {plural.get(_kind(reference[0]), 'values')}" if reference else "a tuple"
  return dict(bool="a bool", int="an integer", number="a number", str="a string")[_kind(reference)]


def _check_model_shapes(config: ml_collections.ConfigDict) -> None:
  """The widths that must agree for the networks to be built (checked here, before any work,
  rather than when the networks are built)."""
  model = config.model
  width = model.embed_dim
  for field, value in (
    ("model.audio.stage_channels[-1]", model.audio.stage_channels[-1]),
    ("model.visual.embed_dim", model.visual.embed_dim),
  ):
    if value != width:
      raise ConfigError(
        f"{field}={value} must equal model.embed_dim={width}: cross attention compares the "
        "audio and visual embeddings frame by frame"
      )
  if width % model.num_heads:
    raise ConfigError(
      f"model.embed_dim={width} must be divisible by model.num_heads={model.num_heads}"
    )
  for name in ("asr", "vsr"):
    teacher = config.teachers[name]
    if teacher.width % teacher.num_heads:
      raise ConfigError(
        f"teachers.{name}.width={teacher.width} must be divisible by "
        f"teachers.{name}.num_heads={teacher.num_heads}"
      )
  vsr = config.teachers.vsr
  if vsr.use_frontend and vsr.frontend.stage_channels[-1] != vsr.width:
    raise ConfigError(
      f"teachers.vsr.frontend.stage_channels[-1]={vsr.frontend.stage_channels[-1]} must equal "
      f"teachers.vsr.width={vsr.width}: the frontend's features are the teacher's input"
    )


def check_mesh(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError where `mesh` does not fit the devices of this job. Called once the job's
  processes are joined (jax.device_count() counts every process's devices), before any work."""
  try:
    sharding.mesh_shape(config.mesh, jax.device_count())
  except ValueError as e:
    raise ConfigError(str(e)) from None


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value cannot work."""
  for section in SECTIONS:
    if section not in config:
      raise ConfigError(f"the config has no {section!r} section")
  _check_types(config)
  _check_model_shapes(config)
  _one_of(config.model.compute_dtype, COMPUTE_DTYPES, "model.compute_dtype")
  for teacher in ("asr", "vsr"):
    _one_of(
      config.teachers[teacher].compute_dtype, COMPUTE_DTYPES, f"teachers.{teacher}.compute_dtype"
    )

  loss = config.loss
  _one_of(loss.divergence, tuple(losses.DIVERGENCES), "loss.divergence")
  _one_of(loss.metric_form, losses.METRIC_FORMS, "loss.metric_form")
  for name in losses.LOSS_TERMS.values():
    _at_least(loss[name], 0, f"loss.{name}")
  _check_phoneme_heads(config)
  low, high = loss.sync_roll_frames
  if not 1 <= low <= high:
    raise ConfigError(
      f"loss.sync_roll_frames={tuple(loss.sync_roll_frames)}: need 1 <= first <= second"
    )

  data = config.data
  for name in ("max_frames", "train_window", "frame_budget"):
    _at_least(data[name], 1, f"data.{name}")
  _at_least(data.num_workers, 0, "data.num_workers")
  if not data.bucket_lengths or min(data.bucket_lengths) < 1:
    raise ConfigError(f"data.bucket_lengths={tuple(data.bucket_lengths)}: need positive lengths")
  longest = max(data.bucket_lengths)
  if longest < data.max_frames:
    raise ConfigError(
      f"data.bucket_lengths: the largest bucket ({longest}) must hold the longest "
      f"clips (data.max_frames={data.max_frames}); add a bucket or lower "
      "data.max_frames"
    )

  teachers = config.teachers
  _one_of(teachers.source, frozen.SOURCES, "teachers.source")
  if teachers.cache and teachers.dropout_in_train:
    raise ConfigError(
      "teachers.cache=True needs teachers.dropout_in_train=False: cached "
      "posteriors are deterministic, dropout's are drawn anew every step"
    )
  if teachers.cache and data.train_window < data.max_frames:
    raise ConfigError(
      f"teachers.cache=True needs data.train_window >= data.max_frames "
      f"({data.train_window} < {data.max_frames}): the teachers attend over "
      "whole clips, so a window's posteriors are not cut from the cached ones"
    )

  evaluation = config.eval
  if not evaluation.splits:
    raise ConfigError("eval.splits is empty: name at least one split to evaluate")
  leading = tuple(evaluation.leading_silence)
  if not leading or set(leading) - set(evaluate.LEADING_SILENCE):
    raise ConfigError(
      f"eval.leading_silence={leading}: choose from {tuple(evaluate.LEADING_SILENCE)}"
    )
  _at_least(evaluation.every_steps, 0, "eval.every_steps")
  _at_least(evaluation.frame_budget, 1, "eval.frame_budget")
  _one_of(evaluation.calibration_method, calibration.METHODS, "eval.calibration_method")
  try:
    localisation_report.check_settings(evaluation.localisation)
  except ValueError as e:
    raise ConfigError(f"eval.localisation: {e}") from e

  optim = config.optim
  _at_least(optim.learning_rate, 0, "optim.learning_rate")
  _at_least(optim.warmup_steps, 0, "optim.warmup_steps")
  _at_least(optim.grad_accum_steps, 1, "optim.grad_accum_steps")
  _at_least(optim.clip_grad_norm, 0, "optim.clip_grad_norm")

  train = config.train
  _at_least(train.num_epochs, 1, "train.num_epochs")
  for name in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _at_least(train[name], 1, f"train.{name}")
  _at_least(train.keep_best, 0, "train.keep_best")
  _at_least(train.profile_steps, 0, "train.profile_steps")
  _one_of(train.best_metric, metrics.CHECKPOINT_METRICS, "train.best_metric")
  _one_of(train.on_nonfinite, steps.NONFINITE_POLICIES, "train.on_nonfinite")
  _one_of(train.labels, tuple(steps.TRAIN_LABEL_FIELDS), "train.labels")
  _check_stop_metrics(config)


# Evaluation scalars a target-quality stop may name (higher is better, per split or per method).
STOP_METRICS = ("auc", "ap", "acc", "bacc")


def _check_stop_metrics(config: ml_collections.ConfigDict) -> None:
  names = tuple(config.train.stop_metrics)
  if not names:
    return
  if config.eval.every_steps <= 0:
    raise ConfigError(
      f"train.stop_metrics={names} needs evaluations during training: set eval.every_steps"
    )
  for name in names:
    split, _, rest = name.partition("/")
    metric, _, method = rest.partition("/")
    if split not in config.eval.splits or metric not in (STOP_METRICS if not method else ("auc",)):
      raise ConfigError(
        f"train.stop_metrics: {name!r} is not an evaluated scalar; name it as SPLIT/METRIC "
        f"(METRIC one of {STOP_METRICS}) or SPLIT/auc/METHOD, with SPLIT in eval.splits "
        f"{tuple(config.eval.splits)}"
      )


def _check_phoneme_heads(config: ml_collections.ConfigDict) -> None:
  """Heads and their loss go together, and each head has its teacher's classes."""
  heads = tuple(config.model.phoneme_classes)
  weight = config.loss.phoneme_weight
  if len(heads) != 2 or any(not isinstance(c, int) or c < 0 for c in heads):
    raise ConfigError(
      f"model.phoneme_classes={heads}: need (ASR classes, VSR classes), (0, 0) for no heads"
    )
  if (heads != (0, 0)) != (weight > 0):
    raise ConfigError(
      f"model.phoneme_classes={heads} with loss.phoneme_weight={weight}: set both (heads and "
      "their loss) or neither"
    )
  teachers = (config.teachers.asr.num_classes, config.teachers.vsr.num_classes)
  if weight > 0 and heads != teachers:
    raise ConfigError(
      f"model.phoneme_classes={heads}: the heads learn the teachers' posteriors, so they need "
      f"the teachers' classes (teachers.asr/vsr.num_classes: {teachers})"
    )


def check_splits(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when a split the config reads is not in its prepared corpus."""
  wanted = [("data.train_split", config.data.builder, config.data.train_split)]
  wanted += [("eval.splits", *evaluate.split_source(config, s)) for s in config.eval.splits]
  for field in ("threshold_split", "calibration_split"):
    if config.eval[field]:
      wanted.append((f"eval.{field}", *evaluate.split_source(config, config.eval[field])))
  for field, builder, split in wanted:
    try:
      split_index.open_split(builder, config.data.data_dir, split)
    except Exception as e:  # TFDS raises several types for a missing split or corpus
      raise ConfigError(
        f"{field}: split {split!r} of {builder} in {config.data.data_dir} cannot "
        f"be opened: {' '.join(str(e).split())[:300]}"
      ) from e
