"""Phoneme heads (an addition to the paper): off, the paper's student and step are unchanged; on,
they read each encoder's frames, take no part in scoring, and need their teachers' classes."""

import hashlib
import importlib.metadata
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from avcd import config_checks, config_lib
from avcd.core import sharding
from avcd.models import build
from avcd.training import steps
from tests import tiny_models

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"

# SHA-256 of the lowered train step (StableHLO text without debug information, 2 clips x 50
# frames, 10 steps per epoch) at commit 173eb10, the last commit before phoneme heads existed:
# with the heads off, a config must lower to exactly this program. Lowering text changes with the
# compiler stack, so the fingerprints hold for these versions only.
FINGERPRINT_VERSIONS = dict(jax="0.10.2", flax="0.12.8", optax="0.2.8")
PROGRAMS_BEFORE_HEADS = {
  "tiny.py": "7787e451e7b25e435b52f2cb5f65d755e46a96a082051584fabf63dffbb6929c",
  "default.py": "3cbe7b36c749166eb646255cf7a945a9cfdaeea6b63b739a9816383f6c14de78",
}


@pytest.mark.parametrize("name", sorted(PROGRAMS_BEFORE_HEADS))
def test_without_heads_the_train_step_lowers_to_the_program_from_before_the_heads(name):
  installed = {p: importlib.metadata.version(p) for p in FINGERPRINT_VERSIONS}
  if installed != FINGERPRINT_VERSIONS:
    pytest.skip(f"fingerprints were taken with {FINGERPRINT_VERSIONS}; installed {installed}")
  config = config_lib.load_config(CONFIGS / name)
  assert tuple(config.model.phoneme_classes) == (0, 0) and config.loss.phoneme_weight == 0
  step = steps.make_train_step(config, sharding.make_mesh(config.mesh), steps_per_epoch=10)
  text = step.lower(50, 2).as_text()
  assert hashlib.sha256(text.encode()).hexdigest() == PROGRAMS_BEFORE_HEADS[name]


def test_heads_read_each_encoders_frames_and_leave_the_scores_alone():
  without = build.build_student(tiny_models.student_config(), seed=0)
  heads = build.build_student(tiny_models.student_config(phoneme_classes=(6, 5)), seed=0)
  rng = np.random.default_rng(0)
  mfcc = rng.standard_normal((2, 40, 13)).astype(np.float32)
  faces = rng.integers(0, 256, (2, 10, tiny_models.FACE, tiny_models.FACE), dtype=np.uint8)
  num_frames = np.array([10, 7], np.int32)
  out_heads = heads(mfcc, faces, num_frames, train=False)
  out_without = without(mfcc, faces, num_frames, train=False)
  assert out_heads["audio_phoneme_logits"].shape == (2, 10, 6)
  assert out_heads["visual_phoneme_logits"].shape == (2, 10, 5)
  assert "audio_phoneme_logits" not in out_without
  # Same seed, same other parameters (the heads are drawn from their own streams): equal scores.
  np.testing.assert_array_equal(out_heads["frame_logits"], out_without["frame_logits"])
  head_params = {
    ".".join(map(str, path))
    for path, _ in jax.tree_util.tree_flatten_with_path(nnx.state(heads, nnx.Param))[0]
  } - {
    ".".join(map(str, path))
    for path, _ in jax.tree_util.tree_flatten_with_path(nnx.state(without, nnx.Param))[0]
  }
  assert head_params and all("phoneme_head" in p for p in head_params)


def _config(**overrides) -> ConfigDict:
  return config_lib.load_config(CONFIGS / "tiny.py", overrides)


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"loss.phoneme_weight": 0.5}, "set both (heads and their loss) or neither"),
    ({"model.phoneme_classes": (6, 6)}, "set both (heads and their loss) or neither"),
    (
      {"model.phoneme_classes": (6, 5), "loss.phoneme_weight": 0.5},
      "need the teachers' classes",
    ),
    ({"model.phoneme_classes": (6,)}, "need (ASR classes, VSR classes)"),
    ({"loss.phoneme_weight": -1.0}, "loss.phoneme_weight=-1.0: must be a number >= 0"),
  ],
)
def test_config_checks_refuse_heads_without_their_loss_or_teachers(overrides, message):
  with pytest.raises(
    config_checks.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
  ):
    config_checks.check(_config(**overrides))


def test_the_demo_trains_with_heads_and_the_claim_studys_rows_without():
  demo = config_lib.load_config(CONFIGS / "synthetic.py")
  config_checks.check(demo)
  classes = (demo.teachers.asr.num_classes, demo.teachers.vsr.num_classes)
  assert tuple(demo.model.phoneme_classes) == classes and demo.loss.phoneme_weight > 0
  study = config_lib.load_config(f"{CONFIGS / 'synthetic.py'}:generalisation")
  assert tuple(study.model.phoneme_classes) == (0, 0) and study.loss.phoneme_weight == 0
