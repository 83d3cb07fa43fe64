"""Temporal localisation of forged segments: proposals from frame scores, and AV-Deepfake1M's AP/AR.

A clip-level detector says whether a clip is fake; AV-Deepfake1M also asks where. Its localisation
benchmark scores a set of proposals per clip (score, start_s, end_s) against the clip's true fake
segments with AP at temporal IoU 0.5/0.75/0.9/0.95 and AR@50/30/20/10/5. This module turns a
clip's per-frame fake probabilities into such proposals, and computes those metrics the way the
benchmark's own code does, so numbers reported here can be set beside published ones.

Proposals from frame scores (`proposals_from_frame_scores`)
-----------------------------------------------------------
1. Smoothing: a centred moving median (default) or mean over `smoothing_frames` (odd; 1 = none),
   the clip's end frames repeated beyond its edges. The median removes isolated one- or two-frame
   spikes and keeps a clean step where it is; the mean also blurs it.
2. Candidates: for each threshold, every maximal run of consecutive frames whose smoothed score is
   >= the threshold and which is at least `min_frames` long is a segment [start, end) in seconds;
   frame i covers [i / fps, (i + 1) / fps). Several thresholds give nested segments of one event,
   from wide (low threshold) to tight (high threshold), so the best extent need not be guessed.
3. Score: the mean smoothed score inside the run. The mean, not the maximum, ranks a run by how
   fake all of it looks: a wide run that takes in the ramps around an event scores below the
   run of its confident core (the maximum would tie them), and a long weak run does not outrank a
   short confident one (as the sum would).
4. Non-maximum suppression: candidates sorted by score, descending (a stable sort, so ties keep
   the order thresholds were given in, then start time); a candidate is kept unless its temporal
   IoU with an already kept one is >= `nms_iou` (so 1.0 removes only exact duplicates), until
   `max_proposals` are kept. The result is sorted by score, descending, as the benchmark expects.

Metrics (`average_precision`, `average_recall`, `localisation_metrics`)
-----------------------------------------------------------------------
The definition implemented is the official one of AV-Deepfake1M: ControlNet/AV-Deepfake1M,
src/loc_1d.rs (commit 2c72275; the Rust extension behind `avdeepfake1m.evaluation.ap_ar_1d`, PyPI
avdeepfake1m 0.0.4), called as in its README.md and examples/batfd/evaluate.py: times in seconds
(fps 1), AP at IoU (0.5, 0.75, 0.9, 0.95), AR@(50, 30, 20, 10, 5) averaged over the IoU thresholds
(0.5, 0.55, ..., 0.95). ControlNet/LAV-DF, metrics.py (classes AP and AR, commit 51b8d91), is the
same definition in PyTorch from the authors' earlier dataset; it differs only at the edges (its AR
fails on a fake clip with fewer than N rows, and is NaN when there are no true segments).

Clips are the keys of `segments`, in its order; proposals of clips not in `segments` are ignored,
as the official code evaluates the clips of the metadata only. A clip's rows are used in the order
given, as the official code uses them: it expects each clip's proposals sorted by score,
descending (its prediction format, and what `proposals_from_frame_scores` returns), and does not
sort them itself. Temporal IoU is intersection / (max end - min start), which is the union whenever
the two overlap (and 0 when the hull is empty, where the official code divides 0 by 0 and the NaN
never passes a threshold).

AP at an IoU threshold t:
  * Matching, per clip: for each true segment in its given order, the first proposal in row order
    with IoU > t (strictly) that is not yet matched becomes a true positive. One-to-one, greedy,
    and by row order rather than by score.
  * Ranking: the proposals of all clips are pooled (clips in order, rows in order) and sorted by
    score, descending, with a stable sort: tied scores keep that pooled order, so the order of the
    clips in `segments` can change the AP when scores tie across clips.
  * Curve: after the k-th ranked proposal, precision p_k = TP_k / k and recall r_k = TP_k / G,
    G = the number of true segments of all clips (a clip without proposals still counts them).
  * Integration: AP = sum over k = 2..K of (r_k - r_{k-1}) * max_{j >= k} p_j, the precision
    interpolated as its maximum at equal or higher recall. The official code walks the curve from
    a (recall 1, precision 0) point and never adds a point at recall 0, so the first step, r_1 *
    max_j p_j, is left out. This quirk is reproduced: a perfect detector scores 1 - 1/G, and a
    single true segment found by the top proposal gives AP 0.
AR@N:
  * Per clip, the first min(N, rows) proposals (in row order); a true segment is recalled at IoU
    threshold t when its largest IoU with any of them is > t (strictly). Not one-to-one: a
    proposal can recall several true segments.
  * Recall at (t, N) = recalled segments of all clips / G; AR@N = its mean over the IoU thresholds.

Where the official code gives no answer, this module decides, and says so:
  * A clip with no proposals, or missing from `proposals`: the official code panics (a missing key,
    and its JSON reader cannot parse an empty list). Here the clip has no proposals: its true
    segments count in G and are missed (the official AR code has an unreachable branch that would
    instead leave such a clip out of AR's denominator; that is not followed).
  * No true segments in any clip: AP is NaN, as the official code returns (0 / 0 recall); here also
    when there are no proposals either. AR is 0.0, as the official code returns.
  * No proposals at all, with true segments: AP and AR are 0.0 (the definition above).
Precision: the official code reads times and scores as float32 and compares float32 IoUs with
float32 thresholds. So does this module (`_official_iou`, float32 scores for the ranking): on
times that lie on a frame grid an IoU often equals a threshold exactly (7 fake frames inside a
10-frame proposal: 0.7), and whether the strict ">" holds then depends on the rounding, so a
float64 IoU would differ from the leaderboard's numbers (by up to 0.16 AP on such cases). Sums and
ratios of counts are in float64 (they differ from the official float32 ones by ~1e-7).
tests/test_localisation.py checks both metrics against values the official evaluator computed.
"""

