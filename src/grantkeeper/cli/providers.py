"""``grantkeeper provider ...``: add (from scratch or a profile), list, profiles, discover.

Every way of making a provider ends in the same place: the fields given on the command line win over the
profile or discovered metadata, which win over what the store already has; then client credentials are made
to fit the chosen authentication method (a secret for basic/post, a key file for private_key_jwt, nothing for
none) and the provider is validated and stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from grantkeeper._exceptions import ConfigurationError, UnknownProvider
from grantkeeper.cli import _render
from grantkeeper.cli._help import HelpGroup
from grantkeeper.cli._io import ENV_NAME, echo_json, json_option, open_keeper, read_secret
from grantkeeper.cli._session import Session
from grantkeeper.engine import Keeper
from grantkeeper.model import AuthMethod, Provider, RotationMode
from grantkeeper.profiles import Profile, get_profile, load_profiles, profile_values
from grantkeeper.tokens.discovery import choose_auth_method, discover
from grantkeeper.tokens.transport import Network

__all__ = ["provider"]

_SECRET_FIELDS = ("client_secret", "client_secret_env")
_KEY_FIELDS = ("private_key_file", "key_id", "jwt_audience")
_DAY = 86400.0


@click.group(cls=HelpGroup)
def provider() -> None:
    """Authorization servers: token endpoint, client credentials, rotation behaviour."""


def _pairs(values: tuple[str, ...], hint: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=hint)
        params[key.strip()] = value.strip()
    return params


def _param(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    return _pairs(values, "--param")


def authorize_param(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    return _pairs(values, "--authorize-param")


def _ca_bundle(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    path = os.path.abspath(value)
    try:
        with open(path, "rb") as pem:
            if b"-----BEGIN CERTIFICATE-----" not in pem.read(1 << 20):
                raise click.BadParameter(f"{path} holds no PEM certificate", param_hint="--ca-bundle")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--ca-bundle") from None
    return path


_COMMON_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--client-id", metavar="ID", help="The OAuth client id."),
    click.option("--authorization-url", metavar="URL",
                 help="The authorization endpoint, for 'grantkeeper connect' [default: the profile's or server's]."),
    click.option("--revocation-url", metavar="URL",
                 help="The RFC 7009 revocation endpoint, for 'grantkeeper grant revoke' [default: the server's]."),
    click.option("--device-authorization-url", metavar="URL",
                 help="The RFC 8628 device authorization endpoint, for 'grantkeeper connect --device' "
                      "[default: the server's]."),
    click.option("--client-secret-env", metavar="VAR", help="Read the client secret from $VAR at refresh time."),
    click.option("--client-secret-stdin", is_flag=True,
                 help="Read the client secret from standard input; stored encrypted."),
    click.option("--private-key-file", metavar="PEM",
                 help="private_key_jwt: PEM file of the RSA or EC P-256 key (read at refresh time, never stored)."),
    click.option("--key-id", metavar="KID", help="private_key_jwt: the key id (kid) the provider knows the key by."),
    click.option("--jwt-audience", metavar="URL",
                 help="private_key_jwt: the assertion's audience [default: the profile's choice, else the token URL]."),
    click.option("--auth-method", type=click.Choice([m.value for m in AuthMethod]),
                 help="Client authentication [default: the profile's or server's first, else client_secret_basic]."),
    click.option("--rotation", type=click.Choice([m.value for m in RotationMode]),
                 help="How the server rotates refresh tokens [default: the profile's, else always]."),
    click.option("--reuse-grace", type=float, metavar="SECONDS", help="Grace window for a superseded token."),
    click.option("--skew", type=float, metavar="SECONDS", help="Refresh this long before expiry [default: 30]."),
    click.option("--default-expires-in", type=float, metavar="SECONDS",
                 help="Access-token lifetime when the server omits expires_in [default: the profile's, else 3600]."),
    click.option("--refresh-idle-ttl", type=float, metavar="SECONDS",
                 help="The refresh token dies if unused this long; keep-alive refreshes ahead of it."),
    click.option("--refresh-absolute-ttl", type=float, metavar="SECONDS",
                 help="The consent dies this long after import, whatever happens; status warns ahead of it."),
    click.option("--send-scope/--no-send-scope", default=None,
                 help="Send the grant's scopes with every refresh (servers that require scope on refresh)."),
    click.option("--profile", "profile_name", metavar="PROFILE",
                 help="Start from a shipped provider profile ('grantkeeper provider profiles' lists them)."),
    click.option("--param", "params", multiple=True, metavar="NAME=VALUE", callback=_param,
                 help="Fill a profile placeholder, e.g. --param tenant=contoso.onmicrosoft.com (repeatable)."),
    click.option("--authorize-param", "authorize_params", multiple=True, metavar="NAME=VALUE",
                 callback=authorize_param,
                 help="Add a parameter to every 'grantkeeper connect' authorization request, e.g. "
                      "--authorize-param prompt=consent (repeatable; given, it replaces the stored set)."),
    click.option("--api-base-url", metavar="URL",
                 help="The provider's API base URL, where 'grantkeeper serve' proxies /v1/proxy/GRANT/PATH."),
    click.option("--ca-bundle", metavar="PEM", callback=_ca_bundle,
                 help="Verify the provider's TLS certificates with these CA certificates instead of the system's "
                      "(and $SSL_CERT_FILE)."),
    click.option("--proxy", metavar="URL",
                 help="Reach the provider's endpoints through this HTTP proxy, http://host:port (credentials "
                      "belong in $HTTPS_PROXY, never stored) [default: $HTTPS_PROXY / $NO_PROXY]."),
    click.option("--insecure-http/--no-insecure-http", default=None,
                 help="Allow plain http:// endpoints on hosts other than loopback (test rigs only: tokens travel "
                      "unencrypted)."),
]  # fmt: skip


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_COMMON_OPTIONS):
        command = option(command)
    return command


def _changes(name: str, options: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Provider fields given on the command line, and which credential fields were given explicitly."""
    if options["client_secret_env"] is not None and options["client_secret_stdin"]:
        raise click.UsageError("give --client-secret-env or --client-secret-stdin, not both")
    if options["client_secret_env"] is not None and not ENV_NAME.match(options["client_secret_env"]):
        raise click.BadParameter("must be an environment variable name", param_hint="--client-secret-env")
    plain = ("client_id", "authorization_url", "revocation_url", "private_key_file", "key_id", "jwt_audience",
             "device_authorization_url", "reuse_grace", "skew", "default_expires_in",
             "refresh_idle_ttl", "refresh_absolute_ttl", "send_scope", "api_base_url", "ca_bundle", "proxy",
             "insecure_http")  # fmt: skip
    changes = {key: options[key] for key in plain if options[key] is not None}
    if options["authorize_params"]:
        changes["authorize_params"] = tuple(options["authorize_params"].items())
    if options["private_key_file"] is not None:
        changes["private_key_file"] = os.path.abspath(options["private_key_file"])
    if options["auth_method"] is not None:
        changes["auth_method"] = AuthMethod(options["auth_method"])
    if options["rotation"] is not None:
        changes["rotation"] = RotationMode(options["rotation"])
    if options["client_secret_stdin"]:
        example = f"e.g. `printenv SECRET | grantkeeper provider add {name} ... --client-secret-stdin`"
        changes.update(client_secret=read_secret("client secret", example=example), client_secret_env=None)
    elif options["client_secret_env"] is not None:
        changes.update(client_secret=None, client_secret_env=options["client_secret_env"])
    explicit = {key for key in (*_SECRET_FIELDS, *_KEY_FIELDS) if changes.get(key) is not None}
    return changes, explicit


