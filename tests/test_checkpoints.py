"""Checkpoint integrity: checksums, fallback past corrupt steps, kills mid-save, other meshes."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from avcd import checkpoints
from avcd.checkpoints import integrity, layout
from avcd.models import build
from avcd.training import preemption
from tests import tiny_models
from tests.conftest import REPO


def _tree(step: int) -> dict:
  return dict(w=jnp.arange(50_000, dtype=jnp.float32) + step, b=jnp.full((3,), step, jnp.int32))


def _checkpointer(directory) -> checkpoints.TrainCheckpointer:
  return checkpoints.TrainCheckpointer(directory, keep_latest=3, keep_best=1, best_metric="auc")


def _saved_run(directory, steps=(1, 2, 3)) -> checkpoints.TrainCheckpointer:
  checkpointer = _checkpointer(directory)
  for step in steps:
    checkpointer.save(step, _tree(step), metrics=dict(auc=0.1 * step))
  checkpointer.wait()
  return checkpointer


def _largest_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_byte(path: pathlib.Path, position: int | None = None) -> None:
  data = bytearray(path.read_bytes())
  data[len(data) // 2 if position is None else position] ^= 0x01
  path.write_bytes(bytes(data))


def _subprocess_env(**extra) -> dict:
  return dict(os.environ, PYTHONPATH=str(REPO), **extra)


def test_committed_steps_carry_checksums_of_every_file(tmp_path):
  checkpointer = _saved_run(tmp_path)
  step_dir = tmp_path / "3"
  listed = json.loads((step_dir / checkpoints.CHECKSUMS).read_text())["files"]
  on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
  # Orbax's commit bookkeeping is rewritten after the checksums; everything else is covered.
  assert on_disk - set(listed) == {
    "_CHECKPOINT_METADATA",
    "commit_success.txt",
    checkpoints.CHECKSUMS,
  }
  assert any(name.startswith("state/") for name in listed)
  assert any(name.startswith("metrics/") for name in listed)
  assert checkpoints.verify_checksums(step_dir)
  assert checkpointer.restorable_step() == 3
  checkpointer.close()


def _damage_unchecksummed(step_dir: pathlib.Path) -> None:
  """A step as an older avcd wrote it (no checksums), with a bit flipped in its OCDBT index."""
  (step_dir / checkpoints.CHECKSUMS).unlink()
  _flip_byte(step_dir / "state" / "manifest.ocdbt", 0)


@pytest.mark.parametrize(
  "damage", ["flipped_byte", "truncated", "deleted", "bad_manifest", "unchecksummed"]
)
def test_corrupt_latest_step_falls_back_to_the_previous_one(tmp_path, damage, caplog):
  checkpointer = _saved_run(tmp_path)
  checkpointer.close()
  victim = _largest_file(tmp_path / "3")
  if damage == "unchecksummed":
    _damage_unchecksummed(tmp_path / "3")
  elif damage == "flipped_byte":
    _flip_byte(victim)
  elif damage == "truncated":
    victim.write_bytes(victim.read_bytes()[:100])
  elif damage == "deleted":
    victim.unlink()
  else:
    (tmp_path / "3" / checkpoints.CHECKSUMS).write_text('{"files": ')

  checkpointer = _checkpointer(tmp_path)
  with caplog.at_level("WARNING"):
    assert checkpointer.restorable_step() == 2
  assert str(tmp_path / "3") in caplog.text and "corrupt" in caplog.text
  assert checkpointer.all_steps() == [1, 2]
  assert [p.name.split(".")[0] for p in tmp_path.glob("3.corrupt-*")] == ["3"]
  restored = checkpointer.restore(2, checkpoints.abstract_like(_tree(0)))
  np.testing.assert_array_equal(restored["w"], _tree(2)["w"])
  # Training goes on from step 2 and writes step 3 anew.
  checkpointer.save(3, _tree(30), force=True)
  checkpointer.wait()
  assert checkpointer.all_steps() == [1, 2, 3]
  checkpointer.close()


def test_no_intact_step_is_an_error_naming_them(tmp_path):
  _saved_run(tmp_path, steps=(1, 2)).close()
  for step in (1, 2):
    _flip_byte(_largest_file(tmp_path / str(step)))
  checkpointer = _checkpointer(tmp_path)
  with pytest.raises(checkpoints.CorruptCheckpointError, match=r"no checkpoint .* is intact") as e:
    checkpointer.restorable_step()
  assert str(tmp_path / "1") in str(e.value) and str(tmp_path / "2") in str(e.value)
  checkpointer.close()


def test_a_refused_resume_stays_refused_until_told_to_start_over(tmp_path):
  _saved_run(tmp_path, steps=(1, 2)).close()
  for step in (1, 2):
    _flip_byte(_largest_file(tmp_path / str(step)))
  with pytest.raises(checkpoints.CorruptCheckpointError):
    _checkpointer(tmp_path).restorable_step()  # moves both aside
  for _ in range(2):  # the next starts refuse too, naming the folders and the way out
    checkpointer = _checkpointer(tmp_path)
    with pytest.raises(checkpoints.ResumeRefusedError, match="--start_over") as e:
      checkpointer.restorable_step()
    assert "1.corrupt-" in str(e.value) and "2.corrupt-" in str(e.value)
    checkpointer.close()
  checkpointer = _checkpointer(tmp_path)
  assert checkpointer.restorable_step(start_over=True) is None
  checkpointer.close()
  for aside in tmp_path.glob("*.corrupt-*"):  # or moving them out of the way
    aside.rename(tmp_path.parent / f"{tmp_path.name}-{aside.name}")
  assert _checkpointer(tmp_path).restorable_step() is None


_FAILING_SAVER = textwrap.dedent("""
    import resource, signal, sys, time
    import jax.numpy as jnp
    import numpy as np
    from avcd import checkpoints
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead (EFBIG)
    checkpointer = checkpoints.TrainCheckpointer(sys.argv[1], keep_latest=3, keep_best=0,
                                                 best_metric="auc")
    checkpointer.save(1, dict(w=jnp.zeros(10)))
    checkpointer.wait()
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the file system "fills up"
    checkpointer.save(2, dict(w=jnp.asarray(np.random.default_rng(0).random(4 << 20,
                                                                         np.float32))))
    try:
      for _ in range(600):  # what the train loop asks after every step
        checkpointer.raise_if_failed()
        time.sleep(0.05)
      checkpointer.wait()
    except checkpoints.CheckpointSaveError as e:
      print("FAILED:", e, flush=True)
      sys.exit(1)
