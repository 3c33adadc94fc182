"""``grantkeeper keys``: the store's key ring (list, generate, rotate). Never prints a key, only key ids."""

from __future__ import annotations

from pathlib import Path

import click

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.admin import KEY_ENV, Admin, KeyRing, KeyRotation, RotationStart, generate_key_file
from grantkeeper.cli._help import HelpGroup
from grantkeeper.cli._io import echo_json, json_option
from grantkeeper.cli._progress import progress_bar
from grantkeeper.cli._session import Session

__all__ = ["keys"]


def _admin(session: Session) -> Admin:
    url = session.url()
    if url.startswith("memory:"):
        raise ConfigurationError("a memory:// store has no key to manage; point --store at a real store")
    return Admin.open(url)


def _usage_lines(ring: KeyRing) -> list[str]:
    lines = [f"key {k.key_id} ({'retired, read only' if k.role == 'retired' else k.role}): {k.values} values"
             for k in ring.keys]  # fmt: skip
    if ring.without_key_id:
        lines.append(f"{ring.without_key_id} values written before key ids (any key in the ring may hold them)")
    lines += [f"key {kid} (NOT IN THE RING): {count} values; add that key back to the ring"
              for kid, count in ring.unknown.items()]  # fmt: skip
    return lines


@click.group(cls=HelpGroup)
def keys() -> None:
    """The store's encryption keys: list them, generate one, rotate to a new one."""


@keys.command("list")
@json_option("Print the ring and the counts as JSON.")
@click.pass_obj
def keys_list(session: Session, as_json: bool) -> None:
    """Show the key ring (key ids only) and how many stored values each key encrypts."""
    with _admin(session) as admin:
        ring = admin.key_ring()
    if as_json:
        echo_json({"source": ring.source, "keys": [{"key_id": k.key_id, "primary": k.role == "primary",
                                                   "values": k.values} for k in ring.keys],
                   "unknown_keys": ring.unknown, "values_without_key_id": ring.without_key_id})  # fmt: skip
        return
    click.echo(f"key ring from {ring.source}")
    for line in _usage_lines(ring):
        click.echo(line)


@keys.command("generate")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="New file to write the key to (0600).")
def keys_generate(output: Path) -> None:
    """Write a new random key to a new file (never to the terminal)."""
    key_id = generate_key_file(output)
    click.echo(f"wrote a new key (key id {key_id}) to {output}")
    click.echo(f"to rotate a store keyed by ${KEY_ENV}: set {KEY_ENV}=\"$(cat {output}),<current key>\" and run "
               "'grantkeeper keys rotate'")  # fmt: skip


def _announce(start: RotationStart) -> None:
    if start.added:
        click.echo(f"added key {start.primary} to {start.key_file} as the primary key")
    else:
        click.echo(f"the ring has {start.ring_size} keys: re-encrypting everything with its first, {start.primary}")


def _report(done: KeyRotation) -> None:
    result = done.result
    click.echo(f"re-encrypted {result.rewritten} of {result.total} values with key {result.primary}")
    old = [k.key_id for k in done.ring.keys if k.role != "primary"]
    if not result.retirable:
        click.echo("some values still use older keys (refreshes by workers on the old ring?); run "
                   "'grantkeeper keys rotate' again once every worker has the new ring:")  # fmt: skip
        for line in _usage_lines(done.ring):
            click.echo(f"  {line}")
    elif done.retired:
        click.echo(f"retired key {', '.join(done.retired)}: nothing uses it; {done.start.key_file} now holds key "
                   f"{result.primary}. Retired keys stay readable in {done.retired_file} for writes still in "
                   "flight: run 'grantkeeper keys purge' once every worker has been restarted")  # fmt: skip
    else:
        click.echo(f"nothing uses key {', '.join(old)} any more: remove it from {done.start.source} (keep only "
                   "the first key)")  # fmt: skip


@keys.command("rotate")
@click.pass_obj
def keys_rotate(session: Session) -> None:
    """Re-encrypt every stored value with a new primary key, then retire the old key.

    With a key file, a new key is generated and added to it. With $GRANTKEEPER_KEY or
    $GRANTKEEPER_KEY_COMMAND, put the new key first in the ring yourself. Safe to interrupt: run it again
    to resume. Workers must have the new ring before they next read a rewritten value.
    """
    with _admin(session) as admin, progress_bar("re-encrypting") as progress:
        done = admin.rotate_keys(progress=progress, started=_announce)
    _report(done)


@keys.command("purge")
@click.pass_obj
def keys_purge(session: Session) -> None:
    """Delete retired keys that no stored value uses any more (from the key file's .retired file)."""
    with _admin(session) as admin:
        purged = admin.purge_keys()
    for key in purged:
        note = "deleted" if key.deleted else f"still encrypts {key.values} values: run 'grantkeeper keys rotate'"
        click.echo(f"retired key {key.key_id}: {note}")
    if not purged:
        click.echo("no retired keys")
