"""A run's teacher cache (`teachers.cache`): found, or computed on the run's mesh before training.

`data_pipelines.reading.posterior_store` stores the posteriors; this module says which teachers
they belong to and computes them. The teachers are identified by their config (what shapes their
outputs) and their weights: the content of the checkpoint they were restored from (its checksums
manifest, which restoring verified), or the seed for `teachers.source='random'`. A different
checkpoint at the same path is a different cache.

Computing: every process runs the teachers (eval mode, `models.teachers.posteriors`, the forward
the train step runs) over its rows of whole-clip batches of `data.train_split`
(`loader.whole_clips_dataset`, at the training frame budget per micro-batch, so it fits wherever
training fits); the posteriors come back replicated and process 0 writes them. Process 0 alone
decides whether the cache exists, so every process takes part in the same computation.
"""

import contextlib
import functools
import hashlib
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from avcd import checkpoints
from avcd.core import sharding
from avcd.models import teachers as teachers_model
from avcd.models.student import frame_mask
from avcd.teachers import frozen
from data_pipelines.reading import loader, posterior_store as cache_store, split_index

# teachers config fields that do not change the posteriors (where weights come from, how the
# teachers are trained, how the student run uses them).
_NOT_IN_FINGERPRINT = ("source", "checkpoint", "training", "dropout_in_train", "cache", "cache_dir")
_TEACHER_INPUTS = ("stft", "faces", "lips", "num_frames", "record")
_PROGRESS_INTERVAL_S = 60.0


def _checkpoint_digest(step_dir: pathlib.Path) -> str:
  """A SHA-256 identifying the teachers item of a checkpoint step.

  It digests the item's entries in the step's checksums manifest (file SHA-256s that restoring
  verified), or, in a step without a manifest, the item's files themselves.
  """
  prefix = f"{checkpoints.TEACHERS}/"
  manifest = step_dir / checkpoints.CHECKSUMS
  if manifest.exists():
    files = json.loads(manifest.read_text())["files"]
    entries = {name: entry["sha256"] for name, entry in files.items() if name.startswith(prefix)}
  else:
    entries = {}
    for path in sorted((step_dir / checkpoints.TEACHERS).rglob("*")):
      if path.is_file():
        with path.open("rb") as f:
          entries[str(path.relative_to(step_dir))] = hashlib.file_digest(f, "sha256").hexdigest()
  return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def teachers_identity(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """The teachers a run uses, as the cache fingerprint records them (call after they are loaded).

  'random' teachers are their seed's initialisation under this jax version; the others, the
  checkpoint `frozen.load` restored.
  """
  teachers_cfg = json.loads(config.teachers.to_json_best_effort())
  identity = {"config": {k: v for k, v in teachers_cfg.items() if k not in _NOT_IN_FINGERPRINT}}
  if config.teachers.source == "random":
    identity["weights"] = {"random_seed": config.seed, "jax": jax.__version__}
  else:
    step_dir = checkpoints.locate(frozen.directory(config, workdir))
    identity["weights"] = {"checkpoint_sha256": _checkpoint_digest(step_dir)}
  return identity


def _posteriors(teachers_graphdef, teachers_state, batch: dict):
  mask = frame_mask(batch["num_frames"], batch["faces"].shape[1])
  asr, vsr = teachers_model.posteriors(
    teachers_graphdef, teachers_state, batch, mask, dropout=False, rng=None
  )
  return asr, vsr, batch["record"], batch["num_frames"]


def _compute(config, mesh, teachers_graphdef, teachers_state, writer, frame_budget: int) -> None:
  """Runs the teachers over every clip of the training split; process 0 (`writer`) stores them."""
  compute = jax.jit(
    functools.partial(_posteriors, teachers_graphdef),
    in_shardings=(
      jax.tree.map(lambda x: x.sharding, teachers_state),
      sharding.batch_sharding(mesh),
    ),
    out_shardings=sharding.replicated(mesh),
  )
  batches = loader.whole_clips_dataset(
    config.data,
    split=config.data.train_split,
    frame_budget=frame_budget,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    batch_multiple=sharding.local_batch_multiple(mesh),
  )
  start = last_report = time.perf_counter()
  clips = 0
  for batch in batches:
    inputs = {k: batch[k] for k in _TEACHER_INPUTS if k in batch}
    inputs["record"] = inputs["record"].astype(np.int32)  # jax keeps 32-bit integers
    asr, vsr, records, frames = (
      np.asarray(x) for x in compute(teachers_state, sharding.global_batch(inputs, mesh))
    )
    for row in np.flatnonzero(records >= 0):
      clips += 1
      if writer is not None:
        writer.add(int(records[row]), asr[row, : frames[row]], vsr[row, : frames[row]])
    if time.perf_counter() - last_report > _PROGRESS_INTERVAL_S:
      logging.info("teacher cache: %d clips in %.0f s", clips, time.perf_counter() - start)
      last_report = time.perf_counter()
  logging.info(
    "teacher cache: posteriors of %d clips computed in %.1f s", clips, time.perf_counter() - start
  )


def build_or_reuse(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh, teachers_graphdef, teachers_state
) -> cache_store.Cache:
  """The cache of `data.train_split` for these teachers, computed first if there is none.

  Every process calls it (the computation runs on the whole mesh) after `frozen.load`.

  Raises:
    ValueError: `teachers.dropout_in_train` is set (the targets are then random draws).
    FileNotFoundError: a process cannot see the cache process 0 wrote.
  """
  if config.teachers.dropout_in_train:
    raise ValueError(
      "teachers.cache=True needs teachers.dropout_in_train=False: with dropout the teachers' "
      "posteriors are random draws that change every step, which no stored copy reproduces"
    )
  split = split_index.open_split(config.data.builder, config.data.data_dir, config.data.train_split)
  start, frames = loader.clip_spans(config.data, split_index.load_index(split))
  fingerprint = cache_store.fingerprint(split, start, frames, teachers_identity(config, workdir))
  directory = cache_store.cache_directory(config.teachers.cache_dir, split, fingerprint)
  found = jax.process_index() == 0 and cache_store.Cache.open(directory) is not None
  if jax.process_count() > 1:
    found = bool(multihost_utils.broadcast_one_to_all(np.int32(found)))
  if found:
    logging.info("teacher cache: reusing %s", directory)
  else:
    logging.info("teacher cache: computing %s", directory)
    # The step runs the teachers on one micro-batch at a time: this fits wherever training does.
    frame_budget = max(config.data.frame_budget // config.optim.grad_accum_steps, 1)
    writer = (
      cache_store.Writer(directory, fingerprint, start, frames, config.teachers.asr.num_classes)
      if jax.process_index() == 0
      else contextlib.nullcontext()
    )
    with writer as opened_writer:
      _compute(config, mesh, teachers_graphdef, teachers_state, opened_writer, frame_budget)
  multihost_utils.sync_global_devices("teacher cache ready")
  cache = cache_store.Cache.open(directory)
  if cache is None:
    raise FileNotFoundError(
      f"process {jax.process_index()} cannot see the teacher cache {directory} that process 0 "
      "wrote: teachers.cache_dir must be on a file system every process shares"
    )
  return cache
