r"""The generalisation protocol on the synthetic corpus: does correlation distillation help on an
unseen forgery method?

    python -m avcd.generalisation --config=configs/synthetic.py:generalisation \
        --workdir=runs/generalisation --output=docs/generalisation.md

Trains the teachers once, then the student with three loss ablations (CE only; CE +
distillation; CE + distillation + contrastive) for each seed, on the training fakes the config
names (`data.train_methods`), and evaluates every run on the test split: all methods, including
the held-out ones. Writes a Markdown table of per-method test AUC (mean ± std over seeds) to
--output, with the teachers' accuracy and soft-target medians. Finished runs are reused, so an
interrupted protocol continues where it stopped.
"""

import json
import pathlib
import shutil
import sys
import time

import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config (configs/synthetic.py:generalisation).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the teachers and every run.")
_OUTPUT = flags.DEFINE_string("output", "docs/generalisation.md", "Markdown table to write.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Student seeds.")
flags.mark_flags_as_required(["config", "workdir"])

# Ablation rows: (name, distillation weight, contrastive (metric) weight).
ROWS = (("CE only", 0.0, 0.0), ("CE + distillation", 1.0, 0.0),
        ("CE + distillation + contrastive", 1.0, 1.0))


def _run_config(config: ml_collections.ConfigDict, teachers_dir: pathlib.Path, seed: int,
                distill_weight: float, metric_weight: float) -> ml_collections.ConfigDict:
  run = ml_collections.ConfigDict(config.to_dict())
  run.seed = seed
  run.loss.distill_weight = distill_weight
  run.loss.metric_weight = metric_weight
  run.teachers.source = "checkpoint"
  run.teachers.checkpoint = str(teachers_dir)
  return run


def _slug(name: str) -> str:
  return name.lower().replace(" + ", "-").replace(" ", "-")


def run_protocol(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 seeds: list[int]) -> dict:
  """Runs (or reuses) every run; returns {row: {method: [auc per seed]}} and the teacher report."""
  from avcd import train, train_teacher  # pylint: disable=g-import-not-at-top
  from data_pipelines import corpus_setup  # pylint: disable=g-import-not-at-top

  corpus_setup.prepare_corpus(config.data, workdir)
  teachers_dir = workdir / "teachers"
  report_path = teachers_dir / "report.json"
  if not report_path.exists():
    train_teacher.train_teachers(config, teachers_dir)
  teacher_report = json.loads(report_path.read_text())

  aucs = {}
  for name, distill_weight, metric_weight in ROWS:
    for seed in seeds:
      run_dir = workdir / f"{_slug(name)}-seed{seed}"
      metrics_path = run_dir / "eval" / config.eval.splits[0] / "metrics.json"
      if not metrics_path.exists():
        start = time.perf_counter()
        train.train_and_evaluate(
            _run_config(config, teachers_dir, seed, distill_weight, metric_weight), run_dir)
        logging.info("%s seed %d: %.0f s", name, seed, time.perf_counter() - start)
      metrics = json.loads(metrics_path.read_text())
      row = aucs.setdefault(name, {})
      row.setdefault("all", []).append(metrics["auc"])
      for method, values in metrics["per_method"].items():
        row.setdefault(method, []).append(values["auc"])
  return aucs, teacher_report


def markdown(aucs: dict, teacher_report: dict, config: ml_collections.ConfigDict,
             seeds: list[int], command: str, soft_target_plot: str) -> str:
  trained = tuple(config.data.train_methods)
  methods = sorted({m for row in aucs.values() for m in row if m != "all"},
                   key=lambda m: (m not in trained, m))
  header = [f"{m} {'(trained)' if m in trained else '(held out)'}" for m in methods] + ["all"]
  lines = [
      "# Generalisation to unseen forgeries (synthetic corpus)", "",
      f"Produced by:\n\n```sh\n{command}\n```", "",
      f"Student trained on real clips and the fakes of {', '.join(trained)}; tested on the test "
      f"split's held-out speakers, every method. Test ROC-AUC (%), mean ± std over seeds "
      f"{', '.join(map(str, seeds))}; each method column scores all real test clips against "
      "that method's fakes.", "",
      "| Loss | " + " | ".join(header) + " |",
      "|---|" + "---:|" * len(header)]
  for name, _, _ in ROWS:
    cells = []
    for method in [*methods, "all"]:
      values = 100 * np.asarray(aucs[name][method], float)
      cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  targets = teacher_report["soft_target"]
  lines += [
      "", "## Teachers", "",
      f"Per-frame phoneme accuracy on the {teacher_report['split']} split's real clips: ASR "
      f"{100 * teacher_report['asr_frame_accuracy']:.1f}%, VSR "
      f"{100 * teacher_report['vsr_frame_accuracy']:.1f}% ({teacher_report['frames']} frames). "
      f"Soft target 1 − D ({teacher_report['divergence']}) per frame, by method:", "",
      "| Method | median | 10th pct | 90th pct |", "|---|---:|---:|---:|"]
  lines += [f"| {m} | {v['median']:.3f} | {v['p10']:.3f} | {v['p90']:.3f} |"
            for m, v in targets.items()]
  lines += ["", f"![Soft target distributions by method]({soft_target_plot})"]
  return "\n".join(lines) + "\n"


def argv_for_record() -> list[str]:
  """The flags this run was started with, as the table's reproduction command."""
  return [a for a in sys.argv[1:] if a.startswith("--")]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value).absolute()
  seeds = [int(s) for s in _SEEDS.value]
  aucs, teacher_report = run_protocol(config, workdir, seeds)
  command = " ".join(["python -m avcd.generalisation", *argv_for_record()])
  output = pathlib.Path(_OUTPUT.value)
  output.parent.mkdir(parents=True, exist_ok=True)
  plot = output.with_name(f"{output.stem}_soft_targets.png")
  shutil.copyfile(workdir / "teachers" / "soft_targets.png", plot)
  text = markdown(aucs, teacher_report, config, seeds, command, plot.name)
  output.write_text(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
