"""Runs of `avcd train` that are preempted, killed and resumed, against an uninterrupted run.

One chain of processes shares a workdir: the first gets SIGTERM at a random step, the second
resumes and gets SIGKILL at a random later step (possibly mid-save), the third resumes and
finishes. It must end exactly (bitwise, CPU) where the uninterrupted reference run ends.

The runs compile at XLA's lowest optimisation level and share a persistent compilation cache:
only the first run compiles (tens of seconds on CPU instead of about a minute per run). Both
settings apply to every run alike, so they change nothing the comparison depends on.
"""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from avcd import checkpoints, config_lib
from avcd.core import sharding
from avcd.models import build
from avcd.training import state as ts, steps
from tests import tiny_models
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny.py"
TOTAL_STEPS = 8  # configs/tiny.py: 2 epochs of 4 steps, a checkpoint every 2 steps
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# What a step's metrics.jsonl record must repeat exactly (throughput and time may differ).
EXACT_METRICS = (
  "loss",
  "loss_ce",
  "loss_bce",
  "loss_metric",
  "soft_target",
  "grad_norm",
  "learning_rate",
  "skipped_steps",
  "epoch",
)
# Only against a hang: a loaded 2-core machine takes minutes per run, and a limit near that fails
# runs that would have passed.
RUN_TIMEOUT_S = 3600


class Run:
  """A finished `avcd` process: its return code and combined output."""

  def __init__(self, returncode: int, output: str):
    self.returncode = returncode
    self.output = output

  def steps_logged(self, pattern: str) -> list[int]:
    return [int(m) for m in re.findall(pattern, self.output)]


