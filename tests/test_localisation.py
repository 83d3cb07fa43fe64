"""avcd.evaluation.localisation: proposals from frame scores, and AV-Deepfake1M's AP/AR.

The metrics are checked against hand-computed values and against a brute force written here in
another form: it walks the official precision/recall curve from (recall 1, precision 0) with
explicit loops, recounting the true positives of every cut of the ranking from scratch, and ranks
with Python's sort on (score descending, clip position, row) rather than a stable argsort. Random
times lie on a 1/8 s grid, so every IoU is computed exactly and many sit exactly on a threshold,
where the strict "IoU > t" of the official code matters.
"""

import json
import math
import pathlib

import numpy as np
import pytest

from avcd.evaluation import localisation

FPS = 25.0
GRID_S = 1 / 8  # a dyadic grid: sums, differences and IoUs of grid times are exact in float64


def brute_force_iou(a, b) -> float:
  intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
  return intersection / union if union > 0 else 0.0


def clip_rows(mapping, clip_id, columns):
  return [tuple(row) for row in np.asarray(mapping.get(clip_id, ()), float).reshape(-1, columns)]


def brute_force_ap(proposals, segments, iou_threshold) -> float:
  entries = []  # (score, clip position, row, is true positive)
  num_true = 0
  for position, clip_id in enumerate(segments):
    true_segments = clip_rows(segments, clip_id, 2)
    rows = clip_rows(proposals, clip_id, 3)
    num_true += len(true_segments)
    taken = set()
    for true_segment in true_segments:
      for row_index, row in enumerate(rows):
        if row_index not in taken and brute_force_iou(row[1:], true_segment) > iou_threshold:
          taken.add(row_index)
          break
    entries += [(row[0], position, index, index in taken) for index, row in enumerate(rows)]
  if num_true == 0:
    return math.nan
  ranked = sorted(entries, key=lambda entry: (-entry[0], entry[1], entry[2]))
  curve = [(1.0, 0.0)]  # (recall, precision), from the last cut of the ranking to the first
  for cut in range(len(ranked), 0, -1):
    true_positives = sum(1 for entry in ranked[:cut] if entry[3])
    curve.append((true_positives / num_true, true_positives / cut))
  area, best_precision = 0.0, 0.0
  for (recall, precision), (next_recall, _) in zip(curve, curve[1:]):
    best_precision = max(best_precision, precision)
    area += abs(next_recall - recall) * best_precision
  return area


def brute_force_ar(proposals, segments, n_proposals, iou_thresholds) -> dict:
  num_true = sum(len(clip_rows(segments, clip_id, 2)) for clip_id in segments)
  result = {}
  for n in n_proposals:
    recalls = []
    for iou_threshold in iou_thresholds:
      recalled = 0
      for clip_id in segments:
        top_rows = clip_rows(proposals, clip_id, 3)[:n]
        for true_segment in clip_rows(segments, clip_id, 2):
          if any(brute_force_iou(row[1:], true_segment) > iou_threshold for row in top_rows):
            recalled += 1
      recalls.append(recalled / num_true if num_true else 0.0)
    result[n] = sum(recalls) / len(recalls)
  return result


def random_case(rng):
  """Clips with 0-3 true segments and 0-8 proposals near them or anywhere, scores in fifths (many
  ties); some clips without proposals or missing, some proposals of unknown clips."""
  segments, proposals = {}, {}
  for clip in range(rng.integers(1, 10)):
    clip_id = f"clip{clip}"
    starts = rng.integers(0, 80, rng.choice([0, 0, 1, 1, 2, 3]))
    true_segments = np.column_stack([starts, starts + rng.integers(1, 24, starts.size)])
    segments[clip_id] = true_segments * GRID_S
    if rng.random() < 0.15:
      continue
    rows = []
    for _ in range(rng.integers(0, 9)):
      if len(true_segments) and rng.random() < 0.7:
        near = true_segments[rng.integers(len(true_segments))] + rng.integers(-3, 4, 2)
        start, end = sorted(np.maximum(near, 0))
      else:
        start = rng.integers(0, 100)
        end = start + rng.integers(0, 30)
      rows.append((rng.integers(1, 6) / 5, start * GRID_S, end * GRID_S))
    rows = np.array(rows).reshape(-1, 3)
    if rng.random() < 0.5:
      rows = rows[np.argsort(-rows[:, 0], kind="stable")]
    proposals[clip_id] = rows
  if rng.random() < 0.3:
    proposals["unknown clip"] = np.array([[1.0, 0.0, 1.0]])
  return proposals, segments


