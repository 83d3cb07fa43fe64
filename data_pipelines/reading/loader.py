"""Grain pipelines from a prepared split to static-shape, process-local numpy batches.

Batch contract. L is the batch's bucket length (one of `data.bucket_lengths`), B the rows this
process holds (its share of the global batch):
  mfcc (B, 4L, 13) float32 | stft (B, 4L, 321) float16 | faces (B, L, 112, 112) uint8
  lips (B, L, 512) float16, only when the split's clips carry lip features
  phonemes (B, L) int32, -1 where unknown and beyond the clip
  frame_labels, audio_frame_labels, video_frame_labels (B, L) uint8 (schema's frame labels)
  num_frames (B,) int32, 0 for filler rows | label, audio_label, video_label (B,) int32
  record (B,) int64, the clip's index in the split (`split_index.SplitIndex`), -1 for filler rows
  augment (training only): dict of (B,) arrays (`augment.PARAM_DTYPES`) for `augment.apply`
  asr_probs, vsr_probs (B, L, K) float32, training with a teacher cache only
      (`train_dataset(teacher_posteriors=...)`, `teacher_cache`): the frozen teachers' per-frame
      posteriors over K classes, uniform (1/K) beyond num_frames so that divergences stay finite
Every other array is zero (phonemes -1) beyond num_frames.

Batches are planned globally, as a pure function of the split index, the config, the seed and the
epoch, so every process computes the same plan and takes its own contiguous slice of each batch's
rows: `jax.make_array_from_process_local_data` then assembles the global batch. A plan is a list
of batches of record indices; the Grain pipeline is a MapDataset over planned batches whose map
reads, decodes, windows and pads the records. Random access by step makes worker processes and
iterator checkpoints (`get_state` / `set_state`, `grain.checkpoint.CheckpointSave`) exact.

Global batch size for a bucket of length L: B = frame_budget // L rounded down to a multiple of
batch_multiple * process_count, but at least that multiple (B * L then exceeds the budget).

Training, per epoch: shuffle the clips, give each a random window of up to `train_window` frames
(start uniform), put it in the smallest bucket holding the window, and cut each bucket into
batches. Clips left over in a bucket move up to the next bucket; the last leftovers fill one
batch of the largest bucket, topped up with clips repeated from the start of the epoch. Every clip
is seen at least once an epoch, no training row is filler, and the number of steps per epoch is
the same for every epoch (window lengths, hence buckets, do not depend on the epoch).
Evaluation: full clips (up to `max_frames`) sorted by length, each exactly once; the last batch of
a bucket is completed with filler rows.

Worker processes (`data.num_workers > 0`, Grain `mp_prefetch`) need parsed absl flags and an
importable `__main__` guarded by `if __name__ == '__main__'` (run under `absl.app.run`).
"""

import atexit
import dataclasses
import multiprocessing.util  # noqa: F401  (registers its exit hook before the loader's: below)
import os
import sys
import weakref

import grain
import ml_collections
import numpy as np

from data_pipelines import schema, worker_lifetime
from data_pipelines.reading import augment, posterior_store, rebuilt_split, split_index

_ROW_LABELS = ("label", "audio_label", "video_label")


