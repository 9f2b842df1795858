"""The command line: ``lit-prune {fit,validate,test,predict} --config <recipe>`` (``python train.py`` in a clone).

A LightningCLI over lit_prune's task modules and data modules, chosen by ``class_path`` in the YAML. Two
settings are linked so that a recipe states them once:

- ``model.name_or_path`` → ``data.tokenizer``: the data is tokenised with the model's own tokenizer;
- ``data.task`` → ``model.task``: ``--data.task rte`` switches the metrics and the head with the data.

Recipes ship inside the package (``lit_prune/recipes/<method>/<task>.yaml``; ``configs/`` in the repository is a
link to that folder). ``--config kprune/mrpc`` (or ``kprune/mrpc.yaml``, or ``configs/kprune/mrpc.yaml``) names
one when no such file exists relative to the working directory: an existing file always wins. ``lit-prune recipes``
lists them, ``lit-prune recipes <name>`` prints one (to copy and edit).

Parse errors come as one line (and at most a hint line) instead of jsonargparse's usage dump, with the closest
valid name for an unknown option: ``lit-prune: unknown option --data.init_args.batchsize; did you mean
--data.init_args.batch_size?``, exit status 2. ``JSONARGPARSE_DEBUG=true`` shows the parser's full message.

A run prints what it does and nothing else of other libraries' housekeeping: :func:`quiet_third_party` silences
one known deprecation warning (torch's, about a class Lightning still uses) and Lightning's advertising tips, each
matched by its text; the progress bar leaves out ``v_num`` (the logger's version: the run's folder names it). A
model or dataset that resolves nowhere is one line too: :class:`~lit_prune.assets.AssetNotFoundError`'s message (every
place tried), exit status 1.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_prune.assets import AssetNotFoundError
from lit_prune.data.base import TaskDataModule
from lit_prune.tasks.base import TaskModule

PROG = "lit-prune"
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
"""The packaged recipes. A plain path rather than an ``importlib.resources`` traversable: jsonargparse opens the
config by path, and lit_prune is never imported from a zip."""

DESCRIPTION = (f"Prune encoder language models with PyTorch Lightning. Run a recipe: {PROG} fit --config kprune/mrpc "
               f"(a packaged recipe's name or a YAML file); list the recipes: {PROG} recipes.")


# --------------------------------------------------------------------------------------------------- recipes


class RecipeNotFoundError(ValueError):
    """``--config`` named neither an existing file nor a packaged recipe."""


def recipe_names() -> list[str]:
    """The packaged recipes' names, e.g. ``kprune/mrpc`` and ``quickstart``, sorted."""
    return sorted(path.relative_to(RECIPES_DIR).with_suffix("").as_posix() for path in RECIPES_DIR.rglob("*.yaml"))


def _recipe_key(name: str) -> str:
    """``name`` as a recipe name: forward slashes, no ``.yaml``, no leading ``./``, ``configs/`` or ``recipes/``
    (so the clone's ``configs/kprune/mrpc.yaml``, as the README and the recipe headers write it, works anywhere)."""
    key = name.replace("\\", "/").removeprefix("./")
    for prefix in ("configs/", "lit_prune/recipes/", "recipes/"):
        key = key.removeprefix(prefix)
    return key.removesuffix(".yaml").removesuffix(".yml")


def find_recipe(name: str) -> Path | None:
    """The packaged recipe called ``name`` (``kprune/mrpc``, ``kprune/mrpc.yaml``, ...), or ``None``."""
    key = _recipe_key(name)
    return RECIPES_DIR / f"{key}.yaml" if key in recipe_names() else None


def close_recipes(name: str, n: int = 4) -> list[str]:
    """Recipe names near ``name``: those under it when it names a method's folder, else the closest spellings."""
    key, names = _recipe_key(name).rstrip("/"), recipe_names()
    under = [candidate for candidate in names if candidate.startswith(key + "/")]
    return under or difflib.get_close_matches(key, names, n=n, cutoff=0.5)


