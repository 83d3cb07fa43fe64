"""Metric writers: JSON lines always, plus clu's TensorBoard writer when TensorFlow is installed.

clu's `metric_writers` package imports TensorFlow at import time, so the core install (no TF)
writes JSON lines only; with the `tf` extra, scalars also go through clu's writer to TensorBoard.
Only process 0 writes.
"""

import json
import math
import pathlib
import time

import jax
from absl import logging


class JsonLinesWriter:
  """Appends one JSON object per write to WORKDIR/metrics.jsonl (clu MetricWriter methods)."""

  def __init__(self, path: pathlib.Path):
    self._path = pathlib.Path(path)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._file = self._path.open("a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: dict) -> None:
    record = {"step": int(step), "time": time.time()}
    for key, value in scalars.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else str(value)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()  # a few lines per log interval: readable while the run goes on

  def write_hparams(self, hparams: dict) -> None:
    self._file.write(json.dumps({"hparams": hparams}, default=str) + "\n")

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class MetricWriters:
  """Fans out to the JSON-lines writer and, if available, clu's TensorBoard writer."""

  def __init__(self, workdir: str | pathlib.Path):
    self._writers = []
    if jax.process_index() != 0:
      return
    workdir = pathlib.Path(workdir)
    self._writers.append(JsonLinesWriter(workdir / "metrics.jsonl"))
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.info("TensorFlow/TensorBoard not installed: writing metrics.jsonl only")
    else:
      self._writers.append(metric_writers.SummaryWriter(str(workdir / "tensorboard")))

  def write_scalars(self, step: int, scalars: dict) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams: dict) -> None:
    for writer in self._writers:
      writer.write_hparams(hparams)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()
