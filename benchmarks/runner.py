"""The benchmark runner: teachers, then every method at every budget, then tables and plots from the reports.

Usage, from the repository root::

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.run                      # benchmarks/configs/retraining_free.yaml
    python -m benchmarks.run --config benchmarks/configs/<name>.yaml [--dry-run] [--collect-only]

A benchmark config (YAML, see :data:`CONFIG_KEYS`) names the tasks, methods, budgets, base model, seeds and
accelerator. The runner

1. makes sure every task has a teacher: a fine-tune of ``model`` by ``configs/finetune/<task>.yaml``, cached under
   ``teachers/<task>/<model>-seed<s>-<key>/`` where the key hashes the recipe file, the model and the seed. A teacher
   that the recipe's own command already left (``runs/finetune/<task>/``) is adopted, visibly, when its
   ``fit_summary.json`` names the same model, task and seed and its saved config equals the recipe's (see
   :func:`config_differences`); otherwise the runner fine-tunes one.
2. runs ``python train.py fit --config configs/<method>/<task>.yaml`` for each method, budget and seed with the
   teacher, the budget, the seed and the calibration size set on the command line, into
   ``runs/<method>/<task>/<budget>/seed<s>/``. A run whose ``pruning_report.json`` exists is not repeated, after a
   check that the report records the settings asked for (:func:`report_mismatches`), so an interrupted benchmark
   resumes and a finished one re-collects in seconds. A training run (GRAIN, SMP) that was interrupted resumes
   from the last checkpoint it wrote (``--ckpt_path``, :func:`latest_checkpoint`) instead of starting over.
3. optionally times each method's pruning of the paper-sized calibration sample against one forward and backward
   pass over it (``timing``).
4. reads back only the reports and writes ``results/<name>.json``, the PNG plots and this benchmark's section of
   ``BENCHMARKS.md`` (:mod:`benchmarks.tables`).

Methods add themselves by :func:`register_method` (a :class:`MethodSpec`); a config can also list variants of a
registered method (ablations) with their own settings.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lit_prune.core.atomic import atomic_write_text
from lit_prune.report import REPORT_FILE, read_report

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "benchmarks" / "configs" / "retraining_free.yaml"
TEACHER_FILE = "teacher.json"
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


# --------------------------------------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """How the runner drives one pruning method.

    Attributes:
        name: the registry key, used in configs.
        label: the name in tables and plots.
        config: the recipe path, with ``{task}`` for the task.
        budget: the callback init arg that holds the budget (``flops_kept`` or ``params_kept``).
        calibration: init args that set the calibration size to ``n`` examples (``None``: the recipe's own).
        timing_bound: the pruning-cost bound of the method, from a report (``None``: no bound), and its text.
        arg_prefix: where the method's init args live on the command line.
        starts_from: ``"teacher"`` (the method prunes the fine-tuned teacher) or ``"pretrained"`` (it prunes the
            benchmark's pretrained ``model``, and gets the teacher through ``teacher_arg``).
        teacher_arg: the init arg that receives the teacher folder when the model is the pretrained one.
        seed_arg: the init arg of the run's seed; ``None``: the seed goes to ``--seed_everything``.
        dense_metrics_arg: the init arg that takes the dense model's known metrics and skips its evaluation
            (``None``: the method measures them itself); used with the config's ``dense_metrics: teacher``.
        trains: whether the method trains (so a variant's ``trainer`` settings, its training length, mean
            something); the retraining-free methods calibrate in a fit that trains nothing.
        settings_since: settings the method's reports record that older reports lack, each with the value those
            older runs ran at (the setting's default); a report without one is a run at that value.
    """

    name: str
    label: str
    config: str
    budget: str = "flops_kept"
    calibration: Callable[[int], dict[str, Any]] | None = None
    timing_bound: Callable[[dict[str, Any]], tuple[float, str]] | None = None
    arg_prefix: str = "--trainer.callbacks.init_args."
    starts_from: str = "teacher"
    teacher_arg: str | None = None
    seed_arg: str | None = "seed"
    dense_metrics_arg: str | None = None
    trains: bool = False
    settings_since: dict[str, Any] = dataclasses.field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make a method available to benchmark configs under ``spec.name``."""
    METHODS[spec.name] = spec
    return spec


def _sublayers(report: dict[str, Any]) -> int:
    return 2 * len(report["structure"])


register_method(MethodSpec(
    name="kwon", label="Kwon et al.", config="configs/kwon/{task}.yaml", dense_metrics_arg="dense_metrics",
    calibration=lambda n: {"num_samples": n},
    timing_bound=lambda report: (4.0, "<= 4")))
register_method(MethodSpec(
    name="kprune", label="KPrune", config="configs/kprune/{task}.yaml", dense_metrics_arg="dense_metrics",
    calibration=lambda n: {"num_samples": n, "num_tokens": None},
    timing_bound=lambda report: (2.0 * _sublayers(report) + 2,
                                 f"<= 2 x {_sublayers(report)} + 2 = {2 * _sublayers(report) + 2}")))
register_method(MethodSpec(
    name="gpruner", label="G-Pruner", config="configs/gpruner/{task}.yaml", dense_metrics_arg="dense_metrics",
    calibration=lambda n: {"num_samples": n}))
register_method(MethodSpec(
    name="grain", label="GRAIN", config="configs/grain/{task}.yaml", budget="params_kept", trains=True))
register_method(MethodSpec(
    name="smp", label="SMP-S", config="configs/smp/{task}.yaml", budget="params_kept",
    arg_prefix="--model.init_args.", starts_from="pretrained", teacher_arg="teacher", seed_arg=None,
    trains=True, settings_since={"head_warmup_steps": 0}))


def achieved(report: dict[str, Any], setting: str) -> float:
    """What a run achieved of a budget setting: ``flops_kept`` or ``params_kept`` (encoder Linear weights).

    ``params_kept`` is the method's own count where its report gives one (``params.kept``: GRAIN's density, the
    weights SMP's unstructured masks keep, most of them inside rows that stay), else the compacted model's share.
    """
    if setting == "flops_kept":
        return float(report["flops"]["kept"])
    if setting == "params_kept":
        params = report["params"]
        if params.get("kept") is not None:
            return float(params["kept"])
        return params["pruned"]["encoder_linear_weights"] / params["dense"]["encoder_linear_weights"]
    raise ValueError(f"unknown budget setting {setting!r}; known: flops_kept, params_kept")


@dataclasses.dataclass(frozen=True)
class MethodRun:
    """A method as one benchmark runs it: a registered spec, possibly with settings of its own (an ablation)."""

    name: str
    spec: MethodSpec
    label: str
    settings: dict[str, Any]
    match: str | None = None  # run at what this earlier method achieved at each budget (its FLOPs, say)
    budgets: tuple[float, ...] | None = None  # only these of the config's budgets (an ablation); None: all
    trainer: dict[str, Any] = dataclasses.field(default_factory=dict)  # Trainer settings of its own (max_epochs)


# --------------------------------------------------------------------------------------------------- config

CONFIG_KEYS = {
    "name": "the benchmark's name: results/<name>.json, plots and its BENCHMARKS.md section",
    "title": "the section title in BENCHMARKS.md",
    "description": "a paragraph under the title",
    "model": "the pretrained model the teachers are fine-tuned from (assets name, folder or hub id)",
    "tasks": "task names with a recipe configs/finetune/<task>.yaml",
    "methods": "registered method names, or {name, method, label, settings, match, budgets, trainer} for a variant "
               "(budgets: only these of the config's budgets; trainer: Trainer settings of its own, such as "
               "max_epochs, for the methods that train)",
    "budgets": "budget values in (0, 1] (each method's budget setting, e.g. flops_kept)",
    "seeds": "pruning seeds (the calibration sample's draw); results are averaged over them",
    "teacher_seed": "the fine-tuning seed of the teachers",
    "accelerator": f"one of {ACCELERATORS}",
    "devices": "devices per run",
    "jobs": "pruning runs at once (CPU only; default 1): each gets cpu_count // jobs intra-op threads, so every "
            "latency and step time of the benchmark is measured at that thread count, beside the other runs",
    "calibration": "calibration size per task family: {glue: examples, squad: windows}; null keeps the recipes'",
    "latency_repeats": "timed passes of each model for the latency comparison",
    "dense_metrics": "'measure' (every run evaluates the dense teacher) or 'teacher' (methods that can take them get "
                     "the teacher's final validation metrics, the same evaluation, and skip the dense evaluation)",
    "timing": "{task, samples, budget[, methods]}: each method's (or the listed methods') pruning time against one "
              "forward+backward pass, in one run; null: skip",
    "runs": "where pruning runs go (relative to the repository)",
    "teachers": "where runner-trained teachers go",
    "results": "where the JSON and PNG results go",
    "markdown": "the markdown file that gets this benchmark's section",
    "archive": "where every finished run's report is copied (committed with the results), so a benchmark resumes "
               "on a fresh checkout without rerunning what is done",
}


@dataclasses.dataclass
class BenchConfig:
    """A validated benchmark config (see :data:`CONFIG_KEYS`)."""

    name: str
    model: str
    tasks: list[str]
    methods: list[MethodRun]
    budgets: list[float]
    title: str = ""
    description: str = ""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    teacher_seed: int = 42
    accelerator: str = "cpu"
    devices: int = 1
    jobs: int = 1
    calibration: dict[str, int | None] = dataclasses.field(default_factory=dict)
    latency_repeats: int = 10
    timing: dict[str, Any] | None = None
    dense_metrics: str = "measure"
    runs: Path = REPO / "runs" / "bench"
    teachers: Path = REPO / "runs" / "teachers"
    results: Path = REPO / "benchmarks" / "results"
    markdown: Path = REPO / "BENCHMARKS.md"
    archive: Path = REPO / "benchmarks" / "results" / "reports"
    source: str = ""


class BenchConfigError(ValueError):
    """A benchmark config names something that does not exist or is out of range."""


def _where(source: str, key: str) -> str:
    return f"{source}: {key}" if source else key


def _method_runs(value: Any, source: str) -> list[MethodRun]:
    if not isinstance(value, list) or not value:
        raise BenchConfigError(f"{_where(source, 'methods')}={value!r}: expected a non-empty list")
    runs: list[MethodRun] = []
    for entry in value:
        if isinstance(entry, str):
            entry = {"name": entry, "method": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise BenchConfigError(f"{_where(source, 'methods')}: {entry!r} is neither a method name nor a mapping "
                                   "with name, method, label, settings")
        unknown = set(entry) - {"name", "method", "label", "settings", "match", "budgets", "trainer"}
        if unknown:
            raise BenchConfigError(f"{_where(source, 'methods')}: {entry['name']!r} has unknown keys {sorted(unknown)}; "
                                   "allowed: name, method, label, settings, match, budgets, trainer")
        method = entry.get("method", entry["name"])
        if method not in METHODS:
            raise BenchConfigError(f"{_where(source, 'methods')}: method {method!r} is not registered; registered: "
                                   f"{sorted(METHODS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(entry["name"])):
            raise BenchConfigError(f"{_where(source, 'methods')}: name {entry['name']!r} must be a folder name "
                                   "(letters, digits, '_', '-', '.')")
        spec = METHODS[method]
        settings = entry.get("settings") or {}
        if not isinstance(settings, dict):
            raise BenchConfigError(f"{_where(source, 'methods')}: settings of {entry['name']!r} must be a mapping")
        trainer = _trainer_settings(entry, spec, source)
        match = entry.get("match")
        if match is not None and match not in [run.name for run in runs]:
            raise BenchConfigError(f"{_where(source, 'methods')}: {entry['name']!r} has match={match!r}, which is not "
                                   f"a method listed before it ({[run.name for run in runs]})")
        budgets = entry.get("budgets")
        if budgets is not None:
            if not isinstance(budgets, list) or not budgets:
                raise BenchConfigError(f"{_where(source, 'methods')}: budgets of {entry['name']!r}={budgets!r}: "
                                       "expected a non-empty list (or leave it out for all the config's budgets)")
            budgets = tuple(_budget(b, f"methods.{entry['name']}.budgets", source) for b in budgets)
        runs.append(MethodRun(str(entry["name"]), spec, str(entry.get("label", spec.label)), dict(settings),
                              None if match is None else str(match), budgets, trainer))
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise BenchConfigError(f"{_where(source, 'methods')}: names repeat: {names}")
    return runs


TRAINER_KEYS = {
    "max_epochs": "epochs of training (a positive integer)",
    "max_steps": "training steps (a positive integer; -1: max_epochs decides)",
    "accumulate_grad_batches": "batches per optimiser step (a positive integer)",
}


def _trainer_settings(entry: dict[str, Any], spec: MethodSpec, source: str) -> dict[str, Any]:
    """A variant's own Trainer settings (:data:`TRAINER_KEYS`), for methods that train (SMP's training length)."""
    trainer = entry.get("trainer") or {}
    where = f"{_where(source, 'methods')}: trainer of {entry['name']!r}"
    if not isinstance(trainer, dict):
        raise BenchConfigError(f"{where}={trainer!r}: expected a mapping such as {{max_epochs: 12}}")
    if trainer and not spec.trains:
        raise BenchConfigError(f"{where}: {spec.name} does not train (it calibrates in a fit that trains nothing), "
                               "so Trainer settings would change nothing")
    for key, value in trainer.items():
        if key not in TRAINER_KEYS:
            raise BenchConfigError(f"{where}: unknown setting {key!r}; allowed: "
                                   + "; ".join(f"{k} ({v})" for k, v in TRAINER_KEYS.items()))
        allowed_minus_one = key == "max_steps" and value == -1
        if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and not allowed_minus_one):
            raise BenchConfigError(f"{where}: {key}={value!r}: expected {TRAINER_KEYS[key]}")
    return dict(trainer)


def _budget(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise BenchConfigError(f"{_where(source, key)}={value!r}: a budget is a fraction in (0, 1]")
    return float(value)


def parse_config(raw: dict[str, Any], source: str = "") -> BenchConfig:
    """Validate a config mapping.

    Raises:
        BenchConfigError: an unknown key, a task or method without a recipe, a budget out of (0, 1], ...
    """
    if not isinstance(raw, dict):
        raise BenchConfigError(f"{source or 'benchmark config'}: expected a mapping of {sorted(CONFIG_KEYS)}")
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise BenchConfigError(f"{_where(source, ', '.join(unknown))}: unknown key(s); allowed: "
                               + "; ".join(f"{k} ({v})" for k, v in CONFIG_KEYS.items()))
    for key in ("name", "model", "tasks", "methods", "budgets"):
        if key not in raw:
            raise BenchConfigError(f"{_where(source, key)}: missing ({CONFIG_KEYS[key]})")
    name = str(raw["name"])
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise BenchConfigError(f"{_where(source, 'name')}={name!r}: letters, digits, '_', '-', '.' only")
    tasks = raw["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise BenchConfigError(f"{_where(source, 'tasks')}={tasks!r}: expected a non-empty list")
    recipes = sorted(p.stem for p in (REPO / "configs" / "finetune").glob("*.yaml"))
    for task in tasks:
        if task not in recipes:
            raise BenchConfigError(f"{_where(source, 'tasks')}: {task!r} has no teacher recipe "
                                   f"configs/finetune/{task}.yaml; tasks with one: {recipes}")
    methods = _method_runs(raw["methods"], source)
    for method in methods:
        for task in tasks:
            if not (REPO / method.spec.config.format(task=task)).is_file():
                raise BenchConfigError(f"{_where(source, 'methods')}: {method.name} has no recipe for {task} "
                                       f"({method.spec.config.format(task=task)})")
    budgets = raw["budgets"]
    if not isinstance(budgets, list) or not budgets:
        raise BenchConfigError(f"{_where(source, 'budgets')}={budgets!r}: expected a non-empty list")
    budgets = [_budget(b, "budgets", source) for b in budgets]
    by_name = {method.name: method for method in methods}
    for method in methods:
        if method.budgets is not None and set(method.budgets) - set(budgets):
            raise BenchConfigError(f"{_where(source, f'methods.{method.name}.budgets')}={list(method.budgets)}: "
                                   f"each must be one of the config's budgets {budgets}")
        reference = by_name[method.match] if method.match else None
        if reference is not None and set(method.budgets or budgets) - set(reference.budgets or budgets):
            raise BenchConfigError(f"{_where(source, f'methods.{method.name}.budgets')}={list(method.budgets or budgets)}"
                                   f": it matches {reference.name}, which runs only at {list(reference.budgets)}; "
                                   "give it those budgets")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise BenchConfigError(f"{_where(source, 'seeds')}={seeds!r}: expected a non-empty list of integers")
    accelerator = str(raw.get("accelerator", "cpu"))
    if accelerator not in ACCELERATORS:
        raise BenchConfigError(f"{_where(source, 'accelerator')}={accelerator!r}: allowed {ACCELERATORS}")
    devices = raw.get("devices", 1)
    if not isinstance(devices, int) or devices < 1:
        raise BenchConfigError(f"{_where(source, 'devices')}={devices!r}: a positive integer")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise BenchConfigError(f"{_where(source, 'jobs')}={jobs!r}: a positive integer")
    if jobs > 1 and accelerator != "cpu":
        raise BenchConfigError(f"{_where(source, 'jobs')}={jobs}: parallel runs are for accelerator 'cpu' (they "
                               f"split its cores); accelerator is {accelerator!r}, allowed jobs: 1")
    calibration = raw.get("calibration") or {}
    if not isinstance(calibration, dict) or set(calibration) - {"glue", "squad"} or not all(
            v is None or (isinstance(v, int) and v > 0) for v in calibration.values()):
        raise BenchConfigError(f"{_where(source, 'calibration')}={calibration!r}: expected {{glue: n, squad: n}} "
                               "with positive integers or null")
    latency_repeats = raw.get("latency_repeats", 10)
    if not isinstance(latency_repeats, int) or latency_repeats < 1:
        raise BenchConfigError(f"{_where(source, 'latency_repeats')}={latency_repeats!r}: a positive integer")
    timing = raw.get("timing")
    if timing is not None:
        if not isinstance(timing, dict) or not {"task", "samples", "budget"} <= set(timing) <= {
                "task", "samples", "budget", "methods"}:
            raise BenchConfigError(f"{_where(source, 'timing')}={timing!r}: expected {{task, samples, budget}} "
                                   "(and optionally methods) or null")
        names = [m.name for m in methods]
        timed = timing.get("methods", names)
        if not isinstance(timed, list) or not timed or set(timed) - set(names):
            raise BenchConfigError(f"{_where(source, 'timing.methods')}={timed!r}: expected a non-empty list of the "
                                   f"config's methods {names}")
        if timing["task"] not in recipes:
            raise BenchConfigError(f"{_where(source, 'timing.task')}={timing['task']!r}: no recipe; tasks: {recipes}")
        if not isinstance(timing["samples"], int) or timing["samples"] < 1:
            raise BenchConfigError(f"{_where(source, 'timing.samples')}={timing['samples']!r}: a positive integer")
        timing = {**timing, "budget": _budget(timing["budget"], "timing.budget", source), "methods": list(timed)}
    dense_metrics = raw.get("dense_metrics", "measure")
    if dense_metrics not in ("measure", "teacher"):
        raise BenchConfigError(f"{_where(source, 'dense_metrics')}={dense_metrics!r}: allowed 'measure' or 'teacher'")
    paths = {key: REPO / str(raw[key]) for key in ("runs", "teachers", "results", "markdown", "archive")
             if key in raw}
    return BenchConfig(name=name, model=str(raw["model"]), tasks=list(tasks), methods=methods, budgets=budgets,
                       title=str(raw.get("title", name)), description=str(raw.get("description", "")).strip(),
                       seeds=list(seeds), teacher_seed=int(raw.get("teacher_seed", 42)), accelerator=accelerator,
                       devices=devices, jobs=jobs, calibration=dict(calibration), latency_repeats=latency_repeats,
                       timing=timing, dense_metrics=dense_metrics, source=source, **paths)


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a benchmark config file.

    Raises:
        FileNotFoundError: no such file.
        BenchConfigError: see :func:`parse_config`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark config {path} does not exist; configs: "
                                f"{sorted(str(p.relative_to(REPO)) for p in (REPO / 'benchmarks' / 'configs').glob('*.yaml'))}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise BenchConfigError(f"{path}: not valid YAML ({error})") from None
    return parse_config(raw, source=_relative(path))


# --------------------------------------------------------------------------------------------------- helpers


def is_squad(task: str) -> bool:
    return task.startswith("squad")


def calibration_size(config: BenchConfig, task: str) -> int | None:
    return config.calibration.get("squad" if is_squad(task) else "glue")


def cli_value(value: Any) -> str:
    """A value as LightningCLI reads it from the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


_LOG_LOCK = threading.Lock()


def _log(message: str) -> None:
    with _LOG_LOCK:  # parallel runs log from several threads: one whole line each
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


Runner = Callable[..., None]
"""``runner(command, log_file)`` runs one ``train.py`` command; with a config's ``jobs`` > 1 it is also given
``threads=`` (each run's intra-op threads), as :func:`run_command` takes it."""


def run_command(command: list[str], log_file: Path, threads: int | None = None) -> None:
    """Run ``command`` from the repository root, its output into ``log_file``; ``threads``: its intra-op thread
    count (``OMP_NUM_THREADS``, which torch reads at start), ``None`` for torch's default.

    Raises:
        RuntimeError: it failed; the message holds the end of its output.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log_file, "w") as handle:
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, text=True, env=env)
    if result.returncode != 0:
        tail = log_file.read_text()[-4000:]
        raise RuntimeError(f"{' '.join(command[1:4])} ... failed (exit {result.returncode}); log {log_file}:\n{tail}")


# --------------------------------------------------------------------------------------------------- teachers


def recipe_path(task: str) -> Path:
    return REPO / "configs" / "finetune" / f"{task}.yaml"


def teacher_key(recipe: Path, model: str, seed: int) -> str:
    """The cache key of a teacher: the recipe's settings (its parsed YAML: editing its comments keeps the key), the
    base model and the fine-tuning seed."""
    settings = json.dumps(yaml.safe_load(recipe.read_text()), sort_keys=True, default=str)
    digest = hashlib.sha256(settings.encode() + b"\0" + model.encode() + b"\0" + str(seed).encode())
    return digest.hexdigest()[:12]


def teacher_dir(config: BenchConfig, task: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config.model).name or config.model)
    return config.teachers / task / f"{slug}-seed{config.teacher_seed}-{teacher_key(recipe_path(task), config.model, config.teacher_seed)}"


# Settings that say where output goes or how it is shown, not what is trained.
IGNORED_SETTINGS = ("trainer.default_root_dir", "trainer.logger", "trainer.enable_progress_bar",
                    "trainer.enable_model_summary", "trainer.accelerator", "trainer.devices", "ckpt_path")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def config_differences(recipe: dict[str, Any], saved: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare a recipe's resolved config with the config a finished fine-tune saved.

    Returns:
        ``(differences, unrecorded)``: settings whose values differ (or that only the saved run has), and settings
        the saved config predates whose current value is a default (``None`` or ``False``), which do not change
        the training. Output and display settings (:data:`IGNORED_SETTINGS`) are left out.
    """
    ours, theirs = _flatten(recipe), _flatten(saved)
    ignored = lambda key: any(key == p or key.startswith(p + ".") for p in IGNORED_SETTINGS)  # noqa: E731
    differences, unrecorded = [], []
    for key in sorted(set(ours) | set(theirs)):
        if ignored(key):
            continue
        if key not in theirs:
            (unrecorded if ours[key] in (None, False) else differences).append(
                f"{key}: {ours[key]!r} (not in the saved config)")
        elif key not in ours:
            differences.append(f"{key}: only the saved run has it ({theirs[key]!r})")
        elif ours[key] != theirs[key]:
            differences.append(f"{key}: recipe {ours[key]!r}, saved run {theirs[key]!r}")
    return differences, unrecorded


def _finetune_overrides(config: BenchConfig, output: Path | None) -> list[str]:
    args = ["--model.init_args.name_or_path", config.model, "--seed_everything", str(config.teacher_seed)]
    if output is not None:
        args += ["--trainer.default_root_dir", str(output), "--trainer.logger.init_args.save_dir", str(output),
                 "--trainer.accelerator", config.accelerator, "--trainer.devices", str(config.devices),
                 "--trainer.enable_progress_bar", "false"]
    return args


def resolved_recipe(config: BenchConfig, task: str) -> dict[str, Any]:
    """The recipe with the benchmark's model and seed, as LightningCLI resolves it (``--print_config``)."""
    command = [sys.executable, str(REPO / "train.py"), "fit", "--config", str(recipe_path(task)),
               *_finetune_overrides(config, None), "--print_config"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"resolving {recipe_path(task)} failed:\n{result.stderr[-3000:]}")
    return yaml.safe_load(result.stdout)


def _saved_config(folder: Path) -> Path | None:
    versions = sorted(folder.glob("logs/version_*/config.yaml"), key=lambda p: int(p.parent.name.split("_")[1]))
    return versions[-1] if versions else None


def adoptable_teacher(config: BenchConfig, task: str) -> tuple[Path | None, str]:
    """The teacher the recipe's own command left, if it is the one this benchmark asks for.

    Its newest saved config (``logs/version_*/config.yaml``, older than ``final_model/``) must equal the recipe
    resolved with the benchmark's model and seed: the model, task, seed and every training setting.

    Returns:
        ``(folder, why)``: the folder holding ``final_model/`` (or ``None``) and a sentence saying why.
    """
    raw = yaml.safe_load(recipe_path(task).read_text()) or {}
    folder = REPO / str((raw.get("trainer") or {}).get("default_root_dir", f"runs/finetune/{task}"))
    saved, final = _saved_config(folder), folder / "final_model" / "config.json"
    if not final.is_file() or saved is None:
        return None, f"{_relative(folder)} holds no finished fine-tune"
    if saved.stat().st_mtime > final.stat().st_mtime:
        return None, f"{_relative(saved)} is newer than {_relative(final)}: its run did not finish"
    differences, unrecorded = config_differences(resolved_recipe(config, task), yaml.safe_load(saved.read_text()))
    if differences:
        return None, f"{_relative(saved)} differs from the recipe: " + "; ".join(differences)
    note = f" (settings it predates, at their defaults: {'; '.join(unrecorded)})" if unrecorded else ""
    return folder, f"{_relative(saved)} equals the recipe{note}"


def equivalent_cached_teacher(config: BenchConfig, task: str) -> tuple[Path, str] | None:
    """A teacher cached under another key (an older key scheme, say) whose fine-tune's saved config equals the
    recipe resolved with the benchmark's model and seed, as :func:`adoptable_teacher` checks; ``None`` if none."""
    here = teacher_dir(config, task)
    candidates = sorted(p for p in (config.teachers / task).glob("*") if p != here and (p / TEACHER_FILE).is_file())
    resolved = None
    for folder in candidates:
        record = json.loads((folder / TEACHER_FILE).read_text())
        saved = _saved_config(folder)
        if record.get("model") != config.model or record.get("seed") != config.teacher_seed or saved is None \
                or not (REPO / record.get("final_model", "") / "config.json").is_file():
            continue
        resolved = resolved or resolved_recipe(config, task)
        differences, _ = config_differences(resolved, yaml.safe_load(saved.read_text()))
        if not differences:
            return folder, f"{_relative(saved)} (a teacher cached under another key) equals the recipe"
    return None


def ensure_teacher(config: BenchConfig, task: str, runner: Runner = run_command, dry_run: bool = False) -> Path:
    """The teacher's ``final_model`` folder for ``task``: cached, adopted, or fine-tuned now."""
    cache = teacher_dir(config, task)
    record_file = cache / TEACHER_FILE
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        final = REPO / record["final_model"]
        if (final / "config.json").is_file():
            return final
        _log(f"teacher {task}: {_relative(record_file)} points to a missing {record['final_model']}; fine-tuning again")
    folder, why = adoptable_teacher(config, task)
    if folder is None:
        folder, why = equivalent_cached_teacher(config, task) or (None, why)
    record = {"task": task, "model": config.model, "seed": config.teacher_seed,
              "recipe": _relative(recipe_path(task)), "key": teacher_key(recipe_path(task), config.model,
                                                                         config.teacher_seed)}
    if folder is not None:
        _log(f"teacher {task}: adopting {_relative(folder / 'final_model')}: {why}")
        summary_file = folder / "fit_summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        record.update(final_model=_relative(folder / "final_model"), adopted_from=_relative(folder),
                      why=why, metrics=summary.get("metrics"), seconds=summary.get("seconds"))
    else:
        _log(f"teacher {task}: fine-tuning {config.model} by {_relative(recipe_path(task))} into {_relative(cache)} "
             f"({why})")
        if dry_run:
            return cache / "final_model"
        started = time.perf_counter()
        command = [sys.executable, str(REPO / "train.py"), "fit", "--config", str(recipe_path(task)),
                   *_finetune_overrides(config, cache)]
        runner(command, cache / "finetune.log")
        summary = json.loads((cache / "fit_summary.json").read_text())
        record.update(final_model=_relative(cache / "final_model"), metrics=summary.get("metrics"),
                      seconds=summary.get("seconds"))
        _log(f"teacher {task}: done in {time.perf_counter() - started:.0f} s")
    if not dry_run:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_file, json.dumps(record, indent=2) + "\n")
    return REPO / record["final_model"]


# --------------------------------------------------------------------------------------------------- pruning runs


@dataclasses.dataclass(frozen=True)
class PruneJob:
    """One pruning run of the benchmark."""

    method: MethodRun
    task: str
    budget: float
    seed: int
    folder: Path
    settings: dict[str, Any]  # every callback init arg set on the command line
    timing: bool = False
    reference: Path | None = None  # a matched run: the folder of the run whose achieved budget this one takes

    def command(self, config: BenchConfig, teacher: Path, dense_metrics: dict[str, float] | None = None) -> list[str]:
        """The run's ``train.py`` command; ``dense_metrics``: the teacher's known metrics, for methods that take them."""
        spec = self.method.spec
        model = _relative(teacher) if spec.starts_from == "teacher" else config.model
        args = [sys.executable, str(REPO / "train.py"), "fit", "--config", spec.config.format(task=self.task),
                "--model.init_args.name_or_path", model, "--trainer.default_root_dir", str(self.folder),
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.accelerator", config.accelerator, "--trainer.devices", str(config.devices)]
        if spec.starts_from == "pretrained" and spec.teacher_arg:
            args += [spec.arg_prefix + spec.teacher_arg, _relative(teacher)]
        for key, value in self.settings.items():
            if key == "seed" and spec.seed_arg is None:
                args += ["--seed_everything", cli_value(value)]
            else:
                args += [spec.arg_prefix + (spec.seed_arg if key == "seed" else key), cli_value(value)]
        for key, value in self.method.trainer.items():
            args += [f"--trainer.{key}", cli_value(value)]
        if dense_metrics is not None:
            args += [spec.arg_prefix + spec.dense_metrics_arg, json.dumps(dense_metrics)]
        return args


def method_budgets(config: BenchConfig, method: MethodRun) -> list[float]:
    """The budgets ``method`` runs at: its own subset when it names one, else all the config's (in their order)."""
    return [b for b in config.budgets if method.budgets is None or b in method.budgets]


def plan(config: BenchConfig) -> list[PruneJob]:
    """Every pruning run of the benchmark, in order: per task, per method, per budget, per seed; then timing."""
    jobs = []
    for task in config.tasks:
        size = calibration_size(config, task)
        for method in config.methods:
            for budget in method_budgets(config, method):
                for seed in config.seeds:
                    settings: dict[str, Any] = {method.spec.budget: budget, "seed": seed,
                                                "latency_repeats": config.latency_repeats}
                    if size is not None and method.spec.calibration is not None:
                        settings.update(method.spec.calibration(size))
                    settings.update(method.settings)
                    folder = config.runs / method.name / task / f"{budget:g}" / f"seed{seed}"
                    reference = None
                    if method.match is not None:  # the budget comes from the reference run's report, later
                        del settings[method.spec.budget]
                        reference = config.runs / method.match / task / f"{budget:g}" / f"seed{seed}"
                    jobs.append(PruneJob(method, task, budget, seed, folder, settings, reference=reference))
    if config.timing:
        task, budget, seed = config.timing["task"], config.timing["budget"], config.seeds[0]
        for method in config.methods:
            if method.match is not None or method.name not in config.timing["methods"]:  # matched: timed by its runs
                continue
            settings = {method.spec.budget: budget, "seed": seed, "time_reference_pass": True, "evaluate": False,
                        "latency_batch_size": 0}
            if method.spec.calibration is not None:
                settings.update(method.spec.calibration(config.timing["samples"]))
            settings.update(method.settings)
            folder = config.runs / "timing" / method.name / task / f"{budget:g}" / f"n{config.timing['samples']}-seed{seed}"
            jobs.append(PruneJob(method, task, budget, seed, folder, settings, timing=True))
    return jobs


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def method_recipe(job: PruneJob) -> dict[str, Any]:
    """The method's recipe for the job's task (``configs/<method>/<task>.yaml``), as written."""
    return yaml.safe_load((REPO / job.method.spec.config.format(task=job.task)).read_text()) or {}


def expected_training(job: PruneJob) -> dict[str, Any]:
    """The training length a run of a method that trains should record: the recipe's Trainer settings among
    :data:`TRAINER_KEYS`, with the variant's own on top (empty for a method that does not train). So a run of a
    recipe whose length changed since is not reused either."""
    if not job.method.spec.trains:
        return {}
    trainer = method_recipe(job).get("trainer") or {}
    return {**{k: trainer[k] for k in TRAINER_KEYS if k in trainer}, **job.method.trainer}


def recipe_settings(job: PruneJob) -> dict[str, Any]:
    """The recipe's own values of the init args the method's settings address (``model.init_args``, or the last
    callback's, where ``--trainer.callbacks.init_args.*`` lands), but those the runner sets on every command (the
    budget, model, teacher, seed, dense metrics). So a run of a recipe whose settings changed since is not reused."""
    spec = job.method.spec
    recipe = method_recipe(job)
    if spec.arg_prefix == "--model.init_args.":
        args = (recipe.get("model") or {}).get("init_args") or {}
    elif spec.arg_prefix == "--trainer.callbacks.init_args.":
        callbacks = (recipe.get("trainer") or {}).get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, dict) else callbacks
        args = (callbacks[-1].get("init_args") if callbacks and isinstance(callbacks[-1], dict) else None) or {}
    else:
        return {}
    set_by_runner = {spec.budget, "seed", "name_or_path", spec.seed_arg, spec.teacher_arg, spec.dense_metrics_arg}
    return {key: value for key, value in args.items() if key not in set_by_runner}


def report_mismatches(report: dict[str, Any], job: PruneJob, teacher: Path | None, accelerator: str) -> list[str]:
    """What an existing report records differently from what ``job`` asks for (empty: it is this run).

    Checked: the task, the teacher (unless ``teacher`` is ``None``: a benchmark whose runs of that task are all done
    does not rebuild its teacher), every setting the method records in ``settings`` (the variant's, else the
    recipe's: :func:`recipe_settings`; one the report predates at the value of ``spec.settings_since``), the
    training length, the timing pass and the device kind. Settings a method does not record (latency repeats, ...)
    cannot be checked.
    """
    problems = []
    if report.get("task") != job.task:
        problems.append(f"task {report.get('task')!r}, asked {job.task!r}")
    recorded_teacher = report.get("model") if job.method.spec.starts_from == "teacher" else report.get("teacher")
    model = Path(str(recorded_teacher))
    if teacher is not None and (model if model.is_absolute() else REPO / model).resolve() != teacher.resolve():
        problems.append(f"teacher {recorded_teacher!r}, asked {_relative(teacher)!r}")
    recorded = report.get("settings") or {}
    for key, value in {**recipe_settings(job), **job.settings}.items():
        if key in recorded and not _same(recorded[key], value):
            problems.append(f"{key}={recorded[key]!r}, asked {value!r}")
        elif key not in recorded and key in job.method.spec.settings_since:
            before = job.method.spec.settings_since[key]
            if not _same(before, value):
                problems.append(f"{key}={before!r} (the run predates the setting), asked {value!r}")
    training = report.get("training") or {}
    for key, value in expected_training(job).items():
        if key in training and not _same(training[key], value):
            problems.append(f"trainer {key}={training[key]!r}, asked {value!r}")
    if job.timing and "reference_pass" not in (report.get("seconds") or {}):
        problems.append("no timed reference pass, asked time_reference_pass=True")
    device = str((report.get("hardware") or {}).get("device", "")).split(":")[0]
    wanted = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}.get(accelerator)
    if wanted and device != wanted:
        problems.append(f"ran on {device!r}, asked accelerator {accelerator!r}")
    return problems


def resolve(job: PruneJob) -> PruneJob | None:
    """A matched job with its budget set to what the reference run achieved (``None``: that run has no report
    yet); any other job as it is."""
    if job.reference is None:
        return job
    report_file = job.reference / REPORT_FILE
    if not report_file.is_file():
        return None
    reference = read_report(report_file)
    value = achieved(reference, job.method.spec.budget)
    return dataclasses.replace(job, settings={job.method.spec.budget: round(value, 6), **job.settings})


def archived_report(config: BenchConfig, job: PruneJob) -> Path:
    """Where the archive keeps ``job``'s report (its run folder's place under ``runs``, under ``archive``)."""
    return config.archive / job.folder.relative_to(config.runs) / REPORT_FILE


def restore_from_archive(config: BenchConfig, job: PruneJob) -> bool:
    """Put the archived report of ``job`` into its run folder when the folder has none; whether it did."""
    target, source = job.folder / REPORT_FILE, archived_report(config, job)
    if target.is_file() or not source.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, source.read_text())
    return True


def archive_report(config: BenchConfig, job: PruneJob) -> None:
    """Copy ``job``'s finished report into the archive (when it is not there already)."""
    source, target = job.folder / REPORT_FILE, archived_report(config, job)
    text = source.read_text()
    if target.is_file() and target.read_text() == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)


def known_dense_metrics(config: BenchConfig, job: PruneJob) -> dict[str, float] | None:
    """The teacher's final validation metrics for ``job`` to take instead of evaluating the dense teacher again, when
    the config asks for it (``dense_metrics: teacher``), the method can take them and the run evaluates at all."""
    if config.dense_metrics != "teacher" or job.method.spec.dense_metrics_arg is None or job.timing \
            or job.method.spec.starts_from != "teacher" or job.settings.get("evaluate") is False:
        return None
    record_file = teacher_dir(config, job.task) / TEACHER_FILE
    metrics = json.loads(record_file.read_text()).get("metrics") if record_file.is_file() else None
    if not metrics:
        _log(f"{job.method.name} {job.task}: {_relative(record_file)} records no metrics; the run evaluates the "
             "dense teacher itself")
        return None
    return metrics


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint an interrupted training run (GRAIN, SMP) left in ``folder/checkpoints``: the one of the
    highest step (Lightning names them ``epoch=E-step=S.ckpt``), ``None`` when there is none."""
    def step(path: Path) -> tuple[int, float]:
        found = re.search(r"step=(\d+)", path.name)
        return (int(found.group(1)) if found else -1, path.stat().st_mtime)

    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt"), key=step)
    return checkpoints[-1] if checkpoints else None


def run_job(config: BenchConfig, job: PruneJob, teacher: Path | None, runner: Runner = run_command,
            dry_run: bool = False) -> dict[str, Any] | None:
    """Run one job unless its report exists (then check and return it).

    Raises:
        RuntimeError: an existing report records other settings (delete the folder or point ``runs`` elsewhere).
    """
    if job.reference is None:
        what = f"{job.method.name} {job.task} {job.method.spec.budget}={job.budget:g} seed={job.seed}"
    else:
        what = f"{job.method.name} {job.task} matching {job.method.match} at {job.budget:g} seed={job.seed}"
    what += " (timing)" if job.timing else ""
    resolved = resolve(job)
    if resolved is None:
        if dry_run:
            _log(f"{what}: runs at the {job.method.spec.budget} that {_relative(job.reference)} achieves, once it has run")
            return None
        raise RuntimeError(f"{what} matches {_relative(job.reference)}, which has no report; list "
                           f"{job.method.match} before {job.method.name} in the config")
    job = resolved
    if job.reference is not None:
        what += f" ({job.method.spec.budget}={job.settings[job.method.spec.budget]:g})"
    report_file = job.folder / REPORT_FILE
    if report_file.is_file():
        report = read_report(report_file)
        problems = report_mismatches(report, job, teacher, config.accelerator)
        if problems:
            raise RuntimeError(f"{_relative(report_file)} is not the run {what}: " + "; ".join(problems)
                               + ". Delete that folder (and its copy under `archive`) to rerun it, or set `runs` "
                               "and `archive` to other folders.")
        if not dry_run:
            archive_report(config, job)
        return report
    checkpoint = latest_checkpoint(job.folder)
    if checkpoint is None:
        _log(f"{what}: running into {_relative(job.folder)}")
    else:
        _log(f"{what}: resuming from {_relative(checkpoint)} (an interrupted run)")
    if dry_run:
        return None
    started = time.perf_counter()
    assert teacher is not None, f"{what}: no teacher for a run that has to run"
    command = job.command(config, teacher, known_dense_metrics(config, job))
    if checkpoint is not None:
        command += ["--ckpt_path", str(checkpoint)]
    log_file = job.folder / "train.log"
    if checkpoint is not None and log_file.is_file():  # keep the interrupted run's log beside the new one
        log_file.replace(log_file.with_name(f"train.interrupted-{int(time.time())}.log"))
    runner(command, log_file)
    report = read_report(report_file)
    archive_report(config, job)
    _log(f"{what}: done in {time.perf_counter() - started:.0f} s")
    return report


def run_parallel(config: BenchConfig, jobs: list[PruneJob], teachers: dict[str, Path | None],
                 runner: Runner = run_command) -> None:
    """Run ``jobs`` ``config.jobs`` at a time, each with ``cpu_count // jobs`` intra-op threads (so the runs share
    the cores instead of fighting over them), in plan order. A matched job waits for its reference run. Timing jobs
    run afterwards, one at a time with every thread: they measure costs, which a neighbouring run would distort.

    Raises:
        RuntimeError: ``jobs`` exceeds the machine's cores; or a run failed (the first failure, after the runs
            already going have finished; nothing new starts after a failure).
    """
    cores = os.cpu_count() or 1
    if config.jobs > cores:
        raise RuntimeError(f"{config.source or 'benchmark config'}: jobs={config.jobs} is more runs at once than this "
                           f"machine's {cores} CPU cores; allowed 1..{cores}")
    threads = max(1, cores // config.jobs)
    _log(f"{config.name}: {config.jobs} runs at a time, {threads} thread(s) each")
    split = functools.partial(runner, threads=threads)
    futures: dict[Path, concurrent.futures.Future] = {}
    failed = threading.Event()

    def one(job: PruneJob) -> None:
        if failed.is_set():
            return
        if job.reference is not None and job.reference in futures:
            futures[job.reference].result()  # submitted earlier, so running or done: no deadlock
        try:
            run_job(config, job, teachers[job.task], split)
        except BaseException:
            failed.set()
            raise

    with concurrent.futures.ThreadPoolExecutor(max_workers=config.jobs, thread_name_prefix="run") as pool:
        for job in (j for j in jobs if not j.timing):
            futures[job.folder] = pool.submit(one, job)
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        if len(errors) > 1:
            _log(f"{config.name}: {len(errors)} runs failed; the first error follows")
        raise errors[0]
    for job in (j for j in jobs if j.timing):
        run_job(config, job, teachers[job.task], runner)


# --------------------------------------------------------------------------------------------------- main


def run_benchmark(config: BenchConfig, runner: Runner = run_command, dry_run: bool = False,
                  collect_only: bool = False, partial: bool = False) -> dict[str, Any] | None:
    """Teachers, runs, then results (``None`` on a dry run). Returns the collected results.

    ``partial`` (with ``collect_only``): tabulate the runs done so far, an interim section that marks the others.
    """
    if partial and not collect_only:
        raise ValueError("partial=True tabulates an unfinished benchmark: it goes with collect_only=True")
    from benchmarks import tables

    started = time.perf_counter()
    jobs = plan(config)
    restored = 0 if dry_run else sum(restore_from_archive(config, job) for job in jobs)
    if restored:
        _log(f"{config.name}: {restored} run report(s) restored from {_relative(config.archive)}")
    if not collect_only:
        # teachers only for tasks with a run still to do
        pending = dict.fromkeys(job.task for job in jobs if not (job.folder / REPORT_FILE).is_file())
        teachers: dict[str, Path | None] = {task: None for task in dict.fromkeys(j.task for j in jobs)}
        teachers.update({task: ensure_teacher(config, task, runner, dry_run) for task in pending})
        done = sum((job.folder / REPORT_FILE).is_file() for job in jobs)
        _log(f"{config.name}: {len(jobs)} pruning runs, {done} already done")
        if config.jobs > 1 and not dry_run:
            run_parallel(config, jobs, teachers, runner)
        else:
            for job in jobs:
                run_job(config, job, teachers[job.task], runner, dry_run)
    if dry_run:
        return None
    missing = [job for job in jobs if not (job.folder / REPORT_FILE).is_file()]
    if missing and not partial:
        raise RuntimeError(f"no report yet in {len(missing)} run folder(s), e.g. "
                           f"{[_relative(job.folder) for job in missing[:3]]}; run without --collect-only first, or "
                           "add --partial for an interim table of the runs done")
    if missing and len(missing) == len(jobs):
        raise RuntimeError(f"no run of {config.name!r} is done yet: nothing to tabulate")
    done = [job for job in jobs if job not in missing]
    results = tables.collect(config, [(job, read_report(job.folder / REPORT_FILE)) for job in done],
                             pending=missing or None)
    tables.write_results(config, results)
    if missing:
        _log(f"{config.name}: interim results, {len(done)} of {len(jobs)} runs done")
    _log(f"{config.name}: results in {_relative(config.results)} and {_relative(config.markdown)} "
         f"({time.perf_counter() - started:.0f} s)")
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="benchmark config (YAML)")
    parser.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the tables and plots")
    parser.add_argument("--partial", action="store_true",
                        help="with --collect-only: an interim section of the runs done so far, the others marked")
    args = parser.parse_args(argv)
    if args.partial and not args.collect_only:
        parser.error("--partial goes with --collect-only (a full run tabulates everything anyway)")
    try:
        config = load_config(args.config)
    except (FileNotFoundError, BenchConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not os.environ.get("LIT_PRUNE_ASSETS"):
        print("note: LIT_PRUNE_ASSETS is not set; models and data resolve to the hub", file=sys.stderr)
    try:
        run_benchmark(config, dry_run=args.dry_run, collect_only=args.collect_only, partial=args.partial)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


__all__ = ["BenchConfig", "BenchConfigError", "METHODS", "MethodRun", "MethodSpec", "PruneJob", "config_differences",
           "achieved", "archive_report", "archived_report", "ensure_teacher", "load_config", "main", "method_budgets",
           "parse_config", "plan", "recipe_settings", "register_method", "report_mismatches", "resolve",
           "restore_from_archive", "run_benchmark", "run_job", "run_parallel", "teacher_key"]
