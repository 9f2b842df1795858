"""The benchmark runner (config checks, plan, teacher cache, skip-if-done) and its tables and plots, from synthetic
reports: nothing here prunes or fine-tunes."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from benchmarks import runner, tables
from lit_prune.report import REPORT_FILE, read_report, write_report

HARDWARE = {"device": "cpu", "cpu_model": "Test CPU @ 1.00GHz", "cpu": "x86_64", "cpu_count": 2, "threads": 2,
            "torch": "2.13.0+cpu", "gpu": None}
TEACHER = {"sst2": 0.886, "stsb": 0.860}
MAIN = {"sst2": "accuracy", "stsb": "pearson"}
OTHER = {"stsb": {"spearman": 0.85}}  # a task's metrics besides its main one


def synthetic_metric(task: str, method: str, budget: float, seed: int) -> float:
    """A made-up score: KPrune loses half as much as Kwon, linearly in the FLOPs removed; seeds shift by 0.01."""
    loss = (1 - budget) * (0.2 if method == "kwon" else 0.1)
    return TEACHER[task] - loss + 0.01 * seed


def synthetic_report(task: str, method: str, budget: float, seed: int, teacher: str, timing: bool = False,
                     hardware: dict | None = None, num_samples: int = 16) -> dict:
    seconds = {"prune": 10.0 if method == "kwon" else 30.0, "total": 60.0}
    if timing:
        seconds.update(reference_pass=5.0, prune_over_pass=seconds["prune"] / 5.0)
    return {
        "method": method, "model": teacher, "task": task, "seed": seed, "world_size": 1,
        "flops": {"dense": 100.0, "pruned": 100.0 * budget, "kept": budget, "seq_len": 30.0, "target": budget},
        "params": {"dense": {"total": 1000, "encoder_linear": 800, "encoder_linear_weights": 780},
                   "pruned": {"total": 600, "encoder_linear": 400, "encoder_linear_weights": 390}},
        "metrics": {"dense": {MAIN[task]: TEACHER[task], **OTHER.get(task, {})},
                    "pruned": {MAIN[task]: synthetic_metric(task, method, budget, seed),
                               **{name: synthetic_metric(task, method, budget, seed) - 0.01 for name in OTHER.get(task, {})}},
                    "main": MAIN[task]},
        "seconds": seconds,
        "latency": {"dense_ms": 100.0, "pruned_ms": 100.0 * budget * 1.25, "speedup": 1 / (budget * 1.25)},
        "structure": [{"heads": [[32, 32]] * 6, "head_ids": list(range(6)), "ffn": 700}] * 6,
        "hardware": hardware or HARDWARE,
        "settings": {"flops_kept": budget, "seed": seed, "num_samples": num_samples},
    }


class FakeTrainer:
    """Stands in for ``train.py fit``: writes the report that the command asks for, and counts the calls."""

    def __init__(self, hardware: dict | None = None):
        self.calls: list[list[str]] = []
        self.kwargs: list[dict] = []
        self.hardware = hardware

    def __call__(self, command: list[str], log_file: Path, **kwargs) -> None:
        self.calls.append(command)
        self.kwargs.append(kwargs)
        args = dict(zip(command[3::2], command[4::2]))
        if "--trainer.callbacks.init_args.seed" not in args and "--model.init_args.params_kept" not in args:
            out = Path(args["--trainer.default_root_dir"])  # a teacher fine-tune
            (out / "final_model").mkdir(parents=True)
            (out / "final_model" / "config.json").write_text("{}")
            (out / "fit_summary.json").write_text(json.dumps({"metrics": {"val/accuracy": 0.9}, "seconds": 1.0}))
            return
        out = Path(args["--trainer.default_root_dir"])
        task = Path(args["--config"]).stem
        method = Path(args["--config"]).parent.name
        if method == "smp":  # starts from the pretrained model, gets the teacher as a setting, seeded globally
            density = float(args["--model.init_args.params_kept"])
            report = synthetic_report(task, "kwon", 0.9, int(args["--seed_everything"]),
                                      args["--model.init_args.name_or_path"], hardware=self.hardware)
            report.update(method="smp", teacher=args["--model.init_args.teacher"],
                          settings={"params_kept": density, "masking": "global"},
                          latency={**report["latency"], "csr": {"pruned_ms": 125.0, "speedup": 0.8}},
                          step_time={"smp_ms": 150.0, "finetune_ms": 100.0 * (1 + density),
                                     "ratio": 1.5 / (1 + density), "repeats": 5, "batch_size": 16})
            report["params"]["kept"] = density  # unstructured: few whole rows go, so the compacted model keeps 50%
        elif method == "grain":  # budgeted by parameters; keeps a little more of the FLOPs than of the parameters
            density = float(args["--trainer.callbacks.init_args.params_kept"])
            report = synthetic_report(task, "kwon", density + 0.1, int(args["--trainer.callbacks.init_args.seed"]),
                                      args["--model.init_args.name_or_path"], hardware=self.hardware)
            report["method"] = "grain"
            report["params"]["pruned"]["encoder_linear"] = int(density * 800)
            report["params"]["pruned"]["encoder_linear_weights"] = int(density * 780)
            report["settings"] = {"params_kept": density, "seed": report["seed"]}
        else:
            report = synthetic_report(task, method, float(args["--trainer.callbacks.init_args.flops_kept"]),
                                      int(args["--trainer.callbacks.init_args.seed"]),
                                      args["--model.init_args.name_or_path"],
                                      timing=args.get("--trainer.callbacks.init_args.time_reference_pass") == "true",
                                      hardware=self.hardware,
                                      num_samples=int(args["--trainer.callbacks.init_args.num_samples"]))
        out.mkdir(parents=True, exist_ok=True)
        write_report(out / REPORT_FILE, report)


def make_config(tmp_path: Path, **overrides) -> runner.BenchConfig:
    raw = {"name": "synthetic", "title": "Synthetic", "model": "tiny-model", "tasks": ["sst2", "stsb"],
           "methods": ["kwon", "kprune"], "budgets": [0.7, 0.4], "seeds": [0, 1], "accelerator": "cpu",
           "calibration": {"glue": 16, "squad": 4}, "latency_repeats": 2,
           "timing": {"task": "sst2", "samples": 32, "budget": 0.5},
           "runs": str(tmp_path / "runs"), "teachers": str(tmp_path / "teachers"),
           "results": str(tmp_path / "results"), "markdown": str(tmp_path / "BENCHMARKS.md"),
           "archive": str(tmp_path / "archive")}
    raw.update(overrides)
    return runner.parse_config(raw, source="synthetic.yaml")


@pytest.fixture
def no_adoption(monkeypatch):
    """Teachers are never adopted from the developer's own runs/finetune/ folders."""
    monkeypatch.setattr(runner, "adoptable_teacher", lambda config, task: (None, "adoption disabled in tests"))


# ------------------------------------------------------------------------------------------------- config


