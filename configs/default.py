r"""The paper's setup: train on FakeAVCeleb with ASR/VSR correlation distillation.

Run (one host, all its devices), after `avcd prepare` has built the corpus into DATA_DIR:

  avcd train --config=configs/default.py --workdir=runs/fakeavceleb \
      --config.data.data_dir=DATA_DIR --config.teachers.checkpoint=TEACHERS_CKPT \
      --config.train.init_from=TALKNET_CKPT

Hardware: one GPU/TPU host or more (see launch/). Expected: the paper reports frame-budget batches
of ~2000 frames, Adam 1e-5 decayed x0.95 per epoch, 100 epochs.
"""

import ml_collections

from avcd import config_lib


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 898

  config.model = config_lib.student()
  config.teachers = config_lib.teachers()
  config.loss = config_lib.losses()

  config.data = config_lib.data(builder="fakeavceleb", train_split="train")
  config.eval = config_lib.evaluation(splits=("test",))

  config.optim = config_lib.optimizer()
  config.train = config_lib.training(num_epochs=100)
  config.mesh = config_lib.mesh()
  return config
