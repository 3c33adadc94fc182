"""The ``grantkeeper`` command: thin commands over `Keeper` and the store, one error boundary.

Every command parses its options, calls the library, and prints. No command prints a token or a client secret
except ``grantkeeper token``, whose whole output is one access token. Errors become exit codes in exactly one
place, `GrantkeeperGroup.main` (see docs/cli.md for the table):

* a `GrantkeeperError` prints ``grantkeeper: error[<code>]: <message>`` and exits with its ``exit_code``;
* Click usage errors exit 2;
* anything else is a bug: exit 1 with a one-line message (the traceback only with ``--verbose``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import click

from grantkeeper import __version__
from grantkeeper._exceptions import (
    ConfigurationError,
    GrantkeeperError,
    UnknownGrant,
    UnknownProvider,
    sanitize_provider_text,
)
from grantkeeper._secrets import Secret
from grantkeeper.cli import _render
from grantkeeper.cli._session import Session
from grantkeeper.cli.demo import demo
from grantkeeper.cli.diagnose import EXIT_ATTENTION, doctor, history
from grantkeeper.cli.keys import keys
from grantkeeper.engine import Keeper
from grantkeeper.model import AuthMethod, Provider, RotationMode
from grantkeeper.stores import backend, open_store
from grantkeeper.stores.migrations import latest_version

__all__ = ["GrantkeeperGroup", "cli", "main"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


class GrantkeeperGroup(click.Group):
    """The root command. Its `main` wraps Click's and is the one boundary where errors become exit codes."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        session = Session()
        extra.setdefault("obj", session)
        try:
            code = self._run(args, prog_name or "grantkeeper", complete_var, windows_expand_args, extra, session)
        finally:
            session.close_logging()
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str,
        complete_var: str | None,
        windows_expand_args: bool,
        extra: dict[str, Any],
        session: Session,
    ) -> int:
        try:
            rv = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        except GrantkeeperError as exc:
            click.echo(f"grantkeeper: error[{exc.code}]: {exc.message}", err=True)
            if session.verbose:
                click.echo(f"grantkeeper: evidence: {json.dumps(exc.evidence(), default=str)}", err=True)
            return exc.exit_code
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                click.echo("grantkeeper: interrupted", err=True)
                return EXIT_INTERRUPTED
            click.echo("Aborted!", err=True)
            return EXIT_UNEXPECTED
        except KeyboardInterrupt:
            click.echo("grantkeeper: interrupted", err=True)
            return EXIT_INTERRUPTED
        except Exception as exc:
            if session.verbose:
                click.echo(traceback.format_exc(), err=True, nl=False)
            # Not our error type, so its text was never vetted for secrets: cut anything token-like out.
            detail = sanitize_provider_text(exc, limit=200)
            hint = "" if session.verbose else " (run with -v for the traceback)"
            click.echo(f"grantkeeper: unexpected error: {type(exc).__name__}: {detail}{hint}", err=True)
            return EXIT_UNEXPECTED
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


@click.group(cls=GrantkeeperGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="Store URL, e.g. sqlite:///path/to/grantkeeper.db [default: $GRANTKEEPER_STORE, else a file in the "
    "user data directory].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log the grantkeeper logger at INFO to stderr.")
@click.version_option(__version__, prog_name="grantkeeper")
@click.pass_obj
def cli(session: Session, store_url: str | None, verbose: bool) -> None:
    """Keep OAuth 2.0 grants alive when authorization servers rotate refresh tokens."""
    session.store_url = store_url
    session.configure_logging(verbose)


def _url(session: Session) -> str:
    return session.url()


def _open(session: Session, *, create: bool = False) -> Keeper:
    """A keeper on the chosen store. Only ``provider add`` creates a store; other commands need one."""
    return session.keeper(create=create)


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _read_secret(what: str, *, example: str) -> Secret:
    """One secret line from standard input (a hidden prompt on a terminal), stripped; empty is an error."""
    stream = sys.stdin
    if stream is None:
        raise ConfigurationError(f"no standard input to read the {what} from; {example}")
    # One line only: a caller may keep the pipe open after writing it.
    value = click.prompt(what.capitalize(), hide_input=True, err=True) if stream.isatty() else stream.readline()
    value = value.strip()
    if not value:
        raise ConfigurationError(f"the {what} on standard input is empty; {example}")
    return Secret(value)


# ------------------------------------------------------------------------------------------------ provider


@cli.group()
def provider() -> None:
    """Authorization servers: token endpoint, client credentials, rotation behaviour."""


