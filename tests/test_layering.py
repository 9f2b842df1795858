"""The shape of the house: imports point down (core ← prune ← methods), methods never import each other, no import
cycles in the package or the benchmarks, and no module grows past what one reader holds in mind."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

METHODS = ("kwon", "kprune", "gpruner", "grain", "smp")
MAX_LINES = 550
LONG_ALLOWED = {"lit_prune/core/hf_modeling/modeling_lit_pruned.py"}  # copied whole into every pruned folder


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The lit_prune / benchmarks modules ``path`` imports (at module level only, with ``top_level_only``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package.split(".")
                prefix = prefix[:len(prefix) - node.level + 1]
                base = ".".join(prefix + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("lit_prune", "benchmarks")}


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_shared_layers_import_nothing_above_them():
    for path in sources("lit_prune/core", "lit_prune/prune"):
        allowed = ("lit_prune.core",) if "core" in path.parts else ("lit_prune.core", "lit_prune.prune")
        wrong = sorted(name for name in imports(path) if not name.startswith(allowed))
        assert not wrong, f"{path.relative_to(REPO)} imports {wrong}: the shared layers import only below them"
        source = path.read_text()
        assert "import lightning" not in source and "from lightning" not in source, f"{path} imports Lightning"


def test_methods_never_import_each_other():
    for method in METHODS:
        folder = REPO / "lit_prune" / "methods" / method
        assert folder.is_dir(), f"lit_prune/methods/{method}/ should be a package split by stage"
        others = tuple(f"lit_prune.methods.{other}" for other in METHODS if other != method)
        for path in folder.rglob("*.py"):
            wrong = sorted(name for name in imports(path) if name.startswith(others))
            assert not wrong, f"{path.relative_to(REPO)} imports another method: {wrong}"


def test_no_import_cycles_in_the_package_or_the_benchmarks():
    paths = sources("lit_prune", "benchmarks")
    names = {module_name(p): p for p in paths}
    graph = {}
    for name, path in names.items():
        # a name imported from a package may be a module of it or a name in its __init__: keep the modules
        graph[name] = {target if target in names else target.rpartition(".")[0]
                       for target in imports(path, top_level_only=True)} & set(names) - {name}
    visiting, done, cycles = set(), set(), []

    def visit(node, stack):
        visiting.add(node)
        for target in graph[node]:
            # a package's __init__ importing its own modules is not a cycle through them
            if target in visiting and not node.startswith(target + "."):
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in done and target not in visiting:
                visit(target, stack + [target])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        if node not in done:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in sources("lit_prune")}
    too_long = {p: n for p, n in long.items() if n > MAX_LINES and p not in LONG_ALLOWED}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by stage or concern): {too_long}"
