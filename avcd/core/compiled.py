"""Jitted programs compiled ahead of their first call for each batch shape."""

import itertools
import time

import jax
from absl import logging
from orbax.checkpoint import multihost

# How long a process waits for the others to finish compiling a program (a large model on a busy
# host takes minutes; past this a process has died or hangs).
COMPILE_BARRIER_TIMEOUT_S = 3600
# Barrier names must be unique: every process compiles the same programs in the same order, so a
# count of compilations in this process names the same barrier in each.
_compilations = itertools.count()


class ShapeCompiled:
  """A jitted step compiled ahead of its first call for each batch shape, saying so in the log:
  compiling takes seconds to minutes, and a silent first step looks like a hang."""

  def __init__(self, jitted, name: str):
    self._jitted = jitted
    self._name = name
    self._compiled = {}
    self.compile_seconds = 0.0  # spent compiling so far (throughput excludes it)

  def __call__(self, *args):
    batch = next(a for a in args if isinstance(a, dict) and "num_frames" in a)
    key = tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()) if hasattr(v, "shape"))
    if key not in self._compiled:
      rows, length = batch["faces"].shape[:2]
      logging.info("compiling the %s for batches of %d clips x %d frames", self._name, rows, length)
      start = time.perf_counter()
      self._compiled[key] = self._jitted.lower(*args).compile()
      seconds = time.perf_counter() - start
      self.compile_seconds += seconds
      logging.info("compiled the %s (%d x %d) in %.1f s", self._name, rows, length, seconds)
      _wait_for_every_process(f"avcd-compiled-{next(_compilations)}-{rows}x{length}")
    return self._compiled[key](*args)


def _wait_for_every_process(name: str) -> None:
  """Returns once every process has compiled the program: gloo sets up a program's CPU
  collectives at its first run and gives the other processes 30 s to join (a limit XLA fixes), so
  a host that compiles more than 30 s later than another would fail the run. The wait goes
  through the coordination service, not a collective. A lone process returns at once."""
  if jax.process_count() > 1:
    multihost.get_barrier_sync_fn()(key=name, timeout_ms=COMPILE_BARRIER_TIMEOUT_S * 1000)
