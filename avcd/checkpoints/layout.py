"""Whether a checkpoint's arrays fit the networks a config builds, said field by field, and the
abstract restore targets that describe those networks."""

import json
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from avcd.checkpoints import integrity
from avcd.checkpoints.integrity import CONFIG, STATE, STUDENT, TEACHERS

# The config section that shapes an item's arrays (for naming the fields that differ).
_CONFIG_SECTION = {STATE: "model", STUDENT: "model", TEACHERS: "teachers"}


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the networks (or optimizer) the config builds."""


def _path_name(key_path) -> str:
  parts = []
  for key in key_path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  if parts and parts[-1] == "value":  # an nnx.Variable's payload
    parts.pop()
  return "/".join(parts)


def flat_config(config, prefix: str = "") -> dict:
  if not isinstance(config, dict):
    return {prefix: config}
  flat = {}
  for key, value in config.items():
    flat.update(flat_config(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def _config_differences(
  step_dir: pathlib.Path, item: str, expected: ml_collections.ConfigDict | None
) -> list[str]:
  """'field: checkpoint X, this run Y' for the config section that shapes `item`."""
  section = _CONFIG_SECTION.get(item)
  if expected is None or section is None or not (step_dir / CONFIG).is_dir():
    return []
  with integrity.read_only_manager(step_dir.parent) as manager:
    stored = manager.restore(
      int(step_dir.name), args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
    )[CONFIG]
  if not isinstance(stored, dict) or section not in stored:
    return []
  ours = flat_config(json.loads(expected.to_json_best_effort()))
  theirs = flat_config(stored[section])
  absent = "(absent)"
  return [
    f"{section}.{k}: checkpoint {theirs.get(k, absent)}, this run {ours.get(k, absent)}"
    for k in sorted(ours.keys() | theirs.keys())
    if ours.get(k) != theirs.get(k)
  ]


def check_layout(
  step_dir: pathlib.Path,
  item: str,
  target,
  expected: ml_collections.ConfigDict | None = None,
  *,
  partial: bool = False,
) -> None:
  """Raises CheckpointMismatchError, with a short diff, if `item` does not fit `target`.

  `partial`: `target` is a dict of some of the item's top-level fields; only those are compared.
  """
  stored = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / item))
  on_disk = {
    _path_name(p): tuple(getattr(m, "shape", ()))
    for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]
  }
  wanted = {
    _path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(target)[0]
  }
  missing = sorted(wanted.keys() - on_disk.keys())
  if partial:
    on_disk = {k: v for k, v in on_disk.items() if k.split("/")[0] in target}
  unexpected = sorted(on_disk.keys() - wanted.keys())
  mismatched = [
    f"{k} {on_disk[k]} (this run {wanted[k]})"
    for k in sorted(wanted.keys() & on_disk.keys())
    if on_disk[k] != wanted[k]
  ]
  if not (missing or unexpected or mismatched):
    return
  lines = [
    f"the {item!r} item of checkpoint {step_dir} does not fit the networks this config builds:"
  ]
  for title, names in (
    ("arrays this run needs are not in it", missing),
    ("arrays in it this run does not have", unexpected),
    ("shapes differ", mismatched),
  ):
    if names:
      lines.append(
        f"  {len(names)} {title}: "
        + ", ".join(names[:8])
        + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
      )
  differences = _config_differences(step_dir, item, expected)
  if differences:
    lines.append("  the config it was written with differs: " + "; ".join(differences[:12]))
  raise CheckpointMismatchError("\n".join(lines))


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with concrete shardings, if given) describing a restore target."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
