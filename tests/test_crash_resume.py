"""Crash and resume: a GRAIN run and an SMP run killed with SIGKILL in the middle of their pruning schedule and
resumed from their last checkpoint end with the masks of an uninterrupted run with the same seed.

Deterministic settings (as the README says): dropout off, length-grouped batches (their order is seeded per epoch),
``deterministic=True``, checkpoints at epoch ends. Each run is its own ``python`` process, so the kill is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_config
from lit_prune.report import read_report
from test_glue import write_rte

# Each test runs two or three python processes in turn (an uninterrupted run, a killed one, its resume): 40 to 60 s
# apiece on a busy 2-core machine. In the full suite (`-m "slow or not slow"`), not the quick default.
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lit_prune.data.glue import GlueDataModule

    method, folder, data_dir, root, kill_at, ckpt = sys.argv[1:7]
    kill_at = int(kill_at)

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    L.seed_everything(0, verbose=False)
    data = GlueDataModule(task="rte", data_dir=data_dir, tokenizer=folder, batch_size=4, group_by_length=True)
    callbacks = [ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), save_last=True, every_n_epochs=1)]
    if kill_at > 0:
        callbacks.append(Kill())
    if method == "grain":
        from lit_prune.tasks.distilled import DistilledSequenceClassificationModule
        from lit_prune.methods import GrainCallback
        module = DistilledSequenceClassificationModule(folder, task="rte", learning_rate=5e-3, warmup_ratio=0.0)
        callbacks.append(GrainCallback(params_kept=0.2, evaluate=False, latency_batch_size=0))
    else:
        from lit_prune.methods.smp import SMPSequenceClassificationModule
        module = SMPSequenceClassificationModule(folder, task="rte", params_kept=0.2, latency_batch_size=0,
                                                 time_steps=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, max_epochs=3, deterministic=True,
                        callbacks=callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=None if ckpt == "-" else ckpt)
''')


def _run(script, method, folder, data_dir, root, kill_at=0, ckpt="-"):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(script), method, str(folder), str(data_dir), str(root), str(kill_at),
                           str(ckpt)], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_l3):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("crash")
    tokenizer = AutoTokenizer.from_pretrained(minilm_l3)
    folder = root / "model"
    torch.manual_seed(0)
    config = tiny_config("bert", vocab_size=tokenizer.vocab_size, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, num_labels=2, finetuning_task="rte")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    script = root / "run.py"
    script.write_text(SCRIPT)
    return script, folder, write_rte(root / "RTE", n=40)  # 10 steps per epoch, 30 in all


@pytest.mark.parametrize("method, masks_file", [("grain", "pruning_masks.safetensors"),
                                                 ("smp", "weight_masks.safetensors")])
def test_killed_mid_schedule_and_resumed_ends_with_the_same_masks(setup, tmp_path, method, masks_file):
    script, folder, data_dir = setup
    whole = _run(script, method, folder, data_dir, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # GRAIN prunes from step 6 to 12 of 30, SMP from step 0 to 30; the last checkpoint before the kill is the end of
    # epoch 0 (step 10), inside both schedules
    kill_at = 11 if method == "grain" else 13
    killed = _run(script, method, folder, data_dir, tmp_path / "killed", kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL
    assert not (tmp_path / "killed" / masks_file).exists() and not (tmp_path / "killed" / "pruned_model").exists()
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 10
    resumed = _run(script, method, folder, data_dir, tmp_path / "killed", ckpt=last)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, found = (load_file(tmp_path / name / masks_file) for name in ("whole", "killed"))
    assert expected.keys() == found.keys() and all(torch.equal(expected[k], found[k]) for k in expected)
    reports = [json.loads((tmp_path / name / "pruning_report.json").read_text()) for name in ("whole", "killed")]
    assert reports[0]["structure"] == reports[1]["structure"]
    # the pruning time of the resumed run counts the killed run's training up to its checkpoint
    assert "prune_before_resume" not in reports[0]["seconds"]
    assert 0 < reports[1]["seconds"]["prune_before_resume"] < reports[1]["seconds"]["prune"]


KILL_WHILE_SAVING = textwrap.dedent('''
    import os, signal, sys
    import transformers

    # die in the middle of writing the pruned folder: its weights are on disk, its config is not yet
    original = transformers.PreTrainedModel.save_pretrained

    def save_then_die(self, folder, *args, **kwargs):
        original(self, folder, *args, **kwargs)
        if "lit_prune_structure" in self.config.to_dict():
            os.kill(os.getpid(), signal.SIGKILL)

    transformers.PreTrainedModel.save_pretrained = save_then_die
    sys.argv = ["train.py", *sys.argv[1:]]
    from lit_prune.cli import main
    main()
''')


def test_a_killed_retraining_free_run_leaves_no_partial_folder_and_a_rerun_completes(teacher, tmp_path):
    from test_cli import run_train
    from test_pruning_callbacks import COMMON, SAMPLE

    script = tmp_path / "kill_while_saving.py"
    script.write_text(KILL_WHILE_SAVING)
    out = tmp_path / "run"
    args = ["fit", "--config", "configs/kwon/sst2.yaml", "--model.name_or_path", str(teacher),
            "--trainer.default_root_dir", str(out), *COMMON, *SAMPLE["kwon"],
            "--trainer.callbacks.init_args.evaluate", "false", "--trainer.callbacks.init_args.latency_batch_size", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (out / "pruned_model").exists() and not (out / "pruning_report.json").exists()
    assert list(out.glob(".pruned_model.tmp.*"))  # the killed writer's leftovers, hidden
    rerun = run_train(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert read_report(out)["method"] == "kwon" and (out / "pruned_model" / "config.json").is_file()
    assert not list(out.glob(".pruned_model.*"))  # the rerun cleaned them up
