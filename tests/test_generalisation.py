"""The claim study's plan, recipe choice, decision rule and report (the runs themselves are too
long for a test; their results files are what the report reads)."""

import json
import subprocess
import sys
import time

import numpy as np

from avcd import config_checks, config_lib
from avcd.evaluation import statistics
from avcd.studies.generalisation import design, report, runs
from tests.conftest import REPO

RECIPE = dict(learning_rate=1e-3, frame_budget=400, num_epochs=12)


def test_stages_plan_paired_runs_and_share_the_rows_without_teachers():
  pilot = design.stage_runs("pilot", 0)
  assert [r.name for r in pilot[:3]] == [
    "corpus0-none-R0-seed0",
    "corpus0-standard-R2-seed0",
    "corpus0-none-R3-seed0",
  ]
  assert len(pilot) == 3 * design.PILOT_SEEDS
  stage1, stage2 = design.stage_runs("1", 7), design.stage_runs("2", 7)
  # Stage 1: R0, R2, R3 as pre-registered, plus R5 and R2H (amendment of 2026-12-07).
  assert set(pilot) <= set(stage1) and len(stage1) == 7 * 5
  assert {r.row for r in stage1} == {"R0", "R2", "R3", "R5", "R2H"}
  names = [r.name for r in stage1 + stage2]
  assert len(names) == len(set(names))
  # The weaker teacher changes only the rows that use teachers; R0 and R3 are shared.
  assert {r.row for r in stage2 if r.teacher == "weak_vsr"} == {"R1", "R2"}
  assert design.Run.of(0, "weak_vsr", "R0", 3) == design.Run.of(0, "standard", "R0", 3)
  assert {r.row for r in stage2 if r.corpus == 1} == set(design.ROWS)


def _recipe_run(learning_rate, budget, row, seed, reached_at, seconds):
  """A recipe run's file as the runner writes it: it stops at its first epoch at the target."""
  epochs = [
    dict(epoch=e, auc={m: 0.99 if e >= reached_at else 0.9 for m in design.TRAINED})
    for e in range(1, min(reached_at, design.RECIPE_EPOCHS) + 1)
  ]
  return dict(
    learning_rate=learning_rate,
    frame_budget=budget,
    row=row,
    seed=seed,
    seconds=seconds,
    epochs=epochs,
  )


def test_recipe_is_the_cell_where_every_run_reaches_the_target_in_fewest_epochs():
  recipe_runs = []
  for row in design.RECIPE_ROWS:
    for seed in design.RECIPE_SEEDS:
      recipe_runs.append(_recipe_run(1e-3, 400, row, seed, 6, 1200))
      recipe_runs.append(_recipe_run(3e-3, 400, row, seed, 4 if seed else 9, 1200))  # one seed slow
      recipe_runs.append(_recipe_run(1e-3, 1200, row, seed, 5, 1800))
      recipe_runs.append(_recipe_run(3e-3, 1200, row, seed, 5, 2400))  # as few epochs, slower
  assert report.choose_recipe(recipe_runs) == dict(
    learning_rate=1e-3, frame_budget=1200, num_epochs=5, seconds=1800
  )
  # A cell's epoch count is the latest of its runs' first epochs at the target (3e-3/400: 9).
  slow_seed = [r for r in recipe_runs if (r["learning_rate"], r["frame_budget"]) == (3e-3, 400)]
  assert report.choose_recipe(slow_seed)["num_epochs"] == 9
  never = [
    _recipe_run(1e-3, 400, row, seed, 99, 1200)
    for row in design.RECIPE_ROWS
    for seed in design.RECIPE_SEEDS
  ]
  assert report.choose_recipe(never) is None


