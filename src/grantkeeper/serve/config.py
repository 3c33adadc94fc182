"""``grantkeeper.toml``: how `grantkeeper serve` runs, with ``GRANTKEEPER_*`` environment overrides.

Precedence, highest first: command-line options, environment variables, the file, the defaults. Secrets are
never written in the file: the store URL may come from a file or a command (it can hold a database password),
the encryption key from a file or a command, the webhook secret from a file or a command. A store URL with a
password in it, or a ``key``/``secret`` value, is refused with the setting to use instead. docs/serve.md has
the full list.

    [store]
    url = "sqlite:///var/lib/grantkeeper/grants.db"   # or url_file = ..., url_command = "..."
    key_file = "/run/secrets/grantkeeper-key"          # or key_command = "..."; else $GRANTKEEPER_KEY, key file

    [listen]
    host = "127.0.0.1"
    port = 8734
    unix = "/run/grantkeeper/serve.sock"
    unix_grants = ["*"]
    unix_scopes = ["token", "refresh", "read", "proxy", "metrics"]
    behind_proxy = false

    [tls]
    cert = "/etc/grantkeeper/tls.crt"
    key = "/etc/grantkeeper/tls.key"

    [limits]
    rate = 20.0            # requests per second per API key (0: no limit)
    burst = 40
    shutdown_timeout = 30.0
    max_body = 1048576     # bytes per request body

    [logging]
    level = "info"

    [webhook]
    url = "https://hooks.example.com/grantkeeper"
    secret_file = "/run/secrets/webhook-secret"

    [connect]              # hosted connect (POST /v1/connect-sessions); off while public_url is unset
    public_url = "https://grantkeeper.example.com"   # the redirect URI is public_url + "/oauth/callback"
    session_ttl = 600.0    # seconds a connect URL may wait to be opened, and the consent after it

    [serve]
    loop = "auto"          # the event loop: "auto" (uvloop when installed), "asyncio" or "uvloop"

    [scheduler]            # the refresh scheduler (docs/serve.md); these are the defaults
    enabled = true
    concurrency = 64       # refreshes in flight at once, over all providers
    per_provider = 16      # ... at one provider
    hot_window = 600       # a grant whose token was handed out this recently is refreshed ahead of time
    lead_fraction = 0.2    # ... this fraction of its token's lifetime before it stops being served
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shlex
import subprocess
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.keys.sources import KEY_COMMAND_ENV, KEY_ENV, read_private_file
from grantkeeper.serve.eventloop import check_loop
from grantkeeper.stores.access import parse_patterns, parse_scopes

__all__ = ["DEFAULT_CONNECT_TTL", "DEFAULT_PORT", "ServeConfig", "check_public_url", "load_config"]

DEFAULT_PORT = 8734
_COMMAND_TIMEOUT = 30.0
_SECTIONS = {
    "store": {"url", "url_file", "url_command", "key_file", "key_command"},
    "listen": {"host", "port", "unix", "unix_grants", "unix_scopes", "behind_proxy"},
    "tls": {"cert", "key"},
    "limits": {"rate", "burst", "shutdown_timeout", "max_body"},
    "logging": {"level"},
    "webhook": {"url", "secret_file", "secret_command"},
    "connect": {"public_url", "session_ttl"},
    "serve": {"loop"},
    "scheduler": None,  # checked by grantkeeper.serve.scheduling.scheduler_options
}
#: The settings an environment variable overrides, by the kind its value is read as. The variable is
#: ``GRANTKEEPER_SERVE_`` and the setting's name in capitals (``max_body``: ``GRANTKEEPER_SERVE_MAX_BODY``), one rule
#: as pydantic-settings' ``env_prefix`` is, so that no variable is spelt differently from its setting.
_ENV_SETTINGS: dict[type, tuple[str, ...]] = {
    str: ("host", "unix", "tls_cert", "tls_key", "log_level", "public_url", "loop"),
    int: ("port", "burst", "max_body"),
    float: ("rate", "shutdown_timeout", "connect_ttl"),
    bool: ("behind_proxy",),
}
#: Environment variable -> (field, kind).
_ENV = {f"GRANTKEEPER_SERVE_{attr.upper()}": (attr, kind) for kind, attrs in _ENV_SETTINGS.items() for attr in attrs}
#: Seconds a connect URL stays valid (to be opened; then again for the consent) unless configured.
DEFAULT_CONNECT_TTL = 600.0
_MAX_CONNECT_TTL = 86400.0


@dataclass
class ServeConfig:
    """Everything `serve` needs to start, after file, environment and options are merged and checked."""

    store_url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix: str | None = None
    unix_grants: tuple[str, ...] = ("*",)
    unix_scopes: tuple[str, ...] = ("token", "refresh", "read", "proxy", "metrics")
    tls_cert: str | None = None
    tls_key: str | None = None
    behind_proxy: bool = False
    rate: float = 20.0
    burst: int = 40
    shutdown_timeout: float = 30.0
    max_body: int = 1 << 20
    log_level: str = "info"
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    scheduler: dict[str, Any] = field(default_factory=dict)
    public_url: str | None = None
    connect_ttl: float = DEFAULT_CONNECT_TTL
    loop: str = "auto"

    def check(self) -> None:
        """Refuse what cannot run safely, saying why and what to do."""
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port {self.port} is out of range (0-65535)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("TLS needs both a certificate and its key: give --tls-cert and --tls-key")
        if not _is_loopback(self.host) and self.tls_cert is None and not self.behind_proxy:
            raise ConfigurationError(
                f"refusing to serve tokens in clear text on {self.host}, which is not a loopback address: give "
                "--tls-cert and --tls-key, or --behind-proxy if a TLS-terminating proxy is the only way in"
            )
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigurationError(f"log level {self.log_level!r} is not one of debug, info, warning, error")
        if self.rate < 0 or self.burst < 1 or self.shutdown_timeout <= 0 or self.max_body < 1:
            raise ConfigurationError("limits: rate must be >= 0, burst >= 1, shutdown_timeout > 0 and max_body >= 1")
        if self.webhook_url is not None and not self.webhook_secret:
            raise ConfigurationError("[webhook] needs secret_file or secret_command: receivers verify signatures")
        if not 10 <= self.connect_ttl <= _MAX_CONNECT_TTL:
            raise ConfigurationError(f"connect session_ttl must be 10-{_MAX_CONNECT_TTL:.0f} seconds")
        if self.public_url is not None:
            self.public_url = check_public_url(self.public_url)
        check_loop(self.loop)

    def apply_key(self, *, key_file: str | None, key_command: str | None) -> None:
        """Make the configured key source the one the store opens with (this process only)."""
        if key_file is not None:
            os.environ[KEY_ENV] = _private(key_file, "encryption key file")
        elif key_command is not None:
            os.environ[KEY_COMMAND_ENV] = key_command


def check_public_url(url: str) -> str:
    """The service's public URL (where end users' browsers reach it), without a trailing slash: https, or http
    on a loopback host; no query, fragment or credentials (it prefixes the redirect URI providers must allow)."""
    try:
        parts: urllib.parse.SplitResult | None = urllib.parse.urlsplit(url.strip())
        _ = parts.port if parts is not None else None  # a port that is not a number raises here
    except ValueError:
        parts = None
    shown = repr(url[:80]) if "@" not in url else "(with credentials)"  # a password is never echoed
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"public URL {shown} is not an http(s) URL with a host, e.g. "
                                 "https://grantkeeper.example.com")  # fmt: skip
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise ConfigurationError("the public URL must not carry a query, a fragment or credentials")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigurationError(f"public URL {shown}: authorization codes would cross the network in clear "
                                 "text; use https (http is allowed on a loopback host only)")  # fmt: skip
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private(path: str, what: str) -> str:
    """A secret kept in a file only its owner can read (the key file's rule)."""
    try:
        return read_private_file(Path(path)).decode().strip()
    except FileNotFoundError:
        raise ConfigurationError(f"the {what} {path!r} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} {path!r} is not text") from None


def _run(command: str, what: str) -> str:
    try:
        argv = shlex.split(command)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_COMMAND_TIMEOUT,
                              check=False)  # fmt: skip
    except (ValueError, OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"the {what} command could not run ({type(exc).__name__}); check it") from None
    if done.returncode != 0 or not done.stdout.strip():
        # Its output is not shown: it may hold the secret.
        raise ConfigurationError(f"the {what} command exited with status {done.returncode} or printed nothing")
    return done.stdout.decode().strip()


