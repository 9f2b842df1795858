"""The model card of a pruned folder: ``README.md`` in Hugging Face's model-card format, written from the report.

Every ``pruned_model/`` a pruning run writes carries one (:func:`write_model_card`, called by
:func:`lit_prune.methods.run.write_outputs`), so a folder copied elsewhere or uploaded to the Hub still says what it
is. The card has two parts:

* YAML front matter that :class:`huggingface_hub.ModelCard` parses: ``library_name: transformers``, ``base_model``
  (when the pruned model's name looks like a Hub id), ``tags``, ``pipeline_tag``, ``datasets`` and a
  ``model-index`` with the pruned model's evaluation metrics (the Hub's evaluation results);
* a markdown body: the method and the budget asked, a table of FLOPs, encoder Linear weights, metrics and latency,
  dense against pruned, the latency budget's outcome when there was one, the command that made the folder, and how
  to load it with plain transformers.

Every number comes from the report (:mod:`lit_prune.report`); what a run did not measure (``evaluate=False``,
``latency_batch_size=0``) reads "not measured". Usage::

    from lit_prune.model_card import model_card
    from lit_prune.report import read_report

    print(model_card(read_report("runs/kprune/mrpc")))
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml  # PyYAML: a dependency of transformers

from lit_prune.core.atomic import atomic_write_text
from lit_prune.core.hf_modeling.modeling_lit_pruned import AUTO_CLASSES
from lit_prune.core.io import saved_kind
from lit_prune.core.hardware import hardware_label

CARD_FILE = "README.md"
NOT_MEASURED = "not measured"

#: method name -> (name in prose, one line on what it does)
METHODS: dict[str, tuple[str, str]] = {
    "kwon": ("Kwon et al. (2022)",
             ("retraining-free: Fisher-information mask search under the budget, mask rearrangement and "
              "least-squares mask tuning on a small calibration sample, weights frozen")),
    "kprune": ("KPrune (Park et al., 2024)",
               ("retraining-free: sublayer by sublayer, the units carrying the least predictive and representational "
                "knowledge are removed and the layer's weights are tuned to reconstruct the dense model's outputs")),
    "gpruner": ("G-Pruner (2024)",
                ("retraining-free: Kwon et al.'s pipeline with a PPO mask search and a conjugate gradient squared "
                 "mask-tuning solver")),
    "grain": ("GRAIN (Yang et al., 2023)",
              ("pruning while distilling from the fine-tuned model: gradient-based importance of intra-attention and "
               "FFN units, removed to a cubic schedule's density")),
    "smp": ("SMP (Li et al., 2023)",
            "static model pruning: per-weight mask scores trained with the pretrained weights frozen"),
}

#: methods that remove single weights (only the rows and columns they empty leave the matrices)
UNSTRUCTURED = {"smp"}
STRUCTURED_NOTE = ("Attention heads (or their dimensions) and FFN neurons were removed, so the weight matrices "
                   "themselves are smaller: the FLOPs and latency below need no sparse kernels.")
UNSTRUCTURED_NOTE = ("Single weights were removed: the rows and columns left empty were cut out of the matrices, the "
                     "other removed weights are stored as zeros; the FLOPs below count the smaller dense matrices.")

#: lit_prune task -> (Hub dataset id, dataset config, name on the card); the ids are the ones lit_prune.data loads
#: (a test checks them against lit_prune.data, which this module cannot import: it pulls in Lightning)
GLUE_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
              "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
DATASETS: dict[str, tuple[str, str | None, str]] = {
    **{task: ("nyu-mll/glue", task, f"GLUE {name}") for task, name in GLUE_NAMES.items()},
    "squad_v1": ("rajpurkar/squad", None, "SQuAD v1.1"),
    "squad_v2": ("rajpurkar/squad_v2", None, "SQuAD v2.0"),
    "conll2003": ("eriktks/conll2003", None, "CoNLL-2003"),
}

#: the Hub's pipeline tag of each saved model kind (lit_prune.core.io's kinds)
PIPELINE_TAGS = {"sequence_classification": "text-classification", "label_words": "text-classification",
                 "question_answering": "question-answering", "token_classification": "token-classification",
                 "sentence_embedding": "sentence-similarity", "base": "feature-extraction"}

#: lit_prune's metric names -> the Hub's metric ids (the others are the same on both sides)
HUB_METRICS = {"mcc": "matthews_correlation", "pearson": "pearsonr", "spearman": "spearmanr"}

#: a Hub model id: "name" or "owner/name" (a local path with more parts, or an absolute one, is not)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: trailing folder names that say nothing about the model (the name before them does)
_GENERIC_FOLDERS = {"final_model", "pruned_model", "model", "checkpoint", "best"}


# ------------------------------------------------------------------------------------------------ what it is
def task_kind(report: dict[str, Any], kind: str | None = None) -> str | None:
    """The saved model kind: ``kind`` when known (from the folder's config), else what the report's task implies
    ("sequence_classification" for GLUE, "question_answering" for SQuAD, "token_classification" for CoNLL-2003,
    "sentence_embedding" for the embedding task), else ``None``."""
    if kind is not None:
        return kind
    task = report.get("task")
    if task in GLUE_NAMES:
        return "sequence_classification"
    if isinstance(task, str) and task.startswith("squad"):
        return "question_answering"
    return {"conll2003": "token_classification", "embedding": "sentence_embedding"}.get(task)


def base_model(report: dict[str, Any]) -> str | None:
    """The report's ``model`` when it looks like a Hub id or a bare folder name, else ``None`` (a local path: the Hub
    would reject it as ``base_model``; the body names it instead)."""
    model = str(report.get("model") or "")
    if not _HUB_ID.match(model) or ("/" in model and Path(model).exists()):  # "runs/x" is a path, not an owner
        return None
    return model


def model_label(report: dict[str, Any]) -> str:
    """A short name for the pruned model's source: the model's last meaningful path part."""
    parts = [part for part in Path(str(report.get("model") or "")).parts if part not in ("/", ".", "")]
    while len(parts) > 1 and parts[-1] in _GENERIC_FOLDERS:
        parts.pop()
    return parts[-1] if parts else "model"


def budget_text(report: dict[str, Any]) -> str:
    """The budget the run asked for, as the callback's setting: ``speedup``, ``params_kept`` or ``flops_kept``."""
    settings = report.get("settings") or {}
    budget = (report.get("latency") or {}).get("budget") or {}
    speedup = settings.get("speedup") or budget.get("requested_speedup")
    if speedup is not None:
        return f"`speedup={speedup:g}` (a latency budget: {speedup:g}x faster than the dense model where it ran)"
    params_target = (report.get("params") or {}).get("target")
    if params_target is None:
        params_target = settings.get("params_kept")
    if params_target is not None:
        return f"`params_kept={params_target:g}` (the fraction of the encoder's attention and FFN Linear weights kept)"
    flops = report.get("flops") or {}
    if flops.get("target") is not None:
        return (f"`flops_kept={flops['target']:g}` (the fraction of the FLOPs kept, counted at the task's average "
                f"length of {flops.get('seq_len', 0):.1f} tokens)")
    return "not recorded"


