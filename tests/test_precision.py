"""bf16: every method fits under ``precision="bf16-mixed"`` on a CPU, its passes run in bf16 autocast while its
statistics stay float32 / float64, and ``save_dtype`` writes pruned folders that load back in the dtype asked.

The models are tiny random BERTs with a WordPiece tokenizer of their own 120 ids (no assets needed). The retraining-free
runs use a "clear-cut" model: heads 2 and 3 and the upper half of the FFN neurons of every layer write nothing (their
output-projection columns are zero), so their importance is exactly zero in any precision and the live units' is
positive; at ``flops_kept=0.6`` every method must keep all the live units and fill the rest of the budget with dead
ones in index order, so bf16-mixed and 32-true have to give the same masks exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader

from conftest import tiny_config
from lit_prune.core.compact import compact
from lit_prune.core.io import load_pruned, save_pruned
from lit_prune.core.masks import PruningMasks
from lit_prune.methods import GPrunerCallback, GrainCallback, KPruneCallback, KwonCallback, SMPCallback
from lit_prune.report import read_report

WORDS = [f"w{i}" for i in range(115)]
RETRAINING_FREE = {  # each method small and quick, with the save_dtype its run writes
    "kwon": lambda **kw: KwonCallback(flops_kept=0.6, num_samples=16, save_dtype="bfloat16", **kw),
    "kprune": lambda **kw: KPruneCallback(flops_kept=0.6, num_tokens=None, num_samples=16, length_groups=1,
                                          save_dtype="float16", **kw),
    "gpruner": lambda **kw: GPrunerCallback(flops_kept=0.6, num_samples=16, reward_samples=8, ppo_iterations=2,
                                            ppo_rollouts=2, **kw),
}
COMMON = {"calibration_batch_size": 8, "latency_batch_size": 4, "latency_repeats": 1}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece tokenizer of the tiny models' 120 ids: the special tokens, then the words w0 .. w114."""
    from transformers import BertTokenizerFast

    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def rows(tokenizer, count: int, seed: int) -> list[dict]:
    """Sentences of 3 to 11 words, labelled by their first word."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(len(WORDS), (int(torch.randint(3, 12, (1,), generator=g)),), generator=g)
        out.append({**tokenizer(" ".join(WORDS[int(i)] for i in ids)), "labels": int(ids[0]) % 2})
    return out


def loaders(tokenizer, train: int = 32, val: int = 8) -> tuple[DataLoader, DataLoader]:
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    return (DataLoader(rows(tokenizer, train, 0), batch_size=8, collate_fn=collate),
            DataLoader(rows(tokenizer, val, 1), batch_size=8, collate_fn=collate))


def clear_cut_model() -> torch.nn.Module:
    """A tiny BERT classifier whose heads 2, 3 and FFN neurons 24 .. 47 write nothing, in every layer."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        tiny_config("bert", num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.output.dense.weight[:, 16:] = 0  # W_O's columns of heads 2 and 3 (d_h = 8)
            layer.output.dense.weight[:, 24:] = 0  # W_down's columns of neurons 24 .. 47
    return model


class UserModule(L.LightningModule):
    """A user's own project: the Hugging Face model under a name of its own, a validation loop that logs."""

    def __init__(self, net: torch.nn.Module, tokenizer) -> None:
        super().__init__()
        self.net, self.tokenizer = net, tokenizer

    def training_step(self, batch, batch_idx):
        return self.net(**batch).loss

    def validation_step(self, batch, batch_idx):
        logits = self.net(**batch).logits
        self.log("val_acc", (logits.argmax(-1) == batch["labels"]).float().mean(), batch_size=len(logits))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def trainer(precision: str, callbacks: list, max_epochs: int, root: Path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=max_epochs, callbacks=callbacks,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=root)


class DtypeLog:
    """What a run's passes and statistics looked like: dtypes and autocast states, by what was seen."""

    def __init__(self) -> None:
        self.seen: dict[str, set] = {}

    def add(self, what: str, value) -> None:
        self.seen.setdefault(what, set()).add(value)


