"""The teachers of a student run, through one door: `prepare` gives the train step its teachers
(graph and state on the mesh) or, with `teachers.cache`, the posterior cache the loader reads
instead. It trains them first where `teachers.source='train'` finds none, loads them (frozen.load)
and builds or reuses the cache (cache.build_or_reuse)."""

import dataclasses
import pathlib

import ml_collections
from absl import logging
from flax import nnx

from avcd.teachers import cache, frozen, training
from data_pipelines.reading import posterior_store


@dataclasses.dataclass(frozen=True)
class RunTeachers:
  """What a student run takes of its teachers."""

  graphdef: nnx.GraphDef
  state: tuple | None  # (params, batch_stats) on the mesh; None when batches carry posteriors
  posteriors: posterior_store.Cache | None  # the loader's cache; None without teachers.cache


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh) -> RunTeachers:
  """The teachers of a student run of `config` in `workdir`, on `mesh`.

  Every process calls it. With `teachers.cache` the step neither runs nor holds the teachers:
  their state is dropped once the cache is built.
  """
  if config.teachers.source == "train" and not frozen.has_checkpoint(config, workdir):
    path = frozen.directory(config, workdir)
    logging.info("teachers.source='train' and no teachers in %s yet: training them first", path)
    training.train_teachers(config, path)
  graphdef, state = frozen.load(config, workdir, mesh)
  if not config.teachers.cache:
    return RunTeachers(graphdef, state, None)
  return RunTeachers(graphdef, None, cache.build_or_reuse(config, workdir, mesh, graphdef, state))
