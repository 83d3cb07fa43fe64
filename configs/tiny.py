r"""A few-second config for tests of the training machinery (not a useful detector).

  avcd train --config=configs/tiny.py --workdir=/tmp/avcd_tiny

Hardware: any CPU. Expected: finishes in well under a minute; metrics are noise (the teachers are
random and the networks a few thousand parameters wide).
"""

import ml_collections

from avcd import config_lib


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = config_lib.student(
    embed_dim=16,
    num_heads=2,
    audio=dict(
      stem_channels=4,
      stage_blocks=(1, 1, 1, 1),
      stage_channels=(4, 8, 8, 16),
      stage_strides=(1, 2, 2, 1),
      se_reduction=2,
    ),
    visual=dict(
      frontend=config_lib.visual_frontend(4, (4, 8, 8, 16)),
      tcn_blocks=1,
      tcn_kernel=3,
      proj_channels=16,
      proj_kernel=5,
      embed_dim=16,
    ),
  )
  config.teachers = config_lib.teachers()
  config.teachers.source = "random"
  for teacher in (config.teachers.asr, config.teachers.vsr):
    teacher.update(
      width=16,
      num_heads=2,
      ffn_dim=32,
      encoder_layers=1,
      decoder_layers=1,
      num_classes=8,
      max_len=256,
    )
  config.teachers.vsr.frontend = config_lib.visual_frontend(4, (4, 8, 8, 16))
  config.teachers.vsr.mouth_size = 16
  config.loss = config_lib.losses()

  config.data = config_lib.data(
    builder="synthetic_av",
    train_split="train",
    max_frames=40,
    train_window=32,
    frame_budget=64,
    bucket_lengths=(16, 32, 40),
    synthetic=dict(
      seed=0,
      train_clips=8,
      validation_clips=0,
      test_clips=6,
      min_frames=12,
      max_frames=40,
      num_speakers=10,
    ),
  )
  config.eval = config_lib.evaluation(splits=("test",), frame_budget=120)

  config.optim = config_lib.optimizer(learning_rate=1e-3)
  config.train = config_lib.training(num_epochs=2, log_every_steps=1, checkpoint_every_steps=2)
  config.mesh = config_lib.mesh()
  return config
