"""Task modules: a Hugging Face model with its loss, metrics and optimiser."""

from lit_prune.tasks.base import TaskModule
from lit_prune.tasks.classification import SequenceClassificationModule

__all__ = ["TaskModule", "SequenceClassificationModule"]
