"""Administration of a store, one face for the CLI and the service: schema, keys, bundles, API keys.

Refreshing and reading tokens is `Keeper`'s; everything an operator does *to* a store is here, so no front end
reaches into stores, key rings or bundle files itself. `Admin` works on one open store; `migrate` and
`generate_key_file` need none. Nothing here prints: each operation returns what happened
and the front end words it. No key, token or secret is ever part of a result or a message, only key ids and
fingerprints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from grantkeeper._clock import Clock, SystemClock
from grantkeeper._exceptions import ConfigurationError, EncryptionKeyError
from grantkeeper.bundle import (
    BundleContents,
    BundleHeader,
    BundleKey,
    ImportReport,
    export_bundle,
    import_bundle,
    open_bundle,
    read_header,
)
from grantkeeper.engine import Keeper
from grantkeeper.engine.ports import Store
from grantkeeper.keys import (
    FORMAT_1,
    KEY_ENV,
    KeySource,
    RotationResult,
    census,
    crypto_of,
    generate_key,
    key_id,
    rotate,
    write_key_file,
    write_private_file,
)
from grantkeeper.model.schedule import ScheduleEntry
from grantkeeper.protocol.planning import Planned, SchedulePolicy, next_action
from grantkeeper.serve.apikeys import DEFAULT_SCOPES, NewKey, new_key
from grantkeeper.stores import STORE_ENV, SQLiteStore, backend, default_store_url, open_store
from grantkeeper.stores.access import SCOPES, ApiKeyRecord, AuditEntry
from grantkeeper.stores.migrations import latest_version
from grantkeeper.stores.sql import SQLStore

__all__ = [
    "DEFAULT_SCOPES",
    "KEY_ENV",
    "SCOPES",
    "STORE_ENV",
    "Admin",
    "ApiKeyRecord",
    "AuditEntry",
    "BundleContents",
    "BundleHeader",
    "BundleKey",
    "DuePlan",
    "ImportReport",
    "KeyRing",
    "KeyRotation",
    "KeyUse",
    "NewKey",
    "PurgedKey",
    "RotationStart",
    "SchemaStatus",
    "default_store_url",
    "generate_key_file",
    "migrate",
    "open_bundle",
    "read_bundle",
    "read_header",
    "write_bundle",
]

Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------------ schema


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    version: int
    latest: int

    @property
    def up_to_date(self) -> bool:
        return self.version == self.latest


def migrate(url: str) -> SchemaStatus:
    """Upgrade the store at `url` to this grantkeeper's schema (creating a new SQLite store's file and key)."""
    store = open_store(url, migrate=True)
    try:
        return SchemaStatus(store.schema_version(), latest_version(backend(url)))
    finally:
        store.close()


# ------------------------------------------------------------------------------------------------ keys


@dataclass(frozen=True, slots=True)
class KeyUse:
    """One key of the ring, by its public id: its place and how many stored values it encrypts."""

    key_id: str
    role: str  # "primary", "older" (still in the ring) or "retired" (read only, beside a key file)
    values: int


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The store's key ring and what each key encrypts."""

    source: str  # where the ring was read from ($GRANTKEEPER_KEY, the command, or the key file's path)
    keys: tuple[KeyUse, ...]  # primary first
    #: Key ids that encrypt stored values but are not in the ring (the store cannot read those values).
    unknown: dict[str, int]
    #: Values written before ciphertexts named their key (any key in the ring may hold them).
    without_key_id: int


@dataclass(frozen=True, slots=True)
class RotationStart:
    """The ring a rotation re-encrypts to, once it is ready and before any value is rewritten."""

    primary: str  # the key id every value is re-encrypted with
    ring_size: int  # keys in the ring as the rotation found it
    added: bool  # whether `primary` was generated now and written first in the key file
    key_file: Path | None  # the key file, when the ring comes from one
    source: str


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """What `Admin.rotate_keys` did."""

    start: RotationStart
    result: RotationResult
    retired: tuple[str, ...]  # key ids moved to the key file's retired file (nothing used them any more)
    retired_file: Path | None
    ring: KeyRing  # the ring after the rotation (with what still uses older keys)


@dataclass(frozen=True, slots=True)
class PurgedKey:
    key_id: str
    values: int  # values it still encrypts: a key that still encrypts any is kept, not deleted

    @property
    def deleted(self) -> bool:
        return self.values == 0


def generate_key_file(path: Path) -> str:
    """Write a new random key to the new file `path` (mode 0600) and return its key id (never the key)."""
    key = generate_key()
    try:
        write_key_file(path, [key], exclusive=True)
    except FileExistsError:
        raise ConfigurationError(f"{path} already exists; choose a new file name") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc.strerror}; check that its folder exists") from None
    return key_id(key)


