"""Data modules: GLUE, SQuAD, CoNLL-2003 and unlabeled sentences (sentence embeddings), tokenised, with calibration
samples for retraining-free pruning."""

from lit_prune.data.base import CalibrationSample, TaskDataModule
from lit_prune.data.conll import CONLL_TASKS, TokenClassificationDataModule
from lit_prune.data.glue import GLUE_TASKS, GlueDataModule
from lit_prune.data.sentences import SentenceDataModule
from lit_prune.data.squad import SQUAD_TASKS, SquadDataModule

__all__ = ["CONLL_TASKS", "CalibrationSample", "GLUE_TASKS", "GlueDataModule", "SQUAD_TASKS", "SentenceDataModule",
           "SquadDataModule", "TaskDataModule", "TokenClassificationDataModule"]
