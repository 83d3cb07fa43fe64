"""A resumable store of extracted clips: one atomically written file per clip, by content key.

Layout under the store's directory (`key` is extraction.clip_key: a hash of the manifest row, the
extraction options and the extraction version, so any split or manifest naming the same clip
finds it, and changed options never reuse an old result):

  <key[:2]>/<key>.example    the clip as a serialized TFDS example (the schema's features)
  <key[:2]>/<key>.rejected   why the clip was rejected, one line of text
  <key[:2]>/.<key>.*.tmp     a file being written; never read, deleted by remove_unfinished()

Each file is written under a temporary name, flushed to disk and renamed into place, so a process
killed at any point leaves finished clips whole and at most some .tmp files. Only one process may
write a store at a time (`avcd prepare` holds a lock); any number may read it.
"""

import os
import pathlib
import tempfile

_EXAMPLE, _REJECTED, _TMP = ".example", ".rejected", ".tmp"


class ClipStore:
  """The extracted clips under one directory (see the module docstring)."""

  def __init__(self, directory):
    self.directory = pathlib.Path(directory)

  def finished(self) -> dict[str, str | None]:
    """Every finished clip: key -> None when its example is stored, else the rejection reason."""
    done: dict[str, str | None] = {}
    if not self.directory.is_dir():
      return done
    for bucket in os.scandir(self.directory):
      if not bucket.is_dir():
        continue
      for entry in os.scandir(bucket.path):
        key, suffix = os.path.splitext(entry.name)
        if suffix == _EXAMPLE:
          done[key] = None
        elif suffix == _REJECTED:
          done[key] = pathlib.Path(entry.path).read_text(encoding="utf-8").strip()
    return done

  def remove_unfinished(self) -> int:
    """Deletes the temporary files of interrupted writes; returns how many there were."""
    stale = list(self.directory.glob(f"*/.*{_TMP}")) if self.directory.is_dir() else []
    for path in stale:
      path.unlink(missing_ok=True)
    return len(stale)

  def write_example(self, key: str, serialized: bytes) -> None:
    self._write(self._path(key, _EXAMPLE), serialized)

  def write_rejected(self, key: str, reason: str) -> None:
    self._write(self._path(key, _REJECTED), " ".join(reason.split()).encode("utf-8"))

  def read_example(self, key: str) -> bytes:
    return self._path(key, _EXAMPLE).read_bytes()

  def _path(self, key: str, suffix: str) -> pathlib.Path:
    return self.directory / key[:2] / f"{key}{suffix}"

  @staticmethod
  def _write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=_TMP)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the rename must not outlive the data in a power loss
      os.replace(tmp, path)
    except BaseException:
      pathlib.Path(tmp).unlink(missing_ok=True)
      raise
