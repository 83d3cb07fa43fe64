"""The synthetic corpus: determinism, schema, labels, each method's content rule, the TFDS build."""

import dataclasses
import functools
import os
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import schema
from data_pipelines.building.synthetic import builder, generator, mouth, phonemes, speakers, voice
from tests.conftest import REPO

TINY = generator.SyntheticSpec(
  seed=3, train_clips=8, validation_clips=3, test_clips=4, min_frames=20, max_frames=30
)
# Many clips to pick each method from; only the clips a test asks for are generated.
RULES = generator.SyntheticSpec(seed=1, train_clips=400, min_frames=60, max_frames=75)


@functools.cache
def clips_of(method: str, count: int) -> tuple[generator.SyntheticClip, ...]:
  indices = [
    i for i in range(RULES.train_clips) if generator.method_of(RULES, "train", i) == method
  ][:count]
  return tuple(generator.synthesize_clip(RULES, "train", i) for i in indices)


def frame_energy(example: dict) -> np.ndarray:
  """Log energy per video frame (MFCC column 0 is python_speech_features' log frame energy)."""
  return example["mfcc"][:, 0].reshape(example["num_frames"], -1).mean(axis=1)


def opening_energy_correlation(clip: generator.SyntheticClip, lag: int = 0) -> float:
  """corr(opening[t], energy[t - lag]) over the frames where both exist."""
  opening = clip.mouth_track[:, phonemes.OPENING]
  energy = frame_energy(clip.example)
  if lag > 0:
    opening, energy = opening[lag:], energy[:-lag]
  elif lag < 0:
    opening, energy = opening[:lag], energy[-lag:]
  return float(np.corrcoef(opening, energy)[0, 1])


def assert_same_example(actual: dict, expected: dict) -> None:
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    got = actual[key]
    if isinstance(value, str):
      assert (got.decode() if isinstance(got, bytes) else got) == value, key
    else:
      got, value = np.asarray(got), np.asarray(value)
      assert got.shape == value.shape and got.tobytes() == value.astype(got.dtype).tobytes(), key


def test_same_seed_gives_the_same_bytes_in_any_order_and_count():
  forward = [generator.synthesize_clip(TINY, "train", i).example for i in range(4)]
  longer = dataclasses.replace(TINY, train_clips=50, test_clips=9)
  for i in reversed(range(4)):
    assert_same_example(generator.synthesize_clip(longer, "train", i).example, forward[i])
  assert_same_example(next(generator.generate_examples(TINY, "train")), forward[0])
  other_seed = generator.synthesize_clip(dataclasses.replace(TINY, seed=4), "train", 0).example
  assert other_seed["faces"].tobytes() != forward[0]["faces"].tobytes()


def test_every_example_follows_the_schema():
  for split in generator.SPLITS:
    examples = list(generator.generate_examples(TINY, split))
    assert len(examples) == TINY.num_clips(split)
    assert len({e["id"] for e in examples}) == len(examples)
    for example in examples:
      schema.validate_example(example)
      assert example["dataset"] == "synthetic" and example["fps"] == 25.0
      assert TINY.min_frames <= example["num_frames"] <= TINY.max_frames
      assert example["lips"].shape == (0, schema.LIP_DIM)
      assert 0 <= example["phonemes"].min() and example["phonemes"].max() < phonemes.NUM_PHONEMES


def test_frame_labels_and_segments_must_agree_with_the_clip_labels():
  example = generator.synthesize_clip(PARTIAL, "train", 0).example
  real = {
    k: v for k, v in example.items() if k not in (*schema.FRAME_LABEL_FIELDS, "fake_segments")
  }
  real.update(label=0, audio_label=0, video_label=0)
  checked = schema.validate_example(real)  # clip labels only: every frame real, no segments
  assert not checked["frame_labels"].any() and checked["fake_segments"].shape == (0, 2)
  cases = [
    (dict(frame_labels=np.ones(example["num_frames"], np.uint8)), "frame_labels marks fake"),
    (dict(frame_labels=np.full(example["num_frames"], 2, np.uint8)), "other than 0 .real."),
    (dict(fake_segments=[[0.5, 1.0]]), "lists fake segments but label=0"),
    (dict(label=1, fake_segments=[[1.0, 0.5]]), "does not end after it starts"),
    (dict(label=1, fake_segments=[[-0.1, 0.5]]), "finite times >= 0"),
  ]
  for change, message in cases:
    with pytest.raises(schema.SchemaError, match=message):
      schema.validate_example({**real, **change})


