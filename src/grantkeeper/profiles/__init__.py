"""Provider profiles: what is known about real authorization servers, shipped as data (``profiles.toml``).

A profile is a starting point for a `Provider`: token URL (possibly with ``{placeholders}`` such as a tenant),
rotation mode, reuse grace, lifetimes, client authentication methods and quirks. Every fact carries its
provenance: the source URLs it was read from, or "unverified". `build_provider` fills the placeholders and
applies the caller's overrides; the resulting provider stores plain values, so a later change to the shipped
data never changes a provider that already exists.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.model import AuthMethod, Provider, RotationMode

__all__ = [
    "FACTS",
    "QUIRKS",
    "UNVERIFIED",
    "Profile",
    "build_provider",
    "fill_template",
    "get_profile",
    "load_profiles",
    "parse_profiles",
    "profile_values",
]

UNVERIFIED = "unverified"
DAY = 86400.0

#: Known quirks. Only ``scope_on_refresh`` changes what grantkeeper sends; the response quirks are handled for
#: every provider by `grantkeeper.protocol.answers` (so a profile that forgets one still works), and the rest are
#: facts an operator should know.
QUIRKS: Mapping[str, str] = {
    "scope_on_refresh": "the grant's scopes are sent as `scope` on every refresh",
    "refresh_token_expires_in": "responses carry refresh_token_expires_in; recorded as the refresh token's expiry",
    "x_refresh_token_expires_in": "responses carry x_refresh_token_expires_in; recorded as the refresh token's expiry",
    "errors_in_200": "errors can arrive with HTTP 200; an `error` member makes it an error whatever the status",
    "invalid_grant_403": "a dead refresh token is answered with HTTP 403; classified by the error code, not status",
    "old_refresh_tokens_stay_valid": "superseded refresh tokens keep working; grantkeeper still uses the newest",
    "refresh_token_cap": "only so many refresh tokens per user and client: consenting again evicts the oldest",
    "one_token_per_install": "issuing a new token for the same install revokes the previous one",
    "json_body_documented": "docs show a JSON request body; grantkeeper sends the standard form body (RFC 6749)",
}

#: Profile keys that are facts (each needs provenance); the rest describe how to use the profile.
FACTS = (
    "token_url", "authorization_url", "device_authorization_url", "issuer", "scopes", "authorize_params",
    "rotation", "reuse_grace", "reuse_detection", "refresh_idle_ttl_days", "refresh_absolute_ttl_days",
    "access_token_ttl", "auth_methods", "jwt_audience", "quirks",
)  # fmt: skip
_REQUIRED = ("title", "token_url", "rotation", "auth_methods")
_NOT_FACTS = ("title", "params", "param_defaults", "notes", "checked", "sources", "facts")
_ROTATIONS = ("always", "conditional", "never", "configurable")
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")
_HOSTISH = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}\Z")  # a host, host label or path segment: nothing to escape
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_MAX_GRACE_DAYS = 366
_DEFAULT_EXPIRES_IN = 3600.0  # Provider's own default, for profiles that do not state an access-token lifetime


@dataclass(frozen=True, slots=True)
class Profile:
    """One provider profile as shipped. Durations: seconds, except ``*_days``."""

    name: str
    title: str
    token_url: str
    rotation: str
    auth_methods: tuple[AuthMethod, ...]
    sources: Mapping[str, str]
    facts: Mapping[str, tuple[str, ...] | str]
    authorization_url: str | None = None
    device_authorization_url: str | None = None  # RFC 8628 §3.1, for `connect --device`
    issuer: str | None = None
    scopes: tuple[str, ...] = ()
    authorize_params: Mapping[str, str] | None = None
    reuse_grace: float | None = None
    reuse_detection: bool | None = None
    refresh_idle_ttl_days: float | None = None
    refresh_absolute_ttl_days: float | None = None
    access_token_ttl: float | None = None
    jwt_audience: str | None = None
    quirks: tuple[str, ...] = ()
    params: Mapping[str, str] | None = None
    param_defaults: Mapping[str, str] | None = None
    notes: str = ""
    checked: str = ""

    def placeholders(self) -> tuple[str, ...]:
        """The ``{names}`` its URLs need, in order of first use."""
        found = [m for url in self._urls() for m in _PLACEHOLDER.findall(url)]
        return tuple(dict.fromkeys(found))

    def _urls(self) -> list[str]:
        urls = (self.token_url, self.authorization_url, self.device_authorization_url, self.issuer)
        return [u for u in urls if u is not None]

    def unverified(self) -> tuple[str, ...]:
        """The facts present in this profile that no source backs."""
        return tuple(key for key, where in self.facts.items() if where == UNVERIFIED)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``provider profiles --json``."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value in ((), ""):
                continue
            if isinstance(value, Mapping):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            data[f.name] = value
        return data


def fill_template(template: str, params: Mapping[str, str], *, profile: str) -> str:
    """Replace ``{name}`` placeholders; each value must be a plain host/segment, or a URL where the template
    starts with the placeholder (e.g. Keycloak's ``{server}``)."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        given = params.get(key)
        if given is None:
            raise ConfigurationError(f"profile {profile!r} needs --param {key}=VALUE (its token URL is {template!r})")
        if match.start() == 0:
            parts = urlsplit(given)
            if parts.scheme in ("https", "http") and parts.netloc and not parts.query and not parts.fragment:
                return given.rstrip("/")
        if not _HOSTISH.match(given):
            raise ConfigurationError(
                f"profile {profile!r}: --param {key}={given!r} is not valid here; give a host name or identifier "
                "(letters, digits, '.', '-')" + (", or an https URL" if match.start() == 0 else "")
            )
        return given

    return _PLACEHOLDER.sub(value, template)


def profile_values(
    profile: Profile,
    *,
    params: Mapping[str, str] | None = None,
    auth_method: AuthMethod | None = None,
    token_url: str | None = None,
) -> dict[str, Any]:
    """The `Provider` fields a profile decides (every one of them, defaults included, so applying a profile
    to an existing provider leaves nothing of an earlier profile behind). Credentials and the client id are
    not among them.

    Raises:
        ConfigurationError: a placeholder has no value, or a value is unknown or malformed.
    """
    given = dict(profile.param_defaults or {})
    given.update(params or {})
    unknown = sorted(set(params or {}) - set(profile.params or {}))
    if unknown:
        known = ", ".join(sorted(profile.params or {})) or "none"
        raise ConfigurationError(f"profile {profile.name!r} has no parameter {unknown[0]!r} (it takes: {known})")
    method = auth_method or profile.auth_methods[0]
    audience = None
    if method is AuthMethod.PRIVATE_KEY_JWT and profile.jwt_audience == "issuer" and profile.issuer is not None:
        audience = fill_template(profile.issuer, given, profile=profile.name)
    idle, absolute = profile.refresh_idle_ttl_days, profile.refresh_absolute_ttl_days
    return {
        "token_url": token_url or fill_template(profile.token_url, given, profile=profile.name),
        # "configurable": the operator chooses; assume the cautious mode until told otherwise (--rotation).
        "rotation": RotationMode.ALWAYS if profile.rotation == "configurable" else RotationMode(profile.rotation),
        "auth_method": method,
        "reuse_grace": profile.reuse_grace or 0.0,
        "default_expires_in": profile.access_token_ttl or _DEFAULT_EXPIRES_IN,
        "refresh_idle_ttl": idle * DAY if idle is not None else None,
        "refresh_absolute_ttl": absolute * DAY if absolute is not None else None,
        "jwt_audience": audience,
        "send_scope": "scope_on_refresh" in profile.quirks,
        "profile": profile.name,
        "authorization_url": (
            fill_template(profile.authorization_url, given, profile=profile.name)
            if profile.authorization_url is not None
            else None
        ),
        "device_authorization_url": (
            fill_template(profile.device_authorization_url, given, profile=profile.name)
            if profile.device_authorization_url is not None
            else None
        ),
    }


def build_provider(
    profile: Profile, name: str, *, client_id: str, params: Mapping[str, str] | None = None, **overrides: Any
) -> Provider:
    """A provider made from `profile`, with `params` filling its placeholders; `overrides` (non-None) win."""
    values = profile_values(
        profile, params=params, auth_method=overrides.get("auth_method"), token_url=overrides.get("token_url")
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Provider(name=name, client_id=client_id, **values)


@functools.cache
def load_profiles() -> Mapping[str, Profile]:
    """Every shipped profile by name (read and validated once per process)."""
    text = resources.files(__package__).joinpath("profiles.toml").read_text(encoding="utf-8")
    return parse_profiles(text, origin="grantkeeper/profiles/profiles.toml")


def get_profile(name: str) -> Profile:
    profiles = load_profiles()
    try:
        return profiles[name]
    except KeyError:
        raise ConfigurationError(
            f"no provider profile named {name!r}; 'grantkeeper provider profiles' lists them"
        ) from None


def parse_profiles(text: str, *, origin: str) -> dict[str, Profile]:
    """Parse and validate profile data. Raises `ConfigurationError` naming the profile and key at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{origin} is not valid TOML: {exc}") from None
    return {name: _profile(name, table, origin) for name, table in data.items()}


class _Reader:
    """Typed access to one profile table, with errors that name where the problem is."""

    def __init__(self, table: object, where: str) -> None:
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where} must be a table")
        self.table: dict[str, Any] = table
        self.where = where

    def fail(self, key: str, what: str) -> ConfigurationError:
        return ConfigurationError(f"{self.where}: {key} {what}")

    def text(self, key: str) -> str | None:
        value = self.table.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.fail(key, "must be a non-empty string")
        return value

    def number(self, key: str, low: float, high: float) -> float | None:
        value = self.table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.fail(key, f"must be a number from {low:g} to {high:g}")
        return float(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(key, "must be a list of non-empty strings")
        return tuple(value)

    def mapping(self, key: str) -> dict[str, str] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
            raise self.fail(key, "must be a table of strings")
        return value


def _profile(name: str, table: object, origin: str) -> Profile:
    where = f"{origin}: profile {name!r}"
    if not _NAME.match(name):
        raise ConfigurationError(f"{where}: names are lower-case letters, digits and _")
    r = _Reader(table, where)
    for key in r.table:
        if key not in FACTS and key not in _NOT_FACTS:
            raise r.fail(key, "is not a profile key")
    for key in _REQUIRED:
        if key not in r.table:
            raise r.fail(key, "is required")
    rotation = r.text("rotation")
    if rotation not in _ROTATIONS:
        raise r.fail("rotation", f"must be one of {', '.join(_ROTATIONS)}")
    try:
        methods = tuple(AuthMethod(m) for m in r.strings("auth_methods"))
    except ValueError:
        raise r.fail("auth_methods", f"must name methods from {', '.join(m.value for m in AuthMethod)}") from None
    if not methods:
        raise r.fail("auth_methods", "must not be empty")
    quirks = r.strings("quirks")
    if unknown := [q for q in quirks if q not in QUIRKS]:
        raise r.fail("quirks", f"has unknown quirk {unknown[0]!r}; known: {', '.join(QUIRKS)}")
    audience = r.text("jwt_audience")
    if audience not in (None, "token_endpoint", "issuer"):
        raise r.fail("jwt_audience", "must be 'token_endpoint' or 'issuer'")
    if audience == "issuer" and "issuer" not in r.table:
        raise r.fail("jwt_audience", "is 'issuer' but the profile has no issuer")
    reuse_detection = r.table.get("reuse_detection")
    if reuse_detection is not None and not isinstance(reuse_detection, bool):
        raise r.fail("reuse_detection", "must be true or false")
    sources = r.mapping("sources") or {}
    profile = Profile(
        name=name, title=str(r.text("title")), token_url=str(r.text("token_url")), rotation=rotation,
        auth_methods=methods, sources=sources, facts=_facts(r, sources),
        authorization_url=r.text("authorization_url"), device_authorization_url=r.text("device_authorization_url"),
        issuer=r.text("issuer"), scopes=r.strings("scopes"),
        authorize_params=r.mapping("authorize_params"), reuse_grace=r.number("reuse_grace", 0, _MAX_GRACE_DAYS * DAY),
        reuse_detection=reuse_detection, refresh_idle_ttl_days=r.number("refresh_idle_ttl_days", 1 / 24, 3660),
        refresh_absolute_ttl_days=r.number("refresh_absolute_ttl_days", 1 / 24, 3660),
        access_token_ttl=r.number("access_token_ttl", 60, _MAX_GRACE_DAYS * DAY), jwt_audience=audience,
        quirks=quirks, params=r.mapping("params"), param_defaults=r.mapping("param_defaults"),
        notes=r.text("notes") or "", checked=r.text("checked") or "",
    )  # fmt: skip
    _check_urls(profile, r)
    return profile


def _facts(r: _Reader, sources: Mapping[str, str]) -> dict[str, tuple[str, ...] | str]:
    """Every fact present has provenance, every citation resolves, every source is cited and https."""
    raw = r.table.get("facts")
    if not isinstance(raw, dict):
        raise r.fail("facts", "table is required: provenance for every fact")
    facts: dict[str, tuple[str, ...] | str] = {}
    for key in FACTS:
        present = key in r.table
        where = raw.get(key)
        if present and where is None:
            raise r.fail(key, f'has no provenance: add facts.{key} = [source keys] or "{UNVERIFIED}"')
        if not present and where is not None:
            raise r.fail(f"facts.{key}", "gives provenance for a fact the profile does not state")
        if where is None:
            continue
        if where == UNVERIFIED:
            facts[key] = UNVERIFIED
            continue
        if not isinstance(where, list) or not where or not all(isinstance(s, str) for s in where):
            raise r.fail(f"facts.{key}", f'must be a non-empty list of source keys or "{UNVERIFIED}"')
        if missing := [s for s in where if s not in sources]:
            raise r.fail(f"facts.{key}", f"cites {missing[0]!r}, which is not in sources")
        facts[key] = tuple(where)
    if extra := sorted(set(raw) - set(FACTS)):
        raise r.fail(f"facts.{extra[0]}", "is not a fact key")
    cited = {s for where in facts.values() if where != UNVERIFIED for s in where}
    for key, url in sources.items():
        if key not in cited:
            raise r.fail(f"sources.{key}", "is cited by no fact; remove it or cite it")
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc:
            raise r.fail(f"sources.{key}", f"must be an https URL; got {url!r}")
    return facts


def _check_urls(profile: Profile, r: _Reader) -> None:
    for url in profile._urls():
        stripped = _PLACEHOLDER.sub("x", url)
        if "{" in stripped or "}" in stripped:
            raise r.fail("token_url", f"has a malformed placeholder in {url!r}; use {{lower_case_name}}")
        starts_with_param = _PLACEHOLDER.match(url) is not None
        parts = urlsplit(stripped)
        if not starts_with_param and (parts.scheme != "https" or not parts.netloc):
            raise r.fail("token_url", f"URLs must be https; got {url!r}")
    declared = set(profile.params or {})
    used = set(profile.placeholders())
    if undeclared := sorted(used - declared):
        raise r.fail("params", f"must describe placeholder {{{undeclared[0]}}}")
    if unused := sorted(declared - used):
        raise r.fail("params", f"describes {unused[0]!r}, which no URL uses")
    if stray := sorted(set(profile.param_defaults or {}) - declared):
        raise r.fail("param_defaults", f"sets {stray[0]!r}, which is not a parameter")
