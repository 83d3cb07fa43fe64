"""The study's report: docs/generalisation/results.md from the results files alone (tables with
hierarchical bootstrap intervals, the contrasts, the pre-registered verdict), and the analyses the
stages need (the pilot's number of pairs, the chosen recipe)."""

import datetime
import json
import pathlib

import numpy as np

from avcd.evaluation import statistics
from avcd.studies.generalisation.design import (
  MINIMUM_EFFECT,
  PILOT_SEEDS,
  PRIMARY_HELD_OUT,
  RECIPE_ROWS,
  RECIPE_SEEDS,
  RECIPE_TARGET,
  ROWS,
  TEACHER_CONDITIONS,
  TRAINED,
  Run,
  stage_runs,
)


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


def first_epoch_at_target(run: dict) -> int | None:
  """The first epoch at which a recipe run had every trained method at RECIPE_TARGET."""
  return next(
    (round(e["epoch"]) for e in run["epochs"] if min(e["auc"].values()) >= RECIPE_TARGET), None
  )


def choose_recipe(recipe_runs: list[dict]) -> dict | None:
  """The cheapest recipe cell every run of which reaches RECIPE_TARGET validation AUC on every
  trained method: fewest epochs (the latest of its runs' first epochs at the target; every cell
  sees the same frames per epoch), then least measured time to that epoch. None when no cell
  gets there. (Amendment 2 of 2026-12-07: runs stop at their first epoch at the target, so the
  cell's epoch count is no longer one at which all its runs were at the target together.)"""
  cells = {}
  for run in recipe_runs:
    cells.setdefault((run["learning_rate"], run["frame_budget"]), []).append(run)
  candidates = []
  for (learning_rate, budget), runs in sorted(cells.items()):
    reached = [first_epoch_at_target(r) for r in runs]
    if len(runs) < len(RECIPE_ROWS) * len(RECIPE_SEEDS) or None in reached:
      continue
    epoch = max(reached)
    seconds = float(np.mean([r["seconds"] * epoch / len(r["epochs"]) for r in runs]))
    candidates.append(
      dict(learning_rate=learning_rate, frame_budget=budget, num_epochs=epoch, seconds=seconds)
    )
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
      f"{_pct(RECIPE_TARGET)} | epochs run | seconds | CPU minutes |",
      "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(
      loaded["recipe"], key=lambda r: (r["learning_rate"], r["frame_budget"], r["row"], r["seed"])
    ):
      reached = first_epoch_at_target(r)
      cpu_minutes = f"{r['cpu_minutes']:.0f}" if "cpu_minutes" in r else "-"
      lines.append(
        f"| {r['learning_rate']:g} | {r['frame_budget']} | {r['row']} | {r['seed']} | "
        f"{reached if reached is not None else 'never'} | {len(r['epochs'])} | "
        f"{r['seconds']:.0f} | {cpu_minutes} |"
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
