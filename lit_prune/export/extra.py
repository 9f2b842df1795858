"""The ``deploy`` extra: onnx, onnxruntime and onnxscript, imported only where they are used.

lit_prune installs without them; everything in :mod:`lit_prune.export` that needs one calls :func:`require` first,
which names the pip command when one is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: what the extra installs: the ONNX format, its runtime, and the library torch's exporter writes ONNX with
DEPLOY_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INSTALL_COMMAND = "pip install 'lit_prune[deploy]'"


class DeployExtraMissingError(ImportError):
    """A package of the ``deploy`` extra is not installed; the message gives the pip command."""


def require(*names: str) -> dict[str, ModuleType]:
    """Import the named packages of the extra (all of them when none is named).

    Returns:
        name → module.

    Raises:
        DeployExtraMissingError: naming every missing package and ``pip install 'lit_prune[deploy]'``.
    """
    modules: dict[str, ModuleType] = {}
    missing = []
    for name in names or DEPLOY_PACKAGES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DeployExtraMissingError(
            f"lit_prune.export needs {', '.join(missing)}, from the optional `deploy` extra: {INSTALL_COMMAND}")
    return modules


__all__ = ["DEPLOY_PACKAGES", "INSTALL_COMMAND", "DeployExtraMissingError", "require"]
