"""Import an optional library for a bridge, or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from grantkeeper._exceptions import ConfigurationError

__all__ = ["MissingExtra", "require"]


class MissingExtra(ConfigurationError, ImportError):
    """A bridge was imported without the library it bridges to; the message names the extra to install."""

    code = "missing_extra"


def require(module: str, *, extra: str, bridge: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{bridge} needs the {module.partition('.')[0]!r} package, which is not installed; "
            f"install it with: pip install 'grantkeeper[{extra}]'"
        ) from exc
