"""The command line: ``python train.py {fit,validate,test,predict} --config <recipe.yaml>``.

A LightningCLI over lit_prune's task modules and data modules, chosen by ``class_path`` in the YAML. Two
settings are linked so that a recipe states them once:

- ``model.name_or_path`` → ``data.tokenizer``: the data is tokenised with the model's own tokenizer;
- ``data.task`` → ``model.task``: ``--data.task rte`` switches the metrics and the head with the data.
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_prune.data.base import TaskDataModule
from lit_prune.tasks.base import TaskModule


class LitPruneCLI(LightningCLI):
    """LightningCLI with lit_prune's links and defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.name_or_path", "data.init_args.tokenizer", apply_on="parse")
        parser.link_arguments("data.init_args.task", "model.init_args.task", apply_on="parse")


def main(args: list[str] | None = None, run: bool = True) -> LitPruneCLI:
    """Entry point of ``train.py``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LitPruneCLI(
        model_class=TaskModule,
        datamodule_class=TaskDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
