"""SMP: static model pruning. Mask scores are trained, the pretrained weights stay frozen.

Paper: Li, Luo, Jiang, Huang, Zhang, Zhou, Xie, Liu, "Pruning Pre-trained Language Models Without Fine-Tuning",
ACL 2023. Reference code: kongds/SMP (movement-pruning lineage: ``emmental/modules/masked_nn.py``,
``binarizer.py``, ``smp_trainer.py``).

SMP prunes single weights of a pretrained (not fine-tuned) encoder: one score per weight of every encoder Linear
trains through a straight-through top-k mask while every weight stays frozen, under a cubic schedule from all
weights kept to the final ratio and a regulariser on the scores' sigmoids. One module per concern, each opening
with its part of the paper and where lit_prune departs from it:

* :mod:`.scores`: the scores, SMP-L / SMP-S counts, the top-k mask and its straight-through gradient, the schedule
  and the regulariser (plain PyTorch);
* :mod:`.export`: the masks fixed into the weights, emptied rows and columns removed with exact bias folds, CSR
  timing, and the run ending every lit_prune method shares;
* :mod:`.label_words`: the paper's classifier, the frozen MLM head through one label word per class;
* :mod:`.module`: the ready-made GLUE and SQuAD task modules of the recipes (``configs/smp/``), with the choice of
  classifier and optional distillation;
* :mod:`.callback`: :class:`SMPCallback`, SMP on a user's own LightningModule with only its budget set.
"""

from lit_prune.methods.smp.callback import SMPCallback
from lit_prune.methods.smp.export import WEIGHT_MASKS_FILE, CSRLinear, sparse_copy, structure_from_zeros
from lit_prune.methods.smp.label_words import LABEL_WORDS, label_word_classifier, label_word_ids
from lit_prune.methods.smp.module import SMPQuestionAnsweringModule, SMPSequenceClassificationModule
from lit_prune.methods.smp.scores import (MATRIX_TYPES, ScoreMask, encoder_linears, global_counts, install_scores,
                                          local_count, regularization_weight, score_regularizer, set_counts,
                                          straight_through_mask, topk_mask)

__all__ = ["LABEL_WORDS", "MATRIX_TYPES", "WEIGHT_MASKS_FILE", "CSRLinear", "SMPCallback",
           "SMPQuestionAnsweringModule", "SMPSequenceClassificationModule", "ScoreMask", "encoder_linears",
           "global_counts", "install_scores", "label_word_classifier", "label_word_ids", "local_count",
           "regularization_weight", "score_regularizer", "set_counts", "sparse_copy", "straight_through_mask",
           "structure_from_zeros", "topk_mask"]
