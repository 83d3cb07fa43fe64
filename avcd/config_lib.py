"""Building blocks for the `configs/*.py` files: each returns a ConfigDict with the paper's values.

Config files compose these and override what differs (narrow widths for tests and the CPU demo,
other corpora); every width, depth, kernel and head count a network uses comes from here.
"""

import ml_collections

ConfigDict = ml_collections.ConfigDict


def visual_frontend(stem_channels=64, stage_channels=(64, 128, 256, 512)) -> ConfigDict:
  """3D conv (5x7x7) + 4-stage ResNet18 of the reference (shared by student and VSR teacher)."""
  return ConfigDict(dict(stem_channels=stem_channels, stage_channels=stage_channels))


def student(**overrides) -> ConfigDict:
  """TalkNet-style student with the paper's sizes."""
  cfg = ConfigDict(dict(
      compute_dtype="float32",        # 'bfloat16' runs convs and matmuls in bf16, params stay f32.
      embed_dim=128,
      num_heads=8,
      ffn_multiplier=4,
      dropout=0.1,
      audio_frames_per_frame=4,
      audio=dict(stem_channels=16, stage_blocks=(3, 4, 6, 3), stage_channels=(16, 32, 64, 128),
                 stage_strides=(1, 2, 2, 1), se_reduction=8),
      visual=dict(frontend=visual_frontend(), tcn_blocks=5, tcn_kernel=3, proj_channels=256,
                  proj_kernel=5, embed_dim=128),
  ))
  cfg.update(overrides)
  return cfg


def teacher(**overrides) -> ConfigDict:
  """deep_avsr transformer teacher: 6 + 6 post-norm layers, width 512, 8 heads, 40 characters."""
  cfg = ConfigDict(dict(
      compute_dtype="float32",
      width=512,
      num_heads=8,
      ffn_dim=2048,
      encoder_layers=6,
      decoder_layers=6,
      dropout=0.1,
      num_classes=40,
      max_len=2500,
  ))
  cfg.update(overrides)
  return cfg


def teachers() -> ConfigDict:
  """Both teachers, where their weights come from and how they run during student training."""
  asr = teacher(input_bins=321, audio_frames_per_frame=4)
  vsr = teacher(
      use_frontend=True,              # compute lip features from mouth crops when none are stored
      frontend=visual_frontend(),
      mouth_box=(0.5, 1.0, 0.2, 0.8),  # top, bottom, left, right of the 112x112 face frame
      mouth_size=112,
  )
  return ConfigDict(dict(
      asr=asr,
      vsr=vsr,
      # An avcd teacher checkpoint (from `avcd train-teacher` or `avcd convert`); '' = none.
      checkpoint="",
      # The reference leaves the frozen teachers in train mode (dropout on, stochastic targets).
      dropout_in_train=False,
  ))


def losses() -> ConfigDict:
  return ConfigDict(dict(
      ce_weight=1.0,
      distill_weight=1.0,
      metric_weight=1.0,
      # 'symmetric_kl_mean': the reference's "JS" (symmetric KL averaged over classes);
      # 'jensen_shannon': true Jensen-Shannon divergence in bits, in [0, 1].
      divergence="symmetric_kl_mean",
      metric_margin=1.0,
  ))
