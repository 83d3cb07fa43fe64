"""Media files to Grain batches: manifest CSV -> avcd prepare -> loader, rows equal to extract_clip.

The media are written here (mp4 with an AAC track, wav, lip .npy), listed in manifests in the
reference's CSV format, prepared with `data_pipelines.building.prepare` (what `avcd prepare` runs)
and read back through `loader.eval_dataset` and `loader.train_dataset`. Every batch row must hold
exactly what `clips.extract_clip` gives for its manifest row, cut and padded as the loader's batch
contract says.
"""

import numpy as np
import pytest

from avcd import config_lib
from data_pipelines import schema
from data_pipelines.building import clips, manifests, prepare
from data_pipelines.reading import augment, loader, split_index
from tests import media_utils

ROOT = "/corpus"  # the manifests' media root, rewritten to the test's directory
MAX_FRAMES = 36
TRAIN_WINDOW = 20
BUCKETS = (24, 32, 48)
# (id, seconds, audio from a wav file rather than the mp4's track, fake): 25 to 40 frames, so
# that max_frames cuts one clip and every training window is shorter than its clip.
TRAIN_CLIPS = (
  ("train_a", 1.0, False, False),
  ("train_b", 1.2, True, True),
  ("train_c", 1.6, True, False),
  ("train_d", 1.4, False, True),
  ("train_e", 1.0, True, False),
)
TEST_CLIPS = (
  ("test_a", 1.6, False, True),
  ("test_b", 1.0, True, False),
  ("test_c", 1.2, False, False),
)


def write_clip(
  media, clip_id: str, seconds: float, wav: bool, fake: bool, lips: bool, tone_hz: float
) -> dict:
  """Writes the clip's media and returns its manifest row."""
  frames = round(seconds * schema.FPS)
  tone = media_utils.tone(seconds, schema.SAMPLE_RATE, tone_hz)
  media_utils.write_video(
    media / f"{clip_id}.mp4",
    media_utils.flat_frames(media_utils.grey_levels(frames)),
    audio=None if wav else tone,
  )
  if wav:
    media_utils.write_wav(media / f"{clip_id}.wav", tone)
  if lips:
    media_utils.write_npy(media / f"{clip_id}.npy", media_utils.lip_features(frames, seed=frames))
  label = int(fake)
  return {
    "ID_Name": clip_id,
    "Audio_Path": f"{ROOT}/{clip_id}.wav" if wav else "",
    "Video_Path": f"{ROOT}/{clip_id}.mp4",
    "ENtire_Label": label,
    "Audio_Label": 0,
    "Video_Label": label,
    "Identi_Label": 1 - label,
    "Sync_Label": 1,
    "Frame_Len": frames,
    "Audio_Len": len(tone),
    "FPS": schema.FPS,
    "AudioSamRate": schema.SAMPLE_RATE,
  }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """The prepared corpus, its data config and every clip as extract_clip gives it, by id."""
  root = tmp_path_factory.mktemp("roundtrip")
  media = root / "media"
  media.mkdir()
  prefix = [f"{ROOT}={media}"]
  csvs, expected = [], {}
  for split, specs, lips in (("train", TRAIN_CLIPS, True), ("test", TEST_CLIPS, False)):
    rows = [
      write_clip(media, *spec, lips=lips, tone_hz=200 + 50 * i) for i, spec in enumerate(specs)
    ]
    csv_path = media_utils.write_manifest(root / f"{split}.csv", rows)
    csvs.append(f"{split}={csv_path}")
    expected.update(
      {
        row.id: clips.extract_clip(row)
        for row in manifests.read_manifest(csv_path, path_prefix=prefix)
      }
    )
  builder = prepare.make_builder(
    root / "data", manifests=csvs, path_prefix=prefix, num_workers=1, progress_interval_s=0.0
  )
  summary = prepare.prepare(builder)
  assert {split: counts.rejected for split, counts in summary.splits.items()} == {
    "train": 0,
    "test": 0,
  }
  data_cfg = config_lib.data(
    builder=builder.name,
    train_split="train",
    data_dir=str(root / "data"),
    max_frames=MAX_FRAMES,
    train_window=TRAIN_WINDOW,
    bucket_lengths=BUCKETS,
    frame_budget=96,
    prefetch=2,
  )
  return data_cfg, expected


def clip_ids(data_cfg, split: str, records: np.ndarray) -> list[str]:
  index = split_index.load_index(split_index.open_split(data_cfg.builder, data_cfg.data_dir, split))
  return [str(i) for i in index.clips(records)["id"]]


def assert_row_holds(batch: dict, row: int, example: dict, start: int) -> None:
  """Row `row` is the example's frames [start, start + num_frames), padded after them."""
  frames = batch["num_frames"][row]
  for field in schema.ARRAY_FIELDS:
    if field.name not in batch:
      continue
    per_frame = field.rows_per_frame
    got = batch[field.name][row]
    window = example[field.name][per_frame * start : per_frame * (start + frames)]
    np.testing.assert_array_equal(got[: per_frame * frames], window, err_msg=field.name)
    padding = schema.UNKNOWN_PHONEME if field.name == "phonemes" else 0
    assert np.all(got[per_frame * frames :] == padding), field.name
  for name in ("label", "audio_label", "video_label"):
    assert batch[name][row] == example[name], name


def test_eval_batches_hold_each_whole_clip_as_extract_clip_gives_it(corpus):
  data_cfg, expected = corpus
  eval_cfg = config_lib.evaluation(splits=("test",), frame_budget=100)
  batches = list(
    loader.eval_dataset(
      data_cfg, eval_cfg, split="test", process_index=0, process_count=1, batch_multiple=1
    )
  )
  seen = []
  for batch in batches:
    assert "lips" not in batch  # the test split has no lip features
    real = batch["record"] >= 0
    assert np.all(batch["num_frames"][~real] == 0) and not batch["faces"][~real].any()
    ids = clip_ids(data_cfg, "test", batch["record"][real])
    for row, clip_id in zip(np.flatnonzero(real), ids):
      example = expected[clip_id]
      assert batch["num_frames"][row] == min(example["num_frames"], MAX_FRAMES)
      assert_row_holds(batch, row, example, start=0)
      seen.append(clip_id)
  assert sorted(seen) == sorted(spec[0] for spec in TEST_CLIPS)
  assert max(expected[i]["num_frames"] for i in seen) > MAX_FRAMES  # one clip was cut


def test_train_batches_hold_windows_of_the_clips_as_extract_clip_gives_them(corpus):
  data_cfg, expected = corpus
  batches = list(
    loader.train_dataset(
      data_cfg, seed=7, process_index=0, process_count=1, batch_multiple=1, num_epochs=1
    )
  )
  seen = set()
  for batch in batches:
    assert batch["lips"].shape[-1] == schema.LIP_DIM
    assert batch["faces"].shape[1] in BUCKETS  # leftovers of a bucket move to a larger one
    for row, clip_id in enumerate(clip_ids(data_cfg, "train", batch["record"])):
      example = expected[clip_id]
      assert batch["num_frames"][row] == TRAIN_WINDOW < example["num_frames"]
      # Every frame has its own grey level: the window's first face locates it in the clip.
      level = batch["faces"][row, 0, 0, 0]
      (start,) = np.flatnonzero(example["faces"][:, 0, 0] == level)
      assert start + TRAIN_WINDOW <= min(example["num_frames"], MAX_FRAMES)
      assert_row_holds(batch, row, example, int(start))
      seen.add(clip_id)
    assert set(batch["augment"]) == set(augment.PARAM_DTYPES)
  assert seen == {spec[0] for spec in TRAIN_CLIPS}
