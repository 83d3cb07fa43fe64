"""`avcd COMMAND [--flag=value ...]`: dispatches to one module of avcd.commands.

Each command module defines its absl flags at import and a `main(argv)`; only the chosen module
is imported, so commands never see each other's flags.
"""

import importlib
import logging
import sys

from absl import app
from absl import flags

COMMANDS = {
    "train": ("train", "train a detector on a config, then evaluate it"),
    "eval": ("evaluate", "evaluate a checkpoint on the config's evaluation splits"),
    "train-teacher": ("train_teacher", "train the ASR and VSR teachers on phoneme labels"),
    "prepare": ("prepare", "build a corpus into sharded ArrayRecord (TFDS)"),
    "convert": ("convert", "convert the authors' PyTorch weights into an avcd checkpoint"),
    "export": ("export", "export a checkpoint as a TensorFlow SavedModel"),
    "predict": ("predict", "score raw videos"),
    "compile": ("compile", "ahead-of-time compile the train step for a mesh; print its memory"),
}



def parse_pair(flag: str, text: str, form: str, example: str) -> tuple[int, int]:
  """Parses a flag value of the form AxB (e.g. a mesh 4x2 or a batch 20x100) into two ints."""
  try:
    first, second = (int(n) for n in text.lower().split("x"))
  except ValueError:
    raise app.UsageError(f"--{flag}={text!r}: expected {form}, e.g. {example}") from None
  return first, second

def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = ["usage: avcd COMMAND [--flag=value ...]   (avcd COMMAND --help for its flags)", "",
           "commands:"]
  lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
  return "\n".join(lines)


class _QuietLibraries(logging.Filter):
  """Drops the INFO chatter of Orbax, Grain and TFDS (every step of every save) from the log;
  their warnings and errors still show."""

  _CHATTY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/")

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not any(p in record.pathname for p in self._CHATTY)


def main() -> None:
  argv = sys.argv
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return
  command = argv[1]
  if command not in COMMANDS:
    sys.exit(f"avcd: unknown command {command!r}\n\n{usage()}")
  logging.getLogger("absl").addFilter(_QuietLibraries())
  module = importlib.import_module(f"avcd.commands.{COMMANDS[command][0]}")
  # absl's --help shows the main module's docstring and flags: make them the command's.
  sys.modules["__main__"].__doc__ = module.__doc__
  for flag in flags.FLAGS.get_flags_for_module(module.__name__):
    flags.FLAGS.register_flag_by_module(sys.argv[0], flag)
  app.run(module.main, argv=[f"avcd {command}", *argv[2:]])


if __name__ == "__main__":
  main()
