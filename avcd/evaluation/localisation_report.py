"""Where in the clip: the localisation report of an evaluation split.

A split whose fakes are forged in segments only (LAV-DF, AV-Deepfake1M, the synthetic corpus's
partial forgeries) is also scored the way AV-Deepfake1M's localisation benchmark scores it. Each
clip's per-frame P(fake) becomes scored segments (`localisation.proposals_from_frame_scores`, with
the settings of `eval.localisation`); they are matched against the clip's true forged segments
in seconds, at the corpus's own precision (schema.SEGMENTS_FIELD; AV-Deepfake1M's benchmark scores
against its metadata the same way), not against the frame labels, which would snap every boundary
to the 40 ms frame grid. Per method (its fakes plus every real clip, as for the clip-level table)
and for the whole split:

  AP@0.5, 0.75, 0.9, 0.95 and AR@50, 30, 20, 10, 5   AV-Deepfake1M's definitions (localisation.py)
  frame AUC     ROC-AUC of each frame's P(fake) against its label, all frames of the clips pooled
  video AUC     ROC-AUC of the clip's score against its label (the clip-level table's AUC)

Files in WORKDIR/eval/SPLIT: localisation.json, localisation.md, segments.jsonl (per clip the
segments found, start/end in seconds and score, and the true ones) and frame_scores.png (per-frame
P(fake) of a few fake clips against their true and found segments).

Times are relative to the first scored frame: with `eval.leading_silence='trim'` that is the first
non-silent frame, for the true segments and the found ones alike.
"""

import json
import pathlib
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
import sklearn.metrics
from matplotlib.figure import Figure

from avcd.evaluation import localisation, metrics, reports
from data_pipelines import schema

OVERALL = reports.OVERALL
FILES = ("localisation.json", "localisation.md", "segments.jsonl", "frame_scores.png")
_METRIC_ROWS = (
  *(f"ap@{t:g}" for t in localisation.AP_IOU_THRESHOLDS),
  *(f"ar@{n}" for n in localisation.AR_N_PROPOSALS),
  "frame_auc",
  "video_auc",
)


def has_partial_forgeries(records: Sequence[Mapping]) -> bool:
  """Whether some fake clip holds real frames, i.e. the split asks where, not only whether."""
  return any(r["label"] == schema.FAKE and not np.all(r["frame_labels"]) for r in records)


def proposals_of(frame_probability: np.ndarray, settings: ml_collections.ConfigDict) -> np.ndarray:
  """(N, 3) (score, start_s, end_s) segments found in one clip's per-frame P(fake)."""
  return localisation.proposals_from_frame_scores(
    frame_probability,
    fps=schema.FPS,
    smoothing_frames=settings.smoothing_frames,
    smoothing=settings.smoothing,
    thresholds=tuple(settings.thresholds),
    min_frames=settings.min_frames,
    nms_iou=settings.nms_iou,
    max_proposals=settings.max_proposals,
  )