def global_batch_size(frame_budget: int, length: int, multiple: int) -> int:
  """Rows of a global batch of clips padded to `length` frames (see the module docstring)."""
  rows = max(frame_budget // length, 1)
  return max(rows // multiple, 1) * multiple


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Global batches stored as flat rows: batch i is rows offsets[i]:offsets[i+1], length lengths[i].

  `rows` maps field names to (total rows,) arrays; 'augment' to a dict of such arrays.
  """

  lengths: np.ndarray
  offsets: np.ndarray
  rows: dict

  @classmethod
  def stack(cls, batches: list[tuple[int, np.ndarray]], rows_of) -> "_Plan":
    """The plan of (bucket length, records) batches; `rows_of(records)` gives the flat rows."""
    lengths = np.array([length for length, _ in batches], np.int32)
    offsets = np.cumsum([0] + [len(records) for _, records in batches], dtype=np.int64)
    records = np.concatenate([records for _, records in batches] or [np.zeros(0, np.int64)])
    return cls(lengths, offsets, rows_of(records))

  def __len__(self) -> int:
    return len(self.lengths)

  def process_rows(self, step: int, process_index: int, process_count: int) -> dict:
    """The process's contiguous share of batch `step`, plus the batch's bucket `length`."""
    share = (self.offsets[step + 1] - self.offsets[step]) // process_count
    first = self.offsets[step] + process_index * share
    rows = _take(self.rows, slice(first, first + share))
    rows["length"] = int(self.lengths[step])
    return rows


def _take(tree: dict, selection) -> dict:
  return {k: _take(v, selection) if isinstance(v, dict) else v[selection] for k, v in tree.items()}


def clip_spans(
  data_cfg: ml_collections.ConfigDict, index: split_index.SplitIndex
) -> tuple[np.ndarray, np.ndarray]:
  """Per record of the split, what the pipelines call the clip: (first frame, usable frames).

  The first frame follows the dropped silent lead-in (`data.trim_leading_silence`); the usable
  frames run from it, capped at `data.max_frames`. Both int32.
  """
  first = (
    index.leading_silence if data_cfg.trim_leading_silence else np.zeros_like(index.num_frames)
  )
  usable = np.minimum(index.num_frames - first, data_cfg.max_frames)
  return first.astype(np.int32), usable.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class _Clips:
  """The clips a pipeline reads: per record of the split, which frames (first, usable length)."""

  index: split_index.SplitIndex
  records: np.ndarray  # the records the pipeline uses (int64)
  first: np.ndarray  # per split record: first frame after the dropped silent lead-in
  usable: np.ndarray  # per split record: frames from `first` on, capped at max_frames

  @classmethod
  def select(cls, index: split_index.SplitIndex, data_cfg, records: np.ndarray) -> "_Clips":
    return cls(index, records.astype(np.int64), *clip_spans(data_cfg, index))


def _bucket_positions(lengths: np.ndarray, bucket_lengths: np.ndarray, what: str) -> np.ndarray:
  """Position in `bucket_lengths` (ascending) of the smallest bucket holding each length."""
  positions = np.searchsorted(bucket_lengths, lengths, side="left")
  if len(lengths) and positions.max() == len(bucket_lengths):
    raise ValueError(
      f"{what} reach {lengths.max()} frames but the largest bucket is "
      f"{bucket_lengths[-1]}: add a bucket length >= {lengths.max()} "
      "or lower data.max_frames / data.train_window"
    )
  return positions


def _bucket_lengths(data_cfg) -> np.ndarray:
  lengths = np.array(sorted(data_cfg.bucket_lengths), np.int64)
  if not len(lengths) or lengths[0] < 1:
    raise ValueError(f"data.bucket_lengths={data_cfg.bucket_lengths} must be positive lengths")
  return lengths


@dataclasses.dataclass(frozen=True)
class _TrainPlanner:
  """The training plan of any epoch (module docstring), a pure function of its fields."""

  clips: _Clips
  window: np.ndarray  # per split record: training window length
  bucket_lengths: np.ndarray
  batch_sizes: np.ndarray  # global rows per batch, per bucket
  seed: int
  augment: bool

  def plan(self, epoch: int) -> _Plan:
    order_rng, window_rng, augment_rng, batch_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence([self.seed, epoch]).spawn(4)
    )
    # Random draws are made for every record of the split, so a record's window and augmentation
    # depend on (seed, epoch, record) only, not on the filter or the other records.
    num_records = len(self.clips.index)
    slack = self.clips.usable - self.window + 1
    start = self.clips.first + (window_rng.random(num_records) * slack).astype(np.int32)
    params = (
      augment.sample_params(augment_rng, num_records)
      if self.augment
      else augment.identity_params(num_records)
    )

    order = order_rng.permutation(self.clips.records)
    bucket = _bucket_positions(self.window[order], self.bucket_lengths, "training windows")
    batches, carried = [], order[:0]
    for position, (length, size) in enumerate(zip(self.bucket_lengths, self.batch_sizes)):
      members = np.concatenate([carried, order[bucket == position]])
      full = len(members) - len(members) % size
      batches += [(length, members[i : i + size]) for i in range(0, full, size)]
      carried = members[full:]
    if len(carried):
      top_up = order[~np.isin(order, carried)]
      size = self.batch_sizes[-1]
      members = np.concatenate(
        [carried, np.resize(top_up if len(top_up) else order, size - len(carried))]
      )
      batches.append((self.bucket_lengths[-1], members))

    def rows_of(records):
      rows = {"record": records, "start": start[records], "num_frames": self.window[records]}
      rows.update({k: getattr(self.clips.index, k)[records] for k in _ROW_LABELS})
      rows["augment"] = _take(params, records)
      return rows

    return _Plan.stack([batches[i] for i in batch_rng.permutation(len(batches))], rows_of)


@dataclasses.dataclass(frozen=True)
class _FixedPlanner:
  """The evaluation plan: the same every pass."""

  fixed: _Plan

  def plan(self, epoch: int) -> _Plan:
    del epoch  # Evaluation is one fixed pass.
    return self.fixed


class _PlanSource:
  """Grain source: item i is this process's rows of step i (epoch i // steps_per_epoch)."""

  def __init__(
    self,
    planner,
    steps_per_epoch: int,
    num_epochs: int | None,
    process_index: int,
    process_count: int,
  ):
    self._planner = planner
    self._steps_per_epoch = steps_per_epoch
    self._length = sys.maxsize if num_epochs is None else steps_per_epoch * num_epochs
    self._process = (process_index, process_count)
    self._cached = (None, None)  # (epoch, plan): consecutive steps share the epoch's plan

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, step: int) -> dict:
    epoch, step_in_epoch = divmod(step, self._steps_per_epoch)
    cached_epoch, plan = self._cached
    if cached_epoch != epoch:
      plan = self._planner.plan(epoch)
      self._cached = (epoch, plan)
    return plan.process_rows(step_in_epoch, *self._process)

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_cached"] = (None, None)  # workers rebuild plans rather than receive them
    return state


@dataclasses.dataclass(frozen=True)
class _BatchReader:
  """Grain map: planned rows -> the padded batch of the module docstring."""

  split: split_index.Split
  with_lips: bool
  posteriors: posterior_store.Cache | None = None

  def __call__(self, rows: dict) -> dict:
    length, records = rows["length"], rows["record"]
    fields = [f for f in schema.ARRAY_FIELDS if f.name != "lips" or self.with_lips]
    batch = {}
    for field in fields:
      shape = (len(records), *field.shape(length))
      if field.name == "phonemes":
        batch[field.name] = np.full(shape, schema.UNKNOWN_PHONEME, field.dtype)
      else:  # np.zeros maps zero pages lazily: padding that is never written costs nothing.
        batch[field.name] = np.zeros(shape, field.dtype)
    skip = schema.TEXT_FIELDS + (() if self.with_lips else ("lips",))
    present = np.flatnonzero(records >= 0)
    # ArrayRecord rejects an empty read, which a process's share of filler rows would ask for.
    serialized = self.split.records.__getitems__(records[present].tolist()) if len(present) else []
    for row, data in zip(present, serialized):
      example = self.split.decode(data, skip)
      start, frames = int(rows["start"][row]), int(rows["num_frames"][row])
      for field in fields:
        per_frame = field.rows_per_frame
        if field.name not in example:  # a corpus prepared before frame labels existed
          batch[field.name][row, :frames] = rows[schema.FRAME_LABEL_FIELDS[field.name]][row]
          continue
        batch[field.name][row, : per_frame * frames] = example[field.name][
          per_frame * start : per_frame * (start + frames)
        ]
    batch["num_frames"] = rows["num_frames"].astype(np.int32)
    batch.update({k: rows[k].astype(np.int32) for k in _ROW_LABELS})
    batch["record"] = records.astype(np.int64)
    if "augment" in rows:
      batch["augment"] = {
        k: rows["augment"][k].astype(dtype) for k, dtype in augment.PARAM_DTYPES.items()
      }
    if self.posteriors is not None:
      batch["asr_probs"], batch["vsr_probs"] = self.posteriors.windows(
        records, rows["start"], rows["num_frames"], length
      )
    return batch


def _open(data_cfg, split: str):
  opened = split_index.open_split(data_cfg.builder, data_cfg.data_dir, split)
  return opened, split_index.load_index(opened)


def _pipeline(
  data_cfg,
  opened,
  index,
  planner,
  steps_per_epoch,
  num_epochs,
  process_index,
  process_count,
  posteriors=None,
) -> grain.IterDataset:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  source = _PlanSource(planner, steps_per_epoch, num_epochs, process_index, process_count)
  reader = _BatchReader(opened, index.has_lips(), posteriors)
  threads = max(1, min(data_cfg.prefetch, os.cpu_count() or 1))
  dataset = (
    grain.MapDataset.source(source)
    .map(reader)
    .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=data_cfg.prefetch))
  )
  if data_cfg.num_workers > 0:
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=data_cfg.num_workers, per_worker_buffer_size=max(1, data_cfg.prefetch)
      ),
      worker_init_fn=worker_lifetime.initializer(),
    )
    dataset = _ClosedBeforeExit(dataset)
  return dataset


