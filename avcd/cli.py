"""`avcd COMMAND [--flag=value ...]`: dispatches to one module of avcd.commands.

Each command module defines its absl flags at import and a `main(argv)`; only the chosen module
is imported, so commands never see each other's flags, and `--help` imports no JAX.

A mistake gets one line naming the flag, field or file and what is wrong, never a traceback:
exit status 2 for usage errors (bad flags, config fields or paths, found before any work starts),
1 for failures while working (a corrupt checkpoint, a full disk, a non-finite loss, ...). A
traceback means a bug in avcd.
"""

import importlib
import logging
import os
import pathlib
import re
import sys
import traceback

from absl import app, flags, logging as absl_logging

from avcd import compilation_cache
from avcd.commands import arguments

COMMANDS = {
  "train": ("train", "train a detector on a config, then evaluate it"),
  "eval": ("evaluate", "evaluate a checkpoint on the config's evaluation splits"),
  "train-teacher": ("train_teacher", "train the ASR and VSR teachers on phoneme labels"),
  "prepare": ("prepare", "build a corpus into sharded ArrayRecord (TFDS)"),
  "convert": ("convert", "convert the authors' PyTorch weights into an avcd checkpoint"),
  "export": ("export", "export a checkpoint as a TensorFlow SavedModel"),
  "predict": ("predict", "score raw videos"),
  "serve": ("serve", "serve the scoring of videos over HTTP, with a web page to check one"),
  "compile": ("compile", "ahead-of-time compile the train step for a mesh; print its memory"),
}
# Commands that compile JAX programs: they take --compilation_cache (avcd/compilation_cache.py).
COMPILING = {"train", "eval", "train-teacher", "export", "predict", "serve", "compile"}
# Commands that write into --workdir: it is checked (and made) before they start.
WRITES_WORKDIR = {"train", "train-teacher"}
USAGE_EXIT, FAILURE_EXIT, INTERRUPTED_EXIT = 2, 1, 130
EXIT_STATUS_HELP = (
  "Exit status: 0 on success, 1 when the work failed (one line says why), 2 for "
  "a usage error (a bad flag, config field or path; nothing was done), 130 when interrupted "
  "(Ctrl-C)."
)


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [
    "usage: avcd COMMAND [--flag=value ...]   (avcd COMMAND --help for its flags)",
    "",
    "commands:",
  ]
  lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
  return "\n".join(lines + ["", EXIT_STATUS_HELP])


class _QuietLibraries(logging.Filter):
  """Drops the INFO chatter of Orbax, Grain, TFDS (every step of every save) and JAX's backend
  search ("Unable to initialize backend 'tpu'" on every machine without one) from the log;
  their warnings and errors still show, Orbax's without their tracebacks: a failed background
  save is reported by avcd in one line with its cause (checkpoints.CheckpointSaveError), and
  Orbax logs the same failure from three threads with 60 lines of traceback each."""

  _CHATTY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/", "/jax/_src/xla_bridge.py")

  # Warnings that say nothing a user can act on: avcd saves between evaluations on purpose, and
  # every synthetic corpus is a "custom data configuration".
  _NOT_ACTIONABLE = (
    "Requested `tracked_metric`; did not provide metrics",
    "Using custom data configuration",
    # reading a checkpoint read-only, as eval, export and restoring teachers do
    "CheckpointManagerOptions.read_only=True",
    "Given directory is read only",
  )

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == "asyncio" and self._from_orbax(record):
      # "Task exception was never retrieved", with a traceback, for each array of a failed save
      # whose write task Orbax left when it gave up; logged when the tasks are collected, after
      # avcd has reported the failure.
      return False
    if "/orbax/" in record.pathname and record.exc_info:
      record.exc_info, record.exc_text = None, None
    if record.levelno == logging.WARNING and any(
      text in str(record.msg) for text in self._NOT_ACTIONABLE
    ):
      return False
    return record.levelno > logging.INFO or not any(p in record.pathname for p in self._CHATTY)

  @staticmethod
  def _from_orbax(record: logging.LogRecord) -> bool:
    frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info else []
    return "/orbax/" in str(record.msg) or any("/orbax/" in f.filename for f in frames)


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  if isinstance(error, OSError) and error.strerror and error.filename:
    text = f"{error.filename}: {error.strerror}"
  return text or type(error).__name__


def _bad_config_override(argv: list[str]) -> str | None:
  """The first `--config*` flag whose file or field does not exist, described, or None."""
  from avcd import config_lib  # pylint: disable=g-import-not-at-top

  files = {}
  for arg in argv:
    match = re.match(r"--(\w+)=(.+)$", arg)
    if match and match.group(1) in _config_flags():
      files[match.group(1)] = match.group(2)
  for name, value in files.items():
    path = value.partition(":")[0]
    if not pathlib.Path(path).is_file():
      return f"--{name}={value}: no such config file"
    try:
      config = config_lib.load_config(value)
    except Exception as e:  # the config file's own code failed
      return f"--{name}={value}: the config file fails to load: {_one_line(e)}"
    for arg in argv:
      match = re.match(rf"--{name}\.([\w.]+)(?:=(.*))?$", arg)
      if match:
        problem = config_lib.field_problem(config, match.group(1))
        if problem:
          return f"--{name}.{match.group(1)}: {problem}"
  return None