@pytest.mark.parametrize("seed", range(4))
def test_metrics_equal_brute_force_on_random_cases(seed):
  rng = np.random.default_rng(seed)
  n_proposals = (50, 5, 3, 2, 1)
  on_threshold = partial = 0
  for _ in range(80):
    proposals, segments = random_case(rng)
    precisions = localisation.average_precision(proposals, segments, (0.5, 0.75, 0.9, 0.95))
    for iou_threshold, value in precisions.items():
      expected = brute_force_ap(proposals, segments, iou_threshold)
      assert value == pytest.approx(expected, abs=1e-12, nan_ok=True)
      partial += 0 < value < 1
    recalls = localisation.average_recall(proposals, segments, n_proposals)
    expected = brute_force_ar(proposals, segments, n_proposals, localisation.AR_IOU_THRESHOLDS)
    assert recalls.keys() == expected.keys()
    for n, value in recalls.items():
      assert value == pytest.approx(expected[n], abs=1e-12)
    for clip_id, rows in proposals.items():
      if clip_id in segments and len(rows) and len(segments[clip_id]):
        ious = localisation.iou_1d(rows[:, 1:], segments[clip_id])
        on_threshold += np.isin(ious, (0.5, 0.75)).sum()
  assert on_threshold > 0 and partial > 20  # the edge cases and non-trivial values occur


def check_ap(proposals, segments, expected):
  """Module and brute force both give the hand-computed AP at each IoU threshold."""
  result = localisation.average_precision(proposals, segments, tuple(expected))
  for iou_threshold, value in expected.items():
    assert result[iou_threshold] == pytest.approx(value, abs=1e-15, nan_ok=True)
    assert brute_force_ap(proposals, segments, iou_threshold) == pytest.approx(
      value, abs=1e-15, nan_ok=True
    )


def check_ar(proposals, segments, n_proposals, expected):
  result = localisation.average_recall(proposals, segments, n_proposals)
  assert result == pytest.approx(expected, abs=1e-15)
  assert brute_force_ar(proposals, segments, n_proposals, localisation.AR_IOU_THRESHOLDS) == (
    pytest.approx(expected, abs=1e-15)
  )


def test_iou_1d():
  ious = localisation.iou_1d([[0.0, 2.0], [5.0, 5.0]], [[1.0, 3.0], [2.0, 4.0], [0.0, 2.0]])
  np.testing.assert_array_equal(ious, [[1 / 3, 0.0, 1.0], [0.0, 0.0, 0.0]])
  assert localisation.iou_1d([[1.0, 1.0]], [[1.0, 1.0]])[0, 0] == 0.0  # empty hull
  assert localisation.iou_1d(np.zeros((0, 2)), [[0.0, 1.0]]).shape == (0, 1)
  with pytest.raises(ValueError, match="b has a segment that ends before it starts"):
    localisation.iou_1d([[0.0, 1.0]], [[2.0, 1.0]])


def test_no_proposals_scores_zero():
  segments = {"a": [[0.0, 1.0]], "b": [[2.0, 3.0], [4.0, 5.0]]}
  check_ap({}, segments, {0.5: 0.0, 0.95: 0.0})
  check_ar({"a": np.zeros((0, 3))}, segments, (50, 5), {50: 0.0, 5: 0.0})


