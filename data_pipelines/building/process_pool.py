"""Mapping a function over items in worker processes, surviving workers that die.

Decoders run native code (FFmpeg through PyAV); a corrupt file can kill the process decoding it.
A plain multiprocessing.Pool then waits forever for that result, and a ProcessPoolExecutor fails
every task in flight. Here, when the pool breaks, the items that were in flight are run again one
at a time, each in a fresh single-worker pool: the item that kills its worker again is reported as
WorkerDied, the others get their results, and the remaining items continue in a new pool. Before
an item is blamed, its fresh worker must have received `fn`: a worker that cannot start or import
`fn`'s module is an error of the environment (WorkerStartError), not of any item.

Workers are started with 'spawn' (no fork of a parent that may hold threads or open decoders),
ignore SIGINT (Ctrl-C reaches the whole process group, and only the parent decides what to do)
and die with the parent however it dies (`worker_lifetime.die_with_parent`).
"""

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import signal
from typing import Any, Callable, Iterable, Iterator

from data_pipelines import worker_lifetime

# Tasks queued per worker: enough to keep workers busy, few enough to rerun after a crash.
_QUEUED_PER_WORKER = 2


class WorkerStartError(RuntimeError):
  """Worker processes die before running anything: the environment is broken, not an item."""


@dataclasses.dataclass(frozen=True)
class WorkerDied:
  """The result of an item whose worker process died twice while running it."""

  reason: str = "the worker process died (e.g. a decoder crashed) while processing it"


def imap_unordered(
  fn: Callable[..., Any], items: Iterable[tuple], *, num_workers: int
) -> Iterator[tuple[tuple, Any]]:
  """Yields (args, fn(*args)) for each args tuple of `items`, in completion order.

  Args:
    fn: a module-level (picklable) function. Per-worker setup belongs inside it (e.g. cached on
      first call): a failing setup then raises like any error instead of looking like a crash.
    items: argument tuples.
    num_workers: worker processes.

  Yields:
    (args, result), result being WorkerDied for an item that killed its worker twice.

  Raises:
    WorkerStartError: a fresh worker died before it could run `fn`.
    Whatever `fn` raises, as soon as its item completes (the pool is shut down first).
  """
  pending = collections.deque(items)
  while pending:
    suspects = []
    with _Pool(num_workers) as pool:
      in_flight = {}
      while pending or in_flight:
        while pending and not pool.broken and len(in_flight) < _QUEUED_PER_WORKER * num_workers:
          args = pending.popleft()
          in_flight[pool.submit(fn, *args)] = args
        if not in_flight:
          break
        done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          args = in_flight.pop(future)
          try:
            result = future.result()
          except concurrent.futures.process.BrokenProcessPool:
            pool.broken = True
            suspects.append(args)
            continue
          yield args, result
    for args in suspects:
      yield args, _run_alone(fn, args)


def _run_alone(fn, args: tuple) -> Any:
  with _Pool(1) as pool:
    try:
      pool.submit(_receive, fn).result()
    except concurrent.futures.process.BrokenProcessPool as e:
      raise WorkerStartError(
        f"a worker process died before it could run {fn.__module__}.{fn.__qualname__} (its "
        "error is printed above; is the main module importable by a new process?)"
      ) from e
    try:
      return pool.submit(fn, *args).result()
    except concurrent.futures.process.BrokenProcessPool:
      return WorkerDied()


def _receive(fn) -> None:
  """Runs in a worker: unpickling `fn` has imported its module."""
  del fn


class _Pool(concurrent.futures.ProcessPoolExecutor):
  """A spawn-context executor whose workers ignore SIGINT; cancels queued work on any exit."""

  def __init__(self, num_workers: int):
    super().__init__(
      max_workers=num_workers,
      mp_context=multiprocessing.get_context("spawn"),
      initializer=_start_worker,
      initargs=(worker_lifetime.initializer(),),
    )
    self.broken = False

  def __exit__(self, *exc_info):
    self.shutdown(wait=True, cancel_futures=True)
    return False


def _start_worker(die_with_parent) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  die_with_parent()