import operator
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from data_pipelines import schema

AP_IOU_THRESHOLDS = (0.5, 0.75, 0.9, 0.95)
AR_N_PROPOSALS = (50, 30, 20, 10, 5)
AR_IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
SMOOTHING_KINDS = ("median", "mean")


def _intervals(values: ArrayLike, columns: int, name: str) -> np.ndarray:
  """Rows of `columns` finite float64 values whose last two are a start and an end >= it."""
  array = np.asarray(values, dtype=np.float64)
  if array.shape == (0,):
    array = array.reshape(0, columns)
  if array.ndim != 2 or array.shape[1] != columns:
    raise ValueError(f"{name} must have shape (N, {columns}), got {array.shape}")
  if not np.isfinite(array).all():
    raise ValueError(f"{name} has {np.count_nonzero(~np.isfinite(array))} non-finite values")
  if (array[:, -1] < array[:, -2]).any():
    raise ValueError(f"{name} has a segment that ends before it starts")
  return array


def _temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of validated (N, 2) and (M, 2) intervals, as intersection over hull."""
  start_a, end_a = a[:, :1], a[:, 1:]
  start_b, end_b = b[:, 0], b[:, 1]
  intersection = np.maximum(np.minimum(end_a, end_b) - np.maximum(start_a, start_b), 0.0)
  hull = np.maximum(end_a, end_b) - np.minimum(start_a, start_b)
  return np.divide(intersection, hull, out=np.zeros_like(hull), where=hull > 0)


def _official_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of validated (N, 2) and (M, 2) intervals in float32, operation for operation as the
  official evaluator (intersection over hull); 0 where the hull is empty (there 0 / 0, which
  passes no threshold either)."""
  a, b = a.astype(np.float32), b.astype(np.float32)
  start_a, end_a = a[:, :1], a[:, 1:]
  start_b, end_b = b[:, 0], b[:, 1]
  intersection = np.maximum(np.minimum(end_a, end_b) - np.maximum(start_a, start_b), np.float32(0))
  hull = np.maximum(end_a, end_b) - np.minimum(start_a, start_b)
  return np.divide(intersection, hull, out=np.zeros_like(hull), where=hull > 0)


def iou_1d(a: ArrayLike, b: ArrayLike) -> np.ndarray:
  """Temporal IoU (N, M) of intervals a (N, 2) and b (M, 2), rows (start, end); 0 for two empty
  intervals at one point."""
  return _temporal_iou(_intervals(a, 2, "a"), _intervals(b, 2, "b"))


def _smoothed(scores: np.ndarray, smoothing_frames: int, smoothing: str) -> np.ndarray:
  if smoothing_frames == 1:
    return scores
  if smoothing == "median":
    return ndimage.median_filter(scores, size=smoothing_frames, mode="nearest")
  return ndimage.uniform_filter1d(scores, size=smoothing_frames, mode="nearest")