def test_the_default_config_parses_and_covers_the_retraining_free_tables():
    config = runner.load_config(runner.DEFAULT_CONFIG)
    assert set(config.tasks) == {"mrpc", "stsb", "sst2", "squad_v1"}
    assert [m.name for m in config.methods] == ["kwon", "kprune"]
    assert config.budgets == [0.7, 0.5, 0.4, 0.3]
    assert config.timing == {"task": "sst2", "samples": 2048, "budget": 0.5, "methods": ["kwon", "kprune"]}


def test_every_benchmark_config_parses():
    configs = sorted((runner.REPO / "benchmarks" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        runner.load_config(path)


@pytest.mark.parametrize("override, message", [
    ({"budgets": [0.5, 1.5]}, "budgets=1.5: a budget is a fraction in (0, 1]"),
    ({"tasks": ["sst2", "imdb"]}, "'imdb' has no teacher recipe configs/finetune/imdb.yaml"),
    ({"methods": ["kwon", "magnitude"]}, "method 'magnitude' is not registered"),
    ({"accelerator": "tpu"}, "accelerator='tpu': allowed"),
    ({"seeds": []}, "seeds=[]: expected a non-empty list of integers"),
    ({"calibration": {"glue": 0}}, "calibration={'glue': 0}"),
    ({"timing": {"task": "sst2", "samples": 32}}, "timing="),
    ({"budget": [0.5]}, "budget: unknown key(s); allowed: name"),
    ({"methods": [{"name": "kwon no tune", "method": "kwon"}]}, "must be a folder name"),
    ({"methods": ["kwon", {"name": "kwon"}]}, "names repeat"),
    ({"jobs": 0}, "jobs=0: a positive integer"),
    ({"jobs": 2, "accelerator": "gpu"}, "jobs=2: parallel runs are for accelerator 'cpu'"),
])
def test_bad_configs_name_the_setting_the_value_and_what_is_allowed(tmp_path, override, message):
    with pytest.raises(runner.BenchConfigError) as error:
        make_config(tmp_path, **override)
    assert message in str(error.value)
    assert "synthetic.yaml" in str(error.value)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="retraining_free.yaml"):
        runner.load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(runner.BenchConfigError, match="not valid YAML"):
        runner.load_config(bad)
    assert runner.main(["--config", str(tmp_path / "nope.yaml")]) == 2


def test_plan_sets_budget_seed_calibration_and_variants(tmp_path):
    config = make_config(tmp_path, tasks=["sst2", "squad_v1"], seeds=[3], methods=[
        "kprune", {"name": "kwon_no_tuning", "method": "kwon", "label": "Kwon, no tuning", "settings": {"tune": False}}])
    jobs = runner.plan(config)
    assert len(jobs) == 2 * 2 * 2 + 2  # tasks x methods x budgets (x 1 seed) + one timing run per method
    first = jobs[0]
    assert (first.method.name, first.task, first.budget, first.seed) == ("kprune", "sst2", 0.7, 3)
    assert first.folder == tmp_path / "runs" / "kprune" / "sst2" / "0.7" / "seed3"
    assert first.settings == {"flops_kept": 0.7, "seed": 3, "latency_repeats": 2, "num_samples": 16,
                              "num_tokens": None}
    squad_kwon = [j for j in jobs if j.task == "squad_v1" and j.method.name == "kwon_no_tuning" and not j.timing][0]
    assert squad_kwon.settings["num_samples"] == 4 and squad_kwon.settings["tune"] is False
    command = squad_kwon.command(config, tmp_path / "teacher")
    assert command[3:5] == ["--config", "configs/kwon/squad_v1.yaml"]
    assert command[command.index("--trainer.callbacks.init_args.tune") + 1] == "false"
    assert command[command.index("--trainer.accelerator") + 1] == "cpu"
    timing = [j for j in jobs if j.timing]
    assert [j.settings["num_samples"] for j in timing] == [32, 32]
    assert all(j.settings["time_reference_pass"] is True and j.settings["evaluate"] is False for j in timing)


# ------------------------------------------------------------------------------------------------- runner


def test_the_runner_runs_everything_once_then_finds_everything_done(tmp_path, no_adoption):
    config = make_config(tmp_path)
    fake = FakeTrainer()
    results = runner.run_benchmark(config, runner=fake)
    finetunes = [c for c in fake.calls if "configs/finetune" in " ".join(c)]
    assert len(finetunes) == 2  # one teacher per task
    assert len(fake.calls) == 2 + 2 * 2 * 2 * 2 + 2
    for task in ("sst2", "stsb"):
        record = json.loads((runner.teacher_dir(config, task) / runner.TEACHER_FILE).read_text())
        assert record["task"] == task and record["model"] == "tiny-model" and record["seed"] == 42
    again = FakeTrainer()
    assert runner.run_benchmark(config, runner=again) == results
    assert again.calls == []  # teachers cached, every report found


def test_an_interrupted_benchmark_resumes_where_it_stopped(tmp_path, no_adoption):
    config = make_config(tmp_path)
    runner.run_benchmark(config, runner=FakeTrainer())
    jobs = runner.plan(config)
    for job in jobs[3:6]:  # as if these had not finished (no report in the run folder or the archive)
        shutil.rmtree(job.folder)
        runner.archived_report(config, job).unlink()
    fake = FakeTrainer()
    runner.run_benchmark(config, runner=fake)
    folders = [Path(c[c.index("--trainer.default_root_dir") + 1]) for c in fake.calls]
    assert folders == [job.folder for job in jobs[3:6]]


def test_an_interrupted_training_run_resumes_from_its_last_checkpoint(tmp_path, no_adoption):
    config = make_config(tmp_path, methods=["grain"], budgets=[0.1], seeds=[0], tasks=["sst2"], timing=None)
    job = runner.plan(config)[0]
    (job.folder / "checkpoints").mkdir(parents=True)
    for name in ("epoch=0-step=230.ckpt", "epoch=1-step=460.ckpt", "epoch=0-step=99.ckpt"):
        (job.folder / "checkpoints" / name).write_bytes(b"")
    (job.folder / "train.log").write_text("the interrupted run's log")
    fake = FakeTrainer()
    runner.run_benchmark(config, runner=fake)
    assert fake.calls[-1][-2:] == ["--ckpt_path", str(job.folder / "checkpoints" / "epoch=1-step=460.ckpt")]
    kept = list(job.folder.glob("train.interrupted-*.log"))
    assert len(kept) == 1 and kept[0].read_text() == "the interrupted run's log"
    assert runner.latest_checkpoint(tmp_path / "nowhere") is None


def test_a_report_with_other_settings_is_not_taken_for_the_run(tmp_path, no_adoption):
    config = make_config(tmp_path)
    runner.run_benchmark(config, runner=FakeTrainer())
    job = runner.plan(config)[0]
    report = read_report(job.folder)
    report["settings"]["num_samples"] = 2048
    write_report(job.folder / REPORT_FILE, report)
    with pytest.raises(RuntimeError, match=r"num_samples=2048, asked 16.*Delete that folder"):
        runner.run_benchmark(config, runner=FakeTrainer())


def test_a_changed_recipe_gets_a_new_teacher(tmp_path, no_adoption, monkeypatch):
    config = make_config(tmp_path, tasks=["sst2"])
    before = runner.teacher_dir(config, "sst2")
    recipe = tmp_path / "sst2.yaml"
    recipe.write_text(runner.recipe_path("sst2").read_text() + "\n# changed\n")
    monkeypatch.setattr(runner, "recipe_path", lambda task: recipe)
    assert runner.teacher_dir(config, "sst2") == before  # a comment changes nothing
    recipe.write_text(runner.recipe_path("sst2").read_text().replace("max_epochs: 1", "max_epochs: 2"))
    after = runner.teacher_dir(config, "sst2")
    assert before != after and before.parent == after.parent
    assert runner.teacher_dir(make_config(tmp_path, tasks=["sst2"], teacher_seed=7), "sst2") != after


def test_adopting_the_recipes_own_teacher_needs_the_same_settings(tmp_path, monkeypatch):
    config = make_config(tmp_path, tasks=["sst2"])
    folder = tmp_path / "finetune" / "sst2"
    recipe = tmp_path / "sst2.yaml"
    recipe.write_text(f"trainer:\n  default_root_dir: {folder}\n")
    monkeypatch.setattr(runner, "recipe_path", lambda task: recipe)
    resolved = {"seed_everything": 42, "model": {"init_args": {"name_or_path": "tiny-model", "learning_rate": 1e-4}},
                "trainer": {"default_root_dir": str(folder), "enable_progress_bar": None},
                "data": {"init_args": {"task": "sst2", "group_by_length": False}}}
    monkeypatch.setattr(runner, "resolved_recipe", lambda config, task: resolved)
    assert runner.adoptable_teacher(config, "sst2")[0] is None  # nothing there yet
    saved = json.loads(json.dumps(resolved))
    del saved["data"]["init_args"]["group_by_length"]  # an older run, before that setting existed
    saved["trainer"]["default_root_dir"] = "elsewhere"
    (folder / "logs" / "version_0").mkdir(parents=True)
    (folder / "logs" / "version_0" / "config.yaml").write_text(yaml.safe_dump(saved))
    (folder / "final_model").mkdir()
    (folder / "final_model" / "config.json").write_text("{}")
    found, why = runner.adoptable_teacher(config, "sst2")
    assert found == folder and "group_by_length" in why
    fake = FakeTrainer()
    assert runner.ensure_teacher(config, "sst2", runner=fake) == folder / "final_model"
    assert fake.calls == []
    record = json.loads((runner.teacher_dir(config, "sst2") / runner.TEACHER_FILE).read_text())
    assert record["adopted_from"] == str(folder)
    # another learning rate: not this recipe's teacher
    saved["model"]["init_args"]["learning_rate"] = 5e-5
    (folder / "logs" / "version_1").mkdir()
    (folder / "logs" / "version_1" / "config.yaml").write_text(yaml.safe_dump(saved))
    (folder / "final_model" / "config.json").write_text("{}")  # newer than both saved configs
    found, why = runner.adoptable_teacher(config, "sst2")
    assert found is None and "model.init_args.learning_rate: recipe 0.0001, saved run 5e-05" in why


def test_config_differences():
    ours = {"a": 1, "b": {"c": None, "d": 2.0}, "trainer": {"logger": {"save_dir": "x"}, "max_epochs": 3}}
    theirs = {"a": 1, "b": {"d": 2.5}, "trainer": {"logger": {"save_dir": "y"}, "max_epochs": 3}, "e": 1}
    differences, unrecorded = runner.config_differences(ours, theirs)
    assert differences == ["b.d: recipe 2.0, saved run 2.5", "e: only the saved run has it (1)"]
    assert unrecorded == ["b.c: None (not in the saved config)"]


# ------------------------------------------------------------------------------------------------- tables


def test_tables_hold_the_reports_numbers(tmp_path, no_adoption):
    config = make_config(tmp_path)
    results = runner.run_benchmark(config, runner=FakeTrainer())
    cell = results["points"]["sst2"]["methods"]["kwon"]["0.4"]
    expected = [synthetic_metric("sst2", "kwon", 0.4, s) for s in (0, 1)]
    assert cell["metric"] == pytest.approx(sum(expected) / 2)
    assert cell["seeds"] == 2 and cell["speedup"] == pytest.approx(2.0)
    mean_kprune = (100 * (synthetic_metric("sst2", "kprune", 0.7, 0) + synthetic_metric("sst2", "kprune", 0.7, 1)) / 2
                   + 100 * (synthetic_metric("stsb", "kprune", 0.7, 0) + synthetic_metric("stsb", "kprune", 0.7, 1)) / 2) / 2
    assert results["means"]["kprune"]["0.7"] == pytest.approx(mean_kprune)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- benchmark: synthetic -->" in text and "<!-- end: synthetic -->" in text
    assert "| sst2 (accuracy) | teacher | 88.6 | 88.6 |" in text
    assert "| | Kwon et al. | 83.1 ± 0.7 | 77.1 ± 0.7 |" in text  # 88.6 - 6 + 0.5, 88.6 - 12 + 0.5; std of +-0.5
    assert "KPrune − Kwon et al., mean over tasks (points): 0.7: +3.0, 0.4: +6.0" in text
    assert "| sst2 | Kwon et al. | 1.14x (ideal 1.43x) | 2.00x (ideal 2.50x) |" in text
    # the other metrics of the runs (STS-B's Spearman), in their own table; SST-2 has none
    assert "### Other metrics of the same runs, x 100" in text and "| sst2 (" not in text.split("Other metrics")[1]
    assert "| stsb (spearman) | teacher | 85.0 | 85.0 |" in text
    assert "| | Kwon et al. | 79.5 | 73.5 |" in text  # the mean over seeds: 86.0 - 6 + 0.5 - 1, 86.0 - 12 + 0.5 - 1
    assert "| Kwon et al. | 10.0 | 5.0 | **2.00** | <= 4 |" in text
    assert "| KPrune | 30.0 | 5.0 | **6.00** | <= 2 x 12 + 2 = 26 |" in text
    assert "Test CPU @ 1.00GHz (2 cores), 2 threads" in text
    assert "![synthetic metric](results/synthetic_metric.png)" in text
    saved = json.loads((tmp_path / "results" / "synthetic.json").read_text())
    assert saved["means"] == results["means"]


def test_an_interim_table_of_the_runs_done(tmp_path, no_adoption):
    """--collect-only --partial tabulates an unfinished benchmark: pending cells marked, means only over every task."""
    config = make_config(tmp_path, seeds=[0], timing=None)
    runner.run_benchmark(config, runner=FakeTrainer())
    for job in runner.plan(config):  # kprune at 0.4 on sst2 and everything on stsb not done yet
        if job.task == "stsb" or (job.method.name == "kprune" and job.budget == 0.4):
            shutil.rmtree(job.folder)
    shutil.rmtree(tmp_path / "archive")
    with pytest.raises(RuntimeError, match="add --partial for an interim table"):
        runner.run_benchmark(config, runner=FakeTrainer(), collect_only=True)
    with pytest.raises(ValueError, match="goes with collect_only"):
        runner.run_benchmark(config, runner=FakeTrainer(), partial=True)
    results = runner.run_benchmark(config, runner=FakeTrainer(), collect_only=True, partial=True)
    assert results["runs_done"] == 3 and results["runs_planned"] == 8
    assert ["sst2", "kprune", "0.4"] in [list(entry) for entry in results["pending"]]
    assert results["points"]["stsb"] is None and results["points"]["sst2"]["methods"]["kprune"]["0.4"] is None
    assert results["means"]["kwon"]["0.7"] is None and results["teacher_mean"] is None
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "**Interim**: 3 of 8 runs done" in text
    assert "| | KPrune | 85.6 | · |" in text  # 88.6 - 3
    assert "| stsb | (no run done yet) | · | · |" in text
    assert "| | Kwon et al. | **·** |" not in text and "| | Kwon et al. | · | · |" in text
    assert "| KPrune | 30.0 | · | 3.00x |" in text  # pruning seconds per run, against Kwon's on sst2 at 0.7 only
    assert (tmp_path / "results" / "synthetic_metric.png").is_file()
    with pytest.raises(SystemExit):
        runner.main(["--partial"])
    for job in runner.plan(config):
        if job.folder.exists():
            shutil.rmtree(job.folder)
    with pytest.raises(RuntimeError, match="no run of 'synthetic' is done yet"):
        runner.run_benchmark(config, runner=FakeTrainer(), collect_only=True, partial=True)


def test_the_cost_ratio_compares_the_runs_both_methods_did():
    """A variant at one budget (or an interim table missing a task) is timed against the reference's same cells."""
    def cell(seconds):
        return {"prune_seconds": seconds}

    results = {"tasks": ["stsb", "mrpc"], "budgets": ["0.5", "0.1"],
               "points": {"stsb": {"methods": {"smp": {"0.5": cell(10.0), "0.1": cell(30.0)},
                                               "noreg": {"0.5": None, "0.1": cell(15.0)},
                                               "kd": {"0.5": None, "0.1": None}}},
                          "mrpc": {"methods": {"smp": {"0.5": cell(100.0), "0.1": cell(100.0)},
                                               "noreg": {"0.5": None, "0.1": None},
                                               "kd": {"0.5": None, "0.1": None}}}}}
    assert tables._cost_ratio(results, "noreg", "smp") == pytest.approx(0.5)  # 15 / 30, not 15 / 60
    assert tables._cost_ratio(results, "smp", "smp") == pytest.approx(1.0)
    assert tables._cost_ratio(results, "kd", "smp") is None  # no run yet: shown as pending, never as nan


def test_plots_open_with_the_expected_size(tmp_path, no_adoption):
    image = pytest.importorskip("matplotlib.image")
    config = make_config(tmp_path)
    runner.run_benchmark(config, runner=FakeTrainer())
    sizes = {"metric": (tables.METRIC_PANEL[0] * 2, tables.METRIC_PANEL[1]), "speedup": tables.SPEEDUP_SIZE,
             "cost": tables.COST_SIZE}
    for name, (width, height) in sizes.items():
        pixels = image.imread(tmp_path / "results" / f"synthetic_{name}.png")
        assert pixels.shape[:2] == (round(height * tables.DPI), round(width * tables.DPI)), name
        assert pixels.std() > 0.01  # not blank


def test_reports_from_two_machines_are_never_mixed(tmp_path, no_adoption):
    config = make_config(tmp_path)
    runner.run_benchmark(config, runner=FakeTrainer())
    job = runner.plan(config)[5]
    report = read_report(job.folder)
    report["hardware"] = {**HARDWARE, "device": "cuda:0", "gpu": "NVIDIA H100"}
    write_report(job.folder / REPORT_FILE, report)
    with pytest.raises(ValueError, match=r"different machines.*GPU: NVIDIA H100 \(cuda:0\).*: 1 run"):
        runner.run_benchmark(config, runner=FakeTrainer(), collect_only=True)


def test_other_benchmarks_sections_are_kept():
    document = tables.replace_section("", "a", "## A\nfirst\n")
    document = tables.replace_section(document, "b", "## B\n")
    document = tables.replace_section(document, "a", "## A\nsecond\n")
    assert document.startswith("# lit_prune benchmarks")
    assert "second" in document and "first" not in document and "## B" in document
    assert document.index("## A") < document.index("## B")


def test_a_matched_method_runs_at_what_its_reference_achieved(tmp_path, no_adoption):
    """KPrune at GRAIN's FLOPs: each KPrune run takes the flops_kept of the GRAIN run at the same density."""
    config = make_config(tmp_path, tasks=["sst2"], budgets=[0.2, 0.1], seeds=[0], timing=None,
                         methods=["grain", {"name": "kprune_at_grain", "method": "kprune", "match": "grain",
                                            "label": "KPrune (GRAIN's FLOPs)"}])
    jobs = runner.plan(config)
    matched = [job for job in jobs if job.method.name == "kprune_at_grain"]
    assert all("flops_kept" not in job.settings and job.reference.parts[-3:-1] == ("sst2", f"{job.budget:g}")
               for job in matched)
    fake = FakeTrainer()
    results = runner.run_benchmark(config, runner=fake)
    prune_calls = [dict(zip(c[3::2], c[4::2])) for c in fake.calls if "--trainer.callbacks.init_args.seed" in c]
    kprune = [c for c in prune_calls if "kprune" in c["--config"]]
    assert [float(c["--trainer.callbacks.init_args.flops_kept"]) for c in kprune] == pytest.approx([0.3, 0.2])
    assert results["budget_setting"] == ["params_kept"] and results["matched"] == {"kprune_at_grain": "grain"}
    cell = results["points"]["sst2"]["methods"]["kprune_at_grain"]["0.2"]
    assert cell["flops_kept"] == pytest.approx(0.3)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "KPrune (GRAIN's FLOPs) runs, in each column, at the flops_kept that GRAIN reached there." in text
    # a second run finds everything, matched runs included, done
    again = FakeTrainer()
    runner.run_benchmark(config, runner=again)
    assert again.calls == []


def test_a_method_can_run_at_some_of_the_budgets_only(tmp_path, no_adoption):
    """SMP-S without its regulariser at 10% only: no runs elsewhere, dashes in the tables, means where it ran."""
    config = make_config(tmp_path, budgets=[0.7, 0.4], seeds=[0], timing=None, methods=[
        "kwon", {"name": "kwon_at_04", "method": "kwon", "label": "Kwon at 0.4", "budgets": [0.4]}])
    jobs = runner.plan(config)
    assert sorted((j.method.name, j.budget) for j in jobs if j.task == "sst2") == [
        ("kwon", 0.4), ("kwon", 0.7), ("kwon_at_04", 0.4)]
    results = runner.run_benchmark(config, runner=FakeTrainer())
    assert results["points"]["sst2"]["methods"]["kwon_at_04"]["0.7"] is None
    assert results["means"]["kwon_at_04"]["0.7"] is None
    assert results["means"]["kwon_at_04"]["0.4"] == pytest.approx(results["means"]["kwon"]["0.4"])
    assert results["methods"]["kwon_at_04"]["budgets"] == ["0.4"]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| | Kwon at 0.4 | – | 76.6 |" in text  # 88.6 - 12, seed 0
    assert "Kwon at 0.4 − Kwon et al., mean over tasks (points): 0.4: +0.0" in text
    assert "| sst2 | Kwon at 0.4 | – | 2.00x (ideal 2.50x) |" in text
    assert "| Kwon at 0.4 | 10.0 | 10.0 | 1.00x |" in text
    assert (tmp_path / "results" / "synthetic_metric.png").is_file()


@pytest.mark.parametrize("methods, message", [
    ([{"name": "k", "method": "kwon", "budgets": [0.5]}], "methods.k.budgets=[0.5]: each must be one of the config's"),
    ([{"name": "k", "method": "kwon", "budgets": []}], "budgets of 'k'=[]: expected a non-empty list"),
    ([{"name": "k", "method": "kwon", "budgets": [2]}], "methods.k.budgets=2: a budget is a fraction in (0, 1]"),
    (["kwon", {"name": "g", "method": "grain", "budgets": [0.4]}, {"name": "m", "method": "kprune", "match": "g"}],
     "it matches g, which runs only at [0.4]; give it those budgets"),
    ([{"name": "g", "method": "grain", "budgets": [0.4]}, {"name": "m", "method": "kprune", "match": "g",
                                                            "budgets": [0.7]}],
     "methods.m.budgets=[0.7]: it matches g, which runs only at [0.4]"),
])
def test_bad_method_budgets(tmp_path, methods, message):
    with pytest.raises(runner.BenchConfigError) as error:
        make_config(tmp_path, methods=methods)
    assert message in str(error.value)


def test_a_variant_trains_for_its_own_length_and_a_report_of_another_length_is_refused(tmp_path):
    config = make_config(tmp_path, tasks=["stsb"], budgets=[0.1], seeds=[0], timing=None, methods=[
        "smp", {"name": "smp_long", "method": "smp", "label": "SMP-S, 12 epochs", "trainer": {"max_epochs": 12}}])
    short, long = runner.plan(config)
    assert short.method.trainer == {} and long.method.trainer == {"max_epochs": 12}
    assert "--trainer.max_epochs" not in short.command(config, tmp_path / "teacher")
    command = long.command(config, tmp_path / "teacher")
    assert command[command.index("--trainer.max_epochs") + 1] == "12"
    assert long.folder == tmp_path / "runs" / "smp_long" / "stsb" / "0.1" / "seed0"
    epochs = yaml.safe_load((runner.REPO / "configs" / "smp" / "stsb.yaml").read_text())["trainer"]["max_epochs"]
    assert epochs != 12
    report = {"task": "stsb", "teacher": str(tmp_path / "teacher"), "settings": {"params_kept": 0.1},
              "training": {"max_epochs": epochs, "steps": 180 * epochs}, "hardware": {"device": "cpu"}}
    assert runner.report_mismatches(report, long, tmp_path / "teacher", "cpu") == \
        [f"trainer max_epochs={epochs}, asked 12"]
    assert runner.report_mismatches(report, short, tmp_path / "teacher", "cpu") == []  # the recipe's length
    report["training"]["max_epochs"] = 12
    assert runner.report_mismatches(report, long, tmp_path / "teacher", "cpu") == []
    # a run of the recipe when it trained for another length is not taken for a run of the recipe as it is now
    assert runner.report_mismatches(report, short, tmp_path / "teacher", "cpu") == \
        [f"trainer max_epochs=12, asked {epochs}"]
    assert runner.expected_training(short) == {"max_epochs": epochs}


def test_a_report_of_the_recipe_with_other_settings_is_refused(tmp_path):
    """A recipe setting changed since a run (SMP's regulariser, GRAIN's callback) makes that run another run; the
    settings the runner sets on every command (budget, model, teacher, seed) are not the recipe's to compare."""
    config = make_config(tmp_path, tasks=["mrpc"], budgets=[0.1], seeds=[0], timing=None, methods=[
        "smp", {"name": "smp_noreg", "method": "smp", "settings": {"regularization": 0.0}}, "grain"])
    smp, noreg, grain = runner.plan(config)
    raw = yaml.safe_load((runner.REPO / "configs" / "smp" / "mrpc.yaml").read_text())
    recipe, epochs = raw["model"]["init_args"], raw["trainer"]["max_epochs"]
    expected = runner.recipe_settings(smp)
    assert expected["regularization"] == recipe["regularization"] and expected["masking"] == recipe["masking"]
    assert not {"params_kept", "name_or_path", "teacher"} & set(expected)
    grain_recipe = yaml.safe_load((runner.REPO / "configs" / "grain" / "mrpc.yaml").read_text())["trainer"]
    assert runner.recipe_settings(grain)["alpha"] == grain_recipe["callbacks"][-1]["init_args"]["alpha"]
    assert "params_kept" not in runner.recipe_settings(grain)
    report = {"task": "mrpc", "teacher": str(tmp_path / "teacher"), "hardware": {"device": "cpu"},
              "settings": {"params_kept": 0.1, "masking": recipe["masking"], "regularization": recipe["regularization"]},
              "training": {"max_epochs": epochs}}
    assert runner.report_mismatches(report, smp, tmp_path / "teacher", "cpu") == []
    assert runner.report_mismatches(report, noreg, tmp_path / "teacher", "cpu") == \
        [f"regularization={recipe['regularization']!r}, asked 0.0"]  # the variant's own setting wins
    other = 10 * recipe["regularization"]  # a run of the recipe when it had another regulariser weight
    report["settings"]["regularization"] = other
    assert runner.report_mismatches(report, smp, tmp_path / "teacher", "cpu") == \
        [f"regularization={other!r}, asked {recipe['regularization']!r}"]


def test_a_report_that_predates_a_setting_ran_at_its_old_value(tmp_path):
    """SMP's reports record head_warmup_steps since it exists; one without it is a run without warm-up, so it stands
    for a job asking 0 (or nothing) and not for one asking a warm-up."""
    config = make_config(tmp_path, tasks=["mrpc"], budgets=[0.2], seeds=[0], timing=None, methods=[
        "smp", {"name": "smp_warmup", "method": "smp", "settings": {"head_warmup_steps": 100}},
        {"name": "smp_warmup0", "method": "smp", "settings": {"head_warmup_steps": 0}}])
    smp, warmup, warmup0 = runner.plan(config)
    raw = yaml.safe_load((runner.REPO / "configs" / "smp" / "mrpc.yaml").read_text())
    report = {"task": "mrpc", "teacher": str(tmp_path / "teacher"), "hardware": {"device": "cpu"},
              "settings": {key: raw["model"]["init_args"][key] for key in ("masking", "regularization")},
              "training": {"max_epochs": raw["trainer"]["max_epochs"]}}
    assert "head_warmup_steps" not in report["settings"]
    assert runner.report_mismatches(report, smp, tmp_path / "teacher", "cpu") == []
    assert runner.report_mismatches(report, warmup0, tmp_path / "teacher", "cpu") == []
    assert runner.report_mismatches(report, warmup, tmp_path / "teacher", "cpu") == \
        ["head_warmup_steps=0 (the run predates the setting), asked 100"]
    report["settings"]["head_warmup_steps"] = 100
    assert runner.report_mismatches(report, warmup, tmp_path / "teacher", "cpu") == []
    assert runner.report_mismatches(report, warmup0, tmp_path / "teacher", "cpu") == \
        ["head_warmup_steps=100, asked 0"]


@pytest.mark.parametrize("trainer, message", [
    ([12], "trainer of 'v'=[12]: expected a mapping such as {max_epochs: 12}"),
    ({"max_time": 5}, "trainer of 'v': unknown setting 'max_time'; allowed: max_epochs"),
    ({"max_epochs": 0}, "trainer of 'v': max_epochs=0: expected epochs of training (a positive integer)"),
    ({"max_epochs": 2.5}, "max_epochs=2.5: expected"),
    ({"max_steps": -2}, "max_steps=-2: expected training steps"),
])
def test_bad_trainer_settings_of_a_variant(tmp_path, trainer, message):
    with pytest.raises(runner.BenchConfigError) as error:
        make_config(tmp_path, methods=[{"name": "v", "method": "smp", "trainer": trainer}])
    assert message in str(error.value)


def test_trainer_settings_are_refused_for_a_method_that_does_not_train(tmp_path):
    with pytest.raises(runner.BenchConfigError, match="kwon does not train"):
        make_config(tmp_path, methods=[{"name": "v", "method": "kwon", "trainer": {"max_epochs": 3}}])
    config = make_config(tmp_path, methods=[{"name": "v", "method": "grain", "trainer": {"max_steps": -1}}])
    assert config.methods[0].trainer == {"max_steps": -1}


def test_match_must_name_an_earlier_method(tmp_path):
    with pytest.raises(runner.BenchConfigError, match="match='grain', which is not a method listed before it"):
        make_config(tmp_path, methods=[{"name": "k", "method": "kprune", "match": "grain"}, "grain"])


def test_a_method_that_starts_from_the_pretrained_model(tmp_path, no_adoption):
    """SMP prunes the benchmark's pretrained model, gets the teacher as a setting, and is seeded globally."""
    config = make_config(tmp_path, tasks=["sst2"], budgets=[0.1], seeds=[3], timing=None, methods=["smp"])
    fake = FakeTrainer()
    results = runner.run_benchmark(config, runner=fake)
    run = dict(zip(fake.calls[-1][3::2], fake.calls[-1][4::2]))
    assert run["--config"] == "configs/smp/sst2.yaml"
    assert run["--model.init_args.name_or_path"] == "tiny-model"
    assert run["--model.init_args.teacher"].startswith(str(tmp_path / "teachers" / "sst2"))
    assert run["--seed_everything"] == "3" and run["--model.init_args.params_kept"] == "0.1"
    assert "--model.init_args.seed" not in run
    step = results["step_time"]["smp"]  # the SMP step against a plain fine-tuning step, from the reports
    assert step["runs"] == 1 and step["ratio"] == pytest.approx(1.5 / 1.1)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| SMP-S | 1 | 150.0 | 110.0 | **1.36** | 1.36–1.36 |" in text
    cell = results["points"]["sst2"]["methods"]["smp"]["0.1"]
    assert cell["params_kept"] == pytest.approx(0.1) and cell["flops_kept"] == pytest.approx(0.9)  # weights, not rows
    assert cell["csr_speedup"] == pytest.approx(0.8)
    assert "| sst2 | SMP-S | 0.89x (ideal 1.11x; CSR 0.80x) |" in text and "CSR: the same pruned model" in text
    again = FakeTrainer()
    runner.run_benchmark(config, runner=again)
    assert again.calls == []  # done, and its report names the same teacher


def test_a_fresh_checkout_resumes_from_the_archive(tmp_path, no_adoption):
    """Every finished run's report is archived; with the runs and teachers gone (a fresh checkout), the benchmark
    restores the reports, fine-tunes no teacher, reruns nothing and writes the same results."""
    config = make_config(tmp_path)
    first = runner.run_benchmark(config, runner=FakeTrainer())
    archived = sorted(p.relative_to(tmp_path / "archive") for p in (tmp_path / "archive").rglob(REPORT_FILE))
    assert len(archived) == len(runner.plan(config))
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "teachers")
    fake = FakeTrainer()
    again = runner.run_benchmark(config, runner=fake)
    assert fake.calls == []
    assert again["points"] == first["points"] and again["means"] == first["means"]
    # one run lost from both places reruns, and only its task's teacher is fine-tuned again
    lost = next(job for job in runner.plan(config) if job.task == "stsb" and not job.timing)
    shutil.rmtree(lost.folder)
    runner.archived_report(config, lost).unlink()
    fake = FakeTrainer()
    runner.run_benchmark(config, runner=fake)
    configs = [Path(dict(zip(c[3::2], c[4::2]))["--config"]).parts[-2:] for c in fake.calls]
    assert configs == [("finetune", "stsb.yaml"), (lost.method.name, "stsb.yaml")]


