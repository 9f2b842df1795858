"""The README's code examples run as written."""

from __future__ import annotations

import re

import torch
from transformers import AutoTokenizer

from conftest import REPO, tiny_model


def python_blocks(section: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(section)
    end = text.find("\n## ", start + 1)
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
