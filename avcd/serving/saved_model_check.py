"""What a SavedModel must be before avcd runs it: the graph `avcd export` writes, nothing more.

A SavedModel is a program, not a file of weights: TensorFlow runs whatever ops its graph holds,
and its op set includes ops that read and write files (ReadFile, WriteFile, SaveV2), list
directories, run Python (PyFunc, EagerPyFunc) or start processes and network clients. A model
from someone else is a normal thing to score with, so before `tf.saved_model.load` sees it, avcd
parses `saved_model.pb` itself (protocol buffers: parsing runs no graph) and refuses it, naming
the op and its function, unless

  * every op of every function and of the main graph, apart from the variable saver, is one of
    the ops that `avcd export` emits (COMPUTE_OPS);
  * the saver's own save and restore functions, which avcd never calls (loading restores the
    variables with TensorFlow's Python-built restore ops), hold only those ops plus checkpoint
    I/O (SAVER_OPS), and nothing outside the saver calls them;
  * the one XlaCallModule op calls back into no TensorFlow function (`function_list` empty, no
    host token): its StableHLO module is compiled by XLA, whose custom calls can only reach
    kernels built into TensorFlow, and a host callback would need such a function.

The allowlist is exact: an export written by another TensorFlow or avcd version whose graph
differs is refused too (re-export it with this avcd). What is not checked: what the StableHLO
program computes (it is arbitrary numerics, and the scores it returns are only as trustworthy as
its author), and the variables' values.
"""

import pathlib

COMPUTE_OPS = frozenset(
  {
    # The serving function: input checks, then the jax2tf-converted predict function.
    "All",
    "Assert",
    "CheckNumerics",
    "Const",
    "Equal",
    "GreaterEqual",
    "Identity",
    "Less",
    "LessEqual",
    "Mul",
    "NoOp",
    "PreventGradient",
    "Range",
    "ReadVariableOp",
    "Shape",
    "StridedSlice",
    "XlaCallModule",
    # The signature wrapper and the main graph: calls (what they call is checked in turn),
    # inputs, variable handles.
    "StatefulPartitionedCall",
    "PartitionedCall",
    "Placeholder",
    "VarHandleOp",
  }
)
SAVER_OPS = frozenset(
  {
    "AssignVariableOp",
    "DisableCopyOnRead",
    "MergeV2Checkpoints",
    "Pack",
    "RestoreV2",
    "SaveV2",
    "Select",
    "ShardedFilename",
    "StaticRegexFullMatch",
    "StringJoin",
  }
)
SAVED_MODEL_FILE = "saved_model.pb"
SERVE_TAG = "serve"


class UntrustedSavedModelError(ValueError):
  """A SavedModel that is not what `avcd export` writes; the message names the file and why."""


def _called_functions(node) -> list[str]:
  """Names of the functions a NodeDef calls through its attributes (f=, branches, lists)."""
  names = []
  for value in node.attr.values():
    if value.HasField("func"):
      names.append(value.func.name)
    if value.HasField("list"):
      names.extend(f.name for f in value.list.func)
  return names


def _reachable(roots, library: dict) -> set[str]:
  """Every library function reachable from the function names in `roots`."""
  seen, stack = set(), list(roots)
  while stack:
    name = stack.pop()
    if name in seen or name not in library:
      continue
    seen.add(name)
    for node in library[name].node_def:
      stack.extend(_called_functions(node))
  return seen


def _node_name(tensor_or_op: str) -> str:
  return tensor_or_op.split(":")[0].lstrip("^")


def check(saved_model_dir: str | pathlib.Path) -> None:
  """Raises UntrustedSavedModelError unless the SavedModel's graph is one `avcd export` writes."""
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(saved_model_dir) / SAVED_MODEL_FILE
  try:
    data = path.read_bytes()
  except OSError as e:
    raise UntrustedSavedModelError(f"{path}: cannot read it ({e.strerror})") from None
  saved_model = saved_model_pb2.SavedModel()
  try:
    saved_model.ParseFromString(data)
  except message.DecodeError as e:
    raise UntrustedSavedModelError(f"{path}: not a SavedModel ({e})") from None
  graphs = [g for g in saved_model.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
  if len(saved_model.meta_graphs) != 1 or not graphs:
    raise UntrustedSavedModelError(
      f"{path}: {len(saved_model.meta_graphs)} meta graphs; `avcd export` writes one, tagged "
      f"{SERVE_TAG!r}"
    )
  graph = graphs[0]
  library = {f.signature.name: f for f in graph.graph_def.library.function}

  def refuse(op: str, where: str):
    raise UntrustedSavedModelError(
      f"{path}: op {op} in {where} is not an op `avcd export` emits; a SavedModel is a program, "
      "and avcd runs only the graphs it exports (docs/serving.md)"
    )

  saver = graph.saver_def
  saver_nodes = {_node_name(saver.save_tensor_name), _node_name(saver.restore_op_name)} - {""}
  nodes = {node.name: node for node in graph.graph_def.node}
  saver_roots = [f for name in saver_nodes if name in nodes for f in _called_functions(nodes[name])]
  other_roots = [
    f for n in graph.graph_def.node if n.name not in saver_nodes for f in _called_functions(n)
  ]
  other_roots += list(graph.object_graph_def.concrete_functions)
  # A function nothing names may still be looked up by name at load time: it counts as called.
  referenced = _reachable(saver_roots, library) | _reachable(other_roots, library)
  other_roots += [name for name in library if name not in referenced]
  serving_side = _reachable(other_roots, library)
  saver_only = _reachable(saver_roots, library) - serving_side

  for node in graph.graph_def.node:
    if node.op not in COMPUTE_OPS:
      refuse(node.op, f"the main graph (node {node.name!r})")
  for name in sorted(library):
    allowed = COMPUTE_OPS | SAVER_OPS if name in saver_only else COMPUTE_OPS
    for node in library[name].node_def:
      if node.op not in allowed:
        refuse(node.op, f"function {name!r}")
      if node.op == "XlaCallModule" and (
        _called_functions(node) or node.attr["has_token_input_output"].b
      ):
        raise UntrustedSavedModelError(
          f"{path}: the XlaCallModule op in function {name!r} calls back into TensorFlow "
          f"functions ({', '.join(_called_functions(node)) or 'a host token'}); `avcd export` "
          "writes none"
        )