def test_dense_metrics_teacher_hands_the_teachers_scores_to_the_runs_that_take_them(tmp_path, no_adoption):
    """``dense_metrics: teacher``: the retraining-free runs get the teacher's final validation metrics on the command
    line (and skip evaluating the dense model); timing runs, which evaluate nothing, and SMP do not."""
    config = make_config(tmp_path, tasks=["sst2"], budgets=[0.5], seeds=[0], methods=["kwon", "smp"],
                         dense_metrics="teacher", timing=None)
    fake = FakeTrainer()
    runner.run_benchmark(config, runner=fake)
    timing = make_config(tmp_path, tasks=["sst2"], budgets=[0.5], seeds=[0], methods=["kwon"],
                         dense_metrics="teacher")
    assert [runner.known_dense_metrics(timing, job) is None for job in runner.plan(timing)] == [False, True]
    runs = [dict(zip(c[3::2], c[4::2])) for c in fake.calls if "configs/finetune" not in " ".join(c)]
    given = [json.loads(r["--trainer.callbacks.init_args.dense_metrics"]) for r in runs
             if "--trainer.callbacks.init_args.dense_metrics" in r]
    assert given == [{"val/accuracy": 0.9}]  # the kwon run only: not its timing run, not SMP
    assert not any("--model.init_args.dense_metrics" in r for r in runs)
    # the default measures in every run
    measured = FakeTrainer()
    runner.run_benchmark(make_config(tmp_path / "m", tasks=["sst2"], budgets=[0.5], seeds=[0], methods=["kwon"]),
                         runner=measured)
    assert not any("--trainer.callbacks.init_args.dense_metrics" in c for c in measured.calls)
    with pytest.raises(runner.BenchConfigError, match="dense_metrics='cached': allowed 'measure' or 'teacher'"):
        make_config(tmp_path, dense_metrics="cached")


