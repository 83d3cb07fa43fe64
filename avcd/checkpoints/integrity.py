"""Checkpoint integrity: checksums written into every step in its atomic rename, and verifying
them before a step is read.

Every step avcd writes carries `avcd_checksums.json`: the size and SHA-256 of each of its files,
written just before the step is committed (in the same atomic rename), so a committed step always
has it. Orbax does not checksum data: a flipped bit loads silently and a truncated file fails deep
inside TensorStore. Restoring verifies the step first (see docs/checkpoints.md).
"""

import asyncio
import hashlib
import json
import os
import pathlib
import re
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

# The items of a step: a training run's state, data position, config and meta; a model
# checkpoint's student and/or teachers (plus config and meta).
STATE, DATA, CONFIG, META = "state", "data", "config", "meta"
STUDENT, TEACHERS = "student", "teachers"
CHECKSUMS = "avcd_checksums.json"
# Orbax rewrites these in the step directory after the checksums are taken, during its commit.
_COMMIT_BOOKKEEPING = ("_CHECKPOINT_METADATA", "commit_success.txt")


class CorruptCheckpointError(RuntimeError):
  """A committed checkpoint step whose files are missing, truncated or altered."""


def root_cause(error: BaseException) -> str:
  """The innermost cause of an error chain, in one line (Orbax wraps a failed write a few times)."""
  while error.__cause__ is not None or (
    error.__context__ is not None and not error.__suppress_context__
  ):
    error = error.__cause__ or error.__context__
  if isinstance(error, OSError) and error.strerror:
    return error.strerror + (f" ({error.filename})" if error.filename else "")
  text = " ".join(str(error).split())
  # TensorStore puts the errno after long context, as "[OS error 28: No space left on device]"
  # or as "...: No space left on device [os_error_code='28']", depending on the code path.
  os_error = re.search(r"\[OS error (\d+): [^\]]+\]|\[os_error_code='(\d+)'\]", text)
  if os_error:
    path = re.search(r'writing (?:local file )?"([^"]+)"', text)
    return os.strerror(int(os_error.group(1) or os_error.group(2))) + (
      f" ({path.group(1)})" if path else ""
    )
  return text or type(error).__name__


def _file_digest(path: pathlib.Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _checksummed_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  files = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = pathlib.Path(root) / name
      relative = path.relative_to(step_dir)
      if len(relative.parts) == 1 and name in (*_COMMIT_BOOKKEEPING, CHECKSUMS):
        continue
      files.append(relative)
  return sorted(files)


def write_checksums(step_dir: str | pathlib.Path) -> None:
  """Writes STEP_DIR/avcd_checksums.json: {relative path: {bytes, sha256}} of every data file."""
  step_dir = pathlib.Path(step_dir)
  files = {
    str(p): dict(bytes=(step_dir / p).stat().st_size, sha256=_file_digest(step_dir / p))
    for p in _checksummed_files(step_dir)
  }
  partial = step_dir / (CHECKSUMS + ".partial")
  partial.write_text(json.dumps(dict(format=1, algorithm="sha256", files=files), indent=1))
  partial.replace(step_dir / CHECKSUMS)


def verify_checksums(step_dir: str | pathlib.Path) -> bool:
  """Checks every file a step's checksums list; True if they all match.

  Returns False (with a warning) when the step has no checksums: written by an older avcd or by
  another tool, it cannot be verified, only read once through (what fails to read is corrupt; a
  changed value that still reads goes unnoticed).

  Raises:
    CorruptCheckpointError: naming the step and each missing, truncated or altered file, or the
    read that failed.
  """
  step_dir = pathlib.Path(step_dir)
  manifest_path = step_dir / CHECKSUMS
  if not manifest_path.exists():
    logging.warning(
      "%s has no %s (written by an older avcd or another tool): it cannot be verified, only read",
      step_dir,
      CHECKSUMS,
    )
    _read_through(step_dir)
    return False
  try:
    files = json.loads(manifest_path.read_text())["files"]
  except (ValueError, KeyError) as e:
    raise CorruptCheckpointError(f"checkpoint {step_dir}: unreadable {CHECKSUMS} ({e})") from e
  problems = []
  for name, expected in files.items():
    path = step_dir / name
    if not path.is_file():
      problems.append(f"{name} (missing)")
      continue
    size = path.stat().st_size
    if size != expected["bytes"]:
      problems.append(
        f"{name} ({'truncated: ' if size < expected['bytes'] else ''}{size} bytes, "
        f"{expected['bytes']} written)"
      )
    elif _file_digest(path) != expected["sha256"]:
      problems.append(f"{name} (contents changed since it was written)")
  if problems:
    raise CorruptCheckpointError(
      f"checkpoint {step_dir} is corrupt: {len(problems)} of {len(files)} files fail their "
      f"checksums: "
      + ", ".join(problems[:10])
      + (f", ... ({len(problems) - 10} more)" if len(problems) > 10 else "")
    )
  return True


def _read_through(step_dir: pathlib.Path) -> None:
  """Reads every array item of a step onto the host; CorruptCheckpointError if that fails (OCDBT
  checks its own index: a damaged one fails in TensorStore with DATA_LOSS)."""
  for item in (STATE, STUDENT, TEACHERS):
    if not (step_dir / item).is_dir():
      continue
    try:
      stored = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / item))
      on_host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
      with read_only_manager(step_dir.parent) as manager:
        manager.restore(
          int(step_dir.name),
          args=ocp.args.Composite(**{item: ocp.args.PyTreeRestore(restore_args=on_host)}),
        )
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
        f"checkpoint {step_dir} is corrupt: its {item!r} item fails to read ({root_cause(e)}); "
        f"it has no {CHECKSUMS} to name the damaged file"
      ) from e


