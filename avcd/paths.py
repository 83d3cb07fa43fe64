"""What is wrong with a path, in words a one-line error can carry."""

import errno
import os
import pathlib


def broken_symlink(path: pathlib.Path) -> str | None:
  """What is wrong with a path that a symlink leads nowhere from ('is a symlink loop', 'is a
  symlink to X, which does not exist'); None when it is not one. pathlib's exists() says only
  False for both."""
  try:
    os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      return "is a symlink loop"
    if path.is_symlink():
      return f"is a symlink to {os.readlink(path)}, which does not exist"
  return None
