"""The Grain pipelines on a tiny random corpus: contract, coverage, determinism, sharding and
trimming."""

import dataclasses
import os
import shutil

import numpy as np
import pytest
from absl import flags

from avcd import config_lib
from data_pipelines import schema
from data_pipelines.reading import loader, split_index
from tests import random_corpus

# Bucket 130 at budget 256 rounds one row up to the multiple (2), exercising that case.
BUCKETS = (32, 64, 130)
FRAME_BUDGET = 256
EVAL_FRAME_BUDGET = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("corpus"))
  return {
    name: (random_corpus.build(data_dir, name), data_dir)
    for name in ("small", "no_lips", "no_frame_labels")
  }


def data_config(corpus, name="small", **overrides):
  builder, data_dir = corpus[name]
  settings = dict(
    data_dir=data_dir,
    bucket_lengths=BUCKETS,
    frame_budget=FRAME_BUDGET,
    max_frames=120,
    train_window=100,
    prefetch=2,
  )
  settings.update(overrides)
  return config_lib.data(builder=builder, train_split="train", **settings)


def eval_config():
  return config_lib.evaluation(splits=("test",), frame_budget=EVAL_FRAME_BUDGET)


def open_split(cfg, split="train"):
  opened = split_index.open_split(cfg.builder, cfg.data_dir, split)
  return opened, split_index.load_index(opened)


def train_epoch(cfg, *, seed=0, process_index=0, process_count=1, batch_multiple=2):
  dataset = loader.train_dataset(
    cfg,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    batch_multiple=batch_multiple,
    num_epochs=1,
  )
  return list(dataset)


def eval_pass(cfg, *, split="test", process_index=0, process_count=1, batch_multiple=2):
  return list(
    loader.eval_dataset(
      cfg,
      eval_config(),
      split=split,
      process_index=process_index,
      process_count=process_count,
      batch_multiple=batch_multiple,
    )
  )


def assert_batches_equal(expected, actual):
  assert len(expected) == len(actual)
  for want, got in zip(expected, actual):
    assert want.keys() == got.keys()
    for key in want:
      if key == "augment":
        assert_batches_equal([want[key]], [got[key]])
      else:
        np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def concat_rows(first, second):
  return {
    k: concat_rows(v, second[k]) if isinstance(v, dict) else np.concatenate([v, second[k]])
    for k, v in first.items()
  }


def window_start(example, faces):
  """Where `faces` (n frames) starts in the clip; random faces make the match unique."""
  frames = len(faces)
  for start in range(example["num_frames"] - frames + 1):
    if np.array_equal(example["faces"][start : start + frames], faces):
      return start
  raise AssertionError("batch row is no window of its clip")


def assert_row_is_window(batch, row, example, start):
  """Row `row` holds the clip's frames [start, start + num_frames) and padding after them."""
  frames = batch["num_frames"][row]
  for field in schema.ARRAY_FIELDS:
    if field.name not in batch:
      continue
    per_frame = field.rows_per_frame
    np.testing.assert_array_equal(
      batch[field.name][row, : per_frame * frames],
      example[field.name][per_frame * start : per_frame * (start + frames)],
      err_msg=field.name,
    )
    padding = schema.UNKNOWN_PHONEME if field.name == "phonemes" else 0
    assert np.all(batch[field.name][row, per_frame * frames :] == padding), field.name


def test_corpora_prepared_without_frame_labels_get_their_clip_labels_on_every_frame(corpus):
  with_fields, without = data_config(corpus), data_config(corpus, "no_frame_labels")
  partial = 0
  for new, old in zip(train_epoch(with_fields), train_epoch(without)):
    np.testing.assert_array_equal(old["faces"], new["faces"])  # the same clips and windows
    valid = np.arange(new["faces"].shape[1]) < new["num_frames"][:, None]
    for field, clip_field in schema.FRAME_LABEL_FIELDS.items():
      np.testing.assert_array_equal(old[field], np.where(valid, old[clip_field][:, None], 0))
    # The small corpus has fakes forged in a segment only: their windows hold real frames.
    partial += np.sum(new["label"].astype(bool) & np.any(valid & (new["frame_labels"] == 0), 1))
  assert partial > 0


def test_splits_decode_with_the_features_they_were_written_with(corpus, monkeypatch):
  # Today's builder code declares the frame-label fields; a corpus written before must still
  # decode (TFDS would otherwise decode with the code's features and fail on the missing ones).
  monkeypatch.setattr(
    random_corpus.RandomCorpus,
    "_info",
    lambda self: self.dataset_info_from_configs(features=schema.tfds_features()),
  )
  cfg = data_config(corpus, "no_frame_labels")
  opened, index = open_split(cfg)
  assert not set(schema.FRAME_LABEL_FIELDS) & set(opened.features)
  assert opened.decode(opened.records[0])["num_frames"] == index.num_frames[0]


