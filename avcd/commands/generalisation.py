r"""The claim study: does correlation distillation help on lip-sync generators a detector never saw?

    python -m avcd.commands.generalisation --stage=1 --workdir=runs/generalisation

runs what stage 1 still lacks and rewrites docs/generalisation/results.md from every results
file under docs/generalisation/results/ (committed, so the study continues on any machine;
`--report_only` skips the runs). docs/generalisation.md holds the pre-registration: rows,
endpoint, contrasts, the number of seed pairs and the decision rule. Stages:

  recipe  choose one training recipe for every row on the validation AUC of the trained
          methods only (the test split is not even scored)
  pilot   4 paired seeds of the stage 1 rows; prints only the SD of the paired differences of the
          primary endpoint and the number of pairs it implies (blind to the endpoint's mean)
  1       corpus 0: R0, R2, R3, R5, R2H over the pre-registered seeds, and the teachers-only row
  2       corpus 0: R1, R4; corpus 1: every row; corpus 0 with a weaker VSR teacher: R1, R2

Rows: R0 frame CE; R1 + correlation distillation; R2 + the joint-modal contrastive (metric) loss
(the paper's method); R3 CE + a sync-only auxiliary (the distillation BCE against timing-only
targets, no teachers); R4 R2 with the centred metric loss (losses.metric_loss); R5 CE + phoneme
heads, R2H R2 + phoneme heads (the amendment of 2026-12-07 in docs/generalisation.md).

Every run trains the config's student from scratch on the corpus's training split (real, ls_a,
desync, talking_head, voice_swap), then scores the validation split (trained methods) and the test
split (200 clips of every method, 1400 real, speakers never seen). Its results file holds the
per-method AUCs, the gate (every trained method >= 95% test AUC), the recipe, the commit, the
time taken and every test clip's score, which the report's bootstrap resamples by speaker.
"""

import contextlib
import dataclasses
import datetime
import json
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from avcd import compilation_cache
from avcd.evaluation import statistics

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/synthetic.py:generalisation", "The study's base config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Corpora, teachers and every run's directory.")
_RESULTS = flags.DEFINE_string(
  "results", "docs/generalisation/results", "Results files (committed)."
)
_REPORT = flags.DEFINE_string("report", "docs/generalisation/results.md", "Report to write.")
_STAGE = flags.DEFINE_enum("stage", "1", ["recipe", "pilot", "1", "2"], "What to run.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rewrite the report from results.")
_MAX_RUNS = flags.DEFINE_integer("max_runs", 0, "Stop after this many new runs (0: all).")

PRIMARY_HELD_OUT = ("ls_b", "ls_c")  # the primary endpoint: mean test AUC over these
TRAINED = ("ls_a", "desync", "talking_head", "voice_swap")
GATE_AUC = 0.95
PILOT_SEEDS = 4
MINIMUM_EFFECT = 0.05  # 5 AUC points
TEACHER_CONDITIONS = ("standard", "weak_vsr")
# The weaker VSR teacher sees the mouth at this many pixels (the standard one at 32): chosen, on
# the teachers' own validation frames only, to reach 60-70% per-frame phoneme accuracy.
WEAK_VSR_MOUTH_SIZE = 10
# The student's training recipe for every row (teachers train with the base config's own).
# Chosen by --stage=recipe on trained methods' validation AUC (docs/generalisation.md).
RECIPE = dict(learning_rate=None, frame_budget=None, num_epochs=None)
WARMUP_STEPS = 100
RECIPE_CELLS = tuple((lr, budget) for lr in (1e-3, 3e-3) for budget in (400, 1200))
RECIPE_ROWS = ("R0", "R2")
RECIPE_SEEDS = (0, 1)
# The pre-registered upper bound (amendment of 2026-12-07; the first grid ran 12). A run on file
# that stopped earlier without reaching the target is run again to this many epochs.
RECIPE_EPOCHS = 32
RECIPE_TARGET = 0.97