def test_no_true_segments_gives_nan_ap_and_zero_ar():
  segments = {"a": np.zeros((0, 2)), "b": []}
  proposals = {"a": [[0.9, 0.0, 1.0]]}
  check_ap(proposals, segments, {0.5: math.nan})
  check_ap({}, segments, {0.5: math.nan})
  check_ar(proposals, segments, (50, 1), {50: 0.0, 1: 0.0})
  metrics = localisation.localisation_metrics(proposals, segments)
  assert math.isnan(metrics["ap@0.5"]) and metrics["ar@50"] == 0.0


def test_clip_without_proposals_counts_its_segments_as_missed():
  segments = {"a": [[0.0, 1.0], [2.0, 3.0]], "b": [[0.0, 1.0]], "c": [[5.0, 6.0]]}
  proposals = {"a": [[0.9, 0.0, 1.0], [0.8, 2.0, 3.0]], "b": [[0.7, 0.0, 1.0]]}
  # Three true positives of four segments: recall 1/4, 2/4, 3/4 at precision 1; the first step
  # (0 to 1/4) is not counted (the official curve's quirk).
  check_ap(proposals, segments, {0.5: 0.5})
  check_ar(proposals, segments, (1, 50), {1: 0.5, 50: 0.75})  # AR@1: a's second is not in its top 1
  check_ap(proposals | {"c": np.zeros((0, 3))}, segments, {0.5: 0.5})
  without_c = {clip_id: segments[clip_id] for clip_id in ("a", "b")}
  check_ap(proposals, without_c, {0.5: 2 / 3})
  check_ar(proposals, without_c, (1, 50), {1: 2 / 3, 50: 1.0})


def test_a_perfect_single_detection_has_ap_zero():
  # The official integration leaves out recall 0 -> r_1; with one true segment that is all of it.
  check_ap({"a": [[0.9, 0.0, 1.0]]}, {"a": [[0.0, 1.0]]}, {0.5: 0.0})


def test_two_proposals_on_one_segment_match_one_to_one():
  segments = {"a": [[0.0, 4.0]], "b": [[0.0, 2.0]]}
  proposals = {"a": [[0.9, 0.0, 4.0], [0.8, 0.0, 3.5]], "b": [[0.7, 0.0, 2.0]]}
  # Ranked TP, FP (the duplicate), TP: recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
  check_ap(proposals, segments, {0.5: 0.5 * 2 / 3})
  check_ar(proposals, segments, (1, 2), {1: 1.0, 2: 1.0})


def test_matching_follows_row_order_not_score():
  # Both rows fit the segment; the first row (score 0.2) takes it, so the top-ranked row
  # (score 0.9) is a false positive: ranked FP, TP gives 1 * 1/2.
  check_ap({"a": [[0.2, 0.0, 1.0], [0.9, 0.0, 1.0]]}, {"a": [[0.0, 1.0]]}, {0.5: 0.5})


def test_ar_counts_the_first_n_rows():
  proposals = {"a": [[0.9, 5.0, 6.0], [0.8, 0.0, 1.0]]}
  check_ar(proposals, {"a": [[0.0, 1.0]]}, (1, 2, 50), {1: 0.0, 2: 1.0, 50: 1.0})


@pytest.mark.parametrize(("clip_order", "expected"), ((("a", "b"), 0.25), (("b", "a"), 0.0)))
def test_tied_scores_keep_the_clip_order(clip_order, expected):
  # a's proposal misses, b's hits, both at score 0.5. a first: FP, TP (1/2 * 1/2); b first:
  # TP, FP (the first step, uncounted, holds all the recall).
  segments = {clip_id: [[0.0, 1.0]] for clip_id in clip_order}
  proposals = {"a": [[0.5, 3.0, 4.0]], "b": [[0.5, 0.0, 1.0]]}
  check_ap(proposals, segments, {0.5: expected})