@pytest.mark.parametrize("task", ["sst2", "mrpc", "stsb", "squad_v1", "squad_v2"])
def test_pruning_recipes_evaluate_as_the_teacher_recipe_does(task):
    """``dense_metrics: teacher`` is exact only if every retraining-free recipe evaluates on the data the teacher's
    recipe validated on: their data sections may differ in training-only settings, nothing else."""
    training_only = {"max_train_samples", "batch_size", "group_by_length", "num_workers"}
    teacher = yaml.safe_load((runner.REPO / "configs" / "finetune" / f"{task}.yaml").read_text())["data"]
    for method in ("kwon", "kprune", "gpruner"):
        recipe = yaml.safe_load((runner.REPO / "configs" / method / f"{task}.yaml").read_text())["data"]
        assert recipe["class_path"] == teacher["class_path"]
        a, b = recipe["init_args"], teacher["init_args"]
        differing = {key for key in set(a) | set(b) if a.get(key) != b.get(key)}
        assert differing <= training_only, (method, task, differing)


def test_timing_can_name_the_methods_it_times(tmp_path):
    config = make_config(tmp_path, timing={"task": "sst2", "samples": 32, "budget": 0.5, "methods": ["kprune"]})
    assert [job.method.name for job in runner.plan(config) if job.timing] == ["kprune"]
    with pytest.raises(runner.BenchConfigError, match=r"timing.methods=\['grain'\]: expected a non-empty list of"):
        make_config(tmp_path, timing={"task": "sst2", "samples": 32, "budget": 0.5, "methods": ["grain"]})


