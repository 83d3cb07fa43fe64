"""Imports run one way: each room imports only rooms of a lower layer (README, "Repository
layout"). Checked on the source (every import statement of every module, in functions too) and at
run time (what importing every module really imports), with no cycle either way."""

import ast
import json
import os
import pathlib
import subprocess
import sys

from tests.conftest import REPO

PACKAGES = ("avcd", "data_pipelines")
# Lowest first. A room is a module or package; a module belongs to the room of the longest name
# that prefixes its own. The README's layout section states the same order.
LAYERS = (
  # 0: the example schema, config pieces, small utilities; they import no room
  (
    "data_pipelines.schema",
    "avcd.config_lib",
    "avcd.version",
    "avcd.paths",
    "avcd.workdir_lock",
    "avcd.compilation_cache",
  ),
  # 1: building corpora, reading them and what both use (features, progress lines, worker
  # processes); the networks (neither knows data_pipelines, nor data_pipelines them)
  ("data_pipelines", "data_pipelines.building", "data_pipelines.reading", "avcd.models"),
  # 2: the core: the mesh, the predict function and its inputs
  ("avcd.core",),
  # 3: checkpoints: integrity, the training checkpointer, loading a model
  ("avcd.checkpoints",),
  # 4: training, teachers, evaluation, serving, porting
  ("avcd.training", "avcd.teachers", "avcd.evaluation", "avcd.serving", "avcd.porting"),
  # 5: what checks a whole config or compiles its step ahead of time; the commands' flag checks
  ("avcd.config_checks", "avcd.aot", "avcd.commands.arguments"),
  # 6: the train loop
  ("avcd.train",),
  # 7: the commands and what runs them: the CLI, studies, benchmarks
  ("avcd.cli", "avcd.commands", "avcd.studies", "avcd.benchmarks"),
)
# Peers of one layer that a room may import, and why.
PEERS = {
  # Building and reading corpora share the features, progress lines and worker processes.
  ("data_pipelines.building", "data_pipelines"),
  ("data_pipelines.reading", "data_pipelines"),
  # A rebuilt split makes its clips again from their media as building made them; building
  # knows nothing of reading.
  ("data_pipelines.reading", "data_pipelines.building"),
  ("avcd.teachers", "avcd.training"),  # teacher training: the train state, optimizer, losses
  ("avcd.serving", "avcd.evaluation"),  # predict applies calibration, finds forged segments
  ("avcd.cli", "avcd.commands"),  # the CLI loads the command asked for
}
LAYER = {room: layer for layer, rooms in enumerate(LAYERS) for room in rooms}


def room_of(module: str) -> str:
  parts = module.split(".")
  for end in range(len(parts), 0, -1):
    if ".".join(parts[:end]) in LAYER:
      return ".".join(parts[:end])
  raise AssertionError(f"{module} is in no room of LAYERS: give it one")


def modules() -> dict[str, pathlib.Path]:
  found = {}
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
      parts = path.relative_to(REPO).with_suffix("").parts
      found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return found


def static_imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The project modules a file imports, at the top or inside functions."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        names.add(full if full in known else node.module)
  return {n for n in names if n.split(".")[0] in PACKAGES}


def violation(importer: str, imported: str) -> str | None:
  """Why `importer` may not import `imported`; None if it may."""
  source, target = room_of(importer), room_of(imported)
  if source == target or LAYER[target] < LAYER[source] or (source, target) in PEERS:
    return None
  direction = "up" if LAYER[target] > LAYER[source] else "sideways"
  return (
    f"{importer} (layer {LAYER[source]}, {source}) imports {imported} "
    f"(layer {LAYER[target]}, {target}): {direction}"
  )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in edges.get(node, ()):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
  for node in sorted(edges):
    if node not in index:
      visit(node)
  return found


def test_every_module_imports_only_lower_layers_and_no_cycle():
  known = modules()
  edges = {m: static_imports(p, set(known)) - {m} for m, p in known.items()}
  problems = [
    v for m, targets in sorted(edges.items()) for t in sorted(targets) if (v := violation(m, t))
  ]
  assert not problems, "\n".join(problems)
  # Within a room, modules may import each other, but not round in a circle; a package's
  # __init__ importing its own modules is its interface, not a cycle.
  inner = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
  assert not cycles(inner), cycles(inner)


def test_the_layers_say_what_they_are_for():
  # A sideways import within a layer needs a reason in PEERS; an upward one is never allowed.
  assert violation("avcd.models.student", "data_pipelines.reading.loader")  # networks know no files
  assert violation("avcd.core.sharding", "avcd.training.steps")
  assert violation("avcd.serving.predict", "avcd.training.state")
  assert violation("avcd.commands.predict", "avcd.cli")  # the loop cli <-> commands
  assert violation("data_pipelines.reading.loader", "avcd.models.teachers")
  assert violation("avcd.training.steps", "avcd.checkpoints") is None
  assert violation("data_pipelines.building.prepare", "data_pipelines.reading.loader")
  assert violation("data_pipelines.reading.rebuilt_split", "data_pipelines.building.clips") is None


# Imports every module in one process, recording who imports what. Command modules define absl
# flags of the same names (--config, --workdir): each module's flags are dropped once it is in.
_RECORD_IMPORTS = """
import builtins, importlib, json, sys
from absl import flags
edges = set()
real_import = builtins.__import__

def recording(name, globals=None, locals=None, fromlist=(), level=0):
  module = real_import(name, globals, locals, fromlist, level)
  importer = (globals or {}).get("__name__", "")
  if level == 0 and importer.split(".")[0] in PACKAGES and name.split(".")[0] in PACKAGES:
    submodules = [f"{name}.{n}" for n in fromlist or () if f"{name}.{n}" in sys.modules]
    edges.update((importer, target) for target in submodules or [name])
  return module

builtins.__import__ = recording
for name in MODULES:
  importlib.import_module(name)
  for flag in flags.FLAGS.get_flags_for_module(name):
    delattr(flags.FLAGS, flag.name)
print(json.dumps(sorted(edges)))
"""


def test_importing_every_module_imports_only_lower_layers_and_no_cycle():
  known = modules()
  script = f"PACKAGES = {PACKAGES!r}\nMODULES = {sorted(known)!r}\n" + _RECORD_IMPORTS
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  edges = {}
  for importer, imported in json.loads(result.stdout.splitlines()[-1]):
    if importer != imported:
      edges.setdefault(importer, set()).add(imported)
  problems = [
    v for m, targets in sorted(edges.items()) for t in sorted(targets) if (v := violation(m, t))
  ]
  assert not problems, "\n".join(problems)
  inner = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
  assert not cycles(inner), cycles(inner)
