"""The demo's seed study: the README's table and docs/demo_seeds.md are what its committed
results files give (rebuilt here exactly as `python -m avcd.studies.demo_seeds --report_only`)."""

import math
import shutil

from avcd.studies import demo_seeds
from tests.conftest import REPO

RESULTS = REPO / "docs" / "demo_seeds" / "results"


def test_the_plateau_is_the_loss_of_a_student_that_detects_only_voice_swaps():
  # 1/8 of the training clips (voice swaps) cost nothing; the rest are fake with probability 3/7.
  entropy = -(3 / 7) * math.log(3 / 7) - (4 / 7) * math.log(4 / 7)
  assert math.isclose(demo_seeds.PLATEAU_CE, 7 / 8 * entropy)
  assert round(demo_seeds.PLATEAU_CE, 3) == 0.598
  # Window means of 20 steps: a dip at step 80 is noise, the 100-step mean crosses at 160.
  curve = [[20, 0.62], [40, 0.61], [60, 0.60], [80, 0.55], [100, 0.62], [120, 0.62]]
  curve += [[140, 0.61], [160, 0.50], [180, 0.3]]
  assert demo_seeds.ESCAPE_STEPS == 100 and demo_seeds.LOG_EVERY == 20
  assert demo_seeds.escape_step(curve) == 160
  assert demo_seeds.escape_step(curve[:7]) is None


def test_the_readme_table_and_the_report_are_rebuilt_from_the_committed_results(tmp_path):
  loaded = demo_seeds.load_results(RESULTS)
  assert loaded.get("heads"), f"no seed study results in {RESULTS}"
  readme = tmp_path / "README.md"
  shutil.copy(REPO / "README.md", readme)
  demo_seeds.write_report(loaded, tmp_path / "demo_seeds.md", readme)
  assert readme.read_text() == (REPO / "README.md").read_text(), (
    "README.md's seed table is not what the results files give: run "
    "python -m avcd.studies.demo_seeds --report_only"
  )
  assert (tmp_path / "demo_seeds.md").read_text() == (REPO / "docs" / "demo_seeds.md").read_text()


def test_the_study_imports_beside_the_claim_study_in_one_process():
  # absl flags are process-global: a test worker imports both runners.
  import importlib  # pylint: disable=g-import-not-at-top

  importlib.import_module("avcd.studies.generalisation.__main__")
  importlib.reload(demo_seeds)