def test_metric_plots_share_one_budget_axis():
    """Budgets 3x apart or more go on a log axis, ticked at the budgets; a panel with one run is not zoomed onto
    it; the most pruned end is on the right."""
    plt = tables._pyplot()
    fig, (wide, narrow) = plt.subplots(1, 2)
    tables._budget_axis(wide, [0.0492, 0.0475, 0.2], [0.2, 0.1, 0.05], "x")
    assert wide.get_xscale() == "log" and wide.get_xlim() == pytest.approx((0.23, 0.0475 / 1.15))
    assert [t.get_text() for t in wide.get_xticklabels()] == ["20%", "10%", "5%"]
    tables._budget_axis(narrow, [0.5, 0.49], [0.5], "x")
    assert narrow.get_xscale() == "linear"
    left, right = narrow.get_xlim()
    assert left > 0.5 and right < 0.49 and left - right > 0.05
    plt.close(fig)
    assert tables._x_setting({"budget_setting": ["params_kept"]})[0] == "params_kept"
    assert tables._x_setting({"budget_setting": ["flops_kept"]})[0] == "flops_kept"


# ------------------------------------------------------------------------------------------------- parallel runs


class SlowTrainer(FakeTrainer):
    """A FakeTrainer whose pruning runs take a little while and record how many ran at once."""

    def __init__(self, fail: str | None = None):
        super().__init__()
        self.running = self.most = 0
        self.lock = threading.Lock()
        self.fail = fail
        self.order: list[tuple[str, str]] = []

    def __call__(self, command: list[str], log_file: Path, **kwargs) -> None:
        args = dict(zip(command[3::2], command[4::2]))
        if "configs/finetune" in args["--config"]:
            return super().__call__(command, log_file, **kwargs)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.order.append(("start", args["--trainer.default_root_dir"]))
        try:
            time.sleep(0.05)
            if self.fail and self.fail in args["--trainer.default_root_dir"]:
                raise RuntimeError(f"run {self.fail} failed")
            super().__call__(command, log_file, **kwargs)
        finally:
            with self.lock:
                self.running -= 1
                self.order.append(("end", args["--trainer.default_root_dir"]))


