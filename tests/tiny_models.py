"""Narrow variants of the networks for fast tests (same code as the paper's sizes)."""

from avcd import config_lib

FACE = 32  # the models take any face size; 32 px keeps the 3D conv cheap on CPU


def student_config(**overrides):
  cfg = config_lib.student(
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
      frontend=config_lib.visual_frontend(8, (8, 8, 16, 16)),
      tcn_blocks=2,
      tcn_kernel=3,
      proj_channels=16,
      proj_kernel=5,
      embed_dim=16,
    ),
  )
  cfg.update(overrides)
  return cfg


def teachers_config():
  cfg = config_lib.teachers()
  small = dict(
    width=16, num_heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1, num_classes=6, max_len=64
  )
  cfg.asr.update(small)
  cfg.vsr.update(small)
  cfg.vsr.frontend = config_lib.visual_frontend(8, (8, 8, 16, 16))
  cfg.vsr.mouth_size = 16
  return cfg
