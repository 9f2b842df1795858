"""Data modules: GLUE and SQuAD, tokenised, with calibration samples for retraining-free pruning."""

from lit_prune.data.base import TaskDataModule
from lit_prune.data.glue import GLUE_TASKS, GlueDataModule

__all__ = ["TaskDataModule", "GlueDataModule", "GLUE_TASKS"]
