"""One split of a prepared corpus: its ArrayRecord records, their decoder, and a per-record index.

`open_split(builder, data_dir, split)` finds the split's ArrayRecord files through the TFDS builder
(a registered `ClipBuilder`, or only the prepared files: TFDS then reads `features.json`) and
decodes records with the builder's own feature spec, so a change of the schema's encodings needs
no change here. Reading the files with `grain.sources.ArrayRecordDataSource` plus
`features.deserialize_example_np` runs at the speed of `builder.as_data_source()` (3.9 vs 4.1 ms
per 70-frame clip, both dominated by zlib and zstd), and in addition lets a caller skip fields.

`load_index(split)` gives the per-record metadata that batch planning needs (length, labels,
method, id, the silent lead-in) without decoding clips every epoch. It is computed in one pass
that decodes only the small fields, and cached next to the shards; the cache is recomputed when
the shards (names, sizes, modification times), the split's slice or `INDEX_FORMAT` change.
"""

import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import zipfile

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines import schema

# Bump when the index's fields or the silence rule change, so older caches are recomputed.
INDEX_FORMAT = 3  # 3: true fake segments (float64)
# MFCC coefficient 0 is python_speech_features' natural-log frame energy. A video frame counts as
# silent when the loudest of its audio frames lies 30 dB (ln 10^3 nats) below the clip's speech
# level, the 90th percentile of its per-frame energy: relative to the clip, so recording gain does
# not matter, and a percentile, so a few clicks do not raise the level.
SILENCE_MARGIN = float(np.log(1e3))
SPEECH_LEVEL_PERCENTILE = 90
# Records decoded per read while indexing (one parallel ArrayRecord read each).
_INDEX_READ_CHUNK = 64
_SKIP = tfds.decode.SkipDecoding()


def leading_silent_frames(mfcc: np.ndarray) -> int:
  """Video frames of silence that open a clip, judged from MFCC c0 (see SILENCE_MARGIN).

  Never the whole clip: the loudest frame is always above the threshold.
  """
  log_energy = mfcc[:, 0].reshape(-1, schema.AUDIO_FRAMES_PER_VIDEO_FRAME).max(axis=1)
  threshold = np.percentile(log_energy, SPEECH_LEVEL_PERCENTILE) - SILENCE_MARGIN
  return int(np.argmax(log_energy >= threshold))


@dataclasses.dataclass(frozen=True)
class Split:
  """A prepared split: its records in order, and the decoder of its examples.

  Picklable (Grain worker processes receive it); the file readers open lazily in each process.
  """

  builder: str
  split: str
  file_instructions: tuple
  features: tfds.features.FeaturesDict

  @functools.cached_property
  def records(self) -> "ShardRecords":
    """Raw serialized examples; `records.__getitems__(keys)` reads many in parallel."""
    return ShardRecords(self.builder, self.split, self.file_instructions)

  def __len__(self) -> int:
    return sum(instruction.take for instruction in self.file_instructions)

  def decode(self, serialized: bytes, skip: tuple[str, ...] = ()) -> dict:
    """One example as numpy, leaving the fields in `skip` undecoded (as raw bytes)."""
    return self.features.deserialize_example_np(serialized, decoders={k: _SKIP for k in skip})


class DamagedShardError(RuntimeError):
  """A shard file of a prepared split that ArrayRecord cannot read; the message names it."""


class ShardRecords:
  """A split's records, read by grain.sources.ArrayRecordDataSource, with a damaged shard file
  (truncated, emptied, a flipped bit: ArrayRecord raises RuntimeError, naming no file) reported
  as a DamagedShardError naming the file, the split and what to do.

  Picklable: the reader opens lazily in each process.
  """

  def __init__(self, builder: str, split: str, file_instructions: tuple):
    self._builder = builder
    self._split = split
    self._instructions = file_instructions
    self._source = None

  def __len__(self) -> int:
    return sum(instruction.take for instruction in self._instructions)

  def __getitem__(self, key: int) -> bytes:
    return self.__getitems__([int(key)])[0]

  def __getitems__(self, keys) -> list[bytes]:
    try:
      if self._source is None:
        self._source = grain.sources.ArrayRecordDataSource(list(self._instructions))
      return self._source.__getitems__(keys)
    except RuntimeError as e:
      raise self._damaged(keys, e) from e

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_source": None}

  def _damaged(self, keys, error: RuntimeError) -> DamagedShardError:
    """Names the shards whose records among `keys` fail when read alone (else every shard that
    `keys` reach: the error may lie in how the shards were opened together)."""
    starts = np.cumsum([0] + [instruction.take for instruction in self._instructions])
    by_shard = {}
    for key in keys:
      shard = int(np.searchsorted(starts, key, side="right")) - 1
      by_shard.setdefault(shard, []).append(int(key) - int(starts[shard]))
    damaged = [
      self._instructions[shard]
      for shard, local_keys in by_shard.items()
      if not _readable(self._instructions[shard], local_keys)
    ] or [self._instructions[shard] for shard in by_shard]
    reason = " ".join(str(error).split())
    return DamagedShardError(
      f"{', '.join(instruction.filename for instruction in damaged)}: damaged shard of "
      f"{self._builder} split {self._split} ({reason}); rebuild the corpus: run avcd prepare "
      "again with --overwrite (for the synthetic corpus, delete the shard's directory)"
    )


