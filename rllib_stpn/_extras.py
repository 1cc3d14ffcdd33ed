"""Optional dependencies (setup.cfg's extras): a missing one is a one-line error with the fix."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip command."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise MissingExtraError naming ``pip install 'rllib-stpn[extra]'``.

    Only a module that is not there is turned into the hint; a module that is installed but
    fails to import (a broken build, a missing system library) raises its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or module.split(".")[0] != err.name.split(".")[0]:
            raise
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra ({module} is not installed): "
            f"pip install 'rllib-stpn[{extra}]'"
        ) from None
