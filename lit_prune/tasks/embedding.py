"""Sentence embeddings: an encoder plus its pooling (a sentence-transformers model), evaluated on sentence-pair
similarity, pruned without labels.

The model is :class:`~lit_prune.core.hf_modeling.modeling_lit_pruned.BertForSentenceEmbedding` (or its RoBERTa and
DistilBERT kin): the encoder, whose outputs carry ``embeddings``, one pooled vector per sentence. The pooling comes
from the folder's sentence-transformers files (``modules.json``, ``1_Pooling/config.json``: mean, CLS or max, and
whether a ``Normalize`` follows), or from the ``pooling`` / ``normalize`` settings. The retraining-free callbacks
prune it with the dense model's own embeddings as the teacher (:mod:`lit_prune.prune.distill`,
:func:`~lit_prune.prune.fisher.embedding_fisher_loss`), and the pruned folder loads in sentence-transformers
(``SentenceTransformer(folder, trust_remote_code=True)``) and in plain transformers (``AutoModel``).

Evaluation (the standard STS protocol): the cosine similarity of each pair's two embeddings against the gold score,
by Spearman (the main metric) and Pearson correlation. When the module evaluates a pruned (compacted) model after
having evaluated the dense one, it also reports ``cosine_to_dense``: the mean cosine similarity between each
evaluation sentence's pruned and dense embedding.

The module trains nothing: it has no training objective, so a ``fit`` must train no steps (``max_epochs: 0``, as the
retraining-free recipes have it). :class:`~lit_prune.tasks.distilled.DistilledSentenceEmbeddingModule` trains by
distillation from a frozen copy of the model (GRAIN).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from lit_prune.core.arch import get_adapter
from lit_prune.core.hf_modeling.modeling_lit_pruned import SENTENCE_EMBEDDING_CLASSES, SENTENCE_EMBEDDING_KEY
from lit_prune.core.io import is_pruned_folder, load_pruned, read_pruned_config
from lit_prune.core.pooling import embedding_settings
from lit_prune.tasks.base import TaskModule, check_model_type

#: the second sentence's inputs in a pair batch (``pair_input_ids``, ...), beside the first's
PAIR_PREFIX = "pair_"


class SentenceEmbeddingModule(TaskModule):
    """A sentence-embedding model to prune: the encoder with its pooling, evaluated on sentence-pair similarity.

    Logs ``val/spearman`` and ``val/pearson`` (cosine similarity against the gold scores).

    Args:
        name_or_path: the model: a sentence-transformers folder (all-MiniLM-L6-v2), a plain encoder folder (give
            ``pooling``), a name under ``$LIT_PRUNE_ASSETS/models/``, a hub id, or a pruned folder.
        task: set by train.py from the data module (``"embedding"``).
        pooling: ``"mean"``, ``"cls"`` or ``"max"``; ``None``: the folder's sentence-transformers pooling.
        normalize: unit-length embeddings; ``None``: as the folder says (a ``Normalize`` module), else off.
        trust_remote_code: let transformers run modelling code stored with the model.
        save_final_model: save the model at the end of ``fit`` (off by default: the pruning callbacks save the
            pruned model).
    """

    main_metric = "spearman"
    #: whether ``training_step`` has a loss to train with (the distilled subclass has one)
    has_training_objective = False

    def __init__(
        self,
        name_or_path: str,
        task: str = "embedding",
        pooling: str | None = None,
        normalize: bool | None = None,
        trust_remote_code: bool = False,
        save_final_model: bool = False,
    ) -> None:
        super().__init__(name_or_path, task=task, trust_remote_code=trust_remote_code,
                         save_final_model=save_final_model)
        self.save_hyperparameters()
        self.settings = embedding_settings(self.resolved.location, pooling, normalize, setting="model.pooling")
        self.model = self._load_model()
        self.val_metrics = torchmetrics.MetricCollection({"spearman": SpearmanCorrCoef(),
                                                          "pearson": PearsonCorrCoef()})
        self.dense_cosine = torchmetrics.MeanMetric()
        self._dense_embeddings: torch.Tensor | None = None

    def _load_model(self) -> torch.nn.Module:
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
        from transformers.utils import logging as transformers_logging

        location = self.resolved.location
        if is_pruned_folder(location):
            config = read_pruned_config(location)
            setattr(config, SENTENCE_EMBEDDING_KEY, self.settings)
            return load_pruned(location, kind="sentence_embedding", config=config, dtype=torch.float32).train()
        config = check_model_type(location, {t: n for t, n in MODEL_MAPPING_NAMES.items()
                                             if t in SENTENCE_EMBEDDING_CLASSES},
                                  "AutoModel", "model.name_or_path", self.name_or_path,
                                  trust_remote_code=self.trust_remote_code)
        setattr(config, SENTENCE_EMBEDDING_KEY, self.settings)
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # its load report lists the unused pooler layer, by design
        try:
            model, info = SENTENCE_EMBEDDING_CLASSES[config.model_type].from_pretrained(
                location, config=config, dtype=torch.float32, output_loading_info=True)
        finally:
            transformers_logging.set_verbosity(verbosity)
        missing = sorted(info.get("missing_keys", []))
        if missing:
            raise ValueError(f"model.name_or_path={self.name_or_path!r}: the checkpoint lacks encoder weights "
                             f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}); a sentence-embedding "
                             "model needs a trained encoder")
        return model.train()

    # ------------------------------------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        trainer = self._trainer
        if stage == "fit" and trainer is not None and not self.has_training_objective and not (
                trainer.max_epochs == 0 or trainer.max_steps == 0 or trainer.limit_train_batches == 0):
            raise ValueError(f"{type(self).__name__} has no training objective: prune it with a retraining-free "
                             f"callback in a fit that trains nothing (trainer.max_epochs=0); got "
                             f"max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}")

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.model(**inputs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        raise RuntimeError(f"{type(self).__name__} trains nothing (see setup)")

    # ---------------------------------------------------------------------------------------------- evaluation
    def embed(self, batch: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        """The embeddings of one side of a batch: the inputs named ``<prefix>input_ids``, ``<prefix>attention_mask``
        (and ``<prefix>token_type_ids``)."""
        inputs = {name[len(prefix):]: value for name, value in batch.items()
                  if name.startswith(prefix) and name[len(prefix):] in ("input_ids", "attention_mask", "token_type_ids")}
        return self.model(**inputs).embeddings

    def _pair_similarities(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings of both sides stacked (2B, d), cosine similarity of each pair (B,))."""
        first, second = self.embed(batch), self.embed(batch, PAIR_PREFIX)
        return torch.cat([first, second]), F.cosine_similarity(first.float(), second.float(), dim=-1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, similarity = self._pair_similarities(batch)
        self.val_metrics.update(similarity, batch["labels"].float())

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == self.main_metric)
        self.val_metrics.reset()

    def _evaluate(self, loaders: list, progress) -> dict[str, float]:
        if len(loaders) != 1:
            raise ValueError(f"{type(self).__name__}.evaluate: expected one dataloader of sentence pairs, got "
                             f"{len(loaders)}")
        self.val_metrics.reset()
        self.dense_cosine.reset()
        embeddings = []
        for batch in loaders[0]:
            batch = self._to_device(batch)
            pair_embeddings, similarity = self._pair_similarities(batch)
            self.val_metrics.update(similarity, batch["labels"].float())
            embeddings.append(pair_embeddings.float().cpu())
            progress()
        results = {name: float(value) for name, value in self.val_metrics.compute().items()}
        self.val_metrics.reset()
        current = torch.cat(embeddings)
        if not get_adapter(self.model).is_compacted:
            self._dense_embeddings = current
        elif self._dense_embeddings is not None and self._dense_embeddings.shape == current.shape:
            # a mean over every process's sentences (each compares its own shard, the same before and after)
            self.dense_cosine.update(F.cosine_similarity(current, self._dense_embeddings, dim=-1).to(self.device))
            results["cosine_to_dense"] = float(self.dense_cosine.compute())
            self.dense_cosine.reset()
        return results

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.embed(batch)


__all__ = ["PAIR_PREFIX", "SentenceEmbeddingModule"]
