"""Speaker identities (a face and a voice each) drawn from (seed, id), disjoint per split."""

import dataclasses

import numpy as np

SPLITS = ("train", "validation", "test")
_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
MIN_SPEAKERS_PER_SPLIT = 2  # voice_swap borrows another speaker of the same split
_SPEAKER_STREAM = 1  # seeds speakers apart from clips (generator.py uses 0)


@dataclasses.dataclass(frozen=True)
class Face:
  """Grey levels and geometry (pixels in the 112x112 frame) of one face."""

  background: float
  skin: float
  hair: float
  lip_darkness: float
  head_centre_y: float
  head_half_width: float
  head_half_height: float
  hairline_y: float
  eye_y: float
  eye_spacing: float  # horizontal distance of each eye from the face's midline
  eye_half_width: float
  eye_half_height: float
  brow_gap: float
  nose_y: float
  mouth_y: float
  mouth_half_width: float  # at viseme width 1
  mouth_opening: float  # inner half-height at viseme opening 1
  lip_thickness: float


@dataclasses.dataclass(frozen=True)
class Voice:
  """Pitch, vocal tract length (formant scale), breathiness and intonation of one voice."""

  f0: float
  formant_scale: float
  breathiness: float
  intonation: float  # standard deviation of the log-f0 contour


@dataclasses.dataclass(frozen=True)
class Speaker:
  face: Face
  voice: Voice


def speaker(seed: int, speaker_id: int) -> Speaker:
  """The speaker `speaker_id` of the corpus seeded by `seed`."""
  rng = np.random.default_rng([seed, _SPEAKER_STREAM, speaker_id])
  u = rng.uniform
  skin = u(110, 200)
  # Background darker or brighter than the skin, never close to it, and not bright enough to
  # saturate under the brightest lighting.
  darker = rng.random() < 0.5 or skin > 150
  background = skin - u(40, 90) if darker else skin + u(30, 50)
  face = Face(
    background=background,
    skin=skin,
    hair=u(20, 80),
    lip_darkness=u(25, 50),
    head_centre_y=u(50, 54),
    head_half_width=u(36, 42),
    head_half_height=u(52, 58),
    hairline_y=u(12, 22),
    eye_y=u(40, 46),
    eye_spacing=u(15, 19),
    eye_half_width=u(5, 7),
    eye_half_height=u(2.5, 3.5),
    brow_gap=u(6, 9),
    nose_y=u(62, 67),
    mouth_y=u(80, 84),
    mouth_half_width=u(10, 12.5),
    mouth_opening=u(7, 8.5),
    lip_thickness=u(2.2, 3.2),
  )
  low = rng.random() < 0.5
  voice = Voice(
    f0=u(90, 140) if low else u(170, 240),
    formant_scale=u(0.88, 0.98) if low else u(1.02, 1.15),
    breathiness=u(0.05, 0.25),
    intonation=u(0.04, 0.1),
  )
  return Speaker(face, voice)


def split_speakers(num_speakers: int, split: str) -> np.ndarray:
  """Speaker ids of a split: the first 60% train, the next 20% validation, the rest test."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
  if num_speakers < MIN_SPEAKERS_PER_SPLIT * len(SPLITS):
    raise ValueError(
      f"num_speakers={num_speakers} leaves a split fewer than "
      f"{MIN_SPEAKERS_PER_SPLIT} speakers; use at least "
      f"{MIN_SPEAKERS_PER_SPLIT * len(SPLITS)}"
    )
  train = max(MIN_SPEAKERS_PER_SPLIT, round(_SPLIT_FRACTIONS[0] * num_speakers))
  validation = max(MIN_SPEAKERS_PER_SPLIT, round(_SPLIT_FRACTIONS[1] * num_speakers))
  train = min(train, num_speakers - validation - MIN_SPEAKERS_PER_SPLIT)
  bounds = (0, train, train + validation, num_speakers)
  index = SPLITS.index(split)
  return np.arange(bounds[index], bounds[index + 1])
