"""Name resolution: explicit path → LIT_PRUNE_ASSETS → hub, with errors that list what was tried and say why the
hub could not help (switched off, unreachable, no such model), after one request to it, never a retry."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from lit_prune import assets
from lit_prune.assets import AssetNotFoundError, resolve_data_dir, resolve_model

HUB_OFF = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(autouse=True)
def _fresh_hub_answers_and_cache(tmp_path_factory, monkeypatch):
    """No hub answer remembered from another test, and an empty Hugging Face cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(assets, "_HUB_ANSWERS", {})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))


@pytest.fixture
def hub(monkeypatch):
    """The hub goes online (no offline variable) behind a fake transport: ``hub.answer`` is a status code, or an
    exception to raise as the network would; ``hub.requests`` counts what was asked."""
    from huggingface_hub import utils

    class Hub:
        answer: int | Exception = 200
        requests: list[str] = []

    def handle(request):
        Hub.requests.append(f"{request.method} {request.url}")
        if isinstance(Hub.answer, Exception):
            raise Hub.answer
        headers = {"X-Error-Code": "RepoNotFound"} if Hub.answer in (401, 404) else {}
        return httpx2.Response(Hub.answer, headers=headers, request=request)

    Hub.requests = []
    client = httpx2.Client(transport=httpx2.MockTransport(handle))
    monkeypatch.setattr(utils, "get_session", lambda: client)
    for name in HUB_OFF:
        monkeypatch.delenv(name, raising=False)
    return Hub


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


def test_hub_fallback_when_online(tmp_path, monkeypatch, hub):
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    resolved = resolve_model("bert-base-uncased")
    assert (resolved.source, resolved.location) == ("hub", "bert-base-uncased")
    assert hub.requests == ["HEAD https://huggingface.co/bert-base-uncased/resolve/main/config.json"]


def test_nothing_resolves_offline_lists_what_was_tried(tmp_path, monkeypatch):
    _model_folder(tmp_path / "models" / "bert-base-cased")
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError) as error:
        resolve_model("bert-base-uncased")
    assert str(error.value) == (
        f"name_or_path='bert-base-uncased' resolves to nothing. Tried: path bert-base-uncased (no such folder); "
        f"assets LIT_PRUNE_ASSETS={tmp_path}: no models/bert-base-uncased (it holds bert-base-cased; did you mean "
        f"'bert-base-cased'?); the Hugging Face cache (no bert-base-uncased); the hub: switched off "
        f"(HF_HUB_OFFLINE=1).")


def test_an_unset_assets_variable_is_named(monkeypatch):
    monkeypatch.delenv("LIT_PRUNE_ASSETS", raising=False)
    for name in HUB_OFF:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError, match=r"Tried: path .*; assets: LIT_PRUNE_ASSETS is unset \(a local "
                                                 r"folder laid out as models/<name>/.*the hub: switched off "
                                                 r"\(TRANSFORMERS_OFFLINE=1\)"):
        resolve_model("paraphrase-MiniLM-L3")


def test_an_unreachable_hub_is_asked_once_and_named(tmp_path, monkeypatch, hub):
    """No network: one request (no retries, remembered for the process), and an error that says the hub is
    unreachable instead of transformers' five retries (about 30 s) and its connection error."""
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    hub.answer = httpx2.ConnectError("[Errno -2] Name or service not known")
    for _ in range(2):
        with pytest.raises(AssetNotFoundError) as error:
            resolve_model("paraphrase-MiniLM-L3", setting="model.name_or_path")
        assert str(error.value).startswith("model.name_or_path='paraphrase-MiniLM-L3' resolves to nothing. Tried: ")
        assert f"assets LIT_PRUNE_ASSETS={tmp_path}: no models/paraphrase-MiniLM-L3" in str(error.value)
        assert str(error.value).endswith("the hub: unreachable at https://huggingface.co (ConnectError: [Errno -2] "
                                         "Name or service not known).")
    assert len(hub.requests) == 1


