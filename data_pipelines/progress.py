"""Progress of a long loop over clips as plain log lines: done / total, clips/s, ETA."""

import datetime
import time

from absl import logging


class Progress:
  """Counts finished clips and logs a line at most every `interval_s` seconds.

  The rate counts only clips finished by this run, so a resumed run does not claim the speed of
  the clips it found already done.
  """

  def __init__(self, what: str, total: int, *, already_done: int = 0, interval_s: float = 30.0):
    self._what, self._total, self._interval_s = what, total, interval_s
    self._start_done = self.done = already_done
    self.rejected = 0
    self._start = self._last_log = time.monotonic()

  def step(self, *, rejected: bool = False) -> None:
    """Counts one finished clip; logs when the interval has passed or the last clip is done."""
    self.done += 1
    self.rejected += rejected
    now = time.monotonic()
    if now - self._last_log >= self._interval_s or self.done == self._total:
      self._last_log = now
      self.log()

  def log(self) -> None:
    elapsed = time.monotonic() - self._start
    rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
    eta = (
      datetime.timedelta(seconds=round((self._total - self.done) / rate)) if rate > 0 else "unknown"
    )
    rejected = f", {self.rejected} rejected" if self.rejected else ""
    percent = 100.0 * self.done / self._total if self._total else 100.0
    logging.info(
      "%s: %d/%d clips (%.1f%%)%s, %.2f clips/s, ETA %s",
      self._what,
      self.done,
      self._total,
      percent,
      rejected,
      rate,
      eta,
    )


def duration(seconds: float) -> str:
  """H:MM:SS, or M:SS under an hour."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
