"""One training job per workdir: `WORKDIR/avcd.lock`.

Two jobs in one workdir would write the same checkpoint steps and interleave metrics.jsonl, so
`avcd train` holds this lock from start to end. Process 0 of a job takes it for the whole job.

Two mechanisms, because file systems differ:
  * an exclusive `flock` on the file: the kernel drops it when the process dies however it dies,
    so a dead job never blocks the next; it covers every process on one machine, and NFSv4 or
    Lustre (mounted with flock) extend it to every machine;
  * the file's content, a heartbeat: the holder's host, pid and start time, rewritten every
    HEARTBEAT_S seconds. On a shared file system whose flock does not reach other machines
    (some FUSE and object-store mounts), a fresh heartbeat of another host still refuses; one
    older than STALE_S is a job that died without unlocking, and is taken over.
"""

import datetime
import fcntl
import json
import os
import pathlib
import socket
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_FILE = "avcd.lock"
HEARTBEAT_S = 30.0
STALE_S = 4 * HEARTBEAT_S


class WorkdirBusyError(RuntimeError):
  """Another live job holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Holds WORKDIR/avcd.lock (see the module docstring); a context manager."""

  def __init__(self, workdir: str | pathlib.Path, *, what: str = "avcd train"):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._what = what
    self._file = None
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self) -> "WorkdirLock":
    problem = ""
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirBusyError as e:
        problem = str(e)
    if jax.process_count() > 1:
      busy = bool(multihost_utils.broadcast_one_to_all(np.int32(bool(problem))))
      if busy and not problem:
        problem = f"{self.path} is held by another job (see the log of process 0)"
    if problem:
      raise WorkdirBusyError(problem)
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _holder(self) -> dict:
    try:
      return json.loads(self.path.read_text() or "{}")
    except (OSError, ValueError):
      return {}

  def _busy(self, holder: dict, reason: str) -> WorkdirBusyError:
    since = holder.get("started", "?")
    return WorkdirBusyError(
      f"{self.path.parent} is in use by another {holder.get('what', 'avcd job')} (host "
      f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since}; {reason}). Use "
      f"another workdir, or wait for it to end; a lock whose job died is released by itself "
      f"(at once on this machine, within {STALE_S:.0f} s elsewhere)."
    )

  def _acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a+")  # pylint: disable=consider-using-with
    flocked = False
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
      flocked = True
    except BlockingIOError:
      self._leave()
      raise self._busy(self._holder(), "it holds the lock") from None
    except OSError as e:  # a file system without locks: the heartbeat alone decides
      logging.warning("%s: flock not supported (%s); relying on the heartbeat", self.path, e)
    holder = self._holder()
    if holder and holder.get("token") is not None:
      age = time.time() - float(holder.get("heartbeat", 0))
      same_host = holder.get("host") == socket.gethostname()
      # With flock held, no process of this host holds the lock: a live process with the
      # recorded pid is another one that reused it (common in containers), not the holder.
      if (
        same_host
        and not flocked
        and _alive(int(holder.get("pid", -1)))
        and holder.get("pid") != os.getpid()
      ):
        self._leave()
        raise self._busy(holder, "its process is alive")
      if not same_host and age < STALE_S:
        self._leave()
        raise self._busy(holder, f"its heartbeat is {age:.0f} s old")
      logging.warning(
        "taking over %s: its job (host %s, pid %s) is gone",
        self.path,
        holder.get("host"),
        holder.get("pid"),
      )
    self._info = dict(
      what=self._what,
      host=socket.gethostname(),
      pid=os.getpid(),
      started=datetime.datetime.now().isoformat(timespec="seconds"),
      token=os.urandom(8).hex(),
    )
    self._beat()
    self._thread = threading.Thread(target=self._heartbeats, name="avcd-workdir-lock", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    self._file.seek(0)
    self._file.truncate()
    self._file.write(json.dumps(dict(self._info, heartbeat=time.time())))
    self._file.flush()

  def _heartbeats(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._beat()
      except OSError as e:  # the workdir's file system failing shows elsewhere too
        logging.warning("cannot refresh %s: %s", self.path, e)

  def _leave(self) -> None:
    """Closes the file without touching its content (another job's heartbeat)."""
    if self._file is not None:
      self._file.close()
      self._file = None

  def release(self) -> None:
    """Stops the heartbeat, empties the file and drops the lock (idempotent)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._file is not None:
      try:
        self._file.seek(0)
        self._file.truncate()
        fcntl.flock(self._file, fcntl.LOCK_UN)
      except OSError:
        pass
      self._file.close()
      self._file = None