def _readable(instruction, keys: list[int]) -> bool:
  try:
    grain.sources.ArrayRecordDataSource([instruction]).__getitems__(keys)
  except RuntimeError:
    return False
  return True


def open_split(builder: str, data_dir: str, split: str) -> Split:
  """The split `split` (TFDS split syntax, slices included) of `builder` prepared in `data_dir`."""
  dataset_builder = tfds.builder(builder, data_dir=data_dir)
  if not dataset_builder.is_prepared():
    raise FileNotFoundError(
      f"{builder} is not prepared in data_dir={data_dir!r} (looked in {dataset_builder.data_dir})"
    )
  if dataset_builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
      f"{builder} in {data_dir} is stored as {dataset_builder.info.file_format}; "
      "the loader reads ArrayRecord (prepare with file_format='array_record')"
    )
  instructions = tuple(dataset_builder.info.splits[split].file_instructions)
  return Split(builder, split, instructions, _stored_features(dataset_builder))


def _stored_features(dataset_builder) -> tfds.features.FeaturesDict:
  """The features the split was written with (its features.json), not the builder code's: a
  corpus prepared before a schema field existed decodes without it (the loader fills it in)."""
  try:
    return tfds.features.FeatureConnector.from_config(dataset_builder.data_dir)
  except (OSError, ValueError):  # no features.json: written by code whose features are these
    return dataset_builder.info.features


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """Per-record metadata of a split, indexed by record (position in the split's record order)."""

  num_frames: np.ndarray  # int32
  label: np.ndarray  # int32, schema.REAL or schema.FAKE
  audio_label: np.ndarray  # int32
  video_label: np.ndarray  # int32
  lip_rows: np.ndarray  # int32, num_frames or 0 (the corpus stores no lip features)
  leading_silence: np.ndarray  # int32 silent frames opening the clip (`leading_silent_frames`)
  id: np.ndarray  # str
  method: np.ndarray  # str
  dataset: np.ndarray  # str
  category: np.ndarray  # str
  # Forged segments (schema.SEGMENTS_FIELD) of every record, concatenated: record i's are
  # segments[segment_offsets[i] : segment_offsets[i + 1]], [start, end) seconds.
  segments: np.ndarray  # (S, 2) float64
  segment_offsets: np.ndarray  # (N + 1,) int64

  def __len__(self) -> int:
    return len(self.num_frames)

  def has_lips(self) -> bool:
    """Whether the split's clips carry lip features; a mix of clips with and without is an error."""
    with_lips = self.lip_rows > 0
    if with_lips.any() and not with_lips.all():
      missing = self.id[~with_lips]
      raise schema.SchemaError(
        f"{len(missing)} of {len(self)} clips have no lip rows "
        f"(e.g. {missing[:3].tolist()}); a split needs all or none"
      )
    return bool(with_lips.any())

  def clips(self, records: np.ndarray) -> dict[str, np.ndarray]:
    """id, method, dataset, category and labels of `records` (drop filler rows, -1, first)."""
    records = np.asarray(records)
    if np.any(records < 0):
      raise ValueError("filler rows (record -1) have no clip; select record >= 0")
    return {name: getattr(self, name)[records] for name in (*_INT_FIELDS, *_TEXT_FIELDS)}

  def fake_segments(self, record: int) -> np.ndarray:
    """(M, 2) [start, end) seconds of the record's forged segments (none for a real clip)."""
    return self.segments[self.segment_offsets[record] : self.segment_offsets[record + 1]]