def _config_flags() -> list[str]:
  """The names of the ml_collections config-file flags defined."""
  return [
    name
    for name, flag in flags.FLAGS._flags().items()  # pylint: disable=protected-access
    if "config" in type(flag.parser).__name__.lower()
  ]


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one line (exit 2) for any mistake instead of a traceback."""
  try:
    remaining = flags.FLAGS(argv)
    for name in _config_flags():  # ml_collections defers a config file's errors to first use
      if flags.FLAGS[name].present:
        flags.FLAGS[name].value.keys()
    return remaining
  except Exception as e:  # flags.Error, or whatever a config file or override raised
    message = _bad_config_override(argv[1:]) or _one_line(e).removeprefix("FATAL ")
    _fail(argv[0], message, USAGE_EXIT)


def _fail(program: str, message: str, status: int) -> None:
  hint = f" (see {program} --help)" if status == USAGE_EXIT else ""
  print(f"{program}: error: {message}{hint}", file=sys.stderr)
  sys.exit(status)


def _known_failure(error: Exception) -> int | None:
  """The exit status of an error a user can act on from its message; None for a bug."""
  from avcd import config_checks  # pylint: disable=g-import-not-at-top

  if isinstance(error, (app.UsageError, config_checks.ConfigError)):
    return USAGE_EXIT
  known = [OSError, MemoryError]
  for module, names in (
    (
      "avcd.checkpoints",
      (
        "CorruptCheckpointError",
        "CheckpointMismatchError",
        "CheckpointSaveError",
        "ResumeRefusedError",
        "StepRetiredError",
      ),
    ),
    ("avcd.workdir_lock", ("WorkdirBusyError",)),
    ("avcd.train", ("NonFiniteLossError",)),
    ("avcd.porting.convert", ("ConvertError",)),
    ("avcd.porting.weights", ("WeightMappingError",)),
    ("avcd.serving.saved_model_check", ("UntrustedSavedModelError",)),
    ("avcd.serving.export", ("ExportError",)),
    ("data_pipelines.building.manifests", ("ManifestError",)),
    ("data_pipelines.building.prepare", ("PrepareError",)),
    ("data_pipelines.schema", ("SchemaError",)),
    ("data_pipelines.reading.split_index", ("DamagedShardError",)),
  ):
    if module in sys.modules:
      known += [
        getattr(sys.modules[module], name) for name in names if hasattr(sys.modules[module], name)
      ]
  return FAILURE_EXIT if isinstance(error, tuple(known)) else None


def _guarded(main, program: str, compiles: bool, writes_workdir: bool):
  def run(argv):
    try:
      if writes_workdir:
        arguments.writable_directory("workdir", flags.FLAGS.workdir)
      if compiles:
        compilation_cache.enable()
      return main(argv)
    except KeyboardInterrupt as e:  # Ctrl-C: what was saved, if anything, is in the message
      message = " ".join(str(e).split()) or "interrupted; the last committed checkpoint is intact"
      print(f"{program}: {message}", file=sys.stderr)
      sys.exit(INTERRUPTED_EXIT)
    except Exception as e:  # pylint: disable=broad-except
      status = _known_failure(e)
      if status is None:
        raise
      logging.getLogger("absl").debug("failed", exc_info=True)
      kind = "" if status == USAGE_EXIT else f"{type(e).__name__}: "
      _fail(program, kind + _one_line(e), status)

  return run


def main() -> None:
  argv = sys.argv
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return
  command = argv[1]
  if command not in COMMANDS:
    print(f"avcd: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    sys.exit(USAGE_EXIT)
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())  # every logger's records
  # TensorFlow prints a oneDNN banner from C++ at every import, past Python's logging and
  # TF_CPP_MIN_LOG_LEVEL. avcd runs only XlaCallModule graphs in TensorFlow (exports), which
  # XLA compiles without TensorFlow's oneDNN kernels: turning those off changes no number.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  module = importlib.import_module(f"avcd.commands.{COMMANDS[command][0]}")
  # absl's --help shows the main module's docstring and flags: make them the command's.
  sys.modules["__main__"].__doc__ = f"{module.__doc__.rstrip()}\n\n{EXIT_STATUS_HELP}\n"
  own_flags = flags.FLAGS.get_flags_for_module(module.__name__)
  if command in COMPILING:
    own_flags.append(flags.FLAGS[compilation_cache.FLAG.name])
  for flag in own_flags:
    flags.FLAGS.register_flag_by_module(sys.argv[0], flag)
  program = f"avcd {command}"
  app.run(
    _guarded(module.main, program, command in COMPILING, command in WRITES_WORKDIR),
    argv=[program, *argv[2:]],
    flags_parser=_parse_flags,
  )


if __name__ == "__main__":
  main()
