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

Partial forgeries (any version; for temporal localisation, like LAV-DF and AV-Deepfake1M): a real
clip in which one or two segments of 0.5-2 s (`SyntheticSpec.segment_frames`) are forged, at
random positions, with real frames between and around them. The segments are recorded in the
example's frame labels (schema.FRAME_LABEL_FIELDS) and in `SyntheticClip.fake_segments`:

  lipsync_part     FakeVideo-RealAudio    the mouth says other phonemes of the same groups inside
                                          the segments (lipsync's swap)
  desync_part      FakeVideo-RealAudio    the video lags or leads the audio by 3-10 frames inside
                                          the segments (a retimed stretch: frames jump at its ends)
  voice_swap_part  RealVideo-FakeAudio    another speaker's vocoded voice inside the segments,
                                          joined with 5 ms crossfades

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
from data_pipelines.building.synthetic import face, mouth, phonemes, speakers, voice
from data_pipelines.features import audio

REAL = "real"
METHODS = ("lipsync", "desync", "talking_head", "voice_swap")
LIPSYNC_FAMILY = ("ls_a", "ls_a_clean", "ls_b", "ls_c")
METHODS_V2 = (*LIPSYNC_FAMILY, "desync", "talking_head", "voice_swap")
PARTIAL_METHODS = ("lipsync_part", "desync_part", "voice_swap_part")
METHODS_BY_VERSION = {1: METHODS, 2: METHODS_V2}  # whole-clip forgeries; PARTIAL_METHODS in any
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
  "lipsync_part": (1, 0, 0, 1),
  "desync_part": (1, 0, 0, 1),
  "voice_swap_part": (0, 1, 1, 0),
}
# The trace each lip-sync generator leaves on the mouth patch (mouth.ARTEFACTS).
MOUTH_ARTEFACTS = {"ls_a": "pasted", "ls_b": "flicker", "ls_c": "sharpened"}
_TALKING_HEAD_SMOOTHING = 1.5  # frames (Gaussian std) of version 1's low-passed talking head mouth
_PARTIAL_SWAP = 0.5  # ls_c: the probability that a spoken segment is swapped
_CLIP_STREAM, _METHOD_STREAM = 0, 2  # seed streams apart from speakers (speakers.py uses 1)
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_TWO_SEGMENTS = 0.3  # the probability that a partial forgery has two forged segments
_SEGMENT_GAP_FRAMES = 3  # at least this many real frames between two segments
_MAX_REAL_SHARE_FORGED = 0.6  # segments cover at most this share of a clip
_CROSSFADE_S = 0.005  # voice_swap_part: the joins between voices


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
  segment_frames: tuple[int, int] = (12, 50)  # inclusive length range of a partial forgery's
  # segments (0.48-2 s)

  def __post_init__(self):
    # Tuples keep the spec hashable and its config name well formed when given lists.
    for name in ("methods", "desync_frames", "held_out", "segment_frames"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.version not in METHODS_BY_VERSION:
      raise ValueError(f"version={self.version}; choose one of {tuple(METHODS_BY_VERSION)}")
    known = (*METHODS_BY_VERSION[self.version], *PARTIAL_METHODS)
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
    if not 1 <= self.segment_frames[0] <= self.segment_frames[1]:
      raise ValueError(
        f"need 1 <= segment_frames[0] <= segment_frames[1], got {self.segment_frames}"
      )
    if set(self.methods) & set(PARTIAL_METHODS):
      # The shortest clip must hold one shortest segment within the forged share.
      room = int(_MAX_REAL_SHARE_FORGED * self.min_frames)
      if self.segment_frames[0] > room:
        raise ValueError(
          f"partial forgeries need segment_frames[0] <= {room} ({_MAX_REAL_SHARE_FORGED:.0%} of "
          f"min_frames={self.min_frames}), got {self.segment_frames}"
        )
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
  video_lag: int  # video frame t shows the mouth of audio frame t - video_lag (desync and
  # desync_part, where it holds inside the forged segments only)
  fake_segments: np.ndarray  # (N, 2) int [first, last + 1) frames of the forged segments: the
  # whole clip for a fake of another method, none for a real clip


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
  computed (data_pipelines.reading.perturbations degrades them there); it must keep their shapes.
  """
  method = method_of(spec, split, index)
  rng, num_frames, cast, speaker_id = _first_draws(spec, split, index)

  # Audio and video are windows of one longer stream, so that every method's clips start mid-speech
  # alike and desync can shift the video window against the audio window.
  margin = spec.desync_frames[1]
  stream = phonemes.sample_utterance(rng, num_frames + 2 * margin)
  lag = 0
  if method in ("desync", "desync_part"):
    lag = int(rng.integers(spec.desync_frames[0], spec.desync_frames[1] + 1) * rng.choice((-1, 1)))
  audio_start = int(rng.integers(max(lag, 0), 2 * margin + min(lag, 0) + 1))
  heard = slice(audio_start, audio_start + num_frames)
  seen = np.arange(audio_start - lag, audio_start - lag + num_frames)

  voice_id = speaker_id
  if method in ("voice_swap", "voice_swap_part"):
    voice_id = int(rng.choice(cast[cast != speaker_id]))

  def speech(of_speaker: int, vocoded: bool) -> np.ndarray:
    return voice.render_speech(
      rng,
      stream,
      speakers.speaker(spec.seed, of_speaker).voice,
      vocoded=vocoded,
      equal_mfcc_energy=spec.version >= 2,
    )

  if method != "voice_swap_part":
    samples = speech(voice_id, vocoded=method == "voice_swap")
  # Partial forgeries draw after everything the other methods draw, which therefore stay as
  # they were; inside their segments they take the forged stream, elsewhere the real one.
  in_segment = np.full(num_frames, method != REAL)
  forged_in_stream = None
  if method in PARTIAL_METHODS:
    in_segment = _draw_segments(spec, rng, num_frames)
    seen = np.arange(audio_start, audio_start + num_frames) - lag * in_segment
    forged_in_stream = np.zeros(len(stream.phonemes), bool)
    forged_in_stream[heard] = in_segment
  if method == "voice_swap_part":
    samples = _splice(
      speech(speaker_id, vocoded=False), speech(voice_id, vocoded=True), forged_in_stream
    )
  samples = samples[heard.start * voice.SAMPLES_PER_FRAME : heard.stop * voice.SAMPLES_PER_FRAME]

  visemes, track = _mouth(spec, method, rng, stream, forged_in_stream)
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
  example = _example(
    split, index, method, num_frames, samples, faces, stream.phonemes[heard], in_segment
  )
  return SyntheticClip(
    schema.validate_example(example),
    visemes[seen],
    track,
    poses,
    speaker_id,
    voice_id,
    lag,
    schema.frame_runs(in_segment),
  )


def _example(
  split: str,
  index: int,
  method: str,
  num_frames: int,
  samples: np.ndarray,
  faces: np.ndarray,
  heard_phonemes: np.ndarray,
  in_segment: np.ndarray,
) -> dict:
  """The clip as the schema's example: labels from its method, features from its media."""
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
    "phonemes": heard_phonemes,
  }
  if method in PARTIAL_METHODS:
    forged = in_segment.astype(np.uint8)
    example.update(
      frame_labels=forged,
      audio_frame_labels=forged * audio_label,
      video_frame_labels=forged * video_label,
    )
  return example


