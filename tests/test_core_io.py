"""Pruned folders: save, load inside lit_prune, load WITHOUT lit_prune (fresh isolated subprocess), clear errors."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import MODEL_TYPES, tiny_inputs, tiny_model
from core_cases import make_masks
from lit_prune.core.compact import compact
from lit_prune.core.hf_modeling import modeling_lit_pruned as hf
from lit_prune.core.io import NotAPrunedModelError, is_pruned_folder, load_pruned, read_pruned_config, save_pruned

AUTO = {"base": "AutoModel", "sequence_classification": "AutoModelForSequenceClassification",
        "question_answering": "AutoModelForQuestionAnswering",
        "token_classification": "AutoModelForTokenClassification",
        "label_words": "AutoModelForSequenceClassification"}  # a masked-LM classifier (SMP) loads as a classifier
#: every (model type, kind) with a pruned class (ELECTRA discriminators have no masked-LM head: no label words)
CASES = [(model_type, kind) for model_type in MODEL_TYPES for kind in AUTO if (model_type, kind) in hf.PRUNED_CLASSES]

# Runs in `python -I` (no PYTHONPATH, no current folder on sys.path) with an import blocker on top, so the
# folders must load from their own modelling file alone.
LOADER = textwrap.dedent('''
    import importlib.abc, json, sys

    class BlockLitPrune(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "lit_prune":
                raise ImportError("lit_prune is not importable in this process")

    sys.meta_path.insert(0, BlockLitPrune())
    import torch, transformers
    from safetensors.torch import load_file, save_file

    jobs = json.load(open(sys.argv[1]))
    results = {}
    for name, job in jobs.items():
        cls = getattr(transformers, job["auto_class"])
        model = cls.from_pretrained(job["folder"], trust_remote_code=True).eval()
        assert type(model).__name__.startswith("LitPruned"), type(model)
        with torch.no_grad():
            out = model(**load_file(job["inputs"]))
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                results[f"{name}/{key}"] = value.contiguous()
    assert not [m for m in sys.modules if m.split(".")[0] == "lit_prune"]
    save_file(results, sys.argv[2])
''')


def outputs(model, inputs):
    with torch.no_grad():
        return {k: v for k, v in model(**inputs).items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, request):
    """Compacted tiny models of every type and kind (plus the real MiniLM when present), saved as folders."""
    root = tmp_path_factory.mktemp("pruned")
    inputs = tiny_inputs(seed=2)
    save_file(inputs, root / "inputs.safetensors")
    cases = {}
    for model_type, kind in CASES:
        model = tiny_model(model_type, kind)
        model = compact(model, make_masks("intra_head", seed=list(AUTO).index(kind), model=model))
        folder = save_pruned(model, root / f"{model_type}-{kind}")
        cases[f"{model_type}-{kind}"] = (model, folder, kind, inputs, root / "inputs.safetensors")
    minilm = os.path.join(os.environ.get("LIT_PRUNE_ASSETS", ""), "models", "all-MiniLM-L6-v2")
    if os.path.isdir(minilm):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(minilm)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=3).eval()
        masks = make_masks("intra_head", num_layers=6, num_heads=12, head_dim=32, ffn_dim=1536, seed=11)
        masks.head[1] = 0
        model = compact(model, masks)
        real = dict(tokenizer(["a pruned model loads anywhere", "even without lit_prune installed, with padding"],
                              padding=True, return_tensors="pt"))
        save_file(real, root / "minilm-inputs.safetensors")
        folder = save_pruned(model, root / "minilm", tokenizer=tokenizer)
        cases["minilm"] = (model, folder, "sequence_classification", real, root / "minilm-inputs.safetensors")
    return root, cases


@pytest.fixture(scope="module")
def isolated_outputs(saved):
    root, cases = saved
    jobs = {name: {"folder": str(folder), "auto_class": AUTO[kind], "inputs": str(path)}
            for name, (_, folder, kind, _, path) in cases.items()}
    # The base model of a classifier's folder, as AutoModel loads it.
    jobs["bert-as-base"] = {**jobs["bert-sequence_classification"], "auto_class": "AutoModel"}
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "loader.py").write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(root / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run([sys.executable, "-I", str(root / "loader.py"), str(root / "jobs.json"),
                             str(root / "outputs.safetensors")], cwd=root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(root / "outputs.safetensors")


def test_folder_layout_and_config(saved):
    _, cases = saved
    model, folder, _, _, _ = cases["distilbert-question_answering"]
    assert {"config.json", "model.safetensors", "modeling_lit_pruned.py"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "distilbert" and config["architectures"] == ["DistilBertForQuestionAnswering"]
    assert config["auto_map"] == {
        "AutoModel": "modeling_lit_pruned.LitPrunedDistilBertModel",
        "AutoModelForSequenceClassification": "modeling_lit_pruned.LitPrunedDistilBertForSequenceClassification",
        "AutoModelForQuestionAnswering": "modeling_lit_pruned.LitPrunedDistilBertForQuestionAnswering",
        "AutoModelForTokenClassification": "modeling_lit_pruned.LitPrunedDistilBertForTokenClassification"}
    assert config["lit_prune_structure"] == model.config.lit_prune_structure
    tree = ast.parse((folder / "modeling_lit_pruned.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"torch", "transformers"}  # and nothing of lit_prune
    assert is_pruned_folder(folder)


def test_a_label_word_classifier_is_saved_and_loaded_as_one(saved):
    """A masked-LM model classifying through label words (SMP's head) keeps its words, its mask token and its
    class; AutoModelForSequenceClassification and load_pruned(kind="sequence_classification") give it back; its
    logits are the MLM head's scores of the label words at the mask token, or at the first token without one."""
    from transformers import AutoModelForMaskedLM

    _, cases = saved
    model, folder, _, _, _ = cases["roberta-label_words"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["RobertaForLabelWordClassification"]
    assert config["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_lit_pruned.LitPrunedRobertaForLabelWordClassification")
    assert config["lit_prune_label_words"] == {"words": ["no", "yes"], "ids": [7, 9], "mask_token_id": 4}
    loaded = load_pruned(folder, kind="sequence_classification")
    assert type(loaded).__name__ == "LitPrunedRobertaForLabelWordClassification"
    for model_type in hf.LABEL_WORD_CLASSES:
        dense = tiny_model(model_type, "label_words")
        mlm = AutoModelForMaskedLM.from_config(dense.config).eval()
        mlm.load_state_dict(dense.state_dict())
        inputs = tiny_inputs(seed=3)
        inputs["input_ids"][1, 5] = 4  # a mask token in the second input
        with torch.no_grad():
            scores = mlm(**inputs).logits
            out = dense(**inputs, labels=torch.tensor([0, 1, 1]))
        expected = torch.stack([scores[0, 0, [7, 9]], scores[1, 5, [7, 9]], scores[2, 0, [7, 9]]])
        torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(expected, torch.tensor([0, 1, 1])))


@pytest.mark.parametrize(("model_type", "kind"), CASES)
def test_load_pruned_in_process_and_save_again(saved, model_type, kind, tmp_path):
    _, cases = saved
    model, folder, _, inputs, _ = cases[f"{model_type}-{kind}"]
    loaded = load_pruned(folder)
    assert isinstance(loaded, type(model)) and not loaded.training
    reference = outputs(model, inputs)
    for key, value in outputs(loaded, inputs).items():
        torch.testing.assert_close(value, reference[key], atol=1e-5, rtol=1e-5)
    again = load_pruned(save_pruned(loaded, tmp_path / "again"))
    assert type(again) is type(loaded)
    assert again.config.lit_prune_structure == model.config.lit_prune_structure
    for key, value in outputs(again, inputs).items():
        torch.testing.assert_close(value, reference[key], atol=1e-5, rtol=1e-5)


def test_fresh_process_without_lit_prune_gives_the_same_outputs(saved, isolated_outputs):
    _, cases = saved
    for name, (model, _, _, inputs, _) in cases.items():
        for key, value in outputs(model, inputs).items():
            torch.testing.assert_close(isolated_outputs[f"{name}/{key}"], value, atol=1e-5, rtol=1e-5,
                                       msg=f"{name}/{key}")
    model, _, _, inputs, _ = cases["bert-sequence_classification"]
    torch.testing.assert_close(isolated_outputs["bert-as-base/last_hidden_state"],
                               outputs(model.base_model, inputs)["last_hidden_state"], atol=1e-5, rtol=1e-5)


@pytest.mark.assets
def test_real_minilm_folder_keeps_its_tokenizer(minilm_l6, saved, isolated_outputs):
    _, cases = saved
    assert "minilm" in cases  # the fixture saved it, as the real model is present
    from transformers import AutoTokenizer

    _, folder, _, inputs, _ = cases["minilm"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("even without lit_prune installed, with padding")["input_ids"] == inputs["input_ids"][1].tolist()
    assert isolated_outputs["minilm/logits"].shape == (2, 3)


def test_saving_replaces_an_existing_folder_atomically(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    save_pruned(compact(tiny_model("bert"), make_masks("heads_ffn")), folder)
    assert not (folder / "stale.txt").exists() and is_pruned_folder(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_refuses_a_dense_model(tmp_path):
    with pytest.raises(ValueError, match=r"not compacted; call lit_prune.core.compact.compact\(model, masks\)"):
        save_pruned(tiny_model("bert"), tmp_path / "dense")
    assert not (tmp_path / "dense").exists()


def _copy_folder(source, destination):
    destination.mkdir()
    for path in source.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def test_not_a_pruned_folder_errors(saved, tmp_path):
    _, cases = saved
    good = cases["bert-sequence_classification"][1]
    with pytest.raises(NotAPrunedModelError, match="is not a folder"):
        load_pruned(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAPrunedModelError, match="it has no config.json"):
        load_pruned(tmp_path / "empty")

    dense = tmp_path / "dense"
    tiny_model("bert").save_pretrained(dense)
    with pytest.raises(NotAPrunedModelError, match="its config.json has no lit_prune_structure.*lacks "
                                                   "modeling_lit_pruned.py"):
        load_pruned(dense)

    future = _copy_folder(good, tmp_path / "future")
    config = json.loads((future / "config.json").read_text())
    config["lit_prune_structure"]["format_version"] = 99
    (future / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotAPrunedModelError, match=r"format_version=99 is not a format this code reads"):
        read_pruned_config(future)

    inconsistent = _copy_folder(good, tmp_path / "inconsistent")
    config = json.loads((inconsistent / "config.json").read_text())
    config["lit_prune_structure"]["layers"][0]["heads"][0][0] -= 1
    config["lit_prune_structure"]["layers"][1]["ffn"] += 1
    (inconsistent / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotAPrunedModelError, match=r"encoder.layer.0.attention.self.query.weight has shape \(\d+, 32\),"
                                                   r" the structure implies .*encoder.layer.1.output.dense.weight"):
        load_pruned(inconsistent)

    broken = _copy_folder(good, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    config = json.loads((broken / "config.json").read_text())
    config["lit_prune_structure"]["layers"][0]["ffn"] = 10_000
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotAPrunedModelError, match=r"missing model.safetensors; .*layers\[0\]\.ffn=10000: expected an "
                                                   r"integer in \[0, 48\]"):
        load_pruned(broken)
    for folder in (tmp_path / "empty", dense, future, inconsistent, broken):
        assert not is_pruned_folder(folder)
    with pytest.raises(ValueError, match=r"kind='masked_lm' is not one of"):
        load_pruned(good, kind="masked_lm")


def test_leftovers_of_a_killed_writer_are_cleaned_or_restored(tmp_path):
    from lit_prune.core.atomic import atomic_directory, atomic_write_text

    destination = tmp_path / "pruned_model"
    (tmp_path / ".pruned_model.tmp.abc").mkdir()  # killed while writing: a partial new folder
    (tmp_path / ".pruned_model.old.def").mkdir()  # killed between the two renames: the previous folder, aside
    (tmp_path / ".pruned_model.old.def" / "config.json").write_text("{}")
    with atomic_directory(destination) as tmp:
        assert (destination / "config.json").is_file()  # the previous folder is back in place while writing
        (tmp / "config.json").write_text('{"new": true}')
    assert (destination / "config.json").read_text() == '{"new": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned_model"]
    (tmp_path / ".report.json.xyz").write_text("half")
    atomic_write_text(tmp_path / "report.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned_model", "report.json"]