class Preempted(RuntimeError):
  """A run stopped by SIGTERM: nothing is recorded for it, and the stage stops."""


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  distill_weight: float
  metric_weight: float
  sync_weight: float = 0.0
  metric_form: str = "reference"
  metric_margin: float = 1.0
  phoneme_weight: float = 0.0  # phoneme heads on the student's encoders (a treatment: R5, R2H)

  @property
  def uses_teachers(self) -> bool:
    return self.distill_weight > 0 or self.metric_weight > 0 or self.phoneme_weight > 0


ROWS = {
  "R0": Row("CE", 0.0, 0.0),
  "R1": Row("CE + distillation", 1.0, 0.0),
  "R2": Row("CE + distillation + contrastive", 1.0, 1.0),
  "R3": Row("CE + sync-only auxiliary", 0.0, 0.0, sync_weight=1.0),
  "R4": Row(
    "R2 with the centred contrastive loss", 1.0, 1.0, metric_form="centred", metric_margin=0.5
  ),
  # Amendment of 2026-12-07 (docs/generalisation.md): the phoneme heads carry the teachers'
  # knowledge into each encoder, so they are a treatment: R5 asks whether any teacher signal,
  # rather than the correlation target, generalises; R2H is the paper's method with them.
  "R5": Row("CE + phoneme heads", 0.0, 0.0, phoneme_weight=0.5),
  "R2H": Row("R2 + phoneme heads", 1.0, 1.0, phoneme_weight=0.5),
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run. Rows without teachers (R0, R3) have teacher 'none': the same run serves
  every teacher condition."""

  corpus: int
  teacher: str
  row: str
  seed: int

  @property
  def name(self) -> str:
    return f"corpus{self.corpus}-{self.teacher}-{self.row}-seed{self.seed}"

  @classmethod
  def of(cls, corpus: int, teacher: str, row: str, seed: int) -> "Run":
    return cls(corpus, teacher if ROWS[row].uses_teachers else "none", row, seed)


def stage_runs(stage: str, pairs: int) -> list[Run]:
  """The runs a stage needs, in the order they are run (pairs stay together)."""
  if stage == "pilot":
    return [
      Run.of(0, "standard", row, seed) for seed in range(PILOT_SEEDS) for row in ("R0", "R2", "R3")
    ]
  if stage == "1":
    rows = ("R0", "R2", "R3", "R5", "R2H")
    return [Run.of(0, "standard", row, seed) for seed in range(pairs) for row in rows]
  if stage == "2":
    runs = [Run.of(0, "standard", row, seed) for seed in range(pairs) for row in ("R1", "R4")]
    runs += [Run.of(1, "standard", row, seed) for seed in range(pairs) for row in ROWS]
    runs += [Run.of(0, "weak_vsr", row, seed) for seed in range(pairs) for row in ("R1", "R2")]
    return runs
  raise ValueError(f"no runs for stage {stage!r}")


def stage_teachers(stage: str) -> list[tuple[int, str]]:
  """The (corpus, teacher condition) pairs whose teachers-only row a stage reports."""
  return {
    "pilot": [],
    "recipe": [],
    "1": [(0, "standard")],
    "2": [(1, "standard"), (0, "weak_vsr")],
  }[stage]


# ---- Configs ---------------------------------------------------------------------------------


def corpus_config(
  base: ml_collections.ConfigDict, corpus: int, teacher: str, workdir: pathlib.Path
) -> ml_collections.ConfigDict:
  """The base config on corpus `corpus` (its seed), with that teacher condition's teachers."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.data.synthetic.seed = corpus
  config.data.data_dir = str(workdir / f"corpus{corpus}" / "data")
  if teacher == "weak_vsr":
    config.teachers.vsr.mouth_size = WEAK_VSR_MOUTH_SIZE
  config.teachers.source = "checkpoint"
  config.teachers.checkpoint = str(teachers_dir(workdir, corpus, teacher))
  return config


def teachers_dir(workdir: pathlib.Path, corpus: int, teacher: str) -> pathlib.Path:
  # R0/R3 runs ('none') still load teachers for the cache's logged soft targets: the standard ones.
  return workdir / f"corpus{corpus}" / f"teachers-{'standard' if teacher == 'none' else teacher}"


def run_config(
  base: ml_collections.ConfigDict, run: Run, workdir: pathlib.Path, recipe: dict | None = None
) -> ml_collections.ConfigDict:
  """A student run's config: the corpus's, the row's losses, and `recipe` (default RECIPE)."""
  config = corpus_config(base, run.corpus, run.teacher, workdir)
  recipe = RECIPE if recipe is None else recipe
  config.optim.update(learning_rate=recipe["learning_rate"], warmup_steps=WARMUP_STEPS)
  config.data.frame_budget = recipe["frame_budget"]
  config.train.num_epochs = recipe["num_epochs"]
  row = ROWS[run.row]
  config.seed = run.seed
  config.loss.update(
    distill_weight=row.distill_weight,
    metric_weight=row.metric_weight,
    sync_weight=row.sync_weight,
    metric_form=row.metric_form,
    metric_margin=row.metric_margin,
    phoneme_weight=row.phoneme_weight,
  )
  teachers = config.teachers
  config.model.phoneme_classes = (
    (teachers.asr.num_classes, teachers.vsr.num_classes) if row.phoneme_weight else (0, 0)
  )
  return config


def recipe_config(
  base: ml_collections.ConfigDict,
  learning_rate: float,
  frame_budget: int,
  row: str,
  seed: int,
  workdir: pathlib.Path,
) -> ml_collections.ConfigDict:
  """A recipe-selection run: validation only (every epoch), never the test split."""
  config = run_config(
    base,
    Run.of(0, "standard", row, seed),
    workdir,
    recipe=dict(learning_rate=learning_rate, frame_budget=frame_budget, num_epochs=RECIPE_EPOCHS),
  )
  config.eval.splits = ("validation",)
  return config


def recipe_fields(config: ml_collections.ConfigDict) -> dict:
  """What a results file records of the recipe (and what must match across runs)."""
  return dict(
    learning_rate=config.optim.learning_rate,
    warmup_steps=config.optim.warmup_steps,
    decay_per_epoch=config.optim.decay_per_epoch,
    frame_budget=config.data.frame_budget,
    num_epochs=config.train.num_epochs,
    train_window=config.data.train_window,
    augment=config.data.augment,
    model=config.model.to_dict(),
    corpus=config.data.synthetic.to_dict(),
  )


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


def _write_json(path: pathlib.Path, content: dict) -> None:
  """Written whole or not at all: a killed job leaves no half file behind."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".partial")
  partial.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
  partial.replace(path)


def _speakers(config: ml_collections.ConfigDict, split: str, ids: list[str]) -> list[int]:
  from data_pipelines.synthetic import generator  # pylint: disable=g-import-not-at-top

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


@contextlib.contextmanager
def _segment(run_dir: pathlib.Path):
  """Times one attempt at a run (wall and this process's CPU seconds) and appends it to the run
  directory's segments file, whether the attempt finishes, is preempted or fails."""
  path = run_dir / SEGMENTS_FILE
  segments = json.loads(path.read_text()) if path.exists() else []
  record = dict(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
  start, cpu_start = time.perf_counter(), time.process_time()
  try:
    yield record
  finally:
    record.update(
      seconds=round(time.perf_counter() - start, 1),
      cpu_seconds=round(time.process_time() - cpu_start, 1),
    )
    record.setdefault("finished", False)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(path, [*segments, record])


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


def execute_recipe(base, learning_rate, frame_budget, row, seed, workdir, results) -> None:
  from avcd import train  # pylint: disable=g-import-not-at-top
  from data_pipelines import corpus_setup, loader  # pylint: disable=g-import-not-at-top

  config = recipe_config(base, learning_rate, frame_budget, row, seed, workdir)
  name = f"lr{learning_rate:g}-budget{frame_budget}-{row}-seed{seed}"
  run_dir = workdir / "corpus0" / "recipe" / name
  config = corpus_setup.prepare_corpus(config, workdir)  # names the corpus's builder for the loader
  steps = loader.steps_per_epoch(config.data, process_count=1, batch_multiple=1)
  config.eval.every_steps = steps
  # An interrupted run resumes from its last checkpoint; its segments' times add up.
  with _segment(run_dir) as segment:
    segment["finished"] = bool(train.train_and_evaluate(config, run_dir))
  if not segment["finished"]:
    raise Preempted(f"{name} was stopped by SIGTERM; run the same command to resume it")
  segments = json.loads((run_dir / SEGMENTS_FILE).read_text())
  by_step = {}  # a step evaluated again after a resume keeps its last evaluation
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "validation/auc" in record:
      by_step[record["step"]] = dict(
        epoch=record["step"] / steps,
        time=record["time"],
        auc={m: record[f"validation/auc/{m}"] for m in TRAINED},
      )
  epochs = [by_step[step] for step in sorted(by_step)]
  _write_json(
    results / "recipe" / f"{name}.json",
    dict(
      learning_rate=learning_rate,
      frame_budget=frame_budget,
      row=row,
      seed=seed,
      steps_per_epoch=steps,
      seconds=sum(g["seconds"] for g in segments),
      cpu_minutes=sum(g["cpu_seconds"] for g in segments) / 60,
      segments=segments,
      commit=commit(),
      recipe=recipe_fields(config),
      epochs=epochs,
    ),
  )
  shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _digest(ids: list[str]) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top

  return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def teachers_only(
  base, corpus: int, teacher: str, workdir: pathlib.Path, results: pathlib.Path
) -> None:
  """The teachers-only row: clip score 1 - mean soft target, on the test split; no training."""
  from avcd.core import sharding  # pylint: disable=g-import-not-at-top
  from avcd.models import layers  # pylint: disable=g-import-not-at-top
  from avcd.models.student import frame_mask  # pylint: disable=g-import-not-at-top
  from avcd.teachers import frozen  # pylint: disable=g-import-not-at-top
  from avcd.training import losses, steps  # pylint: disable=g-import-not-at-top
  from data_pipelines import corpus_setup, loader  # pylint: disable=g-import-not-at-top

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
    asr, vsr = steps.teacher_posteriors(
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


# ---- Reading results -------------------------------------------------------------------------


def load_results(results: pathlib.Path) -> dict:
  """Every committed result: runs by name, test sets by corpus, teacher reports, recipe runs."""
  runs = {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}
  test_sets = {}
  for path in sorted(results.glob("clips-corpus*.json")):
    clips = json.loads(path.read_text())
    test_sets[clips["corpus"]] = statistics.TestSet(
      np.array(clips["labels"]), np.array(clips["methods"]), np.array(clips["speakers"])
    )
  teachers = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("teachers-*.json"))}
  recipe = [json.loads(p.read_text()) for p in sorted((results / "recipe").glob("*.json"))]
  prereg_path = results.parent / "preregistration.json"
  prereg = json.loads(prereg_path.read_text()) if prereg_path.exists() else None
  return dict(runs=runs, test_sets=test_sets, teachers=teachers, recipe=recipe, prereg=prereg)


def _scores(result: dict) -> np.ndarray:
  return np.asarray(result["test_scores"], np.float64)


def pilot_pairs(loaded: dict) -> int:
  """The pre-registration's number of pairs from the pilot: SD of the paired differences of the
  primary endpoint (R2 - R0 and R2 - R3, the larger), printed without the endpoint's mean."""
  endpoint = statistics.mean_method_auc(PRIMARY_HELD_OUT)
  test = loaded["test_sets"][0]
  sds = {}
  for treatment, control in (("R2", "R0"), ("R2", "R3")):
    differences = []
    for seed in range(PILOT_SEEDS):
      a = loaded["runs"].get(Run.of(0, "standard", control, seed).name)
      b = loaded["runs"].get(Run.of(0, "standard", treatment, seed).name)
      if a is None or b is None:
        raise ValueError(f"the pilot lacks seed {seed} of {treatment} or {control}")
      differences.append(endpoint(test, _scores(b), None) - endpoint(test, _scores(a), None))
    sds[f"{treatment}-{control}"] = float(np.std(differences, ddof=1))
  sd = max(sds.values())
  pairs = statistics.pairs_needed(sd, MINIMUM_EFFECT)
  print(
    f"pilot: SD of paired differences of the primary endpoint {sds}; "
    f"pairs per corpus n = ceil((2.8 * {sd:.4f} / {MINIMUM_EFFECT})^2) + 2 = {pairs}"
  )
  return pairs, sds


def choose_recipe(recipe_runs: list[dict]) -> dict | None:
  """The cheapest recipe cell at which every run of the cell reaches RECIPE_TARGET validation AUC
  on every trained method: fewest epochs (every cell sees the same frames per epoch), then least
  measured time to that epoch. None when no cell gets there."""
  cells = {}
  for run in recipe_runs:
    cells.setdefault((run["learning_rate"], run["frame_budget"]), []).append(run)
  candidates = []
  for (learning_rate, budget), runs in sorted(cells.items()):
    if len(runs) < len(RECIPE_ROWS) * len(RECIPE_SEEDS):
      continue
    for epoch in range(1, RECIPE_EPOCHS + 1):
      at = [next((e for e in r["epochs"] if round(e["epoch"]) == epoch), None) for r in runs]
      if any(e is None for e in at):
        break
      if all(min(e["auc"].values()) >= RECIPE_TARGET for e in at):
        seconds = float(np.mean([r["seconds"] * epoch / len(r["epochs"]) for r in runs]))
        candidates.append(
          dict(learning_rate=learning_rate, frame_budget=budget, num_epochs=epoch, seconds=seconds)
        )
        break
  return min(candidates, key=lambda c: (c["num_epochs"], c["seconds"]), default=None)


# ---- Report ----------------------------------------------------------------------------------


def _pct(value: float) -> str:
  return f"{100 * value:.1f}"


def _conditions(runs: dict) -> list[tuple[int, str]]:
  """(corpus, teacher) conditions with runs, standard teachers first."""
  found = {
    (r["run"]["corpus"], r["run"]["teacher"])
    for r in runs.values()
    if r["run"]["teacher"] != "none"
  }
  found |= {(r["run"]["corpus"], "standard") for r in runs.values()}
  return sorted(found, key=lambda c: (TEACHER_CONDITIONS.index(c[1]), c[0]))


def _runs_of(loaded: dict, corpus: int, teacher: str, row: str) -> dict[int, dict]:
  """{seed: result} of one row in one condition (R0 and R3 runs serve every condition)."""
  out = {}
  for name, result in loaded["runs"].items():
    run = result["run"]
    if (
      run.get("row") == row
      and run["corpus"] == corpus
      and name == Run.of(corpus, teacher, row, run["seed"]).name
    ):
      out[run["seed"]] = result
  return out


def _pairs(loaded, conditions, treatment: str, control: str) -> dict[int, list]:
  pairs = {}
  for corpus, teacher in conditions:
    a, b = _runs_of(loaded, corpus, teacher, control), _runs_of(loaded, corpus, teacher, treatment)
    common = sorted(set(a) & set(b))
    if common:
      pairs[corpus] = [(_scores(a[s]), _scores(b[s])) for s in common]
  return pairs


def _method_table(loaded: dict, corpus: int, teacher: str, num_resamples: int) -> list[str]:
  test = loaded["test_sets"][corpus]
  methods = [m for m in (*TRAINED, "ls_a_clean", *PRIMARY_HELD_OUT) if m in set(test.methods)]
  header = (
    [f"{m} (trained)" for m in TRAINED]
    + ["ls_a_clean (diagnostic)"]
    + [f"{m} (held out)" for m in PRIMARY_HELD_OUT]
    + ["**primary endpoint**"]
  )
  lines = ["| row | runs | " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(header)]
  endpoints = [statistics.mean_method_auc([m]) for m in methods]
  endpoints.append(statistics.mean_method_auc(PRIMARY_HELD_OUT))
  for row in ROWS:
    runs = _runs_of(loaded, corpus, teacher, row)
    if not runs:
      continue
    scores = {corpus: [_scores(r) for _, r in sorted(runs.items())]}
    cells = []
    for endpoint in endpoints:
      e = statistics.estimate(loaded["test_sets"], scores, endpoint, num_resamples=num_resamples)
      cells.append(f"{_pct(e.mean)} [{_pct(e.low)}, {_pct(e.high)}]")
    lines.append(f"| {row} {ROWS[row].name} | {len(runs)} | " + " | ".join(cells) + " |")
  only = loaded["runs"].get(f"corpus{corpus}-{teacher}-teachers_only")
  if only:
    cells = [_pct(only["test_auc"][m]) for m in methods]
    cells.append(_pct(np.mean([only["test_auc"][m] for m in PRIMARY_HELD_OUT])))
    lines.append("| teachers only (1 - mean soft target) | - | " + " | ".join(cells) + " |")
  return lines


def _contrast_line(name: str, c: statistics.Contrast, adjusted: float | None = None) -> str:
  p = f"{c.p:.2g}" + (f" (Holm {adjusted:.2g})" if adjusted is not None else "")
  corpora = ", ".join(f"corpus {k}: {100 * v:+.1f}" for k, v in sorted(c.per_corpus.items()))
  return (
    f"| {name} | {c.pairs} | {100 * c.mean:+.1f} | [{100 * c.low:+.1f}, {100 * c.high:+.1f}]"
    f" | {p} | {corpora} |"
  )


def verdict(
  primary: statistics.Contrast,
  adjusted_p: float,
  by_generator: dict,
  against_sync: statistics.Contrast | None,
  gate_failures: int,
  complete: bool,
) -> str:
  """The pre-registered decision rule (docs/generalisation.md) applied to R2 - R0."""
  signs = [primary.mean] + list(primary.per_corpus.values()) + list(by_generator.values())
  holds = (
    primary.mean >= MINIMUM_EFFECT
    and primary.low > 0
    and adjusted_p < 0.05
    and all(v > 0 for v in signs)
    and gate_failures == 0
    and against_sync is not None
    and against_sync.mean > 0
  )
  if primary.high < MINIMUM_EFFECT:
    outcome = "fails"
  elif holds:
    outcome = "holds"
  else:
    outcome = "inconclusive"
  return outcome if complete else f"{outcome} so far (stage 2 is not complete)"


def write_report(loaded: dict, path: pathlib.Path, command: str, num_resamples: int = 2000):
  runs = loaded["runs"]
  lines = [
    "# Claim study: results",
    "",
    f"Generated by `{command}` on {datetime.date.today().isoformat()} from the results "
    "files beside this one (`results/`); the pre-registration, the corpus and the rows "
    "are described in [../generalisation.md](../generalisation.md). AUC in %, mean over "
    "runs [95% hierarchical bootstrap interval: seeds, and test speakers, resampled "
    f"within each corpus; {num_resamples} resamples].",
    "",
  ]
  if loaded["recipe"]:
    chosen = choose_recipe(loaded["recipe"])
    lines += [
      "## Recipe selection (validation split, trained methods only)",
      "",
      "| learning rate | frame budget | row | seed | epochs to every trained method >= "
      f"{_pct(RECIPE_TARGET)} | epochs run | seconds |",
      "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in sorted(
      loaded["recipe"], key=lambda r: (r["learning_rate"], r["frame_budget"], r["row"], r["seed"])
    ):
      reached = next(
        (round(e["epoch"]) for e in r["epochs"] if min(e["auc"].values()) >= RECIPE_TARGET), None
      )
      lines.append(
        f"| {r['learning_rate']:g} | {r['frame_budget']} | {r['row']} | {r['seed']} | "
        f"{reached if reached is not None else 'never'} | {len(r['epochs'])} | {r['seconds']:.0f} |"
      )
    lines += ["", f"Chosen: {chosen}" if chosen else "No cell reached the target.", ""]
  for key, report in sorted(loaded["teachers"].items()):
    medians = ", ".join(f"{m} {v['median']:.3f}" for m, v in report["soft_target"].items())
    lines.append(
      f"- Teachers {key}: per-frame phoneme accuracy ASR "
      f"{_pct(report['asr_frame_accuracy'])}%, VSR {_pct(report['vsr_frame_accuracy'])}%"
      f"; soft-target medians by method: {medians}."
    )
  if loaded["teachers"]:
    lines.append("")
  if not loaded["test_sets"]:
    path.write_text("\n".join(lines) + "\nNo test results yet.\n")
    return
  for corpus, teacher in _conditions(runs):
    lines += [f"## Test AUC by method: corpus {corpus}, {teacher} teachers", ""]
    lines += _method_table(loaded, corpus, teacher, num_resamples)
    lines.append("")

  endpoint = statistics.mean_method_auc(PRIMARY_HELD_OUT)
  standard = [c for c in _conditions(runs) if c[1] == "standard"]
  lines += [
    "## Paired contrasts of the primary endpoint (mean AUC over ls_b and ls_c)",
    "",
    "| contrast | pairs | difference | 95% interval | p (paired t) | by corpus |",
    "|---|---:|---:|---:|---|---|",
  ]
  contrasts = {}
  for treatment, control in (
    ("R2", "R0"),
    ("R1", "R0"),
    ("R2", "R3"),
    ("R5", "R0"),
    ("R2H", "R2"),
    ("R4", "R0"),
    ("R4", "R2"),
  ):
    pairs = _pairs(loaded, standard, treatment, control)
    if pairs:
      contrasts[(treatment, control)] = statistics.paired_contrast(
        loaded["test_sets"], pairs, endpoint, num_resamples=num_resamples
      )
  # Holm's family: the pre-registered R2 - R0 and R1 - R0, and R5 - R0 (amendment of 2026-12-07).
  primary = [k for k in (("R2", "R0"), ("R1", "R0"), ("R5", "R0")) if k in contrasts]
  adjusted = dict(zip(primary, statistics.holm([contrasts[k].p for k in primary])))
  for key, contrast in contrasts.items():
    lines.append(_contrast_line(f"{key[0]} - {key[1]}", contrast, adjusted.get(key)))
  weak = [c for c in _conditions(runs) if c[1] == "weak_vsr"]
  for treatment in ("R1", "R2"):
    pairs = _pairs(loaded, weak, treatment, "R0")
    if pairs:
      lines.append(
        _contrast_line(
          f"{treatment} - R0, weaker VSR teacher",
          statistics.paired_contrast(
            loaded["test_sets"], pairs, endpoint, num_resamples=num_resamples
          ),
        )
      )
  lines.append("")

  by_generator = {}  # held-out generator -> mean R2 - R0 (the decision rule needs each sign)
  if ("R2", "R0") in contrasts:
    pairs = _pairs(loaded, standard, "R2", "R0")
    for m in PRIMARY_HELD_OUT:
      by_generator[m] = statistics.paired_contrast(
        loaded["test_sets"], pairs, statistics.mean_method_auc([m]), num_resamples=num_resamples
      )
    lines += [
      "R2 - R0 by held-out generator: "
      + ", ".join(
        f"{m} {100 * c.mean:+.1f} [{100 * c.low:+.1f}, {100 * c.high:+.1f}]"
        for m, c in by_generator.items()
      ),
      "",
    ]

  lines += [
    "## Does a row read ls_a's trace? (ls_a minus ls_a_clean, test AUC)",
    "",
    "| row | condition | runs | ls_a - ls_a_clean |",
    "|---|---|---:|---:|",
  ]
  for corpus, teacher in _conditions(runs):
    for row in ROWS:
      results = _runs_of(loaded, corpus, teacher, row)
      if results:
        gap = [r["test_auc"]["ls_a"] - r["test_auc"]["ls_a_clean"] for r in results.values()]
        lines.append(
          f"| {row} | corpus {corpus}, {teacher} | {len(gap)} | "
          f"{100 * np.mean(gap):+.1f} ± {100 * np.std(gap):.1f} |"
        )
  failures = {
    name: r["gate"]["failing"]
    for name, r in runs.items()
    if "gate" in r and not r["gate"]["passed"]
  }
  lines += [
    "",
    "## Gate (every trained method >= 95% test AUC)",
    "",
    f"{sum('gate' in r for r in runs.values()) - len(failures)} of "
    f"{sum('gate' in r for r in runs.values())} runs passed.",
  ]
  lines += [
    f"- {name} failed: " + ", ".join(f"{m} {_pct(v)}" for m, v in sorted(f.items()))
    for name, f in sorted(failures.items())
  ]
  seconds = [r["seconds"] for r in runs.values() if "seconds" in r]
  if seconds:
    lines += [
      "",
      f"Run time: median {np.median(seconds) / 60:.1f} min per run "
      f"({len(seconds)} runs, 2-core CPU).",
    ]
  if ("R2", "R0") in contrasts:
    prereg = loaded["prereg"] or {}
    planned = set(
      r.name
      for r in stage_runs("1", prereg.get("pairs", 0)) + stage_runs("2", prereg.get("pairs", 0))
    )
    complete = bool(prereg) and planned <= set(runs)
    lines += [
      "",
      "## Verdict",
      "",
      "By the pre-registered rule, the claim "
      + verdict(
        contrasts[("R2", "R0")],
        adjusted[("R2", "R0")],
        {m: c.mean for m, c in by_generator.items()},
        contrasts.get(("R2", "R3")),
        len(failures),
        complete,
      )
      + ".",
    ]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


# ---- Command ---------------------------------------------------------------------------------


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = pathlib.Path(_RESULTS.value)
  command = " ".join(
    [
      "python -m avcd.commands.generalisation",
      *[a for a in sys.argv[1:] if a.startswith("--") and "workdir" not in a],
    ]
  )
  if not _REPORT_ONLY.value:
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required unless --report_only")
    run_stage(
      _CONFIG.value, _STAGE.value, pathlib.Path(_WORKDIR.value).absolute(), results, _MAX_RUNS.value
    )
  write_report(load_results(results), pathlib.Path(_REPORT.value), command)
  print(pathlib.Path(_REPORT.value).read_text())


def _recipe_run_complete(path: pathlib.Path) -> bool:
  """Whether a recipe run's file exists and needs no more epochs: it reached the target or ran
  RECIPE_EPOCHS epochs."""
  if not path.exists():
    return False
  epochs = json.loads(path.read_text())["epochs"]
  reached = any(min(e["auc"].values()) >= RECIPE_TARGET for e in epochs)
  if not reached and len(epochs) < RECIPE_EPOCHS:
    logging.info(
      "%s: %d epochs without the target; run again to %d", path, len(epochs), RECIPE_EPOCHS
    )
    return False
  return True


def run_stage(
  base, stage: str, workdir: pathlib.Path, results: pathlib.Path, max_runs: int
) -> None:
  """Runs what `stage` still lacks (at most max_runs new runs when > 0)."""
  compilation_cache.enable(str(workdir / "compilation_cache"))
  ensure_teachers(base, 0, "standard", workdir, results)
  done = 0
  if stage == "recipe":
    # A cell qualifies only if every run of it reaches the target, so a cell is abandoned at its
    # first run that never does (that run's file records it). Each cell's first seeds run first.
    for learning_rate, budget in RECIPE_CELLS:
      for seed in RECIPE_SEEDS:
        for row in RECIPE_ROWS:
          name = f"lr{learning_rate:g}-budget{budget}-{row}-seed{seed}"
          path = results / "recipe" / f"{name}.json"
          if not _recipe_run_complete(path):
            if max_runs and done >= max_runs:
              return
            execute_recipe(base, learning_rate, budget, row, seed, workdir, results)
            done += 1
          if not any(
            min(e["auc"].values()) >= RECIPE_TARGET for e in json.loads(path.read_text())["epochs"]
          ):
            logging.info(
              "recipe cell lr=%g budget=%d: %s never reached %.2f; cell abandoned",
              learning_rate,
              budget,
              name,
              RECIPE_TARGET,
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


if __name__ == "__main__":
  app.run(main)
