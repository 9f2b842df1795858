"""GRAIN on tiny models: layout counts (weights only), the cubic schedule, importance and its EMA against a hand
computation from weight gradients, the structure regulariser, the global selection under a density budget; the
callback with lit_prune's distilled modules (resume, ablation, DDP on two nodes) and on a user's plain
LightningModule (importance distilled from a frozen copy, mistakes refused at setup, DDP)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import REPO, tiny_config, tiny_inputs, tiny_model
from lit_prune.core.arch import get_adapter
from lit_prune.core.flops import count_parameters, masks_parameters
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks
from lit_prune.data.glue import GlueDataModule
from lit_prune.methods.grain import GrainCallback, GrainImportance, GrainLayout, check_density, select_units
from lit_prune.prune.distill import soft_cross_entropy
from lit_prune.prune.schedules import cubic_schedule
from lit_prune.tasks.distilled import DistilledSequenceClassificationModule
from lit_prune.report import REPORT_KEYS, read_report
from test_glue import write_rte


@pytest.fixture
def model():
    return tiny_model("bert")


def test_layout_counts_match_the_core(tiny_model_type):
    model = tiny_model(tiny_model_type)
    layout = GrainLayout.from_model(model)
    # the budget counts weights only (biases excluded): params_kept's one meaning across methods
    assert layout.dense_parameters == count_parameters(model)["encoder_linear_weights"]
    masks = PruningMasks.ones(2, 4, 8, 48)
    if layout.qk_units:
        masks.qk[0, 1, :3] = 0
    masks.vo[1, 2] = 0  # a dead head: its query units count as removed too
    masks.ffn[1, :10] = 0
    accounting = get_adapter(model).accounting  # a gated FFN's neurons hold 3d weights
    assert layout.kept_parameters(masks) == masks_parameters(masks, **accounting)["encoder_linear_weights"]
    assert layout.unit_fields("intra") == (("qk", "vo", "ffn") if tiny_model_type != "modernbert" else ("vo", "ffn"))


def test_cubic_schedule_at_chosen_steps():
    # T = 100: density 1 up to step 20, the target from step 40, cubic in between
    assert cubic_schedule(0, 100, 0.1, start=0.2, end=0.4) == 1.0
    assert cubic_schedule(20, 100, 0.1, start=0.2, end=0.4) == 1.0
    assert cubic_schedule(30, 100, 0.1, start=0.2, end=0.4) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)
    assert cubic_schedule(35, 100, 0.1, start=0.2, end=0.4) == pytest.approx(0.1 + 0.9 * 0.25 ** 3)
    assert cubic_schedule(40, 100, 0.1, start=0.2, end=0.4) == 0.1
    assert cubic_schedule(99, 100, 0.1, start=0.2, end=0.4) == 0.1
    values = [cubic_schedule(t, 100, 0.05, start=0.2, end=0.4) for t in range(100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="final=0"):
        cubic_schedule(1, 10, 0, start=0.2, end=0.4)
    with pytest.raises(ValueError, match="start=0.5, end=0.4"):
        cubic_schedule(1, 10, 0.5, start=0.5, end=0.4)


def _loss(model, masks):
    inputs = tiny_inputs()
    with apply_masks(model, masks):
        return model(**inputs, labels=torch.tensor([0, 1, 0])).loss


def test_mask_gradients_are_the_sums_of_grad_times_weight(model):
    """|∂L/∂m| equals |Σ grad ⊙ w| over the W_Q row and bias (query unit), the W_O column (value unit) and the W_2
    column (neuron): the reference code's importance."""
    masks = PruningMasks.from_model(model).requires_grad_(True, fields=("qk", "vo", "ffn"))
    loss = _loss(model, masks)
    grads = dict(zip(("qk", "vo", "ffn"), torch.autograd.grad(loss, [masks.qk, masks.vo, masks.ffn],
                                                               retain_graph=True)))
    model.zero_grad()
    loss.backward()
    adapter = get_adapter(model)
    for layer in range(2):
        m = adapter.layer(layer)
        q = (m.query.weight.grad * m.query.weight).sum(1) + m.query.bias.grad * m.query.bias  # (H·d_h,)
        v = (m.attn_out.weight.grad * m.attn_out.weight).sum(0)
        f = (m.ffn_down.weight.grad * m.ffn_down.weight).sum(0)
        torch.testing.assert_close(grads["qk"][layer].reshape(-1), q, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads["vo"][layer].reshape(-1), v, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads["ffn"][layer], f, rtol=1e-4, atol=1e-7)


