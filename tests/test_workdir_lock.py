"""One job per workdir: a live holder refuses others, a dead one never blocks the next."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from avcd import workdir_lock
from tests.conftest import REPO

_HOLDER = """
import sys, time
from avcd import workdir_lock
with workdir_lock.WorkdirLock(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
  """A process holding tmp_path's lock until it is killed."""
  process = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, str(tmp_path)],
    stdout=subprocess.PIPE,
    text=True,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
  )
  assert process.stdout.readline().strip() == "held"
  yield process
  process.kill()
  process.wait()


def test_a_live_holder_refuses_and_a_killed_one_does_not_block(tmp_path, holder):
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {holder.pid}"):
    with workdir_lock.WorkdirLock(tmp_path):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir_lock.WorkdirLock(tmp_path) as lock:  # at once: the kernel dropped its flock
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  assert lock.path.read_text() == ""  # released


def _written_by_another_host(path: pathlib.Path, heartbeat_age: float) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
    json.dumps(
      dict(
        what="avcd train",
        host=f"not-{socket.gethostname()}",
        pid=1234,
        started="yesterday",
        token="abc",
        heartbeat=time.time() - heartbeat_age,
      )
    )
  )


def test_another_hosts_fresh_heartbeat_refuses_where_flock_does_not_reach(tmp_path):
  # A shared file system whose locks stay on each machine: only the heartbeat tells.
  _written_by_another_host(tmp_path / workdir_lock.LOCK_FILE, heartbeat_age=5)
  with pytest.raises(workdir_lock.WorkdirBusyError, match="heartbeat is 5 s old"):
    with workdir_lock.WorkdirLock(tmp_path):
      pass
  assert "not-" in (tmp_path / workdir_lock.LOCK_FILE).read_text()  # left as it was
  _written_by_another_host(
    tmp_path / workdir_lock.LOCK_FILE, heartbeat_age=workdir_lock.STALE_S + 1
  )
  with workdir_lock.WorkdirLock(tmp_path):  # a job that died without unlocking: taken over
    pass


def test_a_dead_holders_pid_reused_by_a_live_process_does_not_block(tmp_path):
  # The holder died without unlocking; its pid now belongs to another process (here: this one's
  # parent, alive and not a lock holder), as happens when containers restart and count from 1.
  lock_file = tmp_path / workdir_lock.LOCK_FILE
  lock_file.write_text(
    json.dumps(
      dict(
        what="avcd train",
        host=socket.gethostname(),
        pid=os.getppid(),
        started="yesterday",
        token="abc",
        heartbeat=time.time(),
      )
    )
  )
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_avcd_train_refuses_a_workdir_in_use_before_any_work(tmp_path, holder):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.cli",
      "train",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert f"{tmp_path} is in use by another avcd train" in result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]
