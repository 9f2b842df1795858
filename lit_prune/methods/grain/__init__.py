"""GRAIN: gradient-based intra-attention pruning during distillation.

Paper: Yang, Cui, Wang, "Gradient-based Intra-attention Pruning on Pre-trained Language Models", ACL 2023.
Reference code: airaria/GRAIN (``pruners_and_distiller/pruners.py``: ``FineISPruner``; ``utils.py``:
``schedule_threshold``; ``distiller.py``).

GRAIN prunes while the model learns from its fine-tuned teacher. Every training step, the gradient of the
prediction (distillation) loss with respect to each unit's mask gives the unit's importance; an EMA smooths it and
a regulariser pushes thinning heads to empty; one global ranking of every unit removes the least important down to
a cubic schedule's density; at the end the model is compacted, heads of different sizes and all. One module per
stage, each opening with its part of the paper and where it departs from it:

* :mod:`~lit_prune.methods.grain.layout`: the units (query units, value units, FFN neurons; whole heads in the
  ablation) and the budget, counted in encoder Linear *weights* (``params_kept``, biases excluded, as every method).
* :mod:`~lit_prune.methods.grain.importance`: Taylor importance as mask gradients, the EMA, the structure
  regulariser.
* :mod:`~lit_prune.methods.grain.distillation`: the prediction loss of a module that does not compute one itself:
  a frozen teacher on each step's inputs (departure: the weights then train on the module's own loss).
* :mod:`~lit_prune.methods.grain.selection`: the global ranking under the density, and the cascade that removes
  dead heads.
* :mod:`~lit_prune.methods.grain.settings`: the callback's settings, checked together.
* :mod:`~lit_prune.methods.grain.callback`: :class:`GrainCallback`, the schedule and the optional embedding
  factorisation, and the run's end shared with every method.

Everything but the callback is plain PyTorch (no Lightning), usable from any training loop.
"""

from lit_prune.methods.grain.callback import GrainCallback
from lit_prune.methods.grain.importance import GrainImportance
from lit_prune.methods.grain.layout import UNIT_FIELDS, UNITS, GrainLayout, Units, check_density
from lit_prune.methods.grain.selection import select_units

__all__ = ["UNITS", "UNIT_FIELDS", "GrainCallback", "GrainImportance", "GrainLayout", "Units", "check_density",
           "select_units"]
