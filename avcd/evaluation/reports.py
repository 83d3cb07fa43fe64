"""Evaluation reports of one split from its per-clip records: JSON, CSV, Markdown and plots.

A record is a mapping with the keys of RECORD_FIELDS: id, dataset, method, category ('' when the
corpus has none), label (0 real, 1 fake), score (ranking score, e.g. the mean fake logit), logit
(the clip's fake-minus-real logit, whose sigmoid is the uncalibrated P(fake)) and probability
(P(fake), calibrated when a calibration map was applied). write_report writes, under its output
directory:
  * metrics.json: the overall metrics at threshold 0.5 as top-level keys
    (avcd.evaluation.metrics.METRIC_KEYS),
    'per_method' and (when categories are present) 'per_category' at 0.5, 'intervals' (bootstrap
    CIs of auc / ap / eer overall, per method and per category), and, when a threshold chosen on
    another split is given, 'at_chosen_threshold' with the same metrics at that threshold, and
    'calibration': the map applied (or null), and ECE (equal-width and equal-mass bins), Brier
    score and reliability bins of the raw and of the calibrated P(fake). NaN is written as null,
    so the file is strict JSON.
  * scores.csv: one row per clip with RECORD_FIELDS, enough to recompute everything.
  * metrics.md: tables laid out like the paper's (methods as columns, metrics as rows, in %).
  * roc.png: the ROC curve of each method (all reals vs its fakes) and of the whole split.
  * score_histograms.png: per method, histograms of the reals' and that method's fakes' scores.
  * reliability.png: the reliability diagram of P(fake), raw and (when applied) calibrated.
Every file is written to a temporary file in the same directory and renamed into place.
Only numpy, scikit-learn and matplotlib are used (no JAX, no model).
"""

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import scipy.special
from matplotlib.figure import Figure
from sklearn import metrics as sk_metrics

from avcd.evaluation import calibration as calibration_lib, metrics

RECORD_FIELDS = ("id", "dataset", "method", "category", "label", "score", "logit", "probability")
OVERALL = "All"  # column of the whole split in the Markdown tables

# Rows of the Markdown tables: (label, metric key); ranking metrics carry their bootstrap CI.
_RANKING_ROWS = (("AUC", "auc"), ("AP", "ap"), ("EER", "eer"))
_THRESHOLD_ROWS = (
  ("ACC", "acc"),
  ("BACC", "bacc"),
  ("F1", "f1"),
  ("HTER", "hter"),
  ("Real recall", "real_recall"),
  ("Fake recall", "fake_recall"),
)


def _normalised(record: Mapping) -> dict:
  """A record with exactly RECORD_FIELDS, typed (a missing or None category becomes ''; a missing
  logit, as in reports written before it was recorded, is recovered from the probability)."""
  probability = float(record["probability"])
  logit = record.get("logit")
  return dict(
    id=str(record["id"]),
    dataset=str(record["dataset"]),
    method=str(record["method"]),
    category=str(record.get("category") or ""),
    label=int(record["label"]),
    score=float(record["score"]),
    logit=float(calibration_lib.logit(probability) if logit in (None, "") else logit),
    probability=probability,
  )


def _columns(records: Sequence[Mapping]) -> dict[str, np.ndarray]:
  """Field -> (N,) array; labels int64, score / probability float64, text fields object."""
  return dict(
    method=np.asarray([record["method"] for record in records], dtype=object),
    category=np.asarray([record["category"] for record in records], dtype=object),
    label=np.asarray([record["label"] for record in records], dtype=np.int64),
    score=np.asarray([record["score"] for record in records], dtype=np.float64),
    logit=np.asarray([record["logit"] for record in records], dtype=np.float64),
    probability=np.asarray([record["probability"] for record in records], dtype=np.float64),
  )


def _breakdowns(columns: Mapping[str, np.ndarray], threshold: float, split: str) -> dict[str, dict]:
  """Overall metrics at `threshold` as top-level keys, plus per_method and per_category."""
  arrays = (columns["label"], columns["score"], columns["probability"])
  result = metrics.clip_metrics(*arrays, threshold=threshold, name=split)
  result["per_method"] = metrics.per_method_metrics(
    *arrays, columns["method"], threshold=threshold, name=split
  )
  if any(columns["category"]):
    result["per_category"] = metrics.per_category_metrics(
      *arrays, columns["category"], threshold=threshold, name=split
    )
  return result


