"""``grantkeeper keys``: the store's key ring (list, generate, rotate). Never prints a key, only key ids."""

from __future__ import annotations

from pathlib import Path

import click

from grantkeeper._exceptions import ConfigurationError, EncryptionKeyError
from grantkeeper.cli._help import HelpGroup
from grantkeeper.cli._io import echo_json
from grantkeeper.cli._progress import progress_bar
from grantkeeper.cli._session import Session
from grantkeeper.crypto import Crypto
from grantkeeper.keyring import KEY_ENV, KeySource, generate_key, write_key_file
from grantkeeper.stores import default_store_url, open_store
from grantkeeper.stores.rekey import FORMAT_1, RotationResult, census, crypto_of, rotate
from grantkeeper.stores.sql import SQLStore

__all__ = ["keys"]


def _url(session: Session) -> str:
    url = session.store_url if session.store_url is not None else default_store_url()
    if url.startswith("memory:"):
        raise ConfigurationError("a memory:// store has no key to manage; point --store at a real store")
    return url


def _usage_lines(crypto: Crypto, usage: dict[str, int]) -> list[str]:
    source = crypto.source
    retired = {Crypto(k).key_id for k in source.retired()} if source is not None else set()
    lines = []
    for position, key_id in enumerate(crypto.key_ids):
        role = "primary" if position == 0 else "retired, read only" if key_id in retired else "older"
        lines.append(f"key {key_id} ({role}): {usage.get(key_id, 0)} values")
    for label, count in sorted(usage.items()):
        if label == FORMAT_1:
            lines.append(f"{count} values written before key ids (any key in the ring may hold them)")
        elif label not in crypto.key_ids:
            lines.append(f"key {label} (NOT IN THE RING): {count} values; add that key back to the ring")
    return lines


def _census(session: Session) -> tuple[Crypto, dict[str, int]]:
    """The store's ring and how many values each of its keys encrypts."""
    store = open_store(_url(session), create=False)
    try:
        return crypto_of(store), census(store)
    finally:
        store.close()


@click.group(cls=HelpGroup)
def keys() -> None:
    """The store's encryption keys: list them, generate one, rotate to a new one."""


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the ring and the counts as JSON.")
@click.pass_obj
def keys_list(session: Session, as_json: bool) -> None:
    """Show the key ring (key ids only) and how many stored values each key encrypts."""
    crypto, usage = _census(session)
    source = crypto.source.description if crypto.source is not None else "unknown"
    if as_json:
        echo_json({"source": source, "keys": [{"key_id": k, "primary": i == 0, "values": usage.get(k, 0)}
                                              for i, k in enumerate(crypto.key_ids)],
                   "unknown_keys": {k: n for k, n in usage.items() if k not in crypto.key_ids and k != FORMAT_1},
                   "values_without_key_id": usage.get(FORMAT_1, 0)})  # fmt: skip
        return
    click.echo(f"key ring from {source}")
    for line in _usage_lines(crypto, usage):
        click.echo(line)


@keys.command("generate")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="New file to write the key to (0600).")
def keys_generate(output: Path) -> None:
    """Write a new random key to a new file (never to the terminal)."""
    key = generate_key()
    try:
        write_key_file(output, [key], exclusive=True)
    except FileExistsError:
        raise ConfigurationError(f"{output} already exists; choose a new file name") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot write {output}: {exc.strerror}; check that its folder exists") from None
    click.echo(f"wrote a new key (key id {Crypto(key).key_id}) to {output}")
    click.echo(f"to rotate a store keyed by ${KEY_ENV}: set {KEY_ENV}=\"$(cat {output}),<current key>\" and run "
               "'grantkeeper keys rotate'")  # fmt: skip


def _source(store: SQLStore) -> KeySource:
    source = crypto_of(store).source
    if source is None:  # only a memory store has none, and `_url` refuses those
        store.close()
        raise ConfigurationError("this store's key has no source to manage")
    return source


