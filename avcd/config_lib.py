"""Building blocks for the `configs/*.py` files: each returns a ConfigDict with the paper's values.

Config files compose these and override what differs (narrow widths for tests and the CPU demo,
other corpora); every width, depth, kernel and head count a network uses comes from here.
"""

import difflib
import importlib.util
import pathlib

import ml_collections

ConfigDict = ml_collections.ConfigDict


def visual_frontend(
  stem_channels=64, stage_channels=(64, 128, 256, 512), input_size=0
) -> ConfigDict:
  """3D conv (5x7x7) + 4-stage ResNet18 of the reference (shared by student and VSR teacher).

  input_size: resize frames to this many pixels square first (0: use them as they come, the
  reference's 112 px faces); lets narrow CPU variants trade resolution for speed.
  """
  return ConfigDict(
    dict(stem_channels=stem_channels, stage_channels=stage_channels, input_size=input_size)
  )


def student(**overrides) -> ConfigDict:
  """TalkNet-style student with the paper's sizes."""
  cfg = ConfigDict(
    dict(
      compute_dtype="float32",  # 'bfloat16' runs convs and matmuls in bf16, params stay f32.
      embed_dim=128,
      num_heads=8,
      ffn_multiplier=4,
      dropout=0.1,
      audio_frames_per_frame=4,
      # (ASR classes, VSR classes) of per-frame phoneme heads on the audio and visual encoders,
      # trained towards the teachers' posteriors with loss.phoneme_weight; (0, 0): none, as the
      # paper. An addition to the paper (README, "Faithfulness").
      phoneme_classes=(0, 0),
      audio=dict(
        stem_channels=16,
        stage_blocks=(3, 4, 6, 3),
        stage_channels=(16, 32, 64, 128),
        stage_strides=(1, 2, 2, 1),
        se_reduction=8,
      ),
      visual=dict(
        frontend=visual_frontend(),
        tcn_blocks=5,
        tcn_kernel=3,
        proj_channels=256,
        proj_kernel=5,
        embed_dim=128,
      ),
    )
  )
  cfg.update(overrides)
  return cfg


def teacher(**overrides) -> ConfigDict:
  """deep_avsr transformer teacher: 6 + 6 post-norm layers, width 512, 8 heads, 40 characters."""
  cfg = ConfigDict(
    dict(
      compute_dtype="float32",
      width=512,
      num_heads=8,
      ffn_dim=2048,
      encoder_layers=6,
      decoder_layers=6,
      dropout=0.1,
      num_classes=40,
      max_len=2500,
    )
  )
  cfg.update(overrides)
  return cfg


def teachers() -> ConfigDict:
  """Both teachers, where their weights come from and how they run during student training."""
  asr = teacher(input_bins=321, audio_frames_per_frame=4)
  vsr = teacher(
    use_frontend=True,  # compute lip features from mouth crops when none are stored
    frontend=visual_frontend(),
    mouth_box=(0.5, 1.0, 0.2, 0.8),  # top, bottom, left, right of the 112x112 face frame
    mouth_size=112,
  )
  return ConfigDict(
    dict(
      asr=asr,
      vsr=vsr,
      # `avcd train-teacher` (and teachers.source='train'): per-frame phoneme cross-entropy on
      # the real clips of data.train_split, both teachers at once.
      training=dict(
        num_epochs=20,
        learning_rate=1e-3,
        warmup_steps=100,
        weight_decay=1e-4,
        eval_split="validation",
      ),
      # 'checkpoint': load `checkpoint`; 'train': train them into `checkpoint` (default
      # WORKDIR/teachers) first if it holds none; 'random': untrained (tests only).
      source="checkpoint",
      # An avcd model checkpoint with a `teachers` item (`avcd train-teacher`, `avcd convert`).
      checkpoint="",
      # The reference leaves the frozen teachers in train mode (dropout on, stochastic targets).
      dropout_in_train=False,
      # Run the teachers once over data.train_split before training and store their posteriors
      # (data_pipelines/reading/posterior_store.py) instead of running them in every step; the
      # losses are the same. Needs dropout_in_train=False (deterministic targets) and whole-clip
      # windows (data.train_window >= data.max_frames): the teachers attend over their whole input.
      cache=False,
      # Where caches go ('' = teacher_cache/ next to the split's shards); every process must see
      # it. A cache is reused while the teachers, their config and the split stay the same.
      cache_dir="",
    )
  )


