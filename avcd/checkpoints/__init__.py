"""Orbax checkpoints: training runs, and model checkpoints (teachers, converted weights).

  integrity     checksums written into every step in its atomic rename, verified before a read
  layout        whether a checkpoint's arrays fit the networks a config builds; restore targets
  checkpointer  the training checkpointer (latest and best steps, resume, config changes)
  model         model checkpoints, and loading a model for inference: locate, select_step,
                read_config, restore_student

The names below are the package's interface: `from avcd import checkpoints`, then
`checkpoints.restore_student(...)`. See docs/checkpoints.md.
"""

from avcd.checkpoints.checkpointer import (
  CONFIG_HISTORY,
  RESUMABLE_CHANGES,
  CheckpointSaveError,
  ResumeRefusedError,
  TrainCheckpointer,
  record_config_changes,
  resume_config_changes,
)
from avcd.checkpoints.integrity import (
  CHECKSUMS,
  CONFIG,
  DATA,
  META,
  STATE,
  STUDENT,
  TEACHERS,
  CorruptCheckpointError,
  step_identity,
  step_retired,
  verify_checksums,
  write_checksums,
)
from avcd.checkpoints.layout import CheckpointMismatchError, abstract_like
from avcd.checkpoints.model import (
  RestoredStudent,
  StepRetiredError,
  config_from_json,
  locate,
  locate_root,
  model_items,
  read_config,
  restore_item,
  restore_student,
  save_model,
  select_step,
)

__all__ = [
  "abstract_like",
  "CheckpointMismatchError",
  "CheckpointSaveError",
  "CHECKSUMS",
  "CONFIG",
  "config_from_json",
  "CONFIG_HISTORY",
  "CorruptCheckpointError",
  "DATA",
  "locate",
  "locate_root",
  "META",
  "model_items",
  "read_config",
  "record_config_changes",
  "restore_item",
  "restore_student",
  "RestoredStudent",
  "RESUMABLE_CHANGES",
  "resume_config_changes",
  "ResumeRefusedError",
  "save_model",
  "select_step",
  "STATE",
  "step_identity",
  "step_retired",
  "StepRetiredError",
  "STUDENT",
  "TEACHERS",
  "TrainCheckpointer",
  "verify_checksums",
  "write_checksums",
]
