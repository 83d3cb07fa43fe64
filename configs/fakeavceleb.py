r"""FakeAVCeleb intra-dataset, per category, with and without the leading-silence shortcut.

FakeAVCeleb's fakes open with a short silence that alone separates them from real clips. This
config reports every test result twice: whole clips (WORKDIR/eval/test) and clips scored from
their first non-silent frame (WORKDIR/eval/test-silence_trimmed). Train without the shortcut with
--config.data.trim_leading_silence=True (or short random windows, --config.data.train_window=50).

  avcd train --config=configs/fakeavceleb.py --workdir=runs/fakeavceleb \
      --config.data.data_dir=DATA_DIR --config.teachers.checkpoint=TEACHERS \
      --config.train.init_from=TALKNET

Hardware: one or more GPU/TPU hosts. Expected result: metrics.json per variant with
`per_category` (RealVideo-FakeAudio, FakeVideo-RealAudio, FakeVideo-FakeAudio against the real
clips) and `per_method` (faceswap, fsgan, wav2lip, rtvc, ...); the gap between the two variants
measures how much a detector leans on the silence.
"""

from avcd import config_lib


def get_config():
  config = config_lib.sibling(__file__, "default.py")  # the paper's setup, plus:
  config.teachers.vsr.use_frontend = False  # the authors' lip features are stored in the shards
  config.eval.update(leading_silence=("keep", "trim"), every_steps=5000)
  config.train.checkpoint_every_steps = 5000
  return config