def test_global_batch_size_rounds_down_to_the_multiple_but_not_below_it():
  assert loader.global_batch_size(2000, 50, 8) == 40
  assert loader.global_batch_size(2000, 100, 8) == 16  # 20 rounded down
  assert loader.global_batch_size(2000, 400, 8) == 8  # 5 rounded up to one multiple
  assert loader.global_batch_size(2000, 1000, 1) == 2
  assert loader.global_batch_size(100, 1000, 1) == 1


def test_train_batches_follow_the_contract(corpus):
  cfg = data_config(corpus)
  opened, index = open_split(cfg)
  batches = train_epoch(cfg, batch_multiple=2)
  assert len(batches) == loader.steps_per_epoch(cfg, process_count=1, batch_multiple=2)
  seen = set()
  for batch in batches:
    rows, length = batch["faces"].shape[:2]
    assert length in BUCKETS
    assert rows == loader.global_batch_size(FRAME_BUDGET, length, 2)
    assert rows * length <= FRAME_BUDGET or rows == 2
    expected = {
      "mfcc": ((rows, 4 * length, 13), np.float32),
      "stft": ((rows, 4 * length, 321), np.float16),
      "faces": ((rows, length, 112, 112), np.uint8),
      "lips": ((rows, length, 512), np.float16),
      "phonemes": ((rows, length), np.int32),
      **{name: ((rows, length), np.uint8) for name in schema.FRAME_LABEL_FIELDS},
      "num_frames": ((rows,), np.int32),
      "label": ((rows,), np.int32),
      "audio_label": ((rows,), np.int32),
      "video_label": ((rows,), np.int32),
      "record": ((rows,), np.int64),
    }
    assert set(batch) == set(expected) | {"augment"}
    for key, (shape, dtype) in expected.items():
      assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert all(v.shape == (rows,) for v in batch["augment"].values())
    assert np.all(batch["record"] >= 0) and np.all(batch["num_frames"] >= 1)
    for row, record in enumerate(batch["record"]):
      example = opened.decode(opened.records[record])
      frames = batch["num_frames"][row]
      assert frames == min(example["num_frames"], cfg.max_frames, cfg.train_window)
      start = window_start(example, batch["faces"][row, :frames])
      assert start + frames <= min(example["num_frames"], cfg.max_frames)
      assert_row_is_window(batch, row, example, start)
      assert batch["label"][row] == example["label"] == index.label[record]
      assert batch["video_label"][row] == example["video_label"]
      seen.add(int(record))
  assert seen == set(range(len(index)))  # every clip at least once an epoch


def test_train_epochs_differ_but_keep_their_step_count(corpus):
  cfg = data_config(corpus)
  two_epochs = list(
    loader.train_dataset(
      cfg, seed=3, process_index=0, process_count=1, batch_multiple=1, num_epochs=2
    )
  )
  steps = loader.steps_per_epoch(cfg, process_count=1, batch_multiple=1)
  assert len(two_epochs) == 2 * steps
  order = lambda batches: np.concatenate([b["record"] for b in batches])
  assert not np.array_equal(order(two_epochs[:steps]), order(two_epochs[steps:]))
  again = list(
    loader.train_dataset(
      cfg, seed=3, process_index=0, process_count=1, batch_multiple=1, num_epochs=1
    )
  )
  assert_batches_equal(two_epochs[:steps], again)


@pytest.mark.parametrize("batch_multiple", [1, 3, 4])
def test_eval_reads_every_clip_once_whole(corpus, batch_multiple):
  cfg = data_config(corpus)
  opened, index = open_split(cfg, "test")
  batches = eval_pass(cfg, batch_multiple=batch_multiple)
  records = np.concatenate([b["record"] for b in batches])
  assert sorted(records[records >= 0]) == list(range(len(index)))
  ids = index.clips(records[records >= 0])["id"]
  assert len(set(ids)) == len(index) == 13
  for batch in batches:
    rows, length = batch["faces"].shape[:2]
    assert rows == loader.global_batch_size(EVAL_FRAME_BUDGET, length, batch_multiple)
    assert "augment" not in batch
    for row, record in enumerate(batch["record"]):
      if record < 0:
        assert batch["num_frames"][row] == 0
        assert not batch["faces"][row].any() and np.all(batch["phonemes"][row] == -1)
        continue
      example = opened.decode(opened.records[record])
      assert batch["num_frames"][row] == min(example["num_frames"], cfg.max_frames)
      assert_row_is_window(batch, row, example, 0)


