"""`avcd convert`: the authors' released PyTorch weights as an avcd model checkpoint.

    avcd convert --mtl=best.model --output=DIR
    avcd convert --talknet=pretrain_TalkSet.model --asr=audio-only.pt --vsr=video-only.pt \
        [--vsr-frontend=visual_frontend.pt] --output=DIR

Sources (key layouts in shared/parity/README.md, "Checkpoint key mapping"; mapping in weights.py):
  --mtl           the authors' MTL_DDF state dict (best.model): the student and both teachers.
  --talknet       TalkNet's pretrain_TalkSet.model: the student (lossA/lossV heads are dropped).
  --asr, --vsr    deep_avsr's audio-only.pt and video-only.pt: the teachers (given together).
  --vsr-frontend  deep_avsr's visual_frontend.pt: lets the VSR teacher compute lip features from
                  mouth crops (teachers.vsr.use_frontend=True); without it the VSR teacher reads
                  precomputed lip features, as the authors' MTL_DDF does.

These files come from the internet, so they are read with `torch.load(weights_only=True)`: a plain
state dict of tensors loads, a pickle that would build any other object (and so could run code)
is refused. torch is an optional extra (`pip install 'avcd[torch]'`).

The output is a model checkpoint (checkpoints.save_model) with items `student` and/or `teachers`
({params, batch_stats}), `config` ({model, teachers}: the paper's sizes, as config_lib builds
them) and `meta` (the source files and their SHA-256). It is consumed by
`--config.train.init_from=DIR` (the student), `--config.teachers.checkpoint=DIR` (the teachers)
and `avcd eval --checkpoint=DIR` (the student).
"""

import hashlib
import pathlib
import pickle

import jax
import ml_collections
import numpy as np
from flax import nnx

from avcd import checkpoints, config_lib
from avcd.models import build
from avcd.porting import weights

INSTALL_TORCH = "pip install 'avcd[torch]'"
# Containers some training scripts wrap a state dict in.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