def check_settings(settings: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the `eval.localisation` field that proposals could not use."""
  proposals_of(np.zeros(1), settings)
  if settings.plot_clips < 1:
    raise ValueError(f"plot_clips must be at least 1, got {settings.plot_clips}")


def _metrics(records: Sequence[Mapping], proposals: Mapping, segments: Mapping) -> dict:
  ids = [r["id"] for r in records]
  result = localisation.localisation_metrics(
    {i: proposals[i] for i in ids}, {i: segments[i] for i in ids}
  )
  frame_labels = np.concatenate([r["frame_labels"] for r in records])
  frame_probability = np.concatenate([r["frame_probability"] for r in records])
  labels = np.array([r["label"] for r in records])
  scores = np.array([r["score"] for r in records])
  for key, (y, s) in {
    "frame_auc": (frame_labels, frame_probability),
    "video_auc": (labels, scores),
  }.items():
    # sklearn directly: millions of frames on AV-Deepfake1M, and only the AUC is wanted here.
    result[key] = sklearn.metrics.roc_auc_score(y, s) if len(np.unique(y)) == 2 else np.nan
  result["clips"] = dict(real=int(np.sum(labels == 0)), fake=int(np.sum(labels == 1)))
  result["true_segments"] = int(sum(len(segments[i]) for i in ids))
  return result


def localisation_result(
  records: Sequence[Mapping], settings: ml_collections.ConfigDict
) -> tuple[dict, dict]:
  """({'settings', 'per_method': {method or OVERALL: metrics}}, {clip id: proposals})."""
  proposals = {r["id"]: proposals_of(r["frame_probability"], settings) for r in records}
  segments = {r["id"]: np.asarray(r["true_segments"]).reshape(-1, 2) for r in records}
  labels = np.array([r["label"] for r in records])
  groups = metrics.fake_groups(labels, [r["method"] for r in records])
  per_method = {OVERALL: _metrics(records, proposals, segments)}
  for method, members in groups.items():
    per_method[method] = _metrics(
      [r for r, member in zip(records, members) if member], proposals, segments
    )
  return dict(settings=settings.to_dict(), per_method=per_method), proposals


def markdown_table(result: Mapping) -> str:
  """Metrics as rows, methods as columns (the whole split first), percentages."""
  columns = list(result["per_method"])
  lines = [
    "| Localisation | " + " | ".join(columns) + " |",
    "|---|" + "---:|" * len(columns),
  ]
  for key in _METRIC_ROWS:
    cells = [reports.percent(result["per_method"][c][key]) for c in columns]
    lines.append(
      f"| {key.upper() if key.startswith(('ap', 'ar')) else key} | {' | '.join(cells)} |"
    )
  counts = [
    f"{m['clips']['real']} + {m['clips']['fake']} ({m['true_segments']})"
    for m in result["per_method"].values()
  ]
  lines.append(f"| Clips real + fake (segments) | {' | '.join(counts)} |")
  return "\n".join(lines)


def _plot_frame_scores(
  records: Sequence[Mapping], proposals: Mapping, path: pathlib.Path, split: str, count: int
) -> None:
  """Per-frame P(fake) of up to `count` fake clips (one per method in turn, in split order), the
  true segments shaded, the found segments above 0.5 as bars with their scores."""
  by_method: dict[str, list[Mapping]] = {}
  for record in records:
    if record["label"] == schema.FAKE:
      by_method.setdefault(record["method"], []).append(record)
  chosen = []
  for rank in range(max((len(v) for v in by_method.values()), default=0)):
    chosen += [clips[rank] for clips in by_method.values() if rank < len(clips)]
  chosen = chosen[:count]
  figure = Figure(figsize=(7.0, 1.9 * max(len(chosen), 1)), layout="constrained")
  if not chosen:
    figure.text(0.5, 0.5, f"{split}: no fake clips", ha="center")
  for row, record in enumerate(chosen):
    axes = figure.add_subplot(len(chosen), 1, row + 1)
    seconds = (np.arange(len(record["frame_probability"])) + 0.5) / schema.FPS
    for start, end in record["true_segments"]:
      axes.axvspan(start, end, color="tab:red", alpha=0.15, linewidth=0)
    axes.plot(seconds, record["frame_probability"], color="tab:blue", linewidth=1.2)
    labelled = []  # nested proposals share a bar: only the best of each overlap gets its score
    for score, start, end in proposals[record["id"]]:  # best first
      if score >= 0.5:
        axes.plot([start, end], [1.04, 1.04], color="black", linewidth=3, solid_capstyle="butt")
        if all(end <= first or start >= last for first, last in labelled):
          axes.text(start, 1.08, f"{score:.2f}", fontsize=7)
          labelled.append((start, end))
    axes.set(ylim=(0.0, 1.18), xlim=(0.0, seconds[-1] + 0.5 / schema.FPS), ylabel="P(fake)")
    axes.set_title(f"{record['id']} ({record['method']})", fontsize=9)
  if chosen:
    axes.set_xlabel("seconds (shaded: forged; bars: segments found, score >= 0.5)")
  reports.save_figure(figure, path)


def write(
  records: Sequence[Mapping],
  out_dir: str | pathlib.Path,
  settings: ml_collections.ConfigDict,
  *,
  split: str,
) -> dict:
  """Writes FILES into out_dir and returns the result (see localisation_result)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  result, proposals = localisation_result(records, settings)
  reports.write_json(out_dir / "localisation.json", result)
  reports.write_text(
    out_dir / "localisation.md", f"# Localisation: {split}\n\n{markdown_table(result)}\n"
  )
  lines = [
    json.dumps(
      dict(
        id=r["id"],
        method=r["method"],
        label=r["label"],
        segments=[[round(s, 3), round(e, 3), round(p, 4)] for p, s, e in proposals[r["id"]]],
        true_segments=np.round(r["true_segments"], 3).tolist(),
      )
    )
    for r in records
  ]
  reports.write_text(out_dir / "segments.jsonl", "\n".join(lines) + "\n")
  _plot_frame_scores(records, proposals, out_dir / "frame_scores.png", split, settings.plot_clips)
  return result
