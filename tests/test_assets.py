"""Name resolution: explicit path → LIT_PRUNE_ASSETS → hub, with errors that list what was tried."""

from __future__ import annotations

import pytest

from lit_prune.assets import AssetNotFoundError, resolve_data_dir, resolve_model


def _model_folder(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_explicit_path_wins(tmp_path, monkeypatch):
    folder = _model_folder(tmp_path / "mine")
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    resolved = resolve_model(str(folder))
    assert resolved.source == "path" and resolved.location == str(folder.resolve())


def test_assets_name(tmp_path, monkeypatch):
    folder = _model_folder(tmp_path / "models" / "tiny-bert")
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    assert resolve_model("tiny-bert").location == str(folder)
    # an org/name hub id finds a local copy stored under its last part
    assert resolve_model("someorg/tiny-bert").location == str(folder)


def test_hub_fallback_when_online(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    resolved = resolve_model("bert-base-uncased")
    assert (resolved.source, resolved.location) == ("hub", "bert-base-uncased")


def test_nothing_resolves_offline_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError, match=r"name_or_path='bert-base-uncased'.*Tried: path .*assets .*models"):
        resolve_model("bert-base-uncased")


def test_missing_explicit_path(tmp_path):
    with pytest.raises(AssetNotFoundError, match=r"model.name_or_path='\./nowhere': no such folder"):
        resolve_model("./nowhere", setting="model.name_or_path")


def test_a_relative_path_deeper_than_a_hub_id_is_a_missing_folder(monkeypatch):
    """``owner/name`` may be a hub id; ``runs/finetune/mrpc/final_model`` can only be a folder, even online."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(AssetNotFoundError, match=r"teacher='runs/nowhere/final_model': no such folder"):
        resolve_model("runs/nowhere/final_model", setting="teacher")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetNotFoundError, match="holds no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_bad_assets_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path / "absent"))
    with pytest.raises(AssetNotFoundError, match="LIT_PRUNE_ASSETS=.*is not a folder"):
        resolve_model("anything")


def test_data_dir_requires_files(tmp_path, monkeypatch):
    (tmp_path / "data" / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "data" / "glue" / "RTE" / "train.tsv").write_text("x")
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    assert resolve_data_dir("glue", "QNLI") is None
    with pytest.raises(AssetNotFoundError, match="lacks dev.tsv"):
        resolve_data_dir("glue", "RTE", required_files=("train.tsv", "dev.tsv"))