def params_kept(report: dict[str, Any]) -> float | None:
    """The fraction of the encoder's attention and FFN Linear weights kept (``params.kept``; older reports lack it,
    so it is computed from the counts there)."""
    params = report.get("params") or {}
    if params.get("kept") is not None:
        return float(params["kept"])
    dense, pruned = (params.get(which, {}).get("encoder_linear_weights") for which in ("dense", "pruned"))
    return pruned / dense if dense and pruned is not None else None


# ------------------------------------------------------------------------------------------------ metadata
def ordered_metrics(report: dict[str, Any]) -> list[str]:
    """The pruned model's metric names, the task's main metric first, the others in name order."""
    metrics = report.get("metrics") or {}
    pruned = metrics.get("pruned") or {}
    main = metrics.get("main")
    return ([main] if main in pruned else []) + sorted(name for name in pruned if name != main)


def _metric_split(name: str, task: str | None) -> tuple[str, str]:
    """(split, metric name without its split prefix): MNLI's ``mismatched/accuracy`` is its mismatched dev set's."""
    if name.startswith("mismatched/"):
        return "validation_mismatched", name.split("/", 1)[1]
    return ("validation_matched" if task == "mnli" else "validation"), name


def model_index(report: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]] | None:
    """The ``model-index`` entry of the front matter: the pruned model's metrics, one result per evaluation split, in
    the Hub's format (:func:`huggingface_hub.repocard_data.model_index_to_eval_results` reads it). ``None`` when
    there is nothing to record: no metrics, or neither the task nor the model kind is known."""
    names = ordered_metrics(report)
    pipeline_tag = PIPELINE_TAGS.get(task_kind(report, kind) or "")
    task = report.get("task")
    if not names or pipeline_tag is None:
        return None
    # a user's own data has no Hub id: "custom" is the Hub's word for it
    dataset_id, config, dataset_name = DATASETS.get(task, (task or "custom", None, task or "validation data"))
    pruned = report["metrics"]["pruned"]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        split, bare = _metric_split(name, task)
        dataset = {"type": dataset_id, "name": dataset_name, "split": split, **({"config": config} if config else {})}
        result = results.setdefault(split, {"task": {"type": pipeline_tag}, "dataset": dataset, "metrics": []})
        result["metrics"].append({"type": HUB_METRICS.get(bare, bare), "value": float(pruned[name]), "name": name})
    label = f"{model_label(report)}-{report.get('method', 'pruned')}-pruned"
    return [{"name": label, "results": list(results.values())}]


