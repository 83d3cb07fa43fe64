"""The synthetic corpus: real and fake talking clips, each a pure function of (spec, split, index).

Every clip is a window of a longer utterance said by one speaker of its split. Methods and labels
(`label` is 1 for every fake; `category` is FakeAVCeleb's, from `video_label` and `audio_label`):

  method        category             video audio identity sync  what differs from a real clip
  real          RealVideo-RealAudio    0     0      0      0    -
  lipsync       FakeVideo-RealAudio    1     0      0      1    mouth says other phonemes of the
                                                                same groups, opening in time with
                                                                the audio's energy
  desync        FakeVideo-RealAudio    1     0      0      1    video lags or leads by 3-10 frames
  talking_head  FakeVideo-RealAudio    1     0      0      0    generator texture (version 1 also
                                                                low-passes the mouth)
  voice_swap    RealVideo-FakeAudio    0     1      1      0    another speaker's vocoded voice

Version 2 (`SyntheticSpec.version`) replaces lipsync by a family of lip-sync generators. All of
them keep the opening locked to the audio's energy and get the mouth's shape wrong; they differ
in how, and in the trace their renderer leaves (`mouth.patch_artefact`):

  ls_a          every spoken segment swapped within its group; a pasted, blurred patch with a
                gain seam (Wav2Lip-like)
  ls_a_clean    ls_a's mouth without its trace (a diagnostic: does a detector read the trace?)
  ls_b          a neutral shape for the sound's group (phonemes.group_shapes), a flickering
                patch (MakeItTalk-like: the right sound class, not the phoneme)
  ls_c          each spoken segment swapped with probability 1/2; a sharpened patch
                (VideoReTalk-like)

Version 2 also makes the phonemes of a group equally loud in MFCC c0 (`voice.render_speech`'s
`equal_mfcc_energy`), so that audio energy against mouth size tells no lip-sync fake apart, and
leaves talking_head's mouth motion natural, so that only its texture gives it away.

`video_label` / `audio_label`: that stream was manipulated (desync's video is the retimed stream,
though its frames are untouched); `identity_label`: face and voice belong to different people;
`sync_label`: the mouth does not say, frame by frame, what the audio says (content or timing).
`phonemes` always holds the audio's per-frame phoneme ids, which in real clips (the only clips
teachers are trained on) are also what the mouth says; `synthesize_clip` also returns the mouth's.
"""

import dataclasses
from typing import Iterator

import numpy as np

from data_pipelines import schema
from data_pipelines.features import audio
from data_pipelines.synthetic import face, mouth, phonemes, speakers, voice

