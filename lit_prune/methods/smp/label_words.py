"""SMP's classifier without new task parameters: the checkpoint's own masked-LM head, frozen, scoring one label word
per class.

The paper keeps every pretrained weight frozen, the head included: a GLUE example is classified by the MLM head's
scores of one word per label (SST-2 "terrible" / "great", :data:`LABEL_WORDS`, those of SMP's code) at the first
mask token of the input, or at the first token when the input has none (GLUE inputs have none in lit_prune; SMP's
code writes a prompt with a mask token into each example). lit_prune's bundled checkpoints carry no MLM head, so the
task modules also offer a new trainable classifier and the fine-tuned teacher's frozen one (README, SMP).
The model built here is a :class:`~lit_prune.core.hf_modeling.modeling_lit_pruned.BertForLabelWordClassification`
(or its RoBERTa / DistilBERT kin), which the pruned folder's modelling code registers for
``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: ``head: mlm``'s label words by GLUE task, one per label in label order (those of SMP's code; MNLI's in the
#: order entailment, neutral, contradiction, CoLA's unacceptable, acceptable); STS-B regresses one word's score.
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "cola": ("incorrect", "correct"), "sst2": ("terrible", "great"), "mrpc": ("No", "Yes"), "stsb": ("Yes",),
    "qqp": ("No", "Yes"), "mnli": ("Yes", "Maybe", "No"), "qnli": ("Yes", "No"), "rte": ("Yes", "No"),
    "wnli": ("No", "Yes"),
}


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


def label_word_classifier(location: str, name_or_path: str, words: Sequence[str], tokenizer: Any) -> nn.Module:
    """The checkpoint at ``location`` with its masked-LM head as a classifier through ``words`` (one per label): a
    :class:`~lit_prune.core.hf_modeling.modeling_lit_pruned.BertForLabelWordClassification` (or its RoBERTa /
    DistilBERT kin), in float32 and train mode, with ``num_labels`` set (the caller gives the config the rest of its
    task: label names, problem type).

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
                         f"{', '.join(new[:3])}{', ...' if len(new) > 3 else ''} would start random); give a "
                         "checkpoint saved with its MLM head (bert-base-uncased, roberta-base, ...), or use head "
                         "'trainable' or 'teacher'")
    setattr(model.config, LABEL_WORDS_KEY, {"words": list(words), "ids": ids,
                                            "mask_token_id": int(tokenizer.mask_token_id)})
    return model.train()


__all__ = ["LABEL_WORDS", "label_word_classifier", "label_word_ids"]