def _secret(section: dict[str, Any], name: str, what: str) -> str | None:
    if section.get(f"{name}_file") is not None:
        return _private(str(section[f"{name}_file"]), what)
    if section.get(f"{name}_command") is not None:
        return _run(str(section[f"{name}_command"]), what)
    return None


def _has_password(url: str) -> bool:
    try:
        return urllib.parse.urlsplit(url).password is not None or "password=" in url.lower()
    except ValueError:
        return False


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file {str(path)!r} cannot be read ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for name, value in data.items():
        keys = _SECTIONS.get(name, set())
        if name not in _SECTIONS or not isinstance(value, dict):
            raise ConfigurationError(f"config file: unknown section [{name}]; known: {', '.join(_SECTIONS)}")
        unknown = [k for k in value if keys is not None and k not in keys]
        if unknown:
            inline = unknown[0] in ("key", "secret", "password")
            hint = f" (secrets are never inline: use {unknown[0]}_file or {unknown[0]}_command)" if inline else ""
            raise ConfigurationError(f"config file: unknown setting {unknown[0]!r} in [{name}]{hint}")
    return data


def _typed(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
    else:
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ConfigurationError(f"{where}: {str(value)[:40]!r} is not a valid {kind.__name__}")


def _read_connect(config: ServeConfig, connect: dict[str, Any]) -> None:
    if connect.get("public_url") is not None:
        config.public_url = str(connect["public_url"])
    if connect.get("session_ttl") is not None:
        config.connect_ttl = _typed(connect["session_ttl"], float, "config file setting 'session_ttl'")


def load_config(path: str | None, *, env: dict[str, str] | None = None, **options: Any) -> ServeConfig:
    """The file at `path` (if any), then `env` overrides, then `options` that are not None; checked."""
    environ = os.environ if env is None else env
    data = _read_file(Path(path)) if path is not None else {}
    store, listen, tls = data.get("store", {}), data.get("listen", {}), data.get("tls", {})
    limits, logging_, webhook = data.get("limits", {}), data.get("logging", {}), data.get("webhook", {})
    config = ServeConfig()
    for attr, value in (("host", listen.get("host")), ("port", listen.get("port")), ("unix", listen.get("unix")),
                        ("behind_proxy", listen.get("behind_proxy")), ("tls_cert", tls.get("cert")),
                        ("tls_key", tls.get("key")), ("rate", limits.get("rate")), ("burst", limits.get("burst")),
                        ("shutdown_timeout", limits.get("shutdown_timeout")), ("max_body", limits.get("max_body")),
                        ("log_level", logging_.get("level"))):  # fmt: skip
        if value is not None:
            kind = type(getattr(config, attr)) if getattr(config, attr) is not None else str
            setattr(config, attr, _typed(value, kind, f"config file setting {attr!r}"))
    if "unix_grants" in listen:
        config.unix_grants = parse_patterns(",".join(map(str, listen["unix_grants"])))
    if "unix_scopes" in listen:
        config.unix_scopes = parse_scopes(",".join(map(str, listen["unix_scopes"])))
    if store.get("url") is not None:
        if _has_password(str(store["url"])):
            raise ConfigurationError("config file: [store] url holds a password; put the URL in url_file or "
                                     "url_command instead (secrets are never inline)")  # fmt: skip
        config.store_url = str(store["url"])
    config.store_url = _secret(store, "url", "store URL") or config.store_url
    config.apply_key(key_file=store.get("key_file"), key_command=store.get("key_command"))
    if webhook.get("url") is not None:
        config.webhook_url = str(webhook["url"])
        config.webhook_secret = _secret(webhook, "secret", "webhook secret")
    _read_connect(config, data.get("connect", {}))
    if data.get("serve", {}).get("loop") is not None:
        config.loop = str(data["serve"]["loop"])
    config.scheduler = dict(data.get("scheduler", {}))
    from grantkeeper.serve.scheduling import scheduler_options  # needs the serve extra, as every caller here does

    scheduler_options(config.scheduler)  # refuse a bad section before anything starts
    for name, (attr, kind) in _ENV.items():
        if environ.get(name):
            setattr(config, attr, _typed(environ[name], kind, f"${name}"))
    for attr, value in options.items():
        if value is not None and attr in {f.name for f in dataclasses.fields(ServeConfig)}:
            setattr(config, attr, value)
    config.check()
    return config