def test_labels_follow_the_method():
  for split in generator.SPLITS:
    for index in range(TINY.num_clips(split)):
      example = generator.synthesize_clip(TINY, split, index).example
      video, audio, identity, sync = generator.LABELS[example["method"]]
      assert example["label"] == int(example["method"] != generator.REAL)
      assert (
        example["video_label"],
        example["audio_label"],
        example["identity_label"],
        example["sync_label"],
      ) == (video, audio, identity, sync)
      assert example["category"] == (
        f"{'Fake' if video else 'Real'}Video-{'Fake' if audio else 'Real'}Audio"
      )


def test_methods_are_spread_evenly_over_indices():
  methods = [generator.method_of(RULES, "train", i) for i in range(400)]
  fakes = [m for m in methods if m != generator.REAL]
  assert abs(len(fakes) / len(methods) - RULES.fake_fraction) < 0.01
  for method in generator.METHODS:
    assert abs(fakes.count(method) / len(fakes) - 1 / len(generator.METHODS)) < 0.02
  only_real = dataclasses.replace(RULES, fake_fraction=0.0)
  assert {generator.method_of(only_real, "test", i) for i in range(50)} == {generator.REAL}


def test_speakers_are_disjoint_between_splits():
  cast = {
    split: set(speakers.split_speakers(TINY.num_speakers, split).tolist())
    for split in generator.SPLITS
  }
  assert not (
    cast["train"] & cast["validation"]
    or cast["train"] & cast["test"]
    or cast["validation"] & cast["test"]
  )
  for split in generator.SPLITS:
    for index in range(TINY.num_clips(split)):
      clip = generator.synthesize_clip(TINY, split, index)
      assert {clip.speaker, clip.voice_speaker} <= cast[split]


def test_real_clips_say_the_same_thing_in_audio_and_mouth():
  for clip in clips_of(generator.REAL, 4):
    np.testing.assert_array_equal(clip.mouth_phonemes, clip.example["phonemes"])
    assert clip.speaker == clip.voice_speaker and clip.video_lag == 0


def test_lipsync_mouth_says_other_phonemes_in_time_with_the_audio():
  real_correlation = np.mean([opening_energy_correlation(c) for c in clips_of("real", 8)])
  desync_correlation = np.mean([opening_energy_correlation(c) for c in clips_of("desync", 8)])
  for clip in clips_of("lipsync", 8):
    heard, seen = clip.example["phonemes"], clip.mouth_phonemes
    speaking = heard != phonemes.SILENCE
    assert np.all(seen[speaking] != heard[speaking])
    np.testing.assert_array_equal(seen[~speaking], phonemes.SILENCE)
    groups = np.array([p.group for p in phonemes.PHONEMES])
    np.testing.assert_array_equal(groups[seen], groups[heard])
    # The opening is the one the audio's phonemes give (up to stress and coarticulation).
    heard_opening = phonemes.VISEME_PARAMS[heard, phonemes.OPENING]
    assert np.corrcoef(clip.mouth_track[:, phonemes.OPENING], heard_opening)[0, 1] > 0.9
  lipsync_correlation = np.mean([opening_energy_correlation(c) for c in clips_of("lipsync", 8)])
  assert abs(lipsync_correlation - real_correlation) < 0.15
  assert lipsync_correlation > desync_correlation + 0.3


def test_desync_shifts_the_video_against_the_audio():
  for clip in clips_of("desync", 8):
    lag = clip.video_lag
    assert RULES.desync_frames[0] <= abs(lag) <= RULES.desync_frames[1]
    heard = clip.example["phonemes"]
    frames = np.arange(max(lag, 0), len(heard) + min(lag, 0))
    np.testing.assert_array_equal(clip.mouth_phonemes[frames], heard[frames - lag])
    correlations = {k: opening_energy_correlation(clip, k) for k in range(-12, 13)}
    assert abs(max(correlations, key=correlations.get) - lag) <= 1


def test_voice_swap_changes_the_voice_but_not_the_mouth():
  def high_band(example):  # share of the STFT power above 7.2 kHz (bins of 25 Hz)
    power = np.square(example["stft"].astype(np.float32))
    return power[:, 288:].sum() / power.sum()

  real_high = np.mean([high_band(c.example) for c in clips_of("real", 6)])
  for clip in clips_of("voice_swap", 6):
    assert clip.voice_speaker != clip.speaker
    assert clip.voice_speaker in speakers.split_speakers(RULES.num_speakers, "train")
    np.testing.assert_array_equal(clip.mouth_phonemes, clip.example["phonemes"])
    assert clip.video_lag == 0
    assert high_band(clip.example) < 0.25 * real_high  # the vocoder's band limit


