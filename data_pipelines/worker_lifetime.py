"""Worker processes that die with their parent, whatever kills the parent.

A worker started by `spawn` lives on when its parent is killed with SIGKILL (or crashes): it
is re-parented to init and keeps its memory (and, through it, multiprocessing's resource tracker)
until it finishes its queue, if ever. Every pool of worker processes avcd starts calls
`die_with_parent` (bound to the parent's pid by `initializer()`) first thing in each worker:
  * on Linux, the kernel sends the worker SIGKILL when its parent exits (PR_SET_PDEATHSIG);
  * everywhere, a daemon thread checks once a second that the parent is still the one it was
    started by, and exits the worker when it is not (other systems, or a parent whose spawning
    thread ended before it, which the kernel counts as the parent's death on Linux too).
"""

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
_CHECK_INTERVAL_S = 1.0


def die_with_parent(*unused, parent: int) -> None:
  """Makes this (worker) process end when `parent` (the pid of the process that started it) does.

  Call it with functools.partial(die_with_parent, parent=os.getpid()) from the parent: a worker
  still starting when its parent is killed would otherwise take init for its parent. Positional
  arguments are ignored, so that it can be Grain's worker_init_fn (worker index, count).
  """
  del unused
  if sys.platform.startswith("linux"):
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  if os.getppid() != parent:  # the parent died before the request took effect
    os._exit(1)  # pylint: disable=protected-access

  def watch():
    while os.getppid() == parent:
      threading.Event().wait(_CHECK_INTERVAL_S)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="avcd-parent-watch", daemon=True).start()


def initializer():
  """`die_with_parent` bound to this process as the parent, to pass to a pool (picklable)."""
  return functools.partial(die_with_parent, parent=os.getpid())