def _draw_segments(spec: SyntheticSpec, rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """(num_frames,) bool: one or two forged segments of spec.segment_frames frames, apart by at
  least _SEGMENT_GAP_FRAMES, covering at most _MAX_REAL_SHARE_FORGED of the clip."""
  budget = int(_MAX_REAL_SHARE_FORGED * num_frames)
  count = 2 if rng.random() < _TWO_SEGMENTS else 1
  low, high = spec.segment_frames
  if count == 2 and 2 * low + _SEGMENT_GAP_FRAMES > budget:
    count = 1  # too short a clip for two
  # Each segment gets at most its share of the budget, so any two fit with their gap.
  longest = min(high, (budget - (count - 1) * _SEGMENT_GAP_FRAMES) // count)
  lengths = rng.integers(low, longest + 1, size=count)
  # Place the segments in order: the real frames left over are spread by uniform cuts.
  spare = num_frames - int(lengths.sum()) - (count - 1) * _SEGMENT_GAP_FRAMES
  cuts = np.sort(rng.integers(0, spare + 1, size=count))
  in_segment = np.zeros(num_frames, bool)
  start = 0
  for i, (length, cut) in enumerate(zip(lengths, cuts)):
    first = start + cut - (cuts[i - 1] if i else 0)
    in_segment[first : first + length] = True
    start = first + length + _SEGMENT_GAP_FRAMES
  return in_segment


def _splice(real: np.ndarray, forged: np.ndarray, in_segment: np.ndarray) -> np.ndarray:
  """The forged samples over the frames `in_segment`, the real ones elsewhere, each join a short
  raised-cosine crossfade centred on the frame boundary (a click there would give it away)."""
  gain = np.repeat(in_segment.astype(np.float64), voice.SAMPLES_PER_FRAME)
  fade = int(_CROSSFADE_S * schema.SAMPLE_RATE)
  window = np.hanning(2 * fade + 1)
  gain = np.convolve(gain, window / window.sum(), mode="same")
  mixed = gain * forged.astype(np.float64) + (1.0 - gain) * real.astype(np.float64)
  return mixed.astype(real.dtype)


def _mouth(
  spec: SyntheticSpec,
  method: str,
  rng: np.random.Generator,
  stream: phonemes.Utterance,
  forged: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """What the mouth says over the whole stream: (phoneme ids (T,), viseme track (T, 6)).

  `forged`: a partial forgery's segments over the stream (T,) bool.
  """
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
  elif method == "lipsync_part":
    # One continuous track: the swapped mouth inside the segments, the spoken one around them.
    visemes = np.where(forged, phonemes.swap_within_groups(rng, stream), stream.phonemes)
  smoothing = _TALKING_HEAD_SMOOTHING if method == "talking_head" and spec.version == 1 else 0.0
  return visemes, mouth.viseme_track(
    rng, phonemes.VISEME_PARAMS[visemes], stream, smoothing_frames=smoothing
  )


def generate_examples(spec: SyntheticSpec, split: str) -> Iterator[dict]:
  """The split's examples in index order (schema dicts of numpy values)."""
  for index in range(spec.num_clips(split)):
    yield synthesize_clip(spec, split, index).example
