"""teachers.cache: stored teacher posteriors give the train step the losses of the online teachers.

Runs configs/tiny.py (random teachers) on its synthetic corpus with one bucket of whole clips,
so each variant of the train step compiles once.
"""

import pathlib
import shutil

import jax
import numpy as np
import pytest

from avcd import checkpoints, config_lib, train
from avcd.core import sharding
from avcd.models import build, teachers as teachers_model
from avcd.models.student import frame_mask
from avcd.teachers import cache as teacher_cache, frozen
from avcd.training import steps
from data_pipelines.building import corpus_setup
from data_pipelines.reading import loader, posterior_store as cache_store
from tests.conftest import REPO

# Whole-clip windows (train_window = max_frames = 40) in one bucket of two rows.
WHOLE_CLIPS = {
  "data.train_window": 40,
  "data.bucket_lengths": (40,),
  "data.frame_budget": 80,
  "teachers.cache": True,
}
STEP_METRICS = ("loss", "loss_ce", "loss_bce", "loss_metric", "soft_target", "grad_norm")
# Cached and online posteriors come from the same function on the same padded shapes (measured:
# identical bits). The step that runs the teachers is another XLA program, whose float32 sums of
# the student's losses and gradients may associate differently: measured <= 5e-7 relative.
POSTERIOR_TOLERANCE = 1e-6
STEP_TOLERANCE = 1e-5


def tiny_config(workdir: pathlib.Path, **overrides):
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"), {**WHOLE_CLIPS, **overrides})
  config = corpus_setup.prepare_corpus(config, workdir)
  return config


def _with_cache(config, cache: bool):
  config = config.copy_and_resolve_references()
  config_lib.set_field(config, "teachers.cache", cache)
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The tiny config's corpus, mesh and random teachers, and their cache."""
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(workdir)
  mesh = sharding.make_mesh(config.mesh)
  teachers = frozen.load(config, workdir, mesh)
  cache = teacher_cache.build_or_reuse(config, workdir, mesh, *teachers)
  return dict(workdir=workdir, config=config, mesh=mesh, teachers=teachers, cache=cache)


def one_epoch(config, cache=None) -> list[dict]:
  return list(
    loader.train_dataset(
      config.data,
      seed=3,
      process_index=0,
      process_count=1,
      batch_multiple=1,
      num_epochs=1,
      teacher_posteriors=cache,
    )
  )


def test_cached_posteriors_are_the_online_ones_windowed_like_the_clip(run):
  config, (graphdef, state) = run["config"], run["teachers"]
  online_posteriors = jax.jit(
    lambda s, b: steps.teacher_posteriors(
      graphdef, s, b, frame_mask(b["num_frames"], b["faces"].shape[1]), dropout=False, rng=None
    )
  )
  num_classes = config.teachers.asr.num_classes
  for plain, cached in zip(one_epoch(config), one_epoch(config, run["cache"]), strict=True):
    assert set(cached) == set(plain) | {"asr_probs", "vsr_probs"}
    for key in plain:
      if key != "augment":
        np.testing.assert_array_equal(cached[key], plain[key], err_msg=key)
    online = online_posteriors(state, {k: plain[k] for k in ("stft", "faces", "num_frames")})
    valid = np.asarray(frame_mask(plain["num_frames"], plain["faces"].shape[1]))
    for name, want in zip(("asr_probs", "vsr_probs"), online):
      got = cached[name]
      assert got.shape == (*plain["faces"].shape[:2], num_classes) and got.dtype == np.float32
      np.testing.assert_allclose(
        got[valid], np.asarray(want)[valid], rtol=0, atol=POSTERIOR_TOLERANCE
      )
      np.testing.assert_array_equal(got[~valid], np.float32(1 / num_classes))


def test_a_train_step_with_the_cache_has_the_losses_of_one_running_the_teachers(run):
  config, mesh, (_, teachers_state) = run["config"], run["mesh"], run["teachers"]
  online_batches, cached_batches = one_epoch(config), one_epoch(config, run["cache"])
  # Both steps as avcd train builds them: with the teachers inside, and with none at all.
  online, cached = (
    steps.make_train_step(_with_cache(config, cache), mesh, len(online_batches))
    for cache in (False, True)
  )
  assert cached.teachers_state is None
  online_step, cached_step = online.update_fn, cached.update_fn
  state = online.init_state()

  def inputs(batch):
    return sharding.global_batch({k: v for k, v in batch.items() if k in steps.TRAIN_INPUTS}, mesh)

  # Both steps start from the same state at every step of an epoch. Two runs are not compared
  # instead: Adam divides by sqrt(v) + 1e-8, so float noise in gradients that are nearly zero
  # flips the sign of their updates and the runs' parameters drift apart by ~lr per step.
  for step, (plain, cached) in enumerate(zip(online_batches, cached_batches, strict=True)):
    _, cached_metrics = cached_step(
      jax.tree.map(lambda x: x.copy(), state), inputs(cached), None
    )  # the step donates its state
    state, online_metrics = online_step(state, inputs(plain), teachers_state)
    for name in STEP_METRICS:
      np.testing.assert_allclose(
        float(cached_metrics[name]),
        float(online_metrics[name]),
        rtol=STEP_TOLERANCE,
        err_msg=f"step {step} {name}",
      )


