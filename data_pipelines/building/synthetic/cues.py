r"""Hand-made clip scores that tell one kind of synthetic fake apart: what a detector could learn.

Each cue maps a generated clip to one number, oriented so that higher means "more likely fake";
its ROC-AUC against real clips says how far that one number separates a method. The cues read
the clip as the student does (MFCC, STFT, face frames), except for the mouth's size and shape,
which they take from the generator's viseme track: the cleanest version of what the frames show,
so an AUC near 0.5 is a strong statement, and a high AUC an upper bound of what the pixels give.

    python -m data_pipelines.building.synthetic.cues --version=2 --clips=200

prints the table of every cue against every method (docs/generalisation.md shows it); the
separability bounds the study relies on are tests (tests/test_synthetic_cues.py).

Cues:
  energy_vs_{opening,width,area}: minus the correlation, over frames, of the audio's log energy
      (MFCC c0) with the mouth's opening, width or open area: a sync-type cue.
  content: minus the correlation of the share of voiced audio energy in the second-formant band
      with the mouth's width: a content cue (front vowels and nasals are wide, back ones round).
  desync: how much better the mouth's opening matches the audio energy 3-10 frames away than at
      lag 0.
  texture: how much more the frames change across 8-pixel block edges than inside blocks (the
      compression blocks of a talking-head generator's texture).
  vocoder: minus the audio's share of energy above 7.2 kHz (a vocoder's band limit).
  seam: the mouth patch's gain step against the face around it (a pasted patch).
  flicker: how much that step changes from frame to frame (a patch generated frame by frame).
  sharpness: the mouth patch's finest detail against its coarse detail (a sharpened patch).
"""

import argparse
import dataclasses

import cv2
import einops
import numpy as np
import scipy.ndimage
import scipy.stats

from data_pipelines import schema
from data_pipelines.building.synthetic import generator, mouth, phonemes, speakers

_BIN_HZ = schema.SAMPLE_RATE / 2 / (schema.NUM_STFT_BINS - 1)
_F2_BAND_HZ = (1400.0, 2800.0)  # second formants of front vowels and n; back vowels lie below
_VOICED_BAND_HZ = (150.0, 2800.0)
_VOCODER_BAND_HZ = 7200.0  # vocoder: energy above this against the band below it,
_VOCODER_REFERENCE_HZ = 4500.0  # where fricatives and breath put theirs
_LOUD_FRAMES = 0.5  # content: frames at most 6 dB (ln 4 nats) under the loudest half
_DESYNC_LAGS = range(3, 11)
_EDGE_WINDOW_PX = 6  # seam/flicker: columns fitted on each side of a patch edge
_BLOCK_PX = 8  # texture: a compression codec's block size


@dataclasses.dataclass(frozen=True)
class Cue:
  name: str
  kind: str  # 'sync', 'content', 'video', 'audio' or 'trace'
  describes: str  # the method (or family) it was designed for


CUES = (
  Cue("energy_vs_opening", "sync", "lip-sync (ruled out by design)"),
  Cue("energy_vs_width", "sync", "lip-sync (ruled out by design)"),
  Cue("energy_vs_area", "sync", "lip-sync (ruled out by design)"),
  Cue("content", "content", "every lip-sync generator"),
  Cue("desync", "sync", "desync"),
  Cue("texture", "video", "talking_head"),
  Cue("vocoder", "audio", "voice_swap"),
  Cue("seam", "trace", "ls_a"),
  Cue("flicker", "trace", "ls_b"),
  Cue("sharpness", "trace", "ls_c"),
)


def frame_energy(example: dict) -> np.ndarray:
  """MFCC c0 (python_speech_features' log frame energy) averaged per video frame."""
  return einops.reduce(example["mfcc"][:, 0], "(t rows) -> t", "mean", t=example["num_frames"])


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
  if np.std(x) < 1e-9 or np.std(y) < 1e-9:
    return 0.0
  return float(np.corrcoef(x, y)[0, 1])


