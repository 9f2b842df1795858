"""Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022).

Reference code: WoosukKwon/retraining-free-pruning (``prune/fisher.py``, ``prune/search.py``,
``prune/rearrange.py``, ``prune/rescale.py``, ``utils/linalg.py``). Retraining-free: weights frozen, model in eval
mode, a labelled calibration sample; every stage reads or writes :class:`~lit_prune.core.masks.PruningMasks`, and the
model's weights are never changed.

The stages are plain PyTorch in the shared layer :mod:`lit_prune.prune`, since G-Pruner
(:mod:`lit_prune.methods.gpruner`) runs the same pipeline with two of them swapped; each stage module opens with its
part of the paper and the places where we depart from the paper or its code:

1. **Fisher statistics** (:mod:`lit_prune.prune.fisher`): per calibration batch, the gradient of the task loss
   w.r.t. the (L, H) head mask and the (L, F) FFN-neuron mask, at the all-ones mask. A unit's importance is the
   diagonal of the empirical Fisher: the sum over batches of its squared mask gradient.
2. **Budgeted mask search** (:mod:`lit_prune.prune.search`): heads and neurons ranked globally; for every number k
   of kept heads, the top-k heads plus as many of the best neurons as the FLOPs budget leaves room for; the k with
   the largest total importance wins.
3. **Mask rearrangement** (:mod:`lit_prune.prune.rearrange`): per layer, with the number of kept units fixed, a
   greedy swap that minimises ``||Σ_{u pruned} g_u||²`` where ``g_u`` is unit u's vector of per-batch gradients (the
   loss increase under a block-diagonal, per-layer Fisher approximation: the pruned units' gradients may cancel).
4. **Mask tuning** (:mod:`lit_prune.prune.mask_tuning`): sublayer by sublayer, in order (MHA₀, FFN₀, MHA₁, ...),
   real-valued scales for the kept units so that the sublayer's pre-LayerNorm output matches a reference model's,
   by damped linear least squares. The scales multiply the head / neuron masks (compaction later folds them into
   W_O's and W_down's columns).

:func:`~lit_prune.prune.post_training.kwon_prune` runs the four in order, usable from any loop;
:class:`~lit_prune.methods.kwon.callback.KwonCallback` drives it from a Lightning ``fit`` (its statistics and
least-squares systems summed across ranks). The stages' public names are re-exported here.
"""

from lit_prune.methods.kwon.callback import KwonCallback
from lit_prune.prune.fisher import FisherStatistics
from lit_prune.prune.mask_tuning import SublayerBatch, TuningStep, apply_scales, collect_sublayer, tune_masks
from lit_prune.prune.post_training import KwonResult, kwon_prune
from lit_prune.prune.rearrange import rearrange_layer, rearrange_masks, rearrangement_objective
from lit_prune.prune.search import search_masks, teacher_budget

__all__ = ["FisherStatistics", "KwonCallback", "KwonResult", "SublayerBatch", "TuningStep", "apply_scales",
           "collect_sublayer", "kwon_prune", "rearrange_layer", "rearrange_masks", "rearrangement_objective",
           "search_masks", "teacher_budget", "tune_masks"]
