"""A checkpoint's scores under everyday degradations of the media: `avcd eval --perturbations`.

Each evaluation split is scored once clean and once per perturbation setting
(data_pipelines.reading.perturbations): every clip is made again from its media with the degradation
applied before features are computed (data_pipelines.reading.rebuilt_split), so re-encoding, noise
or blur reach the MFCC and the model as they would in use. The clean row goes through the same path
with no degradation, and equals the split's ordinary evaluation.

Per setting: ROC-AUC overall and per method, accuracy at P(fake) = 0.5, and ECE (the calibration
map of the checkpoint applied, when there is one). Written to WORKDIR/eval/SPLIT/:
robustness.json (every number and the settings), robustness.md (tables: AUC per method for each
setting, with its drop from clean) and robustness.png (AUC against severity, one panel per
perturbation).
"""

import functools
import math
import pathlib
import time

import jax
import numpy as np
from absl import logging
from matplotlib.figure import Figure

from avcd.evaluation import calibration as calibration_lib, evaluate, metrics, reports
from data_pipelines.reading import perturbations

FILES = ("robustness.json", "robustness.md", "robustness.png")


def setting_metrics(records: list[dict]) -> dict:
  """AUC overall and per method, accuracy at 0.5 and ECE of one setting's records."""
  labels = np.array([r["label"] for r in records])
  scores = np.array([r["score"] for r in records])
  probabilities = np.array([r["probability"] for r in records])
  methods = np.array([r["method"] for r in records], dtype=object)
  overall = metrics.clip_metrics(labels, scores, probabilities, name="robustness")
  return dict(
    auc=overall["auc"],
    acc=overall["acc"],
    ece=calibration_lib.expected_calibration_error(labels, probabilities),
    per_method={
      method: metrics.clip_metrics(labels[mask], scores[mask], probabilities[mask], name=method)[
        "auc"
      ]
      for method, mask in metrics.fake_groups(labels, methods).items()
    },
  )


def evaluate_robustness(
  predict_fn,
  params,
  batch_stats,
  cfg,
  mesh,
  workdir: str | pathlib.Path,
  settings: list[perturbations.Setting],
  *,
  seed: int = 0,
  calibration: calibration_lib.Calibration | None = None,
) -> dict[str, dict]:
  """{split report name: robustness result} for every split of `eval.splits` (whole clips)."""
  results = {}
  for split in cfg.eval.splits:
    rows = []
    for setting in [perturbations.CLEAN, *settings]:
      start = time.perf_counter()
      records = evaluate.score_split(
        predict_fn,
        params,
        batch_stats,
        cfg,
        split,
        mesh,
        media_hook_factory=functools.partial(perturbations.degrade, setting, seed),
      )
      records = evaluate.calibrated(records, calibration)
      row = dict(setting=perturbations.describe([setting])[0], **setting_metrics(records))
      rows.append(row)
      logging.info(
        "%s %s: AUC %.4f (%.1f s)", split, setting.name, row["auc"], time.perf_counter() - start
      )
    result = dict(
      split=split,
      seed=seed,
      calibration=None if calibration is None else calibration.describe(),
      rows=rows,
    )
    name = evaluate.report_name(split)
    if jax.process_index() == 0:
      write(result, pathlib.Path(workdir) / "eval" / name)
    results[name] = result
  return results


def _percent(value) -> str:
  return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown(result: dict) -> str:
  """The robustness tables of one split: AUC (%) per method and overall for every setting, the
  overall drop from clean, accuracy at 0.5 and ECE."""
  rows = result["rows"]
  clean = rows[0]
  methods = sorted(clean["per_method"])
  header = ["setting", *methods, "All", "Δ All", "ACC @ 0.5", "ECE"]
  lines = [
    f"# Robustness of split `{result['split']}`",
    "",
    "ROC-AUC (%) of every method's fakes against all real clips, with each degradation applied "
    "to the decoded media before features are computed "
    "(`data_pipelines/reading/perturbations.py`); "
    f"Δ All is the change from clean. Seed {result['seed']}; P(fake) "
    + (f"calibrated ({result['calibration']})." if result["calibration"] else "uncalibrated."),
    "",
    "| " + " | ".join(header) + " |",
    "|---|" + "---:|" * (len(header) - 1),
  ]
  for row in rows:
    cells = [
      row["setting"]["name"],
      *(_percent(row["per_method"].get(m)) for m in methods),
      _percent(row["auc"]),
      f"{100 * (row['auc'] - clean['auc']):+.1f}",
      _percent(row["acc"]),
      _percent(row["ece"]),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(result: dict, path: pathlib.Path) -> None:
  """AUC against the perturbation's level, one panel per perturbation, a line per method and one
  for the whole split; clean as the leftmost point of every panel."""
  rows = result["rows"]
  clean = rows[0]
  by_perturbation = {}
  for row in rows[1:]:
    by_perturbation.setdefault(row["setting"]["perturbation"], []).append(row)
  names = list(by_perturbation) or ["clean"]
  columns = min(4, len(names))
  grid_rows = math.ceil(len(names) / columns)
  figure = Figure(figsize=(3.6 * columns, 3.0 * grid_rows + 0.6), layout="constrained")
  figure.suptitle(f"AUC under degradations, split {result['split']}")
  axes_grid = figure.subplots(grid_rows, columns, squeeze=False)
  methods = sorted(clean["per_method"])
  # One y range for every panel, down to the lowest AUC measured: below-chance AUCs (a detector
  # whose scores a degradation inverts) must show, not fall off the axes.
  aucs = [v for row in rows for v in (row["auc"], *row["per_method"].values())]
  lowest = min((v for v in aucs if v is not None and not math.isnan(v)), default=1.0)
  y_range = (min(40.0, 10 * math.floor(10 * lowest) - 2), 101)
  for axes, name in zip(axes_grid.flat, names):
    settings = by_perturbation.get(name, [])
    labels = ["clean"] + [f"{row['setting']['level']:g}" for row in settings]
    positions = np.arange(len(labels))
    for method in [*methods, reports.OVERALL]:
      values = [
        (row["auc"] if method == reports.OVERALL else row["per_method"].get(method, np.nan))
        for row in [clean, *settings]
      ]
      axes.plot(
        positions,
        [100 * v for v in values],
        marker="o",
        markersize=3,
        color="black" if method == reports.OVERALL else None,
        linewidth=2.0 if method == reports.OVERALL else 1.0,
        label=method,
      )
    parameter = settings[0]["setting"]["parameter"] if settings else ""
    axes.set(title=name, xlabel=parameter, ylabel="AUC (%)", ylim=y_range)
    axes.set_xticks(positions, labels, fontsize="small")
    axes.axhline(50, color="0.7", linestyle=":", linewidth=1)
    axes.grid(alpha=0.3)
  for axes in axes_grid.flat[len(names) :]:
    axes.set_axis_off()
  handles, labels = axes_grid.flat[0].get_legend_handles_labels()
  figure.legend(handles, labels, loc="outside lower center", ncols=min(6, len(labels)))
  reports.save_figure(figure, path)


def write(result: dict, out_dir: pathlib.Path) -> None:
  """The FILES of one split's result, each written atomically."""
  out_dir.mkdir(parents=True, exist_ok=True)
  reports.write_json(out_dir / "robustness.json", result)
  reports.write_text(out_dir / "robustness.md", markdown(result))
  plot(result, out_dir / "robustness.png")
