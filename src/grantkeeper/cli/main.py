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
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from grantkeeper import __version__
from grantkeeper._exceptions import (
    ConfigurationError,
    GrantkeeperError,
    UnknownGrant,
    sanitize_provider_text,
)
from grantkeeper.admin import migrate as migrate_store
from grantkeeper.cli import _render
from grantkeeper.cli._help import HelpGroup
from grantkeeper.cli._io import DURATION, json_option
from grantkeeper.cli._io import echo_json as _echo_json
from grantkeeper.cli._io import interactive as _interactive
from grantkeeper.cli._io import on_terminal as _on_terminal
from grantkeeper.cli._io import open_keeper as _open
from grantkeeper.cli._io import read_token_text as _read_token_text
from grantkeeper.cli._io import store_url as _url
from grantkeeper.cli._progress import progress_bar
from grantkeeper.cli._session import Session
from grantkeeper.cli.apikey import apikey
from grantkeeper.cli.audit import audit
from grantkeeper.cli.completion import complete_provider, completion, grant_argument
from grantkeeper.cli.connect import connect_command
from grantkeeper.cli.demo import demo
from grantkeeper.cli.diagnose import EXIT_ATTENTION, doctor, history
from grantkeeper.cli.keys import keys
from grantkeeper.cli.providers import provider
from grantkeeper.cli.schedule import report_due, schedule, set_grant
from grantkeeper.cli.serve import serve
from grantkeeper.cli.transfer import export, import_
from grantkeeper.consent import revoke
from grantkeeper.engine import Keeper
from grantkeeper.engine.keeper import KeepaliveResult
from grantkeeper.integrations._flow import checked_token
from grantkeeper.model import Grant, check_name
from grantkeeper.redact.tracebacks import format_exception
from grantkeeper.tokens.token_input import read_token_input

__all__ = ["GrantkeeperGroup", "cli", "main"]

EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


class GrantkeeperGroup(HelpGroup):
    """The root command. Its `main` wraps Click's and is the one boundary where errors become exit codes."""

    sections = (
        ("Set up", ("provider", "connect", "grant", "apikey")),
        ("Use", ("token", "status", "refresh", "keepalive", "serve", "schedule")),
        ("Diagnose", ("doctor", "history", "audit", "demo")),
        ("Move and maintain", ("export", "import", "keys", "migrate", "completion")),
    )

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
            return _report_error(exc, verbose=session.verbose)
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except (click.Abort, KeyboardInterrupt) as exc:
            return _report_interruption(exc)
        except Exception as exc:
            return _report_bug(exc, verbose=session.verbose)
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def _report_error(exc: GrantkeeperError, *, verbose: bool) -> int:
    """Ours: its message was written to be shown (no secret in it), and its code says what to do."""
    click.echo(f"grantkeeper: error[{exc.code}]: {exc.message}", err=True)
    if verbose:
        click.echo(f"grantkeeper: evidence: {json.dumps(exc.evidence(), default=str)}", err=True)
    return exc.exit_code