@provider.command("add")
@click.argument("name")
@click.option("--token-url", required=True, metavar="URL", help="The token endpoint (https, or http on loopback).")
@click.option("--client-id", required=True, metavar="ID", help="The OAuth client id.")
@click.option("--client-secret-env", metavar="VAR", help="Read the client secret from $VAR at refresh time.")
@click.option(
    "--client-secret-stdin", is_flag=True, help="Read the client secret from standard input; stored encrypted."
)
@click.option(
    "--auth-method",
    type=click.Choice([m.value for m in AuthMethod]),
    help="Client authentication [default: client_secret_basic].",
)
@click.option(
    "--rotation",
    type=click.Choice([m.value for m in RotationMode]),
    help="How the server rotates refresh tokens [default: always].",
)
@click.option("--reuse-grace", type=float, metavar="SECONDS", help="Grace window for a superseded token [default: 0].")
@click.option("--skew", type=float, metavar="SECONDS", help="Refresh this long before expiry [default: 30].")
@click.option(
    "--default-expires-in",
    type=float,
    metavar="SECONDS",
    help="Access-token lifetime when the server omits expires_in [default: 3600].",
)
@click.option(
    "--refresh-idle-ttl",
    type=float,
    metavar="SECONDS",
    help="The refresh token dies if unused this long; 'keepalive' refreshes ahead of it.",
)
@click.option(
    "--refresh-absolute-ttl",
    type=float,
    metavar="SECONDS",
    help="The consent dies this long after import, whatever happens; 'keepalive' warns ahead of it.",
)
@click.pass_obj
def provider_add(
    session: Session,
    name: str,
    token_url: str,
    client_id: str,
    client_secret_env: str | None,
    client_secret_stdin: bool,
    auth_method: str | None,
    rotation: str | None,
    reuse_grace: float | None,
    skew: float | None,
    default_expires_in: float | None,
    refresh_idle_ttl: float | None,
    refresh_absolute_ttl: float | None,
) -> None:
    """Add provider NAME, or update it (options left out keep their current values)."""
    if client_secret_env is not None and client_secret_stdin:
        raise click.UsageError("give --client-secret-env or --client-secret-stdin, not both")
    if client_secret_env is not None and not _ENV_NAME.match(client_secret_env):
        raise click.BadParameter("must be an environment variable name", param_hint="--client-secret-env")
    changes: dict[str, Any] = {"token_url": token_url, "client_id": client_id}
    options = {"auth_method": auth_method and AuthMethod(auth_method), "rotation": rotation and RotationMode(rotation),
               "reuse_grace": reuse_grace, "skew": skew, "default_expires_in": default_expires_in,
               "refresh_idle_ttl": refresh_idle_ttl, "refresh_absolute_ttl": refresh_absolute_ttl}  # fmt: skip
    changes.update({key: value for key, value in options.items() if value is not None})
    if client_secret_stdin:
        example = f"e.g. `printenv SECRET | grantkeeper provider add {name} ... --client-secret-stdin`"
        changes.update(client_secret=_read_secret("client secret", example=example), client_secret_env=None)
    elif client_secret_env is not None:
        changes.update(client_secret=None, client_secret_env=client_secret_env)
    elif changes.get("auth_method") is AuthMethod.NONE:
        changes.update(client_secret=None, client_secret_env=None)
    with _open(session, create=True) as keeper:
        try:
            existing: Provider | None = keeper.store.get_provider(name)
        except UnknownProvider:
            existing = None
        new = replace(existing, **changes) if existing is not None else Provider(name=name, **changes)
        keeper.add_provider(new)
    click.echo(f"provider {name} {'updated' if existing else 'added'}: {_render.provider_summary(new)}")
    if new.auth_method is not AuthMethod.NONE and new.client_secret is None and new.client_secret_env is None:
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


@provider.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def provider_list(session: Session, as_json: bool) -> None:
    """List providers (never their secrets: only whether one is stored or which variable holds it)."""
    with _open(session) as keeper:
        providers = keeper.store.list_providers()
    if as_json:
        _echo_json([_render.provider_dict(p) for p in providers])
    elif not providers:
        click.echo("no providers in this store; add one with 'grantkeeper provider add'")
    else:
        for line in _render.provider_rows(providers):
            click.echo(line)


# --------------------------------------------------------------------------------------------------- grant


@cli.group()
def grant() -> None:
    """Grants: named authorizations whose refresh tokens grantkeeper keeps."""


