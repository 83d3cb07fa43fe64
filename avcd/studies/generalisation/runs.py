"""Running the study: training and scoring each run, the teachers and the teachers-only row, and
writing their results files (docs/generalisation/results/, committed)."""

import contextlib
import dataclasses
import datetime
import json
import pathlib
import shutil
import subprocess
import threading
import time

import jax
import ml_collections
import numpy as np
from absl import app, logging

from avcd import compilation_cache
from avcd.evaluation import statistics
from avcd.studies.generalisation.design import (
  GATE_AUC,
  MINIMUM_EFFECT,
  PILOT_SEEDS,
  RECIPE_CELLS,
  RECIPE_EPOCHS,
  RECIPE_ROWS,
  RECIPE_SEEDS,
  RECIPE_TARGET,
  TRAINED,
  Run,
  corpus_config,
  recipe_config,
  recipe_fields,
  run_config,
  stage_runs,
  stage_teachers,
  teachers_dir,
)
from avcd.studies.generalisation.report import (
  choose_recipe,
  first_epoch_at_target,
  load_results,
  pilot_pairs,
)


class Preempted(RuntimeError):
  """A run stopped by SIGTERM: nothing is recorded for it, and the stage stops."""


# ---- Running ---------------------------------------------------------------------------------


def commit() -> str:
  """The commit the code runs at ('+dirty' when the tree differs from it)."""
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    head = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + ("+dirty" if dirty else "")


def _write_json(path: pathlib.Path, content: dict | list) -> None:
  """Written whole or not at all: a killed job leaves no half file behind."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".partial")
  partial.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
  partial.replace(path)


def _speakers(config: ml_collections.ConfigDict, split: str, ids: list[str]) -> list[int]:
  from data_pipelines.building.synthetic import generator  # pylint: disable=g-import-not-at-top

  spec = generator.SyntheticSpec(**config.data.synthetic.to_dict())
  return [generator.speaker_of(spec, split, int(clip.rsplit("-", 1)[1])) for clip in ids]


def _read_scores(run_dir: pathlib.Path, split: str) -> list[dict]:
  from avcd.evaluation import reports  # pylint: disable=g-import-not-at-top

  return sorted(
    reports.read_scores_csv(run_dir / "eval" / split / "scores.csv"), key=lambda r: r["id"]
  )


def ensure_teachers(
  base, corpus: int, teacher: str, workdir: pathlib.Path, results: pathlib.Path
) -> None:
  """Trains the corpus's teachers of that condition once and records their report."""
  from avcd.teachers import training as teacher_training  # pylint: disable=g-import-not-at-top

  config = corpus_config(base, corpus, teacher, workdir)
  out = teachers_dir(workdir, corpus, teacher)
  report_file = results / f"teachers-corpus{corpus}-{teacher}.json"
  if not (out / "report.json").exists():
    logging.info("training the %s teachers of corpus %d", teacher, corpus)
    teacher_training.train_teachers(config, out)
  if not report_file.exists():
    report = json.loads((out / "report.json").read_text())
    _write_json(report_file, dict(report, commit=commit(), corpus=corpus, teacher=teacher))


def ensure_test_clips(config, corpus: int, run_dir: pathlib.Path, results: pathlib.Path) -> None:
  """Records the corpus's test clips (id, method, label, speaker) in the order scores are kept."""
  path = results / f"clips-corpus{corpus}.json"
  if path.exists():
    return
  records = _read_scores(run_dir, "test")
  ids = [r["id"] for r in records]
  _write_json(
    path,
    dict(
      corpus=corpus,
      ids=ids,
      methods=[r["method"] for r in records],
      labels=[r["label"] for r in records],
      speakers=_speakers(config, "test", ids),
    ),
  )


SEGMENTS_FILE = "study_segments.json"
SEGMENT_HEARTBEAT_S = 60.0


