"""Building the networks of a config: the student, the teachers, and splitting a model into its
graph and state."""

import ml_collections
from flax import nnx

from avcd.models.student import Student
from avcd.models.teachers import Teachers


def build_student(model_cfg: ml_collections.ConfigDict, seed: int) -> Student:
  return Student(model_cfg, rngs=nnx.Rngs(params=seed))


def build_teachers(teachers_cfg: ml_collections.ConfigDict, seed: int = 0) -> Teachers:
  return Teachers(teachers_cfg, rngs=nnx.Rngs(params=seed))


def split_model(model: nnx.Module):
  """(graphdef, params, batch_stats); a model holds no other state."""
  return nnx.split(model, nnx.Param, nnx.BatchStat)