def _report_interruption(exc: click.Abort | KeyboardInterrupt) -> int:
    """Ctrl-C anywhere, or Ctrl-C / Ctrl-D at a prompt: Click turns those into ``Abort() from None``, so the
    reason is the Abort's context."""
    reason = exc if isinstance(exc, KeyboardInterrupt) else exc.__cause__ or exc.__context__
    if isinstance(reason, KeyboardInterrupt):
        click.echo("grantkeeper: interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(reason, EOFError):
        click.echo("\ngrantkeeper: cancelled: the prompt got end of input (Ctrl-D); nothing changed", err=True)
        return EXIT_INTERRUPTED
    click.echo("Aborted!", err=True)
    return EXIT_UNEXPECTED


def _report_bug(exc: Exception, *, verbose: bool) -> int:
    """Not our error type, so its text was never vetted for secrets: anything token-like is cut out of it."""
    if verbose:
        click.echo(format_exception(exc), err=True, nl=False)  # scrubbed: a library's text may hold a token
    detail = sanitize_provider_text(exc, limit=200)
    hint = "" if verbose else " (run with -v for the traceback)"
    click.echo(f"grantkeeper: unexpected error: {type(exc).__name__}: {detail}{hint}", err=True)
    return EXIT_UNEXPECTED


_TYPICAL_USE = """\b
Typical use:
  grantkeeper provider add acme --profile P ...   # or: provider discover
  grantkeeper connect alice --provider acme       # or: grant import
  grantkeeper token alice                         # refreshes when needed
  grantkeeper keepalive                           # daily, from a scheduler
  grantkeeper status                              # every grant's health

Run 'grantkeeper COMMAND --help' for a command's options. Exit status: 0 ok, 2 usage, 3 fix the
configuration, 4 fix the client credentials, 5 a user must consent again, 6-8 retry later, 12 a grant
needs attention (the full table is in docs/cli.md).
"""


@click.group(cls=GrantkeeperGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_TYPICAL_USE)
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="Store URL, e.g. sqlite:///path/to/grantkeeper.db [default: $GRANTKEEPER_STORE, else a file in the "
    "user data directory].",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log what grantkeeper does to stderr, and tracebacks of unexpected errors (never a token).",
)
@click.version_option(__version__, prog_name="grantkeeper")
@click.pass_obj
def cli(session: Session, store_url: str | None, verbose: bool) -> None:
    """Keep OAuth 2.0 grants alive when authorization servers rotate refresh tokens.

    A grant is one user's consent at one provider (authorization server). grantkeeper keeps its refresh token
    encrypted in a store, refreshes it once for every process that needs an access token, and saves each
    rotated refresh token before handing out the access token, so a rotation is never lost.
    """
    session.store_url = store_url
    session.configure_logging(verbose)


# --------------------------------------------------------------------------------------------------- grant


@cli.group(cls=HelpGroup)
def grant() -> None:
    """Grants: named authorizations whose refresh tokens grantkeeper keeps."""


@grant.command("import")
@grant_argument()
@click.option(
    "--provider",
    "provider_name",
    required=True,
    metavar="PROVIDER",
    shell_complete=complete_provider,
    help="The provider that issued it.",
)
@click.option("--scope", "scopes", multiple=True, metavar="SCOPE",
              help="A granted scope (repeatable) [default: a token response's scope].")  # fmt: skip
@click.option("--replace", is_flag=True, help="Replace grant NAME if it exists (after the user consented again).")
@json_option("Print the stored grant as JSON (fingerprints, no token).")
@click.pass_obj
def grant_import(
    session: Session, name: str, provider_name: str, scopes: tuple[str, ...], replace: bool, as_json: bool
) -> None:
    """Import grant NAME: its refresh token, or the provider's JSON token response, from standard input.

    On a terminal it asks with a hidden prompt. Of a token response, the refresh token, access token, expiry and
    scope are kept.

    Anything else (a header such as 'Bearer ...', several lines, quotes) is refused, and so is a refresh token
    that this grant's history shows was already spent.
    """
    example = f"e.g. `grantkeeper grant import {name} --provider {provider_name} < refresh-token.txt`"
    scope = tuple(dict.fromkeys(s for arg in scopes for s in arg.split()))
    with _open(session) as keeper:
        # Everything that can be refused is checked before the person types (or pastes) the token.
        check_name(name, "grant")
        keeper.store.get_provider(provider_name)
        existing = _existing_grant(keeper, name)
        if existing is not None and not replace:
            raise ConfigurationError(
                f"grant {name!r} already exists (provider {existing.provider}, generation {existing.generation}, "
                f"{existing.state.value}); nothing was read or stored. To replace its refresh token after the user "
                f"consented again, run 'grantkeeper grant import {name} --provider {provider_name} --replace'"
            )
        text, issued_at = _read_token_text("refresh token", example=example)
        given = read_token_input(text.reveal(), issued_at=issued_at)
        usable = given.access_token is not None and given.expires_at is not None and given.expires_at > time.time()
        imported = keeper.import_grant(
            name, provider=provider_name, refresh_token=given.refresh_token, scopes=scope or given.scopes,
            access_token=given.access_token if usable else None, expires_at=given.expires_at if usable else None,
        )  # fmt: skip
    if as_json:
        _echo_json({**_render.grant_record(imported), "replaced": existing is not None})
        return
    kept = f", access token {imported.access_fp}" if imported.access_fp else ""
    click.echo(
        f"grant {imported.name} {'re-imported' if existing is not None else 'imported'}: provider "
        f"{imported.provider}, generation {imported.generation}, refresh token {imported.refresh_fp}{kept}"
    )


