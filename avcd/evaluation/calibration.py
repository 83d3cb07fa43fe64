"""Whether a detector's P(fake) can be read as a probability, and a map that makes it so.

Measures, per split: expected calibration error with equal-width bins (the usual ECE: bins of
[0, 1] of the same width, each weighted by its share of clips) and with equal-mass bins (bins of
the same number of clips, which does not leave the extreme bins nearly empty), the Brier score,
and a reliability diagram.

The map is fitted on a validation split (`eval.calibration_split`) and stored beside the
checkpoints, in WORKDIR/calibration.json: temperature scaling (one parameter, T: P = sigmoid(d / T)
where d is the clip's fake-minus-real logit), or Platt scaling (two: P = sigmoid(a d + b)). Either
keeps the ranking of clips, hence every AUC; it changes P(fake) and ECE, and Platt scaling also
what a threshold of 0.5 decides. `avcd eval`, `avcd export` (the SavedModel's `probability`) and
`avcd predict` apply it when it is there and was fitted for the checkpoint they read.
"""

import dataclasses
import json
import math
import pathlib

import numpy as np
import scipy.optimize
import scipy.special

CALIBRATION_FILE = "calibration.json"
METHODS = ("temperature", "platt")
DEFAULT_BINS = 15


def logit(probabilities: np.ndarray) -> np.ndarray:
  """d = log p - log(1 - p), the fake-minus-real clip logit a P(fake) came from (exact only
  away from 0 and 1: records carry the logit itself)."""
  p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1 - 1e-12)
  return np.log(p) - np.log1p(-p)


def _bins(probabilities: np.ndarray, num_bins: int, scheme: str) -> np.ndarray:
  """Per clip, its bin: equal-width bins of [0, 1], or equal-mass bins of the sorted clips."""
  if scheme == "width":
    return np.minimum((probabilities * num_bins).astype(int), num_bins - 1)
  if scheme == "mass":
    order = np.argsort(probabilities, kind="stable")
    bins = np.empty(len(probabilities), int)
    bins[order] = np.arange(len(probabilities)) * num_bins // max(len(probabilities), 1)
    return bins
  raise ValueError(f"unknown binning {scheme!r}: 'width' or 'mass'")


def expected_calibration_error(
  labels: np.ndarray,
  probabilities: np.ndarray,
  *,
  num_bins: int = DEFAULT_BINS,
  scheme: str = "width",
) -> float:
  """sum over bins b of (n_b / N) |mean label in b - mean P(fake) in b| (empty bins count 0)."""
  labels = np.asarray(labels, np.float64)
  probabilities = np.asarray(probabilities, np.float64)
  if labels.size == 0:
    return float("nan")
  bins = _bins(probabilities, num_bins, scheme)
  counts = np.bincount(bins, minlength=num_bins)
  observed = np.bincount(bins, weights=labels, minlength=num_bins)
  predicted = np.bincount(bins, weights=probabilities, minlength=num_bins)
  filled = counts > 0
  gaps = np.abs(observed[filled] - predicted[filled])  # sums: |n_b mean_y - n_b mean_p|
  return float(gaps.sum() / labels.size)


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
  """Mean squared difference of P(fake) and the label."""
  labels = np.asarray(labels, np.float64)
  return float(np.mean((np.asarray(probabilities, np.float64) - labels) ** 2))


