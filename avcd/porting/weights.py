"""Fill avcd's Flax networks from PyTorch-layout state dicts with the reference's key names.

Sources (see shared/parity/README.md, "Checkpoint key mapping"):
  * 'mtl_ddf':   the authors' full MTL_DDF state dict (best.model): student, lossAV, ASR, VSR.
  * 'talknet':   TalkNet's pretrain_TalkSet.model: student (`model.*`) and `lossAV.FC.*`.
  * 'asr':       deep_avsr's audio-only.pt (AudioNet keys without prefix).
  * 'vsr':       deep_avsr's video-only.pt (VideoNet keys without prefix).
  * 'vsr_frontend': deep_avsr's visual_frontend.pt (frontend3D.* / resnet.* without prefix).

A state dict is `{key: numpy array}`; a leading 'module.' (DataParallel) is stripped. Mapping is
strict: any missing key, any key that is not known to be unused, and any shape mismatch is
reported together in one WeightMappingError.
"""

import re
from collections.abc import Callable, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from avcd.models import layers
from avcd.models.teachers import sinusoidal_positions

# Keys present in the reference's checkpoints that avcd deliberately has no parameter for.
KNOWN_UNUSED = (
  re.compile(r".*num_batches_tracked$"),  # BatchNorm counters
  re.compile(r"^lossCont_Spea\.projection_[AB]\..*"),  # never used in the reference's forward
  re.compile(r"^loss[AV]\.FC\..*"),  # TalkNet's audio-only / visual-only heads
  re.compile(r".*resnet\.layer1\.downsample\.weight$"),  # stride-1 layer, identity shortcut
)
POSITIONAL_TABLE = re.compile(r".*positionalEncoding\.pe$")  # buffer, recomputed and checked

Transform = Callable[[np.ndarray], np.ndarray]


class WeightMappingError(ValueError):
  """The state dict does not fit the network; the message lists every problem."""


def _conv_kernel(w):  # torch (O, I, *k) -> flax (*k, I, O)
  return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _stem_kernel(w):
  """torch Conv3d (O, 1, kt, kh, kw) -> the 2D stem over stacked frames (kh, kw, kt, O)."""
  if w.ndim != 5 or w.shape[1] != 1:
    raise ValueError(f"a Conv3d weight (out, 1, time, height, width) is expected, not {w.shape}")
  return np.transpose(w[:, 0], (2, 3, 1, 0))


def _linear_kernel(w):  # torch (O, I) -> flax (I, O)
  return np.transpose(w)


def _conv1x1_as_linear(w):  # torch Conv1d (O, I, 1) -> flax Linear (I, O)
  return np.transpose(w[:, :, 0])


def _flatten(x):
  return np.reshape(x, (-1,))


def _identity(x):
  return x


Entry = tuple[str, tuple, Transform]


def _conv(torch_name: str, path: tuple, module: nnx.Conv) -> Iterator[Entry]:
  yield f"{torch_name}.weight", path + ("kernel",), _conv_kernel
  if module.bias is not None:
    yield f"{torch_name}.bias", path + ("bias",), _identity


def _linear(torch_name: str, path: tuple, module: nnx.Linear, kernel=_linear_kernel):
  yield f"{torch_name}.weight", path + ("kernel",), kernel
  if module.bias is not None:
    yield f"{torch_name}.bias", path + ("bias",), _identity


def _batch_norm(torch_name: str, path: tuple) -> Iterator[Entry]:
  for torch_leaf, flax_leaf in (
    ("weight", "scale"),
    ("bias", "bias"),
    ("running_mean", "mean"),
    ("running_var", "var"),
  ):
    yield f"{torch_name}.{torch_leaf}", path + (flax_leaf,), _identity


def _layer_norm(torch_name: str, path: tuple) -> Iterator[Entry]:
  yield f"{torch_name}.weight", path + ("scale",), _identity
  yield f"{torch_name}.bias", path + ("bias",), _identity


def _in_proj_part(index: int, of_weight: bool) -> Transform:
  def take(w):
    part = np.split(w, 3, axis=0)[index]
    return np.transpose(part) if of_weight else part

  return take


def _attention_layer(torch_name: str, path: tuple, module: layers.AttentionLayer):
  mha = f"{torch_name}.self_attn"
  for index, name in enumerate(("query", "key", "value")):
    yield f"{mha}.in_proj_weight", path + ("self_attn", name, "kernel"), _in_proj_part(index, True)
    yield f"{mha}.in_proj_bias", path + ("self_attn", name, "bias"), _in_proj_part(index, False)
  yield from _linear(f"{mha}.out_proj", path + ("self_attn", "out"), module.self_attn.out)
  yield from _linear(f"{torch_name}.linear1", path + ("linear1",), module.linear1)
  yield from _linear(f"{torch_name}.linear2", path + ("linear2",), module.linear2)
  yield from _layer_norm(f"{torch_name}.norm1", path + ("norm1",))
  yield from _layer_norm(f"{torch_name}.norm2", path + ("norm2",))


