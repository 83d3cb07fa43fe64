"""Statistics for comparing training recipes over seeds, corpora and test clips.

The unit of replication is a training run (one seed of one row on one corpus); rows are compared
in pairs that share corpus and seed. Uncertainty comes from two sources, both resampled by the
hierarchical bootstrap: which seeds were run (resampled within each corpus) and which test
speakers were drawn (resampled within each corpus, the same draw for every run of a replicate, so
that paired runs are always scored on the same clips). Clip scores enter only through ROC-AUCs,
computed with the resampled speakers' multiplicities as clip weights, for every replicate at once.
"""

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.stats


def weighted_auc(
  scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray | float:
  """ROC-AUC of `scores` (fakes, label 1, positive), ties counting one half, with clip weights.

  weights: None, (N,) or (B, N) for B weightings at once (the result is then (B,)). Equal to
  sklearn.metrics.roc_auc_score(labels, scores, sample_weight=w) for each weighting w; NaN where
  one class has no weight.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  single = weights is None or np.ndim(weights) == 1
  weights = (
    np.ones((1, scores.size)) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
  )
  order = np.argsort(scores, kind="stable")
  scores, labels, weights = scores[order], labels[order], weights[:, order]
  # Within a group of tied scores, a fake beats the real clips below the group and ties with the
  # real clips inside it.
  starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
  real = np.add.reduceat(np.where(labels, 0.0, weights), starts, axis=1)
  fake = np.add.reduceat(np.where(labels, weights, 0.0), starts, axis=1)
  real_below = np.cumsum(real, axis=1) - real
  wins = np.sum(fake * (real_below + 0.5 * real), axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = wins / (real.sum(axis=1) * fake.sum(axis=1))
  return float(auc[0]) if single else auc


@dataclasses.dataclass(frozen=True)
class TestSet:
  """One corpus's test clips: labels, generation methods and the speaker groups to resample."""

  labels: np.ndarray  # (N,) 0 real, 1 fake
  methods: np.ndarray  # (N,) str
  speakers: np.ndarray  # (N,) speaker ids (the resampling unit)

  def method_auc(
    self, scores: np.ndarray, method: str, weights: np.ndarray | None = None
  ) -> np.ndarray | float:
    """AUC of every real clip against `method`'s fakes (per weighting, as weighted_auc)."""
    keep = (self.labels == 0) | (self.methods == method)
    return weighted_auc(
      np.asarray(scores)[keep],
      self.labels[keep],
      None if weights is None else np.asarray(weights)[..., keep],
    )

  def speaker_weights(self, rng: np.random.Generator, num_resamples: int) -> np.ndarray:
    """(num_resamples, N) clip multiplicities of speaker resamples with replacement."""
    unique, inverse = np.unique(self.speakers, return_inverse=True)
    draws = rng.integers(0, len(unique), (num_resamples, len(unique)))
    counts = np.stack([np.bincount(d, minlength=len(unique)) for d in draws])
    return counts[:, inverse].astype(np.float64)


# An endpoint maps (test set, one run's clip scores, weights None | (B, N)) to a number | (B,).
Endpoint = Callable[[TestSet, np.ndarray, np.ndarray | None], np.ndarray | float]


def mean_method_auc(methods: Sequence[str]) -> Endpoint:
  """The endpoint 'mean AUC over these methods'."""

  def endpoint(test: TestSet, scores: np.ndarray, weights: np.ndarray | None = None):
    values = [test.method_auc(scores, m, weights) for m in methods]
    return float(np.mean(values)) if weights is None else np.mean(values, axis=0)

  return endpoint


@dataclasses.dataclass(frozen=True)
class Estimate:
  mean: float
  low: float  # 95% bootstrap interval
  high: float
  runs: int


@dataclasses.dataclass(frozen=True)
class Contrast:
  """A paired difference `treatment - control` of an endpoint over runs."""

  mean: float
  low: float  # 95% hierarchical bootstrap interval
  high: float
  t: float
  p: float  # two-sided one-sample t-test of the pairs' differences
  pairs: int
  per_corpus: dict  # {corpus: mean difference}


def _interval(replicates: np.ndarray) -> tuple[float, float]:
  low, high = np.nanpercentile(replicates, [2.5, 97.5])
  return float(low), float(high)


def _resampled_mean(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """values (runs, B): per replicate b, the mean over a resample of the runs with replacement."""
  runs, replicates = values.shape
  chosen = rng.integers(0, runs, (replicates, runs))
  return values[chosen, np.arange(replicates)[:, None]].mean(axis=1)


def estimate(
  test_sets: Mapping[int, TestSet],
  runs: Mapping[int, Sequence[np.ndarray]],
  endpoint: Endpoint,
  *,
  num_resamples: int = 2000,
  seed: int = 0,
) -> Estimate:
  """Mean of `endpoint` over runs (corpora weighing equally) and its hierarchical bootstrap 95%
  interval: runs resampled within each corpus, test speakers within each corpus.

  runs: {corpus: [clip scores of one run, ...]}.
  """
  rng = np.random.default_rng(seed)
  points, replicates = [], []
  for corpus in sorted(runs):
    test = test_sets[corpus]
    weights = test.speaker_weights(rng, num_resamples)
    points.append(np.mean([endpoint(test, s) for s in runs[corpus]]))
    per_run = np.stack([endpoint(test, s, weights) for s in runs[corpus]])
    replicates.append(_resampled_mean(per_run, rng))
  return Estimate(
    float(np.mean(points)),
    *_interval(np.mean(replicates, axis=0)),
    sum(len(r) for r in runs.values()),
  )


def paired_contrast(
  test_sets: Mapping[int, TestSet],
  pairs: Mapping[int, Sequence[tuple[np.ndarray, np.ndarray]]],
  endpoint: Endpoint,
  *,
  num_resamples: int = 2000,
  seed: int = 0,
) -> Contrast:
  """treatment - control of `endpoint` over pairs (control scores, treatment scores) that share
  corpus and seed. The t-test takes each pair's difference on the whole test set as one
  observation; the bootstrap resamples pairs within each corpus and speakers within each corpus
  (the same speakers for both members of a pair), and weighs corpora equally.
  """
  rng = np.random.default_rng(seed)
  differences, replicates, per_corpus = [], [], {}
  for corpus in sorted(pairs):
    test = test_sets[corpus]
    weights = test.speaker_weights(rng, num_resamples)
    point = np.array([endpoint(test, t) - endpoint(test, c) for c, t in pairs[corpus]])
    differences.append(point)
    per_corpus[corpus] = float(point.mean())
    per_pair = np.stack(
      [endpoint(test, t, weights) - endpoint(test, c, weights) for c, t in pairs[corpus]]
    )
    replicates.append(_resampled_mean(per_pair, rng))
  pooled = np.concatenate(differences)
  t, p = (
    scipy.stats.ttest_1samp(pooled, 0.0)
    if len(pooled) > 1 and np.ptp(pooled) > 0
    else (float("nan"), float("nan"))
  )
  return Contrast(
    float(np.mean(list(per_corpus.values()))),
    *_interval(np.mean(replicates, axis=0)),
    float(t),
    float(p),
    len(pooled),
    per_corpus,
  )


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the order given."""
  p = np.asarray(p_values, np.float64)
  adjusted = np.empty_like(p)
  running = 0.0
  for rank, i in enumerate(np.argsort(p)):
    running = max(running, min(1.0, (len(p) - rank) * p[i]))
    adjusted[i] = running
  return adjusted.tolist()


def pairs_needed(
  sd_of_differences: float, effect: float, *, factor: float = 2.8, extra: int = 2, most: int = 20
) -> int:
  """n = ceil((factor * SD / effect)^2) + extra, at most `most`: 80% power at two-sided 5% for a
  paired difference of `effect` (factor 2.8 ~ z_0.975 + z_0.8), plus a margin for the t-test."""
  return int(min(most, np.ceil((factor * sd_of_differences / effect) ** 2) + extra))
