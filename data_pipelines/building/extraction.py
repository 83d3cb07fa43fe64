"""Manifest rows to stored examples: options, content keys, a parallel and resumable run."""

import dataclasses
import functools
import hashlib
import json
from typing import Mapping

from absl import logging

from data_pipelines import progress, schema
from data_pipelines.building import clip_store, clips, manifests, process_pool

# Bump when clips.extract_clip (or a feature it computes) gives another example for the same row
# and options: stored clips then no longer match their keys and are extracted again.
EXTRACTION_VERSION = 2  # 2: examples carry frame labels


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
  """The arguments of clips.extract_clip that decide an example's content (see there)."""

  luma: str = "bt601"
  max_frames: int | None = None
  max_av_mismatch_s: float = clips.DEFAULT_MAX_AV_MISMATCH_S


class ExtractionError(RuntimeError):
  """An unexpected failure (not a ClipRejected) while extracting a clip; names the clip."""


def clip_key(row: manifests.ManifestRow, options: ExtractOptions) -> str:
  """A hex key that changes with any field of the row, the options or EXTRACTION_VERSION."""
  text = json.dumps(
    [EXTRACTION_VERSION, dataclasses.asdict(row), dataclasses.asdict(options)], sort_keys=True
  )
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def extract_example(row: manifests.ManifestRow, options: ExtractOptions) -> dict:
  """clips.extract_clip with `options`; raises clips.ClipRejected for an unusable clip."""
  return clips.extract_clip(row, **dataclasses.asdict(options))


def extract_missing(
  store: clip_store.ClipStore,
  rows: Mapping[str, manifests.ManifestRow],
  options: ExtractOptions,
  *,
  num_workers: int,
  what: str,
  progress_interval_s: float = 30.0,
) -> dict[str, str | None]:
  """Extracts into `store` each clip of `rows` (key -> row) that it does not hold yet.

  The caller must be the store's only writer. Clips run in `num_workers` processes, each storing
  its clip when done, so an interrupted run loses at most the clips in flight. A clip whose
  worker process dies twice is stored as rejected.

  Args:
    store: where clips are stored.
    rows: clip_key(row, options) -> row.
    options: extraction options.
    num_workers: worker processes.
    what: names the run in log lines.
    progress_interval_s: seconds between progress lines.

  Returns:
    key -> None when the clip's example is stored, else the reason it was rejected.

  Raises:
    ExtractionError: extracting a clip failed in an unexpected way (a bug, not a bad clip).
  """
  stale = store.remove_unfinished()
  if stale:
    logging.info("%s: deleted %d unfinished files of an interrupted run", what, stale)
  finished = store.finished()
  status = {key: finished[key] for key in rows if key in finished}
  todo = [
    (str(store.directory), key, row, options) for key, row in rows.items() if key not in finished
  ]
  logging.info(
    "%s: %d clips, %d finished by an earlier run, %d to extract with %d processes",
    what,
    len(rows),
    len(status),
    len(todo),
    num_workers,
  )
  tracker = progress.Progress(
    what, len(rows), already_done=len(status), interval_s=progress_interval_s
  )
  for (_, key, row, _), result in process_pool.imap_unordered(
    _extract_into_store, todo, num_workers=num_workers
  ):
    if isinstance(result, process_pool.WorkerDied):
      result = f"{row.video_path}: {result.reason}"
      store.write_rejected(key, result)
    if result is not None:
      logging.info("%s: rejected %s: %s", what, row.id, result)
    status[key] = result
    tracker.step(rejected=result is not None)
  return status


@functools.cache
def _features():
  return schema.tfds_features()


def _extract_into_store(
  store_dir: str, key: str, row: manifests.ManifestRow, options: ExtractOptions
) -> str | None:
  """Runs in a worker: stores the clip's serialized example, or its rejection reason."""
  store = clip_store.ClipStore(store_dir)
  try:
    example = extract_example(row, options)
  except clips.ClipRejected as e:
    store.write_rejected(key, e.reason)
    return e.reason
  except Exception as e:  # pylint: disable=broad-except
    raise ExtractionError(
      f"extracting {row.id} ({row.video_path}) failed: {type(e).__name__}: {e}"
    ) from e
  store.write_example(key, _features().serialize_example(example))
  return None