# The iterators of worker processes not closed yet; _close_before_exit closes them.
_WORKER_ITERATORS = weakref.WeakSet()


class _ClosedBeforeExit(grain.IterDataset):
  """mp_prefetch's dataset, whose iterators are closed before multiprocessing's exit hook runs.

  Grain closes a worker-process iterator at exit from a multiprocessing finalizer that runs after
  the finalizers of its queues, whose feeder threads then close the queues' pipes. Once
  `set_state` has put to such a queue (a resumed run), closing the iterator reads from a closed
  pipe and prints "OSError: handle is closed" per worker.
  """

  def __init__(self, parent: grain.IterDataset):
    super().__init__(parent)

  def __iter__(self):
    iterator = self._parent.__iter__()
    _WORKER_ITERATORS.add(iterator)
    return iterator

  def __str__(self) -> str:
    return "_ClosedBeforeExit"


# atexit runs the last registered first: registered after multiprocessing.util's exit hook (see
# the imports), this runs before it, while the queues' pipes are open.
atexit.register(lambda: [iterator.close() for iterator in list(_WORKER_ITERATORS)])


def _train_planner(data_cfg, index: split_index.SplitIndex, *, seed: int, multiple: int):
  methods = tuple(data_cfg.train_methods)
  unknown = sorted(set(methods) - set(index.method[index.label == schema.FAKE]))
  if unknown:
    raise ValueError(
      f"data.train_methods {unknown} match no fake clip of "
      f"{data_cfg.train_split}; its methods: {sorted(set(index.method))}"
    )
  keep = np.ones(len(index), bool)
  if methods:  # Real clips are always kept.
    keep = (index.label != schema.FAKE) | np.isin(index.method, methods)
  if data_cfg.train_real_only:
    keep &= index.label != schema.FAKE
  clips = _Clips.select(index, data_cfg, np.flatnonzero(keep))
  if not len(clips.records):
    raise ValueError(f"{data_cfg.builder} {data_cfg.train_split}: no clips to train on")
  bucket_lengths = _bucket_lengths(data_cfg)
  window = np.minimum(clips.usable, data_cfg.train_window).astype(np.int32)
  batch_sizes = np.array(
    [global_batch_size(data_cfg.frame_budget, length, multiple) for length in bucket_lengths]
  )
  return _TrainPlanner(clips, window, bucket_lengths, batch_sizes, seed, bool(data_cfg.augment))


