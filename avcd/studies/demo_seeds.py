r"""The demo's seed study: does the README's first command learn every fake in every seed?

    python -m avcd.studies.demo_seeds --workdir=runs/demo_seeds --variants=heads --seeds=0-9
    python -m avcd.studies.demo_seeds --report_only

Each run is the README's demo command, `avcd train --config=configs/synthetic.py`, with
`--config.seed=S` and the variant's changes, run as a new process in its own workdir. Runs share
one generated corpus (the corpus seed is fixed, so every workdir would generate the same clips)
and, within a seed and thread setting, one set of teachers (trained by the first run that needs
them, as the demo trains its own). Only observing fields are added to the command: the loss is
logged every LOG_EVERY steps (for the step where cross-entropy leaves the voice-cue plateau) and
the test split is evaluated every EVAL_EVERY steps; neither changes a trained bit.

Variants:
  heads             the demo as shipped (phoneme heads on)
  no_heads          the demo without phoneme heads (the paper's student and losses)
  heads_one_thread  the demo on one XLA thread: another float reduction order, the same verdict?

A run writes one small JSON file under --results (committed): its command, commit, machine,
seconds (summed over the segments of a run that was interrupted and resumed), the teachers'
accuracy, every evaluation's per-method test AUC and the cross-entropy curve. `--report_only`
rebuilds docs/demo_seeds.md and the README's seed table from those files alone, including the
step where each run left the voice-cue plateau (escape_step).
"""

import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo_seeds", "Corpus, teachers and run dirs.")
_RESULTS = flags.DEFINE_string("results", "docs/demo_seeds/results", "Results files (committed).")
_REPORT = flags.DEFINE_string("report", "docs/demo_seeds.md", "Report to write.")
_README = flags.DEFINE_string("readme", "README.md", "README whose seed table is rewritten.")
_VARIANTS = flags.DEFINE_list("variants", ["heads"], "Variants to run, in order.")
_SEEDS = flags.DEFINE_string("seeds", "0-9", "Seeds to run: 'A-B' or 'A,B,C'.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rebuild the report and README table.")

CONFIG = "configs/synthetic.py"
LOG_EVERY = 20
EVAL_EVERY = 240
METHODS = ("desync", "lipsync", "talking_head", "voice_swap")
LEARNED = 0.98  # a method counts as learned at this test AUC (the bar)
# Frame cross-entropy when only voice_swap is detected: its clips (1/8 of the training clips)
# cost nothing, the other 7/8 are fake with probability 3/7 and the best constant prediction
# costs their entropy H(3/7) nats.
PLATEAU_CE = 7 / 8 * -(3 / 7 * math.log(3 / 7) + 4 / 7 * math.log(4 / 7))
ESCAPE_STEPS = 100  # the cross-entropy is averaged over this many steps to find the escape
# One core (CPU affinity, which sizes XLA's thread pool) and single-threaded Eigen kernels:
# convolutions and matmuls then sum in another order than on the machine's cores.
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"
README_BEGIN = "<!-- demo_seeds table: python -m avcd.studies.demo_seeds --report_only -->"
README_END = "<!-- end of demo_seeds table -->"


@dataclasses.dataclass(frozen=True)
class Variant:
  overrides: tuple[str, ...] = ()
  xla_flags: str = ""  # appended to XLA_FLAGS
  one_core: bool = False  # run on CPU 0 only (taskset)


VARIANTS = {
  "heads": Variant(),
  "no_heads": Variant(("--config.model.phoneme_classes=(0, 0)", "--config.loss.phoneme_weight=0")),
  "heads_one_thread": Variant(xla_flags=ONE_THREAD, one_core=True),
}


def parse_seeds(text: str) -> list[int]:
  if "-" in text:
    first, last = (int(n) for n in text.split("-"))
    return list(range(first, last + 1))
  return [int(n) for n in text.split(",")]


def run_name(variant: str, seed: int) -> str:
  return f"{variant}-seed{seed}"


def teachers_dir(variant: str, seed: int, workdir: pathlib.Path) -> pathlib.Path:
  """Shared by the variants of a seed that run on the same threads."""
  return workdir / f"teachers-seed{seed}{'-one_thread' if VARIANTS[variant].xla_flags else ''}"