def _existing_grant(keeper: Keeper, name: str) -> Grant | None:
    try:
        return keeper.store.get_grant(name)
    except UnknownGrant:
        return None


@grant.command("revoke")
@grant_argument()
@click.option("--local-only", is_flag=True, help="Do not contact the provider: only remove the grant here.")
@json_option("Print the removed grant as JSON (fingerprints, no token).")
@click.pass_obj
def grant_revoke(session: Session, name: str, local_only: bool, as_json: bool) -> None:
    """Revoke grant NAME at its provider (RFC 7009), then remove it from the store.

    Nothing is removed unless the provider confirms; a provider without a revocation endpoint is an error
    (set one with 'provider add --revocation-url', or give --local-only).
    """
    with _open(session) as keeper:
        revoked = revoke(keeper, name, local_only=local_only)
    if as_json:
        _echo_json({**_render.grant_record(revoked), "revoked_at_provider": not local_only, "removed": True})
        return
    where = "removed locally (not revoked at the provider)" if local_only else "revoked at the provider and removed"
    click.echo(f"grant {revoked.name} {where}: provider {revoked.provider}, refresh token {revoked.refresh_fp}")


@grant.command("list")
@json_option("Print the grants as JSON.")
@click.pass_obj
def grant_list(session: Session, as_json: bool) -> None:
    """List every grant: provider, state, generation, access token expiry, last error (fingerprints only)."""
    with _open(session) as keeper:
        statuses = [keeper.status(g.name) for g in keeper.grants()]
    if as_json:
        _echo_json([_render.grant_dict(s) for s in statuses])
    elif not statuses:
        click.echo("no grants in this store; import one with 'grantkeeper grant import'")
    else:
        _render.echo_table(*_render.status_rows(statuses, time.time(), terminal=_on_terminal()))