def steps_per_epoch(
  data_cfg: ml_collections.ConfigDict, *, process_count: int, batch_multiple: int
) -> int:
  """Global steps in each training epoch (the same for every epoch and seed)."""
  _, index = _open(data_cfg, data_cfg.train_split)
  planner = _train_planner(data_cfg, index, seed=0, multiple=batch_multiple * process_count)
  return len(planner.plan(0))


def _check_teacher_cache(
  cache: posterior_store.Cache, planner: _TrainPlanner, data_cfg: ml_collections.ConfigDict
) -> None:
  """Refuses a cache whose posteriors would differ from the teachers' online ones."""
  clips = planner.clips
  cut = planner.window[clips.records] < clips.usable[clips.records]
  if cut.any():
    raise ValueError(
      f"teacher cache: {cut.sum()} of {len(cut)} training clips are longer than "
      f"data.train_window={data_cfg.train_window} frames. The teachers attend over their whole "
      "input, so a window's posteriors are not a window of the whole clip's posteriors (which "
      f"the cache holds): set data.train_window >= data.max_frames ({data_cfg.max_frames}) or "
      "run the teachers online (teachers.cache=False)"
    )
  if not cache.covers(clips.records, clips.first, clips.usable):
    raise ValueError(
      f"the teacher cache {cache.directory} does not hold the clips of "
      f"{data_cfg.builder} {data_cfg.train_split} as this config reads them"
    )


