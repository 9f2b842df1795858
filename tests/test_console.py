"""The ``lit-prune`` console script: packaged recipes found by name, one-line parse errors, the installed package."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from lit_prune.cli import find_recipe, main, recipe_names, resolve_config, resolve_config_args

PACKAGED = Path(str(importlib.resources.files("lit_prune") / "recipes"))


def parse_error(capsys, *args: str) -> tuple[int, list[str]]:
    """Run the CLI in-process on ``args``; its exit status and the lines it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err.splitlines()


# --------------------------------------------------------------------------------------------------- recipes


def test_the_recipes_are_inside_the_package_and_parse_as_yaml():
    paths = sorted(PACKAGED.rglob("*.yaml"))
    assert len(paths) == len(recipe_names()) >= 30
    assert {"quickstart", "finetune/mrpc", "kprune/mrpc", "kwon/squad_v2", "gpruner/stsb", "grain/sst2",
            "smp/squad_v1"} <= set(recipe_names())
    for path in paths:
        recipe = yaml.safe_load(path.read_text())
        assert {"trainer", "model", "data"} <= set(recipe), path
        assert path.read_text().startswith("# "), f"{path}: `lit-prune recipes` shows the first comment line"


def test_the_clone_s_configs_folder_is_the_packaged_recipes():
    """configs/ is a link to lit_prune/recipes/: one set of files, under both names."""
    assert (REPO / "configs").resolve() == PACKAGED.resolve()
    assert (REPO / "configs" / "kprune" / "mrpc.yaml").read_bytes() == (PACKAGED / "kprune" / "mrpc.yaml").read_bytes()


@pytest.mark.parametrize("name", ["kprune/mrpc", "kprune/mrpc.yaml", "configs/kprune/mrpc.yaml", "./kprune/mrpc"])
def test_a_recipe_name_resolves_to_the_packaged_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    assert Path(resolve_config(name)) == PACKAGED / "kprune" / "mrpc.yaml"
    assert resolve_config_args(["fit", "--config", name, "--config=" + name, "-c", name]) == [
        "fit", "--config", str(find_recipe(name)), "--config=" + str(find_recipe(name)), "-c", str(find_recipe(name))]


def test_an_existing_path_wins_over_a_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kprune").mkdir()
    (tmp_path / "kprune" / "mrpc.yaml").write_text("seed_everything: 1\n")
    assert resolve_config("kprune/mrpc.yaml") == "kprune/mrpc.yaml"
    assert Path(resolve_config("kprune/mrpc")) == PACKAGED / "kprune" / "mrpc.yaml"  # not a file: the recipe
    inline = "{trainer: {max_steps: 3}}"  # jsonargparse also takes a config as a string
    assert resolve_config_args(["--config", inline]) == ["--config", inline]


def test_an_unknown_recipe_is_one_line_naming_the_closest(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = parse_error(capsys, "fit", "--config", "kprune/mrcp", "--trainer.max_steps", "1")
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("lit-prune: --config kprune/mrcp: no such file, and no packaged recipe of that name")
    assert "closest recipes: kprune/mrpc" in err[0]
    status, err = parse_error(capsys, "fit", "--config=kprune")  # a method's folder: its recipes
    assert status == 2 and "kprune/cola, kprune/conll2003, kprune/embedding, kprune/mrpc" in err[0] and len(err) == 1


def test_the_recipes_command_lists_and_prints_them(capsys):
    assert main(["recipes"]) is None
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("kprune/mrpc "))
    assert "Prune the MRPC teacher with KPrune" in line
    assert all(name in out for name in recipe_names())
    assert main(["recipes", "kprune/mrpc"]) is None
    assert capsys.readouterr().out == (PACKAGED / "kprune" / "mrpc.yaml").read_text()
    status, err = parse_error(capsys, "recipes", "kprune/mrcp")
    assert status == 2 and err == [err[0]] and "kprune/mrpc" in err[0]


