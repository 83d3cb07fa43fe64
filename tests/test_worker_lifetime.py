"""Worker processes die with their parent, even when the parent is killed with SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import random_corpus
from tests.conftest import REPO

_PARENT = """
import multiprocessing, sys, time
from data_pipelines import worker_lifetime
from data_pipelines.building import process_pool

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


_RESUMED = """
import gc, sys, time
from absl import app
from grain._src.python.dataset.transformations import process_prefetch
from avcd import config_lib
from data_pipelines.reading import loader

# Grain closes a worker-process iterator from a multiprocessing exit finalizer that races with
# its queues' feeder threads, which close the queues' pipes on their way out. A busy machine
# (a training run's) loses the race; delaying that finalizer loses it here every time.
closes_at_exit = process_prefetch._close_if_alive
process_prefetch._close_if_alive = lambda ref: time.sleep(1) or closes_at_exit(ref)

def main(argv):
  cfg = config_lib.data(builder=argv[1], data_dir=argv[2], train_split="train", max_frames=120,
                        train_window=100, bucket_lengths=(32, 64, 130), frame_budget=256,
                        prefetch=2, num_workers=2)
  make = lambda: iter(loader.train_dataset(cfg, seed=0, process_index=0, process_count=1,
                                           batch_multiple=2))
  first = make()
  next(first)
  state = first.get_state()
  first.close()
  resumed = make()
  resumed.set_state(state)  # as restoring a checkpoint does
  next(resumed)
  # Held to the end, as a training run holds its iterator: in a reference cycle that the
  # collector (off here, as between its rare full passes) frees only at exit.
  cycle = {"iterator": resumed}
  cycle["self"] = cycle
  gc.disable()

if __name__ == "__main__":
  app.run(main)
"""


def test_a_resumed_iterator_of_worker_processes_exits_quietly(tmp_path):
  builder = random_corpus.build(str(tmp_path / "data"), "small")
  script = tmp_path / "resumed.py"
  script.write_text(_RESUMED)

  result = subprocess.run(
    [sys.executable, str(script), builder, str(tmp_path / "data")],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
  )

  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