def spy_on_statistics(patch: pytest.MonkeyPatch, log: DtypeLog) -> None:
    """Record the dtypes of the retraining-free methods' statistics, and check that KPrune's float32 products are
    not lowered to bf16 by the autocast they run under."""
    from lit_prune.methods.gpruner.cgs import CGSTuningSolver
    from lit_prune.methods.kprune import process
    from lit_prune.prune import post_training
    from lit_prune.prune.lstsq import LeastSquaresAccumulator, ProjectionSystem

    fisher_pass, knowledge_step = post_training.fisher_pass, process.knowledge_step
    add_factored, system_add, cgs = LeastSquaresAccumulator.add_factored, ProjectionSystem.add, CGSTuningSolver.__call__

    def fisher(*args, **kwargs):
        stats = fisher_pass(*args, **kwargs)
        log.add("fisher", (stats.head_grads.dtype, stats.ffn_grads.dtype))
        return stats

    def knowledge(*args, **kwargs):
        log.add("knowledge_autocast", torch.is_autocast_enabled("cpu"))
        targets = knowledge_step(*args, **kwargs)
        log.add("knowledge", tuple(tensor.dtype for tensor in args[7].to_dict().values()))
        return targets

    def lstsq(self, unit_inputs, *args, **kwargs):
        log.add("lstsq_inputs", unit_inputs.dtype)
        add_factored(self, unit_inputs, *args, **kwargs)
        log.add("lstsq", (self.gram.dtype, self.rhs.dtype))

    def projection(self, x, y):
        log.add("projection_inputs", x.dtype)
        before = self.xtx.clone()
        system_add(self, x, y)
        with torch.autocast("cpu", enabled=False):
            expected = (x.float().t() @ x.float()).double()
        # a bf16 product would be off by about 1e-2 of the entries' scale; float32 agrees to float32 rounding
        log.add("projection_products_float32", bool(torch.allclose(self.xtx - before, expected, rtol=1e-5,
                                                                   atol=1e-5 * float(expected.abs().max()))))
        log.add("projection", (self.xtx.dtype, self.xty.dtype))

    def solve(self, acc):
        log.add("cgs", acc.gram.dtype)
        return cgs(self, acc)

    patch.setattr(post_training, "fisher_pass", fisher)
    patch.setattr(process, "knowledge_step", knowledge)
    patch.setattr(LeastSquaresAccumulator, "add_factored", lstsq)
    patch.setattr(ProjectionSystem, "add", projection)
    patch.setattr(CGSTuningSolver, "__call__", solve)


def hook_activations(model: torch.nn.Module, log: DtypeLog) -> None:
    """Record the dtype of the first query projection's output on every forward pass but the latency timing's (in
    inference mode, of copies cast to ``save_dtype``)."""
    def record(module, args, output):
        if not torch.is_inference_mode_enabled():
            log.add("activations", output.dtype)

    model.base_model.encoder.layer[0].attention.self.query.register_forward_hook(record)


@pytest.fixture(scope="module")
def retraining_free_runs(tokenizer, tmp_path_factory):
    """Each retraining-free method pruned the clear-cut model in a fit under ``precision``, run once per module:
    ``run(method, precision) -> (folder, report, module, log)``."""
    runs = {}

    def run(method: str, precision: str = "bf16-mixed"):
        if (method, precision) not in runs:
            folder = tmp_path_factory.mktemp(f"{method}_{precision}")
            module, log = UserModule(clear_cut_model(), tokenizer), DtypeLog()
            hook_activations(module.net, log)
            callback = RETRAINING_FREE[method](output_dir=str(folder), **COMMON)
            with pytest.MonkeyPatch.context() as patch:
                spy_on_statistics(patch, log)
                trainer(precision, [callback], 0, folder).fit(module, *loaders(tokenizer))
            runs[method, precision] = folder, read_report(folder), module, log
        return runs[method, precision]

    return run


