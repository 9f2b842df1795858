"""Task modules: a Hugging Face model with its loss, metrics and optimiser."""

from lit_prune.tasks.base import TaskModule
from lit_prune.tasks.classification import SequenceClassificationModule
from lit_prune.tasks.distilled import (DistilledQuestionAnsweringModule, DistilledSentenceEmbeddingModule,
                                      DistilledSequenceClassificationModule, DistilledTokenClassificationModule)
from lit_prune.tasks.embedding import SentenceEmbeddingModule
from lit_prune.tasks.qa import QuestionAnsweringModule
from lit_prune.tasks.token_classification import TokenClassificationModule

__all__ = ["DistilledQuestionAnsweringModule", "DistilledSentenceEmbeddingModule",
           "DistilledSequenceClassificationModule", "DistilledTokenClassificationModule", "QuestionAnsweringModule",
           "SentenceEmbeddingModule", "SequenceClassificationModule", "TaskModule", "TokenClassificationModule"]
