"""SMP: static model pruning. Mask scores are trained, the pretrained weights stay frozen.

Paper: Li, Luo, Jiang, Huang, Zhang, Zhou, Xie, Liu, "Pruning Pre-trained Language Models Without Fine-Tuning",
ACL 2023. Reference code: kongds/SMP (movement-pruning lineage: ``emmental/modules/masked_nn.py``,
``binarizer.py``, ``smp_trainer.py``). What this module implements:

* **Scores**: one per weight of every encoder Linear (Q, K, V, O, FFN up, FFN down), starting at 0; the weights
  are frozen (and so is the classifier, unless a trainable head is asked for). The forward pass uses W ⊙ M(S) with a
  binary mask M; the straight-through estimator passes ∂L/∂(W ⊙ M) ⊙ W to the scores.
* **SMP-L** (``masking="local"``): each matrix keeps its top v of scores.
* **SMP-S** (``masking="global"``): per matrix type, layer l keeps v_l = v · L · R(S_l) / Σ_l' R(S_l') with
  R(S) = Σ σ(S_ij), the matrices of one type being the same size; a ratio above 1 is capped and the excess shared
  among the others in proportion to R (so the type as a whole keeps exactly v of its weights).
* **Schedule**: cubic, v_t = v_f + (1 − v_f)(1 − t/N)³ over the N training steps, no warm-up. lit_prune's
  ``head_warmup_steps`` (0 by default, the paper's) first trains a new classifier alone for that many steps, with
  every weight kept and the scores still; the cubic schedule then runs over the steps after them.
* **Regulariser**: λ_R · (v_t / v_f) · R̄(S), with R̄ the mean over matrices of the mean σ(S) (the reference code's
  "l1" regularisation), λ_R = 400. The weight is the paper's; the reference code ramps it instead from 0 to λ_R as
  λ_R · (1 − (1 − t/N)³).
* **Classifier**: ``head="mlm"`` is the paper's, the checkpoint's frozen MLM head scoring one label word per class
  (:data:`LABEL_WORDS`, the reference code's) at the first mask token, or the first token when the input has none
  (GLUE inputs have none there); ``"trainable"`` (a new head that trains with the scores) and ``"teacher"`` (the
  fine-tuned teacher's head, frozen) serve checkpoints without an MLM head, such as the bundled ones.

The recipes (``configs/smp/``) train for 1 to 5 epochs, where the reference code trains 60 on STS-B and MRPC and
12 on SST-2, and report the model at the end of training, where the reference code keeps the best dev checkpoint
at the final ratio (README, SMP).

Pure functions first (:func:`local_counts`, :func:`global_counts`, :func:`topk_mask`,
:func:`score_regularizer`); the Lightning module and the export follow.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn.utils import parametrize

from lit_prune.assets import AssetNotFoundError, resolve_model
from lit_prune.core.arch import get_adapter
from lit_prune.core.atomic import atomic_write_bytes
from lit_prune.core.compact import compact
from lit_prune.core.masks import PruningMasks
from lit_prune.data.glue import GlueTaskName
from lit_prune.data.squad import SquadTask
from lit_prune.methods.common import (check_same_on_all_ranks, evaluate_module, latency_comparison, phase, publish,
                                      shared_report, training_summary)
from lit_prune.prune.batches import LABEL_KEYS
from lit_prune.prune.schedules import cubic_schedule
from lit_prune.tasks.classification import SequenceClassificationModule, configure_for_task
from lit_prune.tasks.qa import QuestionAnsweringModule

MATRIX_TYPES = ("query", "key", "value", "attn_out", "ffn_up", "ffn_down")
Masking = Literal["global", "local"]
Head = Literal["trainable", "teacher", "mlm"]
Ramp = Literal["rising", "falling"]
WEIGHT_MASKS_FILE = "weight_masks.safetensors"
#: ``head: mlm``'s label words by GLUE task, one per label in label order (those of SMP's code; MNLI's in the
#: order entailment, neutral, contradiction, CoLA's unacceptable, acceptable); STS-B regresses one word's score.
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "cola": ("incorrect", "correct"), "sst2": ("terrible", "great"), "mrpc": ("No", "Yes"), "stsb": ("Yes",),
    "qqp": ("No", "Yes"), "mnli": ("Yes", "Maybe", "No"), "qnli": ("Yes", "No"), "rte": ("Yes", "No"),
    "wnli": ("No", "Yes"),
}


# ------------------------------------------------------------------------------------------------ counts
def _check_keep(keep: float, setting: str = "keep") -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) or not 0 < keep <= 1:
        raise ValueError(f"{setting}={keep!r}: expected a fraction of the weights in (0, 1]")
    return float(keep)


def local_count(numel: int, keep: float) -> int:
    """Weights a matrix of ``numel`` keeps at ratio ``keep`` (SMP-L): round(keep · numel), at least 1."""
    _check_keep(keep)
    return max(1, min(numel, int(math.floor(keep * numel + 0.5))))


def global_counts(relevance: Sequence[float], numel: int, keep: float) -> list[int]:
    """Weights each of L same-sized matrices of one type keeps under SMP-S.

    Ratios v_l ∝ ``relevance[l]`` (R(S_l) = Σ σ(S)), scaled so that their mean is ``keep``; a ratio above 1 is capped
    at 1 and the rest re-shared in proportion to relevance (water filling). Counts are rounded by largest remainder,
    so they sum to exactly round(keep · L · numel).

    Raises:
        ValueError: ``keep`` outside (0, 1], or a relevance that is not positive and finite.
    """
    _check_keep(keep)
    if not relevance or any(not (math.isfinite(r) and r > 0) for r in relevance):
        raise ValueError(f"relevance={list(relevance)!r}: expected positive finite numbers, one per matrix")
    layers = len(relevance)
    total = max(1, int(math.floor(keep * layers * numel + 0.5)))
    ratios = [0.0] * layers
    free = list(range(layers))
    budget = total / numel  # in units of whole matrices
    while free:
        scale = budget / sum(relevance[i] for i in free)
        capped = [i for i in free if scale * relevance[i] >= 1.0]
        if not capped:
            for i in free:
                ratios[i] = scale * relevance[i]
            break
        for i in capped:
            ratios[i] = 1.0
            budget -= 1.0
        free = [i for i in free if i not in capped]
    exact = [ratio * numel for ratio in ratios]
    counts = [min(numel, int(math.floor(value))) for value in exact]
    order = sorted(range(layers), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def topk_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A 0/1 mask of ``scores``' shape with ones at its ``count`` largest entries (ties by position).

    It runs at every forward pass for every encoder matrix, so it avoids a sort: a partial selection (``topk`` of
    the smaller side) finds the count-th largest value t; every score above t is kept, and of the scores equal to t
    the first ones by position until ``count`` are kept. The result equals a stable descending argsort's first
    ``count`` (tested) at about a seventh of its cost on a CPU. The scores must be finite (:func:`set_counts` checks
    them before every step).
    """
    flat = scores.detach().reshape(-1)
    total = flat.numel()
    if not 0 <= count <= total:
        raise ValueError(f"count={count}: expected 0..{total}")
    if count in (0, total):
        return torch.full_like(scores, float(count == total))
    if count <= total - count:
        threshold = torch.topk(flat, count, sorted=False).values.min()
    else:  # select on the smaller side: the largest of the total - count + 1 smallest is the count-th largest
        threshold = torch.topk(flat, total - count + 1, largest=False, sorted=False).values.max()
    above = flat > threshold
    ties = flat == threshold
    take = ties & (torch.cumsum(ties, 0) <= count - above.sum())
    return (above | take).to(flat.dtype).view_as(scores)