@grant.command("import")
@click.argument("name")
@click.option("--provider", "provider_name", required=True, metavar="PROVIDER", help="The provider that issued it.")
@click.option("--scope", "scopes", multiple=True, metavar="SCOPE", help="A granted scope (repeatable).")
@click.pass_obj
def grant_import(session: Session, name: str, provider_name: str, scopes: tuple[str, ...]) -> None:
    """Import grant NAME; the refresh token is read from standard input (hidden prompt on a terminal)."""
    example = f"e.g. `grantkeeper grant import {name} --provider {provider_name} < refresh-token.txt`"
    token = _read_secret("refresh token", example=example)
    scope = tuple(dict.fromkeys(s for arg in scopes for s in arg.split()))
    with _open(session) as keeper:
        try:
            keeper.store.get_grant(name)
            existed = True
        except UnknownGrant:
            existed = False
        imported = keeper.import_grant(name, provider=provider_name, refresh_token=token, scopes=scope)
    click.echo(
        f"grant {imported.name} {'re-imported' if existed else 'imported'}: provider {imported.provider}, "
        f"generation {imported.generation}, refresh token {imported.refresh_fp}"
    )


# ----------------------------------------------------------------------------------------------- the verbs


@cli.command()
@click.argument("name")
@click.pass_obj
def token(session: Session, name: str) -> None:
    """Print a valid access token for grant NAME (refreshing if needed) and nothing else.

    Safe to run from many processes at once: one of them refreshes, the others use its result.
    """
    with _open(session) as keeper:
        value = keeper.access_token(name)
    click.echo(value)


@cli.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Refresh even if the access token is still usable.")
@click.pass_obj
def refresh(session: Session, name: str, force: bool) -> None:
    """Refresh grant NAME if its access token is not usable (always, with --force)."""
    with _open(session) as keeper:
        before = keeper.store.get_grant(name).generation
        after = keeper.refresh(name, force=force)
    if after.generation > before:
        click.echo(f"grant {name} refreshed: generation {before} -> {after.generation}")
    else:
        click.echo(f"grant {name} not refreshed: its access token is still usable (--force refreshes anyway)")
    for line in _render.grant_summary(after, time.time()):
        click.echo(line)


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print GrantStatus data as JSON.")
@click.pass_obj
def status(session: Session, name: str | None, as_json: bool) -> None:
    """Show every grant, or everything known about grant NAME (fingerprints, lease, attempts)."""
    with _open(session) as keeper:
        names = [name] if name is not None else [g.name for g in keeper.grants()]
        statuses = [keeper.status(n) for n in names]
    now = time.time()
    if as_json:
        _echo_json(statuses[0].as_dict() if name is not None else [s.as_dict() for s in statuses])
    elif name is not None:
        for line in _render.status_lines(statuses[0], now):
            click.echo(line)
    elif not statuses:
        click.echo("no grants in this store; import one with 'grantkeeper grant import'")
    else:
        for line in _render.status_rows(statuses, now):
            click.echo(line)


@cli.command()
@click.option("--margin", type=float, default=7 * 86400.0, show_default=True, metavar="SECONDS",
              help="Act on refresh tokens that would expire within this many seconds.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_obj
def keepalive(session: Session, margin: float, as_json: bool) -> None:
    """Refresh grants whose refresh token would die from disuse soon; warn about consents that end soon.

    Uses each provider's --refresh-idle-ttl and --refresh-absolute-ttl. Run it daily from a scheduler. Exits
    12 if any grant needs attention (a failed refresh or a consent about to end), else 0.
    """
    with _open(session) as keeper:
        results = keeper.keepalive(margin=margin)
    if as_json:
        _echo_json([{"grant": r.grant, "action": r.action, "deadline": r.deadline, "detail": r.detail}
                    for r in results])  # fmt: skip
    elif not results:
        click.echo("no grant needs a keep-alive refresh")
    for r in [] if as_json else results:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.deadline))
        click.echo(f"{r.grant}: {r.action} (deadline {when}): {r.detail}")
    if any(r.action != "refreshed" for r in results):
        raise click.exceptions.Exit(EXIT_ATTENTION)


@cli.command()
@click.pass_obj
def migrate(session: Session) -> None:
    """Upgrade the store's schema to this grantkeeper's version (back the store up first)."""
    store = open_store(_url(session), migrate=True)
    try:
        version = store.schema_version()
    finally:
        store.close()
    latest = latest_version(backend(_url(session)))
    click.echo(f"store schema version {version}" + (" (up to date)" if version == latest else ""))


cli.add_command(demo)
cli.add_command(doctor)
cli.add_command(history)
cli.add_command(keys)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: run the CLI and return its exit status."""
    code: int = cli.main(args=argv, prog_name="grantkeeper", standalone_mode=False)
    return code
