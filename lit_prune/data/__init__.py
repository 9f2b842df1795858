"""Data modules: GLUE, SQuAD and unlabeled sentences (sentence embeddings), tokenised, with calibration samples for
retraining-free pruning."""

from lit_prune.data.base import CalibrationSample, TaskDataModule
from lit_prune.data.glue import GLUE_TASKS, GlueDataModule
from lit_prune.data.sentences import SentenceDataModule
from lit_prune.data.squad import SQUAD_TASKS, SquadDataModule

__all__ = ["CalibrationSample", "TaskDataModule", "GlueDataModule", "GLUE_TASKS", "SentenceDataModule", "SquadDataModule",
           "SQUAD_TASKS"]
