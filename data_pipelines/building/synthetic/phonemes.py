"""The synthetic language: phonemes with a sound and a mouth shape, and utterances made of them.

Phonemes come in groups that share loudness and mouth opening but differ in formants and in mouth
shape (rounded vs spread lips, teeth, tongue). The mouth opening follows the audio energy for every
phoneme of a group alike, so only the shape/formant pairing tells which phoneme is being said: a
lip-sync fake that swaps phonemes within groups keeps the energy-opening synchrony of a real clip.

Ids are 0 (silence) to NUM_PHONEMES - 1; they index the teachers' output classes.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Phoneme:
  """One phoneme's sound and viseme.

  Sound: `formants` (Hz, scaled by the speaker's formant scale) shape a harmonic voice source
  (`voiced`) or white noise; `loudness` is the RMS relative to an open vowel.
  Viseme (see VISEME_PARAMS): `opening` of the lips (fraction of the speaker's maximum), `width`
  (fraction of the speaker's mouth width), `roundness` (0 spread and boxy, 1 round and protruded),
  `upper_teeth` / `lower_teeth` (how much of the opening they fill), `tongue` (how much shows).
  """

  name: str
  group: str
  voiced: bool
  formants: tuple[tuple[float, float, float], ...]  # (centre Hz, bandwidth Hz, amplitude)
  loudness: float
  opening: float
  width: float
  roundness: float
  upper_teeth: float
  lower_teeth: float
  tongue: float


def _vowel(name, group, f1, f2, f3, loudness, opening, width, roundness, upper, lower, tongue):
  formants = ((f1, 80.0, 1.0), (f2, 110.0, 0.6), (f3, 160.0, 0.3))
  return Phoneme(
    name, group, True, formants, loudness, opening, width, roundness, upper, lower, tongue
  )


# Columns: name, group, voiced, formants, loudness | opening, width, roundness, upper teeth,
# lower teeth, tongue; _vowel takes F1, F2, F3 (Hz) in place of voiced and formants.
PHONEMES = (
  Phoneme("sil", "silence", False, (), 0.0, 0.0, 1.0, 0.3, 0.0, 0.0, 0.0),
  # Open vowels: jaw fully open; the lips make them apart.
  _vowel("aa", "open", 730, 1090, 2440, 1.0, 0.9, 1.0, 0.2, 0.3, 0.0, 0.8),
  _vowel("ao", "open", 570, 840, 2410, 1.0, 0.9, 0.65, 0.9, 0.0, 0.0, 0.1),
  _vowel("ae", "open", 660, 1720, 2410, 1.0, 0.9, 1.3, 0.0, 1.0, 0.6, 0.3),
  # Mid vowels.
  _vowel("eh", "mid", 530, 1840, 2480, 0.8, 0.55, 1.15, 0.1, 0.8, 0.3, 0.5),
  _vowel("ow", "mid", 460, 880, 2500, 0.8, 0.55, 0.7, 0.9, 0.0, 0.0, 0.1),
  # Close vowels.
  _vowel("iy", "close", 270, 2290, 3010, 0.65, 0.35, 1.3, 0.0, 1.0, 1.0, 0.0),
  _vowel("uw", "close", 300, 870, 2240, 0.65, 0.35, 0.5, 1.0, 0.0, 0.0, 0.0),
  # Fricatives: noise through a narrow slit; labiodental shows the upper teeth on the lower lip,
  # the sibilant both rows of clenched teeth.
  Phoneme(
    "f",
    "fricative",
    False,
    ((2500, 3000, 0.5), (6000, 3000, 0.5)),
    0.4,
    0.25,
    0.95,
    0.0,
    1.0,
    0.0,
    0.0,
  ),
  Phoneme(
    "s",
    "fricative",
    False,
    ((5500, 1500, 1.0), (7500, 1500, 0.6)),
    0.4,
    0.25,
    1.2,
    0.0,
    1.0,
    1.0,
    0.0,
  ),
  # Nasals: a low murmur through a barely open mouth, pursed and dark or with the tongue tip.
  Phoneme(
    "m",
    "nasal",
    True,
    ((250, 60, 1.0), (1100, 150, 0.15), (2200, 200, 0.08)),
    0.45,
    0.2,
    0.75,
    0.7,
    0.0,
    0.0,
    0.0,
  ),
  Phoneme(
    "n",
    "nasal",
    True,
    ((250, 60, 1.0), (1700, 150, 0.15), (2600, 200, 0.08)),
    0.45,
    0.2,
    1.05,
    0.1,
    0.0,
    0.0,
    1.0,
  ),
)
NUM_PHONEMES = len(PHONEMES)
SILENCE = 0
LOUDNESS = np.array([p.loudness for p in PHONEMES], np.float32)
VISEME_FIELDS = ("opening", "width", "roundness", "upper_teeth", "lower_teeth", "tongue")
VISEME_PARAMS = np.array([[getattr(p, f) for f in VISEME_FIELDS] for p in PHONEMES], np.float32)
OPENING, WIDTH, ROUNDNESS, UPPER_TEETH, LOWER_TEETH, TONGUE = range(len(VISEME_FIELDS))

_VOWELS = np.array([i for i, p in enumerate(PHONEMES) if p.group in ("open", "mid", "close")])
_CONSONANTS = np.array([i for i, p in enumerate(PHONEMES) if p.group in ("fricative", "nasal")])
GROUPS = tuple(dict.fromkeys(p.group for p in PHONEMES))
GROUP_INDEX = np.array([GROUPS.index(p.group) for p in PHONEMES], np.int32)
# Per group: the mean of its members' viseme parameters.
GROUP_MEAN_PARAMS = np.stack(
  [VISEME_PARAMS[GROUP_INDEX == g].mean(axis=0) for g in range(len(GROUPS))]
).astype(np.float32)
_GROUP_MEMBERS = tuple(np.flatnonzero(GROUP_INDEX == g) for g in range(len(GROUPS)))
# Other members of each phoneme's group (empty for silence).
_GROUP_MATES = tuple(
  np.array([j for j, q in enumerate(PHONEMES) if q.group == p.group and j != i], np.int64)
  for i, p in enumerate(PHONEMES)
)

CONSONANT_FRAMES = (2, 3)  # inclusive range of durations, in video frames
VOWEL_FRAMES = (3, 6)
PAUSE_FRAMES = (2, 5)
_ONSET_PROBABILITY = 0.6  # a syllable starts with a consonant
_PAUSE_PROBABILITY = 0.25  # silence after a word
_EMPHASIS = (0.8, 1.2)  # per-segment stress: scales both loudness and lip opening


@dataclasses.dataclass(frozen=True)
class Utterance:
  """A stream of segments, per video frame: `phonemes` and `segments` (T,) int, `emphasis` (T,)."""

  phonemes: np.ndarray
  segments: np.ndarray
  emphasis: np.ndarray


def sample_utterance(rng: np.random.Generator, num_frames: int) -> Utterance:
  """Words of one to three (consonant +) vowel syllables with pauses between, cut to num_frames."""
  ids, durations = [], []
  while sum(durations) < num_frames:
    for _ in range(rng.integers(1, 4)):
      if rng.random() < _ONSET_PROBABILITY:
        ids.append(rng.choice(_CONSONANTS))
        durations.append(rng.integers(CONSONANT_FRAMES[0], CONSONANT_FRAMES[1] + 1))
      ids.append(rng.choice(_VOWELS))
      durations.append(rng.integers(VOWEL_FRAMES[0], VOWEL_FRAMES[1] + 1))
    if rng.random() < _PAUSE_PROBABILITY:
      ids.append(SILENCE)
      durations.append(rng.integers(PAUSE_FRAMES[0], PAUSE_FRAMES[1] + 1))
  emphasis = rng.uniform(*_EMPHASIS, size=len(ids)).astype(np.float32)
  segments = np.repeat(np.arange(len(ids)), durations)[:num_frames]
  return Utterance(np.asarray(ids, np.int32)[segments], segments, emphasis[segments])


def swap_within_groups(
  rng: np.random.Generator, utterance: Utterance, probability: float = 1.0
) -> np.ndarray:
  """Per-frame ids of another phoneme of the same group, segment by segment; silence stays.

  A group's members are equally frequent and each is replaced by a uniformly drawn other member,
  so the swapped stream has the same phoneme statistics, loudness and opening as the original.
  probability < 1 swaps each spoken segment with that probability and keeps the others (one
  extra draw per segment, made only then, so that full swaps draw exactly as before).
  """
  segment_ids = utterance.phonemes[np.unique(utterance.segments, return_index=True)[1]]
  swapped = np.array(
    [rng.choice(_GROUP_MATES[i]) if i != SILENCE else SILENCE for i in segment_ids], np.int32
  )
  if probability < 1.0:
    keep = rng.random(len(segment_ids)) >= probability
    swapped = np.where(keep, segment_ids, swapped)
  return swapped[utterance.segments]


def group_shapes(utterance: Utterance, rng: np.random.Generator) -> np.ndarray:
  """Per-frame viseme parameters (T, len(VISEME_FIELDS)) that know each segment's group only.

  A generator that predicts the sound class but not the phoneme: each spoken segment gets its
  group's opening, its group's mean roundness, teeth and tongue (a neutral shape), and the width
  of a member of its group drawn uniformly, whatever the phoneme said. Opening and width, the
  mouth's size, then have exactly a real clip's distribution within each group, independent of
  the audio within a group as a real mouth's size is after loudness equalisation: the audio's
  energy against the mouth's size cannot tell such a clip from a real one. (The group's mean
  width, or a mean plus noise of the same variance, would: both change the shape of the size's
  distribution, and with it the per-clip correlations.)
  """
  segment_ids = utterance.phonemes[np.unique(utterance.segments, return_index=True)[1]]
  groups = GROUP_INDEX[segment_ids]
  params = GROUP_MEAN_PARAMS[groups].copy()
  params[:, OPENING] = VISEME_PARAMS[segment_ids, OPENING]
  members = [_GROUP_MEMBERS[g][rng.integers(len(_GROUP_MEMBERS[g]))] for g in groups]
  params[:, WIDTH] = VISEME_PARAMS[members, WIDTH]
  return params[utterance.segments]