def test_parallel_runs_split_the_cores_and_give_the_same_results(tmp_path, no_adoption, monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    sequential = runner.run_benchmark(make_config(tmp_path / "one"), runner=FakeTrainer())
    config = make_config(tmp_path / "two", jobs=2)
    fake = SlowTrainer()
    results = runner.run_benchmark(config, runner=fake)
    assert fake.most == 2
    pruning = [(c, k) for c, k in zip(fake.calls, fake.kwargs) if "--trainer.callbacks.init_args.seed" in c]
    timing = [k for c, k in pruning if "--trainer.callbacks.init_args.time_reference_pass" in c]
    assert len(timing) == 2 and all(k == {} for k in timing)  # timing runs: alone, every thread
    assert all(k == {"threads": 2} for c, k in pruning if "--trainer.callbacks.init_args.time_reference_pass" not in c)
    assert results["points"] == sequential["points"] and results["jobs"] == 2
    assert "2 runs at a time" in (tmp_path / "two" / "BENCHMARKS.md").read_text()
    assert "runs at a time" not in (tmp_path / "one" / "BENCHMARKS.md").read_text()


def test_a_parallel_matched_run_waits_for_its_reference(tmp_path, no_adoption, monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    config = make_config(tmp_path, tasks=["sst2"], budgets=[0.2, 0.1], seeds=[0], timing=None, jobs=2,
                         methods=["grain", {"name": "kprune_at_grain", "method": "kprune", "match": "grain"}])
    fake = SlowTrainer()
    results = runner.run_benchmark(config, runner=fake)
    for budget in ("0.2", "0.1"):
        reference = str(tmp_path / "runs" / "grain" / "sst2" / budget / "seed0")
        matched = str(tmp_path / "runs" / "kprune_at_grain" / "sst2" / budget / "seed0")
        assert fake.order.index(("end", reference)) < fake.order.index(("start", matched))
    assert results["points"]["sst2"]["methods"]["kprune_at_grain"]["0.2"]["flops_kept"] == pytest.approx(0.3)


def test_a_failed_parallel_run_stops_the_benchmark(tmp_path, no_adoption, monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    config = make_config(tmp_path, jobs=2, timing=None)
    fake = SlowTrainer(fail=str(Path("kwon") / "sst2" / "0.7" / "seed0"))
    with pytest.raises(RuntimeError, match="run kwon.sst2.0.7.seed0 failed"):
        runner.run_benchmark(config, runner=fake)
    started = [path for what, path in fake.order if what == "start"]
    assert len(started) <= 3  # the failed run, the one beside it, at most one that started before the failure
    again = FakeTrainer()
    runner.run_benchmark(config, runner=again)  # resumes: the runs that finished are not repeated
    assert len([c for c in again.calls if "--trainer.callbacks.init_args.seed" in c]) == 16 - len(started) + 1


def test_more_parallel_runs_than_cores_is_refused_before_any_run(tmp_path, no_adoption, monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    config = make_config(tmp_path, jobs=3)
    fake = FakeTrainer()
    with pytest.raises(RuntimeError, match=r"jobs=3 is more runs at once than this machine's 2 CPU cores; allowed 1..2"):
        runner.run_benchmark(config, runner=fake)
    assert not [c for c in fake.calls if "--trainer.callbacks.init_args.seed" in c]


def test_run_command_sets_the_thread_count(tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen.update(kwargs)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    runner.run_command(["python", "train.py"], tmp_path / "log.txt", threads=1)
    assert seen["env"]["OMP_NUM_THREADS"] == "1" and seen["env"]["MKL_NUM_THREADS"] == "1"
    runner.run_command(["python", "train.py"], tmp_path / "log.txt")
    assert seen["env"] is None


def test_a_teachers_key_ignores_the_recipes_comments(tmp_path):
    from benchmarks.runner import teacher_key

    first, second, third = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    first.write_text("# one header\ntrainer:\n  max_epochs: 3\n")
    second.write_text("# another header, longer\ntrainer:\n  max_epochs: 3   # a comment\n")
    third.write_text("trainer:\n  max_epochs: 4\n")
    assert teacher_key(first, "m", 42) == teacher_key(second, "m", 42) != teacher_key(third, "m", 42)
    assert teacher_key(first, "m", 42) != teacher_key(first, "m", 43)


def test_a_teacher_cached_under_another_key_is_adopted_when_its_settings_are_the_recipes(tmp_path, no_adoption,
                                                                                        monkeypatch):
    config = make_config(tmp_path, tasks=["sst2"])
    resolved = {"seed_everything": 42, "model": {"init_args": {"name_or_path": "tiny-model", "learning_rate": 1e-4}},
                "data": {"init_args": {"task": "sst2"}}}
    monkeypatch.setattr(runner, "resolved_recipe", lambda config, task: resolved)
    old = config.teachers / "sst2" / "tiny-model-seed42-0123456789ab"  # an older key scheme's folder
    (old / "logs" / "version_0").mkdir(parents=True)
    (old / "logs" / "version_0" / "config.yaml").write_text(yaml.safe_dump(resolved))
    (old / "final_model").mkdir()
    (old / "final_model" / "config.json").write_text("{}")
    (old / runner.TEACHER_FILE).write_text(json.dumps({"task": "sst2", "model": "tiny-model", "seed": 42,
                                                        "final_model": str(old / "final_model")}))
    fake = FakeTrainer()
    assert runner.ensure_teacher(config, "sst2", runner=fake) == old / "final_model"
    assert fake.calls == []  # nothing fine-tuned again
    record = json.loads((runner.teacher_dir(config, "sst2") / runner.TEACHER_FILE).read_text())
    assert record["adopted_from"] == str(old) and "cached under another key" in record["why"]
    # other settings: not adopted, fine-tuned
    (runner.teacher_dir(config, "sst2") / runner.TEACHER_FILE).unlink()
    resolved["model"]["init_args"]["learning_rate"] = 5e-5
    assert runner.equivalent_cached_teacher(config, "sst2") is None


def test_the_scale_study_tabulates_speed_and_memory(tmp_path, monkeypatch):
    from benchmarks.studies import scale

    rows = [{"part": "speed", "size": "BERT-base", "flops_kept_target": 0.5, "flops_kept": 0.4987,
             "parameters": {"dense": 86_000_000, "pruned": 60_000_000}, "dense_ms": 2500.0, "pruned_ms": 1300.0,
             "speedup": 1.923, "speedup_paired": 1.9, "repeats": 10, "batch_size": 32, "seq_len": 128, "threads": 2},
            {"part": "memory", "model": "BERT-base (random)", "method": "kprune", "task": "sst2", "samples": 2048,
             "peak_rss_mib": 3012.4, "seconds": 905.0}]
    text = scale.markdown(rows, "CPU: test")
    assert "| BERT-base | 0.499 | 86.0M → 60.0M | 2500 | 1300 | 1.92x | 2.01x |" in text
    assert "| BERT-base (random) | 3012 | 905 |" in text
    docs = tmp_path / "core.md"
    docs.write_text("# x\n\n<!-- benchmark: scale -->\nNot measured yet\n<!-- end: scale -->\n")
    monkeypatch.setattr(scale, "RESULTS", tmp_path)
    monkeypatch.setattr(scale, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(scale, "DOCS", docs)
    scale.save(rows)
    assert "1.92x" in docs.read_text() and "Not measured yet" not in docs.read_text()
    assert json.loads((tmp_path / "scale.json").read_text()) == rows


def test_the_archived_cells_table_explains_each_cell_that_differs():
    from benchmarks.studies.rerun_archived import markdown

    def row(method, same, archived, rerun):
        return {"method": method, "benchmark": method, "task": "mrpc", "budget": 0.5, "same_structure": same,
                "flops_kept": {"archived": 0.5, "rerun": 0.5}, "params_kept": {"archived": None, "rerun": None},
                "metrics": {"f1": {"archived": archived, "rerun": rerun}},
                "largest_metric_difference": abs(archived - rerun)}

    text = markdown([row("kwon", True, 0.85, 0.85), row("grain", False, 0.85, 0.842)])
    assert "| kwon | kwon: mrpc at 0.5 | yes | 0.5000 → 0.5000 | – | 0.00e+00 |" in text
    assert "- **grain** (another kept structure; f1 85.0 → 84.2): GRAIN's `params_kept` now counts" in text
    assert "**kwon**" not in text  # an exact match needs no note


def test_the_precision_study_tabulates_bf16_against_float32():
    from benchmarks.studies.precision import markdown

    def row(method, full, half, same):
        return {"method": method, "task": "mrpc", "flops_kept": 0.5, "metric": "accuracy", "dense": 0.86,
                "float32": full, "bf16": half, "difference": half - full, "same_units": same,
                "seconds": {"32-true": 300.0, "bf16-mixed": 420.4}, "folders": {}}

    text = markdown([row("kwon", 0.8407, 0.8382, True), row("kprune", 0.8480, 0.8333, False)])
    assert "| kwon | mrpc | 0.5 | accuracy | 0.8600 | 0.8407 | 0.8382 | -0.25 pt | yes | yes | 300 / 420 |" in text
    assert "| kprune | mrpc | 0.5 | accuracy | 0.8600 | 0.8480 | 0.8333 | -1.47 pt | no | no | 300 / 420 |" in text
    assert "python -m benchmarks.studies.precision" in text
