r"""AV-Deepfake1M's official protocol: train on its train set, report on its validation set (the
test set's labels are withheld), as a temporal localisation task and as video-level detection.

  avcd prepare --corpus=avdeepfake1m --data_root=AVDF1M_DIR --output=DATA_DIR
  avcd train --config=configs/avdeepfake1m.py --workdir=runs/avdeepfake1m \
      --config.data.data_dir=DATA_DIR --config.teachers.checkpoint=TEACHERS_CKPT \
      --config.train.init_from=TALKNET_CKPT

Variant `lavdf` (`--config=configs/avdeepfake1m.py:lavdf`, after `avcd prepare --corpus=lavdf`):
LAV-DF's protocol, train on train, report on test.

The paper's setup (configs/default.py) plus frame labels: every fake is a real video with one or
more re-synthesised words, so the student learns each frame's own label (`train.labels='frame'`,
avcd/training/losses.py); the clip-label training of the reference is `--config.train.labels=clip`.
WORKDIR/eval/validation then holds the clip-level reports and localisation.md (AP@0.5, 0.75,
0.9, 0.95 and AR@50, 30, 20, 10, 5, as the benchmark defines them), per modify type
(visual_modified, audio_modified, both_modified).

Hardware: GPU/TPU hosts (launch/); the corpus is about a million clips of ~9 s. Expected result:
not measured yet (no copy of the corpus on this project's machines); docs/localisation.md has the
synthetic counterpart's numbers, and AV-Deepfake1M's paper those of published localisers.
"""

from avcd import config_lib

VARIANTS = ("avdeepfake1m", "lavdf")


def get_config(variant: str = "avdeepfake1m"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
  config = config_lib.sibling(__file__, "default.py")  # the paper's setup, plus:
  config.data.builder = variant
  config.train.labels = "frame"
  config.eval.update(splits=("validation",) if variant == "avdeepfake1m" else ("test",))
  config.eval.update(every_steps=5000, calibration_split="validation" if variant == "lavdf" else "")
  config.train.checkpoint_every_steps = 5000
  return config
