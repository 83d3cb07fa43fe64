"""extract_clip on generated media: the example it builds and every reason it rejects a clip."""

import dataclasses
import math

import numpy as np
import pytest

from data_pipelines import schema
from data_pipelines.building import clips, corpora, manifests  # noqa: F401  (corpora: the row rules)
from data_pipelines.features import audio
from tests import media_utils

NUM_FRAMES = 25
LEVELS = media_utils.grey_levels(NUM_FRAMES)


@pytest.fixture(name="media")
def _media(tmp_path):
  """A 1 s clip: mp4 with AAC track, separate 16 kHz wav, lip .npy next to the video."""
  video = media_utils.write_video(
    tmp_path / "clip.mp4",
    media_utils.flat_frames(LEVELS),
    audio=media_utils.tone(1.0, 16_000, 300),
    sample_rate=16_000,
  )
  wav = media_utils.write_wav(tmp_path / "clip.wav", media_utils.tone(1.0, 16_000, 500))
  lip_features = media_utils.lip_features(NUM_FRAMES)
  media_utils.write_npy(tmp_path / "clip.npy", lip_features)
  return {"dir": tmp_path, "video": video, "wav": wav, "lips": lip_features}


def _row(media, **overrides) -> manifests.ManifestRow:
  """The clip's row as read from a manifest CSV, with column overrides."""
  columns = {
    "ID_Name": "wav2lip+clip",
    "Audio_Path": media["wav"].name,
    "Video_Path": media["video"].name,
    "ENtire_Label": 1,
    "Audio_Label": 0,
    "Video_Label": 1,
    "Identi_Label": 0,
    "Sync_Label": 1,
    "Frame_Len": NUM_FRAMES,
    "Audio_Len": 16_000,
    "FPS": 25.0,
    "AudioSamRate": 16_000,
  }
  columns.update(overrides)
  path = media_utils.write_manifest(media["dir"] / "manifest.csv", [columns])
  (row,) = manifests.read_manifest(path)
  return row


def test_extract_clip_builds_a_schema_example(media):
  example = clips.extract_clip(_row(media))
  assert example["num_frames"] == NUM_FRAMES and example["fps"] == schema.FPS
  assert (example["id"], example["dataset"], example["method"], example["category"]) == (
    "wav2lip+clip",
    "cmdfd",
    "wav2lip",
    "FakeVideo-RealAudio",
  )
  assert [example[k] for k in schema.LABEL_FIELDS] == [1, 0, 1, 0, 1]
  np.testing.assert_allclose(example["faces"].mean(axis=(1, 2)), LEVELS, atol=3)
  samples, _ = audio.load_audio(media["wav"])
  np.testing.assert_allclose(
    example["mfcc"], audio.fit_to_frames(audio.mfcc(samples, 16_000), NUM_FRAMES), atol=1e-5
  )
  assert example["stft"].shape == (4 * NUM_FRAMES, schema.NUM_STFT_BINS)
  np.testing.assert_array_equal(example["lips"], media["lips"].astype(np.float16))
  np.testing.assert_array_equal(example["phonemes"], np.full(NUM_FRAMES, -1))


def test_extract_clip_uses_the_video_track_when_the_row_names_no_audio(media):
  from_track = clips.extract_clip(_row(media, Audio_Path=""))
  from_wav = clips.extract_clip(_row(media))
  assert from_track["mfcc"].shape == from_wav["mfcc"].shape
  assert not np.allclose(from_track["mfcc"], from_wav["mfcc"])  # 300 Hz track, 500 Hz wav


def test_lips_are_computed_or_left_empty_without_a_lip_file(media):
  (media["dir"] / "clip.npy").unlink()
  seen = []

  def compute_lips(faces):
    seen.append((faces.shape, faces.dtype))
    return np.ones((len(faces), schema.LIP_DIM), np.float32)

  computed = clips.extract_clip(_row(media), compute_lips=compute_lips)
  assert seen == [((NUM_FRAMES, 112, 112), np.uint8)]
  assert computed["lips"].shape == (NUM_FRAMES, schema.LIP_DIM)
  assert clips.extract_clip(_row(media))["lips"].shape == (0, schema.LIP_DIM)


def test_max_frames_and_a_custom_lips_path(media):
  custom = media_utils.write_npy(media["dir"] / "elsewhere.npy", media["lips"] + 1)
  example = clips.extract_clip(_row(media), max_frames=10, lips_path=lambda row: custom)
  assert example["num_frames"] == 10 and example["mfcc"].shape == (40, schema.NUM_MFCC)
  np.testing.assert_array_equal(example["lips"], (media["lips"][:10] + 1).astype(np.float16))