def test_talking_head_mouth_is_smoother_and_its_texture_cleaner():
  def roughness(clip):
    return np.abs(np.diff(clip.mouth_track, axis=0)).mean()

  def pixel_noise(clip):  # mean absolute difference of horizontal neighbours, skin and all
    return np.abs(np.diff(clip.example["faces"].astype(np.float32), axis=2)).mean()

  real = clips_of("real", 6)
  talking = clips_of("talking_head", 6)
  assert np.mean([roughness(c) for c in talking]) < 0.85 * np.mean([roughness(c) for c in real])
  assert np.mean([pixel_noise(c) for c in talking]) < 0.8 * np.mean([pixel_noise(c) for c in real])
  for clip in talking:
    np.testing.assert_array_equal(clip.mouth_phonemes, clip.example["phonemes"])


def test_the_mouth_never_leaves_the_teachers_mouth_box():
  top, bottom, left, right = (f * schema.FACE_SIZE for f in (0.5, 1.0, 0.2, 0.8))
  for method in (generator.REAL, *generator.METHODS):
    for clip in clips_of(method, 2):
      face = speakers.speaker(RULES.seed, clip.speaker).face
      half_width, half_opening, upper_lip, lower_lip = mouth.outline(face, clip.mouth_track)
      rows, cols = mouth.patch_slices(face)
      # Everything drawn lies in the mouth patch...
      assert half_width.max() < mouth.MIDLINE - cols.start
      assert (half_opening + np.maximum(upper_lip, lower_lip)).max() < face.mouth_y - rows.start
      # ...and every frame's head pose keeps the whole patch inside the box.
      corners = np.array(
        [[x, y, 1.0] for x in (cols.start, cols.stop) for y in (rows.start, rows.stop)]
      )
      moved = np.einsum("tij,cj->tci", clip.head_poses, corners)
      assert moved[..., 0].min() >= left and moved[..., 0].max() <= right
      assert moved[..., 1].min() >= top and moved[..., 1].max() <= bottom


def test_visemes_of_a_group_share_opening_and_loudness_but_not_shape():
  for group in {p.group for p in phonemes.PHONEMES} - {"silence"}:
    members = [i for i, p in enumerate(phonemes.PHONEMES) if p.group == group]
    assert len(members) >= 2, group
    params = phonemes.VISEME_PARAMS[members]
    assert np.ptp(params[:, phonemes.OPENING]) == 0 and np.ptp(phonemes.LOUDNESS[members]) == 0
    shapes = np.delete(params, phonemes.OPENING, axis=1)
    distances = np.abs(shapes[:, None] - shapes[None]).sum(axis=-1)
    assert distances[~np.eye(len(members), dtype=bool)].min() > 0.5, group


def test_config_names_differ_for_every_field():
  variants = [
    generator.SyntheticSpec(),
    generator.SyntheticSpec(seed=1),
    generator.SyntheticSpec(train_clips=1),
    generator.SyntheticSpec(validation_clips=1),
    generator.SyntheticSpec(test_clips=1),
    generator.SyntheticSpec(min_frames=51),
    generator.SyntheticSpec(max_frames=76),
    generator.SyntheticSpec(fake_fraction=0.25),
    generator.SyntheticSpec(methods=("lipsync",)),
    generator.SyntheticSpec(num_speakers=13),
    generator.SyntheticSpec(desync_frames=(3, 9)),
    generator.SyntheticSpec(version=2, methods=("ls_a", "desync")),
    generator.SyntheticSpec(held_out=("lipsync",)),
    generator.SyntheticSpec(segment_frames=(10, 20)),
  ]
  assert len(variants) == len(dataclasses.fields(generator.SyntheticSpec)) + 1
  assert len({builder.config_name(spec) for spec in variants}) == len(variants)
  # Fields added later are named only when set, so earlier corpora keep their names.
  assert "version" not in builder.config_name(generator.SyntheticSpec())
  assert "segment_frames" not in builder.config_name(generator.SyntheticSpec())


PARTIAL = generator.SyntheticSpec(
  methods=generator.PARTIAL_METHODS, min_frames=60, max_frames=100, train_clips=40
)