@contextlib.contextmanager
def _segment(run_dir: pathlib.Path):
  """Times one attempt at a run (wall and this process's CPU seconds) and appends it to the run
  directory's segments file, whether the attempt finishes, is preempted or fails.

  The open attempt is rewritten every SEGMENT_HEARTBEAT_S seconds, so a SIGKILL or a machine that
  goes away (nothing runs on exit then) costs the accounting at most that much time."""
  path = run_dir / SEGMENTS_FILE
  segments = json.loads(path.read_text()) if path.exists() else []
  record = dict(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
  start, cpu_start = time.perf_counter(), time.process_time()
  lock, closed = threading.Lock(), threading.Event()

  def write():
    with lock:
      record.update(
        seconds=round(time.perf_counter() - start, 1),
        cpu_seconds=round(time.process_time() - cpu_start, 1),
      )
      record.setdefault("finished", False)
      run_dir.mkdir(parents=True, exist_ok=True)
      _write_json(path, [*segments, record])

  def heartbeat():
    while not closed.wait(SEGMENT_HEARTBEAT_S):
      write()

  beating = threading.Thread(target=heartbeat, name="study-segment", daemon=True)
  beating.start()
  try:
    yield record
  finally:
    closed.set()
    beating.join()
    write()


def execute(base, run: Run, workdir: pathlib.Path, results: pathlib.Path) -> None:
  """Trains and scores one run, writes its results file, and removes its checkpoints."""
  from avcd import train  # pylint: disable=g-import-not-at-top

  config = run_config(base, run, workdir)
  run_dir = workdir / f"corpus{run.corpus}" / "runs" / run.name
  # An interrupted run resumes from its last checkpoint; its segments' times add up.
  with _segment(run_dir) as segment:
    metrics = train.train_and_evaluate(config, run_dir)
    segment["finished"] = bool(metrics)
  if not metrics:
    raise Preempted(f"{run.name} was stopped by SIGTERM; run the same command to resume it")
  segments = json.loads((run_dir / SEGMENTS_FILE).read_text())
  ensure_test_clips(config, run.corpus, run_dir, results)
  test = _read_scores(run_dir, "test")
  test_auc = {m: v["auc"] for m, v in metrics["test"]["per_method"].items()}
  failing = {m: test_auc[m] for m in TRAINED if not test_auc[m] >= GATE_AUC}
  _write_json(
    results / "runs" / f"{run.name}.json",
    dict(
      run=dataclasses.asdict(run),
      commit=commit(),
      seconds=sum(g["seconds"] for g in segments),
      cpu_minutes=sum(g["cpu_seconds"] for g in segments) / 60,
      segments=segments,
      date=datetime.date.today().isoformat(),
      recipe=recipe_fields(config),
      validation_auc={m: v["auc"] for m, v in metrics["validation"]["per_method"].items()},
      test_auc=dict(test_auc, all=metrics["test"]["auc"]),
      gate=dict(passed=not failing, failing=failing),
      test_ids_digest=_digest([r["id"] for r in test]),
      test_scores=[round(r["score"], 6) for r in test],
    ),
  )
  shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
  logging.info(
    "%s: %.0f s, test AUC %s",
    run.name,
    sum(g["seconds"] for g in segments),
    {m: round(v, 3) for m, v in test_auc.items()},
  )


def execute_recipe(
  base, learning_rate, frame_budget, row, seed, workdir, results, epoch_cap: int
) -> None:
  from avcd import train  # pylint: disable=g-import-not-at-top
  from data_pipelines.building import corpus_setup  # pylint: disable=g-import-not-at-top
  from data_pipelines.reading import loader  # pylint: disable=g-import-not-at-top

  config = recipe_config(base, learning_rate, frame_budget, row, seed, workdir, epoch_cap)
  name = f"lr{learning_rate:g}-budget{frame_budget}-{row}-seed{seed}"
  run_dir = workdir / "corpus0" / "recipe" / name
  config = corpus_setup.prepare_corpus(config, workdir)  # names the corpus's builder for the loader
  steps = loader.steps_per_epoch(config.data, process_count=1, batch_multiple=1)
  config.eval.every_steps = steps
  evaluated = _recipe_epochs(run_dir, steps)
  # A run resumed under a cap it already passed (the cap fell after it was interrupted) needs no
  # more training: its evaluations up to the cap decide it.
  if len(evaluated) < epoch_cap and first_epoch_at_target(dict(epochs=evaluated)) is None:
    # An interrupted run resumes from its last checkpoint; its segments' times add up.
    with _segment(run_dir) as segment:
      segment["finished"] = bool(train.train_and_evaluate(config, run_dir))
    if not segment["finished"]:
      raise Preempted(f"{name} was stopped by SIGTERM; run the same command to resume it")
    evaluated = _recipe_epochs(run_dir, steps)
  segments = json.loads((run_dir / SEGMENTS_FILE).read_text())
  _write_json(
    results / "recipe" / f"{name}.json",
    dict(
      learning_rate=learning_rate,
      frame_budget=frame_budget,
      row=row,
      seed=seed,
      steps_per_epoch=steps,
      epoch_cap=epoch_cap,
      seconds=sum(g["seconds"] for g in segments),
      cpu_minutes=sum(g["cpu_seconds"] for g in segments) / 60,
      segments=segments,
      commit=commit(),
      recipe=recipe_fields(config),
      epochs=evaluated,
    ),
  )
  shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _recipe_epochs(run_dir: pathlib.Path, steps_per_epoch: int) -> list[dict]:
  """A recipe run's validation evaluations so far, one per epoch, from its metrics.jsonl (a step
  evaluated again after a resume keeps its last evaluation)."""
  path = run_dir / "metrics.jsonl"
  if not path.exists():
    return []
  by_step = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
      continue
    if "validation/auc" in record:
      by_step[record["step"]] = dict(
        epoch=record["step"] / steps_per_epoch,
        time=record["time"],
        auc={m: record[f"validation/auc/{m}"] for m in TRAINED},
      )
  return [by_step[step] for step in sorted(by_step)]


def _digest(ids: list[str]) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top

  return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def teachers_only(
  base, corpus: int, teacher: str, workdir: pathlib.Path, results: pathlib.Path
) -> None:
  """The teachers-only row: clip score 1 - mean soft target, on the test split; no training."""
  from avcd.core import sharding  # pylint: disable=g-import-not-at-top
  from avcd.models import layers, teachers as teachers_model  # pylint: disable=g-import-not-at-top
  from avcd.models.student import frame_mask  # pylint: disable=g-import-not-at-top
  from avcd.teachers import frozen  # pylint: disable=g-import-not-at-top
  from avcd.training import losses  # pylint: disable=g-import-not-at-top
  from data_pipelines.building import corpus_setup  # pylint: disable=g-import-not-at-top
  from data_pipelines.reading import loader  # pylint: disable=g-import-not-at-top

  path = results / "runs" / f"corpus{corpus}-{teacher}-teachers_only.json"
  clips_path = results / f"clips-corpus{corpus}.json"
  if path.exists() or not clips_path.exists():
    return
  config = corpus_config(base, corpus, teacher, workdir)
  mesh = sharding.make_mesh(config.mesh)
  config = corpus_setup.prepare_corpus(config, workdir)
  graphdef, state = frozen.load(config, workdir, mesh)

  @jax.jit
  def clip_scores(teachers_state, batch):
    mask = frame_mask(batch["num_frames"], batch["faces"].shape[1])
    asr, vsr = teachers_model.posteriors(
      graphdef, teachers_state, batch, mask, dropout=False, rng=None
    )
    target = losses.soft_target(asr, vsr, config.loss.divergence)
    return 1.0 - layers.masked_mean(target[..., None], mask, axis=1)[..., 0]

  dataset = loader.eval_dataset(
    config.data, config.eval, split="test", process_index=0, process_count=1, batch_multiple=1
  )
  scores = {}
  for batch in dataset:
    inputs = {k: batch[k] for k in ("stft", "faces", "lips", "num_frames") if k in batch}
    for record, score in zip(batch["record"], np.asarray(clip_scores(state, inputs))):
      if record >= 0:
        scores[int(record)] = float(score)
  clips = json.loads(clips_path.read_text())
  ordered = [scores[int(clip.rsplit("-", 1)[1])] for clip in clips["ids"]]
  test = statistics.TestSet(
    np.array(clips["labels"]), np.array(clips["methods"]), np.array(clips["speakers"])
  )
  test_auc = {
    m: test.method_auc(np.array(ordered), m) for m in sorted(set(clips["methods"])) if m != "real"
  }
  _write_json(
    path,
    dict(
      run=dict(corpus=corpus, teacher=teacher, row="teachers_only"),
      commit=commit(),
      test_auc=test_auc,
      test_ids_digest=_digest(clips["ids"]),
      test_scores=[round(s, 6) for s in ordered],
    ),
  )


def _recipe_run_complete(path: pathlib.Path, cap: int) -> bool:
  """Whether a recipe run's file exists and needs no more epochs: it reached the target, or ran
  `cap` epochs (RECIPE_EPOCHS, or fewer once a cell has qualified)."""
  if not path.exists():
    return False
  run = json.loads(path.read_text())
  if first_epoch_at_target(run) is None and len(run["epochs"]) < cap:
    logging.info("%s: %d epochs without the target; run again to %d", path, len(run["epochs"]), cap)
    return False
  return True


def recipe_epoch_cap(results: pathlib.Path) -> int:
  """At most how many epochs a recipe run still needs: a run that reaches the target later than
  the best qualifying cell's epoch count cannot change the choice (ties go to the faster cell, so
  the cap is that count itself)."""
  chosen = choose_recipe(load_results(results)["recipe"])
  return RECIPE_EPOCHS if chosen is None else chosen["num_epochs"]


def run_stage(
  base, stage: str, workdir: pathlib.Path, results: pathlib.Path, max_runs: int
) -> None:
  """Runs what `stage` still lacks (at most max_runs new runs when > 0)."""
  compilation_cache.enable(str(workdir / "compilation_cache"))
  ensure_teachers(base, 0, "standard", workdir, results)
  done = 0
  if stage == "recipe":
    # A cell qualifies only if every run of it reaches the target, so a cell is abandoned at its
    # first run that does not (that run's file records it). Each cell's first seeds run first,
    # and no run goes past the epoch count of the best cell so far (recipe_epoch_cap).
    for learning_rate, budget in RECIPE_CELLS:
      for seed in RECIPE_SEEDS:
        for row in RECIPE_ROWS:
          name = f"lr{learning_rate:g}-budget{budget}-{row}-seed{seed}"
          path = results / "recipe" / f"{name}.json"
          cap = recipe_epoch_cap(results)
          if not _recipe_run_complete(path, cap):
            if max_runs and done >= max_runs:
              return
            execute_recipe(base, learning_rate, budget, row, seed, workdir, results, cap)
            done += 1
          reached = first_epoch_at_target(json.loads(path.read_text()))
          if reached is None or reached > cap:
            logging.info(
              "recipe cell lr=%g budget=%d: %s did not reach %.2f within %d epochs; cell abandoned",
              learning_rate,
              budget,
              name,
              RECIPE_TARGET,
              cap,
            )
            break
        else:
          continue
        break
    return
  prereg_path = results.parent / "preregistration.json"
  pairs = PILOT_SEEDS
  if stage in ("1", "2"):
    if not prereg_path.exists():
      raise app.UsageError(f"{prereg_path} is missing: run --stage=pilot first")
    pairs = json.loads(prereg_path.read_text())["pairs"]
  for corpus, teacher in {
    (r.corpus, r.teacher if r.teacher != "none" else "standard") for r in stage_runs(stage, pairs)
  } | set(stage_teachers(stage)):
    ensure_teachers(base, corpus, teacher, workdir, results)
  for run in stage_runs(stage, pairs):
    if (results / "runs" / f"{run.name}.json").exists():
      continue
    if max_runs and done >= max_runs:
      return
    execute(base, run, workdir, results)
    done += 1
  for corpus, teacher in stage_teachers(stage):
    teachers_only(base, corpus, teacher, workdir, results)
  if stage == "pilot" and not prereg_path.exists():
    pairs, sds = pilot_pairs(load_results(results))
    _write_json(
      prereg_path,
      dict(
        pairs=pairs,
        pilot_sd=sds,
        minimum_effect=MINIMUM_EFFECT,
        commit=commit(),
        date=datetime.date.today().isoformat(),
      ),
    )
