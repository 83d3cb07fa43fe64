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
import ml_collections

CMDFD_SPLITS = ("wav2lip", "makeittalk", "audio2head", "videoretalk", "wav2lip_self",
                "makeittalk_self", "audio2head_self", "videoretalk_self")


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 898
  config.model = config_lib.student()
  config.teachers = config_lib.teachers()
  config.teachers.vsr.use_frontend = False  # the authors' lip features are stored in the shards
  config.loss = config_lib.losses()
  config.data = config_lib.data(builder="fakeavceleb", train_split="train")
  config.eval = config_lib.evaluation(
      splits=("test", *(f"cmdfd:{split}" for split in CMDFD_SPLITS)),
      threshold_split="test", every_steps=5000)
  config.optim = config_lib.optimizer()
  config.train = config_lib.training(num_epochs=100, checkpoint_every_steps=5000)
  config.mesh = config_lib.mesh()
  return config
