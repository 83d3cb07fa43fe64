"""The frozen teachers' per-frame posteriors of a split, stored once beside its shards.

With `teachers.cache` the teachers run once over every clip of the training split (eval mode,
whole clips) instead of in every train step; `loader.train_dataset(teacher_posteriors=cache)`
then attaches each batch's `asr_probs` / `vsr_probs`, windowed like the other per-frame fields,
and the step uses them instead of running the teachers (`avcd.training.steps.teacher_posteriors`).
`avcd.teachers.cache` decides which teachers and computes the posteriors; this module stores and
reads them.

A cache is one directory, `<root>/<split>.<key>/`:
  posteriors.array_record   one record per clip, in the order they were computed: the float32
                            bytes of a (2, T, K) array, ASR then VSR posteriors of the clip's T
                            frames from its `start`
  clips.npz                 per split record: `position` (its record in the file), `start`
                            (first frame covered) and `frames` (T)
  cache.json                the fingerprint it was computed for, and K
The root is `teachers.cache_dir`, or `teacher_cache/` next to the split's shards. The key is the
first 128 bits of the SHA-256 of the fingerprint (`fingerprint`): the teachers' identity (their
weights and config, as the caller describes them), the split's shard files (names, slices,
sizes, modification times) and each clip's span (`loader.clip_spans`: it moves with
data.max_frames and data.trim_leading_silence). A change to any of these changes the key, so a
stale cache is never read: it is simply not found. Caches of older fingerprints stay until
deleted by hand.

A writer fills a temporary directory beside the final one and renames it into place once every
record is written, so a reader sees a whole cache or none; when two writers race, the first rename
wins and the other's copy is discarded.

Posteriors are stored as float32 (8 K bytes per frame, 320 bytes at the paper's K = 40, against
~16 KB of the clip's own fields): the cached targets are the online ones, not a rounding of them.
"""

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from data_pipelines.reading import split_index

# Bump when the stored layout or what a fingerprint covers changes, so older caches are not found.
FORMAT = 1
RECORDS_FILE = "posteriors.array_record"
CLIPS_FILE = "clips.npz"
META_FILE = "cache.json"
DEFAULT_ROOT = "teacher_cache"  # under the directory of the split's shards


def fingerprint(
  split: split_index.Split, start: np.ndarray, frames: np.ndarray, teachers: dict
) -> dict:
  """Everything a split's cached posteriors depend on, as JSON-compatible values.

  Args:
    split: the prepared split.
    start, frames: per record of the split, the span of frames the posteriors cover (the clip as
      the loader reads it, `loader.clip_spans`).
    teachers: the teachers' identity (weights and config), from the caller.
  """
  spans = np.stack([np.asarray(start, np.int64), np.asarray(frames, np.int64)])
  return {
    "format": FORMAT,
    "builder": split.builder,
    "split": split.split,
    "shards": split_index.shard_files(split),
    "spans_sha256": hashlib.sha256(spans.tobytes()).hexdigest(),
    "teachers": teachers,
  }


def cache_directory(root: str, split: split_index.Split, cache_fingerprint: dict) -> str:
  """The directory of the cache with this fingerprint under `root` ('' = beside the shards)."""
  if not root:
    root = os.path.join(os.path.dirname(split.file_instructions[0].filename), DEFAULT_ROOT)
  # 128 bits of the fingerprint's digest tell caches apart; the builder is in the fingerprint.
  key = hashlib.sha256(json.dumps(cache_fingerprint, sort_keys=True).encode()).hexdigest()[:32]
  readable_split = re.sub(r"[^\w.-]+", "_", split.split)
  return os.path.join(root, f"{readable_split}.{key}")


