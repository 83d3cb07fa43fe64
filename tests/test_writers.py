"""Metric writers: what they write, and that a failing close never hides the run's own error."""

import errno
import json

import pytest

from avcd.training import writers


def test_scalars_reach_the_json_lines_and_tensorboard(tmp_path):
  with writers.MetricWriters(tmp_path) as writer:
    writer.write_scalars(3, {"loss": 0.5, "bad": float("nan")})
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert record["step"] == 3 and record["loss"] == 0.5 and record["bad"] == "nan"
  assert any((tmp_path / "tensorboard").iterdir())


def _full_disk_on_close(monkeypatch):
  def close(self):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(writers.JsonLinesWriter, "close", close)


def test_a_failing_close_does_not_replace_the_error_that_ended_the_run(tmp_path, monkeypatch):
  # As on a full disk: the checkpoint save fails first, then flushing the metrics fails too.
  _full_disk_on_close(monkeypatch)
  with pytest.raises(RuntimeError, match="saving checkpoint step 4"):
    with writers.MetricWriters(tmp_path):
      raise RuntimeError("saving checkpoint step 4 failed")


def test_a_failing_close_of_a_run_that_went_well_is_an_error(tmp_path, monkeypatch):
  _full_disk_on_close(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    with writers.MetricWriters(tmp_path):
      pass
