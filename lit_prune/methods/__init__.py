"""Pruning methods: each module opens with its paper and ends with its Lightning class."""

from lit_prune.methods.base import RetrainingFreePruning
from lit_prune.methods.gpruner import GPrunerCallback
from lit_prune.methods.grain import GrainCallback
from lit_prune.methods.kprune import KPruneCallback
from lit_prune.methods.kwon import KwonCallback
from lit_prune.methods.smp import SMPCallback, SMPQuestionAnsweringModule, SMPSequenceClassificationModule

__all__ = ["GPrunerCallback", "GrainCallback", "KPruneCallback", "KwonCallback", "RetrainingFreePruning",
           "SMPCallback", "SMPQuestionAnsweringModule", "SMPSequenceClassificationModule"]