def test_two_processes_split_each_global_batch(corpus):
  cfg = data_config(corpus)
  whole = train_epoch(cfg, process_count=1, batch_multiple=2)
  halves = [train_epoch(cfg, process_index=p, process_count=2, batch_multiple=1) for p in (0, 1)]
  for batch, first, second in zip(whole, *halves):
    rows = len(batch["record"])
    assert len(first["record"]) == len(second["record"]) == rows // 2
    assert_batches_equal([batch], [concat_rows(first, second)])
  eval_whole = eval_pass(cfg, process_count=1, batch_multiple=2)
  eval_halves = [eval_pass(cfg, process_index=p, process_count=2, batch_multiple=1) for p in (0, 1)]
  assert len(eval_whole) == len(eval_halves[0]) == len(eval_halves[1])
  for batch, first, second in zip(eval_whole, *eval_halves):
    assert_batches_equal([batch], [concat_rows(first, second)])


def test_restoring_the_iterator_mid_epoch_reproduces_the_rest(corpus):
  cfg = data_config(corpus)
  dataset = loader.train_dataset(cfg, seed=5, process_index=0, process_count=1, batch_multiple=2)
  iterator = iter(dataset)
  for _ in range(4):
    next(iterator)
  state = iterator.get_state()
  rest = [next(iterator) for _ in range(8)]  # runs into the next epoch
  restored = iter(
    loader.train_dataset(cfg, seed=5, process_index=0, process_count=1, batch_multiple=2)
  )
  restored.set_state(state)
  assert_batches_equal(rest, [next(restored) for _ in range(8)])