""")


def test_a_failed_save_is_reported_at_once_with_its_cause(tmp_path):
  result = subprocess.run(
    [sys.executable, "-c", _FAILING_SAVER, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=300,
    env=_subprocess_env(),
  )
  assert result.returncode == 1, result.stderr[-3000:]
  message = result.stdout.strip()
  assert message.startswith(f"FAILED: saving checkpoint step 2 to {tmp_path / '2'} failed: ")
  assert "File too large" in message and "the steps before it are intact" in message
  checkpointer = _checkpointer(tmp_path)
  assert checkpointer.restorable_step() == 1
  checkpointer.close()


@pytest.mark.parametrize(
  "tensorstore_message",
  [
    'Error writing local file "/ckpt/4.tmp/_sharding": [OS error 28: No space left on device]',
    # The form CI met: the errno last, after the failed lock file's write.
    'RESOURCE_EXHAUSTED: Error writing local file "/ckpt/4.tmp/_sharding": Failed writing: '
    '"/ckpt/4.tmp/_sharding.__lock": Failed to write 11647 bytes to file 10: No space left on '
    "device [os_error_code='28']",
  ],
)
def test_a_save_error_is_reduced_to_its_os_cause_and_path(tensorstore_message):
  try:
    try:
      raise ValueError(tensorstore_message)
    except ValueError as inner:
      raise RuntimeError("Save Finalize thread (save_finalize) failed.") from inner
  except RuntimeError as outer:
    cause = integrity.root_cause(outer)
  assert cause == "No space left on device (/ckpt/4.tmp/_sharding)"


def test_restoring_a_named_corrupt_step_raises(tmp_path):
  _saved_run(tmp_path).close()
  _flip_byte(_largest_file(tmp_path / "2"))
  checkpointer = _checkpointer(tmp_path)
  with pytest.raises(checkpoints.CorruptCheckpointError, match=str(tmp_path / "2")):
    checkpointer.restore(2, checkpoints.abstract_like(_tree(0)))
  checkpointer.close()


def test_reading_commands_skip_an_unchecksummed_step_that_fails_to_read(tmp_path, caplog):
  _saved_run(tmp_path).close()
  _damage_unchecksummed(tmp_path / "3")
  with caplog.at_level("WARNING"):
    assert checkpoints.select_step(tmp_path) == tmp_path / "2"
  assert f"checkpoint {tmp_path / '3'} is corrupt: its 'state' item fails to read" in caplog.text
  with pytest.raises(checkpoints.CorruptCheckpointError, match="DATA_LOSS") as e:
    checkpoints.select_step(tmp_path, 3)
  assert str(tmp_path / "3") in str(e.value) and "\n" not in str(e.value)
  # An undamaged step without checksums still restores (with a warning).
  (tmp_path / "2" / checkpoints.CHECKSUMS).unlink()
  assert checkpoints.select_step(tmp_path, 2) == tmp_path / "2"


def test_half_written_step_is_ignored_and_removed(tmp_path):
  _saved_run(tmp_path, steps=(1, 2)).close()
  # What a process killed mid-save leaves: the step's files under Orbax's temporary name.
  half = tmp_path / "3.orbax-checkpoint-tmp"
  (tmp_path / "2").rename(half)
  _flip_byte(_largest_file(half))
  checkpointer = _checkpointer(tmp_path)
  assert checkpointer.restorable_step() == 1
  checkpointer.save(2, _tree(2), force=True)
  checkpointer.wait()
  assert not half.exists()
  checkpointer.close()


_KILLED_SAVER = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from avcd import checkpoints
    from avcd.checkpoints import integrity

    def die(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGKILL)

    checkpointer = checkpoints.TrainCheckpointer(sys.argv[1], keep_latest=3, keep_best=0,
                                                 best_metric="auc")
    tree = dict(w=jnp.arange(2_000_000, dtype=jnp.float32))
    checkpointer.save(1, tree)
    checkpointer.wait()
    if sys.argv[2] == "while_checksumming":
      integrity._file_digest = die  # the step is fully written, not yet committed
    checkpointer.save(2, dict(w=tree["w"] + 1))
    if sys.argv[2] == "while_writing":
      die()
    checkpointer.wait()
""")