def test_iou_exactly_at_a_threshold_does_not_count():
  segments = {"a": [[0.0, 3.0]], "b": [[0.0, 1.0]]}
  proposals = {"a": [[0.9, 0.0, 4.0]], "b": [[0.8, 0.0, 1.0]]}  # IoU 0.75 and 1
  # IoU 0.5: TP, TP (1/2 * 1); 0.75 and above: FP, TP (1/2 * 1/2).
  check_ap(proposals, segments, {0.5: 0.5, 0.75: 0.25, 0.9: 0.25, 0.95: 0.25})
  # a is recalled at IoU thresholds 0.5-0.7 (5 of 10), b at all: (5 * 2/2 + 5 * 1/2) / 10.
  check_ar(proposals, segments, (1,), {1: 0.75})
  check_ar({"a": [[0.9, 0.0, 2.0]]}, {"a": [[0.0, 1.0]]}, (1,), {1: 0.0})  # IoU 0.5: never > t


def test_proposals_of_unknown_clips_are_ignored():
  segments = {"a": [[0.0, 1.0]], "b": [[0.0, 1.0]]}
  proposals = {"a": [[0.5, 0.0, 1.0]], "b": [[0.4, 0.0, 1.0]]}
  expected = localisation.localisation_metrics(proposals, segments)
  extra = proposals | {"z": [[0.99, 0.0, 1.0], [0.98, 7.0, 8.0]]}
  assert localisation.localisation_metrics(extra, segments) == expected


def test_localisation_metrics_keys_and_values():
  segments = {"a": [[0.0, 1.0]], "b": [[2.0, 3.0]], "c": []}
  proposals = {"a": [[0.9, 0.0, 1.0]], "b": [[0.8, 2.0, 3.0]], "c": [[0.7, 0.0, 1.0]]}
  metrics = localisation.localisation_metrics(proposals, segments)
  assert list(metrics) == [
    "ap@0.5",
    "ap@0.75",
    "ap@0.9",
    "ap@0.95",
    "ar@50",
    "ar@30",
    "ar@20",
    "ar@10",
    "ar@5",
  ]
  # Ranked TP, TP, FP: recall 1/2, 1, 1 at precision 1, 1, 2/3; AP = 1/2 * 1.
  assert all(metrics[f"ap@{t}"] == 0.5 for t in ("0.5", "0.75", "0.9", "0.95"))
  assert all(metrics[f"ar@{n}"] == 1.0 for n in (50, 30, 20, 10, 5))


@pytest.mark.parametrize(
  ("proposals", "segments", "message"),
  (
    ({"a": [[0.9, 0.0]]}, {"a": [[0.0, 1.0]]}, r"proposals\['a'\] must have shape \(N, 3\)"),
    ({"a": [[0.9, 2.0, 1.0]]}, {"a": [[0.0, 1.0]]}, r"proposals\['a'\] has a segment that ends"),
    ({"a": [[math.nan, 0.0, 1.0]]}, {"a": [[0.0, 1.0]]}, r"proposals\['a'\] has 1 non-finite"),
    ({}, {"a": [[1.0, 0.0]]}, r"segments\['a'\] has a segment that ends before it starts"),
    ({}, {"a": [0.0, 1.0]}, r"segments\['a'\] must have shape \(N, 2\)"),
  ),
)
def test_invalid_metric_inputs_raise(proposals, segments, message):
  with pytest.raises(ValueError, match=message):
    localisation.localisation_metrics(proposals, segments)


def test_invalid_metric_arguments_raise():
  segments = {"a": [[0.0, 1.0]]}
  with pytest.raises(ValueError, match="iou_thresholds must be a non-empty sequence"):
    localisation.average_precision({}, segments, ())
  with pytest.raises(ValueError, match=r"iou_thresholds must be a number in \[0, 1\]"):
    localisation.average_precision({}, segments, (0.5, 1.5))
  with pytest.raises(ValueError, match="n_proposals must be >= 1"):
    localisation.average_recall({}, segments, (10, 0))
  with pytest.raises(ValueError, match="n_proposals must be a non-empty sequence"):
    localisation.average_recall({}, segments, 10)