def _save_teachers(path: pathlib.Path, config, seed: int) -> None:
  """A model checkpoint of randomly initialised teachers (replacing any at `path`)."""
  shutil.rmtree(path, ignore_errors=True)
  _, params, batch_stats = build.split_model(build.build_teachers(config.teachers, seed))
  checkpoints.save_model(
    path, teachers_state=dict(params=params, batch_stats=batch_stats), config=config
  )


def test_a_cache_is_reused_until_the_teacher_checkpoint_changes(run, monkeypatch):
  workdir, mesh = run["workdir"], run["mesh"]
  config = tiny_config(
    workdir, **{"teachers.source": "checkpoint", "teachers.checkpoint": str(workdir / "teachers")}
  )

  def cache_of_checkpoint():
    return teacher_cache.build_or_reuse(config, workdir, mesh, *frozen.load(config, workdir, mesh))

  _save_teachers(workdir / "teachers", config, seed=0)
  first = cache_of_checkpoint()
  with monkeypatch.context() as patch:
    patch.setattr(teacher_cache, "_compute", lambda *args: pytest.fail("cache recomputed"))
    assert cache_of_checkpoint().directory == first.directory
  _save_teachers(workdir / "teachers", config, seed=1)
  second = cache_of_checkpoint()
  assert second.directory != first.directory
  assert first.directory != run["cache"].directory  # a checkpoint is not the 'random' teachers
  records = np.arange(len(first))
  spans = (first.start, first.frames, int(first.frames.max()))
  assert not np.allclose(first.windows(records, *spans)[0], second.windows(records, *spans)[0])


def test_stochastic_teachers_cannot_be_cached(run):
  config = tiny_config(run["workdir"], **{"teachers.dropout_in_train": True})
  with pytest.raises(ValueError, match="needs teachers.dropout_in_train=False"):
    teacher_cache.build_or_reuse(config, run["workdir"], run["mesh"], *run["teachers"])


def test_windows_shorter_than_their_clips_refuse_the_cache(run):
  config = tiny_config(run["workdir"], **{"data.train_window": 32, "data.bucket_lengths": (32, 40)})
  with pytest.raises(ValueError, match="longer than data.train_window=32"):
    one_epoch(config, run["cache"])


def test_a_failed_write_leaves_no_cache(tmp_path):
  directory = str(tmp_path / "root" / "train.key")
  start, frames = np.zeros(2, np.int32), np.array([3, 5], np.int32)
  posteriors = np.full((3, 4), 0.25, np.float32)
  with pytest.raises(ValueError, match="1 of 2 records have no posteriors"):
    with cache_store.Writer(directory, {}, start, frames, num_classes=4) as writer:
      writer.add(0, posteriors, posteriors)
  with pytest.raises(RuntimeError, match="interrupted"):
    with cache_store.Writer(directory, {}, start, frames, num_classes=4) as writer:
      writer.add(0, posteriors, posteriors)
      raise RuntimeError("interrupted")
  assert cache_store.Cache.open(directory) is None
  assert not list((tmp_path / "root").iterdir())  # no temporary directory left either


@pytest.mark.slow
def test_training_runs_on_the_cache_without_the_teachers(tmp_path, monkeypatch):
  config = tiny_config(tmp_path, **{"train.num_epochs": 1})
  step_calls = []  # (teachers passed, posteriors in the batch) of every traced train step
  forwards = []  # every traced run of the teachers' forward
  original_step, original_forward = steps.teacher_posteriors, teachers_model.posteriors

  def recording_step(graphdef, state, batch, *args, **kwargs):
    step_calls.append((state is not None, "asr_probs" in batch))
    return original_step(graphdef, state, batch, *args, **kwargs)

  def recording_forward(*args, **kwargs):
    forwards.append(args[1] is not None)
    return original_forward(*args, **kwargs)

  monkeypatch.setattr(steps, "teacher_posteriors", recording_step)
  monkeypatch.setattr(teachers_model, "posteriors", recording_forward)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert "test" in results
  # The cache is computed with the teachers; the train step gets no teachers, only posteriors.
  assert forwards and all(forwards)
  assert set(step_calls) == {(False, True)}
  assert list(pathlib.Path(config.data.data_dir).rglob("teacher_cache/train.*/cache.json"))
