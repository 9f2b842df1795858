"""SMP: its pure parts (SMP-L and SMP-S counts on hand-made scores, the top-k mask and its straight-through gradient,
the cubic schedule, the score regulariser, the distillation loss), the export, the ready-made task modules, and
SMPCallback on a user's own LightningModule."""

from __future__ import annotations

import copy
import logging
import math

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_inputs, tiny_model
from lit_prune.core.compact import compact
from lit_prune.data.glue import GlueDataModule
from lit_prune.methods.smp import (WEIGHT_MASKS_FILE, SMPQuestionAnsweringModule, SMPSequenceClassificationModule,
                                   encoder_linears, global_counts, local_count, regularization_weight,
                                   score_regularizer, set_counts, sparse_copy, straight_through_mask,
                                   structure_from_zeros, topk_mask)
from lit_prune.prune.schedules import cubic_schedule
from lit_prune.report import REPORT_KEYS, read_report
from test_glue import write_rte


def test_local_counts_keep_the_top_fraction_of_each_matrix():
    assert local_count(100, 0.1) == 10
    assert local_count(100, 0.035) == 4  # 3.5 rounds up
    assert local_count(100, 1.0) == 100
    assert local_count(10, 0.01) == 1  # never an empty matrix
    scores = torch.tensor([[0.3, -1.0, 2.0], [0.1, 0.9, -0.2]])
    mask = topk_mask(scores, local_count(scores.numel(), 0.5))
    assert mask.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="keep=0"):
        local_count(10, 0)


