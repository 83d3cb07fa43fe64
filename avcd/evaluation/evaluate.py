"""Scoring whole evaluation splits and writing their reports.

Every clip of a split is scored exactly once (the loader pads the last batch with filler rows,
which are dropped here by their record index), on every process; process 0 writes
`WORKDIR/eval/SPLIT/` (metrics.json, metrics.md, scores.csv, roc.png, score_histograms.png).
"""

import pathlib

import jax
import ml_collections
import numpy as np
import scipy.special
from absl import logging
from jax.experimental import multihost_utils

from avcd.core import inference, sharding
from avcd.evaluation import calibration as calibration_lib, localisation_report, metrics, reports
from data_pipelines import schema
from data_pipelines.reading import loader, split_index


def split_source(cfg: ml_collections.ConfigDict, spec: str) -> tuple[str, str]:
  """An `eval.splits` entry -> (TFDS builder, split): 'SPLIT' of data.builder, or 'BUILDER:SPLIT'
  of another corpus prepared in the same data_dir (e.g. 'cmdfd:wav2lip' for cross-dataset tests)."""
  builder, _, split = spec.rpartition(":")
  return builder or cfg.data.builder, split


def report_name(spec: str) -> str:
  return spec.replace(":", ".")


# Evaluation variants of the leading-silence shortcut: the report directory suffix of each.
LEADING_SILENCE = {"keep": "", "trim": "-silence_trimmed"}


def score_split(
  predict_fn,
  params,
  batch_stats,
  cfg: ml_collections.ConfigDict,
  split: str,
  mesh,
  *,
  trim_leading_silence: bool = False,
  media_hook_factory=None,
) -> list[dict]:
  """Per-clip records (reports.RECORD_FIELDS) of `split`, with uncalibrated probabilities, plus
  `frame_probability` (each frame's P(fake), from the frame logits) and `frame_labels` (T,) arrays
  and `true_segments` (the forged segments, seconds from the first scored frame).

  With trim_leading_silence, each clip is scored from its first non-silent frame on. With
  media_hook_factory (clip id -> schema.MediaHook), each clip is made again from its media through
  its hook (data_pipelines.reading.rebuilt_split) instead of read from the prepared shards.
  """
  data_cfg = ml_collections.ConfigDict(cfg.data.to_dict())
  data_cfg.trim_leading_silence = trim_leading_silence
  data_cfg.builder, split = split_source(cfg, split)
  dataset = loader.eval_dataset(
    data_cfg,
    cfg.eval,
    split=split,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    batch_multiple=sharding.local_batch_multiple(mesh),
    media_hook_factory=media_hook_factory,
  )
  scores, logits, records, frame_probabilities, frame_labels = [], [], [], [], []
  gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
  for batch in dataset:
    inputs = sharding.global_batch({k: batch[k] for k in inference.MODEL_INPUTS}, mesh)
    out = predict_fn(params, batch_stats, inputs)
    scores.append(gather(out["score"]))
    logits.append(gather(out["logit"]))
    records.append(gather(batch["record"]))
    # Per frame, for localisation: P(fake) of each frame and the frame's label, cut to the clip.
    probability = scipy.special.softmax(gather(out["frame_logits"]).astype(np.float64), axis=-1)
    labels, lengths = gather(batch["frame_labels"]), gather(batch["num_frames"])
    frame_probabilities += [p[:n, 1].copy() for p, n in zip(probability, lengths)]
    frame_labels += [y[:n].copy() for y, n in zip(labels, lengths)]
  records = np.concatenate(records)
  keep = records >= 0
  index = split_index.load_index(split_index.open_split(data_cfg.builder, data_cfg.data_dir, split))
  clips = index.clips(records[keep])
  if len(np.unique(records[keep])) != len(index):
    raise RuntimeError(
      f"{split}: scored {keep.sum()} rows for {len(index)} clips; every clip "
      "must be scored exactly once"
    )
  score, logit = np.concatenate(scores)[keep], np.concatenate(logits)[keep].astype(np.float64)
  probability = scipy.special.expit(logit)
  kept = np.flatnonzero(keep)
  first, usable = loader.clip_spans(data_cfg, index)
  return [
    dict(
      id=str(clips["id"][i]),
      dataset=str(clips["dataset"][i]),
      method=str(clips["method"][i]),
      category=str(clips["category"][i]),
      label=int(clips["label"][i]),
      score=float(score[i]),
      logit=float(logit[i]),
      probability=float(probability[i]),
      frame_probability=frame_probabilities[kept[i]],
      frame_labels=frame_labels[kept[i]],
      true_segments=scored_segments(
        index.fake_segments(record), first[record] / schema.FPS, usable[record] / schema.FPS
      ),
    )
    for i, record in enumerate(records[keep])
  ]