def _fit_credentials(values: dict[str, Any], explicit: set[str]) -> None:
    """Drop credentials the chosen method does not use, unless given on this command line (then the provider's
    own validation says what conflicts)."""
    method = values.get("auth_method", AuthMethod.CLIENT_SECRET_BASIC)
    unused: tuple[str, ...] = _SECRET_FIELDS if method in (AuthMethod.NONE, AuthMethod.PRIVATE_KEY_JWT) else ()
    if method is not AuthMethod.PRIVATE_KEY_JWT:
        unused += _KEY_FIELDS
    for key in unused:
        if key not in explicit:
            values[key] = None


def _existing(keeper: Keeper, name: str) -> Provider | None:
    try:
        return keeper.store.get_provider(name)
    except UnknownProvider:
        return None


def _field_values(provider: Provider) -> dict[str, Any]:
    return {f.name: getattr(provider, f.name) for f in fields(provider) if f.name != "name"}


def _merged(profile_name: str | None, params: dict[str, str], base: dict[str, Any],
            changes: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Stored values, then the profile's (if any), then the command line's."""
    if params and profile_name is None:
        raise click.UsageError("--param fills a profile's placeholders; give --profile too")
    if profile_name is None:
        values = {**base, **changes}
    else:
        decided = profile_values(get_profile(profile_name), params=params, auth_method=changes.get("auth_method"),
                                 token_url=changes.get("token_url"))  # fmt: skip
        values = {**base, **decided, **changes}
    for required in ("token_url", "client_id"):
        if not values.get(required):
            option = "--" + required.replace("_", "-")
            raise click.UsageError(f"{option} is required for a new provider" + (
                "" if profile_name else " (or start from --profile)"))  # fmt: skip
    return values


def _save(keeper: Keeper, name: str, values: dict[str, Any], explicit: set[str], existing: Provider | None) -> None:
    _fit_credentials(values, explicit)
    new = Provider(name=name, **values)
    keeper.add_provider(new)
    click.echo(f"provider {name} {'updated' if existing else 'added'}: {_render.provider_summary(new)}")
    needs_secret = new.auth_method in (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST)
    if needs_secret and new.client_secret is None and new.client_secret_env is None:
        click.echo(
            f"grantkeeper: warning: provider {name} has no client secret; refreshes will fail until you run "
            "'grantkeeper provider add' again with --client-secret-env or --client-secret-stdin",
            err=True,
        )
    elif new.client_secret_env is not None and not os.environ.get(new.client_secret_env):
        click.echo(
            f"grantkeeper: note: ${new.client_secret_env} is not set here; it must be set wherever grants of "
            f"provider {name} are refreshed",
            err=True,
        )


@provider.command("add")
@click.argument("name")
@click.option("--token-url", metavar="URL", help="The token endpoint (https, or http on loopback).")
@_common
@click.pass_obj
def provider_add(session: Session, /, name: str, token_url: str | None, profile_name: str | None,
                 params: dict[str, str], **options: Any) -> None:  # fmt: skip
    """Add provider NAME, or update it (options left out keep their current values).

    With --profile, the profile's token URL, rotation, grace, lifetimes and auth method are the starting point
    and every option given here overrides them.
    """
    changes, explicit = _changes(name, options)
    if token_url is not None:
        changes["token_url"] = token_url
    with open_keeper(session, create=True) as keeper:
        existing = _existing(keeper, name)
        base = _field_values(existing) if existing is not None else {}
        _save(keeper, name, _merged(profile_name, params, base, changes), explicit, existing)


@provider.command("list")
@json_option("Print a JSON list.")
@click.pass_obj
def provider_list(session: Session, as_json: bool) -> None:
    """List providers (never their secrets: only whether one is stored or which variable holds it)."""
    with open_keeper(session) as keeper:
        providers = keeper.store.list_providers()
    if as_json:
        echo_json([_render.provider_dict(p) for p in providers])
    elif not providers:
        click.echo("no providers in this store; add one with 'grantkeeper provider add'")
    else:
        _render.echo_table(*_render.provider_rows(providers))


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:g}d"


@provider.command("profiles")
@click.argument("name", required=False)
@json_option("Print the profiles (or one) as JSON, with sources.")
def provider_profiles(name: str | None, as_json: bool) -> None:
    """List the shipped provider profiles, or show profile NAME with the source of every fact."""
    profiles = [get_profile(name)] if name is not None else list(load_profiles().values())
    if as_json:
        data = [p.as_dict() for p in profiles]
        echo_json(data[0] if name is not None else data)
        return
    if name is not None:
        for line in _profile_lines(profiles[0]):
            click.echo(line)
        return
    rows = [_profile_row(p) for p in profiles]
    headers = ("PROFILE", "PROVIDER", "ROTATION", "GRACE", "RT IDLE", "RT MAX", "AUTH", "PARAMS", "SOURCED")
    _render.echo_table(headers, rows)


def _profile_row(p: Profile) -> tuple[str, ...]:
    grace = "-" if p.reuse_grace is None else f"{p.reuse_grace:g}s"
    sourced = f"{len(p.facts) - len(p.unverified())}/{len(p.facts)}"
    idle, absolute = _days(p.refresh_idle_ttl_days), _days(p.refresh_absolute_ttl_days)
    placeholders = ",".join(p.placeholders()) or "-"
    return (p.name, p.title, p.rotation, grace, idle, absolute, p.auth_methods[0].value, placeholders, sourced)


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _profile_lines(profile: Profile) -> list[str]:
    lines = [f"{profile.name}: {profile.title}" + (f" (sources checked {profile.checked})" if profile.checked else "")]
    data = profile.as_dict()
    for key, where in profile.facts.items():
        cited = where if isinstance(where, str) else ", ".join(profile.sources[s] for s in where)
        lines.append(f"  {key:<26} {_render.clean(_shown(data[key]))}")
        lines.append(f"  {'':<26}   source: {cited}")
    for key, text in (profile.params or {}).items():
        default = (profile.param_defaults or {}).get(key)
        lines.append(f"  --param {key}=...  {text}" + (f" [default: {default}]" if default else ""))
    if profile.notes:
        lines.append(f"  notes: {profile.notes}")
    return lines


@provider.command("discover")
@click.argument("name")
@click.option("--issuer", required=True, metavar="URL", help="The authorization server's issuer identifier.")
@_common
@click.pass_obj
def provider_discover(session: Session, /, name: str, issuer: str, profile_name: str | None, params: dict[str, str],
                      **options: Any) -> None:  # fmt: skip
    """Create or update provider NAME from the issuer's RFC 8414 / OpenID Connect metadata.

    The token endpoint and client authentication come from the metadata (the requested --auth-method must be
    one the server lists); rotation and lifetimes from --profile or the options given.
    """
    changes, explicit = _changes(name, options)
    with open_keeper(session, create=True) as keeper:
        existing = _existing(keeper, name)
        # Re-discovering a stored provider reaches its issuer the way its refreshes do: its CA bundle and proxy.
        stored = Network.of(existing) if existing is not None else Network()
        network = Network(options["ca_bundle"] or stored.ca_bundle, options["proxy"] or stored.proxy)
        metadata = discover(issuer, insecure_http=bool(options["insecure_http"]), network=network)
        if metadata.refresh_supported is False:
            raise ConfigurationError(
                f"{issuer} lists grant types {', '.join(metadata.grant_types or ())} without refresh_token; "
                "grantkeeper has nothing to keep for this server"
            )
        base = _field_values(existing) if existing is not None else {}
        requested = changes.get("auth_method")
        changes["auth_method"] = choose_auth_method(
            metadata.auth_methods, requested=requested,
            has_secret=bool({"client_secret", "client_secret_env"} & explicit) or bool(
                base.get("client_secret") or base.get("client_secret_env")),
            has_key=bool(changes.get("private_key_file") or base.get("private_key_file")),
        )  # fmt: skip
        changes["token_url"] = metadata.token_endpoint
        for key, found in (("authorization_url", metadata.authorization_endpoint),
                           ("revocation_url", metadata.revocation_endpoint),
                           ("device_authorization_url", metadata.device_authorization_endpoint)):  # fmt: skip
            if found is not None:
                changes.setdefault(key, found)
        _save(keeper, name, _merged(profile_name, params, base, changes), explicit, existing)
    methods = _render.clean(", ".join(metadata.auth_methods))  # the server's own words: no terminal escapes
    click.echo(f"metadata read from {_render.clean(metadata.source)}; server auth methods: {methods}")
    if metadata.refresh_supported is None:
        click.echo("grantkeeper: note: the metadata does not list grant types; refresh support is assumed", err=True)
