"""The README's and the docs' code examples run as written, and the docs hold together: every link resolves, every
test the bad-input table names exists, and the README stays a first screen."""

from __future__ import annotations

import re
import unicodedata

import torch
from transformers import AutoTokenizer

from conftest import REPO, tiny_model

DOCS = sorted((REPO / "docs").glob("*.md"))

# Results a page links to before the script that writes them has been run (page -> link targets). Remove an entry
# once its file is committed.


def python_blocks(name: str, section: str) -> list[str]:
    """The python code blocks of ``section`` (a heading) of the markdown file ``name``, up to the next heading."""
    text = (REPO / name).read_text()
    start = text.index(section)
    end = text.find("\n##", start + 1)  # the next ## or ### heading (a line "# ..." may be a code comment)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown text (lower case, punctuation dropped, spaces to hyphens,
    a repeated heading numbered -1, -2, ...); code blocks are not headings."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = "".join(c for c in heading.strip().lower()
                       if c in "-_ " or unicodedata.category(c)[0] in "LM" or unicodedata.category(c) == "Nd")
        slug = slug.replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def test_core_example_runs(tmp_path, monkeypatch, minilm_l3):
    monkeypatch.chdir(tmp_path)
    model = tiny_model("bert", intermediate_size=600, num_hidden_layers=3)
    batch = {"input_ids": torch.randint(5, 100, (2, 9))}
    namespace = {"model": model, "batch": batch, "tokenizer": AutoTokenizer.from_pretrained(minilm_l3)}
    example = python_blocks("docs/core.md", "## Masks, FLOPs, compaction and saving in one example")[0]
    exec(compile(example, "docs/core.md", "exec"), namespace)
    small = namespace["small"]
    torch.testing.assert_close(small(**batch).logits, namespace["masked_logits"], atol=1e-5, rtol=1e-5)
    assert (tmp_path / "pruned_model" / "modeling_lit_pruned.py").is_file()


def test_own_project_example_runs(tmp_path, monkeypatch, minilm_l3):
    """The README's "In your own Lightning project" example, with the real paraphrase-MiniLM-L3-v2."""
    monkeypatch.chdir(tmp_path)
    namespace = {"name_or_path": str(minilm_l3)}
    example = python_blocks("README.md", "## In your own Lightning project")[0]
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
    """Every image and relative link of README.md, BENCHMARKS.md and docs/*.md points at a file that exists, and
    every #anchor (in the same page or another markdown page) at one of that page's headings."""
    pages = [REPO / "README.md", REPO / "BENCHMARKS.md", *DOCS]
    assert len(DOCS) >= 14, f"docs/ lost pages: {[p.name for p in DOCS]}"
    for path in pages:
        text = path.read_text()
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        targets = re.findall(r"\]\(([^)\s]+)\)", prose)
        local = [t for t in targets if not re.match(r"[a-z]+:", t)]
        missing, bad_anchors = [], []
        for target in local:
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                missing.append(target)
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                bad_anchors.append(target)
        assert not missing, f"{path.name} links to missing files: {missing}"
        assert not bad_anchors, f"{path.name} links to headings that do not exist: {bad_anchors}"


def test_the_readme_is_a_first_screen_that_links_every_docs_page():
    text = (REPO / "README.md").read_text()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= 250, f"README.md has {lines} lines: move detail into docs/ (at most 250)"
    documentation = text[text.index("## Documentation"):]
    documentation = documentation[:documentation.find("\n## ", 1) if "\n## " in documentation[1:] else None]
    unlisted = [p.name for p in DOCS if f"](docs/{p.name})" not in documentation]
    assert not unlisted, f"README's Documentation section does not list: {unlisted}"


def test_every_test_named_in_the_bad_input_table_exists():
    text = (REPO / "docs" / "errors.md").read_text()
    table = text[text.index("| bad input | what happens | test |"):]
    table = table[:table.find("\n\n") if "\n\n" in table else None]
    named = re.findall(r"`(tests/test_\w+\.py)::(\w+)`", table)
    assert len(named) >= 20
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (REPO / path).read_text(), re.MULTILINE)]
    assert not missing, f"docs/errors.md's bad-input table names tests that do not exist: {missing}"
