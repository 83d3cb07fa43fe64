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
# frames, 10 steps per epoch) with the heads off. Until afd7baa these were the programs of commit
# 173eb10, the last before phoneme heads existed, so adding the heads changed nothing for a config
# that does not use them. The frontend's BatchNorm and max pool got hand-written gradients and its
# shortcut a sliced input (60cea55, afd7baa, this commit: the same functions, parity-tested, in
# another program); the fingerprints were retaken then and guard the heads-off program from there
# on: a change to it must come with new fingerprints and its reason. Lowering text changes with
# the compiler stack, so the fingerprints hold for these versions only.
FINGERPRINT_VERSIONS = dict(jax="0.10.2", flax="0.12.8", optax="0.2.8")
HEADS_OFF_PROGRAMS = {
  "tiny.py": "25f7ded2457b49e3739eecfac45c0ebb4d9d93db34b9838b52e0d5d59c1579a4",
  "default.py": "4aa2fee787e35ecc54f4830b2c4746a8c7ee1e923a5e509b487522b03ab563f1",
}


@pytest.mark.parametrize("name", sorted(HEADS_OFF_PROGRAMS))
def test_without_heads_the_train_step_lowers_to_the_fingerprinted_program(name):
  installed = {p: importlib.metadata.version(p) for p in FINGERPRINT_VERSIONS}
  if installed != FINGERPRINT_VERSIONS:
    pytest.skip(f"fingerprints were taken with {FINGERPRINT_VERSIONS}; installed {installed}")
  config = config_lib.load_config(CONFIGS / name)
  assert tuple(config.model.phoneme_classes) == (0, 0) and config.loss.phoneme_weight == 0
  step = steps.make_train_step(config, sharding.make_mesh(config.mesh), steps_per_epoch=10)
  text = step.lower(50, 2).as_text()
  assert hashlib.sha256(text.encode()).hexdigest() == HEADS_OFF_PROGRAMS[name]


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
