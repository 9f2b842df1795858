"""The README's code examples run as written."""

from __future__ import annotations

import re

import torch
from transformers import AutoTokenizer

from conftest import REPO, tiny_model


def python_blocks(section: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(section)
    end = text.find("\n##", start + 1)  # the next heading (## or ###)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_core_example_runs(tmp_path, monkeypatch, minilm_l3):
    monkeypatch.chdir(tmp_path)
    model = tiny_model("bert", intermediate_size=600, num_hidden_layers=3)
    batch = {"input_ids": torch.randint(5, 100, (2, 9))}
    namespace = {"model": model, "batch": batch, "tokenizer": AutoTokenizer.from_pretrained(minilm_l3)}
    example = python_blocks("## The pruning core")[0]
    exec(compile(example, "README.md", "exec"), namespace)
    small = namespace["small"]
    torch.testing.assert_close(small(**batch).logits, namespace["masked_logits"], atol=1e-5, rtol=1e-5)
    assert (tmp_path / "pruned_model" / "modeling_lit_pruned.py").is_file()


def test_own_project_example_runs(tmp_path, monkeypatch, minilm_l3):
    """The README's "In your own Lightning project" example, with the real paraphrase-MiniLM-L3-v2."""
    monkeypatch.chdir(tmp_path)
    namespace = {"name_or_path": str(minilm_l3)}
    example = python_blocks("### In your own Lightning project")[0]
    exec(compile(example, "README.md", "exec"), namespace)
    report = namespace["pruning"].report
    assert report["flops"]["kept"] <= 0.5 and report["latency"]["speedup"] > 1
    assert namespace["trainer"].global_step == 8  # it trained (2 epochs x 4 batches), then pruned
    assert namespace["model"].encoder.config.lit_prune_structure is not None
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned_run" / "pruned_model",
                                                                   trust_remote_code=True)
    assert sum(p.numel() for p in reloaded.parameters()) == report["params"]["pruned"]["total"]


def test_every_image_and_local_link_in_the_docs_exists():
    for name in ("README.md", "BENCHMARKS.md"):
        path = REPO / name
        if not path.is_file():
            continue
        text = path.read_text()
        targets = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text) + re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s:#]+)\)", text)
        missing = [t for t in targets if not (path.parent / t).exists()]
        assert not missing, f"{name} links to missing files: {missing}"


def test_every_test_named_in_the_bad_input_table_exists():
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Bad input and what it gets"):]
    table = table[:table.index("\n## ")]
    named = re.findall(r"`(tests/test_\w+\.py)::(\w+)`", table)
    assert len(named) >= 20
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (REPO / path).read_text(), re.MULTILINE)]
    assert not missing, f"README's bad-input table names tests that do not exist: {missing}"