def visual_frontend_entries(prefix: str, path: tuple, frontend) -> Iterator[Entry]:
  yield f"{prefix}frontend3D.0.weight", path + ("stem", "kernel"), _stem_kernel
  yield from _batch_norm(f"{prefix}frontend3D.1", path + ("bn3d",))
  for i, layer in enumerate(frontend.resnet):
    torch_layer, flax_layer = f"{prefix}resnet.layer{i + 1}", path + ("resnet", i)
    for name in ("conv1a", "conv2a", "conv1b", "conv2b"):
      yield from _conv(f"{torch_layer}.{name}", flax_layer + (name,), getattr(layer, name))
    for name in ("bn1a", "outbna", "bn1b", "outbnb"):
      yield from _batch_norm(f"{torch_layer}.{name}", flax_layer + (name,))
    if layer.downsample is not None:
      yield from _conv(f"{torch_layer}.downsample", flax_layer + ("downsample",), layer.downsample)


def student_entries(student, prefix: str = "model.") -> Iterator[Entry]:
  visual = student.visual_encoder
  yield from visual_frontend_entries(
    f"{prefix}visualFrontend.", ("visual_encoder", "frontend"), visual.frontend
  )
  for i, block in enumerate(visual.tcn):
    torch_block, flax_block = f"{prefix}visualTCN.net.{i}.net", ("visual_encoder", "tcn", i)
    yield from _batch_norm(f"{torch_block}.1", flax_block + ("bn",))
    yield from _conv(f"{torch_block}.2", flax_block + ("depthwise",), block.depthwise)
    yield f"{torch_block}.3.weight", flax_block + ("prelu", "slope"), _identity
    yield f"{torch_block}.4.gamma", flax_block + ("gln", "scale"), _flatten
    yield f"{torch_block}.4.beta", flax_block + ("gln", "bias"), _flatten
    yield from _conv(f"{torch_block}.5", flax_block + ("pointwise",), block.pointwise)
  yield from _conv(f"{prefix}visualConv1D.net.0", ("visual_encoder", "proj_conv"), visual.proj_conv)
  yield from _batch_norm(f"{prefix}visualConv1D.net.1", ("visual_encoder", "proj_bn"))
  yield from _conv(f"{prefix}visualConv1D.net.3", ("visual_encoder", "out_conv"), visual.out_conv)

  audio = student.audio_encoder
  yield from _conv(f"{prefix}audioEncoder.conv1", ("audio_encoder", "conv1"), audio.conv1)
  yield from _batch_norm(f"{prefix}audioEncoder.bn1", ("audio_encoder", "bn1"))
  block_names = [(stage, i) for stage, depth in enumerate(audio.stage_blocks) for i in range(depth)]
  for j, (block, (stage, index_in_stage)) in enumerate(zip(audio.blocks, block_names)):
    torch_block = f"{prefix}audioEncoder.layer{stage + 1}.{index_in_stage}"
    flax_block = ("audio_encoder", "blocks", j)
    yield from _conv(f"{torch_block}.conv1", flax_block + ("conv1",), block.conv1)
    yield from _batch_norm(f"{torch_block}.bn1", flax_block + ("bn1",))
    yield from _conv(f"{torch_block}.conv2", flax_block + ("conv2",), block.conv2)
    yield from _batch_norm(f"{torch_block}.bn2", flax_block + ("bn2",))
    yield from _linear(f"{torch_block}.se.fc.0", flax_block + ("se", "fc1"), block.se.fc1)
    yield from _linear(f"{torch_block}.se.fc.2", flax_block + ("se", "fc2"), block.se.fc2)
    if block.downsample_conv is not None:
      yield from _conv(
        f"{torch_block}.downsample.0", flax_block + ("downsample_conv",), block.downsample_conv
      )
      yield from _batch_norm(f"{torch_block}.downsample.1", flax_block + ("downsample_bn",))

  for torch_name, flax_name in (
    ("crossA2V", "cross_a2v"),
    ("crossV2A", "cross_v2a"),
    ("selfAV", "self_av"),
  ):
    yield from _attention_layer(f"{prefix}{torch_name}", (flax_name,), getattr(student, flax_name))
  yield from _linear("lossAV.FC", ("classifier",), student.classifier)


def teacher_entries(teacher, prefix: str, stack_names: tuple[str, str]) -> Iterator[Entry]:
  if hasattr(teacher, "audio_conv"):
    yield from _conv(f"{prefix}audioConv", ("audio_conv",), teacher.audio_conv)
  for torch_stack, flax_stack in zip(stack_names, ("encoder", "decoder")):
    for i, layer in enumerate(getattr(teacher, flax_stack)):
      yield from _attention_layer(f"{prefix}{torch_stack}.layers.{i}", (flax_stack, i), layer)
  yield from _linear(f"{prefix}outputConv", ("output",), teacher.output, kernel=_conv1x1_as_linear)


def _strip_module_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {
    k[len("module.") :] if k.startswith("module.") else k: np.asarray(v)
    for k, v in state_dict.items()
  }