def _non_maximum_suppression(
  candidates: np.ndarray, nms_iou: float, max_proposals: int
) -> np.ndarray:
  """The candidates (score, start, end) kept by greedy NMS, by score descending."""
  candidates = candidates[np.argsort(-candidates[:, 0], kind="stable")]
  overlaps = _temporal_iou(candidates[:, 1:], candidates[:, 1:])
  suppressed = np.zeros(len(candidates), dtype=bool)
  kept = []
  for index in range(len(candidates)):
    if suppressed[index]:
      continue
    kept.append(index)
    if len(kept) == max_proposals:
      break
    suppressed |= overlaps[index] >= nms_iou
  return candidates[kept]


def _positive_int(value, name: str) -> int:
  try:
    number = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be an integer, got {value!r}") from None
  if number < 1:
    raise ValueError(f"{name} must be >= 1, got {number}")
  return number


def _fraction(value, name: str, *, zero_allowed: bool = True) -> float:
  """A float in [0, 1] (in (0, 1] unless zero_allowed)."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = float("nan")
  if not (0 <= number <= 1 and (zero_allowed or number > 0)):
    interval = "[0, 1]" if zero_allowed else "(0, 1]"
    raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
  return number


def _non_empty(values, name: str, convert) -> tuple:
  """`convert(value, name)` of each value of a non-empty sequence."""
  if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray) or not len(values):
    raise ValueError(f"{name} must be a non-empty sequence, got {values!r}")
  return tuple(convert(value, name) for value in values)


def proposals_from_frame_scores(
  frame_scores: ArrayLike,
  *,
  fps: float = 25.0,
  smoothing_frames: int = 5,
  smoothing: str = "median",
  thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
  min_frames: int = 2,
  nms_iou: float = 0.7,
  max_proposals: int = 100,
) -> np.ndarray:
  """Scored fake-segment proposals (N, 3) float64, rows (score, start_s, end_s), score descending,
  from one clip's per-frame fake probabilities (T,) at `fps` (procedure: module docstring)."""
  scores = np.asarray(frame_scores, dtype=np.float64)
  if scores.ndim != 1 or scores.size == 0:
    raise ValueError(f"frame_scores must be a non-empty 1-D array, got shape {scores.shape}")
  if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
    raise ValueError("frame_scores must be probabilities in [0, 1]")
  if not (isinstance(fps, int | float | np.number) and np.isfinite(fps) and fps > 0):
    raise ValueError(f"fps must be a positive number, got {fps!r}")
  smoothing_frames = _positive_int(smoothing_frames, "smoothing_frames")
  if smoothing_frames % 2 == 0:
    raise ValueError(f"smoothing_frames must be odd (a centred window), got {smoothing_frames}")
  if smoothing not in SMOOTHING_KINDS:
    raise ValueError(f"smoothing must be one of {SMOOTHING_KINDS}, got {smoothing!r}")
  thresholds = _non_empty(thresholds, "thresholds", _fraction)
  min_frames = _positive_int(min_frames, "min_frames")
  nms_iou = _fraction(nms_iou, "nms_iou", zero_allowed=False)
  max_proposals = _positive_int(max_proposals, "max_proposals")

  smoothed = _smoothed(scores, smoothing_frames, smoothing)
  candidates = []
  for threshold in thresholds:
    for start, end in schema.frame_runs(smoothed >= threshold):
      if end - start >= min_frames:
        candidates.append((smoothed[start:end].mean(), start / fps, end / fps))
  if not candidates:
    return np.zeros((0, 3))
  return _non_maximum_suppression(np.array(candidates), nms_iou, max_proposals)


def _evaluated_clips(
  proposals: Mapping[Hashable, ArrayLike], segments: Mapping[Hashable, ArrayLike]
) -> list[tuple[np.ndarray, np.ndarray]]:
  """(proposals (N, 3), true segments (M, 2)) of each clip of `segments`, in its order."""
  clips = []
  for clip_id, clip_segments in segments.items():
    clip_proposals = proposals.get(clip_id, ())
    clips.append(
      (
        _intervals(clip_proposals, 3, f"proposals[{clip_id!r}]"),
        _intervals(clip_segments, 2, f"segments[{clip_id!r}]"),
      )
    )
  return clips


def _greedy_true_positives(
  clip_proposals: np.ndarray, clip_segments: np.ndarray, iou_threshold: float
) -> np.ndarray:
  """Which rows are true positives: each true segment, in order, takes the first row (in row
  order) not yet taken whose IoU with it is > iou_threshold."""
  above = _official_iou(clip_proposals[:, 1:], clip_segments) > np.float32(iou_threshold)
  is_true_positive = np.zeros(len(clip_proposals), dtype=bool)
  for segment in range(len(clip_segments)):
    free = np.flatnonzero(above[:, segment] & ~is_true_positive)
    if free.size:
      is_true_positive[free[0]] = True
  return is_true_positive