class _StraightThroughTopK(torch.autograd.Function):
    """M = top-k(S) in the forward pass; ∂L/∂S = ∂L/∂M in the backward pass (straight-through)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, count: int) -> torch.Tensor:  # noqa: D102
        return topk_mask(scores, count)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None


def straight_through_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The top-``count`` mask of ``scores``, through which gradients pass unchanged to the scores."""
    return _StraightThroughTopK.apply(scores, count)


# ------------------------------------------------------------------------------------------------ schedule


def regularization_weight(keep: float, final: float, ramp: Ramp) -> float:
    """The factor on λ_R at keep ratio ``keep`` (final ratio ``final``): ``"falling"``, the paper's v_t / v_f (1 / v_f
    at the start, 1 at the end); ``"rising"``, SMP's code, (1 − v_t) / (1 − v_f) (0 at the start, 1 at the end: the
    pruned fraction's share of its final value)."""
    if ramp == "falling":
        return keep / final
    if ramp == "rising":
        return 1.0 if final >= 1 else (1 - keep) / (1 - final)
    raise ValueError(f"regularization_ramp={ramp!r}: expected 'rising' or 'falling'")


def score_regularizer(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """R̄(S): the mean over matrices of the mean σ(S) (differentiable)."""
    if not scores:
        raise ValueError("score_regularizer: no score matrices")
    return torch.stack([torch.sigmoid(s).mean() for s in scores]).mean()


def _check_teacher(teacher: str | None) -> None:
    """Fail on a ``teacher`` that names no model before the student loads (a recipe's teacher folder that the
    fine-tuning recipe has not left yet, a typo), naming the setting."""
    if teacher is None:
        return
    try:
        resolve_model(teacher, setting="teacher")
    except AssetNotFoundError as error:
        raise AssetNotFoundError(f"{error} The teacher is a fine-tuned checkpoint of the task, such as the folder "
                                 "`python train.py fit --config configs/finetune/<task>.yaml` leaves in "
                                 "runs/finetune/<task>/final_model; without one, use head='trainable', "
                                 "distill=false, teacher=null.") from None


# ------------------------------------------------------------------------------------------------ scores
class ScoreMask(nn.Module):
    """A parametrisation W → W ⊙ M(S) of one Linear weight: S are trainable scores (zeros at start), M keeps the
    ``count`` highest scores (set before each forward pass by the module that owns the schedule)."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.zeros(shape))
        self.count = int(torch.Size(shape).numel())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * straight_through_mask(self.scores, self.count).to(weight.dtype)

    def mask(self) -> torch.Tensor:
        """The current binary mask (no gradient)."""
        return topk_mask(self.scores, self.count)


def encoder_linears(model: nn.Module) -> dict[str, list[nn.Linear]]:
    """The encoder's Linear layers by matrix type (:data:`MATRIX_TYPES`), in layer order."""
    adapter = get_adapter(model)
    layers = [adapter.layer(i) for i in range(adapter.num_layers)]
    return {kind: [getattr(layer, kind) for layer in layers] for kind in MATRIX_TYPES}


def install_scores(model: nn.Module) -> dict[str, list[ScoreMask]]:
    """Freeze every weight of ``model`` and put a :class:`ScoreMask` on each encoder Linear weight."""
    model.requires_grad_(False)
    masks: dict[str, list[ScoreMask]] = {}
    for kind, linears in encoder_linears(model).items():
        masks[kind] = []
        for linear in linears:
            score_mask = ScoreMask(linear.weight.shape).to(linear.weight.device)
            parametrize.register_parametrization(linear, "weight", score_mask)
            masks[kind].append(linear.parametrizations.weight[0])
    return masks


def set_counts(score_masks: dict[str, list[ScoreMask]], keep: float, masking: Masking) -> dict[str, list[int]]:
    """Set every matrix's kept count for the ratio ``keep``: SMP-L (``local``) or SMP-S (``global``)."""
    counts: dict[str, list[int]] = {}
    for kind, masks in score_masks.items():
        for layer, mask in enumerate(masks):
            if not torch.isfinite(mask.scores).all():
                raise FloatingPointError(f"SMP: the scores of layer {layer}'s {kind} matrix are not finite; lower "
                                         "scores_learning_rate or the regularization")
        numel = masks[0].scores.numel()
        if masking == "local":
            counts[kind] = [local_count(numel, keep) for _ in masks]
        else:
            with torch.no_grad():
                relevance = [float(torch.sigmoid(m.scores).double().sum()) for m in masks]
            counts[kind] = global_counts(relevance, numel, keep)
        for mask, count in zip(masks, counts[kind]):
            mask.count = count
    return counts


# ------------------------------------------------------------------------------------------------ export
def _activation(model: nn.Module):
    from transformers.activations import ACT2FN

    config = model.config
    name = getattr(config, "hidden_act", None) or getattr(config, "activation", None)
    return ACT2FN[name]


def structure_from_zeros(model: nn.Module) -> tuple[PruningMasks, dict[str, int]]:
    """The units of a weight-masked dense ``model`` that can go without changing its function, with the bias folds
    that make it exact. Edits the biases of ``model`` in place (the folds); returns the masks and fold counts.

    Rules (per layer): an FFN neuron goes when its W_down column is zero, or when its W_up row is zero (its constant
    output act(b_up) · W_down column is added to b_down); a value dim goes when its W_O column is zero, or when its
    W_V row is zero (b_V · W_O column added to b_O); a query/key dim goes when its W_K row is zero (its score term
    is then the same for every key, which the softmax ignores). A head with no value dims left goes entirely; a head
    that keeps value dims but no query/key dim keeps one (zero) query/key dim, so its attention stays uniform.
    """
    adapter = get_adapter(model)
    d_h = adapter.head_dim
    masks = PruningMasks.ones(adapter.num_layers, adapter.num_heads, d_h, adapter.ffn_dim)
    folds = {"ffn": 0, "vo": 0}
    act = _activation(model)
    with torch.no_grad():
        for index in range(adapter.num_layers):
            m = adapter.layer(index)
            up_zero = (m.ffn_up.weight == 0).all(1)
            down_zero = (m.ffn_down.weight == 0).all(0)
            fold = up_zero & ~down_zero
            if fold.any():
                constant = act(m.ffn_up.bias[fold])  # (n,)
                m.ffn_down.bias += m.ffn_down.weight[:, fold] @ constant
                folds["ffn"] += int(fold.sum())
            masks.ffn[index] = (~(up_zero | down_zero)).float()
            v_zero = (m.value.weight == 0).all(1)
            o_zero = (m.attn_out.weight == 0).all(0)
            fold = v_zero & ~o_zero
            if fold.any():
                m.attn_out.bias += m.attn_out.weight[:, fold] @ m.value.bias[fold]
                folds["vo"] += int(fold.sum())
            vo = (~(v_zero | o_zero)).float().view(adapter.num_heads, d_h)
            qk = (~(m.key.weight == 0).all(1)).float().view(adapter.num_heads, d_h)
            for head in range(adapter.num_heads):
                if vo[head].sum() == 0:
                    qk[head] = 0
                elif qk[head].sum() == 0:
                    qk[head, 0] = 1  # uniform attention: one query/key dim whose key row is zero
            masks.qk[index], masks.vo[index] = qk, vo
            masks.head[index] = (vo.sum(-1) > 0).float()
    return masks, folds


class CSRLinear(nn.Module):
    """A Linear whose weight is a sparse CSR matrix (for timing a sparse export; not saved)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": known, and timed only
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B·s, in)
        out = torch.sparse.mm(self.weight, flat.t()).t()  # (B·s, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def sparse_copy(model: nn.Module) -> nn.Module:
    """A copy of a (compacted) model whose encoder Linear layers multiply by CSR weights.

    Layers whose heads have unequal query and value sizes compute their query/key/value projections from padded
    dense weights (see the pruned modelling code), so those three stay dense there; every other encoder Linear
    becomes a :class:`CSRLinear`.
    """
    sparse = copy.deepcopy(model).eval()
    adapter = get_adapter(sparse)
    for index in range(adapter.num_layers):
        layer = adapter.layers[index]
        padded = any(getattr(getattr(module, "layout", None), "padded", False) for module in layer.modules())
        for kind in MATRIX_TYPES:
            if padded and kind in ("query", "key", "value"):
                continue
            path = getattr(adapter.spec, kind)
            parent_path, _, name = path.rpartition(".")
            parent = layer.get_submodule(parent_path) if parent_path else layer
            linear = getattr(parent, name)
            if linear.weight.numel():
                setattr(parent, name, CSRLinear(linear))
    return sparse


# ------------------------------------------------------------------------------------------------ MLM head
def label_word_ids(tokenizer: Any, words: Sequence[str], setting: str = "label_words") -> list[int]:
    """The vocabulary id of each label word, read as a word after a space (" great"), as SMP's code does.

    Raises:
        ValueError: a word that is not exactly one token, named with its tokens; two words with the same id.
    """
    ids, problems = [], []
    for word in words:
        tokens = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(tokens) != 1:
            problems.append(f"{word!r} is {len(tokens)} tokens ({tokenizer.convert_ids_to_tokens(tokens)})")
        else:
            ids.append(tokens[0])
    if not problems and len(set(ids)) != len(ids):
        problems.append(f"two words share a token ({tokenizer.convert_ids_to_tokens(ids)})")
    if problems:
        raise ValueError(f"{setting}={list(words)!r}: each label word must be one distinct token of the tokenizer; "
                         + "; ".join(problems))
    return ids


def label_word_classifier(location: str, name_or_path: str, task: Any, words: Sequence[str],
                          tokenizer: Any) -> nn.Module:
    """The checkpoint at ``location`` with its masked-LM head as the classifier of GLUE ``task`` (a spec) through
    ``words``: a :class:`~lit_prune.core.hf_modeling.modeling_lit_pruned.BertForLabelWordClassification` (or its
    RoBERTa / DistilBERT kin), in float32 and train mode.

    Raises:
        ValueError: the model type has no masked-LM class here, the checkpoint carries no masked-LM head (its head
            weights would be new random ones), or a label word is not one token.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as transformers_logging

    from lit_prune.core.hf_modeling.modeling_lit_pruned import LABEL_WORD_CLASSES, LABEL_WORDS_KEY

    config = AutoConfig.from_pretrained(location)
    model_class = LABEL_WORD_CLASSES.get(config.model_type)
    if model_class is None:
        raise ValueError(f"head='mlm': model type {config.model_type!r} of {name_or_path!r} has no masked-LM "
                         f"classifier here; supported: {', '.join(sorted(LABEL_WORD_CLASSES))}")
    ids = label_word_ids(tokenizer, words)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"head='mlm': the tokenizer of {name_or_path!r} has no mask token")
    config.num_labels = len(ids)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report would print before the error below: ours says more
    try:
        model, info = model_class.from_pretrained(location, config=config, dtype=torch.float32,
                                                  output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    new = sorted(k for k in info.get("missing_keys", []) if not k.startswith(model.base_model_prefix + "."))
    if new:
        raise ValueError(f"head='mlm': model.name_or_path={name_or_path!r} carries no masked-LM head (its "
                         f"{', '.join(new[:3])}{', ...' if len(new) > 3 else ''} would start random); give a checkpoint "
                         "saved with its MLM head (bert-base-uncased, roberta-base, ...), or use head 'trainable' or "
                         "'teacher'")
    configure_for_task(model.config, task)
    setattr(model.config, LABEL_WORDS_KEY, {"words": list(words), "ids": ids,
                                            "mask_token_id": int(tokenizer.mask_token_id)})
    return model.train()


# ------------------------------------------------------------------------------------------------ modules
class _StaticModelPruning:
    """What both SMP task modules add to their task module (a mixin; the task module comes second)."""

    model: nn.Module
    _smp_started: float | None = None  # when this fit's score training started
    _seconds_before_resume: float = 0.0  # training seconds of the run a checkpoint came from

    def _setup_smp(self, task_class: type, params_kept: float, masking: Masking, regularization: float,
                   scores_learning_rate: float, head: Head, teacher: str | None, distill: bool, temperature: float,
                   distill_alpha: float, latency_batch_size: int, latency_repeats: int, time_steps: int,
                   label_words: Sequence[str] | None = None, regularization_ramp: Ramp = "falling",
                   final_hold: float = 0.0, head_warmup_steps: int = 0) -> None:
        problems = []
        try:
            _check_keep(params_kept, "params_kept")
        except ValueError as error:
            problems.append(str(error))
        if masking not in ("global", "local"):
            problems.append(f"masking={masking!r}: expected 'global' (SMP-S) or 'local' (SMP-L)")
        if not (isinstance(regularization, (int, float)) and regularization >= 0):
            problems.append(f"regularization={regularization!r}: expected a number >= 0 (0 switches it off)")
        if regularization_ramp not in ("rising", "falling"):
            problems.append(f"regularization_ramp={regularization_ramp!r}: expected 'rising' (SMP's code: from 0 up to "
                            "λ_R as the pruned fraction grows) or 'falling' (the paper's formula: λ_R · v_t / v_f)")
        if not (isinstance(scores_learning_rate, (int, float)) and scores_learning_rate > 0):
            problems.append(f"scores_learning_rate={scores_learning_rate!r}: expected a number > 0")
        if head not in ("trainable", "teacher", "mlm"):
            problems.append(f"head={head!r}: expected 'trainable', 'teacher' or 'mlm' (the checkpoint's frozen MLM "
                            "head through label words, the paper's classifier)")
        elif head == "mlm" and task_class is not SequenceClassificationModule:
            problems.append("head='mlm': offered for GLUE tasks only (SMP's code reads SQuAD's start and end scores "
                            "from two label words at every token; lit_prune does not); use 'trainable' or 'teacher'")
        words = None
        if label_words is not None:
            expected = getattr(getattr(self, "spec", None), "num_labels", None)
            if head != "mlm":
                problems.append(f"label_words={label_words!r}: used by head='mlm' only (head={head!r})")
            elif (isinstance(label_words, str) or not all(isinstance(w, str) and w.strip() for w in label_words)
                  or len(label_words) != expected):
                problems.append(f"label_words={label_words!r}: expected {expected} word(s), one per label of "
                                f"{self.task} in label order")
            else:
                words = list(label_words)
        elif head == "mlm" and task_class is SequenceClassificationModule:
            words = list(LABEL_WORDS[self.task])
        if (head == "teacher" or distill) and teacher is None:
            problems.append(f"head={head!r}, distill={distill}: both need teacher, a fine-tuned checkpoint of the "
                            "task")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            problems.append(f"temperature={temperature!r}: expected a number > 0")
        if not (isinstance(distill_alpha, (int, float)) and 0 <= distill_alpha <= 1):
            problems.append(f"distill_alpha={distill_alpha!r}: expected a weight in [0, 1]")
        if isinstance(final_hold, bool) or not (isinstance(final_hold, (int, float)) and 0 <= final_hold < 1):
            problems.append(f"final_hold={final_hold!r}: expected a fraction of the training steps in [0, 1)")
        if isinstance(head_warmup_steps, bool) or not isinstance(head_warmup_steps, int) or head_warmup_steps < 0:
            problems.append(f"head_warmup_steps={head_warmup_steps!r}: expected an integer >= 0 (0: none, the "
                            "paper's)")
        elif head_warmup_steps and head != "trainable":
            problems.append(f"head_warmup_steps={head_warmup_steps}: trains a new classifier alone before the scores, "
                            f"so it needs head='trainable' (head={head!r} is frozen)")
        if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 0:
            problems.append(f"time_steps={time_steps!r}: expected an integer >= 0 (0 skips the step timing)")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.params_kept, self.masking, self.regularization = float(params_kept), masking, float(regularization)
        self.regularization_ramp = regularization_ramp
        self.scores_learning_rate, self.head, self.distill = float(scores_learning_rate), head, distill
        self.temperature, self.distill_alpha = float(temperature), float(distill_alpha)
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.time_steps = time_steps
        self.final_hold = float(final_hold)
        self.head_warmup_steps = head_warmup_steps
        self.step_time: dict[str, float] | None = None
        teacher_model = None
        if teacher is not None:
            teacher_model = task_class(name_or_path=teacher, task=self.task, save_final_model=False).model
            teacher_model.eval().requires_grad_(False)
        self.label_words = words
        if head == "mlm":  # the checkpoint's own MLM head, frozen, scoring one word per label
            from lit_prune.data.base import load_tokenizer

            self.model = label_word_classifier(self.resolved.location, self.name_or_path, self.spec, words,
                                               load_tokenizer(self.resolved.location, setting="model.name_or_path"))
        if head == "teacher":  # the fine-tuned classifier (and pooler) on top of the pretrained encoder
            encoder_keys = {name for name, _ in self.model.base_model.named_parameters()}
            prefix = self.model.base_model_prefix
            head_state = {k: v for k, v in teacher_model.state_dict().items()
                          if not (k.startswith(prefix + ".") and k[len(prefix) + 1:] in encoder_keys)}
            head_state.update({k: v for k, v in teacher_model.state_dict().items() if ".pooler." in k})
            missing = [k for k in head_state if k not in self.model.state_dict()]
            if missing:
                raise ValueError(f"{type(self).__name__}: head='teacher', but the teacher's head weights {missing[:3]} "
                                 "do not fit the student")
            self.model.load_state_dict(head_state, strict=False)
        self.score_masks = install_scores(self.model)
        if head == "trainable":  # everything outside the encoder trains with the scores
            for name, parameter in self.model.named_parameters():
                if not name.startswith(self.model.base_model_prefix + ".") or ".pooler." in name:
                    parameter.requires_grad_(True)
        # unregistered: out of the optimiser, checkpoints and DDP; also scored at the end as the dense reference
        object.__setattr__(self, "_teacher", teacher_model if distill else None)
        object.__setattr__(self, "_teacher_model", teacher_model)
        self.teacher_path = teacher
        self.keep = 1.0
        self.counts: dict[str, list[int]] = {}

    # ---------------------------------------------------------------------------------------------- training
    def _scores(self) -> list[torch.Tensor]:
        return [m.scores for masks in self.score_masks.values() for m in masks]

    def configure_optimizers(self) -> Any:
        others = [p for n, p in self.named_parameters() if p.requires_grad and "parametrizations" not in n]
        groups = [{"params": self._scores(), "lr": self.scores_learning_rate, "weight_decay": 0.0}]
        if others:
            groups.append({"params": others, "lr": self.learning_rate, "weight_decay": self.weight_decay})
        optimizer = torch.optim.AdamW(groups)
        # the scores' linear schedule starts after the head's warm-up (the head's spans every step)
        starts = [self.head_warmup_steps] + [0] * (len(groups) - 1)
        return {"optimizer": optimizer, "lr_scheduler": self.linear_schedule(optimizer, starts=starts)}

    def in_head_warmup(self) -> bool:
        """Whether the current step trains the classifier alone (scores still, every weight kept)."""
        return self.global_step < self.head_warmup_steps

    def on_fit_start(self) -> None:
        if self.head_warmup_steps >= self._schedule_steps():
            raise ValueError(f"{type(self).__name__}: head_warmup_steps={self.head_warmup_steps}: expected fewer than "
                             f"the {self._schedule_steps()} steps of the sparsity schedule (the training steps less "
                             "final_hold's), which starts after the warm-up")
        super().on_fit_start()
        if self._teacher is not None:
            self._teacher.to(self.device).eval()
        self._smp_started = time.perf_counter()

    def _training_seconds(self) -> float:
        """Seconds of score training so far: this fit's plus, after a resume, those of the run up to its checkpoint."""
        elapsed = 0.0 if self._smp_started is None else time.perf_counter() - self._smp_started
        return self._seconds_before_resume + elapsed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["smp_training_seconds"] = self._training_seconds()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._seconds_before_resume = float(checkpoint.get("smp_training_seconds", 0.0))

    @contextlib.contextmanager
    def _plain_model(self) -> Iterator[nn.Module]:
        """``self.model`` as plain fine-tuning would train it (no score masks, every weight trainable) inside the
        block; the same score masks are put back afterwards."""
        linears = [linear for group in encoder_linears(self.model).values() for linear in group]
        grads = {name: p.requires_grad for name, p in self.model.named_parameters()}
        for linear in linears:
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
        self.model.requires_grad_(True)
        try:
            yield self.model
        finally:
            for linear, score_mask in zip(linears, [m for group in self.score_masks.values() for m in group]):
                parametrize.register_parametrization(linear, "weight", score_mask)
            for name, p in self.model.named_parameters():
                p.requires_grad_(grads.get(name, "scores" in name))

    def step_times(self, batch: dict[str, torch.Tensor], repeats: int) -> dict[str, float]:
        """Median wall time of one SMP training step (forward, backward to the scores) against one plain
        fine-tuning step of the same model (forward, backward to every weight), in alternating blocks of one run,
        on ``batch``. Optimiser updates are left out of both (a small part of either)."""
        inputs = {k: v.to(self.device) for k, v in batch.items()
                  if k in set(self._model_inputs(batch)) | set(LABEL_KEYS)}
        self.set_counts_for(0)
        mode = self.model.training
        self.model.train()

        def steps(count: int) -> list[float]:
            out = []
            with torch.enable_grad():
                for _ in range(count):
                    started = time.perf_counter()
                    self.model(**inputs).loss.backward()
                    out.append(time.perf_counter() - started)
            self.model.zero_grad(set_to_none=True)
            return out

        times: dict[str, list[float]] = {"smp": [], "finetune": []}
        first, second = (repeats + 1) // 2, repeats // 2
        try:
            for count in (first, second):  # two rounds of blocks, each block after one warm-up step
                steps(1)
                times["smp"] += steps(count)
                with self._plain_model():
                    steps(1)
                    times["finetune"] += steps(count)
        finally:
            self.model.train(mode)
        smp_ms, finetune_ms = (1000 * sorted(v)[len(v) // 2] for v in (times["smp"], times["finetune"]))
        return {"smp_ms": smp_ms, "finetune_ms": finetune_ms, "ratio": smp_ms / finetune_ms, "repeats": repeats,
                "batch_size": int(inputs["input_ids"].shape[0])}

    def _schedule_steps(self) -> int:
        """N of the cubic schedule: the training steps but the last ``final_hold`` of them, spent at the final ratio."""
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        return max(1, round(total * (1 - self.final_hold)))

    def set_counts_for(self, step: int) -> None:
        start = self.head_warmup_steps
        self.keep = cubic_schedule(step - start, max(1, self._schedule_steps() - start), self.params_kept)
        self.counts = set_counts(self.score_masks, self.keep, self.masking)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # single process only: a backward outside DDP's forward would wait for the other processes' gradients
        if self.time_steps and self.step_time is None and self.trainer.world_size == 1:
            self.step_time = self.step_times(batch, self.time_steps)
        self.set_counts_for(self.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the head's warm-up: AdamW skips a parameter without a gradient (no update, no moment, no step count), so
        # the scores start their training after it as from step 0; dropped after backward, so that DDP still
        # reduces every parameter's gradient each step
        if self.in_head_warmup():
            for scores in self._scores():
                scores.grad = None

    def _teacher_loss(self, student: Any, teacher: Any) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs = self._model_inputs(batch)
        labels = {k: v for k, v in batch.items() if k in LABEL_KEYS}
        student = self.model(**inputs, **labels)
        loss = student.loss
        size = batch["input_ids"].shape[0]
        self.log("train/task_loss", loss, batch_size=size)
        if self._teacher is not None:
            with torch.no_grad():
                teacher = self._teacher(**inputs)
            kd = self._teacher_loss(student, teacher)
            self.log("train/kd_loss", kd, batch_size=size)
            loss = self.distill_alpha * kd + (1 - self.distill_alpha) * loss
        if self.regularization > 0 and not self.in_head_warmup():
            regularizer = score_regularizer(self._scores())
            weight = self.regularization * regularization_weight(self.keep, self.params_kept, self.regularization_ramp)
            loss = loss + weight * regularizer
            self.log("train/regularizer", regularizer, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("smp/keep", self.keep, batch_size=size)
        if self.head_warmup_steps:
            self.log("smp/head_warmup", float(self.in_head_warmup()), batch_size=size)
        for kind, counts in self.counts.items():
            numel = self.score_masks[kind][0].scores.numel()
            self.log(f"smp/kept/{kind}", sum(counts) / (numel * len(counts)), batch_size=size)
        return loss

    # ---------------------------------------------------------------------------------------------- export
    def kept_fraction(self) -> float:
        """The fraction of the encoder Linear weights the current masks keep."""
        kept = sum(m.count for masks in self.score_masks.values() for m in masks)
        return kept / sum(m.scores.numel() for masks in self.score_masks.values() for m in masks)

    def binary_masks(self) -> dict[str, torch.Tensor]:
        """``{"layer.<i>.<type>": mask}``: the binary weight masks, for the export."""
        return {f"layer.{i}.{kind}": m.mask().cpu() for kind, masks in self.score_masks.items()
                for i, m in enumerate(masks)}

    def on_fit_end(self) -> None:
        self.export_pruned(self.trainer)

    def export_pruned(self, trainer: Any) -> dict[str, Any]:
        """Fix the final masks into the weights, remove the rows and columns they empty (with exact bias folds),
        evaluate, time (dense, compacted, and compacted with CSR weights) and write the pruned folder, the weight
        masks and the report. Returns the report."""
        seconds = {"prune": round(self._training_seconds(), 3)}
        if self._seconds_before_resume:
            seconds["prune_before_resume"] = round(self._seconds_before_resume, 3)
        self.counts = set_counts(self.score_masks, self.params_kept, self.masking)
        weight_masks = self.binary_masks()
        ranks = check_same_on_all_ranks(trainer, weight_masks, "weight masks")
        model = self.model
        modes = [(module, module.training) for module in model.modules()]
        for linears in encoder_linears(model).values():
            for linear in linears:
                parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
        model.eval()
        dense = copy.deepcopy(model).eval()  # masked weights, dense shape
        with phase(seconds, "compact"):
            masks, folds = structure_from_zeros(model)
            compact(model, masks)
        for module, training in modes:
            module.training = training
        with phase(seconds, "evaluate_pruned"):
            metrics = evaluate_module(trainer, self, "pruned")
        dense_metrics = None
        if self._teacher_model is not None:  # the fine-tuned dense model, on the same split, for comparison
            pruned_model, self.model = self.model, self._teacher_model.to(self.device)
            try:
                with phase(seconds, "evaluate_dense"):
                    dense_metrics = evaluate_module(trainer, self, "teacher")
            finally:
                self.model = pruned_model
        latency = None
        if trainer.is_global_zero and self.latency_batch_size:
            with phase(seconds, "latency"):
                latency = latency_comparison(trainer, dense, model, self.latency_batch_size, self.latency_repeats)
                sparse = latency_comparison(trainer, dense, sparse_copy(model), self.latency_batch_size,
                                            self.latency_repeats)
                latency["csr"] = {"pruned_ms": sparse["pruned_ms"], "speedup": sparse["speedup"],
                                  "speedup_paired": sparse["speedup_paired"]}
        datamodule = trainer.datamodule
        seq_len = datamodule.average_sequence_length()
        report = shared_report("smp", self, trainer, model, dense, int(os.environ.get("PL_GLOBAL_SEED", 0)), seq_len, None,
                               {"dense": dense_metrics, "pruned": metrics}, seconds, latency, masks.binary())
        report["teacher"] = self.teacher_path
        report["step_time"] = self.step_time
        report["training"] = {**training_summary(trainer), "schedule_steps": self._schedule_steps()}
        total = sum(m.numel() for m in weight_masks.values())
        report["params"]["kept"] = sum(float(m.sum()) for m in weight_masks.values()) / total
        report["params"]["target"] = self.params_kept
        report["params"]["kept_by_type"] = {kind: sum(float(weight_masks[f"layer.{i}.{kind}"].sum())
                                                      for i in range(len(masks_)))
                                            / sum(weight_masks[f"layer.{i}.{kind}"].numel() for i in range(len(masks_)))
                                            for kind, masks_ in self.score_masks.items()}
        report["structure_removed"] = {"bias_folds": folds}
        report["settings"] = {"params_kept": self.params_kept, "masking": self.masking,
                              "regularization": self.regularization,
                              "regularization_ramp": self.regularization_ramp, "final_hold": self.final_hold,
                              "head_warmup_steps": self.head_warmup_steps, "head": self.head, "distill": self.distill,
                              "label_words": self.label_words}
        self.report = report
        folder = Path(trainer.default_root_dir)
        if trainer.is_global_zero:
            atomic_write_bytes(folder / WEIGHT_MASKS_FILE,
                               save_safetensors({k: v.to(torch.uint8).contiguous() for k, v in weight_masks.items()},
                                                metadata={"format": "lit_prune.smp.weight_masks"}))
        return publish(trainer, report, folder, model, masks.binary(), getattr(datamodule, "tokenizer", None), True,
                       ranks)


class SMPSequenceClassificationModule(_StaticModelPruning, SequenceClassificationModule):
    """SMP on a GLUE task: frozen pretrained encoder, trained mask scores.

    Args:
        name_or_path: the pretrained (not fine-tuned) encoder whose weights stay frozen.
        task: the GLUE task.
        params_kept: the final fraction of the encoder Linear weights kept (the paper's "remaining weights").
        masking: ``"global"`` (SMP-S) or ``"local"`` (SMP-L).
        regularization: λ_R of the score regulariser (SMP: 400; 0 switches it off).
        regularization_ramp: how the regulariser's weight moves with the schedule: ``"falling"``, λ_R · v_t / v_f
            (the paper's formula); ``"rising"``, λ_R · (1 − v_t) / (1 − v_f), from 0 up to λ_R (SMP's code).
        final_hold: the fraction of the training steps, at the end, spent at ``params_kept`` (the cubic schedule
            runs over the others; SMP's code holds the final ratio for its last 30,000 steps; 0: none, the paper's).
        head_warmup_steps: train a new classifier (``head="trainable"``) alone for this many steps first, every weight
            kept and the scores still, without the regulariser; the cubic schedule and the scores' learning-rate
            schedule then run over the steps after them (0: none, the paper's; lit_prune's addition).
        scores_learning_rate: Adam learning rate of the scores (SMP: 2e-2).
        head: ``"trainable"`` (a new classifier trained with the scores), ``"teacher"`` (the fine-tuned
            ``teacher``'s classifier and pooler, frozen) or ``"mlm"`` (the paper's: the checkpoint's own masked-LM
            head, frozen, scoring one label word per class; needs a checkpoint saved with its MLM head).
        label_words: ``head="mlm"``'s words, one per label in label order (one for STS-B); ``None`` takes
            :data:`LABEL_WORDS` (SMP's), e.g. SST-2 "terrible", "great". Each must be one token.
        teacher: a fine-tuned checkpoint of the task (for ``head="teacher"`` and for ``distill``).
        distill: add distillation from ``teacher`` (KL at ``temperature``, weight ``distill_alpha``; the task loss
            gets 1 − ``distill_alpha``).
        temperature: distillation temperature (SMP: 2).
        distill_alpha: weight of the distillation loss (SMP: 0.5).
        latency_batch_size: evaluation examples in the timed batch (0 skips timing).
        latency_repeats: timed passes.
        time_steps: before the first step, time this many SMP steps against as many plain fine-tuning steps of the
            same model on the first batch (the report's ``step_time``; 0 skips it).
        learning_rate: learning rate of a trainable head.
        weight_decay: weight decay of a trainable head.
        warmup_ratio: warm-up fraction of the linear learning-rate schedule (SMP: none).
        trust_remote_code: let transformers run modelling code stored with the model.
        save_final_model: kept for the task-module interface; SMP always writes ``pruned_model/``.
    """

    def __init__(
        self,
        name_or_path: str,
        task: GlueTaskName = "sst2",
        params_kept: float = 0.1,
        masking: Masking = "global",
        regularization: float = 400.0,
        regularization_ramp: Ramp = "falling",
        final_hold: float = 0.0,
        head_warmup_steps: int = 0,
        scores_learning_rate: float = 2e-2,
        head: Head = "trainable",
        label_words: list[str] | None = None,
        teacher: str | None = None,
        distill: bool = False,
        temperature: float = 2.0,
        distill_alpha: float = 0.5,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        time_steps: int = 5,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        trust_remote_code: bool = False,
        save_final_model: bool = False,
    ) -> None:
        _check_teacher(teacher)
        self._mlm_head = head == "mlm"  # read by _load_model, which the task module calls in its __init__
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, trust_remote_code=trust_remote_code,
                         save_final_model=save_final_model)
        self._setup_smp(SequenceClassificationModule, params_kept, masking, regularization, scores_learning_rate,
                        head, teacher, distill, temperature, distill_alpha, latency_batch_size, latency_repeats,
                        time_steps, label_words, regularization_ramp, final_hold, head_warmup_steps)

    def _load_model(self, classifier_dropout: float | None) -> nn.Module | None:
        # head="mlm": the masked-LM checkpoint is loaded once, by _setup_smp, after the settings are checked
        return None if self._mlm_head else super()._load_model(classifier_dropout)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value for name, value in batch.items() if name not in LABEL_KEYS}

    def _teacher_loss(self, student: Any, teacher: Any) -> torch.Tensor:
        if self.spec.is_regression:
            return F.mse_loss(student.logits, teacher.logits)
        t = self.temperature
        return F.kl_div(F.log_softmax(student.logits / t, -1), F.softmax(teacher.logits / t, -1),
                        reduction="batchmean") * t * t


class SMPQuestionAnsweringModule(_StaticModelPruning, QuestionAnsweringModule):
    """SMP on SQuAD: frozen pretrained encoder, trained mask scores. Arguments as
    :class:`SMPSequenceClassificationModule` (``task``: ``"squad_v1"`` or ``"squad_v2"``)."""

    def __init__(
        self,
        name_or_path: str,
        task: SquadTask | None = None,
        params_kept: float = 0.1,
        masking: Masking = "global",
        regularization: float = 400.0,
        regularization_ramp: Ramp = "falling",
        final_hold: float = 0.0,
        head_warmup_steps: int = 0,
        scores_learning_rate: float = 2e-2,
        head: Head = "trainable",
        teacher: str | None = None,
        distill: bool = False,
        temperature: float = 2.0,
        distill_alpha: float = 0.5,
        latency_batch_size: int = 32,
        latency_repeats: int = 10,
        time_steps: int = 5,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        trust_remote_code: bool = False,
        save_final_model: bool = False,
    ) -> None:
        _check_teacher(teacher)
        super().__init__(name_or_path, task=task, learning_rate=learning_rate, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, trust_remote_code=trust_remote_code,
                         save_final_model=save_final_model)
        self._setup_smp(QuestionAnsweringModule, params_kept, masking, regularization, scores_learning_rate,
                        head, teacher, distill, temperature, distill_alpha, latency_batch_size, latency_repeats,
                        time_steps, regularization_ramp=regularization_ramp, final_hold=final_hold,
                        head_warmup_steps=head_warmup_steps)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self._inputs(batch).items() if name not in LABEL_KEYS}

    def _teacher_loss(self, student: Any, teacher: Any) -> torch.Tensor:
        t = self.temperature
        terms = [F.kl_div(F.log_softmax(getattr(student, n) / t, -1), F.softmax(getattr(teacher, n) / t, -1),
                          reduction="batchmean") * t * t for n in ("start_logits", "end_logits")]
        return (terms[0] + terms[1]) / 2


__all__ = ["LABEL_WORDS", "MATRIX_TYPES", "CSRLinear", "SMPQuestionAnsweringModule", "SMPSequenceClassificationModule",
           "ScoreMask", "encoder_linears", "global_counts", "install_scores", "label_word_classifier",
           "label_word_ids", "local_count", "score_regularizer", "set_counts", "sparse_copy", "straight_through_mask",
           "structure_from_zeros", "topk_mask"]