class _ChecksummedRenamePath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic-rename commit, with avcd's checksums written into a step just before it.

  Orbax also commits each item directory through this class; only step directories, named by
  their integer step, get checksums. Multi-process saves finalize on the primary process after
  every process has written its files.
  """

  async def finalize(self):
    tmp_dir = pathlib.Path(str(self.get()))
    if self.get_final().name.isdigit():
      start = time.perf_counter()
      await asyncio.to_thread(write_checksums, tmp_dir)
      logging.info("checksummed %s in %.2f s", self.get_final(), time.perf_counter() - start)
    await super().finalize()


def manager_options(**options) -> ocp.CheckpointManagerOptions:
  return ocp.CheckpointManagerOptions(temporary_path_class=_ChecksummedRenamePath, **options)


def read_only_manager(root: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    root, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
  )


def verify(step_dir: pathlib.Path) -> None:
  """verify_checksums on process 0 (the files are shared); every process raises if it fails."""
  problem = ""
  if jax.process_index() == 0:
    try:
      verify_checksums(step_dir)
    except CorruptCheckpointError as e:
      problem = str(e)
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(bool(problem))))
    if failed and not problem:
      problem = f"checkpoint {step_dir} failed verification on process 0 (see its log)"
  if problem:
    raise CorruptCheckpointError(problem)


_VERIFIED = {}  # step directory -> its checksums file's (mtime, size) when it verified


def verify_once(step_dir: pathlib.Path) -> None:
  """verify, unless this process verified the step already and its checksums are unchanged."""
  manifest = step_dir / CHECKSUMS
  stamp = (manifest.stat().st_mtime_ns, manifest.stat().st_size) if manifest.exists() else None
  if stamp is None or _VERIFIED.get(step_dir) != stamp:
    verify(step_dir)
    if stamp is not None:
      _VERIFIED[step_dir] = stamp


def step_identity(step_dir: pathlib.Path) -> tuple[int, bool] | None:
  """The step directory's inode and whether it has checksums (None if it is gone), for
  `step_retired`."""
  try:
    return step_dir.stat().st_ino, (step_dir / CHECKSUMS).is_file()
  except FileNotFoundError:
    return None


def step_retired(step_dir: pathlib.Path, identity: tuple[int, bool] | None) -> bool:
  """Whether a step read after `identity = step_identity(step_dir)` was deleted meanwhile: its
  directory is gone or replaced, or files its checksums list are (Orbax deletes a step file by
  file, so a failed read can see it half deleted)."""
  now = step_identity(step_dir)
  if now is None or identity is None or now[0] != identity[0]:
    return True
  if not identity[1]:  # nothing tells which files it had
    return False
  try:
    files = json.loads((step_dir / CHECKSUMS).read_text())["files"]
  except FileNotFoundError:
    return True
  except (ValueError, KeyError):
    return False
  return any(not (step_dir / name).is_file() for name in files)


def mark_verified(step_dir: pathlib.Path) -> None:
  """Records that this process has just verified `step_dir` (for verify_once)."""
  manifest = step_dir / CHECKSUMS
  if manifest.exists():
    _VERIFIED[step_dir] = (manifest.stat().st_mtime_ns, manifest.stat().st_size)