@pytest.mark.parametrize("moment", ["while_writing", "while_checksumming"])
def test_sigkill_during_a_save_leaves_the_previous_step(tmp_path, moment):
  result = subprocess.run(
    [sys.executable, "-c", _KILLED_SAVER, str(tmp_path), moment],
    env=_subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  checkpointer = _checkpointer(tmp_path)
  assert checkpointer.restorable_step() == 1
  restored = checkpointer.restore(1, checkpoints.abstract_like(dict(w=jnp.zeros(2_000_000))))
  np.testing.assert_array_equal(restored["w"], np.arange(2_000_000, dtype=np.float32))
  checkpointer.save(2, dict(w=jnp.zeros(2_000_000)), force=True)
  checkpointer.wait()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]
  checkpointer.close()


_RESHARD = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from avcd import checkpoints
    from avcd.core import sharding

    def mesh(data, fsdp):
      return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)),
                                devices=jax.devices()[:data * fsdp])

    values = dict(big=np.arange(1024 * 512, dtype=np.float32).reshape(1024, 512),
                  small=np.arange(7, dtype=np.float32))
    saved_on = mesh(1, 4)
    shardings = sharding.state_shardings(values, saved_on)
    assert shardings["big"].spec == jax.sharding.PartitionSpec("fsdp", None), shardings["big"]
    state = jax.tree.map(jax.device_put, values, shardings)
    checkpointer = checkpoints.TrainCheckpointer(sys.argv[1], keep_latest=2, keep_best=0,
                                                 best_metric="auc")
    checkpointer.save(5, state)
    checkpointer.wait()
    for data, fsdp in ((2, 1), (1, 2), (1, 1)):
      target_mesh = mesh(data, fsdp)
      target = checkpoints.abstract_like(values, sharding.state_shardings(values, target_mesh))
      restored = checkpointer.restore(5, target)
      for name, array in restored.items():
        assert array.sharding == target[name].sharding, (name, array.sharding)
        np.testing.assert_array_equal(np.asarray(array), values[name])
    checkpointer.close()
    print("resharded")
