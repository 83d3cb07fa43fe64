"""Checks of command-line arguments shared by the commands and benchmarks: each mistake is an
absl UsageError naming the flag (one line, exit status 2; see avcd/cli.py)."""

import os
import pathlib

from absl import app

from avcd import paths


def parse_pair(flag: str, text: str, form: str, example: str) -> tuple[int, int]:
  """Parses a flag value of the form AxB (e.g. a mesh 4x2 or a batch 20x100) into two ints."""
  try:
    first, second = (int(n) for n in text.lower().split("x"))
  except ValueError:
    raise app.UsageError(f"--{flag}={text!r}: expected {form}, e.g. {example}") from None
  return first, second


def existing_directory(flag: str, value: str) -> pathlib.Path:
  """The directory a flag names; a UsageError when it is missing or not a directory."""
  path = pathlib.Path(value)
  if problem := paths.broken_symlink(path):
    raise app.UsageError(f"--{flag}={value}: {problem}")
  if not path.exists():
    raise app.UsageError(f"--{flag}={value}: no such directory")
  if not path.is_dir():
    raise app.UsageError(f"--{flag}={value}: not a directory")
  return path


def writable_directory(flag: str, value: str) -> pathlib.Path:
  """A directory a command will write into: created now, so a bad path fails before any work."""
  path = pathlib.Path(value)
  if problem := paths.broken_symlink(path):
    raise app.UsageError(f"--{flag}={value}: {problem}")
  if path.exists() and not path.is_dir():
    raise app.UsageError(f"--{flag}={value}: is a file, not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise app.UsageError(f"--{flag}={value}: cannot create it ({e.strerror})") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise app.UsageError(f"--{flag}={value}: not writable")
  return path


def require_tensorflow(what: str) -> None:
  """A UsageError, before any work, where TensorFlow (the `tf` extra) is not installed."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  if importlib.util.find_spec("tensorflow") is None:
    raise app.UsageError(f"{what} needs TensorFlow, which is not installed: pip install -e '.[tf]'")