def _official_ap(ranked_true_positives: np.ndarray, num_true_segments: int) -> float:
  """Interpolated AP of a ranking, without the first recall step (module docstring)."""
  if num_true_segments == 0:
    return float("nan")
  true_positives = np.cumsum(ranked_true_positives)
  precision = true_positives / np.arange(1, len(true_positives) + 1)
  recall = true_positives / num_true_segments
  interpolated_precision = np.maximum.accumulate(precision[::-1])[::-1]
  return float(np.sum(np.diff(recall) * interpolated_precision[1:]))


def average_precision(
  proposals: Mapping[Hashable, ArrayLike],
  segments: Mapping[Hashable, ArrayLike],
  iou_thresholds: Sequence[float] = AP_IOU_THRESHOLDS,
) -> dict[float, float]:
  """AV-Deepfake1M's AP at each temporal IoU threshold (definition: module docstring).

  proposals: clip id -> (N, 3) rows (score, start_s, end_s), expected sorted by score
    descending (the rows are used in the order given).
  segments: clip id -> (M, 2) true fake segments in seconds (M = 0 for a real clip).
  """
  iou_thresholds = _non_empty(iou_thresholds, "iou_thresholds", _fraction)
  clips = _evaluated_clips(proposals, segments)
  # Ranked as float32 scores, as the official code: scores equal in float32 keep their order.
  scores = np.concatenate(
    [np.zeros(0, np.float32)]
    + [clip_proposals[:, 0].astype(np.float32) for clip_proposals, _ in clips]
  )
  ranking = np.argsort(-scores, kind="stable")
  num_true_segments = sum(len(clip_segments) for _, clip_segments in clips)
  average_precisions = {}
  for iou_threshold in iou_thresholds:
    is_true_positive = np.concatenate(
      [np.zeros(0, dtype=bool)] + [_greedy_true_positives(*clip, iou_threshold) for clip in clips]
    )
    average_precisions[iou_threshold] = _official_ap(is_true_positive[ranking], num_true_segments)
  return average_precisions


def average_recall(
  proposals: Mapping[Hashable, ArrayLike],
  segments: Mapping[Hashable, ArrayLike],
  n_proposals: Sequence[int] = AR_N_PROPOSALS,
  iou_thresholds: Sequence[float] = AR_IOU_THRESHOLDS,
) -> dict[int, float]:
  """AV-Deepfake1M's AR@N for each N, averaged over the IoU thresholds (definition: module
  docstring). Arguments as for `average_precision`."""
  n_proposals = _non_empty(n_proposals, "n_proposals", _positive_int)
  iou_thresholds = np.array(_non_empty(iou_thresholds, "iou_thresholds", _fraction), np.float32)
  clips = _evaluated_clips(proposals, segments)
  num_true_segments = sum(len(clip_segments) for _, clip_segments in clips)
  recalled = np.zeros((len(iou_thresholds), len(n_proposals)), dtype=np.int64)
  for clip_proposals, clip_segments in clips:
    top = clip_proposals[: max(n_proposals)]
    if len(top) == 0 or len(clip_segments) == 0:
      continue
    # best_iou[k, s]: the largest IoU of true segment s with the first k + 1 proposals.
    best_iou = np.maximum.accumulate(_official_iou(top[:, 1:], clip_segments), axis=0)
    best_within_n = best_iou[[min(n, len(top)) - 1 for n in n_proposals]]
    recalled += (best_within_n[None] > iou_thresholds[:, None, None]).sum(axis=-1)
  if num_true_segments == 0:
    return dict.fromkeys(n_proposals, 0.0)
  recall = recalled / num_true_segments
  return {n: float(recall[:, column].mean()) for column, n in enumerate(n_proposals)}


def localisation_metrics(
  proposals: Mapping[Hashable, ArrayLike], segments: Mapping[Hashable, ArrayLike]
) -> dict[str, float]:
  """The AV-Deepfake1M benchmark's localisation metrics: "ap@0.5", "ap@0.75", "ap@0.9",
  "ap@0.95", "ar@50", "ar@30", "ar@20", "ar@10", "ar@5". Arguments as for `average_precision`."""
  precisions = average_precision(proposals, segments, AP_IOU_THRESHOLDS)
  recalls = average_recall(proposals, segments, AR_N_PROPOSALS, AR_IOU_THRESHOLDS)
  return {f"ap@{threshold:g}": value for threshold, value in precisions.items()} | {
    f"ar@{n}": value for n, value in recalls.items()
  }
