"""Worker processes die with their parent, even when the parent is killed with SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

_PARENT = """
import multiprocessing, sys, time
from data_pipelines import worker_lifetime
from data_pipelines.corpora import process_pool

def child(platform, die_with_parent, reports):
  sys.platform = platform  # 'other': only the watching thread, as on systems without prctl
  die_with_parent()
  report_and_sleep(reports)

def report_and_sleep(path):
  import os, pathlib, time
  pathlib.Path(path, str(os.getpid())).touch()
  time.sleep(600)

if __name__ == "__main__":
  mode = sys.argv[1]
  if mode == "pool":  # avcd prepare's pool, its two workers busy for 10 minutes
    print("started", flush=True)
    for _ in process_pool.imap_unordered(report_and_sleep, [(sys.argv[2],)] * 4,
                                         num_workers=2):
      pass
  else:
    process = multiprocessing.get_context("spawn").Process(
        target=child, args=(mode, worker_lifetime.initializer(), sys.argv[2]))
    process.start()
    print("started", flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init to reap it is dead
    return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["pool", "linux", "other"])
def test_workers_die_when_their_parent_is_killed(mode, tmp_path):
  script = tmp_path / "parent.py"
  script.write_text(_PARENT)
  reports = tmp_path / "pids"
  reports.mkdir()
  parent = subprocess.Popen(
    [sys.executable, str(script), mode, str(reports)],
    stdout=subprocess.PIPE,
    text=True,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
  )
  try:
    parent.stdout.readline()
    expected = 2 if mode == "pool" else 1  # workers that have started and reported themselves
    workers, deadline = [], time.monotonic() + 60
    while len(workers) < expected and time.monotonic() < deadline:
      time.sleep(0.2)
      workers = [int(p.name) for p in reports.iterdir()]
    assert len(workers) == expected
    assert all(_alive(pid) for pid in workers)
  finally:
    parent.send_signal(signal.SIGKILL)
    parent.wait()
  deadline = time.monotonic() + 10
  while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.2)
  survivors = [pid for pid in workers if _alive(pid)]
  for pid in survivors:
    os.kill(pid, signal.SIGKILL)
  assert not survivors, f"workers {survivors} outlived their killed parent"
