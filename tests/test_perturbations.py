"""Degradations of decoded media: shapes kept, seeded, identity levels, what each one does."""

import math

import numpy as np
import pytest

from data_pipelines import schema
from data_pipelines.building.synthetic import generator
from data_pipelines.reading import perturbations

NUM_FRAMES = 30
ALL_LEVELS = [
  (name, level) for name, p in perturbations.PERTURBATIONS.items() for level in p.levels
]


@pytest.fixture(scope="module")
def media():
  """A synthetic clip's faces and a voiced signal (harmonics of 150 Hz with noise) as audio."""
  spec = generator.SyntheticSpec(
    test_clips=2, min_frames=NUM_FRAMES, max_frames=NUM_FRAMES, num_speakers=10
  )
  faces = generator.synthesize_clip(spec, "test", 1).example["faces"]
  t = np.arange(NUM_FRAMES * schema.SAMPLE_RATE // int(schema.FPS)) / schema.SAMPLE_RATE
  voice = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
  samples = 6000 * voice + np.random.default_rng(0).normal(0, 200, t.size)
  return faces, samples.astype(np.float32)


def _degrade(media, name, level, seed=0):
  return perturbations.PERTURBATIONS[name].apply(*media, level, np.random.default_rng(seed))


@pytest.mark.parametrize("name,level", ALL_LEVELS)
def test_every_level_keeps_shapes_changes_its_modality_only_and_is_seeded(media, name, level):
  faces, samples = _degrade(media, name, level)
  assert faces.shape == media[0].shape and faces.dtype == np.uint8
  assert samples.shape == media[1].shape and samples.dtype == np.float32
  again = _degrade(media, name, level)
  np.testing.assert_array_equal(faces, again[0])
  np.testing.assert_array_equal(samples, again[1])
  if perturbations.PERTURBATIONS[name].modality == "video":
    assert samples is media[1] and not np.array_equal(faces, media[0])
  else:
    assert faces is media[0] and not np.array_equal(samples, media[1])


@pytest.mark.parametrize(
  "name", [n for n, p in perturbations.PERTURBATIONS.items() if p.identity is not None]
)
def test_the_identity_level_changes_nothing(media, name):
  faces, samples = _degrade(media, name, perturbations.PERTURBATIONS[name].identity)
  np.testing.assert_array_equal(faces, media[0])
  np.testing.assert_array_equal(samples, media[1])


@pytest.mark.parametrize("name", ["h264_crf", "h264_bitrate", "downscale", "blur", "noise", "snr"])
def test_harsher_levels_degrade_more(media, name):
  modality = perturbations.PERTURBATIONS[name].modality
  clean = media[0 if modality == "video" else 1].astype(np.float64)

  def error(level):
    out = _degrade(media, name, level)[0 if modality == "video" else 1]
    return np.mean(np.abs(out.astype(np.float64) - clean))

  errors = [error(level) for level in perturbations.PERTURBATIONS[name].levels]
  assert errors == sorted(errors), errors


def test_noise_follows_its_seed_and_hits_the_requested_snr(media):
  one, two = (_degrade(media, "noise", 10.0, seed)[0] for seed in (0, 1))
  assert not np.array_equal(one, two)
  noisy = _degrade(media, "snr", 10)[1]
  measured = 10 * math.log10(np.mean(media[1] ** 2.0) / np.mean((noisy - media[1]) ** 2.0))
  assert measured == pytest.approx(10, abs=0.3)


@pytest.mark.parametrize("name", ["aac", "mp3", "resample"])
def test_audio_codecs_and_resampling_keep_the_timing(media, name):
  samples = media[1]
  out = _degrade(media, name, perturbations.PERTURBATIONS[name].levels[0])[1]
  middle = slice(4000, len(samples) - 4000)
  shifts = range(-600, 601)
  best = max(shifts, key=lambda k: float(np.dot(np.roll(samples, k)[middle], out[middle])))
  assert abs(best) <= 1, best
  # And what comes back still is the voice: most of its energy survives.
  residual = np.mean((out[middle] - samples[middle]) ** 2) / np.mean(samples[middle] ** 2)
  assert residual < 0.2, residual


def test_a_lower_frame_rate_holds_each_frame(media):
  faces = media[0]
  held = perturbations.frame_rate(faces, 5, None)
  np.testing.assert_array_equal(held[:5], faces[[0] * 5])
  np.testing.assert_array_equal(held[5:10], faces[[5] * 5])


def test_edge_silence_mutes_only_the_edges(media):
  out = perturbations.edge_silence(media[1], 0.1, None)
  count = int(0.1 * schema.SAMPLE_RATE)
  assert not out[:count].any() and not out[-count:].any()
  np.testing.assert_array_equal(out[count:-count], media[1][count:-count])


def test_specs_parse_to_settings_and_bad_specs_name_the_problem():
  settings = perturbations.parse("blur:1:2, snr")
  assert [s.name for s in settings] == ["blur:1", "blur:2"] + [
    f"snr:{level:g}" for level in perturbations.PERTURBATIONS["snr"].levels
  ]
  assert len(perturbations.parse("all")) == sum(
    len(p.levels) for p in perturbations.PERTURBATIONS.values()
  )
  with pytest.raises(ValueError, match="unknown perturbation 'jpeg'"):
    perturbations.parse("blur,jpeg:50")
  with pytest.raises(ValueError, match="'blur:x': levels must be numbers"):
    perturbations.parse("blur:x")
  with pytest.raises(ValueError, match="no perturbation named"):
    perturbations.parse(" , ")


def test_each_clip_and_setting_has_its_own_reproducible_generator():
  setting = perturbations.Setting("noise", 5.0)
  draw = lambda seed, clip: perturbations.clip_rng(seed, setting, clip).random()
  assert draw(0, "a-1") == draw(0, "a-1")
  assert len({draw(0, "a-1"), draw(0, "a-2"), draw(1, "a-1")}) == 3