def test_topk_mask_equals_a_stable_sort_with_ties_by_position():
    """The selection without a sort keeps exactly what a stable descending argsort keeps, ties included."""
    generator = torch.Generator().manual_seed(0)
    cases = [torch.randn(37, 11, generator=generator), torch.zeros(6, 7),
             torch.randint(-2, 3, (40, 9), generator=generator).float() * 0.02,  # few distinct values: many ties
             torch.tensor([[1.0, 1.0, 0.5], [1.0, 0.5, 1.0]])]
    for scores in cases:
        flat = scores.reshape(-1)
        order = torch.argsort(flat, descending=True, stable=True)
        for count in sorted({0, 1, 2, flat.numel() // 2, flat.numel() // 2 + 1, flat.numel() - 1, flat.numel()}):
            expected = torch.zeros_like(flat)
            expected[order[:count]] = 1.0
            mask = topk_mask(scores, count)
            assert torch.equal(mask, expected.view_as(scores)), (scores.shape, count)
            assert mask.sum() == count
    assert topk_mask(torch.tensor([[1.0, 1.0, 0.5], [1.0, 0.5, 1.0]]), 2).tolist() == [[1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="count=7: expected 0..6"):
        topk_mask(torch.zeros(2, 3), 7)


def test_global_counts_follow_relevance_and_sum_exactly():
    # relevance 1 : 2 : 3 : 2 at keep 0.25 of 4 matrices of 100: 100 weights shared 12.5 / 25 / 37.5 / 25
    counts = global_counts([1.0, 2.0, 3.0, 2.0], 100, 0.25)
    assert sum(counts) == 100
    assert counts == [13, 25, 37, 25]  # equal remainders: the earlier layer gets the extra weight
    # a ratio above 1 is capped and the excess shared among the others
    capped = global_counts([10.0, 1.0, 1.0], 100, 0.6)  # 180 weights; uncapped layer 0 would want 150
    assert capped[0] == 100 and sum(capped) == 180 and capped[1] == capped[2] == 40
    # equal relevance: SMP-S is SMP-L
    assert global_counts([5.0] * 4, 50, 0.2) == [10] * 4
    with pytest.raises(ValueError, match="relevance"):
        global_counts([1.0, 0.0], 10, 0.5)


def test_the_mask_passes_gradients_straight_through():
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    scores = torch.tensor([[0.2, 0.1], [-0.3, 0.4]], requires_grad=True)
    mask = straight_through_mask(scores, 2)
    assert mask.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    x = torch.tensor([1.0, 2.0])
    out = (weight * mask) @ x
    out.sum().backward()
    # d out / d mask_ij = W_ij · x_j, passed to the scores unchanged (pruned entries included)
    assert scores.grad.tolist() == [[1.0, -4.0], [3.0, 1.0]]


def test_cubic_schedule():
    assert cubic_schedule(0, 100, 0.1) == 1.0
    assert cubic_schedule(50, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.125)
    assert cubic_schedule(100, 100, 0.1) == pytest.approx(0.1)
    assert cubic_schedule(150, 100, 0.1) == pytest.approx(0.1)
    values = [cubic_schedule(t, 40, 0.03) for t in range(41)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_regularization_weight_rises_with_the_pruned_fraction_or_falls_with_the_kept_one():
    keeps = [cubic_schedule(t, 40, 0.1) for t in range(41)]
    rising = [regularization_weight(k, 0.1, "rising") for k in keeps]
    falling = [regularization_weight(k, 0.1, "falling") for k in keeps]
    assert rising[0] == 0 and rising[-1] == pytest.approx(1) and all(a < b for a, b in zip(rising, rising[1:]))
    assert falling[0] == pytest.approx(10) and falling[-1] == pytest.approx(1)
    # SMP's code: λ_R · (1 − (1 − t/N)³), the same cubic as the schedule
    assert rising[20] == pytest.approx(1 - 0.5 ** 3)
    assert regularization_weight(1.0, 1.0, "rising") == 1.0
    with pytest.raises(ValueError, match="regularization_ramp='up'"):
        regularization_weight(0.5, 0.1, "up")


@pytest.mark.parametrize("kind", ["classification", "regression", "question_answering"])
def test_distillation_is_smps_kl_at_t_squared(kind):
    """The shared distillation loss the modules use gives SMP's own numbers: KL(teacher ‖ student) at T times T²,
    batchmean; the MSE for regression; the mean of the start and end losses for question answering."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from lit_prune.prune.distill import distillation_loss, teacher_targets

    g = torch.Generator().manual_seed(0)
    t = 2.0
    config = SimpleNamespace(config=SimpleNamespace(problem_type="regression" if kind == "regression" else None))

    def kl(s, te):
        return F.kl_div(F.log_softmax(s / t, -1), F.softmax(te / t, -1), reduction="batchmean") * t * t

    if kind == "question_answering":
        s, te = ({n: torch.randn(4, 12, generator=g) for n in ("start_logits", "end_logits")} for _ in range(2))
        student, teacher = SimpleNamespace(**s), SimpleNamespace(**te)
        expected = (kl(s["start_logits"], te["start_logits"]) + kl(s["end_logits"], te["end_logits"])) / 2
    else:
        width = 1 if kind == "regression" else 3
        student, teacher = (SimpleNamespace(logits=torch.randn(5, width, generator=g), start_logits=None)
                            for _ in range(2))
        expected = (F.mse_loss(student.logits, teacher.logits) if kind == "regression"
                    else kl(student.logits, teacher.logits))
    assert torch.equal(distillation_loss(student, teacher_targets(teacher, config, t), t), expected)


def test_regularizer_is_the_mean_sigmoid():
    scores = [torch.zeros(2, 3), torch.full((4,), math.log(3.0))]  # σ = 0.5 and 0.75
    assert score_regularizer(scores).item() == pytest.approx(0.625)


# ------------------------------------------------------------------------------------------------ export and module


def test_emptied_rows_of_a_gated_ffn_without_biases_are_removed_exactly():
    """ModernBERT: a GeGLU neuron goes with its up row or its gate row (act(0) · gate = act(up) · 0 = 0, nothing to
    fold), value dims with their rows (no bias); under rotary embeddings a head keeps all its query/key dims."""
    model = tiny_model("modernbert")
    linears = encoder_linears(model)
    with torch.no_grad():
        for linear in linears.values():
            for layer in linear:
                layer.weight.mul_((torch.rand_like(layer.weight) > 0.3).float())
        linears["ffn_down"][0].weight[:, :5] = 0  # no output
        linears["ffn_up"][0].weight[5:10] = 0  # up rows of neurons 5..9
        linears["ffn_up"][0].weight[48 + 10:48 + 15] = 0  # gate rows of neurons 10..14
        linears["value"][1].weight[8:12] = 0  # 4 value dims of head 1
        linears["key"][0].weight[16:20] = 0  # half of head 2's key rows: the head keeps all its query/key dims
    inputs = tiny_inputs()
    expected = model(**inputs).logits
    pruned = copy.deepcopy(model)
    masks, folds = structure_from_zeros(pruned)
    assert folds == {"ffn": 10, "vo": 4}
    assert masks.ffn[0, :15].sum() == 0 and masks.vo[1, 1, :4].sum() == 0
    assert masks.qk[0, 2].sum() == 8
    compact(pruned, masks)
    torch.testing.assert_close(pruned(**inputs).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_emptied_rows_and_columns_are_removed_exactly(model_type):
    model = tiny_model(model_type)
    linears = encoder_linears(model)
    with torch.no_grad():
        for linear in linears.values():  # unstructured zeros everywhere
            for layer in linear:
                layer.weight.mul_((torch.rand_like(layer.weight) > 0.3).float())
        linears["ffn_down"][0].weight[:, :10] = 0  # neurons without output: removed
        linears["ffn_up"][0].weight[10:20] = 0  # neurons with a constant output: folded into the bias
        linears["attn_out"][1].weight[:, 0:8] = 0  # head 0 of layer 1 loses every value dim: the head goes
        linears["value"][1].weight[8:12] = 0  # value dims with a constant output: folded
        linears["key"][0].weight[16:24] = 0  # head 2 of layer 0: no query/key dim left, uniform attention kept
        linears["key"][1].weight[30:32] = 0
    inputs = tiny_inputs()
    expected = model(**inputs).logits
    pruned = copy.deepcopy(model)
    masks, folds = structure_from_zeros(pruned)
    assert folds == {"ffn": 10, "vo": 4}
    assert masks.ffn[0, :20].sum() == 0 and masks.head[1, 0] == 0
    assert masks.qk[0, 2].sum() == 1 and masks.vo[0, 2].sum() == 8  # head kept with one (zero-key) dim
    compact(pruned, masks)
    torch.testing.assert_close(pruned(**inputs).logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sparse_copy(pruned)(**inputs).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory, minilm_l3):
    from conftest import tiny_config
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_l3)
    folder = tmp_path_factory.mktemp("smp_pretrained")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert", vocab_size=tokenizer.vocab_size)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _fit(folder, tmp_path, **settings):
    L.seed_everything(0, verbose=False)
    module = SMPSequenceClassificationModule(str(folder), task="rte", latency_batch_size=4, latency_repeats=2,
                                             **settings)
    data = GlueDataModule(task="rte", data_dir=str(write_rte(tmp_path / "RTE", n=24)), tokenizer=str(folder),
                          batch_size=4)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path / "run",
                        max_epochs=2)
    return module, trainer, data


@pytest.mark.parametrize("masking", ["local", "global"])
def test_training_moves_scores_only_and_exports_a_smaller_model(pretrained_folder, tmp_path, masking):
    from transformers import AutoModelForSequenceClassification

    module, trainer, data = _fit(pretrained_folder, tmp_path, params_kept=0.2, masking=masking)
    frozen = {n: p.detach().clone() for n, p in module.model.named_parameters()
              if "scores" not in n and not n.startswith("classifier")}
    trainer.fit(module, datamodule=data)  # 12 steps; the export runs at the end of fit
    report = read_report(tmp_path / "run")
    assert set(REPORT_KEYS) <= set(report) and report["method"] == "smp"
    assert report["seed"] == 0  # no seed setting: seed_everything's
    assert report["params"]["kept"] == pytest.approx(0.2, abs=1e-3)  # exact counts (rounding per matrix)
    assert report["settings"]["masking"] == masking
    assert report["training"] == {"max_epochs": 2, "max_steps": -1, "accumulate_grad_batches": 1, "steps": 12,
                                  "schedule_steps": 12}
    masks = load_file(tmp_path / "run" / WEIGHT_MASKS_FILE)
    assert len(masks) == 6 * 2
    if masking == "local":
        assert all(abs(float(m.float().mean()) - 0.2) < 0.01 for m in masks.values())
    else:
        for kind in ("query", "ffn_up"):
            per_type = [masks[f"layer.{i}.{kind}"].float() for i in range(2)]
            assert sum(float(m.sum()) for m in per_type) == round(0.2 * sum(m.numel() for m in per_type))
    # the frozen weights did not move (the export applied the masks to them, nothing else)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "pruned_model",
                                                                  trust_remote_code=True).eval()
    state = reloaded.state_dict()
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.output.LayerNorm.weight"):
        assert torch.equal(state[name], frozen[name])
    assert report["latency"]["csr"]["pruned_ms"] > 0
    assert report["step_time"]["ratio"] > 0 and report["step_time"]["repeats"] == 5
    assert report["params"]["pruned"]["encoder_linear"] <= report["params"]["dense"]["encoder_linear"]


def test_squad_run_exports_a_question_answering_model_that_matches_the_masked_one(pretrained_folder, tmp_path):
    """configs/smp/squad_v1.yaml's module end to end on synthetic SQuAD: a new span head trains with the scores, the
    report carries SQuAD's metrics, and the compacted folder loads as a plain question-answering model whose span
    logits equal the masked model's at the end of training."""
    from test_squad import SMALL, write_squad
    from transformers import AutoModelForQuestionAnswering

    from lit_prune.data.squad import SquadDataModule

    L.seed_everything(0, verbose=False)
    # local masking: the final counts do not depend on the scores, so the end-of-training masks are the exported ones
    module = SMPQuestionAnsweringModule(str(pretrained_folder), task="squad_v1", params_kept=0.1, masking="local",
                                        latency_batch_size=4, latency_repeats=2)
    data = SquadDataModule(task="squad_v1", data_dir=str(write_squad(tmp_path / "squad", "v1.1", n_articles=6,
                                                                      train_articles=3)),
                           tokenizer=str(pretrained_folder), **SMALL)
    head_before = module.model.qa_outputs.weight.detach().clone()
    embeddings = module.model.bert.embeddings.word_embeddings.weight.detach().clone()
    dense_params = sum(p.numel() for n, p in module.model.named_parameters() if "scores" not in n)
    masked = {}

    class MaskedOutputs(L.Callback):  # on_train_end runs before the module's on_fit_end, which exports
        def on_train_end(self, trainer, pl_module):
            set_counts(pl_module.score_masks, pl_module.params_kept, pl_module.masking)  # the last step kept a bit more
            batch = pl_module._model_inputs(next(iter(trainer.datamodule.val_dataloader())))
            pl_module.model.eval()
            with torch.no_grad():
                masked["batch"], masked["out"] = batch, pl_module.model(**batch)
            pl_module.model.train()

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path / "run",
                        max_steps=8, limit_val_batches=2, callbacks=[MaskedOutputs()])
    trainer.fit(module, datamodule=data)
    report = read_report(tmp_path / "run")
    assert report["method"] == "smp" and report["task"] == "squad_v1"
    assert 0.0 <= report["metrics"]["pruned"]["exact_match"] <= report["metrics"]["pruned"]["f1"] <= 100.0
    assert report["params"]["kept"] == pytest.approx(0.1, abs=1e-3)
    assert report["training"]["steps"] == 8 and report["training"]["schedule_steps"] == 8
    assert not torch.equal(module.model.qa_outputs.weight, head_before)  # the span head trained

    reloaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "run" / "pruned_model",
                                                             trust_remote_code=True).eval()
    assert torch.equal(reloaded.state_dict()["bert.embeddings.word_embeddings.weight"], embeddings)  # frozen
    assert sum(p.numel() for p in reloaded.parameters()) < dense_params  # emptied rows and columns are gone
    with torch.no_grad():
        got = reloaded(**masked["batch"])
    torch.testing.assert_close(got.start_logits, masked["out"].start_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.end_logits, masked["out"].end_logits, atol=1e-5, rtol=1e-5)


def test_straight_through_training_changes_the_scores(pretrained_folder, tmp_path):
    """... and the outputs go to output_dir (not the Trainer's folder), with the seed given in the report."""
    module, trainer, data = _fit(pretrained_folder, tmp_path, params_kept=0.5, output_dir=str(tmp_path / "out"),
                                 seed=7)
    before = [s.detach().clone() for s in module._scores()]
    trainer.fit(module, datamodule=data)
    assert any(not torch.equal(b, a) for b, a in zip(before, module._scores()))
    report = read_report(tmp_path / "out")
    assert report["seed"] == 7 and report["pruned_model"] == str(tmp_path / "out" / "pruned_model")
    assert (tmp_path / "out" / WEIGHT_MASKS_FILE).is_file() and not (tmp_path / "run" / WEIGHT_MASKS_FILE).exists()


def test_final_hold_reaches_the_budget_early_and_keeps_it(pretrained_folder, tmp_path):
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append((module.keep, module.kept_fraction()))

    module, trainer, data = _fit(pretrained_folder, tmp_path, params_kept=0.25, final_hold=0.5, time_steps=0)
    trainer.callbacks.append(Record())
    trainer.fit(module, datamodule=data)  # 12 steps: the cubic schedule over the first 6, then 6 at the budget
    keeps = [keep for keep, _ in seen]
    assert len(keeps) == 12 and keeps[0] == 1.0
    assert all(a > b for a, b in zip(keeps[:6], keeps[1:7]))
    assert keeps[6:] == [pytest.approx(0.25)] * 6
    assert all(kept == pytest.approx(0.25, abs=1e-3) for _, kept in seen[6:])
    assert read_report(tmp_path / "run")["settings"]["final_hold"] == 0.5


def test_head_warmup_trains_the_classifier_alone_then_the_schedule_runs(pretrained_folder, tmp_path):
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]
            seen.append((module.keep, lrs, [s.detach().clone() for s in module._scores()],
                         module.model.classifier.weight.detach().clone()))

    module, trainer, data = _fit(pretrained_folder, tmp_path, params_kept=0.25, head_warmup_steps=4, time_steps=0)
    initial = module.model.classifier.weight.detach().clone()
    trainer.callbacks.append(Record())
    trainer.fit(module, datamodule=data)  # 12 steps: 4 of the head alone, the cubic schedule over the other 8
    keeps = [keep for keep, *_ in seen]
    assert keeps[:5] == [1.0] * 5 and all(a > b for a, b in zip(keeps[4:-1], keeps[5:]))
    assert keeps[-1] == pytest.approx(0.25 + 0.75 * (1 / 8) ** 3)  # step 11: 7 of the schedule's 8 steps done
    # the scores stay at 0 through the warm-up (no update, no optimiser state), the classifier trains
    assert all(torch.count_nonzero(s) == 0 for _, _, scores, _ in seen[:4] for s in scores)
    assert not torch.equal(seen[3][3], initial)
    state = trainer.optimizers[0].state
    assert all(state[s]["step"] == 8 for s in module._scores())
    assert any(torch.count_nonzero(s) > 0 for s in seen[4][2])
    # the scores' learning rate: 0 in the warm-up, then the full 2e-2 decaying linearly over the 8 steps after it;
    # the head's decays over all 12 (the rates seen after each step are those of the next one)
    assert [lrs[0] for _, lrs, _, _ in seen[:3]] == [0.0] * 3
    assert seen[3][1][0] == pytest.approx(2e-2) and seen[4][1][0] == pytest.approx(2e-2 * 7 / 8)
    assert seen[0][1][1] == pytest.approx(1e-3 * 11 / 12)
    assert read_report(tmp_path / "run")["settings"]["head_warmup_steps"] == 4


def test_head_warmup_must_leave_schedule_steps(pretrained_folder, tmp_path):
    module, trainer, data = _fit(pretrained_folder, tmp_path, params_kept=0.25, head_warmup_steps=9,
                                 final_hold=0.25, time_steps=0)
    with pytest.raises(ValueError, match=r"head_warmup_steps=9: expected fewer than the 9 steps of the sparsity "
                                         r"schedule"):
        trainer.fit(module, datamodule=data)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("ramp, weight", [("falling", 4.0), ("rising", 0.0)])
def test_the_loss_weighs_the_regulariser_by_the_ramp(pretrained_folder, tmp_path, ramp, weight):
    """At the first step (v = 1, scores 0, so the mean σ is 1/2) the loss adds λ_R · w · 1/2, w = 1 / v_f falling
    and 0 rising."""
    module, _, data = _fit(pretrained_folder, tmp_path, params_kept=0.25, regularization=400.0,
                           regularization_ramp=ramp)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.model.eval()  # no dropout: the same task loss twice
    module.set_counts_for(0)  # what the batch hook does before the first step
    loss = module.training_step(batch, 0)
    task_loss = module.model(**batch).loss
    assert module.keep == 1.0
    assert (loss - task_loss).item() == pytest.approx(400.0 * weight * 0.5, abs=1e-3)


def test_bad_smp_settings(pretrained_folder):
    with pytest.raises(ValueError) as error:
        SMPSequenceClassificationModule(str(pretrained_folder), task="rte", params_kept=0, masking="row",
                                        regularization=-1, regularization_ramp="up", final_hold=1.0, head="teacher",
                                        head_warmup_steps=10)
    message = str(error.value)
    for part in ("params_kept=0", "masking='row'", "regularization=-1", "regularization_ramp='up'", "final_hold=1.0",
                 "both need teacher", "head_warmup_steps=10: trains a new classifier alone before the scores, so it "
                 "needs head='trainable' (head='teacher' is frozen)"):
        assert part in message
    with pytest.raises(ValueError, match=r"head_warmup_steps=-1: expected an integer >= 0"):
        SMPSequenceClassificationModule(str(pretrained_folder), task="rte", head_warmup_steps=-1)


def test_a_missing_teacher_is_named_before_the_student_loads(tmp_path, monkeypatch):
    from lit_prune.assets import AssetNotFoundError

    def no_loading(*args, **kwargs):
        raise AssertionError("the student was loaded before the teacher was checked")

    monkeypatch.setattr(SMPSequenceClassificationModule, "_load_model", no_loading)
    missing = str(tmp_path / "finetune" / "final_model")
    with pytest.raises(AssetNotFoundError, match=r"teacher='.*final_model': no such folder.*configs/finetune/<task>"
                                                  r".yaml.*head='trainable', distill=false, teacher=null"):
        SMPSequenceClassificationModule(str(tmp_path), task="rte", head="teacher", teacher=missing)
    with pytest.raises(AssetNotFoundError, match="teacher='runs/nowhere/final_model': no such folder"):
        SMPQuestionAnsweringModule(str(tmp_path), task="squad_v1", head="teacher", teacher="runs/nowhere/final_model")


def test_teacher_head_and_distillation(pretrained_folder, tmp_path):
    """head='teacher' copies and freezes the teacher's classifier; distillation trains against the teacher; the
    report scores the teacher as the dense reference."""
    from transformers import AutoModelForSequenceClassification

    teacher_dir = tmp_path / "teacher"
    L.seed_everything(1, verbose=False)
    teacher = AutoModelForSequenceClassification.from_pretrained(pretrained_folder, num_labels=2)
    teacher.save_pretrained(teacher_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(pretrained_folder).save_pretrained(teacher_dir)
    module, trainer, data = _fit(pretrained_folder, tmp_path, params_kept=0.3, head="teacher", distill=True,
                                 teacher=str(teacher_dir))
    classifier = teacher.classifier.weight.detach().clone()
    assert torch.equal(module.model.classifier.weight, classifier)
    assert not module.model.classifier.weight.requires_grad
    trainer.fit(module, datamodule=data)
    assert torch.equal(module.model.classifier.weight, classifier)  # frozen through training
    report = read_report(tmp_path / "run")
    assert report["teacher"] == str(teacher_dir) and set(report["metrics"]["dense"]) == {"accuracy"}
    assert report["settings"]["distill"] is True and report["settings"]["head"] == "teacher"


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory, minilm_l3):
    """A tiny BERT saved with its masked-LM head, and MiniLM's tokenizer."""
    from conftest import tiny_config
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_l3)
    folder = tmp_path_factory.mktemp("smp_mlm")
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config("bert", vocab_size=tokenizer.vocab_size)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_mlm_head_classifies_through_frozen_label_words(mlm_folder, tmp_path):
    """head='mlm' (the paper's classifier): the checkpoint's own MLM head, frozen, scores RTE's label words "Yes" and
    "No" at the first token (the inputs carry no mask token); only the scores train; the smaller folder loads with
    plain transformers as the same classifier."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForMaskedLM

    module, trainer, data = _fit(mlm_folder, tmp_path, params_kept=0.3, head="mlm")
    tokenizer = AutoTokenizer.from_pretrained(mlm_folder)
    ids = tokenizer.convert_tokens_to_ids(["yes", "no"])
    assert module.label_words == ["Yes", "No"] and module.model.config.lit_prune_label_words["ids"] == ids
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("scores" in n for n in trainable)  # no new task parameters
    batch = {k: v for k, v in tokenizer(["a b c", "it rains"], padding=True, return_tensors="pt").items()}
    mlm = BertForMaskedLM.from_pretrained(mlm_folder).eval()
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.model(**batch).logits, mlm(**batch).logits[:, 0, ids])
    module.model.train()
    head = {n: p.detach().clone() for n, p in module.model.named_parameters() if n.startswith("cls.")}
    trainer.fit(module, datamodule=data)
    assert all(torch.equal(p, head[n]) for n, p in module.model.named_parameters() if n in head)
    report = read_report(tmp_path / "run")
    assert report["settings"]["head"] == "mlm" and report["settings"]["label_words"] == ["Yes", "No"]
    assert set(report["metrics"]["pruned"]) == {"accuracy"}
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "pruned_model",
                                                                  trust_remote_code=True).eval()
    assert type(reloaded).__name__ == "LitPrunedBertForLabelWordClassification"
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, module.model(**batch).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("settings, message", [
    ({"head": "mlm"}, "carries no masked-LM head (its cls.predictions."),
    ({"head": "mlm", "label_words": ["Yes"]}, "label_words=['Yes']: expected 2 word(s), one per label of rte"),
    ({"head": "trainable", "label_words": ["Yes", "No"]}, "used by head='mlm' only (head='trainable')"),
])
def test_mlm_head_needs_an_mlm_checkpoint_and_one_word_per_label(pretrained_folder, settings, message):
    from transformers.utils import logging as transformers_logging

    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    records, verbosity = Records(), transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_warning()
    transformers_logging.get_logger().addHandler(records)
    try:
        with pytest.raises(ValueError) as error:
            SMPSequenceClassificationModule(str(pretrained_folder), task="rte", **settings)
        # head='mlm': transformers' own load report (the MLM head weights it would start random) is not printed
        # before our error; a trainable head's report (its new classifier) is transformers' to print
        assert any("LOAD REPORT" in m for m in records.messages) == (settings["head"] != "mlm")
        assert transformers_logging.get_verbosity() == transformers_logging.WARNING
    finally:
        transformers_logging.get_logger().removeHandler(records)
        transformers_logging.set_verbosity(verbosity)
    assert message in str(error.value)


def test_label_words_must_be_single_distinct_tokens(mlm_folder):
    with pytest.raises(ValueError, match=r"'antidisestablishmentarianism' is 8 tokens \(\['anti', '##dis', "):
        SMPSequenceClassificationModule(str(mlm_folder), task="rte", head="mlm",
                                        label_words=["Yes", "antidisestablishmentarianism"])
    with pytest.raises(ValueError, match="two words share a token"):
        SMPSequenceClassificationModule(str(mlm_folder), task="rte", head="mlm", label_words=["Yes", "yes"])


def test_mlm_head_is_for_glue_only(mlm_folder):
    with pytest.raises(ValueError, match="head='mlm': offered for GLUE tasks only"):
        SMPQuestionAnsweringModule(str(mlm_folder), task="squad_v1", head="mlm")


@pytest.mark.slow  # train.py with two DDP processes (26 s alone on a busy 2-core machine)
def test_recipe_under_ddp(minilm_l3, tmp_path):
    """configs/smp/mrpc.yaml on the real paraphrase-MiniLM-L3-v2, briefly, with two processes: they end with the same
    weight masks (checked by digest), and the smaller folder loads with plain transformers. The recipe's teacher (the
    dense reference) is a stand-in: the same checkpoint with a seeded classifier; the recipe's head trains."""
    from test_cli import run_train
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_pretrained(minilm_l3, num_labels=2).save_pretrained(teacher)
    out = tmp_path / "ddp"
    result = run_train("fit", "--config", "configs/smp/mrpc.yaml", "--model.name_or_path", str(minilm_l3),
                       "--model.teacher", str(teacher),
                       "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
                       "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
                       "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
                       "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                       "--data.max_train_samples", "64", "--data.max_seq_length", "64", "--data.batch_size", "8",
                       "--model.params_kept", "0.1", "--model.latency_batch_size", "8", "--model.latency_repeats", "2",
                       timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = read_report(out)
    assert report["task"] == "mrpc" and report["params"]["kept"] == pytest.approx(0.1, abs=1e-3)
    assert report["world_size"] == 2 and report["ranks"]["weight_masks_identical"] is True
    assert set(report["metrics"]["pruned"]) == {"accuracy", "f1"}
    assert report["step_time"] is None  # timed in a single process only
    assert report["settings"]["head"] == "trainable"
    model = AutoModelForSequenceClassification.from_pretrained(out / "pruned_model", trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == report["params"]["pruned"]["total"]
    teacher_head = AutoModelForSequenceClassification.from_pretrained(teacher).classifier.weight
    assert model.classifier.weight.shape == teacher_head.shape
    assert not torch.equal(model.classifier.weight, teacher_head)  # the student's own head, not the teacher's


def test_non_finite_scores_stop_the_run(pretrained_folder):
    module = SMPSequenceClassificationModule(str(pretrained_folder), task="rte")
    with torch.no_grad():
        module.score_masks["ffn_up"][1].scores[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="scores of layer 1's ffn_up matrix are not finite"):
        set_counts(module.score_masks, 0.5, "global")


# ------------------------------------------------------------------------------------------------ the callback
class UserClassifier(L.LightningModule):
    """A user's own module (nothing of lit_prune's): a Hugging Face classifier, their steps, their optimiser."""

    steps = 0

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net.train()

    def training_step(self, batch, batch_idx):
        UserClassifier.steps += 1
        return self.net(**batch).loss

    def validation_step(self, batch, batch_idx):
        logits = self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        self.log("val_acc", (logits.argmax(-1) == batch["labels"]).float().mean(), batch_size=len(batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def user_loaders(train: int = 16, val: int = 8, batch_size: int = 4):
    """Plain dataloaders of dict batches (ids, attention mask with padding, labels)."""
    from torch.utils.data import DataLoader

    def examples(count, seed):
        inputs = tiny_inputs(batch=count, seq=10, seed=seed, pad_last=0)
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(4, 11, (count,), generator=g)
        rows = []
        for i in range(count):
            mask = (torch.arange(10) < lengths[i]).long()
            rows.append({"input_ids": inputs["input_ids"][i] * mask, "attention_mask": mask,
                         "labels": torch.tensor(int(inputs["input_ids"][i, 0]) % 2)})
        return rows

    train_rows = examples(train, 1)
    return (DataLoader(train_rows, batch_size=batch_size), DataLoader(examples(val, 2), batch_size=batch_size),
            train_rows)


def user_trainer(*callbacks, **settings):
    return L.Trainer(**{"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                        "enable_progress_bar": False, "enable_model_summary": False, "max_epochs": 2,
                        "num_sanity_val_steps": 0, "callbacks": list(callbacks), **settings})


@pytest.mark.filterwarnings("ignore:lit_prune. no tokenizer was found")
def test_callback_prunes_a_users_own_module(tmp_path):
    """SMPCallback with only its budget on a user's LightningModule around a tiny random BERT classifier, fed plain
    dataloaders of dict batches: the scores train in their own parameter group of the user's AdamW, the encoder
    weights change only by the masks, and the smaller folder loads with plain transformers as the same model."""
    from transformers import AutoModelForSequenceClassification

    from lit_prune.methods import SMPCallback
    from lit_prune.methods.smp.scores import encoder_linears, head_parameters, score_tensors

    L.seed_everything(0, verbose=False)
    module = UserClassifier(tiny_model("bert"))
    original = copy.deepcopy(module.net)
    train, val, rows = user_loaders()
    callback = SMPCallback(params_kept=0.3, output_dir=str(tmp_path / "out"), latency_batch_size=4,
                           latency_repeats=2)
    trainer = user_trainer(callback)
    trainer.fit(module, train, val)
    assert trainer.global_step == 8

    # the user's AdamW: the scores left its group for their own (lr 2e-2, no weight decay)
    groups = trainer.optimizers[0].param_groups
    scores = score_tensors(callback.score_masks)
    assert len(groups) == 2 and groups[1]["params"] == scores
    assert groups[1]["lr"] == 2e-2 and groups[1]["weight_decay"] == 0.0 and groups[0]["lr"] == 1e-3
    assert all(torch.count_nonzero(s) > 0 for s in scores)  # every score matrix trained

    report = read_report(tmp_path / "out")
    assert report["method"] == "smp" and set(REPORT_KEYS) <= set(report)
    assert report["params"]["kept"] <= 0.3 + 1e-3 and report["params"]["kept"] == pytest.approx(0.3, abs=1e-3)
    assert report["training"]["steps"] == 8 and report["training"]["schedule_steps"] == 8
    assert set(report["metrics"]["dense"]) == set(report["metrics"]["pruned"]) == {"acc"}  # the user's val_acc
    tokens = sum(int(row["attention_mask"].sum()) for row in rows)
    assert report["flops"]["seq_len_from"] == "training batches"
    assert report["flops"]["seq_len"] == pytest.approx(tokens / len(rows))
    assert report["latency"]["csr"]["pruned_ms"] > 0 and report["warnings"] == []
    assert report["settings"]["train_head"] is True and report["settings"]["masking"] == "global"

    # the folder loads with plain transformers and gives the in-memory (compacted) model's logits
    inputs = tiny_inputs()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "pruned_model",
                                                                  trust_remote_code=True).eval()
    module.net.eval()
    with torch.no_grad():
        pruned_logits = module.net(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, pruned_logits)

    # the encoder's weights changed only by the masks: the original weights times the saved masks, with the
    # trained head, are the pruned model
    masks = load_file(tmp_path / "out" / WEIGHT_MASKS_FILE)
    assert sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) == \
        pytest.approx(report["params"]["kept"])
    expected = copy.deepcopy(original).eval()
    with torch.no_grad():
        for kind, linears in encoder_linears(expected).items():
            for i, linear in enumerate(linears):
                linear.weight.mul_(masks[f"layer.{i}.{kind}"].float())
        trained = dict(module.net.named_parameters())
        for name, parameter in head_parameters(expected):
            parameter.copy_(trained[name])
        torch.testing.assert_close(expected(**inputs).logits, pruned_logits, rtol=1e-4, atol=1e-5)
    state, before = module.net.state_dict(), original.state_dict()
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.output.LayerNorm.weight"):
        assert torch.equal(state[name], before[name])
    assert not torch.equal(state["classifier.weight"], before["classifier.weight"])  # train_head: the head learnt


@pytest.mark.parametrize("make, settings, message", [
    (lambda: tiny_model("bert"), {"params_kept": 0},
     r"SMPCallback: params_kept=0: expected a fraction of the weights in \(0, 1\]"),
    (lambda: tiny_model("bert"), {"params_kept": 0.3, "masking": "rows", "scores_learning_rate": 0},
     r"masking='rows': expected 'global' \(SMP-S\) or 'local' \(SMP-L\); scores_learning_rate=0: expected a number"),
    (lambda: tiny_model("bert", kind="base"), {"params_kept": 0.3},
     r"BertModel has no task head .*AutoModelForSequenceClassification"),
])
def test_callback_refuses_at_setup_before_any_training(tmp_path, make, settings, message):
    from lit_prune.methods import SMPCallback
    from lit_prune.methods.smp.scores import has_scores

    module = UserClassifier(make())
    train, val, _ = user_loaders()
    UserClassifier.steps = 0
    with pytest.raises(ValueError, match=message):
        user_trainer(SMPCallback(output_dir=str(tmp_path), **settings)).fit(module, train, val)
    assert UserClassifier.steps == 0 and not any(tmp_path.iterdir())
    assert not has_scores(module.net)  # nothing was installed


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_callback_resumes_from_a_checkpoint_as_if_never_stopped(tmp_path):
    """A fit stopped after its first epoch and resumed from the checkpoint ends with the same scores, masks and
    pruned model as one that ran through (the scores and the user's optimiser state are in the module's checkpoint,
    the schedule's length in the callback's)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_prune.methods import SMPCallback
    from lit_prune.methods.smp.scores import score_tensors

    def run(folder, *extra, ckpt_path=None):
        L.seed_everything(0, verbose=False)
        module = UserClassifier(tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        train, val, _ = user_loaders()
        callback = SMPCallback(params_kept=0.25, output_dir=str(folder), evaluate=False, latency_batch_size=0,
                               save_model=False, seq_len=8)
        trainer = user_trainer(callback, *extra, enable_checkpointing=bool(extra), default_root_dir=folder)
        trainer.fit(module, train, val, ckpt_path=ckpt_path)
        return callback, module

    class Crash(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                raise RuntimeError("killed")

    through, _ = run(tmp_path / "through")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "stopped", checkpoint, Crash())
    resumed, _ = run(tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    assert resumed.total_steps == through.total_steps == 8
    for a, b in zip(score_tensors(resumed.score_masks), score_tensors(through.score_masks)):
        torch.testing.assert_close(a, b)
    assert load_file(tmp_path / "resumed" / WEIGHT_MASKS_FILE).keys() == load_file(
        tmp_path / "through" / WEIGHT_MASKS_FILE).keys()
    for name, mask in load_file(tmp_path / "resumed" / WEIGHT_MASKS_FILE).items():
        assert torch.equal(mask, load_file(tmp_path / "through" / WEIGHT_MASKS_FILE)[name]), name
    assert read_report(tmp_path / "resumed")["training"]["steps"] == 8


def test_callback_adds_the_regularizer_gradient_once_per_optimiser_step(tmp_path):
    """The regulariser λ_R · (v_t / v_f) · R̄(S) reaches the scores as a gradient added after the user's backward:
    at the first step (v = 1, scores 0, σ' = 1/4) each score's gradient grows by λ_R / v_f / 4 / (numel · matrices),
    once per optimiser step whatever the gradient accumulation."""
    from lit_prune.methods import SMPCallback
    from lit_prune.methods.smp.scores import score_tensors

    def first_step_grads(regularization):
        grads = []

        class Record(L.Callback):  # after SMPCallback: sees the gradients the optimiser steps with
            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                if not grads:
                    grads.extend(s.grad.clone() for s in score_tensors(callback.score_masks))

        L.seed_everything(0, verbose=False)
        module = UserClassifier(tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        train, val, _ = user_loaders()
        callback = SMPCallback(params_kept=0.25, regularization=regularization, output_dir=str(tmp_path),
                               evaluate=False, latency_batch_size=0, save_model=False)
        trainer = user_trainer(callback, Record(), max_steps=1, accumulate_grad_batches=2)
        trainer.fit(module, train, val)
        return grads, trainer

    plain, _ = first_step_grads(0.0)
    regularized, trainer = first_step_grads(400.0)
    count = len(plain)
    assert count == 6 * 2 and trainer.callback_metrics["smp/regularizer"] == pytest.approx(0.5)
    for without, with_ in zip(plain, regularized):
        torch.testing.assert_close(with_ - without, torch.full_like(without, 400 / 0.25 / 4 / (without.numel() * count)))


def test_callback_extends_the_users_lr_schedule_to_the_scores(tmp_path):
    """A user's LambdaLR warm-up moves the scores' rate too, as a fraction of scores_learning_rate."""
    from lit_prune.methods import SMPCallback

    class Warmup(UserClassifier):
        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    seen = []

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    train, val, _ = user_loaders()
    callback = SMPCallback(params_kept=0.5, output_dir=str(tmp_path), evaluate=False, latency_batch_size=0,
                           save_model=False)
    user_trainer(callback, Rates(), max_epochs=1).fit(Warmup(tiny_model("bert")), train, val)
    assert [user for user, _ in seen] == pytest.approx([1e-3 / 4, 1e-3 / 2, 3e-3 / 4, 1e-3])
    assert [scores for _, scores in seen] == pytest.approx([2e-2 / 4, 2e-2 / 2, 6e-2 / 4, 2e-2])