def test_orbax_checkpoints_the_iterator(corpus, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import grain  # pylint: disable=g-import-not-at-top

  cfg = data_config(corpus)
  make = lambda: iter(
    loader.train_dataset(cfg, seed=2, process_index=0, process_count=1, batch_multiple=2)
  )
  iterator = make()
  for _ in range(3):
    next(iterator)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    rest = [next(iterator) for _ in range(3)]
    restored = make()
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert_batches_equal(rest, [next(restored) for _ in range(3)])


def test_worker_processes_give_the_same_batches(corpus):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.
  threaded = iter(
    loader.train_dataset(
      data_config(corpus, num_workers=0), seed=1, process_index=0, process_count=1, batch_multiple=2
    )
  )
  expected = [next(threaded) for _ in range(7)]
  workers = iter(
    loader.train_dataset(
      data_config(corpus, num_workers=2), seed=1, process_index=0, process_count=1, batch_multiple=2
    )
  )
  try:
    assert_batches_equal(expected, [next(workers) for _ in range(7)])
  finally:
    workers.close()


def test_train_methods_keep_reals_and_the_listed_fakes(corpus):
  cfg = data_config(corpus, train_methods=("wav2lip",))
  _, index = open_split(cfg)
  batches = train_epoch(cfg)
  records = np.unique(np.concatenate([b["record"] for b in batches]))
  kept = (index.method == "real") | (index.method == "wav2lip")
  assert set(records) == set(np.flatnonzero(kept))
  with pytest.raises(ValueError, match="match no fake"):
    loader.train_dataset(
      data_config(corpus, train_methods=("typo",)),
      seed=0,
      process_index=0,
      process_count=1,
      batch_multiple=1,
    )


def test_draws_depend_on_seed_epoch_and_record_only(corpus):
  def draws(cfg):
    out = {}
    for batch in train_epoch(cfg):
      for row, record in enumerate(batch["record"]):
        out[int(record)] = (
          batch["augment"]["kind"][row],
          batch["augment"]["angle"][row],
          batch["mfcc"][row, 0, 0],
        )
    return out

  everything = draws(data_config(corpus))
  filtered = draws(data_config(corpus, train_methods=("faceswap",)))
  assert all(everything[record] == value for record, value in filtered.items())


def test_trimming_leading_silence(corpus):
  cfg = data_config(corpus, trim_leading_silence=True)
  opened, index = open_split(cfg, "test")
  expected_lead = []
  for record in range(len(index)):
    energy = opened.decode(opened.records[record])["mfcc"][:, 0].reshape(-1, 4)
    silent = np.all(energy == np.float32(random_corpus.DIGITAL_SILENCE_LOG_ENERGY), axis=1)
    expected_lead.append(int(np.argmin(silent)))
  np.testing.assert_array_equal(index.leading_silence, expected_lead)
  assert index.leading_silence.any()

  for batch in eval_pass(cfg):
    for row, record in enumerate(batch["record"]):
      if record >= 0:
        example = opened.decode(opened.records[record])
        lead = expected_lead[record]
        assert batch["num_frames"][row] == min(example["num_frames"] - lead, cfg.max_frames)
        assert_row_is_window(batch, row, example, lead)

  train_cfg = data_config(corpus, trim_leading_silence=True, train_window=20)
  train_opened, train_index = open_split(train_cfg)
  for batch in train_epoch(train_cfg):
    for row, record in enumerate(batch["record"]):
      example = train_opened.decode(train_opened.records[record])
      start = window_start(example, batch["faces"][row, : batch["num_frames"][row]])
      assert start >= train_index.leading_silence[record]


def test_leading_silence_threshold_is_relative_to_the_clip():
  speech = np.full((40, 13), 1.0, np.float32)
  speech[:, 0] = 12.0
  quiet_lead = speech.copy()
  quiet_lead[: 4 * 3, 0] = 12.0 - split_index.SILENCE_MARGIN - 0.1  # 3 frames 30 dB down
  quiet_lead[4 * 3 + 1, 0] = 0.0  # a quiet audio frame inside a loud video frame
  assert split_index.leading_silent_frames(quiet_lead) == 3
  assert split_index.leading_silent_frames(quiet_lead + 20.0) == 3  # gain does not matter
  assert split_index.leading_silent_frames(speech) == 0
  assert split_index.leading_silent_frames(np.zeros((40, 13), np.float32)) == 0


def test_splits_without_lip_features_have_no_lips_field(corpus):
  cfg = data_config(corpus, "no_lips")
  batches = eval_pass(cfg)
  assert batches and all("lips" not in b for b in batches)
  _, index = open_split(cfg, "test")
  mixed = dataclasses.replace(
    index, lip_rows=np.where(np.arange(len(index)) == 0, index.num_frames, 0)
  )
  with pytest.raises(schema.SchemaError, match="all or none"):
    mixed.has_lips()


def test_clips_longer_than_every_bucket_are_an_error(corpus):
  cfg = data_config(corpus, bucket_lengths=(32, 64))
  with pytest.raises(ValueError, match="largest bucket is 64"):
    loader.train_dataset(cfg, seed=0, process_index=0, process_count=1, batch_multiple=1)


def test_index_is_cached_and_recomputed_when_shards_change(corpus, monkeypatch):
  cfg = data_config(corpus)
  opened, index = open_split(cfg, "test")

  def fail(split):
    raise AssertionError(f"index of {split.split} recomputed")

  with monkeypatch.context() as patch:
    patch.setattr(split_index, "_compute_index", fail)
    cached = split_index.load_index(opened)
  np.testing.assert_array_equal(cached.num_frames, index.num_frames)
  np.testing.assert_array_equal(cached.id, index.id)

  calls = []
  original = split_index._compute_index
  monkeypatch.setattr(split_index, "_compute_index", lambda s: calls.append(s) or original(s))
  shard = opened.file_instructions[0].filename
  stat = os.stat(shard)
  os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  recomputed = split_index.load_index(opened)
  assert len(calls) == 1
  np.testing.assert_array_equal(recomputed.method, index.method)
  split_index.load_index(opened)
  assert len(calls) == 1


def _truncate(data: bytes) -> bytes:
  return data[: len(data) // 2]


def _flip_a_bit(data: bytes) -> bytes:
  flipped = bytearray(data)
  flipped[len(data) // 3] ^= 0x10
  return bytes(flipped)


def _empty(data: bytes) -> bytes:
  del data
  return b""


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit, _empty])
def test_a_damaged_shard_is_named_with_its_split_whichever_read_meets_it(corpus, tmp_path, damage):
  _, data_dir = corpus["small"]
  copy = tmp_path / "data"
  shutil.copytree(data_dir, copy)  # with the cached clip indexes, modification times kept
  cfg = data_config(corpus, data_dir=str(copy))
  opened = split_index.open_split(cfg.builder, cfg.data_dir, "train")
  (shard,) = [instruction.filename for instruction in opened.file_instructions]
  stat = os.stat(shard)
  with open(shard, "rb") as f:
    data = f.read()
  with open(shard, "wb") as f:
    f.write(damage(data))
  # A flipped bit leaves the size, and a kept mtime the cached index: then the batches meet it.
  os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))

  with pytest.raises(split_index.DamagedShardError) as damaged:
    train_epoch(cfg)

  message = str(damaged.value)
  assert message.startswith(f"{shard}: damaged shard of {cfg.builder} split train (")
  assert "\n" not in message and "run avcd prepare again with --overwrite" in message