def step_scores(num_frames, *fake_runs):
  scores = np.zeros(num_frames)
  for start, end in fake_runs:
    scores[start:end] = 1.0
  return scores


def test_a_clean_step_gives_one_segment_with_exact_boundaries():
  proposals = localisation.proposals_from_frame_scores(step_scores(100, (30, 61)))
  np.testing.assert_array_equal(proposals, [[1.0, 30 / FPS, 61 / FPS]])
  assert proposals.dtype == np.float64


def test_a_step_at_the_clip_edges():
  proposals = localisation.proposals_from_frame_scores(step_scores(50, (0, 20)), fps=10.0)
  np.testing.assert_array_equal(proposals, [[1.0, 0.0, 2.0]])
  proposals = localisation.proposals_from_frame_scores(step_scores(50, (0, 50)))
  np.testing.assert_array_equal(proposals, [[1.0, 0.0, 2.0]])


def test_two_separated_runs_give_two_segments():
  scores = step_scores(120, (10, 30), (60, 90)) * 0.9
  scores[60:90] = 0.95
  proposals = localisation.proposals_from_frame_scores(scores)
  np.testing.assert_allclose(proposals, [[0.95, 60 / FPS, 90 / FPS], [0.9, 10 / FPS, 30 / FPS]])


def test_all_real_scores_give_no_proposals():
  scores = np.random.default_rng(0).uniform(0.0, 0.29, 200)
  proposals = localisation.proposals_from_frame_scores(scores)
  assert proposals.shape == (0, 3)


def test_a_run_exactly_at_a_threshold_counts():
  scores = np.zeros(40)
  scores[10:20] = 0.3
  proposals = localisation.proposals_from_frame_scores(scores)
  np.testing.assert_allclose(proposals, [[0.3, 10 / FPS, 20 / FPS]])
  proposals = localisation.proposals_from_frame_scores(scores, thresholds=(0.31,))
  assert proposals.shape == (0, 3)


def test_nms_keeps_the_confident_core_of_nested_runs():
  # Low thresholds (0.3, 0.4) give a 24-frame run with weak shoulders, higher ones its 20-frame
  # core (mean 0.95): IoU 20/24 >= 0.7, so the core alone survives; at nms_iou 0.9 both do.
  scores = np.concatenate([np.zeros(10), [0.45] * 2, [0.95] * 20, [0.45] * 2, np.zeros(10)])
  options = dict(smoothing_frames=1, min_frames=1)
  proposals = localisation.proposals_from_frame_scores(scores, **options)
  np.testing.assert_allclose(proposals, [[0.95, 12 / FPS, 32 / FPS]])
  proposals = localisation.proposals_from_frame_scores(scores, nms_iou=0.9, **options)
  shoulders_mean = (0.45 * 4 + 0.95 * 20) / 24
  np.testing.assert_allclose(
    proposals, [[0.95, 12 / FPS, 32 / FPS], [shoulders_mean, 10 / FPS, 34 / FPS]]
  )
  # nms_iou 1 removes exactly the duplicates (IoU 1) that several thresholds give.
  exact_only = localisation.proposals_from_frame_scores(scores, nms_iou=1.0, **options)
  np.testing.assert_array_equal(exact_only, proposals)


def test_median_smoothing_and_min_frames_drop_a_spike():
  scores = step_scores(60, (20, 21), (40, 42))
  assert localisation.proposals_from_frame_scores(scores).shape == (0, 3)
  proposals = localisation.proposals_from_frame_scores(scores, smoothing_frames=1)
  np.testing.assert_array_equal(proposals, [[1.0, 40 / FPS, 42 / FPS]])
  proposals = localisation.proposals_from_frame_scores(scores, smoothing_frames=1, min_frames=1)
  np.testing.assert_array_equal(proposals, [[1.0, 20 / FPS, 21 / FPS], [1.0, 40 / FPS, 42 / FPS]])