def card_metadata(report: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """The front matter as a dict (keys in the Hub's spelling, ``model-index`` included when there are metrics)."""
    method = str(report.get("method") or "unknown")
    task = report.get("task")
    tags = ["lit_prune", "pruning", "unstructured-pruning" if method in UNSTRUCTURED else "structured-pruning", method]
    if task:
        tags.append(str(task))
    metadata: dict[str, Any] = {"library_name": "transformers", "tags": list(dict.fromkeys(tags))}
    if base_model(report) is not None:
        metadata["base_model"] = base_model(report)
    pipeline_tag = PIPELINE_TAGS.get(task_kind(report, kind) or "")
    if pipeline_tag is not None:
        metadata["pipeline_tag"] = pipeline_tag
    if task in DATASETS:
        metadata["datasets"] = [DATASETS[task][0]]
    index = model_index(report, kind)
    if index is not None:
        metadata["model-index"] = index
    return metadata


# ------------------------------------------------------------------------------------------------ body
def _si(value: float | None, unit: str = "") -> str:
    """``1156661805`` -> ``1.157 G`` (a count with an SI prefix); ``None`` -> "not measured"."""
    if value is None:
        return NOT_MEASURED
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else NOT_MEASURED


def _ratio(pruned: Any, dense: Any) -> str:
    ok = all(isinstance(v, (int, float)) for v in (pruned, dense)) and dense
    return f"{pruned / dense:.4f}" if ok else ""


def results_table(report: dict[str, Any]) -> list[str]:
    """The markdown table: FLOPs, encoder Linear weights, parameters, metrics (main first) and latency."""
    flops, params = report.get("flops") or {}, report.get("params") or {}
    dense_params, pruned_params = params.get("dense") or {}, params.get("pruned") or {}
    rows = [(f"| FLOPs per example (s = {flops.get('seq_len') or 0:.1f} tokens) | {_si(flops.get('dense'))} | "
             f"{_si(flops.get('pruned'))} | {_number(flops.get('kept'))} (FLOPs kept) |")]
    kept = params_kept(report)
    rows.append(f"| encoder attention + FFN Linear weights | {_si(dense_params.get('encoder_linear_weights'))} | "
                f"{_si(pruned_params.get('encoder_linear_weights'))} | {_number(kept)} (params kept) |")
    rows.append(f"| parameters in all | {_si(dense_params.get('total'))} | {_si(pruned_params.get('total'))} | "
                f"{_ratio(pruned_params.get('total'), dense_params.get('total'))} |")
    metrics = report.get("metrics") or {}
    dense_metrics, pruned_metrics = metrics.get("dense") or {}, metrics.get("pruned") or {}
    if not pruned_metrics:
        rows.append(f"| dev metrics | {NOT_MEASURED} | {NOT_MEASURED} (the run had `evaluate=False`) | |")
    for name in ordered_metrics(report):
        dense, pruned = dense_metrics.get(name), pruned_metrics[name]
        change = f"{pruned - dense:+.4f}" if isinstance(dense, (int, float)) else ""
        label = f"{name} (main metric)" if name == metrics.get("main") else name
        rows.append(f"| {label} | {_number(dense)} | {_number(pruned)} | {change} |")
    latency = report.get("latency")
    if latency:
        shape = (f"batch {latency.get('batch_size')} x {latency.get('seq_len')} tokens, {latency.get('threads')} "
                 f"thread{'' if latency.get('threads') == 1 else 's'}")
        if latency.get("dtype", "float32") != "float32":  # the folder's save_dtype, timed as it will run
            shape += f", {latency['dtype']} weights"
        rows.append(f"| latency ({shape}) | {_number(latency.get('dense_ms'), 2)} ms | "
                    f"{_number(latency.get('pruned_ms'), 2)} ms | {_number(latency.get('speedup'), 2)}x faster |")
    else:
        rows.append(f"| latency | {NOT_MEASURED} | {NOT_MEASURED} (the run had `latency_batch_size=0`) | |")
    return ["| | dense | pruned | pruned / dense |", "|---|---|---|---|", *rows]


def latency_lines(report: dict[str, Any]) -> list[str]:
    """The measured speedup in words, where it was measured, and the latency budget's outcome when there was one."""
    latency = report.get("latency")
    hardware = report.get("hardware")
    where = hardware_label(hardware) if hardware else "unknown hardware"
    if not latency:
        return [f"Measured speedup: {NOT_MEASURED}. Hardware: {where}."]
    lines = [(f"Measured speedup: **{_number(latency.get('speedup'), 2)}x** (median dense time over median pruned "
              f"time, interleaved in the same run; paired: {_number(latency.get('speedup_paired'), 2)}x) at batch "
              f"size {latency.get('batch_size')}, sequence length {latency.get('seq_len')}, "
              f"{latency.get('threads')} threads, on {where}. Speedups depend on the machine: measure on yours.")]
    csr = latency.get("csr")
    if csr:  # SMP: the zeroed weights as sparse matrices, which this folder does not store
        lines.append(f"With the remaining zeros as CSR sparse weights (not how this folder stores them): "
                     f"{_number(csr.get('speedup'), 2)}x.")
    budget = latency.get("budget")
    if budget:
        asked = (budget.get("measured") or {}).get("asked") or {}
        batch_1 = (budget.get("measured") or {}).get("batch_1") or {}
        lines.append(f"Latency budget: requested **{_number(budget.get('requested_speedup'), 2)}x**, predicted "
                     f"{_number(budget.get('predicted_speedup'), 2)}x by the latency table, "
                     f"measured {_number(budget.get('measured_speedup'), 2)}x at batch {asked.get('batch_size')} x "
                     f"{asked.get('seq_len')} tokens"
                     + (f" ({_number(batch_1.get('speedup'), 2)}x at batch 1)." if batch_1 else "."))
    return lines


def command_text(command: list[str] | None) -> str:
    """The command as one shell line (``shlex.join``); ``None`` takes ``sys.argv``. A script (``train.py``) is
    prefixed with ``python`` so that the line runs as shown."""
    argv = list(sys.argv if command is None else command)
    if not argv or not any(argv):
        return ""
    prefix = "python " if argv[0].endswith(".py") else ""
    return prefix + shlex.join(argv)


def loading_lines(report: dict[str, Any], kind: str | None, has_tokenizer: bool) -> list[str]:
    """How to load the folder with plain transformers (the Auto class of its saved kind)."""
    auto = AUTO_CLASSES.get(task_kind(report, kind) or "base", "AutoModel")
    code = ["```python", f"from transformers import {auto}" + (", AutoTokenizer" if has_tokenizer else ""), "",
            'folder = "path/to/pruned_model"  # this folder, or its Hub id once uploaded',
            f"model = {auto}.from_pretrained(folder, trust_remote_code=True)"]
    if has_tokenizer:
        code.append("tokenizer = AutoTokenizer.from_pretrained(folder)")
    code.append("```")
    if task_kind(report, kind) == "sentence_embedding":
        code += ["", "With sentence-transformers (its pooling and normalisation included):", "", "```python",
                 "from sentence_transformers import SentenceTransformer", "",
                 'model = SentenceTransformer("path/to/pruned_model", trust_remote_code=True)',
                 'embeddings = model.encode(["A sentence to embed."])', "```"]
    return ["## How to load it", "", *code, "",
            ("It needs no lit_prune install: `trust_remote_code=True` runs the folder's own `modeling_lit_pruned.py` "
             "(torch and transformers only), which rebuilds the pruned shapes recorded in `config.json` "
             "(`lit_prune_structure`) before the weights load. With lit_prune installed, "
             "`lit_prune.core.io.load_pruned(folder)` loads it without remote code.")]


def model_card(report: dict[str, Any], command: list[str] | None = None, *, kind: str | None = None,
               tokenizer: bool | None = None) -> str:
    """The text of a pruned folder's ``README.md``: front matter and body, from a pruning report.

    Args:
        report: a pruning report (:func:`lit_prune.report.read_report`); missing metrics or latency read "not
            measured".
        command: the command line that made the folder; ``None`` takes ``sys.argv``.
        kind: the saved model kind ("base", "sequence_classification", "question_answering", "label_words"; see
            :func:`lit_prune.core.io.saved_kind`); ``None`` infers it from the report's task.
        tokenizer: whether the folder holds a tokenizer (the loading snippet loads it too); ``None``: the report's
            ``tokenizer`` (where the run found one) says, and a report without that key is taken to have one.

    Returns:
        The card, YAML front matter first (parsable by ``huggingface_hub.ModelCard``).
    """
    front = yaml.safe_dump(card_metadata(report, kind), sort_keys=False, allow_unicode=True).rstrip("\n")
    method = str(report.get("method") or "unknown")
    title, line = METHODS.get(method, (method, "a lit_prune pruning method"))
    task = report.get("task")
    on = f" on {DATASETS[task][2]}" if task in DATASETS else (f" on {task}" if task else "")
    source = f"`{report['model']}`" if report.get("model") else "A model with no saved name"
    body = [f"# {model_label(report)} pruned with {method}", "",
            f"{source}{on}, pruned with **{title}** by lit_prune: {line}.", "",
            f"Budget asked: {budget_text(report)}.", "",
            UNSTRUCTURED_NOTE if method in UNSTRUCTURED else STRUCTURED_NOTE, "",
            "## Results", "", *results_table(report), ""]
    if (report.get("metrics") or {}).get("dense_source") == "given":
        body += ["The dense model's metrics were given to the run, not evaluated in it.", ""]
    for text in latency_lines(report):
        body += [text, ""]
    seconds = (report.get("seconds") or {}).get("total")
    body += ["## How it was made", "",
             f"Method `{method}`, seed {'not set' if report.get('seed') is None else report['seed']}"
             + (f", {seconds:.1f} s in all" if isinstance(seconds, (int, float)) else "") + ". The full record "
             "(settings, per-phase times, kept structure per layer) is the run's `pruning_report.json`.", ""]
    command_line = command_text(command)
    body += ["```bash", command_line, "```", ""] if command_line else ["Command: not recorded.", ""]
    if tokenizer is None:
        tokenizer = report.get("tokenizer", "unknown") is not None
    body += loading_lines(report, kind, tokenizer)
    return f"---\n{front}\n---\n\n" + "\n".join(body) + "\n"


def folder_kind(folder: str | Path) -> str | None:
    """The kind a pruned folder was saved as, from its ``config.json``'s ``architectures`` (``None``: unknown)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    architectures = json.loads(config.read_text()).get("architectures")
    return saved_kind(SimpleNamespace(architectures=architectures))


def write_model_card(folder: str | Path, report: dict[str, Any], command: list[str] | None = None) -> Path:
    """Write :func:`model_card` as ``<folder>/README.md``, atomically; the model kind is read from the folder.

    Args:
        folder: a pruned model folder (:func:`lit_prune.core.io.save_pruned`).
        report: the run's report.
        command: as :func:`model_card` takes it (``None``: ``sys.argv``).

    Returns:
        The card's path.
    """
    folder = Path(folder)
    # the folder, not the report, says what was saved: its config's kind, and tokenizer files or not
    text = model_card(report, command, kind=folder_kind(folder), tokenizer=(folder / "tokenizer_config.json").is_file())
    return atomic_write_text(folder / CARD_FILE, text)


__all__ = ["CARD_FILE", "DATASETS", "METHODS", "card_metadata", "folder_kind", "model_card", "model_index",
           "write_model_card"]