def test_a_timeout_is_unreachable_too(monkeypatch, hub):
    monkeypatch.delenv("LIT_PRUNE_ASSETS", raising=False)
    hub.answer = httpx2.ConnectTimeout("timed out")
    with pytest.raises(AssetNotFoundError, match=r"the hub: unreachable at https://huggingface.co \(ConnectTimeout: "
                                                 r"timed out\)"):
        resolve_model("bert-base-uncased")


@pytest.mark.parametrize("status", [401, 404])
def test_a_name_the_hub_does_not_have_is_said(tmp_path, monkeypatch, hub, status):
    """A mistyped name with the hub online: the hub's answer (401 for anonymous requests, 404 with a token) ends the
    search, before transformers' OSError."""
    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    hub.answer = status
    with pytest.raises(AssetNotFoundError, match=r"the hub: reachable at https://huggingface.co but has no model "
                                                 r"'bert-base-uncasd' \(a private one needs `hf auth login`\)\.$"):
        resolve_model("bert-base-uncasd")


def test_other_hub_answers_are_left_to_transformers(monkeypatch, hub):
    hub.answer = 500
    assert resolve_model("bert-base-uncased").source == "hub"


def test_the_hugging_face_cache_serves_a_model_the_hub_cannot(monkeypatch, hub):
    from huggingface_hub import constants

    snapshot = _model_folder(Path(constants.HF_HUB_CACHE) / "models--bert-base-uncased" / "snapshots" / "abc123")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    hub.answer = httpx2.ConnectError("no route to host")
    resolved = resolve_model("bert-base-uncased")
    assert (resolved.source, resolved.location) == ("hub cache", str(snapshot))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("bert-base-uncased").location == str(snapshot)


def test_a_failing_download_no_longer_reaches_transformers(monkeypatch, hub):
    """The task module with a mistyped name and no network: the error comes from the resolution, and transformers'
    download is never attempted."""
    import transformers

    from lit_prune.tasks import SequenceClassificationModule

    def download(*args, **kwargs):
        raise AssertionError("transformers was asked to download")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", download)
    monkeypatch.delenv("LIT_PRUNE_ASSETS", raising=False)
    hub.answer = httpx2.ConnectError("[Errno -2] Name or service not known")
    with pytest.raises(AssetNotFoundError, match=r"model.name_or_path='paraphrase-MiniLM-L3' resolves to nothing.*"
                                                 r"LIT_PRUNE_ASSETS is unset.*the hub: unreachable"):
        SequenceClassificationModule("paraphrase-MiniLM-L3", task="sst2")
    assert len(hub.requests) == 1


def test_glue_without_a_local_copy_names_the_unreachable_hub(tmp_path, monkeypatch, hub):
    from lit_prune.data import GlueDataModule

    monkeypatch.setenv("LIT_PRUNE_ASSETS", str(tmp_path))
    hub.answer = httpx2.ConnectError("[Errno -2] Name or service not known")
    with pytest.raises(AssetNotFoundError, match=r"GLUE qnli: no local copy at .*glue/QNLI \(LIT_PRUNE_ASSETS="
                                                 r".*\) and the hub \(nyu-mll/glue\) is unreachable at "
                                                 r"https://huggingface.co \(ConnectError"):
        GlueDataModule(task="qnli")
    assert hub.requests == ["HEAD https://huggingface.co"]  # is the hub there at all (the dataset is known)


def test_the_command_line_gives_the_error_in_one_line(monkeypatch, capsys):
    from conftest import REPO
    from lit_prune.cli import main

    monkeypatch.delenv("LIT_PRUNE_ASSETS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--model.name_or_path", "paraphrase-MiniLM-L3"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lit-prune: model.name_or_path='paraphrase-MiniLM-L3' resolves to nothing. Tried: path "
                   "paraphrase-MiniLM-L3 (no such folder); assets: LIT_PRUNE_ASSETS is unset (a local folder laid out "
                   "as models/<name>/, data/glue/<TASK>/, data/squad/<version>/); the Hugging Face cache (no "
                   "paraphrase-MiniLM-L3); the hub: switched off (HF_HUB_OFFLINE=1)."]


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