def split_metrics(
  records: Sequence[Mapping],
  *,
  split: str,
  chosen_threshold: float | None = None,
  threshold_split: str = "",
  calibration: calibration_lib.Calibration | None = None,
  num_resamples: int = 1000,
  confidence: float = 0.95,
  seed: int = 0,
) -> dict:
  """The metrics.json content (see the module docstring) of one split's records, NaN kept.

  `calibration`: the map the records' probabilities were calibrated with, if any."""
  records = [_normalised(record) for record in records]
  columns = _columns(records)
  result = {"split": split}
  result.update(_breakdowns(columns, metrics.DEFAULT_THRESHOLD, split))

  def intervals(mask, name):
    return metrics.bootstrap_intervals(
      columns["label"][mask],
      columns["score"][mask],
      num_resamples=num_resamples,
      confidence=confidence,
      seed=seed,
      name=name,
    )

  everything = np.ones(len(records), dtype=bool)
  result["intervals"] = dict(
    confidence=confidence,
    num_resamples=num_resamples,
    seed=seed,
    overall=intervals(everything, split),
    per_method={
      method: intervals(mask, f"{split}/{method}")
      for method, mask in metrics.fake_groups(columns["label"], columns["method"]).items()
    },
  )
  if "per_category" in result:
    result["intervals"]["per_category"] = {
      category: intervals(mask, f"{split}/{category}")
      for category, mask in metrics.fake_groups(columns["label"], columns["category"]).items()
    }
  if chosen_threshold is not None:
    at_chosen = _breakdowns(columns, chosen_threshold, split)
    at_chosen["threshold_split"] = threshold_split
    result["at_chosen_threshold"] = at_chosen
  labels = columns["label"]
  result["calibration"] = dict(
    map=None if calibration is None else dataclasses.asdict(calibration),
    raw=calibration_lib.split_calibration(labels, scipy.special.expit(columns["logit"])),
    calibrated=None
    if calibration is None
    else calibration_lib.split_calibration(labels, columns["probability"]),
  )
  return result


def calibration_line(split_result: Mapping) -> str:
  """One line on how far P(fake) can be read as a probability, e.g. for the end of a table."""
  section = split_result.get("calibration")
  if not section:
    return ""

  def measures(values):
    return (
      f"ECE {percent(values['ece'])}% (equal-mass bins {percent(values['ece_equal_mass'])}%), "
      f"Brier {values['brier']:.4f}"
    )

  if section["map"] is None:
    return f"Calibration of P(fake): {measures(section['raw'])}; no calibration map applied."
  fitted = calibration_lib.Calibration(**section["map"])
  return (
    f"Calibration of P(fake): {measures(section['calibrated'])} with the {fitted.describe()} "
    f"(uncalibrated: {measures(section['raw'])})."
  )


def percent(value) -> str:
  """A fraction as a percentage with two decimals; n/a for NaN or None (null in JSON)."""
  if value is None or math.isnan(value):
    return "n/a"
  return f"{100 * value:.2f}"


def markdown_table(split_result: Mapping, *, breakdown: str = "per_method") -> str:
  """The paper-style table of split_metrics' result (or metrics.json loaded back).

  Columns: each method (or category, with breakdown='per_category') then the whole split; rows:
  AUC, AP and EER with their bootstrap CI, then the threshold metrics at 0.5 and, when present,
  at the chosen threshold, then the clip counts. Values are percentages.
  """
  groups = dict(split_result.get(breakdown, {}))
  groups[OVERALL] = split_result
  intervals = dict(split_result["intervals"].get(breakdown, {}))
  intervals[OVERALL] = split_result["intervals"]["overall"]
  confidence = round(100 * split_result["intervals"]["confidence"])
  column_names = list(groups)
  lines = [
    "| Metric (%) | " + " | ".join(column_names) + " |",
    "|---|" + "---:|" * len(column_names),
  ]

  def row(label, cell):
    lines.append(f"| {label} | " + " | ".join(cell(name) for name in column_names) + " |")

  for label, key in _RANKING_ROWS:
    row(
      f"{label} [{confidence}% CI]",
      lambda name, key=key: (
        f"{percent(groups[name][key])} "
        f"[{percent(intervals[name][key]['low'])}, "
        f"{percent(intervals[name][key]['high'])}]"
      ),
    )
  at_chosen = split_result.get("at_chosen_threshold")
  settings = [(groups, metrics.DEFAULT_THRESHOLD, "")]
  if at_chosen is not None:
    chosen_groups = dict(at_chosen.get(breakdown, {}))
    chosen_groups[OVERALL] = at_chosen
    source = f", {at_chosen['threshold_split']}" if at_chosen["threshold_split"] else ""
    settings.append((chosen_groups, at_chosen["threshold"], source))
  for results, threshold, source in settings:
    for label, key in _THRESHOLD_ROWS:
      row(
        f"{label} @ {threshold:.4g}{source}",
        lambda name, results=results, key=key: percent(results[name][key]),
      )
  row(
    "Clips (real + fake)",
    lambda name: (
      f"{groups[name]['tn'] + groups[name]['fp']} + {groups[name]['tp'] + groups[name]['fn']}"
    ),
  )
  return "\n".join(lines)