def test_a_recipe_run_that_stopped_short_of_the_target_and_of_its_cap_is_run_again(tmp_path):
  path = tmp_path / "run.json"
  cap = design.RECIPE_EPOCHS
  assert not runs._recipe_run_complete(path, cap)
  run = _recipe_run(1e-3, 1200, "R0", 0, 99, 2400)
  path.write_text(json.dumps(dict(run, epochs=run["epochs"][:12])))  # the first grid's 12 epochs
  assert not runs._recipe_run_complete(path, cap)
  assert runs._recipe_run_complete(path, 12)  # a cell qualified at 12: it cannot win any more
  path.write_text(json.dumps(run))  # all RECIPE_EPOCHS, never at the target: a final "never"
  assert runs._recipe_run_complete(path, cap)
  path.write_text(json.dumps(_recipe_run(1e-3, 1200, "R0", 0, 6, 2400)))
  assert runs._recipe_run_complete(path, cap)


def test_recipe_runs_are_capped_at_the_best_qualifying_cells_epochs(tmp_path):
  (tmp_path / "recipe").mkdir()
  assert runs.recipe_epoch_cap(tmp_path) == design.RECIPE_EPOCHS
  for row in design.RECIPE_ROWS:
    for seed in design.RECIPE_SEEDS:
      run = _recipe_run(1e-3, 1200, row, seed, 7 + seed, 1800)
      (tmp_path / "recipe" / f"{row}-{seed}.json").write_text(json.dumps(run))
  assert runs.recipe_epoch_cap(tmp_path) == 8
  base = config_lib.load_config(str(REPO / "configs" / "synthetic.py:generalisation"))
  config = design.recipe_config(base, 1e-3, 400, "R0", 0, tmp_path, epochs=8)
  assert config.train.num_epochs == 8
  assert config.train.stop_at_least == design.RECIPE_TARGET
  assert set(config.train.stop_metrics) == {f"validation/auc/{m}" for m in design.TRAINED}
  assert tuple(config.eval.splits) == ("validation",)


def _contrast(mean, low, high, per_corpus=(0.1, 0.1)):
  return statistics.Contrast(mean, low, high, 5.0, 0.001, 8, dict(enumerate(per_corpus)))


def test_decision_rule():
  good = dict(
    primary=_contrast(0.08, 0.03, 0.13),
    adjusted_p=0.002,
    by_generator={"ls_b": 0.07, "ls_c": 0.09},
    against_sync=_contrast(0.02, -0.01, 0.05),
    gate_failures=0,
    complete=True,
  )
  assert report.verdict(**good) == "holds"
  assert report.verdict(**dict(good, gate_failures=1)) == "inconclusive"
  assert report.verdict(**dict(good, against_sync=_contrast(-0.01, -0.04, 0.02))) == "inconclusive"
  assert report.verdict(**dict(good, by_generator={"ls_b": -0.01, "ls_c": 0.1})) == "inconclusive"
  assert (
    report.verdict(**dict(good, primary=_contrast(0.08, 0.03, 0.13, (0.17, -0.01))))
    == "inconclusive"
  )
  assert report.verdict(**dict(good, primary=_contrast(0.01, -0.02, 0.04))) == "fails"
  assert report.verdict(**dict(good, complete=False)) == "holds so far (stage 2 is not complete)"