def _lagged_correlation(opening: np.ndarray, energy: np.ndarray, lag: int) -> float:
  """corr(opening[t], energy[t - lag]) over the frames where both exist."""
  if lag > 0:
    opening, energy = opening[lag:], energy[:-lag]
  elif lag < 0:
    opening, energy = opening[:lag], energy[-lag:]
  return _correlation(opening, energy)


def _band_power(example: dict) -> callable:
  power = np.square(example["stft"].astype(np.float32))
  power = einops.reduce(power, "(t rows) f -> t f", "sum", t=example["num_frames"])
  bins = np.arange(power.shape[-1]) * _BIN_HZ
  return lambda low, high: power[:, (bins >= low) & (bins < high)].sum(axis=1)


def face_frames(clip: generator.SyntheticClip) -> np.ndarray:
  """The clip's frames moved back to face coordinates (T, 112, 112) float32: head motion undone."""
  size = schema.FACE_SIZE
  return np.stack(
    [
      cv2.warpAffine(
        frame.astype(np.float32),
        pose,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
      )
      for frame, pose in zip(clip.example["faces"], clip.head_poses)
    ]
  )


def _patch_steps(frames: np.ndarray, face: speakers.Face) -> np.ndarray:
  """Per frame: the brightness step at the mouth patch's side edges, inside minus outside (T,).

  The side edges run over cheek skin, away from the lips, nose and chin. Along each edge the
  brightness profile (averaged over rows) is fitted with a line plus a step at the edge, so the
  skin's own shading gradient does not count; the two edges' steps are averaged.
  """
  rows, cols = mouth.patch_slices(face)
  middle = frames[:, rows.start + 4 : rows.stop - 4].mean(axis=1)  # (T, W)
  steps = []
  for edge, inside_is_right in ((cols.start, True), (cols.stop, False)):
    x = np.arange(edge - _EDGE_WINDOW_PX, edge + _EDGE_WINDOW_PX)
    inside = (x >= edge) if inside_is_right else (x < edge)
    design = np.stack([np.ones(len(x)), x - edge, inside.astype(np.float64)], axis=1)
    steps.append((np.linalg.pinv(design) @ middle[:, x].T)[2])
  return np.mean(steps, axis=0)


def scores(clip: generator.SyntheticClip, face: speakers.Face) -> dict[str, float]:
  """Every cue of one clip (see the module docstring); `face` is the clip's speaker's."""
  example = clip.example
  energy = frame_energy(example)
  opening = clip.mouth_track[:, phonemes.OPENING]
  width = clip.mouth_track[:, phonemes.WIDTH]
  out = {
    "energy_vs_opening": -_correlation(energy, opening),
    "energy_vs_width": -_correlation(energy, width),
    "energy_vs_area": -_correlation(energy, opening * width),
  }
  band = _band_power(example)
  voiced = band(*_VOICED_BAND_HZ)
  loud = energy >= np.quantile(energy, 1.0 - _LOUD_FRAMES) - np.log(4.0)
  f2_share = band(*_F2_BAND_HZ) / np.maximum(voiced, 1e-12)
  out["content"] = -_correlation(f2_share[loud], width[loud])
  at_zero = _lagged_correlation(opening, energy, 0)
  out["desync"] = (
    max(
      _lagged_correlation(opening, energy, sign * lag) for lag in _DESYNC_LAGS for sign in (-1, 1)
    )
    - at_zero
  )
  out["vocoder"] = -float(
    band(_VOCODER_BAND_HZ, np.inf).sum() / band(_VOCODER_REFERENCE_HZ, _VOCODER_BAND_HZ).sum()
  )

  across = np.abs(np.diff(example["faces"].astype(np.float32), axis=2)).mean(axis=(0, 1))
  at_block_edges = np.arange(across.size) % _BLOCK_PX == _BLOCK_PX - 1
  out["texture"] = float(across[at_block_edges].mean() / across[~at_block_edges].mean())
  frames = face_frames(clip)
  rows, cols = mouth.patch_slices(face)
  steps = _patch_steps(frames, face)
  out["seam"] = float(abs(steps.mean()))
  out["flicker"] = float(np.std(np.diff(steps)))
  patch = frames[:, rows, cols]
  fine = patch - scipy.ndimage.gaussian_filter(patch, (0.0, 1.0, 1.0))
  coarse = scipy.ndimage.gaussian_filter(patch, (0.0, 1.0, 1.0)) - scipy.ndimage.gaussian_filter(
    patch, (0.0, 2.5, 2.5)
  )
  out["sharpness"] = float(np.sqrt(np.mean(fine * fine) / max(np.mean(coarse * coarse), 1e-9)))
  return out