REAL = "real"
METHODS = ("lipsync", "desync", "talking_head", "voice_swap")
LIPSYNC_FAMILY = ("ls_a", "ls_a_clean", "ls_b", "ls_c")
METHODS_V2 = (*LIPSYNC_FAMILY, "desync", "talking_head", "voice_swap")
METHODS_BY_VERSION = {1: METHODS, 2: METHODS_V2}
SPLITS = speakers.SPLITS
DATASET = "synthetic"
# (video_label, audio_label, identity_label, sync_label) per method; see the module docstring.
LABELS = {
  REAL: (0, 0, 0, 0),
  "lipsync": (1, 0, 0, 1),
  "desync": (1, 0, 0, 1),
  "talking_head": (1, 0, 0, 0),
  "voice_swap": (0, 1, 1, 0),
  **{method: (1, 0, 0, 1) for method in LIPSYNC_FAMILY},
}
# The trace each lip-sync generator leaves on the mouth patch (mouth.ARTEFACTS).
MOUTH_ARTEFACTS = {"ls_a": "pasted", "ls_b": "flicker", "ls_c": "sharpened"}
_TALKING_HEAD_SMOOTHING = 1.5  # frames (Gaussian std) of version 1's low-passed talking head mouth
_PARTIAL_SWAP = 0.5  # ls_c: the probability that a spoken segment is swapped
_CLIP_STREAM, _METHOD_STREAM = 0, 2  # seed streams apart from speakers (speakers.py uses 1)
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate; every clip is determined by (spec, split, index)."""

  seed: int = 0
  train_clips: int = 240
  validation_clips: int = 30
  test_clips: int = 60
  min_frames: int = 50  # clip length range in video frames (inclusive)
  max_frames: int = 75
  fake_fraction: float = 0.5
  methods: tuple[str, ...] = METHODS  # fakes are spread evenly over these
  num_speakers: int = 16  # split 60/20/20 into disjoint train/validation/test speakers
  desync_frames: tuple[int, int] = (3, 10)  # inclusive range of |video lag| for desync
  version: int = 1  # the generator's version (see the module docstring)
  held_out: tuple[str, ...] = ()  # methods that only the test split holds

  def __post_init__(self):
    # Tuples keep the spec hashable and its config name well formed when given lists.
    for name in ("methods", "desync_frames", "held_out"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.version not in METHODS_BY_VERSION:
      raise ValueError(f"version={self.version}; choose one of {tuple(METHODS_BY_VERSION)}")
    known = METHODS_BY_VERSION[self.version]
    unknown = set(self.methods) - set(known)
    if unknown:
      raise ValueError(
        f"unknown methods {sorted(unknown)} for version {self.version}; choose from {known}"
      )
    if not set(self.held_out) <= set(self.methods):
      raise ValueError(f"held_out={self.held_out} must be among methods={self.methods}")
    trained = self.split_methods("train")
    if not 0.0 <= self.fake_fraction <= 1.0 or (self.fake_fraction > 0 and not trained):
      raise ValueError(
        f"fake_fraction={self.fake_fraction} needs to be in [0, 1], with methods left for training"
      )
    if not 1 <= self.min_frames <= self.max_frames:
      raise ValueError(
        f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"
      )
    if not 1 <= self.desync_frames[0] <= self.desync_frames[1]:
      raise ValueError(f"need 1 <= desync_frames[0] <= desync_frames[1], got {self.desync_frames}")
    speakers.split_speakers(self.num_speakers, "train")  # raises if a split gets too few

  def num_clips(self, split: str) -> int:
    """How many clips `split` holds."""
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return {
      "train": self.train_clips,
      "validation": self.validation_clips,
      "test": self.test_clips,
    }[split]

  def split_methods(self, split: str) -> tuple[str, ...]:
    """The fake methods of `split`: every method in test, the others elsewhere."""
    if split == "test":
      return self.methods
    return tuple(m for m in self.methods if m not in self.held_out)


@dataclasses.dataclass(frozen=True)
class SyntheticClip:
  """One clip's schema example plus what was drawn, for inspection and tests (not stored)."""

  example: dict
  mouth_phonemes: np.ndarray  # (T,) ids the mouth says (== example['phonemes'] unless faked;
  # -1 where ls_b's mouth shows a sound class, not a phoneme)
  mouth_track: np.ndarray  # (T, 6) viseme parameters drawn, columns phonemes.VISEME_FIELDS
  head_poses: np.ndarray  # (T, 2, 3) face -> frame affine maps
  speaker: int  # whose face
  voice_speaker: int  # whose voice
  video_lag: int  # video frame t shows the mouth of audio frame t - video_lag


def method_of(spec: SyntheticSpec, split: str, index: int) -> str:
  """The clip's method: a golden-ratio sequence spreads fakes and methods evenly over indices."""
  offset = np.random.default_rng([spec.seed, _METHOD_STREAM, SPLITS.index(split)]).random()
  position = (offset + index * _GOLDEN) % 1.0
  if position >= spec.fake_fraction:
    return REAL
  methods = spec.split_methods(split)
  return methods[int(position / spec.fake_fraction * len(methods))]


def _first_draws(spec: SyntheticSpec, split: str, index: int):
  """The clip's generator and its first draws: (rng, num_frames, split's speakers, speaker)."""
  if not 0 <= index < spec.num_clips(split):
    raise IndexError(f"clip {index} of split {split!r} with {spec.num_clips(split)} clips")
  rng = np.random.default_rng([spec.seed, _CLIP_STREAM, SPLITS.index(split), index])
  num_frames = int(rng.integers(spec.min_frames, spec.max_frames + 1))
  cast = speakers.split_speakers(spec.num_speakers, split)
  return rng, num_frames, cast, int(rng.choice(cast))


def speaker_of(spec: SyntheticSpec, split: str, index: int) -> int:
  """Whose face clip `index` of `split` shows, without rendering it."""
  return _first_draws(spec, split, index)[3]


