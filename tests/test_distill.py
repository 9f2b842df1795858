"""Distillation losses against hand computations, and the distilled task modules on tiny models."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from lit_prune.data.glue import GlueDataModule
from lit_prune.prune.distill import HiddenStateMatcher, hidden_mse, soft_cross_entropy
from lit_prune.tasks.distilled import DistilledSequenceClassificationModule
from test_glue import write_rte
from test_tasks import tiny_folders  # noqa: F401  (a fixture)


def test_soft_cross_entropy_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    t = 8.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        z_t = sum(math.exp(v / t) for v in t_row)
        z_s = sum(math.exp(v / t) for v in s_row)
        expected -= sum(math.exp(tv / t) / z_t * (sv / t - math.log(z_s)) for sv, tv in zip(s_row, t_row))
    assert soft_cross_entropy(student, teacher, t).item() == pytest.approx(expected / 2, rel=1e-6)
    # masked classes leave both softmaxes, and nothing becomes NaN
    mask = torch.tensor([[True, True, False], [True, True, True]])
    masked = soft_cross_entropy(student, teacher, 1.0, mask)
    reference = (soft_cross_entropy(student[:1, :2], teacher[:1, :2], 1.0)
                 + soft_cross_entropy(student[1:], teacher[1:], 1.0)) / 2
    assert torch.isfinite(masked) and masked.item() == pytest.approx(reference.item(), rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        soft_cross_entropy(student, teacher[:, :2])


def test_hidden_mse_ignores_padding():
    student, teacher = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    teacher[1, 2] = 100.0  # a padding token
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert hidden_mse(student, teacher, mask).item() == pytest.approx(1.0)
    assert hidden_mse(student, teacher).item() > 1.0


def test_projections_start_at_the_identity():
    matcher = HiddenStateMatcher(4, 4, layers=[0, 2])
    states = [torch.randn(2, 3, 4) for _ in range(3)]
    assert matcher(states, states).item() == pytest.approx(0.0, abs=1e-12)
    other = [s + 1 for s in states]
    assert matcher(states, other).item() == pytest.approx(2.0)  # two layers, MSE 1 each


def test_distilled_module_trains_the_student_only(tiny_folders, tmp_path):  # noqa: F811
    folder = tiny_folders["bert"]
    module = DistilledSequenceClassificationModule(str(folder), task="rte", learning_rate=1e-3)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    assert not any(key.startswith("_teacher") or "teacher" in key for key in module.state_dict())
    assert len(module.hidden_matcher.projections) == module.model.config.num_hidden_layers + 1
    assert all(not p.requires_grad for p in module.teacher.parameters())

    data = GlueDataModule(task="rte", data_dir=str(write_rte(tmp_path / "RTE")), tokenizer=str(folder), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, max_steps=3)
    trainer.fit(module, datamodule=data)
    assert all(torch.equal(teacher_before[k], v) for k, v in module.teacher.state_dict().items())
    assert not module.teacher.training  # out of the module tree: fit's train() never reaches it
    assert any(not torch.equal(student_before[k], v) for k, v in module.model.state_dict().items())
    assert (tmp_path / "final_model" / "model.safetensors").is_file()
    assert trainer.callback_metrics["train/kd_loss"] > 0 and "train/hidden_loss" in trainer.callback_metrics


def test_distilled_module_in_eval_mode_matches_teacher_loss(tiny_folders):  # noqa: F811
    """With dropout off, the first step's loss is exactly the teacher entropy (kd) plus zero hidden loss."""
    module = DistilledSequenceClassificationModule(str(tiny_folders["bert"]), task="rte")
    module.model.eval()
    batch = {"input_ids": torch.randint(5, 100, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long),
             "token_type_ids": torch.zeros(3, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 0])}
    module.log = lambda *args, **kwargs: None  # no trainer attached
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        logits = module.teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert loss.item() == pytest.approx(soft_cross_entropy(logits, logits, 8.0).item(), rel=1e-5)
    assert module.prediction_loss.item() == pytest.approx(loss.item())


def test_bad_distillation_settings(tiny_folders):  # noqa: F811
    with pytest.raises(ValueError) as error:
        DistilledSequenceClassificationModule(str(tiny_folders["bert"]), task="rte", temperature=0, kd_weight=-1,
                                              hidden_layers=[0, 7])
    message = str(error.value)
    assert "temperature=0" in message and "kd_weight=-1" in message and "hidden_layers=[0, 7]: [7] outside 0..2" \
        in message
    with pytest.raises(ValueError, match="prediction loss would be empty"):
        DistilledSequenceClassificationModule(str(tiny_folders["bert"]), task="rte", kd_weight=0)