def _start_rotation(url: str) -> tuple[SQLStore, KeySource]:
    """A store whose ring has a new primary key: added to the key file, or already put first by the user."""
    store = open_store(url, create=False)
    source = _source(store)
    ring = source.ring()
    if len(ring) > 1:
        click.echo(f"the ring has {len(ring)} keys: re-encrypting everything with its first, {Crypto(ring[0]).key_id}")
        return store, source
    if source.path is None:
        store.close()
        raise EncryptionKeyError(
            f"the key comes from {source.description}, which grantkeeper cannot change: create a key with "
            "'grantkeeper keys generate --output FILE', put it first in the ring (NEW,OLD) and run "
            "'grantkeeper keys rotate' again"
        )
    # The new ring is durable before any value is rewritten with its key: an interruption leaves both keys.
    write_key_file(source.path, [generate_key(), *ring], exclusive=False)
    store.close()
    reopened = open_store(url, create=False)
    click.echo(f"added key {crypto_of(reopened).key_id} to {source.path} as the primary key")
    return reopened, source


def _retire(path: Path, retired_path: Path, ring: list[bytes], retired: list[bytes], primary: str) -> None:
    """Move every key but the primary from the key file to the retired file (that file first: never lost).

    Retired keys still decrypt (a worker that read a value before the rotation may commit with the old key
    after it) but never encrypt; `keys purge` deletes the ones nothing uses.
    """
    keep = [k for k in ring if Crypto(k).key_id == primary]
    moved = retired + [k for k in ring if k not in keep and k not in retired]
    write_key_file(retired_path, moved, exclusive=not retired_path.exists())
    write_key_file(path, keep, exclusive=False)


def _finish(store: SQLStore, source: KeySource, result: RotationResult) -> None:
    click.echo(f"re-encrypted {result.rewritten} of {result.total} values with key {result.primary}")
    ring = source.ring()
    old = [Crypto(k).key_id for k in ring if Crypto(k).key_id != result.primary]
    if not result.retirable:
        click.echo("some values still use older keys (refreshes by workers on the old ring?); run "
                   "'grantkeeper keys rotate' again once every worker has the new ring:")  # fmt: skip
        for line in _usage_lines(crypto_of(store), result.usage):
            click.echo(f"  {line}")
    elif source.path is not None and source.retired_path is not None:
        _retire(source.path, source.retired_path, ring, source.retired(), result.primary)
        click.echo(f"retired key {', '.join(old)}: nothing uses it; {source.path} now holds key {result.primary}. "
                   f"Retired keys stay readable in {source.retired_path} for writes still in flight: run "
                   "'grantkeeper keys purge' once every worker has been restarted")  # fmt: skip
    else:
        click.echo(f"nothing uses key {', '.join(old)} any more: remove it from {source.description} (keep only "
                   "the first key)")  # fmt: skip


@keys.command("rotate")
@click.pass_obj
def keys_rotate(session: Session) -> None:
    """Re-encrypt every stored value with a new primary key, then retire the old key.

    With a key file, a new key is generated and added to it. With $GRANTKEEPER_KEY or
    $GRANTKEEPER_KEY_COMMAND, put the new key first in the ring yourself. Safe to interrupt: run it again
    to resume. Workers must have the new ring before they next read a rewritten value.
    """
    store, source = _start_rotation(_url(session))
    try:
        with progress_bar("re-encrypting") as progress:
            result = rotate(store, progress=progress)
        _finish(store, source, result)
    finally:
        store.close()


@keys.command("purge")
@click.pass_obj
def keys_purge(session: Session) -> None:
    """Delete retired keys that no stored value uses any more (from the key file's .retired file)."""
    crypto, usage = _census(session)
    source = crypto.source
    if source is None or source.retired_path is None:
        where = source.description if source is not None else "this store's key source"
        raise ConfigurationError(f"keys from {where} are managed outside grantkeeper: remove unused ones there")
    retired = source.retired()
    used = [k for k in retired if usage.get(Crypto(k).key_id)]
    for key in retired:
        key_id = Crypto(key).key_id
        note = f"still encrypts {usage[key_id]} values: run 'grantkeeper keys rotate'" if key in used else "deleted"
        click.echo(f"retired key {key_id}: {note}")
    if not retired:
        click.echo("no retired keys")
    elif used:
        write_key_file(source.retired_path, used, exclusive=False)
    else:
        source.retired_path.unlink()