def _avcd(
  root: pathlib.Path,
  args: list[str],
  *,
  stop_at: int | None = None,
  stop_signal: int = signal.SIGTERM,
  delay: float = 0.0,
) -> Run:
  """Runs `avcd ARGS`; with stop_at, sends stop_signal `delay` s after step stop_at's log line."""
  flags = " ".join(f"--{k}={v}" for k, v in FAST_COMPILE.items())
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(),
  )
  process = subprocess.Popen(
    [sys.executable, "-m", "avcd.cli", *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=env,
    cwd=REPO,
  )
  watchdog = threading.Timer(RUN_TIMEOUT_S, process.kill)
  watchdog.start()
  lines, signalled = [], False
  try:
    for line in process.stdout:
      lines.append(line)
      if stop_at is not None and not signalled and re.search(rf"\bstep {stop_at}/\d+ loss", line):
        time.sleep(delay)  # not a wait for anything: a random moment after the step, to kill at
        process.send_signal(stop_signal)
        signalled = True
    returncode = process.wait()
  finally:
    watchdog.cancel()
  return Run(returncode, "".join(lines))


def _train(root: pathlib.Path, workdir: str, *overrides: str, **stop) -> Run:
  return _avcd(
    root,
    [
      "train",
      f"--config={TINY}",
      f"--workdir={root / workdir}",
      f"--config.data.data_dir={root / 'data'}",
      *overrides,
    ],
    **stop,
  )


def _resumed_from(run: Run) -> int:
  steps_found = run.steps_logged(r"resuming from \S+ step (\d+)")
  assert len(steps_found) == 1, run.output[-3000:]
  return steps_found[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume")
  # Profiled: a trace must not change what the run computes (the chain below is compared to it).
  reference = _train(root, "reference", "--config.train.profile_steps=2")
  assert reference.returncode == 0, reference.output[-5000:]

  seed = random.randrange(2**32)
  rng = random.Random(seed)
  term_at = rng.randint(1, 4)
  preempted = _train(root, "chain", stop_at=term_at, stop_signal=signal.SIGTERM)
  saved = preempted.steps_logged(r"preempted: saved step (\d+)")
  assert preempted.returncode == 0 and len(saved) == 1, preempted.output[-5000:]
  # The workdir as preemption left it; the chain goes on.
  shutil.copytree(root / "chain", root / "preempted")
  kill_at, delay = rng.randint(saved[0] + 1, TOTAL_STEPS - 1), rng.uniform(0.0, 1.5)
  killed = _train(root, "chain", stop_at=kill_at, stop_signal=signal.SIGKILL, delay=delay)
  finished = _train(root, "chain")
  return dict(
    root=root,
    reference=reference,
    preempted=preempted,
    saved=saved[0],
    killed=killed,
    finished=finished,
    plan=f"seed {seed}: SIGTERM after step {term_at}, SIGKILL {delay:.2f} s after step {kill_at}",
  )


def _final_state(workdir: pathlib.Path):
  config = config_lib.load_config(str(TINY))
  mesh = sharding.make_mesh(config.mesh)
  optimizer = ts.make_optimizer(config.optim, steps_per_epoch=1)  # shapes the target only
  _, abstract, shardings, _ = ts.abstract_train_state(config, optimizer, mesh)
  checkpointer = checkpoints.TrainCheckpointer(
    workdir / "checkpoints", keep_latest=3, keep_best=2, best_metric="auc"
  )
  state = checkpointer.restore(TOTAL_STEPS, checkpoints.abstract_like(abstract, shardings))
  checkpointer.close()
  return state


def _logged_metrics(workdir: pathlib.Path) -> list[dict]:
  """Step records of metrics.jsonl; a line cut short by SIGKILL is skipped."""
  records = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if "loss" in record:
      records.append(record)
  return records


def test_profile_steps_write_a_trace_of_those_steps(runs):
  assert runs["reference"].steps_logged(r"profiled steps \d+-(\d+)") == [5]
  traces = list((runs["root"] / "reference" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 10_000


def test_sigterm_checkpoints_exits_cleanly_and_the_next_start_resumes(runs):
  saved = runs["saved"]
  assert f"preempted: saved step {saved}" in runs["preempted"].output, runs["plan"]
  assert (runs["root"] / "preempted" / "checkpoints" / str(saved)).is_dir()
  # Neither the final evaluation nor later steps ran.
  assert not (runs["root"] / "preempted" / "eval").exists()
  assert max(runs["preempted"].steps_logged(r"\bstep (\d+)/\d+ loss")) == saved
  assert _resumed_from(runs["killed"]) == saved, runs["plan"]


def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(runs):
  root, plan = runs["root"], runs["plan"]
  assert runs["killed"].returncode == -signal.SIGKILL, plan
  assert runs["finished"].returncode == 0, f"{plan}\n{runs['finished'].output[-5000:]}"
  # A SIGKILL that lands after the final step's save (during the final evaluation) leaves a
  # complete run: the next start resumes at TOTAL_STEPS and only evaluates.
  assert runs["saved"] <= _resumed_from(runs["finished"]) <= TOTAL_STEPS, plan
  assert not list((root / "chain" / "checkpoints").glob("*orbax-checkpoint-tmp*")), plan

  reference, resumed = _final_state(root / "reference"), _final_state(root / "chain")
  assert int(resumed.step) == TOTAL_STEPS
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(reference)[0]
  for (path, want), got in zip(paths_and_leaves, jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(
      np.asarray(got), np.asarray(want), err_msg=f"{jax.tree_util.keystr(path)} ({plan})"
    )

  by_step = {r["step"]: r for r in _logged_metrics(root / "reference")}
  chain = _logged_metrics(root / "chain")
  assert {r["step"] for r in chain} >= set(range(1, runs["saved"] + 1)) | set(
    range(_resumed_from(runs["finished"]) + 1, TOTAL_STEPS + 1)
  ), plan
  for record in chain:
    assert {k: record[k] for k in EXACT_METRICS} == {
      k: by_step[record["step"]][k] for k in EXACT_METRICS
    }, f"step {record['step']} ({plan})"
  assert json.loads((root / "chain" / "eval" / "test" / "metrics.json").read_text()) == json.loads(
    (root / "reference" / "eval" / "test" / "metrics.json").read_text()
  )


def test_ctrl_c_saves_the_step_and_stops_in_one_line_with_status_130(runs):
  root = runs["root"]
  run = _train(root, "interrupted", stop_at=1, stop_signal=signal.SIGINT)
  assert run.returncode == 130, run.output[-5000:]
  assert "Traceback" not in run.output and "KeyboardInterrupt" not in run.output
  match = re.search(r"avcd train: interrupted: saved step (\d+) in (\S+); ", run.output)
  assert match, run.output[-5000:]
  saved = int(match.group(1))
  assert pathlib.Path(match.group(2)) == root / "interrupted" / "checkpoints"
  assert (root / "interrupted" / "checkpoints" / str(saved)).is_dir()
  assert max(run.steps_logged(r"\bstep (\d+)/\d+ loss")) == saved  # nothing trained after it
  assert not (root / "interrupted" / "eval").exists()


def _save_teachers(path: pathlib.Path, *, poisoned: bool) -> None:
  """The random teachers of configs/tiny.py as a checkpoint at `path`, NaN if `poisoned`."""
  config = config_lib.load_config(str(TINY))
  _, params, batch_stats = build.split_model(build.build_teachers(config.teachers, config.seed))
  weights = dict(params=params, batch_stats=batch_stats)
  if poisoned:
    weights = jax.tree.map(lambda x: np.full(x.shape, np.nan, x.dtype), weights)
  shutil.rmtree(path, ignore_errors=True)
  checkpoints.save_model(
    path, teachers_state=weights, config=ml_collections.ConfigDict(dict(teachers=config.teachers))
  )


def test_nonfinite_loss_stops_with_the_step_clips_and_last_good_checkpoint(runs):
  root = runs["root"]
  # A resumed run must keep its config (test_resume_config.py): the teachers' weights go bad in
  # place between the first epoch and the second.
  teachers = root / "teachers"
  from_checkpoint = (
    "--config.teachers.source=checkpoint",
    f"--config.teachers.checkpoint={teachers}",
  )
  _save_teachers(teachers, poisoned=False)
  first = _train(root, "nonfinite", *from_checkpoint, "--config.train.num_epochs=1")
  assert first.returncode == 0, first.output[-5000:]
  _save_teachers(teachers, poisoned=True)
  run = _train(root, "nonfinite", *from_checkpoint, "--config.train.num_epochs=2")
  assert run.returncode != 0
  match = re.search(
    r"NonFiniteLossError: non-finite loss nan at step (\d+); clips of split "
    r"'train' in this process's batch: \[('[^']+'(, )?)+\]; last good checkpoint: "
    r"(\S+)",
    run.output,
  )
  assert match, run.output[-5000:]
  last_good = TOTAL_STEPS // 2  # the end of the first epoch
  assert int(match.group(1)) == last_good + 1
  assert pathlib.Path(match.group(4)) == root / "nonfinite" / "checkpoints" / str(last_good)


def test_eval_accepts_a_model_checkpoint_path(runs):
  root = runs["root"]
  state = _final_state(root / "reference")
  checkpoints.save_model(
    root / "model", student_state=dict(params=state.params, batch_stats=state.batch_stats)
  )
  run = _avcd(
    root,
    [
      "eval",
      f"--config={TINY}",
      f"--workdir={root / 'eval_model'}",
      f"--config.data.data_dir={root / 'data'}",
      f"--checkpoint={root / 'model'}",
    ],
  )
  assert run.returncode == 0, run.output[-5000:]
  assert f"checkpoint {root / 'model' / '0'}" in run.output
  assert json.loads(
    (root / "eval_model" / "eval" / "test" / "metrics.json").read_text()
  ) == json.loads((root / "reference" / "eval" / "test" / "metrics.json").read_text())


def test_skip_policy_leaves_the_state_unchanged_and_counts_the_step():
  cfg = ml_collections.ConfigDict(
    dict(
      model=tiny_models.student_config(),
      teachers=tiny_models.teachers_config(),
      loss=config_lib.losses(),
      data=dict(augment=False),
      train=dict(on_nonfinite="skip", labels="clip"),
      optim=dict(
        learning_rate=1e-3,
        decay_per_epoch=1.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_grad_norm=0.0,
        grad_accum_steps=1,
      ),
    )
  )
  optimizer = ts.make_optimizer(cfg.optim, steps_per_epoch=10)
  student = build.build_student(cfg.model, 0)
  state = ts.init_train_state(student, optimizer, 0)
  teachers_graphdef, *teachers_state = build.split_model(build.build_teachers(cfg.teachers))
  rng = np.random.default_rng(0)
  frames, size = 8, tiny_models.FACE
  batch = dict(
    mfcc=rng.normal(size=(2, 4 * frames, 13)).astype(np.float32),
    faces=rng.integers(0, 256, (2, frames, size, size)).astype(np.uint8),
    stft=np.abs(rng.normal(size=(2, 4 * frames, 321))).astype(np.float32),
    num_frames=np.array([frames, 5], np.int32),
    label=np.array([0, 1], np.int32),
  )
  poisoned = dict(batch, mfcc=batch["mfcc"].copy())
  poisoned["mfcc"][0, 0, 0] = np.nan
  update = steps.make_update_fn(nnx.graphdef(student), teachers_graphdef, optimizer, cfg)
  update = jax.jit(update).lower(state, batch, teachers_state).compile(FAST_COMPILE)

  trained, metrics = update(state, batch, teachers_state)
  assert bool(metrics["finite"])
  skipped, metrics = update(trained, poisoned, teachers_state)
  assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
  assert int(skipped.step) == 2 and int(skipped.skipped_steps) == 1
  for name in ("params", "batch_stats", "opt_state", "rng"):
    for want, got in zip(
      jax.tree.leaves(getattr(trained, name)), jax.tree.leaves(getattr(skipped, name))
    ):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
  resumed, metrics = update(skipped, batch, teachers_state)
  assert bool(metrics["finite"]) and int(resumed.skipped_steps) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(resumed.params))
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(skipped.params), jax.tree.leaves(resumed.params))
  )