def resolve_config(value: str) -> str:
    """The ``--config`` value LightningCLI gets: ``value`` itself when it is an existing file or not a name at all
    (jsonargparse also takes inline YAML), else the packaged recipe's path.

    Raises:
        RecipeNotFoundError: ``value`` looks like a file or recipe name but is neither; the message names the
            closest recipes.
    """
    if Path(value).is_file() or not re.fullmatch(r"[\w./\\-]+", value):
        return value
    recipe = find_recipe(value)
    if recipe is not None:
        return str(recipe)
    close = close_recipes(value)
    hint = f"closest recipes: {', '.join(close)}" if close else f"`{PROG} recipes` lists them"
    raise RecipeNotFoundError(f"--config {value}: no such file, and no packaged recipe of that name; {hint}")


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--config X`` / ``--config=X`` / ``-c X`` passed through :func:`resolve_config`.

    Raises:
        RecipeNotFoundError: from :func:`resolve_config`.
    """
    resolved: list[str] = []
    tokens = iter(args)
    for token in tokens:
        if token in ("-c", "--config"):
            value = next(tokens, None)
            resolved += [token] if value is None else [token, resolve_config(value)]
        elif token.startswith("--config="):
            resolved.append("--config=" + resolve_config(token.removeprefix("--config=")))
        else:
            resolved.append(token)
    return resolved


def recipe_summary(name: str) -> str:
    """The first comment line of a packaged recipe (what it does), without the ``#``."""
    for line in (RECIPES_DIR / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def format_recipes() -> str:
    """``lit-prune recipes``: each packaged recipe's name and first comment line, then how to run one."""
    names = recipe_names()
    width = max(map(len, names))
    lines = [f"{name:<{width}}  {recipe_summary(name)}" for name in names]
    lines += ["", f"Run one: {PROG} fit --config <name> [--option value ...]; print one to edit: {PROG} recipes <name>"]
    return "\n".join(lines)


def _print(text: str, end: str = "\n") -> None:
    """Print to stdout; a reader that stops early (``lit-prune recipes | head``) ends the output quietly."""
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit


def _recipes_command(args: Sequence[str]) -> int:
    """``lit-prune recipes [name]``: list the recipes, or print one. Returns the exit status."""
    if not args:
        _print(format_recipes())
        return 0
    recipe = find_recipe(args[0])
    if recipe is None or len(args) > 1:
        close = close_recipes(args[0]) if recipe is None else []
        problem = f"no recipe {args[0]!r}" if recipe is None else "recipes takes at most one name"
        print(f"{PROG}: {problem}" + (f"; closest: {', '.join(close)}" if close else ""), file=sys.stderr)
        return 2
    _print(recipe.read_text(), end="")
    return 0


# --------------------------------------------------------------------------------------------------- errors

_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*(?P<rest>.*)$')
_CLASS = re.compile(r"^- Problem with given class_path '(?P<class_path>[^']+)':$")
# jsonargparse's scaffolding around the real problem in a Union's (subclass's) error.
_SCAFFOLD = re.compile(r"^(Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value( type)?: "
                       r"|- Expected a <class 'NoneType'>)")
_UNKNOWN = re.compile(r"^(?:Option|Key) '(?P<option>[^']+)' is not (?:accepted|expected)")
_UNKNOWN_IN_SUBCOMMAND = re.compile(r"^Subcommand '[^']+' does not accept option '(?P<option>[^']+)'")
_UNKNOWN_IN_GROUP = re.compile(r"^Group '(?P<group>[^']+)' does not accept option '(?P<option>[^']+)'")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (?P<rest>.*)$")
_LITERAL = re.compile(r"Expected a typing\.Literal\[(?P<choices>.*)\]\. Got value: (?P<value>.*)$")


def first_error(message: str) -> tuple[str, str | None, str]:
    """The first real problem in a jsonargparse error message.

    jsonargparse nests a subclass setting's error in the Union of its possible types: ``Parser key "data":``,
    ``Does not validate against any of the Union subtypes``, ``- Problem with given class_path 'C':``, then the
    class's own ``Parser key "task":`` and the problem. This follows that nesting by indentation down to the first
    line that is none of the scaffolding.

    Returns:
        The dotted key the problem is about (``data.init_args.task``; ``""`` for none), the innermost class path
        (``None`` outside a subclass) and the problem's line.
    """
    stack: list[tuple[int, str, str]] = []  # (indentation, "key" or "class", key or class path)
    for line in message.splitlines():
        text = line.strip()
        if not text:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        leaf = None
        if match := _KEY.match(text):
            stack.append((indent, "key", match["key"]))
            leaf = match["rest"] or None
        elif match := _CLASS.match(text):
            stack.append((indent, "class", match["class_path"]))
        elif not _SCAFFOLD.match(text):
            leaf = text.removeprefix("- ")
        if leaf is not None:
            key = ".".join(value if kind == "key" else "init_args" for _, kind, value in stack)
            class_path = next((value for _, kind, value in reversed(stack) if kind == "class"), None)
            return key, class_path, leaf
    return "", None, message.strip()


def _plain(key: str) -> str:
    """``key`` without ``init_args`` (``--data.batch_size`` and ``--data.init_args.batch_size`` are one option)."""
    return ".".join(part for part in key.split(".") if part != "init_args")


def _option_name(token: str) -> str | None:
    """``--trainer.max_steps=3`` → ``trainer.max_steps``; ``None`` for a token that is not a long option."""
    return token[2:].split("=", 1)[0] if token.startswith("--") and len(token) > 2 else None


def _as_typed(key: str, args: Sequence[str]) -> str | None:
    """The option as the command line spelled ``key`` (``data.task`` for ``data.init_args.task``), or ``None``
    when it did not come from the command line (it came from a config file)."""
    return next((name for name in map(_option_name, args) if name and _plain(name) == _plain(key)), None)


def _closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to ``name``, preferring one that differs in the last dotted part only."""
    prefix, _, last = name.rpartition(".")
    siblings = [c.rpartition(".")[2] for c in candidates if _plain(c.rpartition(".")[0]) == _plain(prefix)]
    if match := difflib.get_close_matches(last, siblings, n=1, cutoff=0.6):
        return f"{prefix}.{match[0]}" if prefix else match[0]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def _parser_options(parser: argparse.ArgumentParser) -> list[str]:
    """The long option names a parser knows, without ``--``."""
    return [option[2:] for option in parser._option_string_actions if option.startswith("--")]


def _class_options(class_path: str) -> list[str]:
    """The init arguments jsonargparse accepts for ``class_path``, as it would itself resolve them; ``[]`` when the
    class does not import (its error then is another one)."""
    module, _, name = class_path.rpartition(".")
    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name), fail_untyped=False)
    except Exception:  # noqa: BLE001 - only a suggestion is lost
        return []
    return [action.dest for action in parser._actions if action.option_strings and action.dest != "help"]


def _subcommand(parser: argparse.ArgumentParser, args: Sequence[str]) -> tuple[str, argparse.ArgumentParser] | None:
    """The subcommand named in ``args`` and its parser, if any."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = next((token for token in args if token in action.choices), None)
            return (name, action.choices[name]) if name else None
    return None


def concise_error(message: str, parser: argparse.ArgumentParser, args: Sequence[str]) -> tuple[str, str | None]:
    """One line for a jsonargparse error message, and a hint line or ``None``.

    Args:
        message: the parser's message (often many lines: the Union of a subclass setting's possible types).
        parser: the parser that failed (the main parser: its subcommand's parser is found through ``args``).
        args: the command line parsed, to name options as they were typed and to find the subcommand.
    """
    subcommand = _subcommand(parser, args)
    help_hint = f"`{PROG} {subcommand[0] if subcommand else 'fit'} --help` lists the options"
    full_hint = "JSONARGPARSE_DEBUG=true shows the parser's full message" if "\n" in message.strip() else None
    key, class_path, leaf = first_error(message)

    if match := _UNRECOGNIZED.match(leaf):
        options = [name for name in map(_option_name, match["rest"].split()) if name]
        if options:
            known = _parser_options(parser) + (_parser_options(subcommand[1]) if subcommand else [])
            best = _closest(options[0], known)
            return _unknown(f"--{options[0]}", best and f"--{best}", others=options[1:], hint=help_hint)
        return leaf, help_hint
    if match := _UNKNOWN.match(leaf) or _UNKNOWN_IN_SUBCOMMAND.match(leaf) or _UNKNOWN_IN_GROUP.match(leaf):
        owner = ".".join(part for part in (key, match.groupdict().get("group")) if part)
        option = f"{owner}.{match['option']}" if owner else match["option"]
        if class_path and key.endswith("init_args"):  # an init argument of the class: suggest among the class's
            best = _closest(match["option"], _class_options(class_path))
            best = best and option.removesuffix(match["option"]) + best
        else:
            best = _closest(option, _parser_options(subcommand[1] if subcommand else parser))
        typed = _as_typed(option, args)
        if typed is None:
            return _unknown(f"{option} (in a config file)", best, hint=help_hint)
        prefix = option.removesuffix(match["option"])
        if best and best.startswith(prefix):  # in the spelling typed: --data.batch_size for --data.batchsize
            best = typed.removesuffix(match["option"]) + best.removeprefix(prefix)
        return _unknown(f"--{typed}", best and f"--{best}", hint=help_hint)

    where = f"--{_as_typed(key, args) or key}" if key else ""
    if class_path and key.endswith("init_args"):  # the class's own problem, e.g. a required argument missing
        where = f"{key.removesuffix('.init_args')} ({class_path})"
    line = f"{where}: {leaf}" if where else leaf
    if (literal := _LITERAL.search(leaf)) and (suggestion := _closest_choice(literal["value"], literal["choices"])):
        line += f"; did you mean {suggestion!r}?"
    if not {"-c", "--config"} & {token.split("=", 1)[0] for token in args} and (
            leaf.startswith(('expected "subcommand"', "the following arguments are required"))):
        return line, f"{PROG} fit --config <recipe>; `{PROG} recipes` lists the recipes"
    return line, full_hint


def _closest_choice(value: str, choices: str) -> str | None:
    """The allowed value of a ``Literal[...]`` closest to the one given."""
    try:
        allowed = [str(choice) for choice in ast.literal_eval(f"[{choices}]")]
    except (ValueError, SyntaxError):
        return None
    match = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown(shown: str, suggestion: str | None, hint: str, others: Sequence[str] = ()) -> tuple[str, str | None]:
    line = f"unknown option {shown}" + (f"; did you mean {suggestion}?" if suggestion else "")
    if others:
        line += f" (also unrecognized: {' '.join('--' + other for other in others)})"
    return line, None if suggestion else hint


class LitPruneArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line (and at most a hint), not a usage dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print :func:`concise_error`'s line and hint to stderr and exit with status 2.

        Where jsonargparse expects an exception instead (``exit_on_error=False``, its internal parsers, debug mode
        with ``JSONARGPARSE_DEBUG``, an error handler), it gets jsonargparse's own behaviour.
        """
        debug = os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in ("", "false")
        if not self.exit_on_error or debug or callable(getattr(self, "_error_handler", None)):
            super().error(message, ex)
        self._logger.error(message)
        args = getattr(self, "args", None)
        args = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
        try:
            line, hint = concise_error(message, self, args)
        except Exception:  # noqa: BLE001 - never lose the error itself to a bug in its shortening
            line, hint = message.strip().splitlines()[0], None
        sys.stderr.write(f"{PROG}: {line}\n" + (f"{PROG}: hint: {hint}\n" if hint else ""))
        self.exit(2)


# --------------------------------------------------------------------------------------------------- a quiet run

#: Third-party warnings a normal run triggers and the user can do nothing about: (message regex, category). Each is
#: matched by its text, so any other warning of the same category still shows.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch deprecates its LeafSpec class, which lightning.pytorch.utilities._pytree still builds in every fit
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # torchmetrics' Spearman correlation keeps its inputs until computed: a dev split's scores, a few kB here
    (r"Metric `SpearmanCorrcoef` will save all targets", UserWarning),
)

#: The loggers Lightning's rank-zero messages go through ("GPU available: ...", "💡 Tip: ...").
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." lines (installing litlogger, litmodels). Lightning prints them whenever the
    Trainer is built without its cloud logger or model registry, and offers no setting to switch them off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_TIPS = _NoTips()


def quiet_third_party() -> None:
    """Silence :data:`KNOWN_WARNINGS` and Lightning's tips for this process (each DDP process runs :func:`main`
    and so calls it too). Idempotent."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).addFilter(_NO_TIPS)  # the same filter object is added once


