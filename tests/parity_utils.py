"""Reference fixtures (shared/parity): locating them and rebuilding their weights.

Weights are regenerated from the state-dict manifest and the fixture's own `seed` by the rule in
shared/parity/README.md, so the parity tests pass for any fixture made that way.
"""

import json
import math
import os
import pathlib
import zlib

import numpy as np
import pytest
from flax import nnx

from avcd import config_lib
from avcd.models.student import Student
from avcd.models.teachers import ASRTeacher, VSRTeacher
from avcd.porting import weights
from tests.conftest import REPO

PARITY_DIR = REPO.parent / "shared" / "parity"


def fixture_path() -> pathlib.Path:
  return pathlib.Path(os.environ.get("AVCD_PARITY_FIXTURE", PARITY_DIR / "fixture_public.npz"))


def manifest_path() -> pathlib.Path:
  """The state-dict manifest lies beside the fixture (fixtures are made from it)."""
  return fixture_path().parent / "state_dict_manifest.json"


def load_fixture() -> dict:
  path = fixture_path()
  if not path.exists():
    pytest.skip(
      f"parity fixture {path} not found (set AVCD_PARITY_FIXTURE or provide "
      f"../shared/parity/fixture_public.npz)"
    )
  if not manifest_path().exists():
    pytest.skip(f"state-dict manifest {manifest_path()} not found")
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _generate(key: str, shape: list[int], kind: str, seed: str) -> np.ndarray:
  rs = np.random.RandomState(zlib.crc32(f"{seed}:{key}".encode()) & 0xFFFFFFFF)
  v = np.asarray(rs.standard_normal(tuple(shape)), np.float64)
  if kind == "weight":
    v = v / math.sqrt(int(np.prod(shape[1:])))
  elif kind in ("bias", "running_mean"):
    v = 0.1 * v
  elif kind == "norm_scale":
    v = 1.0 + 0.1 * v
  elif kind == "running_var":
    v = 1.0 + 0.25 * np.abs(v)
  elif kind == "prelu":
    v = 0.25 + 0.05 * v
  else:
    raise ValueError(f"{key}: unknown weight kind {kind!r}")
  return v.astype(np.float32)


def reference_state_dict(seed: str) -> dict[str, np.ndarray]:
  """The MTL_DDF state dict (without buffers) the fixture with this seed was made from."""
  manifest = json.loads(manifest_path().read_text())
  return {
    e["key"]: _generate(e["key"], e["shape"], e["kind"], seed)
    for e in manifest["keys"]
    if e["kind"] != "buffer"
  }


def paper_models():
  """Abstract (unallocated) student and teachers with the paper's sizes; the VSR reads lips."""
  teachers = config_lib.teachers()
  teachers.vsr.use_frontend = False
  student = nnx.eval_shape(lambda: Student(config_lib.student(), rngs=nnx.Rngs(0)))
  asr = nnx.eval_shape(lambda: ASRTeacher(teachers.asr, rngs=nnx.Rngs(0)))
  vsr = nnx.eval_shape(lambda: VSRTeacher(teachers.vsr, rngs=nnx.Rngs(0)))
  return student, asr, vsr


def reference_models(seed: str):
  student, asr, vsr = paper_models()
  weights.load_mtl_ddf(reference_state_dict(seed), student=student, asr=asr, vsr=vsr)
  return student, asr, vsr
