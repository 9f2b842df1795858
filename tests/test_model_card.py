"""The model card every pruned folder carries: ``README.md`` that ``huggingface_hub.ModelCard`` parses, its metadata
(library, tags, base model, pipeline, the pruned model's metrics as Hub evaluation results) and its body (method,
budget, FLOPs and weights kept, metrics, measured speedup, command, how to load), all from the report.
"""

from __future__ import annotations

import copy
import glob
import json
import sys

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from lit_prune.core.hardware import hardware_label
from lit_prune.model_card import CARD_FILE, DATASETS, model_card, write_model_card
from lit_prune.report import read_report
from tests.conftest import REPO
from tests.test_user_project import CALLBACKS, UserModule, fit, loaders, tokenizer, user_model_folder  # noqa: F401

COMMAND = ["train.py", "fit", "--config", "configs/kprune/mrpc.yaml", "--trainer.callbacks.init_args.speedup", "1.5",
           "--trainer.default_root_dir", "runs/my run"]


def kprune_report() -> dict:
    """A report as KPrune writes it on MRPC under a latency budget (the shared keys and the method's own)."""
    return {
        "method": "kprune", "model": "sentence-transformers/all-MiniLM-L6-v2", "task": "mrpc", "seed": 3,
        "world_size": 1,
        "flops": {"dense": 1156661805.67, "pruned": 346957400.80, "kept": 0.29996443, "seq_len": 53.2426,
                  "target": None, "seq_len_from": "data module (evaluation split)"},
        "params": {"dense": {"total": 22713986, "encoder_linear": 10637568, "encoder_linear_weights": 10616832},
                   "pruned": {"total": 15184676, "encoder_linear": 3108258, "encoder_linear_weights": 3098112},
                   "kept": 0.29180908},
        "metrics": {"dense": {"accuracy": 0.78431374, "f1": 0.85284281},
                    "pruned": {"accuracy": 0.76715684, "f1": 0.84451717}, "main": "f1", "dense_source": "evaluated"},
        "seconds": {"prune": 49.113, "total": 61.131},
        "latency": {"dense_ms": 369.3456, "pruned_ms": 136.1744, "speedup": 2.7123, "speedup_paired": 2.7066,
                    "batch_size": 32, "seq_len": 78, "threads": 2, "repeats": 6, "inputs": "evaluation split",
                    "budget": {"requested_speedup": 1.5, "predicted_speedup": 1.5234, "predicted_ms": 242.1,
                               "measured_speedup": 1.4712, "measured_vs_requested": -0.0192,
                               "measured": {"asked": {"batch_size": 32, "seq_len": 53, "speedup": 1.4712},
                                            "batch_1": {"batch_size": 1, "seq_len": 53, "speedup": 1.3125}}}},
        "structure": [{"heads": [[32, 32]] * 4, "head_ids": [0, 1, 2, 3], "ffn": 512}],
        "hardware": {"device": "cpu", "cpu_model": "AMD EPYC", "cpu": "x86_64", "cpu_count": 2, "threads": 2,
                     "torch": "2.13.0+cpu", "gpu": None},
        "settings": {"flops_kept": None, "speedup": 1.5, "latency_batch_size": 32, "seed": 3},
        "tokenizer": "the model's folder sentence-transformers/all-MiniLM-L6-v2",
    }


def load_card(tmp_path, report, command=COMMAND, **kwargs) -> tuple[ModelCard, str]:
    """Write the card as a pruned folder holds it and load it back with huggingface_hub."""
    path = tmp_path / CARD_FILE
    path.write_text(model_card(report, command, **kwargs))
    return ModelCard.load(path), path.read_text()


def eval_results(card: ModelCard) -> dict[str, tuple]:
    """metric name -> (value, Hub metric type, dataset type, config, split, task type), via the Hub's own parser."""
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    return {r.metric_name: (r.metric_value, r.metric_type, r.dataset_type, r.dataset_config, r.dataset_split,
                            r.task_type) for r in results}


# ------------------------------------------------------------------------------------------------ metadata
def test_the_metadata_parses_with_the_pruned_metrics_as_eval_results(tmp_path):
    report = kprune_report()
    card, _ = load_card(tmp_path, report)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # a plain string, not a list
    assert data["tags"] == ["lit_prune", "pruning", "structured-pruning", "kprune", "mrpc"]
    assert data["pipeline_tag"] == "text-classification" and data["datasets"] == ["nyu-mll/glue"]
    results = eval_results(card)
    assert list(results) == ["f1", "accuracy"]  # the task's main metric first
    assert results["f1"] == (report["metrics"]["pruned"]["f1"], "f1", "nyu-mll/glue", "mrpc", "validation",
                             "text-classification")
    assert results["accuracy"][0] == report["metrics"]["pruned"]["accuracy"] == 0.76715684
    assert card.data.eval_results[0].metric_value == 0.84451717  # what ModelCardData itself made of it
    assert card.data.model_name == "all-MiniLM-L6-v2-kprune-pruned"


