"""Per-invocation state shared by the error boundary and the commands (passed as Click's ``ctx.obj``)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grantkeeper.redact import RedactingFilter

if TYPE_CHECKING:
    from grantkeeper.keepers import Keeper

__all__ = ["Session"]

_LOGGER = "grantkeeper"


@dataclass
class Session:
    """What the global options chose, and the logging handler to remove when the invocation ends."""

    store_url: str | None = None
    verbose: bool = False
    _handler: logging.Handler | None = None
    _saved_level: int = logging.NOTSET

    def url(self) -> str:
        from grantkeeper.admin import default_store_url

        return self.store_url if self.store_url is not None else default_store_url()

    def keeper(self, *, create: bool = False) -> Keeper:
        """A keeper on the chosen store (only ``provider add`` creates one), announcing events to the webhook
        named by $GRANTKEEPER_WEBHOOK_URL, if set."""
        from grantkeeper.keepers import Keeper
        from grantkeeper.notify import Webhook

        return Keeper.open(self.url(), create=create, on_event=Webhook.from_env())

    def configure_logging(self, verbose: bool) -> None:
        """Log the ``grantkeeper`` logger to stderr: INFO with ``--verbose``, else WARNING."""
        self.close_logging()
        self.verbose = verbose
        logger = logging.getLogger(_LOGGER)
        handler = logging.StreamHandler(sys.stderr)  # the stream at call time (CliRunner swaps it)
        fmt = (
            "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "grantkeeper: %(levelname)s: %(message)s"
        )
        handler.setFormatter(logging.Formatter(fmt))
        handler.addFilter(RedactingFilter())  # second line of defence for what other libraries log
        self._saved_level = logger.level
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        logger.addHandler(handler)
        self._handler = handler

    def close_logging(self) -> None:
        """Undo `configure_logging` (the CLI may run many times in one process, as under CliRunner)."""
        if self._handler is None:
            return
        logger = logging.getLogger(_LOGGER)
        logger.removeHandler(self._handler)
        logger.setLevel(self._saved_level)
        self._handler = None