def auc(real: np.ndarray, fake: np.ndarray) -> float:
  """P(fake score > real score) + P(tie) / 2: the ROC-AUC of a score, fakes positive."""
  return float(scipy.stats.mannwhitneyu(fake, real).statistic / (len(real) * len(fake)))


def clip_indices(spec: generator.SyntheticSpec, split: str, method: str, count: int) -> list[int]:
  """The first `count` indices of `split` whose clip is of `method`."""
  indices = [
    i for i in range(spec.num_clips(split)) if generator.method_of(spec, split, i) == method
  ]
  if len(indices) < count:
    raise ValueError(f"split {split!r} holds {len(indices)} {method} clips, fewer than {count}")
  return indices[:count]


def method_scores(
  spec: generator.SyntheticSpec, split: str, method: str, count: int
) -> dict[str, np.ndarray]:
  """Every cue over the first `count` clips of `method` in `split`: {cue: (count,) scores}."""
  rows = []
  for index in clip_indices(spec, split, method, count):
    clip = generator.synthesize_clip(spec, split, index)
    rows.append(scores(clip, speakers.speaker(spec.seed, clip.speaker).face))
  return {cue.name: np.array([row[cue.name] for row in rows]) for cue in CUES}


def auc_table(spec: generator.SyntheticSpec, split: str, count: int) -> dict[str, dict[str, float]]:
  """{cue: {method: AUC of the cue, that method's clips against real clips}}."""
  real = method_scores(spec, split, generator.REAL, count)
  table = {cue.name: {} for cue in CUES}
  for method in spec.split_methods(split):
    fake = method_scores(spec, split, method, count)
    for cue in CUES:
      table[cue.name][method] = auc(real[cue.name], fake[cue.name])
  return table


def markdown(table: dict[str, dict[str, float]]) -> str:
  methods = list(next(iter(table.values())))
  lines = ["| cue | kind | " + " | ".join(methods) + " |", "|---|---|" + "---:|" * len(methods)]
  kinds = {cue.name: cue.kind for cue in CUES}
  for name, row in table.items():
    lines.append(
      f"| {name} | {kinds[name]} | " + " | ".join(f"{100 * row[m]:.1f}" for m in methods) + " |"
    )
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--version", type=int, default=2, help="generator version")
  parser.add_argument("--seed", type=int, default=0, help="corpus seed")
  parser.add_argument("--clips", type=int, default=200, help="clips per method")
  parser.add_argument("--split", default="test")
  args = parser.parse_args(argv)
  methods = generator.METHODS_BY_VERSION[args.version]
  per_split = args.clips * (len(methods) + 1) * 3  # room for the golden-ratio spread's unevenness
  spec = generator.SyntheticSpec(
    seed=args.seed,
    version=args.version,
    methods=methods,
    num_speakers=100,
    train_clips=per_split,
    validation_clips=per_split,
    test_clips=per_split,
  )
  print(
    f"ROC-AUC (%) of each cue, {args.clips} clips of each method against {args.clips} real "
    f"clips of the {args.split} split (generator version {args.version}, seed {args.seed}):\n"
  )
  print(markdown(auc_table(spec, args.split, args.clips)))


if __name__ == "__main__":
  main()
