"""benchmarks/heldout.py: the held-out distillation loss of a benchmark's pruned models, on a tiny model and data."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import torch
import yaml

from benchmarks import heldout
from conftest import tiny_model
from lit_prune.core.compact import compact
from lit_prune.core.io import save_pruned
from lit_prune.core.masks import PruningMasks
from lit_prune.data.base import TaskDataModule
from lit_prune.report import REPORT_FILE, write_report
from test_benchmarks import make_config, synthetic_report


class TinyData(TaskDataModule):
    """60 random training examples of lengths 6 to 11 (no tokenizer needed)."""

    task = "sst2"

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        lengths = [6 + i % 6 for i in range(60)]
        self.datasets["train"] = datasets.Dataset.from_dict({
            "input_ids": [torch.randint(5, 120, (n,), generator=g).tolist() for n in lengths],
            "labels": [i % 2 for i in range(60)]})

    def collate(self, features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, f in enumerate(features):
            ids[row, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[row, :len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}


def write_run(folder, teacher_model, teacher_folder, masks, calibration):
    save_pruned(compact(copy.deepcopy(teacher_model), masks), folder / "pruned_model")
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"class_path": "test_heldout.TinyData",
                                                                 "init_args": {}}}))
    report = synthetic_report("sst2", "kwon", 0.5, 0, str(teacher_folder))
    report.update(calibration={"requested": calibration}, metrics={"main": "accuracy", "pruned": {"accuracy": 0.8}})
    write_report(folder / REPORT_FILE, report)


def test_the_held_out_loss_of_pruned_models(tmp_path):
    config = make_config(tmp_path, tasks=["sst2"], methods=["kwon", "kprune"], budgets=[0.5], seeds=[0],
                         timing=None)
    teacher = tiny_model("bert", initializer_range=0.5)  # logits large enough for pruning to move them
    teacher_folder = tmp_path / "teacher" / "final_model"
    teacher.save_pretrained(teacher_folder)
    ones = PruningMasks.from_model(teacher)
    half = ones.clone()
    half.ffn[:, ::2] = 0
    half.head[1, :2] = 0
    draws = {"kwon": {"num_samples": 16, "num_tokens": None, "replacement": True, "seed": 0},
             "kprune": {"num_samples": None, "num_tokens": 100, "replacement": False, "seed": 0}}
    for method, masks in (("kwon", half), ("kprune", ones)):
        write_run(config.runs / method / "sst2" / "0.5" / "seed0", teacher, teacher_folder, masks, draws[method])

    datamodule = TinyData()
    datamodule.setup()
    reports = [{"calibration": {"requested": draw}} for draw in draws.values()]
    used = {i for draw in draws.values() for i in datamodule.calibration_sample(**draw).dataset.indices}
    indices = heldout.held_out_indices(datamodule, reports, 20, seed=1)
    assert len(indices) == len(set(indices)) == 20 and not used & set(indices)
    with pytest.raises(ValueError, match=r"--samples=60: only \d+ training examples are outside every calibration"):
        heldout.held_out_indices(datamodule, reports, 60, seed=1)

    results = heldout.measure(config, ["sst2"], [0.5], samples=20, seed=1, batch_size=8)
    rows = {row["method"]: row for row in results["tasks"]["sst2"]}
    assert rows["kprune"]["heldout_loss"] == pytest.approx(0.0, abs=1e-6)  # nothing pruned: the teacher itself
    assert rows["kwon"]["heldout_loss"] > 1e-4
    assert rows["kwon"]["dev_score"] == pytest.approx(80.0) and rows["kwon"]["main_metric"] == "accuracy"
    table = heldout.markdown(results)
    assert "| sst2 (accuracy) | 0.5 | KPrune | 0.0000 | 80.00 |" in table
    assert table.index("KPrune") < table.index("Kwon et al.")  # sorted by loss
    json.dumps(results)
    # runs that pruned different models cannot be compared
    other = config.runs / "kprune" / "sst2" / "0.5" / "seed0" / REPORT_FILE
    other.write_text(other.read_text().replace(str(teacher_folder), str(tmp_path / "another")))
    with pytest.raises(ValueError, match=r"sst2: the runs pruned different models"):
        heldout.measure(config, ["sst2"], [0.5], samples=20, seed=1, batch_size=8)