# ------------------------------------------------------------------------------------------------ bundles


def read_bundle(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read bundle {path}: {exc.strerror}") from None


def write_bundle(path: Path, data: bytes) -> None:
    """Write a bundle to the new file `path`, mode 0600 (it holds refresh tokens and client secrets)."""
    try:
        write_private_file(path, data, exclusive=True)
    except FileExistsError:
        raise ConfigurationError(f"{path} already exists; choose a new file name") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot write bundle {path}: {exc.strerror}") from None


# ------------------------------------------------------------------------------------------------ the face


class Admin:
    """Administration of one open store. `Admin.open` opens (and closes) a store of its own; `Admin.of` works on
    the store a keeper has open (after the keeper committed what its local recovery storage held)."""

    def __init__(self, store: Store, *, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self._own = False

    @classmethod
    def open(cls, url: str, *, create: bool = False) -> Admin:
        """The store at `url`, opened as it is: nothing is replayed or refreshed (a key rotation must see every
        value, recovery files included, exactly as stored)."""
        admin = cls(open_store(url, create=create))
        admin._own = True
        return admin

    @classmethod
    def of(cls, keeper: Keeper) -> Admin:
        return cls(keeper.store, clock=keeper.clock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.store.close()

    def _sql(self) -> SQLStore:
        store = self.store
        if not isinstance(store, SQLStore):
            raise ConfigurationError(f"a {type(store).__name__} has no schema, key ring or API keys to administer")
        return store

    def schema_status(self) -> SchemaStatus:
        store = self._sql()
        kind = "sqlite" if isinstance(store, SQLiteStore) else "postgres"
        return SchemaStatus(store.schema_version(), latest_version(kind))

    # -------------------------------------------------------------------- keys

    def _source(self) -> KeySource:
        source = crypto_of(self._sql()).source
        if source is None:
            raise ConfigurationError("this store's key has no source to manage (a memory:// store has no key)")
        return source

    def key_ring(self) -> KeyRing:
        """The ring (key ids only) and how many stored values each key encrypts."""
        store = self._sql()
        return self._ring(census(store))

    def _ring(self, usage: dict[str, int]) -> KeyRing:
        crypto = crypto_of(self._sql())
        source = self._source()
        retired = {key_id(k) for k in source.retired()}
        keys = tuple(
            KeyUse(kid, "primary" if i == 0 else "retired" if kid in retired else "older", usage.get(kid, 0))
            for i, kid in enumerate(crypto.key_ids)
        )
        unknown = {k: n for k, n in sorted(usage.items()) if k not in crypto.key_ids and k != FORMAT_1}
        return KeyRing(source.description, keys, unknown, usage.get(FORMAT_1, 0))

    def rotate_keys(
        self, *, progress: Progress | None = None, started: Callable[[RotationStart], None] | None = None
    ) -> KeyRotation:
        """Re-encrypt every stored value with a new primary key, then retire the keys nothing uses any more.

        With a key file and a ring of one key, a new key is generated and written first in the file (durably,
        before any value is rewritten with it). A ring from $GRANTKEEPER_KEY or its command must already have the
        new key first: grantkeeper cannot change those. `started` hears which key the values go to before the
        first is rewritten; `progress(done, total)` after each. Safe to interrupt: run it again to resume.
        """
        source = self._source()
        ring = source.ring()
        added = len(ring) == 1
        if added:
            if source.path is None:
                raise EncryptionKeyError(
                    f"the key comes from {source.description}, which grantkeeper cannot change: create a key with "
                    "'grantkeeper keys generate --output FILE', put it first in the ring (NEW,OLD) and run "
                    "'grantkeeper keys rotate' again"
                )
            write_key_file(source.path, [generate_key(), *ring], exclusive=False)
            crypto_of(self._sql()).reload()
        start = RotationStart(crypto_of(self._sql()).key_id, len(ring), added, source.path, source.description)
        if started is not None:
            started(start)
        result = rotate(self._sql(), progress=progress)
        retired: tuple[str, ...] = ()
        if result.retirable and source.path is not None and source.retired_path is not None:
            retired = _retire(source, result.primary)
        after = self._ring(result.usage)  # after retiring: the retired keys' roles say so
        return KeyRotation(start, result, retired, source.retired_path, after)

    def purge_keys(self) -> tuple[PurgedKey, ...]:
        """Delete retired keys that no stored value uses any more (from the key file's retired file)."""
        source = self._source()
        if source.retired_path is None:
            raise ConfigurationError(
                f"keys from {source.description} are managed outside grantkeeper: remove unused ones there"
            )
        usage = census(self._sql())
        retired = source.retired()
        outcome = tuple(PurgedKey(key_id(k), usage.get(key_id(k), 0)) for k in retired)
        used = [k for k, p in zip(retired, outcome, strict=True) if not p.deleted]
        if used:
            write_key_file(source.retired_path, used, exclusive=False)
        elif retired:
            source.retired_path.unlink()
        return outcome

    # -------------------------------------------------------------------- bundles

    def export_bundle(self, key: BundleKey, *, grants: Sequence[str] = (), progress: Progress | None = None) -> bytes:
        """The encrypted bundle of `grants` (every grant when empty) and their providers."""
        return export_bundle(self.store, key, grants=grants, now=self.clock.now(), progress=progress)

    def import_bundle(
        self, contents: BundleContents, *, replace: bool = False, progress: Progress | None = None
    ) -> ImportReport:
        """Write an opened bundle into the store (see `grantkeeper.bundle.import_bundle`)."""
        return import_bundle(self.store, contents, replace=replace, now=self.clock.now(),
                             progress=progress)  # fmt: skip

    # -------------------------------------------------------------------- API keys

    def create_api_key(
        self, name: str, *, grants: str, scopes: str = ",".join(DEFAULT_SCOPES), lifetime: float | None = None
    ) -> NewKey:
        """A new API key for ``grantkeeper serve``, stored as a keyed hash; its `key` can never be shown again."""
        made = new_key(name, grants=grants, scopes=scopes, now=self.clock.now(), lifetime=lifetime)
        self._sql().create_api_key(made.record, key=made.key)
        return made

    def api_keys(self) -> list[ApiKeyRecord]:
        return self._sql().list_api_keys()

    def revoke_api_key(self, name: str) -> ApiKeyRecord:
        return self._sql().revoke_api_key(name, now=self.clock.now())

    def audit(self, *, grant: str | None = None, api_key: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """What ``serve`` handed out, newest first: which API key got which grant's token (by fingerprint) or
        proxied which request, when, with what status; of one grant and of one key, if given."""
        return self._sql().list_audit(grant=grant, api_key=api_key, limit=limit)

    # ---------------------------------------------------------------- the refresh scheduler's plan

    def set_hot(self, name: str, hot: bool) -> None:
        """Keep grant `name` fresh ahead of time whatever its use (or stop); the scheduler plans it again at once."""
        self._sql().set_hot(name, hot)

    def due(self, *, limit: int = 50, policy: SchedulePolicy | None = None, hot_window: float = 600.0) -> list[DuePlan]:
        """What the scheduler does next: the `limit` grants it looks at first, each with the action planned for it
        now (None: nothing, e.g. an idle grant whose refresh token has no end to keep ahead of)."""
        sql, now, plans = self._sql(), self.clock.now(), []
        for entry in sql.schedule(limit=limit):
            grant, provider = sql.get_grant_and_provider(entry.grant)
            used = entry.last_used_at is not None and now - entry.last_used_at <= hot_window
            plan = next_action(grant, provider, hot=entry.hot or used, skew=provider.skew,
                               policy=policy or SchedulePolicy(), warned_at=entry.warned_at)  # fmt: skip
            plans.append(DuePlan(entry, hot=entry.hot or used, plan=plan))
        return plans


@dataclass(frozen=True, slots=True)
class DuePlan:
    """One grant's place in the scheduler's plan: what is stored (`entry`), whether it counts as hot, and the action
    planned for it (None: nothing)."""

    entry: ScheduleEntry
    hot: bool
    plan: Planned | None

    def as_dict(self) -> dict[str, object]:
        plan = self.plan
        return {
            "grant": self.entry.grant, "hot": self.hot, "marked_hot": self.entry.hot,
            "last_used_at": self.entry.last_used_at, "next_look_at": self.entry.next_due_at,
            "action": plan.action.value if plan else None, "at": plan.at if plan else None,
            "deadline": plan.deadline if plan and plan.deadline != float("inf") else None,
            "reason": plan.reason if plan else None,
        }  # fmt: skip


def _retire(source: KeySource, primary: str) -> tuple[str, ...]:
    """Move every key but the primary from the key file to the retired file (that file first: never lost).

    Retired keys still decrypt (a worker that read a value before the rotation may commit with the old key
    after it) but never encrypt; `Admin.purge_keys` deletes the ones nothing uses.
    """
    assert source.path is not None
    assert source.retired_path is not None
    ring, retired = source.ring(), source.retired()
    keep = [k for k in ring if key_id(k) == primary]
    moved = [k for k in ring if k not in keep]
    write_key_file(source.retired_path, retired + [k for k in moved if k not in retired],
                   exclusive=not source.retired_path.exists())  # fmt: skip
    write_key_file(source.path, keep, exclusive=False)
    return tuple(key_id(k) for k in moved)
