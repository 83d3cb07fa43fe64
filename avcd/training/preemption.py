"""Noticing that the job is being preempted or interrupted, so that training can checkpoint and
stop in time.

Schedulers (Kubernetes, SLURM, spot and preemptible VMs) send SIGTERM some seconds before
SIGKILL; a user at the terminal presses Ctrl-C (SIGINT). The training loop asks
`PreemptionWatcher.stop_requested(step)` after every step; once it says yes, the loop saves that
step, waits for the save and stops: after SIGTERM it returns, so the process exits 0 and the next
start resumes from the step; after SIGINT it raises `Interrupted` (exit status 130).

One process: a handler sets a flag (nothing more: it runs between two bytecodes of the main
thread, where saving or even logging could deadlock). It then restores the signal's previous
handler, so a second SIGTERM acts as it would without avcd, and a second Ctrl-C raises
KeyboardInterrupt at once (the command line reports it in one line).

Several processes: JAX's preemption service (started by `jax.distributed.initialize`) catches
SIGTERM on any process and agrees on one step at which every process stops
(`multihost_utils.reached_preemption_sync_point`); a Python handler would replace JAX's, so none is
installed. Ctrl-C there stops at once (KeyboardInterrupt): the processes could not agree on a step.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
  """Ctrl-C stopped training after checkpointing a step; the message says which."""


class PreemptionWatcher:
  """Says at which step the run should checkpoint and stop because the job is being preempted."""

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self._requested = threading.Event()
    self.interrupted = False  # the stop was asked for by SIGINT (Ctrl-C), not SIGTERM
    self._previous_handlers = {}  # of the signals whose handler is still ours
    # signal.signal only works in the main thread; elsewhere (embedded use) nothing is caught.
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      for signum in _SIGNALS:
        previous = signal.signal(signum, self._on_signal)
        # None: a handler installed outside Python, which cannot be restored.
        self._previous_handlers[signum] = signal.SIG_DFL if previous is None else previous

  def _on_signal(self, signum, frame):
    del frame
    if not self._requested.is_set():
      self.interrupted = signum == signal.SIGINT
    self._requested.set()
    signal.signal(signum, self._previous_handlers.pop(signum))

  def stop_requested(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop. Every process must call it at every step."""
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()

  def close(self) -> None:
    """Gives each signal back to the handler it had before, unless one such signal already did."""
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)
    self._previous_handlers = {}