def test_partial_forgeries_forge_their_segments_only():
  seen = set()
  for index in range(PARTIAL.num_clips("train")):
    clip = generator.synthesize_clip(PARTIAL, "train", index)
    example, method = clip.example, clip.example["method"]
    forged = example["frame_labels"].astype(bool)
    segments = clip.fake_segments
    if method == generator.REAL:
      assert not forged.any() and len(segments) == 0
      continue
    seen.add(method)
    lengths = segments[:, 1] - segments[:, 0]
    assert 1 <= len(segments) <= 2 and np.all((lengths >= 12) & (lengths <= 50)), segments
    assert forged.sum() == lengths.sum() and forged.mean() <= 0.6
    assert np.array_equal(np.flatnonzero(forged), np.concatenate([np.arange(*s) for s in segments]))
    if len(segments) == 2:
      assert segments[1, 0] - segments[0, 1] >= 3
    video, audio = example["video_frame_labels"], example["audio_frame_labels"]
    assert np.array_equal(video if method != "voice_swap_part" else audio, forged)
    assert not (audio if method != "voice_swap_part" else video).any()
    # Outside the segments the mouth says what is heard, inside (lip-sync) it need not.
    said, heard = clip.mouth_phonemes, example["phonemes"]
    assert np.array_equal(said[~forged], heard[~forged]), method
    if method == "lipsync_part":
      assert not np.array_equal(said[forged], heard[forged])
    if method == "desync_part":
      assert clip.video_lag != 0
  assert seen == set(generator.PARTIAL_METHODS)


def test_voice_swap_part_splices_the_forged_voice_into_its_segments_only():
  frames = np.zeros(10, bool)
  frames[3:6] = True
  per_frame = voice.SAMPLES_PER_FRAME
  real = np.full(10 * per_frame, 1000, np.int16)
  forged = np.full(10 * per_frame, -1000, np.int16)
  mixed = generator._splice(real, forged, frames)  # pylint: disable=protected-access
  fade = int(0.005 * schema.SAMPLE_RATE)
  inside = np.zeros_like(frames.repeat(per_frame))
  inside[3 * per_frame + fade + 1 : 6 * per_frame - fade - 1] = True
  outside = np.ones_like(inside)
  outside[3 * per_frame - fade - 1 : 6 * per_frame + fade + 1] = False
  assert np.all(mixed[inside] == -1000) and np.all(mixed[outside] == 1000)
  # The joins fade over 2 x 5 ms, monotonically, crossing the midpoint at the frame boundary.
  join = mixed[3 * per_frame - fade : 3 * per_frame + fade + 1].astype(int)
  assert np.all(np.diff(join) <= 0) and abs(join[fade]) <= 30


def test_tfds_build_reads_back_the_generator_output(tmp_path):
  built = builder.build(TINY, os.fspath(tmp_path))
  sources = built.as_data_source()
  shard_paths = sorted(str(p) for p in pathlib.Path(built.data_dir).glob("*-train.array_record-*"))
  raw = grain.sources.ArrayRecordDataSource(shard_paths)
  for split in generator.SPLITS:
    assert len(sources[split]) == TINY.num_clips(split)
  assert len(raw) == TINY.train_clips
  for index, expected in enumerate(generator.generate_examples(TINY, "train")):
    assert_same_example(sources["train"][index], expected)
    assert_same_example(built.info.features.deserialize_example_np(raw[index]), expected)
  by_name = tfds.builder(builder.dataset_name(TINY), data_dir=os.fspath(tmp_path))
  assert by_name.info.splits["test"].num_examples == TINY.test_clips
  mtimes = [os.stat(p).st_mtime_ns for p in shard_paths]
  builder.build(TINY, os.fspath(tmp_path))  # reused, not rewritten
  assert [os.stat(p).st_mtime_ns for p in shard_paths] == mtimes


def test_build_and_read_do_not_import_tensorflow(tmp_path):
  script = f"""
import sys
from data_pipelines.building.synthetic import builder, generator
spec = generator.SyntheticSpec(train_clips=2, validation_clips=0, test_clips=1, min_frames=8,
                               max_frames=8)
source = builder.build(spec, {os.fspath(tmp_path)!r}).as_data_source()["train"]
assert source[1]["num_frames"] == 8
print(sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")))
"""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    env=env,
    check=False,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"


def test_spec_rejects_what_it_cannot_make():
  for bad in (
    dict(methods=("faceswap",)),
    dict(fake_fraction=1.5),
    dict(min_frames=0),
    dict(min_frames=9, max_frames=8),
    dict(num_speakers=5),
    dict(desync_frames=(0, 3)),
  ):
    with pytest.raises(ValueError):
      generator.SyntheticSpec(**bad)
  with pytest.raises(IndexError):
    generator.synthesize_clip(TINY, "train", TINY.train_clips)
