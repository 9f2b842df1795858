"""What every lit_prune task module shares: loading a Hugging Face model by name, AdamW with linear warm-up and
decay, and saving the fine-tuned model as a Hugging Face folder at the end of ``fit``."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from lit_prune.assets import resolve_model
from lit_prune.core.arch import get_adapter
from lit_prune.core.atomic import atomic_directory, atomic_write_text
from lit_prune.core.io import is_pruned_folder, load_pruned, read_pruned_config, save_pruned
from lit_prune.core.hardware import hardware_summary

log = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final_model"
FIT_SUMMARY = "fit_summary.json"


def check_model_type(location: str, mapping_names: dict[str, str], kind: str, setting: str, value: str,
                     trust_remote_code: bool = False):
    """Load a model's config and check that the Auto class for ``kind`` can wrap its type."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in mapping_names and not any(kind in key for key in auto_map):
        allowed = ", ".join(sorted(mapping_names))
        raise ValueError(f"{setting}={value!r} is a {config.model_type!r} model, which {kind} cannot wrap. "
                         f"Supported model types: {allowed}.")
    return config


class MetricEvaluation:
    """Validation and test steps of a task module that scores with one metric object per split (``val_metric``,
    ``test_metric``): its ``_evaluation_step(batch, metric, prefix)`` updates the metric (and logs the loss), its
    ``_log_scores(metric, prefix)`` logs what the metric computes over every process and resets it."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_metric, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_metric, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_metric, "test")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_metric, "test")


class TaskModule(L.LightningModule):
    """Base class of lit_prune task modules (a Hugging Face model plus loss, metrics and optimiser).

    Subclasses build ``self.model`` in ``__init__`` and define ``training_step`` / ``validation_step``.

    Args:
        name_or_path: the model: a folder, a name under ``$LIT_PRUNE_ASSETS/models/``, or a hub id.
        task: the task (set by train.py from the data module's task).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: fraction of the training steps spent warming the learning rate up from 0.
        trust_remote_code: let transformers run modelling code stored with the model (pruned lit_prune models
            load without it while lit_prune is imported).
        save_final_model: at the end of ``fit``, save the model and tokenizer to
            ``<trainer.default_root_dir>/final_model/``.
    """

    def __init__(
        self,
        name_or_path: str,
        task: str | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        trust_remote_code: bool = False,
        save_final_model: bool = True,
    ) -> None:
        super().__init__()
        problems = []
        if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
            problems.append(f"learning_rate={learning_rate!r}: expected a number > 0")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            problems.append(f"weight_decay={weight_decay!r}: expected a number >= 0")
        if not (isinstance(warmup_ratio, (int, float)) and 0 <= warmup_ratio < 1):
            problems.append(f"warmup_ratio={warmup_ratio!r}: expected a number in [0, 1)")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.name_or_path = name_or_path
        self.resolved = resolve_model(name_or_path, setting="model.name_or_path")
        self.task = task
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.trust_remote_code = trust_remote_code
        self.save_final_model = save_final_model
        self.model: torch.nn.Module  # set by subclasses
        # weights the checkpoint lacked (a head initialised at random): a model that is not fine-tuned for the task
        self.newly_initialized: list[str] = []

    main_metric: str  # the metric that ranks models on the task (set by subclasses)

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, dataloaders: Any, progress: Callable[[], None] | None = None) -> dict[str, float]:
        """The evaluation split's metrics of the current model, without a Trainer loop.

        Pruning callbacks call it before and after pruning. Under DDP, give each process its shard of the
        evaluation data: the metrics are gathered across processes, and every process returns the same values.

        Args:
            dataloaders: a dataloader, or a list with one per evaluation split (MNLI: matched, mismatched).
            progress: called after each batch.

        Returns:
            Metric name → value: the main split's metrics by name (``accuracy``, ``f1``, ...); other splits'
            with their prefix (MNLI mismatched: ``mismatched/accuracy``).
        """
        loaders = list(dataloaders) if isinstance(dataloaders, (list, tuple)) else [dataloaders]
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                return self._evaluate(loaders, progress or (lambda: None))
        finally:
            for module, training in modes:
                module.training = training

    def _evaluate(self, loaders: list[Any], progress: Callable[[], None]) -> dict[str, float]:
        raise NotImplementedError

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {name: value.to(self.device) if isinstance(value, torch.Tensor) else value
                for name, value in batch.items()}

    # ------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": self.weight_decay},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate)
        return {"optimizer": optimizer, "lr_scheduler": self.linear_schedule(optimizer)}

    def linear_schedule(self, optimizer: torch.optim.Optimizer,
                        starts: Sequence[int] | None = None) -> dict[str, Any]:
        """Linear warm-up over ``warmup_ratio`` of the training steps, then linear decay to 0 (every param group).

        Args:
            starts: per param group, the step its schedule starts at (learning rate 0 before it; the warm-up and the
                decay then span the steps after it); ``None``: every group from step 0.
        """
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def linear(start: int) -> Callable[[int], float]:
            steps = max(1, total - start)
            warmup = int(self.warmup_ratio * steps)

            def factor(step: int) -> float:
                step -= start
                if step < 0:
                    return 0.0
                if step < warmup:
                    return (step + 1) / (warmup + 1)
                return max(0.0, (steps - step) / max(1, steps - warmup))

            return factor

        starts = [0] * len(optimizer.param_groups) if starts is None else list(starts)
        if len(starts) != len(optimizer.param_groups):
            raise ValueError(f"linear_schedule: {len(starts)} start(s) for {len(optimizer.param_groups)} param groups")
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, [linear(s) for s in starts]),
                "interval": "step"}

    # ------------------------------------------------------------------------------------------ loading
    def load_hf_model(self, auto_class: type, mapping_names: dict[str, str], kind: str,
                      configure: Callable[[Any], None] | None = None) -> torch.nn.Module:
        """Load ``self.name_or_path`` in float32, in train mode: a pruned lit_prune folder or any HF model.

        Args:
            auto_class: the transformers Auto class for dense models.
            mapping_names: the model types ``auto_class`` supports (checked before loading).
            kind: the pruned-model kind ("sequence_classification", "question_answering").
            configure: edits the config before loading (dense models), or checks it (pruned folders, whose head
                is already fixed).
        """
        location = self.resolved.location
        if is_pruned_folder(location):
            # lit_prune's own copy of the pruned classes: no remote code needed inside the package
            config = read_pruned_config(location)
            if configure is not None:
                configure(config)
            model = load_pruned(location, kind=kind, dtype=torch.float32)
        else:
            config = check_model_type(location, mapping_names, auto_class.__name__, "model.name_or_path",
                                      self.name_or_path, trust_remote_code=self.trust_remote_code)
            if configure is not None:
                configure(config)
            # dtype=float32: checkpoints stored in float16 (paraphrase-MiniLM-L3-v2) train and evaluate in float32
            model, info = auto_class.from_pretrained(location, config=config, dtype=torch.float32,
                                                     trust_remote_code=self.trust_remote_code,
                                                     output_loading_info=True)
            self.newly_initialized = sorted(info.get("missing_keys", []))
        # from_pretrained returns eval mode; Lightning keeps module modes as it finds them, so dropout would stay
        # off during fit
        return model.train()

    # ------------------------------------------------------------------------------------------- saving
    def save_pretrained(self, folder: str | Path) -> Path:
        """Save the model and its tokenizer as a Hugging Face folder, atomically.

        A physically pruned model is saved with its structure and modelling code (:func:`save_pruned`).
        """
        from transformers import AutoTokenizer

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(self.resolved.location)
        if get_adapter(self.model).is_compacted:
            return save_pruned(self.model, folder, tokenizer=tokenizer)
        with atomic_directory(folder) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        return folder

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self) -> None:
        if self.save_final_model and not self.trainer.fast_dev_run:
            self._save_final()

    @rank_zero_only
    def _save_final(self) -> None:
        root = Path(self.trainer.default_root_dir)
        folder = root / FINAL_MODEL_DIR
        self.save_pretrained(folder)
        log.info("saved the fine-tuned model to %s", folder)
        print(f"lit_prune: saved the fine-tuned model to {folder}")
        atomic_write_text(root / FIT_SUMMARY, json.dumps(self.fit_summary(), indent=2) + "\n")

    def fit_summary(self) -> dict[str, Any]:
        """What a finished ``fit`` produced: model, task, time, steps, last evaluation metrics, hardware."""
        trainer = self.trainer
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if name.startswith(("val/", "val_mm/"))}
        return {
            "model": self.name_or_path,
            "task": self.task,
            "seed": int(os.environ.get("PL_GLOBAL_SEED", -1)),
            "world_size": trainer.world_size,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "seconds": round(time.perf_counter() - getattr(self, "_fit_started", time.perf_counter()), 1),
            "metrics": metrics,
            "final_model": str(Path(trainer.default_root_dir) / FINAL_MODEL_DIR),
            "hardware": hardware_summary(self.device),
        }