def test_mean_smoothing_favours_the_core_of_a_blurred_step():
  # The moving mean turns the step into ramps of 0.2, 0.4, 0.6, 0.8; the 0.9 threshold's run,
  # two frames inside the step, is the only one whose mean score is 1.
  proposals = localisation.proposals_from_frame_scores(step_scores(100, (30, 61)), smoothing="mean")
  np.testing.assert_allclose(proposals, [[1.0, 32 / FPS, 59 / FPS]])


def test_max_proposals_keeps_the_best():
  scores = np.zeros(200)
  for index, start in enumerate(range(10, 190, 20)):
    scores[start : start + 10] = 0.5 + 0.05 * index
  proposals = localisation.proposals_from_frame_scores(scores, max_proposals=2)
  np.testing.assert_allclose(proposals[:, 0], [0.9, 0.85])
  np.testing.assert_allclose(proposals[:, 1], [170 / FPS, 150 / FPS])


@pytest.mark.parametrize(
  ("arguments", "name"),
  (
    (dict(frame_scores=np.zeros((2, 5))), "frame_scores"),
    (dict(frame_scores=np.zeros(0)), "frame_scores"),
    (dict(frame_scores=np.full(5, 1.5)), "frame_scores"),
    (dict(frame_scores=np.full(5, math.nan)), "frame_scores"),
    (dict(fps=0.0), "fps"),
    (dict(fps="25"), "fps"),
    (dict(smoothing_frames=4), "smoothing_frames"),
    (dict(smoothing_frames=0), "smoothing_frames"),
    (dict(smoothing_frames=3.0), "smoothing_frames"),
    (dict(smoothing="max"), "smoothing"),
    (dict(thresholds=()), "thresholds"),
    (dict(thresholds=(0.5, 1.2)), "thresholds"),
    (dict(thresholds=0.5), "thresholds"),
    (dict(min_frames=0), "min_frames"),
    (dict(nms_iou=0.0), "nms_iou"),
    (dict(nms_iou=1.5), "nms_iou"),
    (dict(max_proposals=0), "max_proposals"),
  ),
)
def test_invalid_proposal_arguments_raise(arguments, name):
  arguments = dict(frame_scores=np.full(10, 0.5)) | arguments
  with pytest.raises(ValueError, match=f"^{name} "):
    localisation.proposals_from_frame_scores(arguments.pop("frame_scores"), **arguments)


def test_ap_and_ar_equal_the_official_evaluator_on_frame_aligned_cases():
  """Values computed by AV-Deepfake1M's own evaluator (the avdeepfake1m 0.0.4 wheel, float32) on
  frame-grid times, where many IoUs equal a threshold exactly: tests/data/official_localisation
  (the script that made them is beside them)."""
  data = json.loads(
    (pathlib.Path(__file__).parent / "data/official_localisation/cases.json").read_text()
  )
  exact_ties = 0
  for case in data["cases"]:
    proposals = {name: np.asarray(rows) for name, rows in case["proposals"].items()}
    segments = {m["file"]: np.reshape(m["fake_segments"], (-1, 2)) for m in case["metadata"]}
    got = localisation.localisation_metrics(proposals, segments)
    for threshold, value in case["official"]["ap"].items():
      np.testing.assert_allclose(got[f"ap@{threshold}"], value, rtol=0, atol=1e-6)
    for n, value in case["official"]["ar"].items():
      np.testing.assert_allclose(got[f"ar@{n}"], value, rtol=0, atol=1e-6)
    for name, rows in proposals.items():
      if len(segments[name]):
        ious = localisation.iou_1d(rows[:, 1:], segments[name])
        exact_ties += np.isclose(ious[..., None], localisation.AR_IOU_THRESHOLDS, atol=1e-9).sum()
  assert exact_ties > 20  # the cases do test IoUs that sit exactly on a threshold
