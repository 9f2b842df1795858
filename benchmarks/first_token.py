"""How much of the input reaches the first token, layer by layer, on a GLUE dev set.

    LIT_PRUNE_ASSETS=../shared/assets python -m benchmarks.first_token --task stsb --samples 300 \\
        --models all-MiniLM-L6-v2 runs/teachers/stsb/*/final_model runs/bench/smp/stsb/0.2/seed0/pruned_model

A classifier that AutoModelForSequenceClassification builds reads the first token ([CLS]; through BERT's pooler).
For each model this measures, after each layer (0: the embeddings), how much the first token's hidden state varies
from one input to another: the standard deviation across the examples of each hidden unit, averaged over the units;
the same for the mean over the tokens, for contrast; and, for a classifier, the spread of its outputs across the
examples (a model that answers the same for every input has none). Writes ``benchmarks/results/first_token.json``
and ``first_token.md`` (``--out`` changes the folder, ``--name`` the file names).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.outputs import reproduce_command, write_outputs
from lit_prune.assets import resolve_model
from lit_prune.data.glue import GLUE_TASKS, GlueDataModule
from lit_prune.core.hardware import hardware_summary

REPO = Path(__file__).resolve().parents[1]


def _is_classifier(location: str) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, trust_remote_code=True)
    return any(name.endswith(("ForSequenceClassification", "LabelWordClassification"))
               for name in getattr(config, "architectures", None) or [])


def dev_batch(task: str, tokenizer: str, samples: int, data_dir: str | None = None) -> dict[str, torch.Tensor]:
    """The first ``samples`` examples of the task's dev split, tokenized as the recipes do (no labels)."""
    data = GlueDataModule(task=task, data_dir=data_dir, tokenizer=tokenizer, max_seq_length=128,
                          eval_batch_size=samples)
    data.setup("validate")
    loaders = data.val_dataloader()
    batch = next(iter(loaders[0] if isinstance(loaders, (list, tuple)) else loaders))
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if inputs["input_ids"].shape[0] < samples:
        raise ValueError(f"--samples {samples}: the {task} dev split gives only {inputs['input_ids'].shape[0]}")
    return inputs


def spread(model_name: str, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per layer, the mean over hidden units of the standard deviation across examples of the first token's state
    and of the token mean; for a classifier, the standard deviation of each output across examples."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    location = resolve_model(model_name, setting="--models").location
    classifier = _is_classifier(location)
    auto = AutoModelForSequenceClassification if classifier else AutoModel
    model = auto.from_pretrained(location, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    weights = inputs["attention_mask"].unsqueeze(-1).to(out.hidden_states[0].dtype)
    first = [float(h[:, 0].std(0).mean()) for h in out.hidden_states]
    mean = [float(((h * weights).sum(1) / weights.sum(1)).std(0).mean()) for h in out.hidden_states]
    result: dict[str, Any] = {"model": model_name, "first_token": first, "token_mean": mean}
    if classifier:
        result["output_std"] = [float(v) for v in out.logits.std(0)]
    return result


def markdown(results: dict[str, Any]) -> str:
    layers = max(len(r["first_token"]) for r in results["models"])
    header = " | ".join(["model", "state"] + [f"layer {i}" if i else "embeddings" for i in range(layers)]
                        + ["output std"])
    lines = [f"# How much of the input reaches the first token ({results['task']} dev, "
             f"{results['samples']} examples)", "",
             "Standard deviation across the examples of each hidden unit, averaged over the units, after each layer; "
             "the first token (what the classifier reads) against the mean over the tokens. Output std: the spread "
             "of the classifier's outputs across the examples.", "",
             f"Reproduce: `{results['command']}`", "",
             f"| {header} |", "|" + "---|" * 2 + "---:|" * (layers + 1)]
    for r in results["models"]:
        outputs = ", ".join(f"{v:.3f}" for v in r.get("output_std", [])) or "–"
        for key, label in (("first_token", "first token"), ("token_mean", "token mean")):
            cells = [f"{v:.3f}" for v in r[key]] + [""] * (layers - len(r[key]))
            lines.append("| " + " | ".join([f"`{r['model']}`" if key == "first_token" else "", label, *cells,
                                             outputs if key == "first_token" else ""]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders, assets names or hub ids")
    parser.add_argument("--task", default="stsb", choices=sorted(GLUE_TASKS))
    parser.add_argument("--samples", type=int, default=300, help="dev examples (default 300)")
    parser.add_argument("--tokenizer", default=None, help="the tokenizer (default: the first model's)")
    parser.add_argument("--data-dir", default=None, help="the task's GLUE folder (default: the assets' or the hub's)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where the JSON and table go")
    parser.add_argument("--name", default="first_token", help="their file name, without .json / .md "
                                                              "(default first_token)")
    args = parser.parse_args(argv)
    if not args.name or Path(args.name).name != args.name:
        parser.error(f"--name {args.name!r}: a file name without folders, e.g. first_token_mrpc")
    if args.samples < 2:
        parser.error(f"--samples {args.samples}: at least 2 examples are needed for a spread")
    started = time.perf_counter()
    tokenizer = args.tokenizer or resolve_model(args.models[0], setting="--models").location
    inputs = dev_batch(args.task, tokenizer, args.samples, args.data_dir)
    results = {"task": args.task, "samples": args.samples, "command": reproduce_command("benchmarks.first_token", argv),
               "hardware": hardware_summary(torch.device("cpu")),
               "models": [spread(name, inputs) for name in args.models]}
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(args.out, args.name, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
