r"""The paper's setup: train on FakeAVCeleb with ASR/VSR correlation distillation.

Run (one host, all its devices), after `avcd prepare` has built the corpus into DATA_DIR:

  avcd train --config=configs/default.py --workdir=runs/fakeavceleb \
      --config.data.data_dir=DATA_DIR --config.teachers.checkpoint=TEACHERS_CKPT \
      --config.train.init_from=TALKNET_CKPT

Hardware: one GPU/TPU host or more (see launch/). Expected: the paper reports frame-budget batches
of ~2000 frames, Adam 1e-5 decayed x0.95 per epoch, 100 epochs.
"""

from avcd import config_lib
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 898

  config.model = config_lib.student()
  config.teachers = config_lib.teachers()
  config.loss = config_lib.losses()

  config.data = config_lib.data(builder="fakeavceleb", train_split="train")
  config.eval = config_lib.evaluation(splits=("test",))

  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-5,
      decay_per_epoch=0.95,   # StepLR(step_size=1 epoch, gamma=0.95) as the reference's train.py
      b1=0.9, b2=0.999, eps=1e-8,
      clip_grad_norm=0.0,     # 0 disables clipping (the reference does not clip)
      grad_accum_steps=1,
  ))
  config.train = config_lib.training(num_epochs=100)
  config.mesh = config_lib.mesh()
  return config