def reliability(
  labels: np.ndarray, probabilities: np.ndarray, num_bins: int = DEFAULT_BINS
) -> dict:
  """Per equal-width bin: clip count, mean P(fake), observed share of fakes (NaN when empty)."""
  labels = np.asarray(labels, np.float64)
  probabilities = np.asarray(probabilities, np.float64)
  bins = _bins(probabilities, num_bins, "width")
  counts = np.bincount(bins, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_p = np.bincount(bins, weights=probabilities, minlength=num_bins) / counts
    observed = np.bincount(bins, weights=labels, minlength=num_bins) / counts
  return dict(
    edges=np.linspace(0, 1, num_bins + 1).tolist(),
    counts=counts.tolist(),
    mean_probability=mean_p.tolist(),
    observed=observed.tolist(),
  )


def split_calibration(
  labels: np.ndarray, probabilities: np.ndarray, num_bins: int = DEFAULT_BINS
) -> dict:
  """What the reports record of a split: both ECEs, the Brier score and the diagram's bins."""
  return dict(
    ece=expected_calibration_error(labels, probabilities, num_bins=num_bins, scheme="width"),
    ece_equal_mass=expected_calibration_error(
      labels, probabilities, num_bins=num_bins, scheme="mass"
    ),
    brier=brier_score(labels, probabilities),
    num_bins=num_bins,
    reliability=reliability(labels, probabilities, num_bins),
  )


TEMPERATURE_BOUND_LOG = math.log(100)  # the temperature is searched in [1/100, 100]


@dataclasses.dataclass(frozen=True)
class Calibration:
  """P(fake) = sigmoid(scale * d + bias), d the clip's fake-minus-real logit.

  Temperature scaling is scale = 1 / T, bias 0 (it never changes which side of 0.5 a clip is on).
  `checkpoint_dir` and `step` name the checkpoint it was fitted for: a map belongs to one set of
  weights, so it is applied only to that checkpoint.
  """

  method: str
  scale: float
  bias: float
  fitted_on: str
  num_clips: int
  checkpoint_dir: str | None = None
  step: int | None = None
  # Why the fitted map is not a proper optimum, when it is not (the search ended on its bound or
  # did not converge); None for a fit that found its optimum.
  not_optimal: str | None = None

  @property
  def temperature(self) -> float:
    return 1.0 / self.scale

  def apply(self, logits: np.ndarray) -> np.ndarray:
    """Calibrated P(fake) of clips with fake-minus-real logits `logits`."""
    return scipy.special.expit(self.scale * np.asarray(logits, np.float64) + self.bias)

  def describe(self) -> str:
    if self.method == "temperature":
      text = f"temperature {self.temperature:.3g} fitted on {self.fitted_on}"
    else:
      text = f"Platt scale {self.scale:.3g}, bias {self.bias:.3g}, fitted on {self.fitted_on}"
    return text + (f" (not an optimum: {self.not_optimal})" if self.not_optimal else "")

  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(directory) / CALIBRATION_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
    partial.replace(path)
    return path

  @classmethod
  def load(cls, directory: str | pathlib.Path) -> "Calibration | None":
    """DIRECTORY/calibration.json, or None when there is none."""
    path = pathlib.Path(directory) / CALIBRATION_FILE
    if not path.is_file():
      return None
    try:
      return cls(**json.loads(path.read_text()))
    except (TypeError, ValueError) as e:
      raise ValueError(f"{path}: not a calibration written by avcd ({e})") from e

  def fits(self, source: dict) -> bool:
    """Whether this map was fitted for the checkpoint `source` (checkpoint_dir, step) names."""
    return self.step == source["step"] and _same_path(self.checkpoint_dir, source["checkpoint_dir"])


def _same_path(a: str | None, b: str | None) -> bool:
  return a is not None and b is not None and pathlib.Path(a).resolve() == pathlib.Path(b).resolve()


def find(source: dict, *directories: str | pathlib.Path) -> Calibration | None:
  """The calibration fitted for the checkpoint `source` names (a restored student's source:
  checkpoint_dir and step): looked for in `directories` and in the run directory holding the
  checkpoints; None when none of them has one for that checkpoint."""
  candidates = [*directories, pathlib.Path(source["checkpoint_dir"]).parent]
  for directory in dict.fromkeys(pathlib.Path(d).absolute() for d in candidates):
    calibration = Calibration.load(directory)
    if calibration is not None and calibration.fits(source):
      return calibration
  return None


def fit(
  labels: np.ndarray,
  logits: np.ndarray,
  *,
  method: str = "temperature",
  fitted_on: str = "",
  source: dict | None = None,
) -> Calibration:
  """The map of `method` minimising the negative log-likelihood of the labels given the clips'
  fake-minus-real logits; `source` (checkpoint_dir, step) names the checkpoint they came from."""
  if method not in METHODS:
    raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")
  y = np.asarray(labels, np.float64)
  if y.size == 0 or y.min() == y.max():
    raise ValueError(
      f"calibration needs real and fake clips; {fitted_on or 'the split'} has "
      f"{int(y.size - y.sum())} real and {int(y.sum())} fake"
    )
  d = np.asarray(logits, np.float64)

  def nll(scale, bias):
    z = scale * d + bias
    return float(np.mean(np.logaddexp(0.0, z) - y * z))

  not_optimal = None
  if method == "temperature":
    # log T in a wide bracket: T from 1/100 (sharpen) to 100 (soften).
    result = scipy.optimize.minimize_scalar(
      lambda log_t: nll(math.exp(-log_t), 0.0),
      bounds=(-TEMPERATURE_BOUND_LOG, TEMPERATURE_BOUND_LOG),
      method="bounded",
    )
    scale, bias = math.exp(-result.x), 0.0
    # The bounded search stops within its tolerance (~1e-5) of a bound it runs into.
    if abs(result.x) > TEMPERATURE_BOUND_LOG - 1e-3:
      not_optimal = (
        f"the search stopped at its bound T = {1 / scale:.3g}: on {fitted_on or 'the split'} "
        + (
          "a sharper temperature always fits better (its clips are separated)"
          if result.x < 0
          else "a softer temperature always fits better (its logits carry little information)"
        )
      )
  else:
    result = scipy.optimize.minimize(
      lambda v: nll(v[0], v[1]),
      x0=np.array([1.0, 0.0]),
      method="Nelder-Mead",
      options=dict(xatol=1e-6, fatol=1e-9),
    )
    scale, bias = (float(v) for v in result.x)
    if not result.success:
      not_optimal = f"the search did not converge ({result.message})"
  source = source or {}
  return Calibration(
    method,
    float(scale),
    float(bias),
    fitted_on,
    int(y.size),
    checkpoint_dir=source.get("checkpoint_dir"),
    step=source.get("step"),
    not_optimal=not_optimal,
  )


def plot_reliability(before: dict, after: dict | None, save, split: str) -> None:
  """Reliability diagram (observed share of fakes against mean P(fake), per bin) with the clip
  counts below; the calibrated probabilities beside the raw ones when there are both. `save`
  receives the matplotlib Figure."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  figure = Figure(figsize=(5.6, 6.2), layout="constrained")
  top, bottom = figure.subplots(2, 1, height_ratios=(3, 1), sharex=True)
  top.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="perfectly calibrated")
  centres = np.convolve(before["reliability"]["edges"], [0.5, 0.5], "valid")
  width = 1.0 / before["num_bins"]
  for result, colour, name, offset in (
    (before, "tab:red", "raw", -0.2),
    (after, "tab:blue", "calibrated", 0.2),
  ):
    if result is None:
      continue
    bins = result["reliability"]
    top.plot(
      bins["mean_probability"],
      bins["observed"],
      "o-",
      color=colour,
      label=f"{name}: ECE {100 * result['ece']:.1f}%, Brier {result['brier']:.3f}",
    )
    bottom.bar(centres + offset * width, bins["counts"], width=0.4 * width, color=colour)
  top.set(
    xlim=(0, 1), ylim=(0, 1), ylabel="observed share of fakes", title=f"Reliability, split {split}"
  )
  top.legend(fontsize="small", loc="upper left")
  top.grid(alpha=0.3)
  bottom.set(xlabel="P(fake) (bin of width %.2f)" % width, ylabel="clips", yscale="symlog")
  save(figure)