def _get(tree, path):
  for part in path:
    tree = tree[part]
  return tree


def _set(tree, path, value):
  for part in path[:-1]:
    tree = tree[part]
  tree[path[-1]] = value


def _check_positional_tables(state_dict: dict, claimed: set, problems: list):
  for key in [k for k in state_dict if POSITIONAL_TABLE.match(k)]:
    table = state_dict[key].reshape(state_dict[key].shape[0], -1)
    expected = sinusoidal_positions(*table.shape)
    if not np.allclose(table, expected, atol=1e-5):
      problems.append(f"{key}: positional table differs from the sinusoidal one avcd computes")
    claimed.add(key)


def load_into(
  targets: Mapping[str, tuple[nnx.Module, Iterator[Entry]]],
  state_dict: Mapping[str, np.ndarray],
  source_name: str,
) -> None:
  """Copies `state_dict` into each target module (params and batch statistics) in place.

  targets: name -> (module, entries), the entries from the *_entries functions above. Raises
  WeightMappingError listing missing keys, unexpected keys and shape mismatches; nothing is
  changed unless everything fits.
  """
  state_dict = _strip_module_prefix(state_dict)
  claimed, missing, mismatched, problems = set(), [], [], []
  new_states = {}
  for name, (module, entries) in targets.items():
    pure = nnx.to_pure_dict(nnx.state(module))
    for key, path, transform in entries:
      claimed.add(key)
      if key not in state_dict:
        missing.append(key)
        continue
      try:
        value = transform(state_dict[key])
      except ValueError as e:  # a tensor of another rank than the layer's
        mismatched.append(
          f"{key}: {tuple(state_dict[key].shape)} does not fit {name}."
          f"{'.'.join(map(str, path))} ({e})"
        )
        continue
      current = _get(pure, path)
      if tuple(value.shape) != tuple(current.shape):
        mismatched.append(
          f"{key}: {tuple(state_dict[key].shape)} does not fit {name}."
          f"{'.'.join(map(str, path))} {tuple(current.shape)}"
        )
        continue
      _set(pure, path, jnp.asarray(value, dtype=current.dtype))
    new_states[name] = (module, pure)
  _check_positional_tables(state_dict, claimed, problems)
  unexpected = sorted(
    k for k in state_dict if k not in claimed and not any(p.match(k) for p in KNOWN_UNUSED)
  )
  if missing or unexpected or mismatched or problems:
    lines = [f"cannot load {source_name}:"]
    for title, items in (
      ("missing keys", missing),
      ("unexpected keys", unexpected),
      ("shape mismatches", mismatched),
      ("other problems", problems),
    ):
      if items:
        lines.append(
          f"  {len(items)} {title}: "
          + ", ".join(items[:20])
          + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
        )
    raise WeightMappingError("\n".join(lines))
  for module, pure in new_states.values():
    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def load_mtl_ddf(state_dict, *, student, asr=None, vsr=None):
  """The authors' full checkpoint: student + lossAV (and the teachers where given)."""
  targets = {"student": (student, student_entries(student))}
  if asr is not None:
    targets["asr"] = (asr, teacher_entries(asr, "ASRmodel.", ("audioEncoder", "audioDecoder")))
  if vsr is not None:
    targets["vsr"] = (vsr, teacher_entries(vsr, "VSRmodel.", ("videoEncoder", "videoDecoder")))
  if asr is None or vsr is None:
    skip = tuple(p for p, m in (("ASRmodel.", asr), ("VSRmodel.", vsr)) if m is None)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
  load_into(targets, state_dict, "MTL_DDF state dict")


def load_talknet(state_dict, *, student):
  """TalkNet's pretrain_TalkSet.model (student and lossAV; lossA/lossV are skipped)."""
  load_into({"student": (student, student_entries(student))}, state_dict, "TalkNet state dict")


def load_asr(state_dict, *, asr):
  """deep_avsr's audio-only.pt."""
  entries = teacher_entries(asr, "", ("audioEncoder", "audioDecoder"))
  load_into({"asr": (asr, entries)}, state_dict, "deep_avsr AudioNet state dict")


def load_vsr(state_dict, *, vsr):
  """deep_avsr's video-only.pt (the transformer; the frontend comes from visual_frontend.pt)."""
  entries = teacher_entries(vsr, "", ("videoEncoder", "videoDecoder"))
  load_into({"vsr": (vsr, entries)}, state_dict, "deep_avsr VideoNet state dict")


def load_vsr_frontend(state_dict, *, vsr):
  """deep_avsr's visual_frontend.pt into the VSR teacher's frontend."""
  if vsr.frontend is None:
    raise WeightMappingError(
      "the VSR teacher was built without a frontend (teachers.vsr.use_frontend=False)"
    )
  entries = visual_frontend_entries("", (), vsr.frontend)
  load_into(
    {"vsr_frontend": (vsr.frontend, entries)}, state_dict, "deep_avsr visual frontend state dict"
  )