def train_dataset(
  data_cfg: ml_collections.ConfigDict,
  *,
  seed: int,
  process_index: int,
  process_count: int,
  batch_multiple: int,
  num_epochs: int | None = None,
  teacher_posteriors: posterior_store.Cache | None = None,
) -> grain.IterDataset:
  """Training batches of `data.train_split` for this process; `num_epochs=None` repeats forever.

  `batch_multiple`: the global batch of every bucket is a multiple of batch_multiple *
  process_count (e.g. the number of devices on each process along the data axes).
  `teacher_posteriors`: the split's teacher cache; batches then carry `asr_probs` and `vsr_probs`.
  It needs every training window to be the whole clip (ValueError otherwise).
  """
  opened, index = _open(data_cfg, data_cfg.train_split)
  planner = _train_planner(data_cfg, index, seed=seed, multiple=batch_multiple * process_count)
  if teacher_posteriors is not None:
    _check_teacher_cache(teacher_posteriors, planner, data_cfg)
  steps = len(planner.plan(0))
  return _pipeline(
    data_cfg,
    opened,
    index,
    planner,
    steps,
    num_epochs,
    process_index,
    process_count,
    teacher_posteriors,
  )


def _eval_plan(
  clips: _Clips, bucket_lengths: np.ndarray, frame_budget: int, multiple: int
) -> _Plan:
  order = clips.records[np.lexsort((clips.records, clips.usable[clips.records]))]
  bucket = _bucket_positions(clips.usable[order], bucket_lengths, "evaluation clips")
  batches = []
  for position, length in enumerate(bucket_lengths):
    members = order[bucket == position]
    size = global_batch_size(frame_budget, int(length), multiple)
    for first in range(0, len(members), size):
      records = members[first : first + size]
      # Filler rows (record -1) complete the bucket's last batch.
      batches.append((int(length), np.pad(records, (0, size - len(records)), constant_values=-1)))

  def rows_of(records):
    filler = records < 0

    def per_row(values):
      return np.where(filler, 0, values[np.where(filler, 0, records)])

    rows = {"record": records, "start": per_row(clips.first), "num_frames": per_row(clips.usable)}
    rows.update({k: per_row(getattr(clips.index, k)) for k in _ROW_LABELS})
    return rows

  return _Plan.stack(batches, rows_of)


def whole_clips_dataset(
  data_cfg: ml_collections.ConfigDict,
  *,
  split: str,
  frame_budget: int,
  process_index: int,
  process_count: int,
  batch_multiple: int,
  media_hook_factory=None,
) -> grain.IterDataset:
  """One pass over `split` for this process: every clip exactly once, whole, no augmentation.

  "Whole" is the clip's span (`clip_spans`). Batches follow the evaluation plan (module docstring)
  with `frame_budget`; every process yields the same number of batches. Look up a row's clip
  with `split_index.load_index(split_index.open_split(...)).clips(record)`. With
  `media_hook_factory` (clip id -> schema.MediaHook), examples are made again from the clips'
  media through their hooks instead of read from the shards (data_pipelines.reading.rebuilt_split).
  """
  opened, index = _open(data_cfg, split)
  if media_hook_factory is not None:
    opened = rebuilt_split.RebuiltSplit.open(data_cfg, split, index, media_hook_factory)
  clips = _Clips.select(index, data_cfg, np.arange(len(index)))
  plan = _eval_plan(clips, _bucket_lengths(data_cfg), frame_budget, batch_multiple * process_count)
  return _pipeline(
    data_cfg, opened, index, _FixedPlanner(plan), len(plan), 1, process_index, process_count
  )


def eval_dataset(
  data_cfg: ml_collections.ConfigDict,
  eval_cfg: ml_collections.ConfigDict,
  *,
  split: str,
  process_index: int,
  process_count: int,
  batch_multiple: int,
  media_hook_factory=None,
) -> grain.IterDataset:
  """The evaluation pass over `split`: `whole_clips_dataset` with `eval.frame_budget`."""
  return whole_clips_dataset(
    data_cfg,
    split=split,
    frame_budget=eval_cfg.frame_budget,
    process_index=process_index,
    process_count=process_count,
    batch_multiple=batch_multiple,
    media_hook_factory=media_hook_factory,
  )