def test_report_reads_results_files(tmp_path):
  results = tmp_path / "results"
  rng = np.random.default_rng(0)
  methods = ["real"] * 40 + [
    m for m in (*design.TRAINED, "ls_a_clean", "ls_b", "ls_c") for _ in range(8)
  ]
  labels = [int(m != "real") for m in methods]
  clips = dict(
    corpus=0,
    ids=[f"synthetic-test-{i:06d}" for i in range(len(methods))],
    methods=methods,
    labels=labels,
    speakers=[i % 10 for i in range(len(methods))],
  )
  (results / "runs").mkdir(parents=True)
  (results / "clips-corpus0.json").write_text(json.dumps(clips))
  held_out = np.isin(methods, ["ls_b", "ls_c"])
  for seed in range(3):
    for row, gain in (("R0", 0.0), ("R2", 2.0), ("R3", 1.0)):
      run = design.Run.of(0, "standard", row, seed)
      scores = (
        rng.normal(size=len(methods)) + 3.0 * (np.array(labels) & ~held_out) + gain * held_out
      )
      (results / "runs" / f"{run.name}.json").write_text(
        json.dumps(
          dict(
            run=dict(corpus=0, teacher=run.teacher, row=row, seed=seed),
            seconds=300.0,
            test_auc={"ls_a": 1.0, "ls_a_clean": 0.9},
            gate=dict(passed=seed != 2, failing={} if seed != 2 else {"desync": 0.9}),
            test_scores=scores.tolist(),
          )
        )
      )
  written = tmp_path / "results.md"
  report.write_report(
    report.load_results(results),
    written,
    "python -m avcd.studies.generalisation --report_only",
    num_resamples=50,
  )
  text = written.read_text()
  assert "## Test AUC by method: corpus 0, standard teachers" in text
  assert "| R2 CE + distillation + contrastive | 3 |" in text
  row = next(line for line in text.splitlines() if line.startswith("| R2 - R0 |"))
  assert "| 3 | +" in row  # three pairs, R2 better on the held-out generators
  assert "6 of 9 runs passed" in text and "corpus0-none-R0-seed2 failed: desync 90.0" in text
  assert "By the pre-registered rule, the claim" in text and "so far" in text


def test_the_heads_rows_train_the_heads_and_the_paper_rows_do_not(tmp_path):
  base = config_lib.load_config(str(REPO / "configs" / "synthetic.py:generalisation"))
  for row, heads in (("R0", False), ("R2", False), ("R3", False), ("R5", True), ("R2H", True)):
    config = design.run_config(base, design.Run.of(0, "standard", row, 0), tmp_path, recipe=RECIPE)
    assert (config.loss.phoneme_weight > 0) == heads, row
    assert (tuple(config.model.phoneme_classes) != (0, 0)) == heads, row
    config_checks.check(config)
  assert design.Run.of(0, "standard", "R5", 0).teacher == "standard"  # the heads learn the teachers


def test_an_interrupted_run_keeps_the_time_of_every_attempt(tmp_path):
  run_dir = tmp_path / "run"
  try:
    with runs._segment(run_dir):
      raise KeyboardInterrupt  # the machine went away mid-run
  except KeyboardInterrupt:
    pass
  with runs._segment(run_dir) as segment:
    segment["finished"] = True
  segments = json.loads((run_dir / runs.SEGMENTS_FILE).read_text())
  assert [s["finished"] for s in segments] == [False, True]
  assert all(s["seconds"] >= 0 and s["cpu_seconds"] >= 0 and s["date"] for s in segments)


def test_a_killed_run_keeps_the_time_of_its_attempt_to_the_last_heartbeat(tmp_path):
  # SIGKILL runs no finally: the open attempt must already be on disk.
  run_dir = tmp_path / "run"
  script = (
    "import pathlib, time\n"
    "from avcd.studies.generalisation import runs\n"
    "runs.SEGMENT_HEARTBEAT_S = 0.05\n"
    f"with runs._segment(pathlib.Path({str(run_dir)!r})):\n"
    "  deadline = time.process_time() + 0.5\n"
    "  while time.process_time() < deadline: pass  # some CPU time to account for\n"
    "  time.sleep(600)\n"
  )
  job = subprocess.Popen([sys.executable, "-c", script])
  path = run_dir / runs.SEGMENTS_FILE
  give_up = time.monotonic() + 120  # a bound for a hang, not a wait: the loop ends on the file
  try:
    while job.poll() is None and time.monotonic() < give_up:
      if path.exists() and json.loads(path.read_text())[0]["cpu_seconds"] >= 0.5:
        break
      time.sleep(0.05)
  finally:
    job.kill()
    job.wait()
  [segment] = json.loads(path.read_text())
  assert segment["finished"] is False
  assert segment["cpu_seconds"] >= 0.5 and segment["seconds"] >= 0.5