@pytest.mark.parametrize("task, metrics, main, expected", [
    ("squad_v1", {"exact_match": 71.25, "f1": 80.5}, "f1",
     {"f1": (80.5, "f1", "rajpurkar/squad", None, "validation", "question-answering"),
      "exact_match": (71.25, "exact_match", "rajpurkar/squad", None, "validation", "question-answering")}),
    ("stsb", {"pearson": 0.8612, "spearman": 0.8577}, "pearson",
     {"pearson": (0.8612, "pearsonr", "nyu-mll/glue", "stsb", "validation", "text-classification"),
      "spearman": (0.8577, "spearmanr", "nyu-mll/glue", "stsb", "validation", "text-classification")}),
    ("cola", {"mcc": 0.3141, "accuracy": 0.7}, "mcc",
     {"mcc": (0.3141, "matthews_correlation", "nyu-mll/glue", "cola", "validation", "text-classification"),
      "accuracy": (0.7, "accuracy", "nyu-mll/glue", "cola", "validation", "text-classification")}),
    ("mnli", {"accuracy": 0.801, "mismatched/accuracy": 0.812}, "accuracy",
     {"accuracy": (0.801, "accuracy", "nyu-mll/glue", "mnli", "validation_matched", "text-classification"),
      "mismatched/accuracy": (0.812, "accuracy", "nyu-mll/glue", "mnli", "validation_mismatched",
                              "text-classification")}),
])
def test_each_task_gives_its_dataset_split_pipeline_and_hub_metric_ids(tmp_path, task, metrics, main, expected):
    report = kprune_report() | {"task": task}
    report["metrics"] = {"dense": None, "pruned": metrics, "main": main}
    card, text = load_card(tmp_path, report)
    assert eval_results(card) == expected
    qa = task.startswith("squad")
    assert card.data.pipeline_tag == ("question-answering" if qa else "text-classification")
    auto = "AutoModelForQuestionAnswering" if qa else "AutoModelForSequenceClassification"
    assert f"model = {auto}.from_pretrained(folder, trust_remote_code=True)" in text
    assert f"| {main} (main metric) | not measured | {metrics[main]:.4f} |  |" in text  # no dense: no change


def test_the_datasets_are_the_ones_lit_prune_data_loads():
    from lit_prune.data import CONLL_TASKS, GLUE_TASKS, SQUAD_TASKS
    from lit_prune.data.conll import HUB_DATASET as CONLL_HUB_DATASET
    from lit_prune.data.glue import HUB_DATASET
    from lit_prune.data.squad import _SOURCES

    assert set(DATASETS) == set(GLUE_TASKS) | set(SQUAD_TASKS) | set(CONLL_TASKS)
    assert DATASETS["conll2003"][0] == CONLL_HUB_DATASET
    for task in GLUE_TASKS:
        assert DATASETS[task][:2] == (HUB_DATASET, task)
        assert DATASETS[task][2] == f"GLUE {GLUE_TASKS[task].folder}"
    for task in SQUAD_TASKS:
        assert DATASETS[task][0] == _SOURCES[task][1]


@pytest.mark.parametrize("model, expected", [
    ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),  # a bare folder name (a bundled asset or a Hub id)
    ("bert-base-uncased", "bert-base-uncased"),
    ("runs/teachers/mrpc/all-MiniLM-L6-v2-seed42/final_model", None),  # a local path: no base_model
    ("/abs/path/model", None),
    ("", None),  # a model built from a config
])
def test_base_model_only_when_the_name_looks_like_a_hub_id(tmp_path, model, expected):
    card, text = load_card(tmp_path, kprune_report() | {"model": model})
    assert card.data.base_model == expected
    if model:
        assert f"`{model}` on GLUE MRPC, pruned with **KPrune" in text  # the body names it either way


def test_an_existing_local_folder_of_two_parts_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    card, _ = load_card(tmp_path, kprune_report() | {"model": "runs/teacher"})
    assert card.data.base_model is None