def losses() -> ConfigDict:
  return ConfigDict(
    dict(
      ce_weight=1.0,
      distill_weight=1.0,
      metric_weight=1.0,
      # 'symmetric_kl_mean': the reference's "JS" (symmetric KL averaged over classes);
      # 'jensen_shannon': true Jensen-Shannon divergence in bits, in [0, 1].
      divergence="symmetric_kl_mean",
      metric_margin=1.0,
      # 'reference': sigmoid of the clip distance, as the authors (never satisfied, see
      # losses.metric_loss); 'centred': 2 sigmoid - 1, satisfiable with metric_margin < 1.
      metric_form="reference",
      # The sync-only control (docs/generalisation.md): cosine BCE against 1 on real clips and 0
      # on real clips whose audio is rolled by sync_roll_frames (either direction); no teachers.
      sync_weight=0.0,
      sync_roll_frames=(3, 10),
      # Soft cross-entropy of the student's phoneme heads (model.phoneme_classes) to the ASR and
      # VSR teachers' posteriors, audio head + visual head; 0 without heads.
      phoneme_weight=0.0,
    )
  )


def data(*, builder: str, train_split: str, **overrides) -> ConfigDict:
  """Where clips come from and how they are batched."""
  cfg = ConfigDict(
    dict(
      builder=builder,  # a TFDS builder registered by data_pipelines
      data_dir="",  # TFDS data_dir holding the prepared ArrayRecord shards
      train_split=train_split,
      train_methods=(),  # restrict training fakes to these methods; () = all
      train_real_only=False,  # real clips only (teacher training: only there does the mouth
      # say what the audio says)
      max_frames=1000,  # clips are capped at this many frames (the reference's cap)
      train_window=1000,  # training reads a random window of at most this many frames
      frame_budget=2000,  # frames per batch: B = frame_budget // bucket length
      bucket_lengths=(50, 100, 200, 400, 1000),  # static clip lengths XLA compiles for
      augment=True,  # one of original / flip / crop / rotation per clip
      trim_leading_silence=False,  # drop the silent lead-in that gives FakeAVCeleb fakes away
      num_workers=0,  # Grain worker processes (0: threads in this process)
      prefetch=4,
      synthetic=None,  # SyntheticSpec fields when builder is 'synthetic_av'
    )
  )
  cfg.update(overrides)
  return cfg


def evaluation(*, splits: tuple[str, ...], **overrides) -> ConfigDict:
  cfg = ConfigDict(
    dict(
      splits=splits,  # evaluated at the end of training and every `every_steps`
      every_steps=0,  # 0: only at the end
      frame_budget=4000,
      threshold_split="",  # choose the decision threshold on this split ('' = 0.5 only)
      # Fit a calibration map of P(fake) on this split ('' = none; a map saved earlier for the
      # checkpoint is applied) by this method: 'temperature' or 'platt'
      # (avcd/evaluation/calibration.py).
      calibration_split="",
      calibration_method="temperature",
      # The leading-silence shortcut (FakeAVCeleb fakes open with a silence that alone gives them
      # away): 'keep' scores whole clips, 'trim' from the first non-silent frame; list both to
      # report results with and without it.
      leading_silence=("keep",),
      # Forged segments from per-frame scores (avcd/evaluation/localisation.py), reported for
      # splits that hold partially forged clips.
      localisation=dict(
        smoothing="median",  # or 'mean': a centred moving window over the frame scores
        smoothing_frames=5,  # odd; 1 = none
        thresholds=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),  # on P(fake) of a frame
        min_frames=2,  # shorter runs are dropped
        nms_iou=0.7,
        max_proposals=100,  # per clip
        plot_clips=4,  # fake clips drawn in frame_scores.png
      ),
    )
  )
  cfg.update(overrides)
  return cfg