def command(variant: str, seed: int, workdir: pathlib.Path) -> list[str]:
  """The demo command of one run (README's, plus the seed, the variant and observation)."""
  return [
    "avcd",
    "train",
    f"--config={CONFIG}",
    f"--workdir={workdir / 'runs' / run_name(variant, seed)}",
    f"--config.seed={seed}",
    *VARIANTS[variant].overrides,
    f"--config.data.data_dir={workdir / 'data'}",
    f"--config.teachers.checkpoint={teachers_dir(variant, seed, workdir)}",
    f"--config.train.log_every_steps={LOG_EVERY}",
    f"--config.eval.every_steps={EVAL_EVERY}",
  ]


def commit() -> str:
  """The commit the code runs at ('+dirty' when tracked files differ from it)."""
  root = pathlib.Path(__file__).resolve().parents[2]
  git = lambda *args: subprocess.run(
    ["git", *args], cwd=root, capture_output=True, text=True, check=True
  ).stdout.strip()
  try:
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def machine() -> str:
  model = next(
    (
      line.split(":", 1)[1].strip()
      for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
      if line.startswith("model name")
    ),
    platform.processor() or "unknown CPU",
  )
  return f"{model}, {os.cpu_count()} CPUs, {platform.system()}"


def _write_json(path: pathlib.Path, content: dict) -> None:
  """Written whole or not at all: a killed job leaves no half file behind."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".partial")
  partial.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
  partial.replace(path)


def read_metrics(run_dir: pathlib.Path) -> tuple[list, dict]:
  """(cross-entropy curve [[step, ce]], {step: {method: test AUC, 'all': AUC}}) of a run."""
  curve, evaluations = [], {}
  for line in (run_dir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "step" not in record:  # the run's hyperparameters
      continue
    step = int(record["step"])
    if "loss_ce" in record:
      curve.append([step, round(float(record["loss_ce"]), 5)])
    if "test/auc" in record:
      evaluations[str(step)] = dict(
        {m: record[f"test/auc/{m}"] for m in METHODS}, all=record["test/auc"]
      )
  return curve, evaluations


def escape_step(curve: list) -> int | None:
  """The first logged step at which the mean cross-entropy over the ESCAPE_STEPS steps before it
  is below the voice-swap-only optimum; None if it never is.

  A student on the plateau logs window means of 0.60 +- 0.05, so a single window below 0.598 is
  often noise (without the heads, runs dip below it at step 200 and never learn a second method);
  over 100 steps the noise is about 0.02 and the first crossing marks a lasting escape."""
  windows = ESCAPE_STEPS // LOG_EVERY
  losses = [ce for _, ce in curve]
  for i in range(windows - 1, len(curve)):
    if np.mean(losses[i - windows + 1 : i + 1]) < PLATEAU_CE:
      return curve[i][0]
  return None


def execute(variant: str, seed: int, workdir: pathlib.Path, results: pathlib.Path) -> None:
  """Runs (or resumes) one run and writes its results file."""
  name = run_name(variant, seed)
  run_dir = workdir / "runs" / name
  run_dir.mkdir(parents=True, exist_ok=True)
  segments_file = run_dir / "study_segments.json"
  segments = json.loads(segments_file.read_text()) if segments_file.exists() else []
  argv = command(variant, seed, workdir)
  env = dict(os.environ)
  if VARIANTS[variant].xla_flags:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {VARIANTS[variant].xla_flags}".strip()
  executable = [str(pathlib.Path(sys.executable).with_name("avcd"))]
  if VARIANTS[variant].one_core:
    executable = ["taskset", "--cpu-list", "0", *executable]
  logging.info("%s: %s", name, " ".join(argv))
  start, cpu_start = time.perf_counter(), os.times()
  with open(run_dir / "study.log", "a") as log:
    status = subprocess.run([*executable, *argv[1:]], env=env, stdout=log, stderr=log).returncode
  cpu_end = os.times()
  segments.append(
    dict(
      seconds=round(time.perf_counter() - start, 1),
      cpu_seconds=round(
        (cpu_end.children_user - cpu_start.children_user)
        + (cpu_end.children_system - cpu_start.children_system),
        1,
      ),
      status=status,
      date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
  )
  _write_json(segments_file, segments)
  if status != 0:
    raise RuntimeError(f"{name} exited with status {status}; see {run_dir / 'study.log'}")
  curve, evaluations = read_metrics(run_dir)
  final = evaluations[max(evaluations, key=int)]
  teachers = json.loads((teachers_dir(variant, seed, workdir) / "report.json").read_text())
  _write_json(
    results / f"{name}.json",
    dict(
      variant=variant,
      seed=seed,
      command=" ".join(argv),
      xla_flags=VARIANTS[variant].xla_flags,
      one_core=VARIANTS[variant].one_core,
      commit=commit(),
      machine=machine(),
      seconds=round(sum(s["seconds"] for s in segments), 1),
      cpu_seconds=round(sum(s["cpu_seconds"] for s in segments), 1),
      segments=segments,
      teachers_accuracy={k: teachers[k] for k in teachers if k.endswith("accuracy")},
      test_auc=final,
      evaluations=evaluations,
      plateau_ce=round(PLATEAU_CE, 5),
      ce_curve=curve,
    ),
  )
  logging.info("%s: test AUC %s", name, {k: round(v, 4) for k, v in final.items()})


# ---- Report ------------------------------------------------------------------------------------


def load_results(results: pathlib.Path) -> dict[str, dict[int, dict]]:
  """{variant: {seed: result}} of every committed results file."""
  loaded: dict[str, dict[int, dict]] = {}
  for path in sorted(results.glob("*.json")):
    result = json.loads(path.read_text())
    loaded.setdefault(result["variant"], {})[result["seed"]] = result
  return loaded


def _pct(value: float) -> str:
  return f"{100 * value:.1f}"


def seed_table(runs: dict[int, dict], step: str | None = None) -> list[str]:
  """Markdown rows: one per seed (test AUC per method at `step`, default the final one), then
  the median and the worst seed per method."""
  header = "| seed | " + " | ".join(METHODS) + " | all | CE below plateau at step |"
  lines = [header, "|---:|" + "---:|" * (len(METHODS) + 2)]
  auc = {
    seed: (r["evaluations"][step] if step else r["test_auc"])
    for seed, r in sorted(runs.items())
    if step is None or step in r["evaluations"]
  }
  for seed, values in auc.items():
    escape = escape_step(runs[seed]["ce_curve"])
    lines.append(
      f"| {seed} | "
      + " | ".join(_pct(values[m]) for m in (*METHODS, "all"))
      + f" | {escape if escape is not None else 'never'} |"
    )
  escapes = [escape_step(runs[s]["ce_curve"]) for s in auc]
  reached = [e for e in escapes if e is not None]
  escape_median = f"{np.median(reached):.0f}" if len(reached) == len(escapes) else "-"
  lines.append(
    "| median | "
    + " | ".join(_pct(np.median([v[m] for v in auc.values()])) for m in (*METHODS, "all"))
    + f" | {escape_median} |"
  )
  worst = []
  for m in (*METHODS, "all"):
    seed = min(auc, key=lambda s: auc[s][m])
    worst.append(f"{_pct(auc[seed][m])} (seed {seed})")
  never = len(escapes) - len(reached)
  lines.append(
    "| worst | " + " | ".join(worst) + f" | {f'never in {never}' if never else max(reached)} |"
  )
  return lines


def verdict(runs: dict[int, dict]) -> str:
  """How many seeds learned every method (>= LEARNED), and the lowest AUC."""
  learned = [s for s, r in runs.items() if all(r["test_auc"][m] >= LEARNED for m in METHODS)]
  lowest = min(r["test_auc"][m] for r in runs.values() for m in METHODS)
  return (
    f"every method at >= {_pct(LEARNED)}% test AUC in {len(learned)} of {len(runs)} seeds; "
    f"lowest AUC of any method in any seed {_pct(lowest)}%"
  )


def readme_block(loaded: dict) -> str:
  """The README's seed table: the shipped demo (variant 'heads')."""
  runs = loaded.get("heads", {})
  if not runs:
    return "No seed study results yet."
  steps = {max(r["evaluations"], key=int) for r in runs.values()}
  return "\n".join(
    [
      f"Test ROC-AUC (%) per method after {', '.join(sorted(steps))} steps, "
      f"{len(runs)} seeds ({verdict(runs)}):",
      "",
      *seed_table(runs),
    ]
  )


