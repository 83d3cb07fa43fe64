"""The generalisation protocol's table: rows, held-out marking, mean ± std over seeds."""

import pathlib

from avcd import config_loading
from avcd import generalisation


def test_table_marks_held_out_methods_and_averages_seeds():
  config = config_loading.load_config(
      f"{pathlib.Path(__file__).parents[1] / 'configs' / 'synthetic.py'}:generalisation")
  methods = ("desync", "lipsync", "talking_head", "voice_swap", "all")
  aucs = {name: {m: [0.5, 0.7, 0.9] for m in methods} for name, _, _ in generalisation.ROWS}
  aucs["CE only"]["lipsync"] = [0.25, 0.25, 0.25]
  target = dict(median=0.99, p10=0.9, p90=1.0)
  report = dict(split="validation", asr_frame_accuracy=0.978, vsr_frame_accuracy=0.911,
                frames=1902, divergence="symmetric_kl_mean",
                soft_target={"real": target, "lipsync": dict(median=0.28, p10=0.2, p90=0.47)})

  text = generalisation.markdown(aucs, report, config, [0, 1, 2], "python -m x", "plot.png")

  header = next(line for line in text.splitlines() if line.startswith("| Loss |"))
  assert header == ("| Loss | desync (trained) | talking_head (trained) | voice_swap (trained) "
                    "| lipsync (held out) | all |")
  rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
          if line.startswith("| CE")}
  assert list(rows) == [name for name, _, _ in generalisation.ROWS]
  assert rows["CE only"].endswith("| 70.0 ± 16.3 | 70.0 ± 16.3 | 70.0 ± 16.3 | 25.0 ± 0.0 "
                                  "| 70.0 ± 16.3 |")
  assert "ASR 97.8%, VSR 91.1%" in text
  assert "| lipsync | 0.280 | 0.200 | 0.470 |" in text and "](plot.png)" in text