def test_a_packaged_recipe_parses_from_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "kprune/mrpc", "--print_config"])
    assert exit_info.value.code in (None, 0)
    assert "class_path: lit_prune.methods.KPruneCallback" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, expected", [
    (["--data.init_args.batchsize", "8"],
     "lit-prune: unknown option --data.init_args.batchsize; did you mean --data.init_args.batch_size?"),
    (["--data.batchsize=8"], "lit-prune: unknown option --data.batchsize; did you mean --data.batch_size?"),
    (["--trainer.max_stepz", "3"], "lit-prune: unknown option --trainer.max_stepz; did you mean --trainer.max_steps?"),
    (["--trainer.callbacks.init_args.flops_kep", "0.3"],
     ("lit-prune: unknown option --trainer.callbacks.init_args.flops_kep; did you mean "
      "--trainer.callbacks.init_args.flops_kept?")),
    (["--trainer.logger.init_args.save_dirr", "x"],
     ("lit-prune: unknown option --trainer.logger.init_args.save_dirr; did you mean "
      "--trainer.logger.init_args.save_dir?")),
], ids=["init_args", "shorthand", "trainer", "callback", "logger"])
def test_an_unknown_option_is_one_line_with_the_closest_name(args, expected, capsys):
    status, err = parse_error(capsys, "fit", "--config", "kprune/mrpc", *args)
    assert status == 2
    assert err == [expected]


def test_an_unknown_option_without_a_close_name_gets_a_hint(capsys):
    status, err = parse_error(capsys, "fit", "--config", "kprune/mrpc", "--bogus", "1")
    assert status == 2
    assert err == ["lit-prune: unknown option --bogus", "lit-prune: hint: `lit-prune fit --help` lists the options"]


def test_an_unknown_key_in_a_config_file_is_named_as_written(tmp_path, capsys):
    recipe = (PACKAGED / "kprune" / "mrpc.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.replace("    batch_size:", "    batchsize:"))
    status, err = parse_error(capsys, "fit", "--config", str(bad))
    assert status == 2
    assert err == [("lit-prune: unknown option data.init_args.batchsize (in a config file); did you mean "
                    "data.init_args.batch_size?")]
    bad.write_text(recipe.replace("max_epochs:", "max_epochz:"))
    status, err = parse_error(capsys, "fit", "--config", str(bad))
    assert err == ["lit-prune: unknown option trainer.max_epochz (in a config file); did you mean trainer.max_epochs?"]


def test_other_errors_keep_their_message_in_one_line(capsys):
    status, err = parse_error(capsys, "fit", "--config", "kprune/mrpc", "--data.task", "sst5")
    assert status == 2 and len(err) == 2, err
    assert err[0].startswith("lit-prune: --data.task: Expected a typing.Literal['cola', 'sst2',")
    assert err[0].endswith("Got value: sst5; did you mean 'sst2'?")
    assert err[1] == "lit-prune: hint: JSONARGPARSE_DEBUG=true shows the parser's full message"
    status, err = parse_error(capsys, "fit", "--config", "kprune/mrpc", "--trainer.max_steps", "abc")
    assert status == 2 and err[0] == "lit-prune: --trainer.max_steps: Expected a <class 'int'>. Got value: abc"
    status, err = parse_error(capsys)
    assert status == 2 and err == [
        'lit-prune: expected "subcommand" to be one of {fit,validate,test,predict}, but it was not provided.',
        "lit-prune: hint: lit-prune fit --config <recipe>; `lit-prune recipes` lists the recipes"]


# --------------------------------------------------------------------------------------------------- installed


def console_script() -> Path:
    return Path(sys.executable).parent / "lit-prune"


def test_the_console_script_is_installed():
    """After ``pip install -e .``: the entry point, and the script itself run from a folder with no recipes."""
    scripts = {entry.name: entry.value for entry in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("lit-prune") == "lit_prune.cli:main"


def test_the_console_script_runs_a_packaged_recipe_from_an_empty_folder(tmp_path):
    if not console_script().is_file():
        pytest.skip(f"{console_script()} is not installed (pip install -e .)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's lit_prune, whatever the install points to
    listed = subprocess.run([str(console_script()), "recipes"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr  # main's None return value, through sys.exit: status 0
    assert "kprune/mrpc" in listed.stdout
    printed = subprocess.run([str(console_script()), "fit", "--config", "kprune/mrpc", "--print_config"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "lit_prune.methods.KPruneCallback" in printed.stdout


@pytest.mark.slow
def test_the_wheel_holds_the_recipes_and_the_modelling_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, timeout=600)
    (wheel,) = tmp_path.glob("lit_prune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lit_prune/recipes/{name}.yaml" for name in recipe_names()} <= names
    assert "lit_prune/core/hf_modeling/modeling_lit_pruned.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert "lit-prune = lit_prune.cli:main" in entry_points.decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
