"""The config checks: types before values, finite numbers, and the widths the networks need, all
refused with one ConfigError naming the field before any work."""

import pathlib

import ml_collections
import pytest

from avcd import config_checks, config_lib

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def _config(name="tiny.py", **overrides):
  return config_lib.load_config(CONFIGS / name, overrides)


@pytest.mark.parametrize(
  "name", ["default.py", "tiny.py", "synthetic.py", "synthetic.py:partial", "avdeepfake1m.py"]
)
def test_shipped_configs_pass(name):
  config_checks.check(config_lib.load_config(f"{CONFIGS}/{name}"))


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("data.bucket_lengths", ("abc",), "must be a tuple of integers, like the default"),
    ("data.bucket_lengths", (50.5, 100), "must be a tuple of integers, like the default"),
    ("loss.sync_roll_frames", "3-10", "must be a tuple of integers, like the default"),
    ("eval.localisation.thresholds", ("high",), "must be a tuple of numbers, like the default"),
    ("optim.learning_rate", "fast", "must be a number, like the default"),
    ("train.labels", 1, "must be a string, like the default"),
    ("data.augment", "yes", "must be a bool, like the default"),
    ("optim.learning_rate", float("nan"), "must be a finite number"),
    ("optim.b2", float("inf"), "must be a finite number"),
    ("loss.distill_weight", float("-inf"), "must be a finite number"),
    ("eval.localisation.thresholds", (0.5, float("nan")), "must be a finite number"),
  ],
)
def test_a_value_of_the_wrong_kind_or_not_finite_names_the_field(field, value, message):
  # As a config file or a JSON config could hold it: ConfigDict's own type safety only guards
  # assignments, and the command line turns "abc" into ('abc',) for a tuple field.
  as_dict = _config().to_dict()
  *parents, leaf = field.split(".")
  node = as_dict
  for part in parents:
    node = node[part]
  node[leaf] = value
  config = ml_collections.ConfigDict(as_dict)
  with pytest.raises(config_checks.ConfigError, match=f"^{field}=.*{message}"):
    config_checks.check(config)


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"model.embed_dim": 32}, "model.audio.stage_channels[-1]=16 must equal model.embed_dim=32"),
    ({"model.visual.embed_dim": 8}, "model.visual.embed_dim=8 must equal model.embed_dim=16"),
    ({"model.num_heads": 3}, "model.embed_dim=16 must be divisible by model.num_heads=3"),
    ({"teachers.asr.num_heads": 3}, "teachers.asr.width=16 must be divisible"),
    ({"teachers.vsr.width": 32}, "teachers.vsr.frontend.stage_channels[-1]=16 must equal"),
  ],
)
def test_widths_that_cannot_build_the_networks_are_refused_before_building(overrides, message):
  with pytest.raises(config_checks.ConfigError) as raised:
    config_checks.check(_config(**overrides))
  assert message in str(raised.value)