@dataclasses.dataclass(frozen=True, eq=False)
class Cache:
  """A complete cache directory, opened for reading (picklable; the file opens lazily)."""

  directory: str
  num_classes: int
  position: np.ndarray  # per split record: its record in RECORDS_FILE
  start: np.ndarray  # per split record: the first frame the posteriors cover
  frames: np.ndarray  # per split record: how many frames they cover

  @classmethod
  def open(cls, directory: str) -> "Cache | None":
    """The cache in `directory`, or None when there is none (a writer renames it in whole)."""
    try:
      with open(os.path.join(directory, META_FILE)) as f:
        meta = json.load(f)
    except FileNotFoundError:
      return None
    with np.load(os.path.join(directory, CLIPS_FILE)) as clips:
      return cls(
        directory, int(meta["num_classes"]), clips["position"], clips["start"], clips["frames"]
      )

  def __len__(self) -> int:
    return len(self.position)

  @functools.cached_property
  def records(self) -> grain.sources.ArrayRecordDataSource:
    return grain.sources.ArrayRecordDataSource([os.path.join(self.directory, RECORDS_FILE)])

  def covers(self, records: np.ndarray, start: np.ndarray, frames: np.ndarray) -> bool:
    """Whether the cache holds exactly frames [start[r], start[r] + frames[r]) of each record r.

    `start` and `frames` are per split record (`loader.clip_spans`); `records` selects the ones
    that must match.
    """
    return (
      len(start) == len(self)
      and np.array_equal(self.start[records], start[records])
      and np.array_equal(self.frames[records], frames[records])
    )

  def windows(
    self, records: np.ndarray, start: np.ndarray, frames: np.ndarray, length: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """(B, length, K) float32 ASR and VSR posteriors of frames [start, start + frames) per row.

    `records`, `start` and `frames` are per batch row, as the loader plans them.

    Uniform (1 / K) beyond `frames` and in filler rows (record -1): the divergence of the
    correlation target stays finite there (zeros would give 0 / 0), and the losses mask it.
    """
    shape = (len(records), length, self.num_classes)
    asr = np.full(shape, 1.0 / self.num_classes, np.float32)
    vsr = np.full(shape, 1.0 / self.num_classes, np.float32)
    present = np.flatnonzero(records >= 0)
    if not len(present):  # ArrayRecord rejects an empty read.
      return asr, vsr
    stored = self.records.__getitems__(self.position[records[present]].tolist())
    for row, data in zip(present, stored):
      record, count = records[row], int(frames[row])
      offset = int(start[row]) - int(self.start[record])
      if offset < 0 or offset + count > self.frames[record]:
        raise ValueError(
          f"record {record}: frames [{start[row]}, {start[row] + count}) are not "
          f"all in the cached [{self.start[record]}, "
          f"{self.start[record] + self.frames[record]}) of {self.directory}"
        )
      posteriors = np.frombuffer(data, np.float32).reshape(2, self.frames[record], self.num_classes)
      asr[row, :count] = posteriors[0, offset : offset + count]
      vsr[row, :count] = posteriors[1, offset : offset + count]
    return asr, vsr


class Writer:
  """Writes a cache directory: clips in any order, renamed into place whole (see module doc).

  Use as a context manager: leaving the block normally commits (every record of the split must
  have been added), leaving it by an exception discards the partial cache.
  """

  def __init__(
    self,
    directory: str,
    cache_fingerprint: dict,
    start: np.ndarray,
    frames: np.ndarray,
    num_classes: int,
  ):
    self.directory = directory
    self._fingerprint = cache_fingerprint
    self._start = np.asarray(start, np.int32)
    self._frames = np.asarray(frames, np.int32)
    self._num_classes = num_classes
    self._position = np.full(len(self._frames), -1, np.int64)
    self._written = 0
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    self._tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    self._records = ArrayRecordWriter(os.path.join(self._tmp, RECORDS_FILE), "group_size:1")

  def add(self, record: int, asr: np.ndarray, vsr: np.ndarray) -> None:
    """Stores the (T, K) posteriors of split record `record` (T: its span's frames)."""
    expected = (int(self._frames[record]), self._num_classes)
    if asr.shape != expected or vsr.shape != expected:
      raise ValueError(
        f"record {record}: posteriors of shapes {asr.shape} and {vsr.shape}, the "
        f"cache expects {expected}"
      )
    if self._position[record] >= 0:
      raise ValueError(f"record {record} is already in the cache")
    self._records.write(np.stack([asr, vsr]).astype(np.float32).tobytes())
    self._position[record] = self._written
    self._written += 1

  def commit(self) -> None:
    self._records.close()
    missing = np.flatnonzero(self._position < 0)
    if len(missing):
      raise ValueError(
        f"{len(missing)} of {len(self._position)} records have no posteriors "
        f"(e.g. {missing[:5].tolist()})"
      )
    np.savez(
      os.path.join(self._tmp, CLIPS_FILE),
      position=self._position,
      start=self._start,
      frames=self._frames,
    )
    with open(os.path.join(self._tmp, META_FILE), "w") as f:
      json.dump(
        {"num_classes": self._num_classes, "fingerprint": self._fingerprint},
        f,
        indent=1,
        sort_keys=True,
      )
    try:
      os.rename(self._tmp, self.directory)
    except OSError:
      if Cache.open(self.directory) is None:
        raise
      shutil.rmtree(self._tmp)  # Another writer committed the same cache first.

  def abort(self) -> None:
    self._records.close()  # closing twice is harmless
    shutil.rmtree(self._tmp, ignore_errors=True)

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, error_type, error, traceback) -> None:
    if error_type is not None:
      self.abort()
      return
    try:
      self.commit()
    except BaseException:
      self.abort()
      raise
