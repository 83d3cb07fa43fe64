"""Clip-level detection metrics, per-method breakdowns and bootstrap intervals (numpy + sklearn).

Conventions:
  * labels: 0 = real, 1 = fake ("positive" means fake throughout).
  * scores rank clips (the reference's mean fake-class logit); AUC, AP and EER use them.
  * probabilities are the fake probability; the threshold-dependent metrics call a clip fake when
    probability >= threshold.
  * A metric that a split cannot define (AUC of a split without reals, recall of a class with no
    clips) is NaN, with a SingleClassWarning naming the split; nothing raises for that.

EER: the ROC polyline of `sklearn.metrics.roc_curve` (the points (FPR, TPR), starting at (0, 0)) is
followed until FNR = 1 - TPR meets FPR; between the two ROC points that bracket the crossing the
curve is interpolated linearly, and the EER is the FPR (= FNR) at the crossing. This is the value
`brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)` finds in common deepfake-detection code,
computed in closed form (it also handles vertical ROC segments, where interp1d is undefined). The
other common variant, `fpr[argmin |fnr - fpr|]`, picks the nearest ROC point instead and differs
from this by less than one ROC step.
"""

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as sk_metrics

DEFAULT_THRESHOLD = 0.5
RANKING_METRICS = ("auc", "ap", "eer")  # threshold-free, from the scores; bootstrapped
METRIC_KEYS = (
  "auc",
  "eer",
  "acc",
  "bacc",
  "f1",
  "ap",
  "hter",
  "real_recall",
  "fake_recall",
  "num_clips",
  "tp",
  "tn",
  "fp",
  "fn",
  "threshold",
)
# The metrics a checkpoint can be ranked by (`train.best_metric`), and those where lower is better.
CHECKPOINT_METRICS = ("auc", "eer", "acc", "bacc", "f1", "ap", "hter", "real_recall", "fake_recall")
LOWER_IS_BETTER = ("eer", "hter")

# Bootstrap resamples are processed in blocks of about this many (resample, distinct score) cells,
# which bounds the memory of the vectorised curves (a few float64 arrays of this size).
_BOOTSTRAP_BLOCK_CELLS = 1 << 21


class SingleClassWarning(UserWarning):
  """A split (or a method's subset) lacks reals or fakes, so some metrics are NaN."""


