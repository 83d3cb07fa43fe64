"""`avcd convert`: the parity fixture's weights as PyTorch files, converted and run."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from avcd import checkpoints, config_lib
from avcd.models import build
from avcd.models.teachers import sinusoidal_positions
from avcd.porting import convert, weights
from tests import parity_utils
from tests.conftest import REPO

TOLERANCE = 1e-4  # as tests/test_parity.py: of each array's max |value|


class CodeCarrier:
  """Pickles as a call to os.system: what a malicious checkpoint does."""

  def __init__(self, marker: pathlib.Path):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def _with_buffers(state_dict: dict) -> dict:
  """Adds the buffers torch.save(MTL_DDF.state_dict()) holds besides the generated weights."""
  manifest = json.loads(parity_utils.manifest_path().read_text())
  state_dict = dict(state_dict)
  for entry in manifest["keys"]:
    if entry["kind"] != "buffer":
      continue
    shape = entry["shape"]
    if entry["key"].endswith("num_batches_tracked"):
      state_dict[entry["key"]] = np.zeros(shape, np.int64)
    else:  # positionalEncoding.pe, (rows, 1, width)
      state_dict[entry["key"]] = sinusoidal_positions(shape[0], shape[-1]).reshape(shape)
  return state_dict


def _torch_save(state_dict: dict, path: pathlib.Path) -> pathlib.Path:
  torch = pytest.importorskip("torch")
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
  return path


def _strip(state_dict: dict, prefix: str) -> dict:
  return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(fixture, MTL_DDF state dict with buffers, directory for the files)."""
  pytest.importorskip("torch")
  fixture = parity_utils.load_fixture()
  state_dict = _with_buffers(parity_utils.reference_state_dict(str(fixture["seed"])))
  return fixture, state_dict, tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def converted_mtl(reference):
  """`avcd convert --mtl=best.model` run as a command."""
  _, state_dict, directory = reference
  best = _torch_save(state_dict, directory / "best.model")
  output = directory / "from_mtl"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-m", "avcd.cli", "convert", f"--mtl={best}", f"--output={output}"],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
    env=env,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "student from" in result.stdout and "teachers from" in result.stdout
  return output


@pytest.fixture(scope="module")
def restored_mtl(converted_mtl):
  return _restore(converted_mtl)


def _targets(use_frontend: bool = False):
  """Abstract paper-size student and teachers: (graphdefs, restore targets, configs)."""
  model_cfg = config_lib.student()
  teachers_cfg = config_lib.teachers()
  teachers_cfg.vsr.use_frontend = use_frontend
  graphdefs, targets = [], []
  for make in (
    lambda: build.build_student(model_cfg, 0),
    lambda: build.build_teachers(teachers_cfg),
  ):
    graphdef, params, batch_stats = build.split_model(nnx.eval_shape(make))
    graphdefs.append(graphdef)
    targets.append(checkpoints.abstract_like(dict(params=params, batch_stats=batch_stats)))
  return graphdefs, targets, (model_cfg, teachers_cfg)


def _restore(directory, use_frontend: bool = False):
  (student_def, teachers_def), (student_target, teachers_target), (model_cfg, teachers_cfg) = (
    _targets(use_frontend)
  )
  items = checkpoints.model_items(directory)
  student = (
    checkpoints.restore_item(directory, checkpoints.STUDENT, student_target, model_cfg)
    if checkpoints.STUDENT in items
    else None
  )
  teachers = (
    checkpoints.restore_item(directory, checkpoints.TEACHERS, teachers_target, teachers_cfg)
    if checkpoints.TEACHERS in items
    else None
  )
  return (student_def, teachers_def), student, teachers


def _flat(tree) -> dict:
  return {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _assert_same(ours: dict, theirs: dict):
  assert ours.keys() == theirs.keys()
  for key in ours:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def _assert_close(name, ours, ref):
  ref = np.asarray(ref, np.float64)
  ours = np.asarray(ours, np.float64).reshape(ref.shape)
  error = np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12)
  assert error <= TOLERANCE, f"{name}: max error {error:.2e} of its max |value| > {TOLERANCE}"


def test_converted_mtl_weights_reproduce_the_fixture(reference, converted_mtl, restored_mtl):
  fixture = reference[0]
  (student_def, teachers_def), student, teachers = restored_mtl
  meta = json.loads((converted_mtl / "0" / "meta" / "metadata").read_text())
  assert list(meta["converted_from"]) == [str(reference[2] / "best.model")]

  @jax.jit
  def forward(student, teachers):
    model = nnx.merge(student_def, student["params"], student["batch_stats"])
    pair = nnx.merge(teachers_def, teachers["params"], teachers["batch_stats"])
    out = model(fixture["mfcc"], fixture["faces"], np.array([int(fixture["T"])]), train=False)
    asr = jax.nn.softmax(pair.asr(fixture["stft"], out["mask"]), axis=-1)
    vsr = jax.nn.softmax(pair.vsr(fixture["lip"], out["mask"]), axis=-1)
    return out["frame_logits"][0], out["clip_logits"][0], asr, vsr

  frame_logits, clip, asr, vsr = forward(student, teachers)
  _assert_close("frame_logits", frame_logits, fixture["frame_logits"])
  _assert_close("video_logits", clip, fixture["video_logits"])
  _assert_close("video_score", clip[1:], fixture["video_score"])
  _assert_close("asr_probs", np.swapaxes(asr, 0, 1), fixture["asr_probs"])
  _assert_close("vsr_probs", np.swapaxes(vsr, 0, 1), fixture["vsr_probs"])


