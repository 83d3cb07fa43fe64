"""Jitted programs compiled ahead of their first call for each batch shape."""

import time

from absl import logging


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
    return self._compiled[key](*args)