# ------------------------------------------------------------------------------------------------ body
def test_the_body_gives_method_budget_table_speedup_command_and_loading(tmp_path):
    report = kprune_report()
    _, text = load_card(tmp_path, report)
    assert "# all-MiniLM-L6-v2 pruned with kprune" in text
    assert "pruned with **KPrune (Park et al., 2024)** by lit_prune: retraining-free" in text
    assert "Budget asked: `speedup=1.5` (a latency budget" in text
    assert "| FLOPs per example (s = 53.2 tokens) | 1.157 G | 346.957 M | 0.3000 (FLOPs kept) |" in text
    assert "| encoder attention + FFN Linear weights | 10.617 M | 3.098 M | 0.2918 (params kept) |" in text
    assert "| parameters in all | 22.714 M | 15.185 M | 0.6685 |" in text
    # main metric first, dense against pruned, and the change
    assert text.index("| f1 (main metric) | 0.8528 | 0.8445 | -0.0083 |") < text.index("| accuracy | 0.7843 | "
                                                                                         "0.7672 | -0.0172 |")
    assert "| latency (batch 32 x 78 tokens, 2 threads) | 369.35 ms | 136.17 ms | 2.71x faster |" in text
    assert ("Measured speedup: **2.71x** (median dense time over median pruned time, interleaved in the same run; "
            "paired: 2.71x) at batch size 32, sequence length 78, 2 threads, on "
            f"{hardware_label(report['hardware'])}.") in text
    assert ("Latency budget: requested **1.50x**, predicted 1.52x by the latency table, "
            "measured 1.47x at batch 32 x 53 tokens (1.31x at batch 1).") in text
    assert "Method `kprune`, seed 3, 61.1 s in all." in text
    assert ("```bash\npython train.py fit --config configs/kprune/mrpc.yaml --trainer.callbacks.init_args.speedup 1.5 "
            "--trainer.default_root_dir 'runs/my run'\n```") in text  # shell-quoted, runnable as shown
    assert "model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)" in text
    assert "tokenizer = AutoTokenizer.from_pretrained(folder)" in text
    assert "It needs no lit_prune install" in text
    assert "not measured" not in text


@pytest.mark.parametrize("budget, expected", [
    ({"flops": {"target": 0.3}, "settings": {"flops_kept": 0.3}},
     ("Budget asked: `flops_kept=0.3` (the fraction of the FLOPs kept, counted at the task's average length of "
      "53.2 tokens).")),
    ({"params": {"target": 0.05}, "settings": {"params_kept": 0.05}},
     "Budget asked: `params_kept=0.05` (the fraction of the encoder's attention and FFN Linear weights kept)."),
])
def test_the_budget_asked_is_the_callbacks_setting(tmp_path, budget, expected):
    report = kprune_report()
    report["latency"].pop("budget")
    report["settings"] = budget["settings"]
    for key in ("flops", "params"):
        report[key].update(budget.get(key, {}))
    _, text = load_card(tmp_path, report)
    assert expected in text and "Latency budget" not in text


def test_a_run_without_metrics_or_latency_still_gives_a_valid_card(tmp_path):
    report = kprune_report() | {"latency": None, "tokenizer": None}
    report["metrics"] = {"dense": None, "pruned": None, "main": "f1"}
    report["params"].pop("kept")  # a report written before params.kept: computed from the counts
    card, text = load_card(tmp_path, report)
    data = card.data.to_dict()
    assert "model-index" not in data and card.data.eval_results is None
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    assert "| dev metrics | not measured | not measured (the run had `evaluate=False`) | |" in text
    assert "| latency | not measured | not measured (the run had `latency_batch_size=0`) | |" in text
    assert f"Measured speedup: not measured. Hardware: {hardware_label(report['hardware'])}." in text
    assert "| 0.2918 (params kept) |" in text
    assert "AutoTokenizer" not in text  # no tokenizer was saved


def test_an_unknown_task_and_method_still_give_a_card(tmp_path):
    report = kprune_report() | {"task": None, "method": "mine", "model": "", "hardware": {}, "seconds": {}}
    report["metrics"] = {"dense": {"val_acc": 0.5}, "pruned": {"val_acc": 0.625}, "main": None}
    card, text = load_card(tmp_path, report, command=[])
    # no task nor saved kind: no pipeline, so no Hub evaluation result; the metrics are in the body
    assert card.data.pipeline_tag is None and card.data.eval_results is None
    assert card.data.tags == ["lit_prune", "pruning", "structured-pruning", "mine"]
    assert "| val_acc | 0.5000 | 0.6250 | +0.1250 |" in text and "Command: not recorded." in text
    assert "# model pruned with mine" in text and "A model with no saved name, pruned with **mine**" in text
    assert "Method `mine`, seed 3." in text  # no total seconds recorded
    assert "model = AutoModel.from_pretrained(folder, trust_remote_code=True)" in text
    # the saved kind (from the folder's config) gives the pipeline and the user's data as "custom"
    card, _ = load_card(tmp_path, report, kind="sequence_classification")
    assert eval_results(card) == {"val_acc": (0.625, "val_acc", "custom", None, "validation", "text-classification")}