class _WithoutVersion:
    """A Lightning progress bar without ``v_num`` (Lightning's documented override of ``get_metrics``)."""

    def get_metrics(self, trainer: Trainer, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        items.pop("v_num", None)
        return items


class LitPruneRichProgressBar(_WithoutVersion, RichProgressBar):
    """Lightning's rich progress bar without ``v_num``."""


class LitPruneTQDMProgressBar(_WithoutVersion, TQDMProgressBar):
    """Lightning's tqdm progress bar without ``v_num``."""


def default_progress_bar() -> ProgressBar:
    """The bar Lightning would add by default (rich when it is installed, else tqdm), without ``v_num``."""
    try:
        return LitPruneRichProgressBar()
    except ModuleNotFoundError:  # rich is not installed
        return LitPruneTQDMProgressBar()


# --------------------------------------------------------------------------------------------------- the CLI


class LitPruneCLI(LightningCLI):
    """LightningCLI with lit_prune's links and defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.name_or_path", "data.init_args.tokenizer", apply_on="parse")
        parser.link_arguments("data.init_args.task", "model.init_args.task", apply_on="parse")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with :func:`default_progress_bar` in place of Lightning's default one. A recipe that switches
        the bar off (``enable_progress_bar: false``) or names its own bar in ``trainer.callbacks`` gets that."""
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, default_progress_bar()])
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, run: bool = True) -> LitPruneCLI | None:
    """Entry point of the ``lit-prune`` console script and of ``train.py``.

    Args:
        args: the command line without the program name; ``None`` reads ``sys.argv``.
        run: run the subcommand (``False``: parse and instantiate only, with no subcommand in ``args``).

    Returns:
        The CLI (its ``model``, ``datamodule``, ``trainer``) when called with ``args`` from Python; ``None`` when it
        read ``sys.argv``, because a console script hands the return value to ``sys.exit``, and an object there
        would be printed as an error and exit with status 1.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_third_party()
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["recipes"]:
        status = _recipes_command(argv[1:])
        if status:
            raise SystemExit(status)
        return None
    try:
        argv = resolve_config_args(argv)
    except RecipeNotFoundError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args is None:
        # LightningCLI reads sys.argv itself; handing it args= as well makes it warn that both were given. The DDP
        # launcher re-runs sys.argv too, so its processes get the resolved recipe path.
        sys.argv[1:] = argv
    try:
        cli = LitPruneCLI(
            model_class=TaskModule,
            datamodule_class=TaskDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_class=LitPruneArgumentParser,
            parser_kwargs={"description": DESCRIPTION},
            args=None if args is None else argv,
            run=run,
        )
    except Exception as error:
        missing = _asset_error(error)
        if missing is None:
            raise
        # a model or dataset that resolves nowhere: its message says what was tried; jsonargparse wraps it in a
        # Union's error and two tracebacks that add nothing
        print(f"{PROG}: {missing}", file=sys.stderr)
        raise SystemExit(1) from None
    return None if args is None else cli


def _asset_error(error: BaseException | None) -> AssetNotFoundError | None:
    """The :class:`AssetNotFoundError` that ``error`` is, or was raised from, if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, AssetNotFoundError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