_INT_FIELDS = ("num_frames", "label", "audio_label", "video_label", "lip_rows", "leading_silence")
_TEXT_FIELDS = ("id", "method", "dataset", "category")


def _index_record(example: dict) -> dict:
  row = {k: example[k] for k in ("num_frames", "label", "audio_label", "video_label")}
  row["lip_rows"] = example["lips"].shape[0]
  row["leading_silence"] = leading_silent_frames(example["mfcc"])
  row.update({k: example[k].decode() for k in _TEXT_FIELDS})
  row["segments"] = example.get(schema.SEGMENTS_FIELD)
  if row["segments"] is None:  # prepared before the field: the runs of fake frames, or the clip
    frame_labels = example.get("frame_labels")
    if frame_labels is None:
      frame_labels = np.full(example["num_frames"], example["label"])
    row["segments"] = schema.frame_label_segments(frame_labels, float(example["fps"]))
  return row


def _compute_index(split: Split) -> SplitIndex:
  rows = []
  for first in range(0, len(split), _INDEX_READ_CHUNK):
    keys = range(first, min(first + _INDEX_READ_CHUNK, len(split)))
    for serialized in split.records.__getitems__(keys):
      rows.append(_index_record(split.decode(serialized, skip=("faces", "stft", "phonemes"))))
  columns = {k: np.array([row[k] for row in rows], np.int32).reshape(-1) for k in _INT_FIELDS}
  columns.update({k: np.array([row[k] for row in rows], str).reshape(-1) for k in _TEXT_FIELDS})
  segments = [np.asarray(row["segments"], np.float64).reshape(-1, 2) for row in rows]
  columns["segments"] = np.concatenate([np.zeros((0, 2), np.float64), *segments])
  columns["segment_offsets"] = np.cumsum([0] + [len(s) for s in segments], dtype=np.int64)
  return SplitIndex(**columns)


def shard_files(split: Split) -> list:
  """What identifies a split's records on disk: each shard's name, slice, size and mtime (the
  fingerprint of caches computed from them: this index, the teacher posteriors)."""
  shards = []
  for instruction in split.file_instructions:
    stat = os.stat(instruction.filename)
    shards.append(
      [
        os.path.basename(instruction.filename),
        instruction.skip,
        instruction.take,
        stat.st_size,
        stat.st_mtime_ns,
      ]
    )
  return shards


def _fingerprint(split: Split) -> str:
  """What the cached index depends on: the split's files, their slices and the index format."""
  return json.dumps({"format": INDEX_FORMAT, "shards": shard_files(split)})


def _cache_path(split: Split) -> str:
  directory = os.path.dirname(split.file_instructions[0].filename)
  readable = re.sub(r"[^\w.-]+", "_", split.split)
  digest = hashlib.sha1(split.split.encode()).hexdigest()[:8]
  return os.path.join(directory, f"clip_index.{readable}.{digest}.npz")


def _read_cache(path: str, fingerprint: str) -> SplitIndex | None:
  try:
    with np.load(path) as cached:
      if str(cached["fingerprint"]) != fingerprint:
        return None
      return SplitIndex(**{f.name: cached[f.name] for f in dataclasses.fields(SplitIndex)})
  except (OSError, KeyError, ValueError, zipfile.BadZipFile):
    return None  # Missing, unreadable or from another format: recompute.


def _write_cache(path: str, fingerprint: str, index: SplitIndex) -> None:
  """Writes to a temporary file in the same directory, then renames: readers never see a part."""
  try:
    fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  except OSError as error:  # A read-only corpus still loads; it re-indexes on every start.
    logging.warning("Cannot cache the clip index next to the shards (%s).", error)
    return
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, fingerprint=np.array(fingerprint), **dataclasses.asdict(index))
    os.replace(tmp_path, path)
  except OSError as error:
    logging.warning("Cannot cache the clip index at %s (%s).", path, error)
  finally:
    if os.path.exists(tmp_path):
      os.unlink(tmp_path)


def load_index(split: Split) -> SplitIndex:
  """The split's index, from the cache next to its shards or computed (and cached) in one pass."""
  path, fingerprint = _cache_path(split), _fingerprint(split)
  index = _read_cache(path, fingerprint)
  if index is None:
    logging.info("Indexing %s[%s] (%d records).", split.builder, split.split, len(split))
    index = _compute_index(split)
    _write_cache(path, fingerprint, index)
  return index