def test_the_command_defaults_to_sys_argv(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--config", "my config.yaml"])
    _, text = load_card(tmp_path, kprune_report(), command=None)
    assert "```bash\npython train.py fit --config 'my config.yaml'\n```" in text


def test_every_stored_benchmark_report_gives_a_card(tmp_path):
    paths = sorted(glob.glob(str(REPO / "benchmarks" / "results" / "reports" / "**" / "pruning_report.json"),
                             recursive=True))
    by_method = {}
    for path in paths:  # one measured report per method keeps this fast
        report = read_report(path)
        if report["latency"] and report["metrics"]["pruned"]:
            by_method.setdefault(report["method"], report)
    if not by_method:
        pytest.skip("no stored benchmark reports")
    for method, report in by_method.items():
        card, text = load_card(tmp_path, report)
        main = report["metrics"]["main"]
        assert eval_results(card)[main][0] == report["metrics"]["pruned"][main], method
        assert f"| {report['flops']['kept']:.4f} (FLOPs kept) |" in text
        assert f"Measured speedup: **{report['latency']['speedup']:.2f}x**" in text, method


def test_write_model_card_is_atomic_and_reads_the_kind_from_the_folder(tmp_path):
    folder = tmp_path / "pruned_model"
    folder.mkdir()
    # a question-answering folder, though the report's task says classification: the folder's config wins
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForQuestionAnswering"]}))
    report = kprune_report()
    path = write_model_card(folder, report, command=["x"])
    assert path == folder / CARD_FILE and sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json"]
    text = path.read_text()
    assert "model = AutoModelForQuestionAnswering.from_pretrained" in text
    assert "AutoTokenizer" not in text  # no tokenizer files in the folder
    (folder / "tokenizer_config.json").write_text("{}")
    write_model_card(folder, report, command=["x"])
    assert "tokenizer = AutoTokenizer.from_pretrained(folder)" in path.read_text()
    assert not list(folder.glob(".README.md.*"))  # no temporary file left


def test_the_report_is_not_changed(tmp_path):
    report = kprune_report()
    before = copy.deepcopy(report)
    load_card(tmp_path, report)
    assert report == before


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("method", ["kwon", "smp"])
def test_a_pruning_run_leaves_a_card_in_its_pruned_folder(method, user_model_folder, tokenizer, tmp_path):  # noqa: F811
    from transformers import AutoModelForSequenceClassification

    fit(CALLBACKS[method](), UserModule(user_model_folder), tmp_path, *loaders(tokenizer), max_epochs=1)
    report = read_report(tmp_path)
    folder = tmp_path / "pruned_model"
    card = ModelCard.load(folder / CARD_FILE)
    text = (folder / CARD_FILE).read_text()
    # the user's own validation metrics, on their own data, as the pruned model's evaluation results
    assert {name: value for name, (value, *_rest) in eval_results(card).items()} == report["metrics"]["pruned"]
    assert {r.dataset_type for r in card.data.eval_results} == {"custom"}
    assert card.data.pipeline_tag == "text-classification" and card.data.base_model is None  # a local tmp folder
    kind = "unstructured-pruning" if method == "smp" else "structured-pruning"
    assert card.data.tags == ["lit_prune", "pruning", kind, method]
    assert ("Single weights were removed" if method == "smp" else "Attention heads (or their dimensions)") in text
    assert f"| {report['flops']['kept']:.4f} (FLOPs kept) |" in text
    assert f"| {report['params']['kept']:.4f} (params kept) |" in text
    latency = report["latency"]
    assert (f"Measured speedup: **{latency['speedup']:.2f}x** (median dense time over median pruned time, "
            f"interleaved in the same run; paired: {latency['speedup_paired']:.2f}x) at batch size "
            f"{latency['batch_size']}, sequence length {latency['seq_len']}") in text
    assert "model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)" in text
    assert "tokenizer = AutoTokenizer.from_pretrained(folder)" in text
    # the card changes nothing else: the folder still loads with plain transformers
    AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True)


def test_no_saved_model_no_card(user_model_folder, tokenizer, tmp_path):  # noqa: F811
    from lit_prune.methods import KwonCallback

    callback = KwonCallback(flops_kept=0.5, save_model=False, evaluate=False, latency_batch_size=0)
    fit(callback, UserModule(user_model_folder), tmp_path, *loaders(tokenizer), max_epochs=1)
    assert (tmp_path / "pruning_report.json").is_file() and not (tmp_path / "pruned_model").exists()
