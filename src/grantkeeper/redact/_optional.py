"""The error a redaction helper raises when its optional library is not installed."""

from __future__ import annotations

from grantkeeper._exceptions import ConfigurationError

__all__ = ["MissingExtra", "missing_extra"]


class MissingExtra(ConfigurationError, ImportError):
    """An optional library is not installed; the message names the extra that installs it."""

    code = "missing_extra"


def missing_extra(helper: str, library: str, extra: str) -> MissingExtra:
    return MissingExtra(f"{helper} needs {library}, which is not installed: pip install 'grantkeeper[{extra}]'")