def test_a_50_fps_video_is_brought_to_25_fps(media):
  levels = media_utils.grey_levels(2 * NUM_FRAMES)
  media_utils.write_video(media["video"], media_utils.flat_frames(levels), fps=50)
  media_utils.write_npy(media["dir"] / "clip.npy", media_utils.lip_features(2 * NUM_FRAMES))
  example = clips.extract_clip(_row(media, Frame_Len=2 * NUM_FRAMES))
  assert example["num_frames"] == NUM_FRAMES
  np.testing.assert_allclose(example["faces"].mean(axis=(1, 2)), levels[::2], atol=3)
  np.testing.assert_array_equal(
    example["lips"], media_utils.lip_features(2 * NUM_FRAMES)[::2].astype(np.float16)
  )


def _write_garbage(media):
  (media["dir"] / "clip.mp4").write_bytes(b"\x00not a video" * 100)


def _truncate_video(media):
  data = media["video"].read_bytes()
  media["video"].write_bytes(data[: len(data) // 2])


def _wav(samples, dtype=np.int16):
  return lambda media: media_utils.write_wav(media["wav"], samples, dtype=dtype)


def _lips(array):
  return lambda media: media_utils.write_npy(media["dir"] / "clip.npy", array)


def _mute_video(media):
  media_utils.write_video(media["video"], media_utils.flat_frames(LEVELS))


def _corrupt_wav(media):
  media["wav"].write_bytes(b"RIFF" + b"\x01" * 200)


@pytest.mark.parametrize(
  "damage, overrides, reason",
  [
    (None, {"Video_Path": "absent.mp4"}, "absent.mp4: video file not found"),
    (_write_garbage, {}, "clip.mp4: cannot decode video"),
    (_truncate_video, {}, "clip.mp4: cannot decode video"),
    (None, {"Frame_Len": 40}, "clip.mp4: has 25 decodable frames, 40 asked"),
    (None, {"Audio_Path": "absent.wav"}, "absent.wav: audio file not found"),
    (_corrupt_wav, {}, "clip.wav: cannot decode audio"),
    (_mute_video, {"Audio_Path": ""}, "clip.mp4: no audio stream"),
    (_wav(np.zeros(16_000)), {}, "clip.wav: audio is silent"),
    (_wav(media_utils.tone(0.01, 16_000)), {}, "clip.wav: audio too short (160 samples"),
    (_wav(media_utils.tone(3.0, 16_000)), {}, "clip.wav: audio lasts 3.00 s, the video"),
    (_wav(np.full(16_000, np.nan), np.float32), {}, "clip.wav: audio holds non-finite samples"),
    (_lips(np.full((NUM_FRAMES, 512), np.inf, np.float32)), {}, "clip.npy: lip features hold non"),
    (_lips(np.zeros((NUM_FRAMES - 1, 512))), {}, "clip.npy: 24 rows of lip features"),
    (_lips(np.zeros((NUM_FRAMES, 96))), {}, "clip.npy: lip features have shape (25, 96)"),
  ],
)
def test_unusable_clips_are_rejected_with_a_reason_naming_the_file(
  media, damage, overrides, reason
):
  if damage is not None:
    damage(media)
  with pytest.raises(clips.ClipRejected) as rejected:
    clips.extract_clip(_row(media, **overrides))
  assert reason in rejected.value.reason
  assert "\n" not in rejected.value.reason and str(media["dir"]) in rejected.value.reason


@pytest.mark.parametrize("field", schema.LABEL_FIELDS)
def test_labels_outside_0_1_are_rejected(media, field):
  row = dataclasses.replace(_row(media), **{field: 2})
  with pytest.raises(clips.ClipRejected, match=f"clip.mp4: {field}=2 is not 0 or 1"):
    clips.extract_clip(row)


def test_lips_computed_with_non_finite_values_are_rejected(media):
  (media["dir"] / "clip.npy").unlink()
  with pytest.raises(clips.ClipRejected, match="lips computed for .*clip.mp4: .*non-finite"):
    clips.extract_clip(_row(media), compute_lips=lambda f: np.full((len(f), 512), np.nan))


def test_the_length_tolerance_can_be_lifted_as_the_reference(media):
  media_utils.write_wav(media["wav"], media_utils.tone(3.0, 16_000))
  example = clips.extract_clip(_row(media), max_av_mismatch_s=math.inf)
  assert example["mfcc"].shape == (4 * NUM_FRAMES, schema.NUM_MFCC)
