"""train.py and the LightningCLI: every recipe parses, runs work from the command line, DDP works."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest

from conftest import REPO
from lit_prune.cli import LitPruneRichProgressBar, LitPruneTQDMProgressBar, main, quiet_third_party
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


# A result in a header: a metric with its score ("dev F1 0.848", "accuracy 83.6"), a speed ratio ("1.92x", "faster").
RESULTS = re.compile(r"\b(accuracy|F1|Pearson|Spearman|MCC|exact match)\b[^.;:]{0,25}?\d+\.\d"
                     r"|\b\d+(\.\d+)?\s?[x×](?!\w)|\bfaster\b|\bspeed-?up of \d", re.IGNORECASE)


def recipe_header(config) -> list[str]:
    """The comment lines a recipe opens with."""
    lines = config.read_text().splitlines()
    return lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_every_config_parses(config, capsys):
    """Each recipe opens with what it does, its command, what it needs first and how long it takes, and no results
    (those are in docs/<method>.md); and it parses (types, links, class paths)."""
    head = recipe_header(config)
    assert any("python train.py" in line and str(config.relative_to(REPO)) in line for line in head[:4]), head
    assert any(line.startswith("# Needs first:") for line in head), head
    assert any(line.startswith("# Takes:") for line in head), head
    assert len(head) <= 10, f"{len(head)} header lines: move the narration to the docs"
    assert not RESULTS.search("\n".join(head)), RESULTS.search("\n".join(head))
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
                       "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(tmp_path),
                       "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "final_model" / "model.safetensors").is_file()
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()
    # a clean run: no third-party deprecation, no Lightning tips, no logger version on the progress bar
    assert "LeafSpec" not in result.stderr and "Tip:" not in result.stderr, result.stderr[-3000:]
    assert "GPU available" in result.stderr  # Lightning's own account of the run stays
    assert "train/loss" in result.stdout and "v_num" not in result.stdout, result.stdout[-2000:]
    # the saved folder validates with the recipe's data and metrics
    result = run_train("validate", "--config", "configs/quickstart.yaml", "--model.name_or_path",
                       str(tmp_path / "final_model"), "--trainer.limit_val_batches", "2", "--trainer.logger", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/accuracy" in result.stdout


@pytest.mark.slow  # two DDP processes (19 s alone on a busy machine)
def test_ddp_two_processes(tmp_path):
    result = run_train("fit", "--config", "configs/quickstart.yaml", "--data.max_train_samples", "64",
                       "--data.batch_size", "8", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
                       "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                       "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                       "--trainer.enable_progress_bar", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size: 2" in result.stderr or "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    assert (tmp_path / "final_model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ a quiet run


def test_known_third_party_warnings_are_silenced_by_their_text_only():
    from torch.utils._pytree import LeafSpec

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        LeafSpec()  # torch's deprecation of the class that Lightning builds in every fit (if this torch has it)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use something else", FutureWarning)
        warnings.warn("another library's deprecation", FutureWarning)
        warnings.warn("a deprecation of ours", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["another library's deprecation", "a deprecation of ours"]


def test_lightnings_tips_are_dropped_and_its_other_messages_kept():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_module

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    rank_zero_module.log.addHandler(handler)
    try:
        quiet_third_party()
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
    finally:
        rank_zero_module.log.removeHandler(handler)
    assert [record.getMessage() for record in records] == ["GPU available: False, used: False"]


def test_the_progress_bar_shows_no_logger_version(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    for plain, ours in ((TQDMProgressBar, LitPruneTQDMProgressBar), (RichProgressBar, LitPruneRichProgressBar)):
        trainer = L.Trainer(logger=CSVLogger(tmp_path), callbacks=[plain()], accelerator="cpu", devices=1)
        assert "v_num" in trainer.progress_bar_callback.get_metrics(trainer, None)  # Lightning's default
        trainer = L.Trainer(logger=CSVLogger(tmp_path), callbacks=[ours()], accelerator="cpu", devices=1)
        assert "v_num" not in trainer.progress_bar_callback.get_metrics(trainer, None)


def test_the_cli_uses_that_bar_unless_the_recipe_says_otherwise(tmp_path, minilm_l3):
    common = ["--config", str(REPO / "configs/quickstart.yaml"), "--model.name_or_path", str(minilm_l3),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    assert isinstance(main(common, run=False).trainer.progress_bar_callback,
                      (LitPruneRichProgressBar, LitPruneTQDMProgressBar))
    assert main([*common, "--trainer.enable_progress_bar", "false"], run=False).trainer.progress_bar_callback is None
    chosen = main([*common, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar",
                   "--trainer.callbacks.refresh_rate=5"], run=False).trainer.progress_bar_callback
    assert type(chosen).__name__ == "TQDMProgressBar" and chosen.refresh_rate == 5


def test_the_results_pattern_catches_results():
    for text in ("dev F1 0.848", "accuracy 83.6 with it", "Pearson 0.068 against 0.821", "1.92x", "2.7× faster",
                 "a speedup of 2"):
        assert RESULTS.search(text), text
    for text in ("Takes: about 24 minutes on 2 CPU cores", "2,048 SST-2 examples: 94 s", "dev accuracy on all 872 dev "
                 "sentences", "Main dev metric: F1", "at 20/10/5%", "flops_kept 0.6", "init_args.speedup 2.0"):
        assert not RESULTS.search(text), text
