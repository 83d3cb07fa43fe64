r"""The paper's cross-dataset protocol: train on FakeAVCeleb, test on every CMDFD generator.

Prepare both corpora into one TFDS data_dir first (docs/data.md), convert the authors' teachers
and TalkNet's weights (docs/checkpoints.md), then:

  avcd train --config=configs/cross_dataset.py --workdir=runs/cross_dataset \
      --config.data.data_dir=DATA_DIR --config.teachers.checkpoint=TEACHERS \
      --config.train.init_from=TALKNET

Hardware: one or more GPU/TPU hosts. Expected result: per-method test ROC-AUC in
WORKDIR/eval/cmdfd.METHOD/metrics.json (and one Markdown table per split, methods as columns);
the paper reports these for Wav2Lip, MakeItTalk, Audio2Head and VideoReTalk, with and without
`_Self` (fakes driven by the speaker's own audio).
"""

from avcd import config_lib

CMDFD_SPLITS = (
  "wav2lip",
  "makeittalk",
  "audio2head",
  "videoretalk",
  "wav2lip_self",
  "makeittalk_self",
  "audio2head_self",
  "videoretalk_self",
)


def get_config():
  config = config_lib.sibling(__file__, "default.py")  # the paper's setup, plus:
  config.teachers.vsr.use_frontend = False  # the authors' lip features are stored in the shards
  config.eval.update(
    splits=("test", *(f"cmdfd:{split}" for split in CMDFD_SPLITS)),
    threshold_split="test",
    every_steps=5000,
  )
  config.train.checkpoint_every_steps = 5000
  return config
