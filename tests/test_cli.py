"""train.py and the LightningCLI: every recipe parses, runs work from the command line, DDP works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from lit_prune.cli import main
from test_glue import write_rte

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def run_train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python train.py ...`` in a subprocess (in-process DDP under pytest hangs)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_there_are_recipes():
    names = {path.relative_to(REPO / "configs").as_posix() for path in CONFIGS}
    assert {"quickstart.yaml", "finetune/sst2.yaml", "finetune/mrpc.yaml", "finetune/stsb.yaml",
            "finetune/cola.yaml", "finetune/squad_v1.yaml", "finetune/squad_v2.yaml"} <= names
    for method in ("kwon", "kprune"):
        assert {f"{method}/{task}.yaml" for task in ("sst2", "mrpc", "stsb", "cola", "squad_v1", "squad_v2")} <= names
    assert {f"gpruner/{task}.yaml" for task in ("sst2", "mrpc", "stsb", "squad_v1", "squad_v2")} <= names
    for method in ("grain", "smp"):
        assert {f"{method}/{task}.yaml" for task in ("sst2", "mrpc", "stsb", "squad_v1")} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_every_config_parses(config, capsys):
    """Each recipe names its run command on its first lines and parses (types, links, class paths)."""
    head = config.read_text().splitlines()[:4]
    assert any("python train.py" in line and str(config.relative_to(REPO)) in line for line in head), head
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "class_path: lit_prune." in printed


def test_task_switch_links_model_and_data(tmp_path, minilm_l3):
    """`--data.task rte` is all it takes: the model's task (head, metrics) follows the data."""
    cli = main(["--config", str(REPO / "configs/quickstart.yaml"), "--data.task", "rte",
                "--data.data_dir", str(write_rte(tmp_path / "RTE")), "--model.name_or_path", str(minilm_l3),
                "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.task == "rte" and cli.datamodule.task == "rte"
    assert cli.datamodule.tokenizer_name == str(minilm_l3)
    assert cli.model.model.config.id2label == {0: "entailment", 1: "not_entailment"}


def test_bad_task_name_is_rejected_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.task", "sst5"])
    err = capsys.readouterr().err
    assert "sst5" in err and "'rte'" in err


def test_fit_from_the_command_line(tmp_path):
    result = run_train("fit", "--config", "configs/quickstart.yaml", "--data.max_train_samples", "48",
                       "--data.batch_size", "16", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2",
                       "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "final_model" / "model.safetensors").is_file()
    # the saved folder validates with the recipe's data and metrics
    result = run_train("validate", "--config", "configs/quickstart.yaml", "--model.name_or_path",
                       str(tmp_path / "final_model"), "--trainer.limit_val_batches", "2", "--trainer.logger", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/accuracy" in result.stdout


def test_ddp_two_processes(tmp_path):
    result = run_train("fit", "--config", "configs/quickstart.yaml", "--data.max_train_samples", "64",
                       "--data.batch_size", "8", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
                       "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                       "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                       "--trainer.enable_progress_bar", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size: 2" in result.stderr or "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    assert (tmp_path / "final_model" / "model.safetensors").is_file()