# ------------------------------------------------------------------------------------------------ retraining-free
@pytest.mark.parametrize("method", sorted(RETRAINING_FREE))
def test_retraining_free_passes_run_in_bf16_and_keep_float64_statistics(method, retraining_free_runs):
    folder, report, module, log = retraining_free_runs(method)
    assert report["method"] == method and (folder / "pruned_model" / "config.json").is_file()
    assert 0.55 < report["flops"]["kept"] <= 0.6 and report["metrics"]["pruned"]["acc"] >= 0
    assert torch.bfloat16 in log.seen["activations"]  # the calibration passes ran under bf16 autocast
    assert next(module.net.parameters()).dtype == torch.float32  # the weights themselves stay float32
    if method in ("kwon", "gpruner"):
        assert log.seen["fisher"] == {(torch.float32, torch.float32)}
        assert log.seen["lstsq"] == {(torch.float64, torch.float64)}  # whatever the units' inputs were
        assert log.seen["lstsq_inputs"] <= {torch.bfloat16, torch.float32}
    if method == "gpruner":
        assert log.seen["cgs"] == {torch.float64}
    if method == "kprune":
        assert log.seen["knowledge_autocast"] == {True}
        assert log.seen["knowledge"] == {(torch.float64,) * 6}
        assert log.seen["projection"] == {(torch.float64, torch.float64)}
        assert log.seen["projection_products_float32"] == {True}  # autocast did not lower XᵀX to bf16


@pytest.mark.parametrize("method", ["kwon", "kprune"])
def test_bf16_mixed_keeps_the_structure_32_true_keeps(method, retraining_free_runs):
    """The clear-cut model (see the module docstring): the same masks, exactly; and pruned models that agree to bf16's
    precision, the tuning's least squares having been fitted on bf16 activations instead of float32 ones."""
    bf16_folder, bf16, bf16_module, _ = retraining_free_runs(method, "bf16-mixed")
    f32_folder, f32, f32_module, log = retraining_free_runs(method, "32-true")
    assert log.seen["activations"] == {torch.float32}  # 32-true: no autocast anywhere
    masks = [PruningMasks.load(folder / "pruning_masks.safetensors") for folder in (bf16_folder, f32_folder)]
    assert masks[0].allclose(masks[1], rtol=0, atol=0) and bf16["structure"] == f32["structure"]
    live_heads = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)
    assert (masks[0].head * live_heads == live_heads).all() and masks[0].ffn[:, :24].all()  # every live unit kept
    inputs = {k: v for k, v in next(iter(loaders(bf16_module.tokenizer)[1])).items() if k != "labels"}
    with torch.no_grad():
        logits = [module.net.eval()(**inputs).logits for module in (bf16_module, f32_module)]
    # the tuning's least squares were fitted on bf16 activations (relative rounding 2^-9), in float64: the fitted
    # scales and weights move by a fraction of that (measured: 2e-7 of the logits' scale for Kwon, 5e-5 for KPrune)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0.002 * float(logits[1].abs().max()))


# ------------------------------------------------------------------------------------------------ save_dtype
@pytest.mark.parametrize(("method", "dtype"), [("kwon", torch.bfloat16), ("kprune", torch.float16),
                                               ("gpruner", torch.float32)])
