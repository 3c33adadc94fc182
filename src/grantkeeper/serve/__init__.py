"""`grantkeeper serve`: an HTTP token broker over `AsyncKeeper` (FastAPI on Starlette, served by uvicorn).

Every token it hands out comes from `AsyncKeeper.access_token` / `refresh`; there is no second refresh path. The
modules are small and named for what they do: `app` assembles the application, `routes_grants` and
`routes_health` are the routes, `auth` and `apikeys` decide who may ask, `errors` maps every failure to an RFC
9457 problem at one boundary, `audit`, `metrics` and `logs` record what happened, `config` reads
``grantkeeper.toml``, `runner` runs the listeners, and `console` is the operator console at ``/ui/``.
docs/serve.md is the reference.

Only `apikeys` and `config` import without the ``serve`` extra (the CLI's ``apikey`` commands need neither
FastAPI nor uvicorn); `require_extra` says what to install for the rest.
"""

from __future__ import annotations

import importlib

from grantkeeper._exceptions import ConfigurationError

__all__ = ["EXTRA_MODULES", "require_extra"]

#: What ``pip install 'grantkeeper[serve]'`` brings, by import name.
EXTRA_MODULES = ("fastapi", "uvicorn", "prometheus_client", "structlog", "jinja2")


def require_extra() -> None:
    """Raise a ConfigurationError naming the extra to install if a module `serve` needs is missing."""
    missing = []
    for module in EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigurationError(
            f"'grantkeeper serve' needs {', '.join(missing)}, which are not installed: pip install 'grantkeeper[serve]'"
        )
