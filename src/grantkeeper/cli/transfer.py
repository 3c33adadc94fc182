"""``grantkeeper export`` and ``grantkeeper import``: encrypted bundles of grants (through `grantkeeper.admin`)."""

from __future__ import annotations

from pathlib import Path

import click

from grantkeeper._exceptions import ConfigurationError
from grantkeeper._secrets import Secret
from grantkeeper.admin import Admin, BundleKey, open_bundle, read_bundle, read_header, write_bundle
from grantkeeper.cli import _render
from grantkeeper.cli._io import echo_json, interactive, json_option, open_keeper, read_secret
from grantkeeper.cli._progress import progress_bar
from grantkeeper.cli._session import Session
from grantkeeper.cli.completion import complete_grant

__all__ = ["export", "import_"]

_SAME_TOKEN = (
    "the bundle holds the same refresh tokens this store uses: keep using each grant on one host only (remove it "
    "from the other with 'grantkeeper grant remove'); refreshing it on both spends the same refresh token twice, "
    "and a rotating provider then revokes the grant"
)
_SAME_TOKEN_IMPORTED = (
    "the grants just imported hold the same refresh tokens as the store they were exported from: use each grant "
    "on one host only (remove it there with 'grantkeeper grant remove', or here); refreshing it in both stores "
    "spends the same refresh token twice, and a rotating provider then revokes the grant"
)

_FILE = click.Path(dir_okay=False, path_type=Path)


def _key(passphrase_stdin: bool, key_file: Path | None, *, example: str, confirm: bool = False) -> BundleKey:
    if passphrase_stdin == (key_file is not None):
        raise click.UsageError("give exactly one of --passphrase-stdin and --key-file")
    if key_file is not None:
        return BundleKey.key_file(key_file)
    if confirm and interactive():  # a mistyped export passphrase would lock the bundle for good
        return click.prompt("Bundle passphrase", hide_input=True, confirmation_prompt=True, err=True,
                            value_proc=_passphrase_or_ask_again)  # fmt: skip
    return BundleKey.passphrase(read_secret("bundle passphrase", example=example))


def _passphrase_or_ask_again(value: str) -> BundleKey:
    """A too-short passphrase typed at the prompt is asked for again (Click re-prompts on a UsageError)."""
    try:
        return BundleKey.passphrase(Secret(value.strip()))
    except ConfigurationError as exc:
        raise click.UsageError(exc.message) from None


def _protection_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--key-file", type=_FILE, metavar="PATH",
                      help="A file of 32 random bytes (raw or base64url; mode 0600), e.g. from "
                      "'grantkeeper keys generate --output PATH'.")(fn)  # fmt: skip
    help_text = "Read the passphrase from standard input (a hidden prompt on a terminal)."
    return click.option("--passphrase-stdin", is_flag=True, help=help_text)(fn)


@click.command(short_help="Write grants and their providers to an encrypted bundle FILE.")
@click.argument("file", type=_FILE)
@click.option(
    "--grant",
    "grants",
    multiple=True,
    metavar="NAME",
    shell_complete=complete_grant,
    help="Export only this grant (repeatable).",
)
@_protection_options
@click.pass_obj
def export(session: Session, file: Path, grants: tuple[str, ...], passphrase_stdin: bool,
           key_file: Path | None) -> None:  # fmt: skip
    """Write grants (refresh tokens, scopes, lifetimes) and their providers (client secrets included) to FILE,
    encrypted with a passphrase (scrypt + AES-256-GCM) or a key file, for 'grantkeeper import' elsewhere.

    FILE must not exist; it is written with mode 0600. Only grant names and refresh-token fingerprints are
    readable without the passphrase or key.
    """
    example = f"e.g. `grantkeeper export {file} --passphrase-stdin < pass.txt`"
    if file.exists():  # before the passphrase is typed twice, not after
        raise ConfigurationError(f"{file} already exists; choose a new file name")
    with open_keeper(session) as keeper:
        for name in grants:
            keeper.store.get_grant(name)  # an unknown name is refused before the passphrase too
        key = _key(passphrase_stdin, key_file, example=example, confirm=True)
        with progress_bar("exporting grants") as progress:
            data = Admin.of(keeper).export_bundle(key, grants=grants, progress=progress)
    write_bundle(file, data)
    header = read_header(data)
    click.echo(f"exported {len(header.grants)} grant(s) to {_render.clean(file)} ({header.protection}-protected)")
    click.echo(f"grantkeeper: note: {_SAME_TOKEN}", err=True)


@click.command("import", short_help="Read a bundle from 'grantkeeper export' into this store.")
@click.argument("file", type=_FILE)
@click.option("--list", "list_only", is_flag=True, help="Only list the grants inside (no passphrase needed).")
@click.option("--replace", is_flag=True, help="Replace grants that already exist in this store.")
@json_option("Print the listing or the result as JSON.")
@_protection_options
@click.pass_obj
def import_(session: Session, file: Path, list_only: bool, replace: bool, as_json: bool, passphrase_stdin: bool,
            key_file: Path | None) -> None:  # fmt: skip
    """Read a bundle written by 'grantkeeper export' into this store (with --list: only show what is inside).

    Nothing is imported if the bundle does not open, is damaged, or holds a grant this store already has
    (unless --replace). Providers this store already has are kept as they are.
    """
    data = read_bundle(file)
    if list_only:
        header = read_header(data)
        if as_json:
            echo_json({"format": header.version, "protection": header.protection,
                       "grants": [{"name": n, "refresh_fp": fp} for n, fp in header.grants]})  # fmt: skip
            return
        click.echo(f"bundle format {header.version}, {header.protection}-protected, {len(header.grants)} grant(s):")
        _render.echo_table(("GRANT", "REFRESH TOKEN"), [(n, fp or "-") for n, fp in header.grants], indent="  ")
        return
    key = _key(passphrase_stdin, key_file, example=f"e.g. `grantkeeper import {file} --passphrase-stdin < pass.txt`")
    contents = open_bundle(data, key)  # before the store is opened (or created): a bad bundle changes nothing
    with open_keeper(session, create=True) as keeper:
        with progress_bar("importing grants", enabled=not as_json) as progress:
            report = Admin.of(keeper).import_bundle(contents, replace=replace, progress=progress)
        imported = [keeper.store.get_grant(name) for name in report.grants]
    if as_json:
        echo_json({"grants": [{"name": g.name, "provider": g.provider, "generation": g.generation,
                               "refresh_fp": g.refresh_fp, "replaced": g.name in report.replaced} for g in imported],
                   "providers_added": list(report.providers_added),
                   "providers_kept": list(report.providers_kept),
                   "providers_differing": list(report.providers_differing)})  # fmt: skip
    else:
        for g in imported:
            verb = "replaced" if g.name in report.replaced else "imported"
            click.echo(f"grant {_render.clean(g.name)} {verb}: provider {_render.clean(g.provider)}, "
                       f"generation {g.generation}, refresh token {g.refresh_fp}")  # fmt: skip
        for name in report.providers_added:
            click.echo(f"provider {_render.clean(name)} added")
        for name in report.providers_kept:
            click.echo(f"provider {_render.clean(name)} already here: kept as it is")
    for name in report.providers_differing:
        warning = (
            f"grantkeeper: warning: provider {_render.clean(name)} here has another token URL or client id than "
            "in the bundle; its grants will be refreshed against this store's definition"
        )
        click.echo(warning, err=True)
    click.echo(f"grantkeeper: warning: {_SAME_TOKEN_IMPORTED}", err=True)