def _validated(labels: ArrayLike, *columns: ArrayLike, name: str) -> tuple[np.ndarray, ...]:
  """Labels as int64 and each column as finite float64, all 1-D and of one length."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name}: labels must be 1-D, got shape {labels.shape}")
  if labels.size and not np.isin(labels, (0, 1)).all():
    raise ValueError(f"{name}: labels must be 0 (real) or 1 (fake), got {np.unique(labels)}")
  arrays = [labels.astype(np.int64)]
  for column in columns:
    values = np.asarray(column, dtype=np.float64)
    if values.shape != labels.shape:
      raise ValueError(f"{name}: {values.shape} values for {labels.shape} labels")
    if not np.isfinite(values).all():
      raise ValueError(f"{name}: {np.count_nonzero(~np.isfinite(values))} non-finite values")
    arrays.append(values)
  return tuple(arrays)


def _ratio(numerator: int, denominator: int) -> float:
  return numerator / denominator if denominator else float("nan")


def _warn_if_single_class(num_real: int, num_fake: int, name: str, undefined: str) -> bool:
  """Warns (and returns True) when the split has no reals or no fakes."""
  if num_real and num_fake:
    return False
  missing = (
    "clips" if not (num_real or num_fake) else ("real clips" if not num_real else "fake clips")
  )
  warnings.warn(
    f"{name}: no {missing} ({num_real} real, {num_fake} fake); {undefined} are NaN",
    SingleClassWarning,
    stacklevel=3,
  )
  return True


def equal_error_rate(labels: ArrayLike, scores: ArrayLike) -> float:
  """EER of scores against labels, which must hold both classes: see the module docstring."""
  false_positive_rate, true_positive_rate, _ = sk_metrics.roc_curve(labels, scores)
  return _crossing(false_positive_rate[None], true_positive_rate[None])[0]


def _crossing(false_positive_rate: np.ndarray, true_positive_rate: np.ndarray) -> np.ndarray:
  """Per row of (R, K) ROC points starting at (0, 0): the FPR where FNR = FPR, interpolated.

  gap = FNR - FPR falls strictly along the curve from 1 at (0, 0) to -1 at (1, 1), so the first
  point with gap <= 0 and the one before it bracket the crossing.
  """
  gap = 1.0 - true_positive_rate - false_positive_rate
  rows = np.arange(gap.shape[0])
  after = np.argmax(gap <= 0, axis=1)  # >= 1, as gap is 1 at (0, 0)
  before = after - 1
  gap_before, gap_after = gap[rows, before], gap[rows, after]
  fpr_before, fpr_after = false_positive_rate[rows, before], false_positive_rate[rows, after]
  fraction = gap_before / (gap_before - gap_after)
  return fpr_before + fraction * (fpr_after - fpr_before)


def clip_metrics(
  labels: ArrayLike,
  scores: ArrayLike,
  probabilities: ArrayLike,
  *,
  threshold: float = DEFAULT_THRESHOLD,
  name: str = "split",
) -> dict:
  """Detection metrics of one set of clips, as plain Python numbers keyed by METRIC_KEYS.

  Args:
    labels: (N,) 0 = real, 1 = fake.
    scores: (N,) ranking scores (higher = more fake); give auc, ap (sklearn's
      average_precision_score, the step-wise integral) and eer.
    probabilities: (N,) fake probabilities; a clip is predicted fake when probability >= threshold.
    threshold: the decision threshold for acc, bacc, f1, hter, the recalls and the counts.
    name: names the split (or split/method) in warnings.

  Returns:
    auc, eer, ap; acc; bacc = (real_recall + fake_recall) / 2; f1 of the fake class (NaN when
    there are no fakes and no fake predictions); hter = (FAR + FRR) / 2, where FAR is the share of
    fakes accepted as real and FRR the share of reals rejected as fake (so hter = 1 - bacc);
    real_recall = tn / reals; fake_recall = tp / fakes; num_clips; tp, tn, fp, fn; threshold.
    Missing a class, auc, eer, ap, bacc, hter and that class's recall are NaN (with a warning).
  """
  labels, scores, probabilities = _validated(labels, scores, probabilities, name=name)
  is_fake = labels == 1
  predicted_fake = probabilities >= threshold
  tp = int(np.count_nonzero(is_fake & predicted_fake))
  fn = int(np.count_nonzero(is_fake & ~predicted_fake))
  fp = int(np.count_nonzero(~is_fake & predicted_fake))
  tn = int(np.count_nonzero(~is_fake & ~predicted_fake))
  num_real, num_fake = tn + fp, tp + fn
  nan = float("nan")
  auc = ap = eer = nan
  single_class = _warn_if_single_class(
    num_real, num_fake, name, "auc, eer, ap, bacc, hter and the missing class's recall"
  )
  if not single_class:
    auc = float(sk_metrics.roc_auc_score(labels, scores))
    ap = float(sk_metrics.average_precision_score(labels, scores))
    eer = float(equal_error_rate(labels, scores))
  real_recall = _ratio(tn, num_real)
  fake_recall = _ratio(tp, num_fake)
  balanced_accuracy = (real_recall + fake_recall) / 2  # NaN when either recall is
  return dict(
    auc=auc,
    eer=eer,
    acc=_ratio(tp + tn, labels.size),
    bacc=balanced_accuracy,
    f1=_ratio(2 * tp, 2 * tp + fp + fn),
    ap=ap,
    hter=1.0 - balanced_accuracy,
    real_recall=real_recall,
    fake_recall=fake_recall,
    num_clips=int(labels.size),
    tp=tp,
    tn=tn,
    fp=fp,
    fn=fn,
    threshold=float(threshold),
  )


def fake_groups(labels: ArrayLike, groups: Sequence[str]) -> dict[str, np.ndarray]:
  """Group name -> (N,) mask of all reals plus that group's fakes, for each non-empty group name
  among the fakes (sorted)."""
  labels = np.asarray(labels)
  groups = np.asarray(groups, dtype=object)
  if groups.shape != labels.shape:
    raise ValueError(f"{groups.shape} group names for {labels.shape} labels")
  is_real = labels == 0
  names = sorted({str(group) for group in groups[~is_real] if group})
  return {group: is_real | ((groups == group) & ~is_real) for group in names}


def per_method_metrics(
  labels: ArrayLike,
  scores: ArrayLike,
  probabilities: ArrayLike,
  methods: Sequence[str],
  *,
  threshold: float = DEFAULT_THRESHOLD,
  name: str = "split",
) -> dict[str, dict]:
  """Method -> clip_metrics on ALL real clips of the split plus the fake clips of that method.

  Reals are shared by every method (as in corpora whose reals are not paired with one method),
  so each method's AUC says how well its fakes are told from the same reals. Methods are those
  of the fake clips, sorted; the reals' own method name (e.g. 'real') gets no entry.
  """
  labels, scores, probabilities = _validated(labels, scores, probabilities, name=name)
  return {
    method: clip_metrics(
      labels[mask], scores[mask], probabilities[mask], threshold=threshold, name=f"{name}/{method}"
    )
    for method, mask in fake_groups(labels, methods).items()
  }


def per_category_metrics(
  labels: ArrayLike,
  scores: ArrayLike,
  probabilities: ArrayLike,
  categories: Sequence[str],
  *,
  threshold: float = DEFAULT_THRESHOLD,
  name: str = "split",
) -> dict[str, dict]:
  """Category -> clip_metrics on all reals plus the fakes of that category (e.g. FakeAVCeleb's
  RealVideo-FakeAudio); fakes with an empty category are left out; {} when no fake has one."""
  labels, scores, probabilities = _validated(labels, scores, probabilities, name=name)
  return {
    category: clip_metrics(
      labels[mask],
      scores[mask],
      probabilities[mask],
      threshold=threshold,
      name=f"{name}/{category}",
    )
    for category, mask in fake_groups(labels, categories).items()
  }


def _curve_statistics(fake_counts: np.ndarray, real_counts: np.ndarray) -> dict[str, np.ndarray]:
  """AUC, AP and EER per row of (R, U) fake / real clip counts at each distinct score, highest
  score first (a resample's clips, with ties kept together as sklearn does).

  Thresholds between distinct scores give the ROC / precision-recall points; a score with zero
  count in a row repeats a point, which adds nothing to any of the three.
  """
  fake_counts = fake_counts.astype(np.float64)
  real_counts = real_counts.astype(np.float64)
  true_positives = np.cumsum(fake_counts, axis=1)
  false_positives = np.cumsum(real_counts, axis=1)
  num_fake, num_real = true_positives[:, -1:], false_positives[:, -1:]
  # Trapezoids of the ROC: each real counts the fakes above it, and half the fakes tied with it.
  fakes_above = true_positives - fake_counts
  pairs = (num_fake * num_real)[:, 0]
  auc = np.sum(real_counts * (fakes_above + 0.5 * fake_counts), axis=1) / pairs
  # Step-wise AP: sum over thresholds of (recall gain) x precision; no clips above -> no gain.
  precision = true_positives / np.maximum(true_positives + false_positives, 1.0)
  ap = np.sum(fake_counts * precision, axis=1) / num_fake[:, 0]
  zeros = np.zeros_like(num_fake)
  false_positive_rate = np.concatenate([zeros, false_positives / num_real], axis=1)
  true_positive_rate = np.concatenate([zeros, true_positives / num_fake], axis=1)
  eer = _crossing(false_positive_rate, true_positive_rate)
  return dict(auc=auc, ap=ap, eer=eer)


def bootstrap_replicates(
  labels: ArrayLike, scores: ArrayLike, *, num_resamples: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
  """AUC, AP and EER of `num_resamples` stratified bootstrap resamples, each (num_resamples,).

  Each resample draws as many reals (and fakes) as the split has, with replacement, from its
  reals (fakes), so every resample keeps the split's class balance. Requires both classes.
  """
  labels, scores = _validated(labels, scores, name="bootstrap")
  distinct_scores, score_rank = np.unique(-scores, return_inverse=True)  # rank 0 = highest score
  num_distinct = distinct_scores.size
  rank_of_real, rank_of_fake = score_rank[labels == 0], score_rank[labels == 1]
  if not (rank_of_real.size and rank_of_fake.size):
    raise ValueError("bootstrap needs both real and fake clips")
  rng = np.random.default_rng(seed)
  block = max(1, _BOOTSTRAP_BLOCK_CELLS // labels.size)  # labels.size >= num_distinct
  replicates = {key: [] for key in RANKING_METRICS}
  for start in range(0, num_resamples, block):
    rows = min(block, num_resamples - start)
    offsets = np.arange(rows)[:, None] * num_distinct

    def counts(ranks):
      drawn = ranks[rng.integers(0, ranks.size, size=(rows, ranks.size))]
      flat = np.bincount((drawn + offsets).ravel(), minlength=rows * num_distinct)
      return flat.reshape(rows, num_distinct)

    real_counts = counts(rank_of_real)
    fake_counts = counts(rank_of_fake)
    for key, values in _curve_statistics(fake_counts, real_counts).items():
      replicates[key].append(values)
  return {key: np.concatenate(values) for key, values in replicates.items()}


def bootstrap_intervals(
  labels: ArrayLike,
  scores: ArrayLike,
  *,
  num_resamples: int = 1000,
  confidence: float = 0.95,
  seed: int = 0,
  name: str = "split",
) -> dict[str, dict[str, float]]:
  """Percentile bootstrap intervals of AUC, AP and EER over clips, stratified by label.

  Returns {'auc' | 'ap' | 'eer': {'low': ..., 'high': ...}}: the (1 - confidence) / 2 and
  (1 + confidence) / 2 quantiles of bootstrap_replicates (fixed seed, so reports reproduce). NaN
  bounds, with a warning, when the split lacks a class.
  """
  labels, scores = _validated(labels, scores, name=name)
  num_fake = int(np.count_nonzero(labels))
  if _warn_if_single_class(labels.size - num_fake, num_fake, name, "the bootstrap intervals"):
    return {key: dict(low=float("nan"), high=float("nan")) for key in RANKING_METRICS}
  replicates = bootstrap_replicates(labels, scores, num_resamples=num_resamples, seed=seed)
  quantiles = (50 * (1 - confidence), 50 * (1 + confidence))
  intervals = {}
  for key, values in replicates.items():
    low, high = np.percentile(values, quantiles)
    intervals[key] = dict(low=float(low), high=float(high))
  return intervals


def choose_threshold(
  labels: ArrayLike, probabilities: ArrayLike, *, name: str = "validation"
) -> float:
  """Decision threshold that maximises balanced accuracy (Youden's J = TPR - FPR) on this split.

  Ties go to the highest threshold (fewest clips called fake). The threshold returned is the
  midpoint between the lowest probability called fake and the next lower distinct probability,
  so it classifies this split exactly as the optimum does and leaves a margin on both sides for
  other splits. Falls back to 0.5, with a warning, when the split lacks a class or no threshold
  beats chance.
  """
  labels, probabilities = _validated(labels, probabilities, name=name)
  num_fake = int(np.count_nonzero(labels))
  if _warn_if_single_class(labels.size - num_fake, num_fake, name, "no threshold; 0.5 is used"):
    return DEFAULT_THRESHOLD
  false_positive_rate, true_positive_rate, thresholds = sk_metrics.roc_curve(
    labels, probabilities, drop_intermediate=False
  )
  youden = true_positive_rate - false_positive_rate
  best = int(np.argmax(youden))  # the first maximum: thresholds decrease along the curve
  if youden[best] <= 0:
    warnings.warn(
      f"{name}: no threshold separates fakes better than chance; using 0.5", stacklevel=2
    )
    return DEFAULT_THRESHOLD
  lowest_fake = thresholds[best]
  if best + 1 == thresholds.size:
    return float(lowest_fake)
  highest_real = thresholds[best + 1]
  midpoint = 0.5 * (lowest_fake + highest_real)
  # Adjacent floats can round the midpoint down onto highest_real, which would flip its clips.
  return float(midpoint if midpoint > highest_real else lowest_fake)