""")


def test_restores_onto_a_different_device_count_and_mesh(tmp_path):
  result = subprocess.run(
    [sys.executable, "-c", _RESHARD, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=120,
    env=_subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
  )
  assert result.returncode == 0 and "resharded" in result.stdout, result.stderr[-3000:]


def _tiny_student_state(model_cfg) -> dict:
  abstract = nnx.eval_shape(lambda: build.build_student(model_cfg, 0))
  _, params, batch_stats = build.split_model(abstract)
  return jax.tree.map(
    lambda x: jnp.ones(x.shape, x.dtype), dict(params=params, batch_stats=batch_stats)
  )


def _abstract_student(model_cfg) -> dict:
  _, params, batch_stats = build.split_model(
    nnx.eval_shape(lambda: build.build_student(model_cfg, 0))
  )
  return checkpoints.abstract_like(dict(params=params, batch_stats=batch_stats))


def test_model_checkpoints_are_found_from_any_of_their_paths(tmp_path):
  model_cfg = tiny_models.student_config()
  checkpoints.save_model(
    tmp_path / "model",
    student_state=_tiny_student_state(model_cfg),
    config=ml_collections.ConfigDict(dict(model=model_cfg)),
  )
  step_dir = tmp_path / "model" / "0"
  assert checkpoints.locate(tmp_path / "model") == step_dir
  assert checkpoints.locate(step_dir) == step_dir
  assert checkpoints.verify_checksums(step_dir)
  restored = checkpoints.restore_item(step_dir, checkpoints.STUDENT, _abstract_student(model_cfg))
  assert all(np.all(np.asarray(x) == 1) for x in jax.tree.leaves(restored))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 .*steps: \[0\]"):
    checkpoints.locate(tmp_path / "model" / "7")
  with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
    checkpoints.locate(tmp_path)


def test_corrupt_model_checkpoint_is_refused_naming_it(tmp_path):
  model_cfg = tiny_models.student_config()
  checkpoints.save_model(tmp_path, student_state=_tiny_student_state(model_cfg))
  victim = _largest_file(tmp_path / "0")
  _flip_byte(victim)
  with pytest.raises(checkpoints.CorruptCheckpointError) as e:
    checkpoints.restore_item(tmp_path, checkpoints.STUDENT, _abstract_student(model_cfg))
  assert str(tmp_path / "0") in str(e.value)
  assert str(victim.relative_to(tmp_path / "0")) in str(e.value)


def test_a_checkpoint_for_other_networks_names_the_differing_config(tmp_path):
  saved_cfg = tiny_models.student_config()
  checkpoints.save_model(
    tmp_path,
    student_state=_tiny_student_state(saved_cfg),
    config=ml_collections.ConfigDict(dict(model=saved_cfg)),
  )
  other_cfg = tiny_models.student_config(embed_dim=32)
  other_cfg.audio.stage_channels = (4, 8, 8, 32)
  with pytest.raises(checkpoints.CheckpointMismatchError) as e:
    checkpoints.restore_item(
      tmp_path, checkpoints.STUDENT, _abstract_student(other_cfg), expected=other_cfg
    )
  message = str(e.value)
  assert (
    "shapes differ: batch_stats/audio_encoder/blocks/3/bn1/mean (16,) (this run (32,))" in message
  )
  assert "model.embed_dim: checkpoint 16, this run 32" in message


def test_sigterm_sets_the_flag_and_gives_the_signal_back():
  previous = signal.getsignal(signal.SIGTERM)
  watcher = preemption.PreemptionWatcher()
  assert not watcher.stop_requested(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watcher.stop_requested(2)
  assert signal.getsignal(signal.SIGTERM) == previous  # a second SIGTERM is not swallowed
  watcher.close()
  assert signal.getsignal(signal.SIGTERM) == previous


def test_closing_the_watcher_restores_the_handler():
  previous = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
  watcher = preemption.PreemptionWatcher()
  assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] != previous
  watcher.close()
  assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == previous


def test_ctrl_c_asks_to_stop_once_and_a_second_one_interrupts_at_once():
  # Python's own handler, as in a terminal: a test worker may have inherited SIGINT ignored
  # (a shell's background job does), and the second Ctrl-C goes to whatever was there before.
  inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    watcher = preemption.PreemptionWatcher()
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.stop_requested(1) and watcher.interrupted
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
    watcher.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, inherited)


def _steps_of_students(root: pathlib.Path, model_cfg, steps) -> None:
  """A directory of model-checkpoint steps whose student weights all equal the step number."""
  for step in steps:
    checkpoints.save_model(
      root.parent / f"model{step}",
      student_state=jax.tree.map(lambda x: x * step, _tiny_student_state(model_cfg)),
    )
    shutil.copytree(root.parent / f"model{step}" / "0", root / str(step))


def test_a_step_deleted_by_retention_while_read_gives_way_to_the_newest_left(
  tmp_path, monkeypatch, caplog
):
  model_cfg = tiny_models.student_config()
  config = ml_collections.ConfigDict(dict(model=model_cfg))
  root = tmp_path / "checkpoints"
  _steps_of_students(root, model_cfg, (2, 4))
  check_layout = layout.check_layout

  def retire_step_4(step_dir, *args, **kwargs):
    # What a training run's retention does between choosing a step and reading its arrays.
    if step_dir.name == "4":
      shutil.rmtree(step_dir)
    return check_layout(step_dir, *args, **kwargs)

  monkeypatch.setattr(layout, "check_layout", retire_step_4)
  restored = checkpoints.restore_student(root, config=config)
  assert restored.source["step"] == 2
  assert all(np.all(np.asarray(x) == 2) for x in jax.tree.leaves(restored.params))
  assert f"step 4 of {root} was deleted while it was read" in caplog.text
  assert "using step 2, the newest one left" in caplog.text

  again = tmp_path / "again" / "checkpoints"
  _steps_of_students(again, model_cfg, (2, 4))
  with pytest.raises(checkpoints.StepRetiredError, match=r"/4 was deleted while it was read"):
    checkpoints.restore_student(again, 4, config=config)


def test_a_failed_read_of_a_step_that_is_still_there_is_not_taken_for_retention(
  tmp_path, monkeypatch
):
  model_cfg = tiny_models.student_config()
  root = tmp_path / "checkpoints"
  _steps_of_students(root, model_cfg, (2, 4))

  def fail(*args, **kwargs):
    raise OSError("the disk went away")

  monkeypatch.setattr(layout, "check_layout", fail)
  with pytest.raises(OSError, match="the disk went away"):
    checkpoints.restore_student(root, config=ml_collections.ConfigDict(dict(model=model_cfg)))


def test_an_unreadable_checkpoint_directory_is_named_once(tmp_path, monkeypatch):
  _saved_run(tmp_path / "run" / "checkpoints").close()
  unreadable = tmp_path / "run" / "checkpoints"
  is_dir = pathlib.Path.is_dir

  def denied(path):
    # What a user without read permission on `unreadable` gets (root is never denied).
    if path.parent == unreadable:
      raise PermissionError(13, "Permission denied", str(path))
    return is_dir(path)

  monkeypatch.setattr(pathlib.Path, "is_dir", denied)
  # `avcd eval --workdir=run` reads run/checkpoints, probing whether it is a workdir first.
  with pytest.raises(PermissionError) as e:
    checkpoints.select_step(unreadable)
  assert e.value.filename == str(unreadable)
  assert "cannot read the directory (Permission denied)" in str(e.value)