def thread_lines(loaded: dict) -> list[str]:
  """The same seeds on all threads and on one: the same verdict on every method?"""
  one, many = loaded.get("heads_one_thread", {}), loaded.get("heads", {})
  seeds = sorted(set(one) & set(many))
  if not seeds:
    return ["No one-thread runs yet."]
  lines = [
    "| seed | " + " | ".join(f"{m} (all / one thread)" for m in METHODS) + " | same verdict |",
    "|---:|" + "---:|" * len(METHODS) + "---|",
  ]
  for seed in seeds:
    a, b = many[seed]["test_auc"], one[seed]["test_auc"]
    same = all((a[m] >= LEARNED) == (b[m] >= LEARNED) for m in METHODS)
    lines.append(
      f"| {seed} | "
      + " | ".join(f"{_pct(a[m])} / {_pct(b[m])}" for m in METHODS)
      + f" | {'yes' if same else 'no'} |"
    )
  return lines


def write_report(loaded: dict, report: pathlib.Path, readme: pathlib.Path) -> None:
  lines = [
    "# The demo's seed study",
    "",
    "Generated by `python -m avcd.studies.demo_seeds --report_only` from the results files in",
    "[demo_seeds/results/](demo_seeds/results/) (one per run: its command, commit, machine, time,",
    "every evaluation and the cross-entropy curve). How the runs are made: the module docstring of",
    "`avcd/studies/demo_seeds.py`. A method counts as learned at "
    f"{_pct(LEARNED)}% test AUC or more;",
    "'CE below plateau' is the first step at which the mean frame cross-entropy over the",
    f"{ESCAPE_STEPS} steps before it is below {PLATEAU_CE:.3f}, the loss of a student that detects",
    "only voice swaps.",
  ]
  for variant, runs in sorted(loaded.items()):
    r0 = next(iter(runs.values()))
    lines += ["", f"## {variant}", "", f"`{r0['command']}`"]
    if r0["xla_flags"]:
      lines += [
        "",
        f"with `XLA_FLAGS={r0['xla_flags']}`"
        + (", on one core (taskset --cpu-list 0)" if r0["one_core"] else ""),
      ]
    lines += ["", f"Final step: {verdict(runs)}.", "", *seed_table(runs)]
    half = sorted({s for r in runs.values() for s in r["evaluations"]}, key=int)[:-1]
    for step in half:
      lines += ["", f"At step {step}:", "", *seed_table(runs, step)]
    minutes = [r["seconds"] / 60 for r in runs.values()]
    machines = sorted({r["machine"] for r in runs.values()})
    commits = sorted({r["commit"][:7] for r in runs.values()})
    lines += [
      "",
      f"Wall time per run (teachers, student, evaluations; corpus shared): median "
      f"{np.median(minutes):.1f} min, {len(runs)} runs on {'; '.join(machines)}, "
      f"commit {', '.join(commits)}.",
    ]
  lines += ["", "## Thread count", "", *thread_lines(loaded), ""]
  report.write_text("\n".join(lines))
  if readme.exists():
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
      raise ValueError(f"{readme} has no seed-table markers ({README_BEGIN!r} ... {README_END!r})")
    block = f"{README_BEGIN}\n{readme_block(loaded)}\n{README_END}"
    readme.write_text(text[:begin] + block + text[end + len(README_END) :])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = pathlib.Path(_RESULTS.value)
  if not _REPORT_ONLY.value:
    unknown = set(_VARIANTS.value) - set(VARIANTS)
    if unknown:
      raise app.UsageError(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    workdir = pathlib.Path(_WORKDIR.value).absolute()
    for variant in _VARIANTS.value:
      for seed in parse_seeds(_SEEDS.value):
        if not (results / f"{run_name(variant, seed)}.json").exists():
          execute(variant, seed, workdir, results)
  write_report(load_results(results), pathlib.Path(_REPORT.value), pathlib.Path(_README.value))


if __name__ == "__main__":
  app.run(main)
