"""Loading `configs/*.py` files outside the command line (tests, tools).

The command line uses ml_collections' `DEFINE_config_file` (lock_config=True); this does the same
for code: import the file, call `get_config(arg)`, lock it, apply dotted overrides. A misspelled
override raises an error naming the field.
"""

import importlib.util
import pathlib

import ml_collections


def load_config(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """`path` may carry an argument for get_config after a colon, as on the command line."""
  path, _, argument = str(path).partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file {file} does not exist")
  spec = importlib.util.spec_from_file_location(f"avcd_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument) if argument else module.get_config()
  config.lock()
  for name, value in (overrides or {}).items():
    set_field(config, name, value)
  return config


def set_field(config: ml_collections.ConfigDict, dotted_name: str, value) -> None:
  """Sets config.a.b.c = value; an unknown field raises AttributeError naming it."""
  *parents, leaf = dotted_name.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node:
      raise AttributeError(f"config has no field {'.'.join(parents[:i + 1])!r}")
    node = node[part]
  if leaf not in node:
    raise AttributeError(f"config has no field {dotted_name!r}")
  setattr(node, leaf, value)


def field_problem(config: ml_collections.ConfigDict, dotted_name: str) -> str | None:
  """Why `dotted_name` is not a field of `config` (with the nearest names), or None if it is."""
  import difflib  # pylint: disable=g-import-not-at-top
  node, walked = config, []
  for part in dotted_name.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, known, n=1)
      where = ".".join(walked) or "the config"
      hint = f" (did you mean {'.'.join([*walked, close[0]])!r}?)" if close else ""
      return f"{where} has no field {part!r}{hint}"
    node = node[part]
    walked.append(part)
  return None