def training(*, num_epochs: int, **overrides) -> ConfigDict:
  cfg = ConfigDict(
    dict(
      num_epochs=num_epochs,
      log_every_steps=50,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,  # latest K
      keep_best=2,  # plus the best M by `best_metric` on the first evaluation
      best_metric="auc",
      init_from="",  # avcd checkpoint or converted PyTorch weights (see README)
      on_nonfinite="raise",  # 'raise' stops with the step and clip ids; 'skip' skips the update
      # What the frame classifier learns on each frame: 'clip', the clip's label (the reference),
      # or 'frame', the frame's own label (partially forged clips; avcd/training/losses.py).
      labels="clip",
      # Write a jax.profiler trace of this many steps (after PROFILE_AFTER_STEPS warm-up steps) to
      # WORKDIR/profile, for TensorBoard's profile plugin or Perfetto (docs/scaling.md).
      profile_steps=0,
      # A target-quality stop: training ends at the first evaluation (eval.every_steps) at which
      # every one of these evaluation scalars, named as in metrics.jsonl (e.g.
      # 'validation/auc/ls_a'), is at least `stop_at_least`. Empty: every epoch is trained.
      stop_metrics=(),
      stop_at_least=1.0,
    )
  )
  cfg.update(overrides)
  return cfg


def mesh() -> ConfigDict:
  """Device mesh: `data` x `fsdp` (-1 = all remaining devices)."""
  return ConfigDict(dict(data=-1, fsdp=1))


def optimizer(**overrides) -> ConfigDict:
  """The reference's train.py: Adam 1e-5, StepLR x0.95 after every epoch, no clipping."""
  cfg = ConfigDict(
    dict(
      learning_rate=1e-5,
      warmup_steps=0,  # linear warmup from 0 (the reference has none)
      decay_per_epoch=0.95,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_grad_norm=0.0,  # 0 disables clipping
      grad_accum_steps=1,  # micro-batches per optimizer step (their gradients are averaged)
    )
  )
  cfg.update(overrides)
  return cfg


def defaults() -> ConfigDict:
  """Every section at its defaults, with empty corpus names: the reference a config is checked
  against (a field keeps the kind of value its default has) and against which a field absent
  from an older checkpoint's config counts as unchanged."""
  return ConfigDict(
    dict(
      model=student(),
      teachers=teachers(),
      loss=losses(),
      data=data(builder="", train_split=""),
      eval=evaluation(splits=()),
      optim=optimizer(),
      train=training(num_epochs=0),
      mesh=mesh(),
    )
  )


def sibling(config_file: str, name: str, argument: str | None = None) -> ConfigDict:
  """`get_config(argument)` of the config file `name` beside `config_file`, unlocked: a derived
  config is that config plus what differs (e.g. configs/cross_dataset.py from default.py)."""
  path = pathlib.Path(config_file).with_name(name)
  spec = importlib.util.spec_from_file_location(f"avcd_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument is not None else module.get_config()


# ---- Loading config files outside the command line (tests, tools) ----------------------------
# The command line uses ml_collections' DEFINE_config_file (lock_config=True); load_config does
# the same for code: import the file, call get_config(arg), lock it, apply dotted overrides. A
# misspelled override raises an error naming the field.


def load_config(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """`path` may carry an argument for get_config after a colon, as on the command line."""
  path, _, argument = str(path).partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file {file} does not exist")
  spec = importlib.util.spec_from_file_location(f"avcd_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument) if argument else module.get_config()
  config.lock()
  for name, value in (overrides or {}).items():
    set_field(config, name, value)
  return config


def set_field(config: ml_collections.ConfigDict, dotted_name: str, value) -> None:
  """Sets config.a.b.c = value; an unknown field raises AttributeError naming it."""
  *parents, leaf = dotted_name.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node:
      raise AttributeError(f"config has no field {'.'.join(parents[: i + 1])!r}")
    node = node[part]
  if leaf not in node:
    raise AttributeError(f"config has no field {dotted_name!r}")
  setattr(node, leaf, value)


def field_problem(config: ml_collections.ConfigDict, dotted_name: str) -> str | None:
  """Why `dotted_name` is not a field of `config` (with the nearest names), or None if it is."""
  node, walked = config, []
  for part in dotted_name.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, known, n=1)
      where = ".".join(walked) or "the config"
      hint = f" (did you mean {'.'.join([*walked, close[0]])!r}?)" if close else ""
      return f"{where} has no field {part!r}{hint}"
    node = node[part]
    walked.append(part)
  return None