class ConvertError(ValueError):
  """The inputs cannot be converted; the message says why and what to do."""


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{key: numpy array} of a PyTorch state dict file, read without running any of its code.

  Raises:
    ConvertError: torch is not installed, the file's pickle holds more than tensors (it is
      refused), or it holds no state dict.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConvertError(
      f"reading PyTorch weights needs torch, an optional extra of avcd: {INSTALL_TORCH}"
    ) from e
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConvertError(f"{path} does not exist")
  if path.stat().st_size == 0:
    raise ConvertError(f"{path} is empty")
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ConvertError(
      f"refusing {path}: it is not a plain file of tensors that torch.load(weights_only=True) "
      f"can read. A pickle that builds other objects can run arbitrary code when loaded, so "
      f"avcd never unpickles it fully. torch says: {' '.join(str(e).split())}"
    ) from e
  except (RuntimeError, EOFError, OSError, ValueError) as e:  # torch's zip reader on a cut file
    raise ConvertError(
      f"{path} is not a readable PyTorch file (truncated or damaged?): {' '.join(str(e).split())}"
    ) from e
  if isinstance(loaded, dict) and len(loaded) == 1 and next(iter(loaded)) in _WRAPPER_KEYS:
    loaded = next(iter(loaded.values()))
  if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
    kind = type(loaded).__name__
    keys = sorted(map(str, loaded))[:8] if isinstance(loaded, dict) else []
    raise ConvertError(
      f"{path} holds a {kind}, not a state dict of tensors"
      + (f" (keys: {', '.join(keys)}, ...)" if keys else "")
    )
  # numpy has no bfloat16: floating tensors are widened to float32 (the networks' parameters).
  arrays = {
    k: (v.detach().to(torch.float32) if v.is_floating_point() else v.detach()).numpy()
    for k, v in loaded.items()
  }
  broken = [k for k, v in arrays.items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
  if broken:
    raise ConvertError(
      f"{path} holds NaN or Inf in {len(broken)} tensors ({', '.join(broken[:8])}"
      f"{', ...' if len(broken) > 8 else ''}): a detector built on them would "
      "score NaN; refusing it"
    )
  return arrays


def _sha256(path: pathlib.Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _split(module: nnx.Module, what: str) -> dict:
  """{params, batch_stats} of a filled module; fails if any array was left unfilled."""
  _, params, batch_stats = build.split_model(module)
  unfilled = [
    leaf
    for leaf in jax.tree.leaves((params, batch_stats))
    if isinstance(leaf, jax.ShapeDtypeStruct)
  ]
  if unfilled:
    raise ConvertError(f"the sources left {len(unfilled)} arrays of the {what} unfilled")
  return dict(params=params, batch_stats=batch_stats)


def convert(
  *,
  output: str | pathlib.Path,
  mtl: str | None = None,
  talknet: str | None = None,
  asr: str | None = None,
  vsr: str | None = None,
  vsr_frontend: str | None = None,
) -> dict[str, list[str]]:
  """Writes the model checkpoint of the module docstring; returns {item: [source files]}.

  Raises:
    ConvertError: an impossible combination of sources, an output that already holds a
      checkpoint, or a file that cannot be read (see load_state_dict).
    weights.WeightMappingError: a file's keys or shapes do not fit the networks.
  """
  if mtl and talknet:
    raise ConvertError("--mtl and --talknet both hold a student: give one of them")
  if mtl and (asr or vsr):
    raise ConvertError("--mtl holds both teachers already: give either --mtl or --asr/--vsr")
  if bool(asr) != bool(vsr):
    raise ConvertError("--asr and --vsr go together: the teachers item holds both teachers")
  if vsr_frontend and not (mtl or vsr):
    raise ConvertError("--vsr-frontend completes the VSR teacher: give it with --vsr or --mtl")
  if not (mtl or talknet or asr):
    raise ConvertError("nothing to convert: give --mtl, or --talknet and/or --asr with --vsr")
  output = pathlib.Path(output).absolute()
  if output.exists() and any(output.iterdir()):
    raise ConvertError(f"{output} is not empty: choose a new --output directory")

  model_cfg = config_lib.student()
  teachers_cfg = config_lib.teachers()
  teachers_cfg.vsr.use_frontend = bool(vsr_frontend)
  student = nnx.eval_shape(lambda: build.build_student(model_cfg, 0)) if (mtl or talknet) else None
  teachers = nnx.eval_shape(lambda: build.build_teachers(teachers_cfg)) if (mtl or asr) else None
  sources = {"student": [], "teachers": []}
  if mtl:
    weights.load_mtl_ddf(load_state_dict(mtl), student=student, asr=teachers.asr, vsr=teachers.vsr)
    sources["student"].append(mtl)
    sources["teachers"].append(mtl)
  if talknet:
    weights.load_talknet(load_state_dict(talknet), student=student)
    sources["student"].append(talknet)
  if asr:
    weights.load_asr(load_state_dict(asr), asr=teachers.asr)
    weights.load_vsr(load_state_dict(vsr), vsr=teachers.vsr)
    sources["teachers"] += [asr, vsr]
  if vsr_frontend:
    weights.load_vsr_frontend(load_state_dict(vsr_frontend), vsr=teachers.vsr)
    sources["teachers"].append(vsr_frontend)

  files = {
    str(pathlib.Path(f).absolute()): _sha256(pathlib.Path(f))
    for f in (mtl, talknet, asr, vsr, vsr_frontend)
    if f
  }
  checkpoints.save_model(
    output,
    student_state=_split(student, "student") if student is not None else None,
    teachers_state=_split(teachers, "teachers") if teachers is not None else None,
    config=ml_collections.ConfigDict(dict(model=model_cfg, teachers=teachers_cfg)),
    meta=dict(
      converted_from=files,
      items={k: [str(pathlib.Path(f).absolute()) for f in v] for k, v in sources.items() if v},
    ),
  )
  return {k: v for k, v in sources.items() if v}
