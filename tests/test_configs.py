"""Config files load, are locked, and reject misspelled overrides by name."""

import pathlib
import subprocess
import sys

import pytest

from avcd import config_lib

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_documents_its_command(path):
  config = config_lib.load_config(path)
  assert config.is_locked
  module_doc = path.read_text().split('"""')[1]
  assert "avcd " in module_doc and "Expected" in module_doc, (
    f"{path.name}: docstring must give the command, the hardware and the expected result"
  )
  for section in ("model", "teachers", "loss", "data", "eval", "optim", "train", "mesh"):
    assert section in config, f"{path.name} lacks {section}"


def test_override_sets_nested_field():
  config = config_lib.load_config(CONFIGS[0], {"train.num_epochs": 3, "loss.distill_weight": 0.5})
  assert config.train.num_epochs == 3 and config.loss.distill_weight == 0.5


@pytest.mark.parametrize("name", ["train.num_epoch", "trian.num_epochs", "model.audio.stem"])
def test_misspelled_override_names_the_field(name):
  with pytest.raises(
    AttributeError, match=name.split(".")[0] if name.startswith("trian") else name
  ):
    config_lib.load_config(CONFIGS[0], {name: 1})


def test_command_line_rejects_misspelled_override(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.cli",
      "train",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path}",
      "--config.train.num_epochz=1",
    ],
    capture_output=True,
    text=True,
    cwd=pathlib.Path(__file__).parents[1],
    timeout=120,
  )
  assert result.returncode != 0
  assert "num_epochz" in result.stderr


def test_cli_lists_commands():
  result = subprocess.run(
    [sys.executable, "-m", "avcd.cli", "--help"],
    capture_output=True,
    text=True,
    cwd=pathlib.Path(__file__).parents[1],
    timeout=60,
  )
  assert result.returncode == 0
  for command in ("train", "eval", "train-teacher", "prepare", "convert", "export", "predict"):
    assert command in result.stdout
