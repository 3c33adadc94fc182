"""How much attempt history a store keeps."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from grantkeeper._exceptions import ConfigurationError

__all__ = ["HistoryRetention"]


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryRetention:
    """How much attempt history to keep per grant: the newest `per_grant` attempts, none older than `days`."""

    days: float = 90.0
    per_grant: int = 1000

    def __post_init__(self) -> None:
        if not (self.days > 0 and self.per_grant >= 1):
            raise ConfigurationError(
                f"history retention must keep something (days > 0, per_grant >= 1); got days={self.days}, "
                f"per_grant={self.per_grant}"
            )

    @classmethod
    def from_env(cls) -> HistoryRetention:
        """$GRANTKEEPER_HISTORY_DAYS and $GRANTKEEPER_HISTORY_PER_GRANT, where set; the defaults otherwise."""
        values: dict[str, Any] = {}
        for key, env, kind in (("days", "GRANTKEEPER_HISTORY_DAYS", float),
                               ("per_grant", "GRANTKEEPER_HISTORY_PER_GRANT", int)):  # fmt: skip
            raw = os.environ.get(env)
            if raw:
                try:
                    values[key] = kind(raw)
                except ValueError:
                    raise ConfigurationError(f"${env} must be a number, got {raw[:20]!r}") from None
        return cls(**values)