def test_callbacks_write_the_folder_in_save_dtype(method, dtype, retraining_free_runs):
    from transformers import AutoModelForSequenceClassification

    folder, report, module, _ = retraining_free_runs(method)
    name = str(dtype).removeprefix("torch.")
    assert report["settings"]["save_dtype"] == name and report["latency"]["dtype"] == name
    pruned = folder / "pruned_model"
    assert json.loads((pruned / "config.json").read_text())["dtype"] == name
    with safe_open(str(pruned / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {dtype}
    assert next(module.net.parameters()).dtype == torch.float32  # saving cast a copy
    for loaded in (AutoModelForSequenceClassification.from_pretrained(pruned, trust_remote_code=True),
                   load_pruned(pruned)):
        assert next(loaded.parameters()).dtype == dtype
        for key, value in loaded.state_dict().items():  # exactly the in-memory weights, rounded once
            expected = module.net.state_dict()[key]
            assert torch.equal(value, expected.to(dtype) if expected.is_floating_point() else expected), key


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_save_pruned_writes_and_loads_back_in_the_dtype_asked(dtype, tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    masks = PruningMasks.ones(2, 4, 8, 48)
    masks.head[0, 1], masks.ffn[1, :20] = 0, 0
    model = compact(clear_cut_model().eval(), masks)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    save_pruned(model, tmp_path / "folder", tokenizer=tokenizer, dtype=dtype)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())  # untouched
    assert next(model.parameters()).dtype == torch.float32
    with safe_open(str(tmp_path / "folder" / "model.safetensors"), framework="pt") as handle:
        assert {str(handle.get_tensor(key).dtype) for key in handle.keys()} == {f"torch.{dtype}"}
    inputs = tokenizer(["w1 w2 w3 w4 w5", "w7 w9"], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs).logits
        for loaded in (AutoModelForSequenceClassification.from_pretrained(tmp_path / "folder", trust_remote_code=True),
                       load_pruned(tmp_path / "folder")):
            assert str(next(loaded.parameters()).dtype) == f"torch.{dtype}"
            # weights rounded once to the dtype (relative error at most eps / 2), then every operation computed in
            # it through two layers: within 2 eps of the logits' scale (measured: 0.5% for bf16, 0.02% for fp16)
            eps = torch.finfo(getattr(torch, dtype)).eps
            torch.testing.assert_close(loaded.eval()(**inputs).logits.float(), reference, rtol=0,
                                       atol=2 * eps * float(reference.abs().max()))
        as_float32 = load_pruned(tmp_path / "folder", dtype=torch.float32)  # asked for: float32
        assert next(as_float32.parameters()).dtype == torch.float32


def test_bad_save_dtypes_are_refused_at_construction(tmp_path):
    message = r"save_dtype='int8': expected one of 'float32', 'bfloat16', 'float16'"
    for make in (KwonCallback, KPruneCallback, GPrunerCallback, GrainCallback, SMPCallback):
        with pytest.raises(ValueError, match=f"{make.__name__}: .*{message}"):
            make(save_dtype="int8")
    with pytest.raises(ValueError, match=r"save_dtype=torch.bfloat16: expected one of"):
        KwonCallback(save_dtype=torch.bfloat16)  # the setting is a name, as YAML gives it
    model = compact(clear_cut_model().eval(), PruningMasks.ones(2, 4, 8, 48))
    with pytest.raises(ValueError, match=r"save_pruned: dtype='half': expected one of 'float32', 'bfloat16'"):
        save_pruned(model, tmp_path / "folder", dtype="half")
    assert not (tmp_path / "folder").exists()


# ------------------------------------------------------------------------------------------------ training methods
class LossDtypes(L.Callback):
    """Records the dtype of each step's loss and (GRAIN's) prediction loss, before the backward."""

    def __init__(self, dtypes: DtypeLog) -> None:
        self.dtypes = dtypes

    def on_before_backward(self, trainer, pl_module, loss):
        self.dtypes.add("loss", loss.dtype)
        prediction = getattr(pl_module, "prediction_loss", None)
        if isinstance(prediction, torch.Tensor):
            self.dtypes.add("prediction_loss", prediction.dtype)


def test_grain_trains_a_distilled_module_under_bf16_mixed(tmp_path, tokenizer):
    """GRAIN's recipe path: the distilled task module (soft cross-entropy and hidden-state MSE from bf16 outputs,
    computed in float32) on a GLUE data module."""
    from transformers import AutoModelForSequenceClassification

    from lit_prune.data.glue import GlueDataModule
    from lit_prune.tasks.distilled import DistilledSequenceClassificationModule
    from test_glue import write_tsv

    folder = tmp_path / "student"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=2, finetuning_task="rte")
                                                   ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    sentences = [" ".join(WORDS[(7 * i + j) % 115] for j in range(3 + i % 5)) for i in range(24)]
    for split, count in (("train", 24), ("dev", 8)):
        write_tsv(tmp_path / "RTE" / f"{split}.tsv", [["index", "sentence1", "sentence2", "label"]] + [
            [i, sentences[i], sentences[(i + 5) % 24], ("entailment", "not_entailment")[i % 2]] for i in range(count)])
    L.seed_everything(0, verbose=False)
    module = DistilledSequenceClassificationModule(str(folder), task="rte", learning_rate=5e-3, warmup_ratio=0.0)
    data = GlueDataModule(task="rte", data_dir=str(tmp_path / "RTE"), tokenizer=str(folder), batch_size=4)
    log = DtypeLog()
    hook_activations(module.model, log)
    callback = GrainCallback(params_kept=0.3, latency_batch_size=4, latency_repeats=1, save_dtype="bfloat16")
    trainer("bf16-mixed", [LossDtypes(log), callback], 2, tmp_path / "run").fit(module, datamodule=data)
    report = read_report(tmp_path / "run")
    assert report["params"]["kept"] <= 0.3 and report["settings"]["save_dtype"] == "bfloat16"
    assert torch.bfloat16 in log.seen["activations"]
    assert log.seen["prediction_loss"] == {torch.float32} and log.seen["loss"] == {torch.float32}
    assert all(scores.dtype == torch.float32 for scores in callback.importance.scores.values())
    assert set(report["metrics"]["pruned"]) == {"accuracy"}  # the module's evaluate, under bf16 autocast
    loaded = load_pruned(tmp_path / "run" / "pruned_model")
    assert next(loaded.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["grain", "smp"])
def test_training_callbacks_prune_a_users_module_under_bf16_mixed(method, tmp_path, tokenizer):
    """GRAIN distilling from a frozen copy (its teacher runs inside the step's autocast) and SMP's scores training
    with the user's optimiser, both in a user's project under bf16-mixed."""
    log = DtypeLog()
    module = UserModule(clear_cut_model().train(), tokenizer)
    hook_activations(module.net, log)
    callback = (GrainCallback(params_kept=0.5, **{k: v for k, v in COMMON.items() if k != "calibration_batch_size"})
                if method == "grain" else SMPCallback(params_kept=0.5, latency_batch_size=4, latency_repeats=1))
    callback.output_dir = str(tmp_path)
    trainer("bf16-mixed", [LossDtypes(log), callback], 2, tmp_path).fit(module, *loaders(tokenizer))
    report = read_report(tmp_path)
    assert report["method"] == method and report["training"]["steps"] == 8
    assert torch.bfloat16 in log.seen["activations"] and log.seen["loss"] == {torch.float32}
    assert report["latency"]["dtype"] == "float32" and set(report["metrics"]["pruned"]) >= {"acc"}
    if method == "grain":
        assert report["importance_from"] == "teacher"
        assert all(scores.dtype == torch.float32 for scores in callback.importance.scores.values())
    else:
        assert report["params"]["kept"] == pytest.approx(0.5, abs=0.01)
    assert next(load_pruned(tmp_path / "pruned_model").parameters()).dtype == torch.float32


def test_smp_module_distils_under_bf16_mixed_and_saves_bfloat16(tmp_path, tokenizer):
    """SMP's own task module: frozen encoder, scores, KL distillation from a teacher (float32 from bf16 logits)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from lit_prune.data.glue import GlueDataModule
    from lit_prune.methods.smp import SMPSequenceClassificationModule
    from test_glue import write_tsv

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert")).save_pretrained(tmp_path / "pretrained")
    AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=2)).save_pretrained(
        tmp_path / "teacher")
    for name in ("pretrained", "teacher"):
        tokenizer.save_pretrained(tmp_path / name)
    sentences = [" ".join(WORDS[(5 * i + j) % 115] for j in range(3 + i % 6)) for i in range(16)]
    for split, count in (("train", 16), ("dev", 8)):
        write_tsv(tmp_path / "RTE" / f"{split}.tsv", [["index", "sentence1", "sentence2", "label"]] + [
            [i, sentences[i], sentences[(i + 3) % 16], ("entailment", "not_entailment")[i % 2]] for i in range(count)])
    L.seed_everything(0, verbose=False)
    module = SMPSequenceClassificationModule(str(tmp_path / "pretrained"), task="rte", params_kept=0.3, head="teacher",
                                             distill=True, teacher=str(tmp_path / "teacher"), time_steps=0,
                                             latency_batch_size=4, latency_repeats=1, output_dir=str(tmp_path / "run"),
                                             save_dtype="bfloat16")
    data = GlueDataModule(task="rte", data_dir=str(tmp_path / "RTE"), tokenizer=str(tmp_path / "pretrained"),
                          batch_size=4)
    log = DtypeLog()
    hook_activations(module.model, log)
    trainer("bf16-mixed", [LossDtypes(log)], 2, tmp_path / "run").fit(module, datamodule=data)
    report = read_report(tmp_path / "run")
    assert torch.bfloat16 in log.seen["activations"] and log.seen["loss"] == {torch.float32}
    assert report["settings"]["save_dtype"] == "bfloat16" and report["latency"]["dtype"] == "bfloat16"
    assert report["params"]["kept"] == pytest.approx(0.3, abs=0.01)
    assert next(load_pruned(tmp_path / "run" / "pruned_model").parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"save_dtype='fp8': expected one of 'float32', 'bfloat16', 'float16'"):
        SMPSequenceClassificationModule(str(tmp_path / "pretrained"), task="rte", save_dtype="fp8")