def test_ema_and_regulariser_by_hand(model):
    layout = GrainLayout.from_model(model)
    importance = GrainImportance(layout, beta=0.9, alpha=0.3)
    masks = layout.masks()
    masks.vo[0, 1, :6] = 0  # head (0, 1) keeps 2 of 8 value units
    g1 = {name: torch.randn_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    g2 = {name: torch.randn_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    importance.update(g1, masks)
    importance.update(g2, masks)
    factor = torch.ones(2, 4, 1)
    factor[:] = math.tanh(1 / 0.3)
    factor[0, 1] = math.tanh(0.25 / 0.3)
    for name in ("qk", "vo", "ffn"):
        scale = factor if name == "vo" else 1.0
        expected = 0.9 * (0.1 * g1[name].abs() * scale) + 0.1 * g2[name].abs() * scale
        torch.testing.assert_close(importance.scores[name], expected)
    assert importance.updates == 2
    restored = GrainImportance(layout, beta=0.9, alpha=0.3)
    restored.load_state_dict(importance.state_dict())
    assert all(torch.equal(restored.scores[n], importance.scores[n]) for n in importance.fields)
    with pytest.raises(FloatingPointError, match="gradient of the qk masks is not finite"):
        importance.update({**g1, "qk": torch.full_like(g1["qk"], float("nan"))}, masks)


def test_regulariser_empties_a_head_before_spreading_cuts(model):
    """Equal raw importance everywhere but one head already thinned: that head's value units go first."""
    layout = GrainLayout.from_model(model)
    importance = GrainImportance(layout, beta=0.0, alpha=0.3)
    masks = layout.masks()
    masks.vo[1, 3, :5] = 0  # head (1, 3): 3 value units left
    ones = {name: torch.ones_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    importance.update(ones, masks)
    importance.scores["qk"] += 1.0  # keep query units and neurons out of the way
    importance.scores["ffn"] += 1.0
    # remove the mass of exactly 3 value units
    density = (layout.kept_parameters(masks) - 3 * layout.unit_sizes["vo"]) / layout.dense_parameters
    pruned = select_units(importance.scores, masks, layout, density)
    assert pruned.vo[1, 3].sum() == 0  # the thinned head is empty ...
    assert pruned.qk[1, 3].sum() == 0  # ... and its query units went with it
    assert pruned.vo.sum() == masks.vo.sum() - 3  # no other value unit was cut
    assert layout.kept_parameters(pruned) <= density * layout.dense_parameters
    # without the regulariser the same budget cuts value units by position among equal scores
    plain = GrainImportance(layout, beta=0.0, alpha=None)
    plain.update(ones, masks)
    plain.scores["qk"] += 1.0
    plain.scores["ffn"] += 1.0
    spread = select_units(plain.scores, masks, layout, density)
    assert spread.vo[1, 3].sum() == 3


@pytest.mark.parametrize("units", ["intra", "heads_ffn"])
@pytest.mark.parametrize("density", [0.9, 0.5, 0.2, 0.05])
def test_selection_meets_the_budget_from_below_and_is_monotone(model, units, density):
    layout = GrainLayout.from_model(model)
    g = torch.Generator().manual_seed(1)
    fields = ("qk", "vo", "ffn") if units == "intra" else ("head", "ffn")
    masks = layout.masks()
    scores = {name: torch.rand(getattr(masks, name).shape, generator=g) for name in fields}
    half = select_units(scores, masks, layout, (1 + density) / 2, units)
    pruned = select_units(scores, half, layout, density, units)
    budget = density * layout.dense_parameters
    assert layout.kept_parameters(pruned) <= budget
    # minimal: it removes no more than one unit past the budget, plus the query units of a head it emptied
    slack = max(layout.unit_sizes[f] for f in fields) + (layout.head_dim * layout.unit_sizes["qk"]
                                                         if units == "intra" else 0)
    assert layout.kept_parameters(pruned) > budget - slack
    for name in ("head", "qk", "vo", "ffn"):  # removed units stay removed
        assert not ((getattr(half, name) == 0) & (getattr(pruned, name) != 0)).any()
    assert pruned == select_units(scores, half, layout, density, units)  # deterministic
    if units == "heads_ffn":
        assert set(pruned.qk.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(pruned.qk.amax(-1), pruned.head)  # whole heads only


def test_lowest_scores_go_first(model):
    layout = GrainLayout.from_model(model)
    masks = layout.masks()
    scores = {name: torch.ones_like(getattr(masks, name)) for name in ("qk", "vo", "ffn")}
    scores["ffn"][0, :5] = 0.0  # the five least important units in the model
    density = (layout.dense_parameters - 5 * layout.unit_sizes["ffn"]) / layout.dense_parameters
    pruned = select_units(scores, masks, layout, density)
    assert pruned.ffn[0, :5].sum() == 0 and pruned.ffn.sum() == 2 * 48 - 5
    assert pruned.qk.sum() == masks.qk.sum() and pruned.vo.sum() == masks.vo.sum()


def test_density_checks(model):
    layout = GrainLayout.from_model(model)
    assert check_density(0.05) == 0.05
    for bad in (0, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="params_kept="):
            check_density(bad)
    # counted in weights, every unit's weights can go: any density in (0, 1] is reachable (no floor of biases)
    tiny = 1 / layout.dense_parameters
    empty = select_units({n: torch.zeros_like(getattr(layout.masks(), n)) for n in ("qk", "vo", "ffn")},
                         layout.masks(), layout, tiny)
    assert layout.kept_parameters(empty) == 0 and empty.heads_alive().sum() == 0 and empty.ffn.sum() == 0


# ------------------------------------------------------------------------------------------------ the callback


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory, minilm_l3):
    """A tiny BERT (no dropout, so runs are reproducible step by step) with the real MiniLM tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_l3)
    folder = tmp_path_factory.mktemp("grain_student")
    torch.manual_seed(0)
    config = tiny_config("bert", vocab_size=tokenizer.vocab_size, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, num_labels=2, finetuning_task="rte")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _fit(folder, data_dir, root, callback, max_epochs=2, ckpt_path=None, checkpoint=None, hidden_weight=1.0,
         extra=()):
    L.seed_everything(0, verbose=False)
    module = DistilledSequenceClassificationModule(str(folder), task="rte", learning_rate=5e-3,
                                                   hidden_weight=hidden_weight, warmup_ratio=0.0)
    data = GlueDataModule(task="rte", data_dir=str(data_dir), tokenizer=str(folder), batch_size=4,
                          group_by_length=True)  # a seeded order per epoch: the same after a resume
    callbacks = [callback] + ([checkpoint] if checkpoint else []) + list(extra)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=checkpoint is not None,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        max_epochs=max_epochs, callbacks=callbacks, deterministic=True)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, trainer


def test_end_to_end_prunes_compacts_and_reports(student_folder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data_dir = write_rte(tmp_path / "RTE", n=40)  # 10 steps per epoch, 20 in all: pruning from step 4 to 8
    callback = GrainCallback(params_kept=0.3, latency_batch_size=4, latency_repeats=2)
    module, trainer = _fit(student_folder, data_dir, tmp_path / "run", callback)
    report = read_report(tmp_path / "run")
    assert set(REPORT_KEYS) <= set(report) and report["method"] == "grain"
    assert report["params"]["target"] == 0.3 and report["params"]["kept"] <= 0.3
    assert report["schedule"]["total_steps"] == 20
    assert report["training"]["steps"] == 20 and report["training"]["max_steps"] == -1
    assert (report["schedule"]["start_step"], report["schedule"]["end_step"]) == (4, 8)
    steps = [entry["step"] for entry in report["schedule"]["history"]]
    assert steps[0] == 5 and steps[-1] == 8  # first cut after step 4, the target at step 8
    assert report["importance_from"] == "prediction_loss" and report["warnings"] == []
    assert set(report["metrics"]["dense"]) == {"accuracy"} and set(report["metrics"]["pruned"]) == {"accuracy"}
    assert report["flops"]["kept"] < 1 and report["latency"]["batch_size"] == 4
    # the structure: heads of different sizes, as the masks say, and a folder plain transformers loads
    masks = PruningMasks.load(tmp_path / "run" / "pruning_masks.safetensors")
    assert report["structure"] == masks.structure()
    assert masks_parameters(masks)["encoder_linear"] == report["params"]["pruned"]["encoder_linear"]
    # params_kept means weights only, in the budget and in the report alike
    weights = masks_parameters(masks)["encoder_linear_weights"]
    assert weights == report["params"]["pruned"]["encoder_linear_weights"]
    assert report["params"]["kept"] == weights / report["params"]["dense"]["encoder_linear_weights"] \
        == report["schedule"]["history"][-1]["params_kept"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "pruned_model",
                                                                  trust_remote_code=True).eval()
    module.model.eval()
    inputs = {"input_ids": torch.randint(5, 1000, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    torch.testing.assert_close(reloaded(**inputs).logits, module.model(**inputs).logits)
    assert (tmp_path / "run" / "final_model" / "config.json").is_file()  # the task module's save: compacted too
    assert json.loads((tmp_path / "run" / "final_model" / "config.json").read_text())["lit_prune_structure"]


def test_importance_comes_from_the_prediction_loss_only(student_folder, tmp_path):
    """Gradient separation: the hidden-state loss changes the weights, never the importance. After one step (the
    importance read before any update) the scores are the same whatever the hidden-state weight."""
    data_dir = write_rte(tmp_path / "RTE", n=4)  # one step per epoch
    scores = []
    for weight in (0.0, 50.0):
        callback = GrainCallback(params_kept=0.5, evaluate=False, latency_batch_size=0, save_model=False)
        _fit(student_folder, data_dir, tmp_path / f"w{weight}", callback, max_epochs=1, hidden_weight=weight)
        scores.append(callback.importance.scores)
    for name in ("qk", "vo", "ffn"):
        torch.testing.assert_close(scores[0][name], scores[1][name], rtol=1e-5, atol=1e-12)
        assert scores[0][name].abs().sum() > 0


def test_resume_from_a_mid_schedule_checkpoint_gives_the_same_masks(student_folder, tmp_path):
    data_dir = write_rte(tmp_path / "RTE", n=40)  # 10 steps per epoch; 3 epochs: pruning from step 6 to 12
    whole = GrainCallback(params_kept=0.2, evaluate=False, latency_batch_size=0, save_model=False)
    _fit(student_folder, data_dir, tmp_path / "whole", whole, max_epochs=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    first = GrainCallback(params_kept=0.2, evaluate=False, latency_batch_size=0, save_model=False)
    _fit(student_folder, data_dir, tmp_path / "first", first, max_epochs=3, checkpoint=checkpoint)
    mid = tmp_path / "ckpt" / "epoch=0-step=10.ckpt"  # step 10: inside the schedule (6..12)
    state = torch.load(mid, weights_only=True)
    saved = next(value for key, value in state["callbacks"].items() if key.startswith("GrainCallback"))
    assert saved["last_step"] == 10 and 0.2 < saved["density"] < 1.0
    resumed = GrainCallback(params_kept=0.2, evaluate=False, latency_batch_size=0, save_model=False)
    _fit(student_folder, data_dir, tmp_path / "resumed", resumed, max_epochs=3, ckpt_path=mid)
    assert resumed.masks == whole.masks
    assert resumed.report["schedule"]["history"] == whole.report["schedule"]["history"]
    assert resumed.report["params"]["pruned"] == whole.report["params"]["pruned"]
    # the pruning time counts the first run's training up to the checkpoint, then the resumed run's
    before = resumed.report["seconds"]["prune_before_resume"]
    assert before == pytest.approx(saved["training_seconds"], abs=1e-3)
    assert 0 < before < resumed.report["seconds"]["prune"]
    assert "prune_before_resume" not in whole.report["seconds"]
    # other pruning settings cannot resume that checkpoint
    other = GrainCallback(params_kept=0.1, evaluate=False, latency_batch_size=0, save_model=False)
    with pytest.raises(ValueError, match="params_kept: 0.2 -> 0.1"):
        _fit(student_folder, data_dir, tmp_path / "other", other, max_epochs=3, ckpt_path=mid)


def test_heads_ffn_ablation_removes_whole_heads(student_folder, tmp_path):
    data_dir = write_rte(tmp_path / "RTE", n=40)
    callback = GrainCallback(params_kept=0.4, units="heads_ffn", evaluate=False, latency_batch_size=0)
    _fit(student_folder, data_dir, tmp_path / "run", callback)
    masks = PruningMasks.load(tmp_path / "run" / "pruning_masks.safetensors")
    for layer in masks.structure():
        assert all(q == v == 8 for q, v in layer["heads"])  # kept heads are whole
    assert callback.report["params"]["kept"] <= 0.4


class _StopAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_training_that_stops_early_reaches_the_target_at_the_end(student_folder, tmp_path):
    data_dir = write_rte(tmp_path / "RTE", n=40)  # 20 steps planned, pruning from step 4 to 8; stopped at 6
    callback = GrainCallback(params_kept=0.3, evaluate=False, latency_batch_size=0, save_model=False)
    _fit(student_folder, data_dir, tmp_path / "run", callback, extra=[_StopAt(6)])
    report = callback.report
    assert report["params"]["kept"] <= 0.3
    assert len(report["warnings"]) == 1 and "training stopped at step 6 of 20" in report["warnings"][0]
    assert report["schedule"]["history"][-1]["density"] == 0.3


def test_bad_settings_are_reported_together():
    with pytest.raises(ValueError) as error:
        GrainCallback(params_kept=0, units="heads", start=0.5, end=0.2, ema_beta=1.0, alpha=0, prune_every=0)
    message = str(error.value)
    for part in ("params_kept=0", "units='heads'", "start=0.5, end=0.2", "ema_beta=1.0", "alpha=0",
                 "prune_every=0"):
        assert part in message


def test_a_model_that_trains_nothing_is_refused(student_folder, tmp_path):
    module = DistilledSequenceClassificationModule(str(student_folder), task="rte")
    data = GlueDataModule(task="rte", data_dir=str(write_rte(tmp_path / "RTE")), tokenizer=str(student_folder))
    trainer = L.Trainer(accelerator="cpu", max_epochs=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[GrainCallback()], default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="GRAIN prunes during training"):
        trainer.fit(module, datamodule=data)


def test_factorised_embeddings_train_and_stay_factorised(student_folder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data_dir = write_rte(tmp_path / "RTE", n=16)
    callback = GrainCallback(params_kept=0.5, embedding_rank=8, evaluate=False, latency_batch_size=0)
    module, _ = _fit(student_folder, data_dir, tmp_path / "run", callback, max_epochs=1)
    info = callback.report["embeddings"]
    assert info["rank"] == 8 and 0 < info["relative_error"] < 1
    factors = module.model.base_model.get_input_embeddings()
    assert factors.table.weight.shape[1] == 8 and factors.table.weight.requires_grad
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "pruned_model",
                                                                  trust_remote_code=True).eval()
    assert reloaded.config.lit_prune_structure["embedding_rank"] == 8
    module.model.eval()
    inputs = {"input_ids": torch.randint(5, 1000, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    torch.testing.assert_close(reloaded(**inputs).logits, module.model(**inputs).logits)
    with pytest.raises(ValueError, match="embedding_rank=0"):
        GrainCallback(embedding_rank=0)


@pytest.mark.slow  # two torchrun launches of train.py (25 s alone on a busy 2-core machine)
def test_recipe_on_two_nodes_launched_by_torchrun(minilm_l3, tmp_path):
    """configs/grain/sst2.yaml from the command line, through the multi-node code path on one machine: two torchrun
    launches of one process each (node ranks 0 and 1), Lightning's num_nodes 2, DDP. The processes agree on the
    masks (the run checks it and the report says so), and the pruned folder loads with plain transformers."""
    import socket

    from transformers import AutoModelForSequenceClassification

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "nodes"
    args = ["train.py", "fit", "--config", "configs/grain/sst2.yaml", "--model.name_or_path", str(minilm_l3),
            "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--trainer.strategy", "ddp",
            "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
            "--data.max_train_samples", "64", "--data.max_seq_length", "64", "--data.batch_size", "8",
            "--trainer.callbacks.init_args.params_kept", "0.4", "--trainer.callbacks.init_args.evaluate", "false",
            "--trainer.callbacks.init_args.latency_batch_size", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    launches = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                  "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                                  "--master-port", str(port), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [launch.communicate(timeout=900) for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    report = read_report(out)
    assert report["world_size"] == 2 and report["ranks"]["masks_identical"] is True
    assert report["schedule"]["total_steps"] == 4  # 64 examples, 2 processes × batch 8, 1 epoch
    assert report["params"]["kept"] <= 0.4 and report["importance_from"] == "prediction_loss"
    model = AutoModelForSequenceClassification.from_pretrained(out / "pruned_model", trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == report["params"]["pruned"]["total"]


@pytest.mark.parametrize("importance_from", ["auto", "loss"])
def test_on_a_users_own_module(tmp_path, importance_from):
    """A user's module with its own training step and no prediction_loss: GRAIN prunes it during its fit, taking the
    importance from a frozen copy of the model (by default) or from the whole training loss, and says so."""
    from test_pruning_callbacks import UserData, UserModule

    callback = GrainCallback(params_kept=0.5, evaluate=False, seq_len=12, latency_batch_size=0,
                             output_dir=str(tmp_path), importance_from=importance_from)
    module = UserModule()
    trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", devices=1, callbacks=[callback])
    trainer.fit(module, UserData())
    report = read_report(tmp_path)
    expected = "teacher" if importance_from == "auto" else "loss"
    assert report["importance_from"] == expected and report["params"]["kept"] <= 0.5
    assert module.encoder.config.lit_prune_structure is not None
    assert (tmp_path / "pruned_model" / "config.json").is_file()
    if expected == "teacher":
        assert report["distillation"]["teacher"] == "a frozen copy of the model as the fit started"
        assert report["distillation"]["loss"] == "soft_cross_entropy" and report["distillation"]["temperature"] == 8
        assert "departure" in report["distillation"]
    else:
        assert report["distillation"] is None


# ------------------------------------------------------------------------------------------------ a user's project
class PlainClassifier(L.LightningModule):
    """A user's own module, not lit_prune's: a Hugging Face classifier, plain steps, no prediction_loss."""

    def __init__(self, headless: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        from transformers import AutoModel, AutoModelForSequenceClassification

        torch.manual_seed(0)
        config = tiny_config("bert", num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        self.classifier = (AutoModel if headless else AutoModelForSequenceClassification).from_config(config)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return self.classifier(**_as_dict(batch)).loss

    def validation_step(self, batch, batch_idx):
        batch = _as_dict(batch)
        logits = self.classifier(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        self.log("val_acc", (logits.argmax(-1) == batch["labels"]).float().mean(), batch_size=len(batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _as_dict(batch):
    if isinstance(batch, dict):
        return batch
    input_ids, attention_mask, labels = batch
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _rows(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Examples of 12 positions, the last ``i % 4`` of example i padding."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        mask = torch.ones(12, dtype=torch.long)
        mask[12 - i % 4:] = 0
        rows.append({"input_ids": torch.randint(5, 120, (12,), generator=g), "attention_mask": mask,
                     "labels": torch.tensor(i % 2)})
    return rows


def _loaders(tuples: bool = False) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    from torch.utils.data import DataLoader

    train, val = _rows(32, 0), _rows(16, 1)
    if tuples:
        train, val = ([(r["input_ids"], r["attention_mask"], r["labels"]) for r in rows] for rows in (train, val))
    return DataLoader(train, batch_size=8), DataLoader(val, batch_size=8)


def _plain_trainer(callback, max_epochs: int = 2) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])


def _accuracy(model, loader) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
                         == b["labels"]).sum()) for b in loader)
    return right / len(loader.dataset)


def test_a_plain_lightning_module_with_only_the_budget(tmp_path):
    """A user's project as it is: its module, plain dict dataloaders given to fit, its validation loop. GRAIN distils
    the importance from a frozen copy of the model, prunes while it trains, and ends like every method."""
    from transformers import AutoModelForSequenceClassification

    module = PlainClassifier()
    train, val = _loaders()
    dense_accuracy = _accuracy(copy.deepcopy(module.classifier), val)
    callback = GrainCallback(params_kept=0.5, output_dir=str(tmp_path), latency_repeats=2)
    trainer = _plain_trainer(callback)
    trainer.fit(module, train, val)
    assert trainer.global_step == 8 and module.steps == 8
    report = read_report(tmp_path)
    assert report["method"] == "grain" and report["importance_from"] == "teacher"
    assert report["distillation"]["teacher"] == "a frozen copy of the model as the fit started"
    assert report["params"]["target"] == 0.5 and report["params"]["kept"] <= 0.5
    assert report["params"]["kept"] == report["schedule"]["history"][-1]["params_kept"]  # one meaning: weights
    assert all(score.abs().sum() > 0 for score in callback.importance.scores.values())
    # the metrics are the user's validation loop's, of the dense model before training and the pruned one after
    assert report["metrics"]["dense"] == {"acc": pytest.approx(dense_accuracy)}
    assert report["metrics"]["pruned"] == {"acc": pytest.approx(_accuracy(module.classifier, val))}
    # s of the FLOPs: the training batches' non-padding tokens per example (12, 11, 10, 9 in turn)
    assert report["flops"]["seq_len"] == pytest.approx(10.5) and report["flops"]["seq_len_from"] == "training batches"
    assert report["latency"]["inputs"] == "evaluation split"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned_model",
                                                                trust_remote_code=True).eval()
    batch = next(iter(val))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    module.classifier.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, module.classifier(**inputs).logits)
    assert module.classifier.config.lit_prune_structure == loaded.config.lit_prune_structure


def test_importance_is_the_teachers_soft_cross_entropy_gradient(tmp_path):
    """One step, EMA β = 0: the scores are |∂ soft-CE(student, teacher; T)/∂mask| on the first batch, the value
    units' times the regulariser's tanh(1 / α), computed here by hand from a given teacher folder."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    teacher_folder = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=2)).save_pretrained(teacher_folder)
    module = PlainClassifier(dropout=0.0)
    student = copy.deepcopy(module.classifier)
    train, val = _loaders()
    callback = GrainCallback(params_kept=0.5, ema_beta=0.0, teacher=str(teacher_folder), temperature=2.0,
                             evaluate=False, latency_batch_size=0, save_model=False, output_dir=str(tmp_path))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, train)
    assert callback.report["distillation"]["teacher"] == str(teacher_folder)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_folder).eval()
    batch = next(iter(train))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    masks = PruningMasks.from_model(student).requires_grad_(True, fields=("qk", "vo", "ffn"))
    student.train()
    with apply_masks(student, masks):
        logits = student(**inputs).logits
    with torch.no_grad():
        target = teacher(**inputs).logits
    grads = torch.autograd.grad(soft_cross_entropy(logits, target, 2.0), [masks.qk, masks.vo, masks.ffn])
    expected = {"qk": grads[0].abs(), "vo": grads[1].abs() * math.tanh(1 / 0.3), "ffn": grads[2].abs()}
    for name in ("qk", "vo", "ffn"):
        torch.testing.assert_close(callback.importance.scores[name], expected[name], rtol=1e-4, atol=1e-9)


MISTAKES = {
    "tuple batches": (dict(), dict(tuples=True), r"the dataloader gives a list, not a dict of model inputs; "
                                                 r"pass batch_to_inputs="),
    "a headless model": (dict(headless=True), dict(), r"BertModel has no task head .*AutoModelForSequenceClassification"),
    "no validation data": (dict(), dict(validation=False),
                           r"evaluate=True, but PlainClassifier has no validation loop.*val_dataloaders=.*"
                           r"set evaluate=False"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_mistakes_are_refused_at_setup(mistake, tmp_path):
    module_args, data_args, message = MISTAKES[mistake]
    module = PlainClassifier(**module_args)
    train, val = _loaders(tuples=data_args.get("tuples", False))
    trainer = _plain_trainer(GrainCallback(params_kept=0.5, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=message):
        trainer.fit(module, train, *([val] if data_args.get("validation", True) else []))
    assert module.steps == 0 and trainer.global_step == 0 and not (tmp_path / "pruned_model").exists()


def test_a_teacher_for_other_labels_is_refused_at_setup(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=3)).save_pretrained(folder)
    module = PlainClassifier()
    trainer = _plain_trainer(GrainCallback(params_kept=0.5, teacher=str(folder), output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"its logits have shape \(2, 3\), the model's \(2, 2\)"):
        trainer.fit(module, *_loaders())
    assert module.steps == 0
    with pytest.raises(ValueError, match="teacher='x' with importance_from='loss'"):
        GrainCallback(teacher="x", importance_from="loss")
    with pytest.raises(ValueError, match="importance_from='prediction_loss', but PlainClassifier has no"):
        _plain_trainer(GrainCallback(importance_from="prediction_loss")).fit(PlainClassifier(), *_loaders())


def test_tuple_batches_work_with_batch_to_inputs(tmp_path):
    module = PlainClassifier()
    callback = GrainCallback(params_kept=0.5, batch_to_inputs=_as_dict, output_dir=str(tmp_path), latency_repeats=2)
    _plain_trainer(callback).fit(module, *_loaders(tuples=True))
    report = read_report(tmp_path)
    assert report["params"]["kept"] <= 0.5 and report["importance_from"] == "teacher"
    assert set(report["metrics"]["pruned"]) == {"acc"} and report["latency"]["inputs"] == "evaluation split"
    assert report["flops"]["seq_len"] == pytest.approx(10.5)


def test_no_validation_data_times_the_first_training_batch(tmp_path):
    module = PlainClassifier()
    train, _ = _loaders()
    callback = GrainCallback(params_kept=0.5, evaluate=False, latency_batch_size=4, latency_repeats=2,
                             output_dir=str(tmp_path))
    _plain_trainer(callback).fit(module, train)
    report = read_report(tmp_path)
    assert report["metrics"]["dense"] is None and report["metrics"]["pruned"] is None
    assert report["latency"]["inputs"] == "first calibration batch" and report["latency"]["batch_size"] == 4
    assert (tmp_path / "pruned_model" / "config.json").is_file()


@pytest.mark.slow  # torchrun, two DDP processes (11 s alone on a busy 2-core machine)
def test_a_plain_module_under_ddp_distils_from_one_teacher(tmp_path):
    """Two processes (torchrun, DDP on CPU): the teacher path's importance is averaged over the processes (the masks
    agree), and s is the average over both processes' training batches (each process alone sees 11 or 10)."""
    from transformers import AutoModelForSequenceClassification

    script = tmp_path / "fit.py"
    script.write_text(f'''import sys
sys.path.insert(0, {str(REPO / "tests")!r})
import lightning as L
from test_grain import PlainClassifier, _loaders
from lit_prune.methods.grain import GrainCallback

L.seed_everything(0, verbose=False)
trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[GrainCallback(params_kept=0.5, output_dir=sys.argv[1], latency_repeats=2)])
trainer.fit(PlainClassifier(), *_loaders())
''')
    out = tmp_path / "run"
    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(script), str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert launch.returncode == 0, launch.stderr[-4000:]
    report = read_report(out)
    assert report["world_size"] == 2 and report["ranks"]["masks_identical"] is True
    assert report["importance_from"] == "teacher" and report["params"]["kept"] <= 0.5
    assert report["flops"]["seq_len"] == pytest.approx(10.5) and report["flops"]["seq_len_from"] == "training batches"
    assert report["schedule"]["total_steps"] == 4  # 32 examples, 2 processes × batch 8, 2 epochs
    model = AutoModelForSequenceClassification.from_pretrained(out / "pruned_model", trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == report["params"]["pruned"]["total"]