def scored_segments(segments: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
  """A clip's forged segments on the clock of its scored frames, which start `start_s` into the
  clip (a trimmed lead-in) and last `seconds` (data.max_frames): shifted, cut, empty ones gone."""
  shifted = np.clip(np.asarray(segments, np.float64) - start_s, 0.0, seconds)
  return shifted[shifted[:, 1] > shifted[:, 0]]


def calibrated(records: list[dict], calibration: calibration_lib.Calibration | None) -> list[dict]:
  """The records with `probability` the calibrated P(fake) (unchanged without a map)."""
  if calibration is None:
    return records
  probabilities = calibration.apply(np.array([r["logit"] for r in records]))
  return [dict(r, probability=float(p)) for r, p in zip(records, probabilities)]


def evaluate_splits(
  predict_fn,
  params,
  batch_stats,
  cfg: ml_collections.ConfigDict,
  mesh,
  workdir: str | pathlib.Path,
  *,
  source: dict | None = None,
  write: bool = True,
) -> dict[str, dict]:
  """Scores every split in `eval.splits` and returns {report name: metrics}.

  Each split is scored once per `eval.leading_silence` variant: 'keep' reports as SPLIT, 'trim'
  (clips scored from their first non-silent frame) as SPLIT-silence_trimmed; reports go to
  WORKDIR/eval/NAME.

  Calibration: with `eval.calibration_split`, a map (`eval.calibration_method`) is fitted there on
  whole clips and saved as WORKDIR/calibration.json for the checkpoint `source` (checkpoint_dir,
  step) names; without it, a map saved earlier for that checkpoint is used if there is one.
  Either way every split's P(fake) is the calibrated one, and its reports show the calibration
  before and after. With `eval.threshold_split`, the threshold chosen there (same variant, after
  calibration) is applied to the other splits too. A split named more than once is scored once.
  A split holding partially forged clips also gets the localisation report
  (avcd.evaluation.localisation_report), under the key 'localisation' of its result (on the
  process that writes reports). Callers check first that the splits exist
  (config_checks.check_splits).
  """
  scored = {}

  def records_of(split: str, trim: bool) -> list[dict]:
    if (split, trim) not in scored:
      scored[split, trim] = score_split(
        predict_fn, params, batch_stats, cfg, split, mesh, trim_leading_silence=trim
      )
    return scored[split, trim]

  calibration = None
  if cfg.eval.calibration_split:
    records = records_of(cfg.eval.calibration_split, False)
    calibration = calibration_lib.fit(
      [r["label"] for r in records],
      [r["logit"] for r in records],
      method=cfg.eval.calibration_method,
      fitted_on=cfg.eval.calibration_split,
      source=source,
    )
    logging.info("calibration: %s", calibration.describe())
    if write and jax.process_index() == 0:
      calibration.save(workdir)
  elif source is not None:
    calibration = calibration_lib.find(source, workdir)
    if calibration is not None:
      logging.info("applying the saved calibration (%s)", calibration.describe())

  results = {}
  for variant in cfg.eval.leading_silence:
    trim = variant == "trim"
    chosen_threshold = None
    if cfg.eval.threshold_split:
      records = calibrated(records_of(cfg.eval.threshold_split, trim), calibration)
      chosen_threshold = metrics.choose_threshold(
        np.array([r["label"] for r in records]),
        np.array([r["probability"] for r in records]),
        name=cfg.eval.threshold_split,
      )
    for split in cfg.eval.splits:
      name = report_name(split) + LEADING_SILENCE[variant]
      records = calibrated(records_of(split, trim), calibration)
      kwargs = dict(
        split=name,
        chosen_threshold=chosen_threshold,
        threshold_split=cfg.eval.threshold_split,
        calibration=calibration,
      )
      out_dir = pathlib.Path(workdir) / "eval" / name
      writing = write and jax.process_index() == 0
      if writing:
        results[name] = reports.write_report(records, out_dir, **kwargs)
        logging.info("%s: wrote %s", name, out_dir)
      else:
        results[name] = reports.split_metrics(records, **kwargs)
      # Localisation feeds no checkpoint choice: only the process that writes reports runs it.
      if writing and localisation_report.has_partial_forgeries(records):
        results[name]["localisation"] = localisation_report.write(
          records, out_dir, cfg.eval.localisation, split=name
        )
  return results


def summary(results: dict[str, dict], workdir: str | pathlib.Path, source: str) -> str:
  """What `avcd train` and `avcd eval` print at the end: each split's table (methods as columns)
  and where its reports are."""
  lines = []
  for split, result in results.items():
    directory = pathlib.Path(workdir) / "eval" / split
    lines += [
      f"\n## {split} ({source})\n",
      reports.markdown_table(result),
      "",
      reports.calibration_line(result),
    ]
    files = reports.REPORT_FILES
    if "localisation" in result:
      lines += ["", localisation_report.markdown_table(result["localisation"]), ""]
      files += localisation_report.FILES
    lines.append(f"reports in {directory}: {', '.join(files)}")
  return "\n".join(lines)
