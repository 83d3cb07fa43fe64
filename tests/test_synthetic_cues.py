"""Version 2 of the synthetic corpus: its lip-sync fakes differ from real clips in content only.

The claim study (docs/generalisation.md) rests on these bounds, measured with one-number cues
(data_pipelines/building/synthetic/cues.py) on a few hundred generated clips: the audio's energy
against the mouth's size tells no lip-sync fake apart (45-55% AUC), a content cue tells every one
(>= 90%), each generator's trace tells its own generator (>= 90%) and no other method (<= 60%), and
the trained methods' own giveaways do not flag the held-out generators.
"""

import numpy as np
import pytest

from data_pipelines.building.synthetic import cues, generator, phonemes, speakers, voice
from data_pipelines.features import audio

CLIPS = 200
SPEC = generator.SyntheticSpec(
  seed=0,
  version=2,
  methods=generator.METHODS_V2,
  num_speakers=100,
  train_clips=10,
  validation_clips=10,
  test_clips=CLIPS * 16,
  min_frames=40,
  max_frames=50,
)
ENERGY_CUES = ("energy_vs_opening", "energy_vs_width", "energy_vs_area")
TRACES = {"ls_a": "seam", "ls_b": "flicker", "ls_c": "sharpness"}


def steady_c0(phoneme_id: int, voice_params: speakers.Voice, equal: bool) -> float:
  """Mean MFCC c0 of one phoneme held for two seconds (edges dropped)."""
  frames = 50
  utterance = phonemes.Utterance(
    np.full(frames, phoneme_id, np.int32), np.zeros(frames, np.int64), np.ones(frames, np.float32)
  )
  samples = voice.render_speech(
    np.random.default_rng(0), utterance, voice_params, vocoded=False, equal_mfcc_energy=equal
  )
  return float(audio.mfcc(samples, 16_000)[20:-20, 0].mean())


def test_equal_mfcc_energy_gives_a_group_one_c0():
  for speaker_id in range(3):
    speaker_voice = speakers.speaker(0, speaker_id).voice
    for group in ("open", "mid", "close", "fricative", "nasal"):
      members = [i for i, p in enumerate(phonemes.PHONEMES) if p.group == group]
      equalised = [steady_c0(i, speaker_voice, True) for i in members]
      raw = [steady_c0(i, speaker_voice, False) for i in members]
      assert np.ptp(equalised) < 0.02, (group, equalised)
      assert np.ptp(raw) > 0.1, (group, raw)  # what version 1 gives: the cue it had


def test_separability_bounds():
  """One table (the expensive part: 1600 clips), every bound of the module docstring."""
  table = cues.auc_table(SPEC, "test", CLIPS)
  # The audio's energy against the mouth's size tells no lip-sync fake apart...
  for cue in ENERGY_CUES:
    for method in generator.LIPSYNC_FAMILY:
      assert 0.45 <= table[cue][method] <= 0.55, (cue, method, table[cue][method])
  assert table["energy_vs_opening"]["desync"] > 0.95  # ...though the cue itself works.
  # Content tells every one.
  for method in generator.LIPSYNC_FAMILY:
    assert table["content"][method] >= 0.9, (method, table["content"][method])
  # Each trace tells its own generator and no other method.
  for method, cue in TRACES.items():
    assert table[cue][method] >= 0.9, (cue, method, table[cue][method])
    for other in SPEC.methods:
      if other != method:
        assert table[cue][other] <= 0.6, (cue, other, table[cue][other])
  # The trained methods' giveaways (and ls_a's trace) do not flag the held-out generators.
  assert table["texture"]["talking_head"] > 0.95 and table["vocoder"]["voice_swap"] > 0.7
  for cue in ("texture", "desync", "vocoder", "seam"):
    for method in ("ls_b", "ls_c", "ls_a_clean"):
      assert table[cue][method] <= 0.6, (cue, method, table[cue][method])


def test_version_1_lipsync_was_told_apart_by_energy_against_width():
  spec = generator.SyntheticSpec(seed=0, num_speakers=100, test_clips=1000)
  real = cues.method_scores(spec, "test", generator.REAL, 60)["energy_vs_width"]
  lipsync = cues.method_scores(spec, "test", "lipsync", 60)["energy_vs_width"]
  assert cues.auc(real, lipsync) > 0.85


def test_lipsync_family_keeps_the_audio_and_the_opening():
  for method in generator.LIPSYNC_FAMILY:
    index = cues.clip_indices(SPEC, "test", method, 1)[0]
    clip = generator.synthesize_clip(SPEC, "test", index)
    assert clip.video_lag == 0 and clip.voice_speaker == clip.speaker
    heard = clip.example["phonemes"]
    opening = phonemes.VISEME_PARAMS[heard, phonemes.OPENING]
    assert np.corrcoef(clip.mouth_track[:, phonemes.OPENING], opening)[0, 1] > 0.9
    speaking = heard != phonemes.SILENCE
    said = clip.mouth_phonemes[speaking]
    if method == "ls_b":
      assert np.all(said == -1)
    elif method == "ls_c":
      assert 0.2 < np.mean(said != heard[speaking]) < 0.8
    else:
      assert np.all(said != heard[speaking])


def test_held_out_methods_appear_in_the_test_split_only():
  spec = generator.SyntheticSpec(
    seed=0,
    version=2,
    methods=generator.METHODS_V2,
    held_out=("ls_b", "ls_c"),
    train_clips=400,
    test_clips=400,
  )
  train = {generator.method_of(spec, "train", i) for i in range(400)}
  test = {generator.method_of(spec, "test", i) for i in range(400)}
  assert train == {"real", "ls_a", "ls_a_clean", "desync", "talking_head", "voice_swap"}
  assert test == {"real", *generator.METHODS_V2}
  with pytest.raises(ValueError):
    generator.SyntheticSpec(version=2, methods=generator.METHODS_V2, held_out=("lipsync",))
  with pytest.raises(ValueError):
    generator.SyntheticSpec(version=2, methods=("lipsync",))
