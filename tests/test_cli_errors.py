"""A user's mistake gets one line naming the flag, field or file, and exit status 2 (usage) or 1
(a failure while working); never a traceback."""

import os
import re
import subprocess
import sys

import pytest

from data_pipelines import manifests
from tests.conftest import REPO


def avcd(*args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "avcd.cli", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
  )


def error_line(result: subprocess.CompletedProcess) -> str:
  """The one line avcd printed for the error; fails the test on a traceback."""
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if ": error: " in line]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize(
  "args,status,expected",
  [
    (
      ["--config.train.num_epoch=3"],
      2,
      "--config.train.num_epoch: train has no field 'num_epoch' (did you mean 'train.num_epochs'?)",
    ),
    (["--config.trian.num_epochs=3"], 2, "the config has no field 'trian' (did you mean 'train'?)"),
    (["--config.data.max_frames=-1"], 2, "data.max_frames=-1: must be a number >= 1"),
    (["--config.data.max_frames=abc"], 2, "--config.data.max_frames=abc"),
    (["--config.train.best_metric=acu"], 2, "train.best_metric='acu': choose one of"),
    (["--config.loss.divergence=kl"], 2, "loss.divergence='kl': choose one of"),
    (["--config.mesh.data=64"], 2, "mesh.data=64 x mesh.fsdp=1 needs 64 devices"),
    (
      ["--config.teachers.cache=True", "--config.data.train_window=16"],
      2,
      "teachers.cache=True needs data.train_window >= data.max_frames",
    ),
  ],
)
def test_bad_config_fields_are_one_line_before_any_work(args, status, expected, tmp_path):
  result = avcd("train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", *args)
  assert result.returncode == status
  assert expected in error_line(result)
  assert not (tmp_path / "run" / "data").exists()  # nothing was generated


def test_missing_or_broken_config_files(tmp_path):
  result = avcd("train", "--config=configs/nothere.py", f"--workdir={tmp_path}")
  assert result.returncode == 2
  assert "--config=configs/nothere.py: no such config file" in error_line(result)
  result = avcd("train", "--config=configs/synthetic.py:bogus", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "unknown variant 'bogus'" in error_line(result)


def test_unknown_commands_and_flags():
  result = avcd("bogus")
  assert result.returncode == 2 and "unknown command 'bogus'" in result.stderr
  result = avcd("export", "--workdir=x", "--output=y", "--bogus_flag=1")
  assert result.returncode == 2 and "bogus_flag" in error_line(result)
  help_text = avcd("predict", "--help").stdout
  assert "Exit status: 0 on success, 1 when the work failed" in help_text


@pytest.fixture
def small_file_system(tmp_path):
  """A 2.5 MB tmpfs: room for one tiny checkpoint step, not two (skipped where mount is denied)."""
  mount_point = tmp_path / "small"
  mount_point.mkdir()
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount_point)],
    capture_output=True,
    check=False,
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  yield mount_point
  subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_stops_training_at_the_failed_save_in_one_line(small_file_system, tmp_path):
  result = avcd(
    "train",
    "--config=configs/tiny.py",
    f"--workdir={small_file_system / 'run'}",
    f"--config.data.data_dir={tmp_path / 'data'}",
  )
  assert result.returncode == 1
  line = error_line(result)
  failed = re.search(r"saving checkpoint step (\d+) to \S+ failed: No space left on device", line)
  # Which write meets the full disk first depends on timing: a checkpoint save (usually), or the
  # metrics file between two saves. Either way one line names the file and the cause.
  assert failed or re.search(r"/run/metrics\.jsonl: No space left on device$", line), result.stderr[
    -3000:
  ]
  # Nothing follows the line: no exception that Orbax's background tasks left unretrieved.
  assert "exception was never retrieved" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.rstrip().endswith(line), result.stderr[-3000:]
  errors = [text for text in result.stderr.splitlines() if text.startswith(("E", "Traceback"))]
  assert len(errors) < 10
  if failed:  # training stopped at the failed save: no later step was trained on and logged
    logged = [int(step) for step in re.findall(r"\bstep (\d+)/\d+ loss", result.stderr)]
    assert logged and max(logged) <= int(failed.group(1)), result.stderr[-3000:]
  # Which step fills the disk depends on timing; the steps before it are committed and intact.
  committed = [
    int(p.name) for p in (small_file_system / "run" / "checkpoints").iterdir() if p.name.isdigit()
  ]
  assert committed and (failed is None or max(committed) < int(failed.group(1)))


def test_prepare_mistakes_are_one_line(tmp_path):
  (tmp_path / "a_file").write_text("")
  latin1 = tmp_path / "latin1.csv"
  latin1.write_bytes(
    ",".join(manifests.COLUMNS.values()).encode() + b"\n" + "café,x".encode("latin-1") + b"\n"
  )
  cases = [
    (
      [f"--output={tmp_path / 'a_file'}", f"--manifest={tmp_path / 'x.csv'}"],
      "is a file, not a directory",
    ),
    ([f"--output={tmp_path / 'out'}", f"--manifest={tmp_path}"], "is a directory, not a CSV"),
    (
      [
        f"--output={tmp_path / 'out'}",
        f"--manifest={tmp_path / 'x.csv'}",
        "--max_av_mismatch_s=-1",
      ],
      "max_av_mismatch_s",
    ),
  ]
  for args, message in cases:
    result = avcd("prepare", *args)
    assert result.returncode == 2
    assert message in error_line(result)
  # A manifest that cannot be read is a failure of the work (1), not of the command line.
  result = avcd("prepare", f"--output={tmp_path / 'out'}", f"--manifest={latin1}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert f"{latin1}:2: not UTF-8 text (byte 0xe9)" in error_line(result)


def test_eval_without_a_checkpoint_says_so_before_preparing_a_corpus(tmp_path):
  result = avcd("eval", "--config=configs/tiny.py", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert str(tmp_path / "checkpoints") in error_line(result)
  assert not (tmp_path / "data").exists()  # checked first: no corpus was made for nothing
