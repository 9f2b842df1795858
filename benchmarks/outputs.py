"""What the benchmark scripts share: the command that reproduces a result, and writing it as JSON and a table."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from lit_prune.core.atomic import atomic_write_text


def reproduce_command(module: str, argv: list[str] | None) -> str:
    """``python -m <module> <args>``, shell-quoted, with the ``LIT_PRUNE_ASSETS`` folder that names such as
    all-MiniLM-L6-v2 resolved under (part of the command when set). ``argv``: the script's arguments, ``None`` for
    the command line's."""
    assets = os.environ.get("LIT_PRUNE_ASSETS")
    arguments = sys.argv[1:] if argv is None else argv
    return (f"LIT_PRUNE_ASSETS={shlex.quote(assets)} " if assets else "") + f"python -m {module} " + \
        " ".join(shlex.quote(a) for a in arguments)


def write_outputs(folder: str | Path, name: str, results: dict[str, Any], table: str) -> None:
    """``<folder>/<name>.json`` and ``<name>.md`` (each written whole, then renamed), and the table printed."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / f"{name}.md", table)
    print(table)