def test_talknet_file_gives_the_same_student(reference, restored_mtl):
  _, state_dict, directory = reference
  talknet = {f"module.{k}": v for k, v in state_dict.items() if k.startswith(("model.", "lossAV."))}
  rng = np.random.default_rng(0)
  for head in ("lossA", "lossV"):  # TalkNet's single-modality heads, which avcd drops
    talknet[f"module.{head}.FC.weight"] = rng.normal(size=(2, 128)).astype(np.float32)
    talknet[f"module.{head}.FC.bias"] = np.zeros(2, np.float32)
  output = directory / "from_talknet"
  sources = convert.convert(output=output, talknet=_torch_save(talknet, directory / "talk.model"))
  assert list(sources) == ["student"]
  _, student, teachers = _restore(output)
  assert teachers is None
  _assert_same(_flat(student), _flat(restored_mtl[1]))


def test_deep_avsr_files_give_the_same_teachers(reference, restored_mtl):
  _, state_dict, directory = reference
  files = dict(
    asr=_torch_save(_strip(state_dict, "ASRmodel."), directory / "audio-only.pt"),
    vsr=_torch_save(_strip(state_dict, "VSRmodel."), directory / "video-only.pt"),
    vsr_frontend=_torch_save(
      _strip(state_dict, "model.visualFrontend."), directory / "visual_frontend.pt"
    ),
  )
  output = directory / "from_deep_avsr"
  assert list(convert.convert(output=output, **files)) == ["teachers"]
  _, _, teachers = _restore(output, use_frontend=True)
  _, mtl_student, mtl_teachers = restored_mtl
  ours, mtl = _flat(teachers), _flat(mtl_teachers)
  frontend = {k: v for k, v in ours.items() if "['frontend']" in k}
  assert frontend
  _assert_same({k: v for k, v in ours.items() if k not in frontend}, mtl)
  # deep_avsr's visual frontend file here holds the student's frontend weights.
  student_frontend = {
    k.replace("['visual_encoder']", "['vsr']"): v
    for k, v in _flat(mtl_student).items()
    if "['visual_encoder']['frontend']" in k
  }
  _assert_same(frontend, student_frontend)


def test_teachers_without_frontend_do_not_fit_a_frontend_config(converted_mtl):
  with pytest.raises(
    checkpoints.CheckpointMismatchError,
    match=r"teachers\.vsr\.use_frontend: checkpoint False, this run True",
  ):
    _restore(converted_mtl, use_frontend=True)


def test_a_pickle_that_carries_code_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "code_ran"
  path = tmp_path / "best.model"
  torch.save({"model.w": torch.zeros(2), "payload": CodeCarrier(marker)}, path)
  with pytest.raises(convert.ConvertError, match=r"refusing .*best\.model.*arbitrary code"):
    convert.convert(output=tmp_path / "out", mtl=str(path))
  assert not marker.exists()
  assert not (tmp_path / "out").exists()


def test_without_torch_the_error_says_how_to_install_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  (tmp_path / "best.model").write_bytes(b"")
  with pytest.raises(convert.ConvertError, match=r"pip install 'avcd\[torch\]'"):
    convert.load_state_dict(tmp_path / "best.model")


@pytest.mark.parametrize(
  "sources, message",
  [
    (dict(mtl="a", talknet="b"), "both hold a student"),
    (dict(mtl="a", asr="b", vsr="c"), "either --mtl or --asr/--vsr"),
    (dict(asr="a"), "--asr and --vsr go together"),
    (dict(talknet="a", vsr_frontend="b"), "--vsr-frontend completes the VSR teacher"),
    (dict(), "nothing to convert"),
  ],
)
def test_impossible_source_combinations_are_explained(tmp_path, sources, message):
  with pytest.raises(convert.ConvertError, match=message):
    convert.convert(output=tmp_path / "out", **sources)


def test_a_non_empty_output_is_refused(tmp_path):
  (tmp_path / "something").write_text("")
  with pytest.raises(convert.ConvertError, match="is not empty"):
    convert.convert(output=tmp_path, talknet="pretrain_TalkSet.model")


def test_empty_and_truncated_files_are_named(tmp_path, reference):
  pytest.importorskip("torch")
  _, state_dict, _ = reference
  empty = tmp_path / "empty.pt"
  empty.write_bytes(b"")
  with pytest.raises(convert.ConvertError, match="empty.pt is empty"):
    convert.load_state_dict(empty)
  whole = _torch_save(state_dict, tmp_path / "whole.pt")
  cut = tmp_path / "cut.pt"
  cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 3])
  with pytest.raises(convert.ConvertError, match="cut.pt is not a readable PyTorch file"):
    convert.load_state_dict(cut)


def test_a_visual_stem_of_the_wrong_shape_is_a_mapping_error(tmp_path, reference):
  pytest.importorskip("torch")
  _, state_dict, _ = reference
  key = "model.visualFrontend.frontend3D.0.weight"
  flat = dict(state_dict, **{key: state_dict[key][:, :, 0]})  # a Conv2d weight: one axis short
  with pytest.raises(weights.WeightMappingError, match=r"frontend3D\.0\.weight: .*Conv3d"):
    convert.convert(output=tmp_path / "out", mtl=str(_torch_save(flat, tmp_path / "m.pt")))
  assert not (tmp_path / "out").exists()


def test_weights_holding_nan_or_inf_are_refused(tmp_path, reference):
  pytest.importorskip("torch")
  _, state_dict, _ = reference
  key = "model.audioEncoder.conv1.weight"
  broken = dict(state_dict, **{key: np.full_like(state_dict[key], np.nan)})
  with pytest.raises(convert.ConvertError, match=rf"NaN or Inf in 1 tensors \({key}\)"):
    convert.convert(output=tmp_path / "out", mtl=str(_torch_save(broken, tmp_path / "m.pt")))