@grant.command("show")
@grant_argument()
@json_option("Print everything known about the grant as JSON.")
@click.pass_context
def grant_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show everything known about grant NAME (the same as 'grantkeeper status NAME')."""
    ctx.invoke(status, name=name, as_json=as_json, expiring=None)


@grant.command("remove")
@grant_argument()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@json_option("Print the removed grant as JSON (needs --yes: never asks).")
@click.pass_obj
def grant_remove(session: Session, name: str, yes: bool, as_json: bool) -> None:
    """Remove grant NAME from this store (its refresh token is forgotten here, not revoked at the provider).

    Asks for confirmation on a terminal; without one, or with --json, --yes is required and nothing is ever
    prompted.
    """
    with _open(session) as keeper:
        removed = keeper.store.get_grant(name)  # an unknown name is an error before any question
        if not yes:
            if as_json or not _interactive():
                why = "--json output is for scripts" if as_json else "standard input is not a terminal"
                raise ConfigurationError(
                    f"not removing grant {name!r}: {why}, so there is nobody to confirm; run 'grantkeeper grant "
                    f"remove {name} --yes'"
                )
            if not click.confirm(f"Remove grant {name!r} from this store?", default=False, err=True):
                click.echo(f"grant {name} kept")
                raise click.exceptions.Exit(1)
        keeper.store.delete_grant(name)
    if as_json:
        _echo_json({**_render.grant_record(removed), "revoked_at_provider": False, "removed": True})
        return
    click.echo(f"grant {name} removed from this store (not revoked at the provider)")


# ----------------------------------------------------------------------------------------------- the verbs


@cli.command()
@grant_argument()
@click.option("--header", is_flag=True, help="Print 'Authorization: Bearer TOKEN', for 'curl -H @-' (the token "
              "then never appears in a command line that other users see in ps).")  # fmt: skip
@click.pass_obj
def token(session: Session, name: str, header: bool) -> None:
    """Print a valid access token for grant NAME (refreshing if needed) and nothing else.

    Safe to run from many processes at once: one of them refreshes, the others use its result. With --header,
    pipe it to curl, which reads the header from standard input:

    \b
      grantkeeper token NAME --header | curl -H @- https://api.example/v1/things
    """
    with _open(session) as keeper:
        value = keeper.access_token(name)
    value = checked_token(name, value)  # never a CR/LF or escape sequence into $(...) or onto a terminal
    click.echo(f"Authorization: Bearer {value}" if header else value)


def _stored_generation(keeper: Keeper, name: str) -> int:
    """The generation the store holds now; -1 if it cannot be read (then nothing newer is known to be there)."""
    try:
        return keeper.store.get_grant(name).generation
    except GrantkeeperError:
        return -1


@cli.command()
@grant_argument(required=False)
@click.option("--force", is_flag=True, help="Refresh even if the access token is still usable.")
@click.option("--due", is_flag=True, help="Instead of NAME: keep-alive refresh every grant whose refresh token "
              "would end from disuse within --window (see 'status --expiring').")  # fmt: skip
@click.option("--window", type=DURATION, default="7d", show_default=True, help="With --due: how far ahead to look.")
@json_option("Print the result as JSON.")
@click.pass_obj
def refresh(session: Session, name: str | None, force: bool, due: bool, window: float, as_json: bool) -> None:
    """Refresh grant NAME now if its access token is not usable (always, with --force).

    With --due instead of NAME: refresh every grant whose refresh token would end from disuse within --window,
    as 'keepalive' does (exits 12 if a grant needs attention).
    """
    if due == (name is not None):
        raise click.UsageError("give a grant NAME or --due, not both or neither")
    if name is None:
        with _open(session) as keeper, progress_bar("refreshing grants", enabled=not as_json) as progress:
            results = keeper.keepalive(margin=window, progress=progress)
        _report_keepalive(results, as_json=as_json)
        return
    with _open(session) as keeper:
        before = keeper.store.get_grant(name).generation
        after = keeper.refresh(name, force=force)
        committed = _stored_generation(keeper, name) >= after.generation
    if as_json:
        _echo_json({"name": after.name, "refreshed": after.generation > before, "previous_generation": before,
                    "generation": after.generation, "committed": committed, "refresh_fp": after.refresh_fp,
                    "access_fp": after.access_fp, "expires_at": after.expires_at})  # fmt: skip
    elif after.generation > before and not committed:
        click.echo(f"grant {name} refreshed: generation {before} -> {after.generation}, kept in local recovery "
                   "storage because the store could not be written; the next grantkeeper command on this host "
                   "commits it")  # fmt: skip
    elif after.generation > before:
        click.echo(f"grant {name} refreshed: generation {before} -> {after.generation}")
    else:
        click.echo(f"grant {name} not refreshed: its access token is still usable (--force refreshes anyway)")
    if not as_json:
        for line in _render.grant_summary(after, time.time()):
            click.echo(line)


@cli.command()
@grant_argument(required=False)
@json_option("Print the status (a list without NAME) as JSON.")
@click.option("--expiring", type=DURATION, metavar="WINDOW",
              help="Instead: list grants whose refresh token or consent ends within WINDOW (e.g. 7d).")  # fmt: skip
@click.option("--due", is_flag=True, help="Instead: what the refresh scheduler does next, grant by grant.")
@click.pass_obj
def status(session: Session, name: str | None, as_json: bool, expiring: float | None, due: bool = False) -> None:
    """Show every grant, or everything known about grant NAME (fingerprints, lease, attempts).

    With --expiring, list the grants whose refresh token ends within the window (idle or stated lifetime:
    'refresh --due' renews them) or whose consent ends (absolute lifetime: re-consent needed; exit 12).
    With --due, list the grants the scheduler looks at first and the action planned for each.
    """
    if due:
        report_due(session, as_json=as_json)
        return
    if expiring is not None:
        _report_expiring(session, name, expiring, as_json=as_json)
        return
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
        _render.echo_table(*_render.status_rows(statuses, now, terminal=_on_terminal()))


@cli.command()
@click.option("--margin", type=DURATION, default="7d", show_default=True,
              help="Act on refresh tokens and consents that end within this long (90s, 30m, 12h, 7d, 2w).")  # fmt: skip
@json_option("Print the results as JSON.")
@click.pass_obj
def keepalive(session: Session, margin: float, as_json: bool) -> None:
    """Refresh grants whose refresh token would die from disuse soon; warn about consents that end soon.

    Uses each provider's --refresh-idle-ttl and --refresh-absolute-ttl. Run it daily from a scheduler. Exits
    12 if any grant needs attention (a failed refresh or a consent about to end), else 0.
    """
    with _open(session) as keeper, progress_bar("refreshing grants", enabled=not as_json) as progress:
        results = keeper.keepalive(margin=margin, progress=progress)
    _report_keepalive(results, as_json=as_json)


def _report_keepalive(results: list[KeepaliveResult], *, as_json: bool) -> None:
    if as_json:
        _echo_json([{"grant": r.grant, "action": r.action, "deadline": r.deadline, "detail": r.detail}
                    for r in results])  # fmt: skip
    elif not results:
        click.echo("no grant needs a keep-alive refresh")
    for r in [] if as_json else results:
        when = _render.iso_utc(r.deadline)
        click.echo(f"{r.grant}: {r.action} (deadline {when}): {r.detail}")
    if any(r.action != "refreshed" for r in results):
        raise click.exceptions.Exit(EXIT_ATTENTION)


def _report_expiring(session: Session, name: str | None, window: float, *, as_json: bool) -> None:
    with _open(session) as keeper:
        if name is not None:
            keeper.store.get_grant(name)  # an unknown name is an error, not an empty report
        ends = [e for e in keeper.expiring(window) if name is None or e.grant == name]
    now = time.time()
    if as_json:
        _echo_json([{"grant": e.grant, "provider": e.provider, "kind": e.kind, "deadline": e.deadline,
                     "renewable": e.renewable} for e in ends])  # fmt: skip
    elif not ends:
        click.echo("no refresh token or consent ends within the window")
    else:
        terminal = _on_terminal()
        rows = [(e.grant, e.provider, e.kind,
                 _render.Styled(_render.relative(e.deadline, now), "yellow" if e.renewable else "bold red")
                 if terminal else f"{_render.iso_utc(e.deadline)} ({_render.relative(e.deadline, now)})",
                 "refresh --due renews it" if e.renewable else "re-consent needed") for e in ends]  # fmt: skip
        _render.echo_table(("GRANT", "PROVIDER", "LIFETIME", "ENDS", "ACTION"), rows)
    if any(not e.renewable for e in ends):
        raise click.exceptions.Exit(EXIT_ATTENTION)


@cli.command()
@click.pass_obj
def migrate(session: Session) -> None:
    """Upgrade the store's schema to this grantkeeper's version (back the store up first)."""
    schema = migrate_store(_url(session))
    click.echo(f"store schema version {schema.version}" + (" (up to date)" if schema.up_to_date else ""))


cli.add_command(provider)
cli.add_command(connect_command)
cli.add_command(demo)
cli.add_command(doctor)
cli.add_command(history)
cli.add_command(keys)
cli.add_command(export)
cli.add_command(import_)
cli.add_command(completion)
cli.add_command(serve)
cli.add_command(schedule)
grant.add_command(set_grant)
cli.add_command(apikey)
cli.add_command(audit)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: run the CLI and return its exit status."""
    code: int = cli.main(args=argv, prog_name="grantkeeper", standalone_mode=False)
    return code
