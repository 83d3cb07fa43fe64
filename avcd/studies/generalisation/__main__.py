"""python -m avcd.studies.generalisation --stage=1 --workdir=runs/generalisation (see the package
docstring and docs/generalisation.md)."""

import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from avcd.studies.generalisation.report import load_results, write_report
from avcd.studies.generalisation.runs import run_stage

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = pathlib.Path(_RESULTS.value)
  command = " ".join(
    [
      "python -m avcd.studies.generalisation",
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


if __name__ == "__main__":
  app.run(main)
