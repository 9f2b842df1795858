"""Task modules: a Hugging Face model with its loss, metrics and optimiser."""

from lit_prune.tasks.base import TaskModule
from lit_prune.tasks.classification import SequenceClassificationModule
from lit_prune.tasks.distilled import DistilledQuestionAnsweringModule, DistilledSequenceClassificationModule
from lit_prune.tasks.embedding import SentenceEmbeddingModule
from lit_prune.tasks.qa import QuestionAnsweringModule

__all__ = ["DistilledQuestionAnsweringModule", "DistilledSequenceClassificationModule", "QuestionAnsweringModule",
           "SentenceEmbeddingModule", "SequenceClassificationModule", "TaskModule"]
