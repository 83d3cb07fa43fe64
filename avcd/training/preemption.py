"""Noticing that the job is being preempted, so that training can checkpoint and stop in time.

Schedulers (Kubernetes, SLURM, spot and preemptible VMs) send SIGTERM some seconds before
SIGKILL. The training loop asks `PreemptionWatcher.stop_requested(step)` after every step; once it
says yes, the loop saves that step, waits for the save and returns, so the process exits 0 and the
next start resumes from the step.

One process: a SIGTERM handler sets a flag (nothing more: it runs between two bytecodes of the main
thread, where saving or even logging could deadlock). It then restores the previous handler, so a
second SIGTERM acts as it would without avcd.

Several processes: JAX's preemption service (started by `jax.distributed.initialize`) catches
SIGTERM on any process and agrees on one step at which every process stops
(`multihost_utils.reached_preemption_sync_point`); a Python handler would replace JAX's, so none is
installed.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Says at which step the run should checkpoint and stop because the job is being preempted."""

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self._requested = threading.Event()
    self._previous_handler = signal.SIG_DFL
    # signal.signal only works in the main thread; elsewhere (embedded use) nothing is caught.
    self._installed = (
      not self._multi_process and threading.current_thread() is threading.main_thread()
    )
    if self._installed:
      previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      if previous is not None:  # None: a handler installed outside Python, which cannot be restored
        self._previous_handler = previous

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._requested.set()
    signal.signal(signal.SIGTERM, self._previous_handler)

  def stop_requested(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop. Every process must call it at every step."""
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()

  def close(self) -> None:
    """Gives SIGTERM back to the handler it had before, unless one SIGTERM already did."""
    if self._installed and not self._requested.is_set():
      signal.signal(signal.SIGTERM, self._previous_handler)
    self._installed = False