def synthesize_clip(
  spec: SyntheticSpec, split: str, index: int, media_hook: schema.MediaHook | None = None
) -> SyntheticClip:
  """Clip `index` of `split`; the same for the same (spec, split, index) whatever else is made.

  `media_hook(faces, samples) -> (faces, samples)` sees the rendered media before features are
  computed (data_pipelines.perturbations degrades them there); it must keep their shapes.
  """
  method = method_of(spec, split, index)
  rng, num_frames, cast, speaker_id = _first_draws(spec, split, index)

  # Audio and video are windows of one longer stream, so that every method's clips start mid-speech
  # alike and desync can shift the video window against the audio window.
  margin = spec.desync_frames[1]
  stream = phonemes.sample_utterance(rng, num_frames + 2 * margin)
  lag = 0
  if method == "desync":
    lag = int(rng.integers(spec.desync_frames[0], spec.desync_frames[1] + 1) * rng.choice((-1, 1)))
  audio_start = int(rng.integers(max(lag, 0), 2 * margin + min(lag, 0) + 1))
  heard = slice(audio_start, audio_start + num_frames)
  seen = slice(audio_start - lag, audio_start - lag + num_frames)

  voice_id = speaker_id
  if method == "voice_swap":
    voice_id = int(rng.choice(cast[cast != speaker_id]))
  samples = voice.render_speech(
    rng,
    stream,
    speakers.speaker(spec.seed, voice_id).voice,
    vocoded=method == "voice_swap",
    equal_mfcc_energy=spec.version >= 2,
  )
  samples = samples[heard.start * voice.SAMPLES_PER_FRAME : heard.stop * voice.SAMPLES_PER_FRAME]

  visemes, track = _mouth(spec, method, rng, stream)
  track = track[seen]
  faces, poses = face.render_faces(
    rng,
    speakers.speaker(spec.seed, speaker_id).face,
    track,
    re_rendered=method == "talking_head",
    mouth_artefact=MOUTH_ARTEFACTS.get(method, ""),
  )

  if media_hook is not None:
    faces, samples = media_hook(faces, samples)
  video_label, audio_label, identity_label, sync_label = LABELS[method]
  example = {
    "id": f"{DATASET}-{split}-{index:06d}",
    "dataset": DATASET,
    "method": method,
    "category": (
      f"{'Fake' if video_label else 'Real'}Video-{'Fake' if audio_label else 'Real'}Audio"
    ),
    "label": int(method != REAL),
    "audio_label": audio_label,
    "video_label": video_label,
    "identity_label": identity_label,
    "sync_label": sync_label,
    "fps": schema.FPS,
    "num_frames": num_frames,
    "mfcc": audio.fit_to_frames(audio.mfcc(samples, schema.SAMPLE_RATE), num_frames),
    "stft": audio.fit_to_frames(audio.stft_magnitude(samples, schema.SAMPLE_RATE), num_frames),
    "faces": faces,
    "lips": np.zeros((0, schema.LIP_DIM), np.float16),
    "phonemes": stream.phonemes[heard],
  }
  return SyntheticClip(
    schema.validate_example(example), visemes[seen], track, poses, speaker_id, voice_id, lag
  )


def _mouth(
  spec: SyntheticSpec, method: str, rng: np.random.Generator, stream: phonemes.Utterance
) -> tuple[np.ndarray, np.ndarray]:
  """What the mouth says over the whole stream: (phoneme ids (T,), viseme track (T, 6))."""
  if method == "ls_b":
    said = np.where(stream.phonemes == phonemes.SILENCE, phonemes.SILENCE, schema.UNKNOWN_PHONEME)
    return said.astype(np.int32), mouth.viseme_track(
      rng, phonemes.group_shapes(stream, rng), stream
    )
  visemes = stream.phonemes
  if method in ("lipsync", "ls_a", "ls_a_clean"):
    visemes = phonemes.swap_within_groups(rng, stream)
  elif method == "ls_c":
    visemes = phonemes.swap_within_groups(rng, stream, probability=_PARTIAL_SWAP)
  smoothing = _TALKING_HEAD_SMOOTHING if method == "talking_head" and spec.version == 1 else 0.0
  return visemes, mouth.viseme_track(
    rng, phonemes.VISEME_PARAMS[visemes], stream, smoothing_frames=smoothing
  )


def generate_examples(spec: SyntheticSpec, split: str) -> Iterator[dict]:
  """The split's examples in index order (schema dicts of numpy values)."""
  for index in range(spec.num_clips(split)):
    yield synthesize_clip(spec, split, index).example
