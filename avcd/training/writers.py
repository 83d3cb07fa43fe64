"""Metric writers: JSON lines and TensorBoard event files, in every install.

WORKDIR/metrics.jsonl holds one JSON object per write (readable while the run goes on, and by
any tool); WORKDIR/tensorboard/ holds the same scalars as TensorBoard events, written with
tensorboardX (protobuf and numpy only: no TensorFlow). Only process 0 writes.
"""

import json
import math
import pathlib
import time

import jax
from absl import logging


class JsonLinesWriter:
  """Appends one JSON object per write to WORKDIR/metrics.jsonl."""

  def __init__(self, path: pathlib.Path):
    self._path = pathlib.Path(path)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._file = self._path.open("a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: dict) -> None:
    record = {"step": int(step), "time": time.time()}
    for key, value in scalars.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else str(value)
    try:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()  # a few lines per log interval: readable while the run goes on
    except OSError as e:  # a full disk, a lost mount: say which file
      raise OSError(e.errno, e.strerror, str(self._path)) from e

  def write_hparams(self, hparams: dict) -> None:
    self._file.write(json.dumps({"hparams": hparams}, default=str) + "\n")

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Scalars and the hyperparameters (as text) in TensorBoard's event files."""

  def __init__(self, directory: pathlib.Path):
    import tensorboardX  # pylint: disable=g-import-not-at-top  (0.3 s; help stays instant)

    self._writer = tensorboardX.SummaryWriter(str(directory), flush_secs=30)

  def write_scalars(self, step: int, scalars: dict) -> None:
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), int(step))

  def write_hparams(self, hparams: dict) -> None:
    self._writer.add_text("hparams", f"```\n{json.dumps(hparams, indent=2, default=str)}\n```")

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricWriters:
  """Fans out to the JSON-lines and the TensorBoard writer (process 0 only)."""

  def __init__(self, workdir: str | pathlib.Path):
    self._writers = []
    if jax.process_index() != 0:
      return
    workdir = pathlib.Path(workdir)
    self._writers += [
      JsonLinesWriter(workdir / "metrics.jsonl"),
      TensorBoardWriter(workdir / "tensorboard"),
    ]

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

  def __enter__(self) -> "MetricWriters":
    return self

  def __exit__(self, exc_type, exc, traceback) -> bool:
    """Closes the writers. If the run is already failing, a failure to close (the last metrics
    not flushed, typically to the same full disk that failed it) is logged, and the run's own
    error stays the one reported."""
    try:
      self.close()
    except OSError as e:
      if exc is None:
        raise
      logging.warning("closing the metric writers failed too: %s", e)
    return False