def _markdown_document(split_result: Mapping) -> str:
  """metrics.md: a heading, the per-method table and, when present, the per-category one."""
  parts = [
    f"# Evaluation of split `{split_result['split']}`",
    "",
    "Per method (or category): all real clips of the split against that method's fakes. "
    "AUC, AP and EER rank clips by score; the other metrics call a clip fake when its "
    "probability reaches the threshold.",
    "",
    markdown_table(split_result),
  ]
  if split_result.get("calibration"):
    parts += ["", calibration_line(split_result) + " Diagram: reliability.png."]
  if split_result.get("per_category"):
    parts += ["", "## Per category", "", markdown_table(split_result, breakdown="per_category")]
  return "\n".join(parts) + "\n"


def json_ready(value):
  """Recursively: NaN / inf floats become None (strict JSON), numpy scalars Python numbers."""
  if isinstance(value, Mapping):
    return {key: json_ready(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(item) for item in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _write_atomically(path: Path, write: Callable[[io.IOBase], None], *, binary: bool) -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it over `path`."""
  descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with (
      os.fdopen(descriptor, "wb")
      if binary
      else os.fdopen(descriptor, "w", encoding="utf-8", newline="")
    ) as file:
      write(file)
      file.flush()
      os.fsync(file.fileno())
    os.chmod(temporary, 0o644)  # mkstemp makes it private; reports are meant to be shared
    os.replace(temporary, path)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise


def write_json(path: Path, value) -> None:
  """`value` as strict, indented JSON (NaN as null), written atomically."""
  text = json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n"
  _write_atomically(path, lambda file: file.write(text), binary=False)


def write_text(path: Path, text: str) -> None:
  _write_atomically(path, lambda file: file.write(text), binary=False)


def write_scores_csv(records: Sequence[Mapping], path: str | os.PathLike) -> None:
  """scores.csv: a header of RECORD_FIELDS, then one row per record (floats round-trip exactly)."""

  def write(file):
    writer = csv.DictWriter(file, fieldnames=RECORD_FIELDS)
    writer.writeheader()
    for record in records:
      row = _normalised(record)
      for field in ("score", "logit", "probability"):
        row[field] = repr(row[field])
      writer.writerow(row)

  _write_atomically(Path(path), write, binary=False)


def read_scores_csv(path: str | os.PathLike) -> list[dict]:
  """The records of a scores.csv, typed as write_scores_csv wrote them."""
  with open(path, encoding="utf-8", newline="") as file:
    return [_normalised(row) for row in csv.DictReader(file)]


def save_figure(figure: Figure, path: Path) -> None:
  _write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=120), binary=True)


def _plot_roc(columns: Mapping[str, np.ndarray], path: Path, split: str) -> None:
  """One ROC curve per method (all reals vs its fakes) and the whole split's, on one axes."""
  figure = Figure(figsize=(6.4, 6.0), layout="constrained")
  axes = figure.add_subplot()
  axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="chance")
  curves = list(metrics.fake_groups(columns["label"], columns["method"]).items())
  curves.append((OVERALL, np.ones(columns["label"].size, dtype=bool)))
  colours = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"]
  styles = ("-", "--", "-.", ":")
  drawn = [c for c in curves if np.unique(columns["label"][c[1]]).size == 2]
  for index, (name, mask) in enumerate(drawn):
    labels, scores = columns["label"][mask], columns["score"][mask]
    false_positive_rate, true_positive_rate, _ = sk_metrics.roc_curve(labels, scores)
    auc = sk_metrics.auc(false_positive_rate, true_positive_rate)
    is_overall = name == OVERALL
    # Detectors often reach AUC 1 on several methods, whose curves then coincide: each curve gets
    # its own dash pattern, earlier ones are drawn wider, and markers show the corner points.
    axes.plot(
      false_positive_rate,
      true_positive_rate,
      label=f"{name} (AUC {auc:.3f})",
      color="black" if is_overall else colours(index % colours.N),
      linestyle=styles[index % len(styles)],
      linewidth=1.2 + 2.4 * (len(drawn) - 1 - index) / max(len(drawn) - 1, 1),
      marker="o" if len(false_positive_rate) <= 12 else None,
      markersize=4,
      alpha=0.85,
      zorder=2 + index,
    )
  axes.set(
    xlim=(-0.015, 1),  # a perfect curve runs along x = 0 and y = 1: keep it off the frame
    ylim=(0, 1.015),
    xlabel="false positive rate (reals called fake)",
    ylabel="true positive rate (fakes caught)",
    title=f"ROC, split {split}",
  )
  axes.set_aspect("equal")
  axes.grid(alpha=0.3)
  axes.legend(loc="lower right", fontsize="small")
  save_figure(figure, path)


def _plot_score_histograms(columns: Mapping[str, np.ndarray], path: Path, split: str) -> None:
  """Per method, density histograms of the reals' scores and that method's fakes' scores, with
  the score at which P(fake) crosses 0.5 (interpolated from the clips' own scores)."""
  labels, scores, methods = columns["label"], columns["score"], columns["method"]
  threshold_score = _score_at_probability(scores, columns["probability"], 0.5)
  is_real = labels == 0
  fake_methods = sorted({str(method) for method in methods[~is_real]})
  panels = [(method, (methods == method) & ~is_real) for method in fake_methods]
  if not panels:  # a split without fakes: show the reals alone
    panels = [("no fakes", np.zeros_like(is_real))]
  num_columns = min(3, len(panels))
  num_rows = math.ceil(len(panels) / num_columns)
  figure = Figure(figsize=(4.2 * num_columns, 3.2 * num_rows), layout="constrained")
  figure.suptitle(f"Clip scores, split {split}")
  grid = figure.subplots(num_rows, num_columns, squeeze=False)
  for axes, (name, is_method_fake) in zip(grid.flat, panels):
    real_scores, fake_scores = scores[is_real], scores[is_method_fake]
    # Shared bins, and densities, because reals often outnumber a method's fakes many times.
    bins = np.histogram_bin_edges(np.concatenate([real_scores, fake_scores]), bins=40)
    for values, colour, label in (
      (real_scores, "tab:blue", "real"),
      (fake_scores, "tab:red", name),
    ):
      if values.size:
        axes.hist(
          values,
          bins=bins,
          density=True,
          alpha=0.55,
          color=colour,
          label=f"{label} ({values.size})",
        )
    # The score is the clip's fake-class logit; P(fake) = 0.5 where it equals the real-class one,
    # which the score alone does not show: mark the score at which the decision flips, if known.
    if threshold_score is not None:
      axes.axvline(
        threshold_score, color="black", linestyle=":", linewidth=1, label="P(fake) = 0.5"
      )
    axes.set(title=name, xlabel="clip score (mean fake-class frame logit)", ylabel="density")
    axes.legend(fontsize="small")
  for axes in grid.flat[len(panels) :]:
    axes.set_axis_off()
  save_figure(figure, path)


def _score_at_probability(
  scores: np.ndarray, probabilities: np.ndarray, level: float
) -> float | None:
  """The score where P(fake) crosses `level`, from the clips' (score, probability) pairs; None if
  no clip lies on each side. Probability rises with score but also depends on the real class's
  logit, so this is the crossing along the clips, not an exact function of the score."""
  below, above = scores[probabilities < level], scores[probabilities >= level]
  if not below.size or not above.size:
    return None
  return float((below.max() + above.min()) / 2)


REPORT_FILES = (
  "metrics.md",
  "metrics.json",
  "scores.csv",
  "roc.png",
  "score_histograms.png",
  "reliability.png",
)


def write_report(
  records: Sequence[Mapping],
  out_dir: str | os.PathLike,
  *,
  split: str,
  chosen_threshold: float | None = None,
  threshold_split: str = "",
  calibration: calibration_lib.Calibration | None = None,
  num_resamples: int = 1000,
  confidence: float = 0.95,
  seed: int = 0,
) -> dict:
  """Writes the REPORT_FILES of one split.

  Args:
    records: the split's per-clip records (RECORD_FIELDS).
    out_dir: created if missing, e.g. WORKDIR/eval/SPLIT.
    split: the split's name, used in titles and warnings.
    chosen_threshold: a threshold from avcd.evaluation.metrics.choose_threshold on
      `threshold_split`; the threshold metrics are then reported at it as well as at 0.5.
    threshold_split: the split the chosen threshold comes from.
    calibration: the map the records' probabilities were calibrated with, if any.
    num_resamples, confidence, seed: of the bootstrap intervals.

  Returns:
    The split_metrics result (NaN, not None, for undefined metrics).
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records = [_normalised(record) for record in records]
  result = split_metrics(
    records,
    split=split,
    chosen_threshold=chosen_threshold,
    threshold_split=threshold_split,
    calibration=calibration,
    num_resamples=num_resamples,
    confidence=confidence,
    seed=seed,
  )
  write_json(out_dir / "metrics.json", result)
  write_scores_csv(records, out_dir / "scores.csv")
  write_text(out_dir / "metrics.md", _markdown_document(result))
  columns = _columns(records)
  _plot_roc(columns, out_dir / "roc.png", split)
  _plot_score_histograms(columns, out_dir / "score_histograms.png", split)
  calibration_lib.plot_reliability(
    result["calibration"]["raw"],
    result["calibration"]["calibrated"],
    lambda figure: save_figure(figure, out_dir / "reliability.png"),
    split,
  )
  return result
