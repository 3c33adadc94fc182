"""What every SQL store shares: the grant, lease and attempt logic, written once.

Each store method is an operation (`grantkeeper.stores.transactions`): a generator that yields its statements and
receives their results, so the same logic runs on a blocking connection (`_perform`: SQLite, PostgreSQL) and on an
asyncio one (`grantkeeper.stores.postgres_async`). Stores differ in how they connect and open transactions (`_tx`)
and run a statement (`_execute`), how writers are serialized (SQLite's ``BEGIN IMMEDIATE``; PostgreSQL's row lock,
`_row_lock`), whose clock times leases (`_lease_clock`), and how other processes learn of a commit (`_notify`).
Statements use ``?`` placeholders; a store whose driver wants another style translates them in its connection
adapter.

Secrets are encrypted with associated data ``grantkeeper/<table>/<row>/<column>``.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import struct
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from grantkeeper._exceptions import ConfigurationError, UnknownGrant, UnknownProvider
from grantkeeper._secrets import Secret
from grantkeeper.keys.crypto import Crypto
from grantkeeper.model import (
    Attempt,
    AttemptReport,
    AttemptState,
    AuthMethod,
    Grant,
    GrantState,
    Lease,
    LeaseHolder,
    OutcomeClass,
    Provider,
    RotationMode,
    check_name,
)
from grantkeeper.model.grant import ServedToken, serve_until
from grantkeeper.model.retention import HistoryRetention
from grantkeeper.model.schedule import ScheduleEntry
from grantkeeper.stores.access import ApiKeyRecord, AuditEntry, ConnectSession
from grantkeeper.stores.base import Claim, GenerationConflict, GrantUpdate, LeaseLost, LeaseTTL
from grantkeeper.stores.liveness import Liveness
from grantkeeper.stores.recovery import RecoveryDir, RecoveryEntry
from grantkeeper.stores.transactions import (
    COMMIT,
    Blocking,
    Op,
    Sql,
    Tx,
    operation,
    perform,
    perform_batch,
    query,
    transaction,
)

__all__ = ["Conn", "HistoryRetention", "SQLStore", "StoreEvent", "StoreObserver", "Subscriber"]

T = TypeVar("T")

logger = logging.getLogger("grantkeeper")

KEY_CHECK = b"grantkeeper key check"
#: The notification kind API-key changes send (with an empty grant name): a store's `change_probe` counts them.
API_KEYS_CHANGED = "api_keys"
#: Audit rows per INSERT statement (8 parameters each: far below SQLite's 32,766 and PostgreSQL's 65,535).
_AUDIT_ROWS_PER_INSERT = 250
_PRUNE_EVERY = 64  # generations between prunes, so the hot commit rarely pays for it
_GRANT_COLUMNS = (
    "name, provider, refresh_token, refresh_fp, access_token, access_fp, expires_at, access_verified, "
    "scopes, generation, state, last_error, last_error_at, updated_at, refreshed_at, created_at, "
    "refresh_issued_at, refresh_expires_at"
)
_PROVIDER_COLUMNS = (
    "name, token_url, client_id, client_secret, client_secret_env, auth_method, rotation, reuse_grace, skew, "
    "default_expires_in, refresh_idle_ttl, refresh_absolute_ttl, private_key_file, key_id, jwt_audience, send_scope, "
    "profile, authorization_url, revocation_url, device_authorization_url, authorize_params, api_base_url, ca_bundle, "
    "proxy, insecure_http"
)
_GRANT_COLUMNS_QUALIFIED = ", ".join("grants." + c.strip() for c in _GRANT_COLUMNS.split(","))
_PROVIDER_COLUMNS_QUALIFIED = ", ".join("providers." + c.strip() for c in _PROVIDER_COLUMNS.split(","))
_ATTEMPT_COLUMNS = "id, grant_name, generation, refresh_fp, worker, started_at, state, outcome, resend_of, finished_at"
_GRANT_WIDTH = len(_GRANT_COLUMNS.split(","))
_PROVIDER_WIDTH = len(_PROVIDER_COLUMNS.split(","))
#: Every cold token read and every claim runs this (built once: the driver's statement cache is keyed by the text).
_GRANT_AND_PROVIDER = (
    f"SELECT {_GRANT_COLUMNS_QUALIFIED}, {_PROVIDER_COLUMNS_QUALIFIED} FROM grants "
    "JOIN providers ON providers.name = grants.provider WHERE grants.name = ?"
)
#: The cold token read (`served_access`): only the columns serving the access token takes, the skew by the
#: provider's primary key, and no row whose token has already expired (nothing to decrypt then).
SERVED_ACCESS = (
    "SELECT grants.access_token, grants.expires_at, grants.updated_at, grants.generation, providers.skew "
    "FROM grants JOIN providers ON providers.name = grants.provider "
    "WHERE grants.name = ? AND grants.state = 'active' AND grants.expires_at > ?"
)
#: What a claim reads about earlier attempts of the grant's current generation: the unresolved attempt it must
#: re-send (maybe spent, successor unknown), and the latest re-send or stale send of the last generations (it
#: explains a later family revocation; a stale send is a certain second use of a token, a re-send only a
#: possible one, so it is preferred). As ids, correlated to the grant row read in the same statement.
_PRIOR_ID = (
    "(SELECT id FROM attempts WHERE grant_name = grants.name AND generation = grants.generation "
    "AND refresh_fp = grants.refresh_fp AND state IN ('open', 'ambiguous') ORDER BY id DESC LIMIT 1)"
)
_RESEND_ID = (
    "(SELECT id FROM attempts WHERE grant_name = grants.name AND ((resend_of IS NOT NULL AND state <> 'not_sent') "
    "OR outcome = 'stale_local_token') AND generation >= grants.generation - 2 "
    "ORDER BY CASE WHEN outcome = 'stale_local_token' THEN 0 ELSE 1 END, id DESC LIMIT 1)"
)
#: The claim's one read where its transaction already excludes other writers (`SQLStore._claim_in_one_read`):
#: the grant, its provider, its lease (NULLs if none yet) and the two attempt ids above.
_LEASE_AND_IDS = f"leases.worker, leases.fence, leases.expires_at, leases.liveness, {_PRIOR_ID}, {_RESEND_ID}"
_CLAIM_READ = (
    f"SELECT {_GRANT_COLUMNS_QUALIFIED}, {_PROVIDER_COLUMNS_QUALIFIED}, {_LEASE_AND_IDS} FROM grants "
    "JOIN providers ON providers.name = grants.provider LEFT JOIN leases ON leases.grant_name = grants.name "
    "WHERE grants.name = ?"
)
#: The rest of a claim's read where the grant's row lock is taken by a statement of its own (not
#: `_claim_in_one_read`): after that lock, the grant's lease (NULLs if none yet) and the two attempt ids above.
_LEASE_AND_EARLIER = (
    f"SELECT {_LEASE_AND_IDS} FROM grants LEFT JOIN leases ON leases.grant_name = grants.name WHERE grants.name = ?"
)


def _lease_and_ids(columns: Sequence[Any]) -> tuple[Any, tuple[int | None, int | None]]:
    """The `_LEASE_AND_IDS` columns: the lease row (None if the grant never had a lease: a lease's fence is never
    NULL) and the ids of the attempts `SQLStore._earlier_attempts` fetches."""
    return (columns[:4] if columns[1] is not None else None), (columns[4], columns[5])


#: Attempts retention never prunes, because `claim` reads them: an unresolved attempt (open, ambiguous) that the
#: next claim must re-send once instead of spending its possibly spent token as fresh, and the sent re-sends and
#: stale sends that explain a later family revocation, all within the last two generations.
_NEEDED_BY_CLAIM = (
    "(generation >= (SELECT generation FROM grants WHERE grants.name = attempts.grant_name) - 2 AND "
    "(state IN ('open', 'ambiguous') OR (resend_of IS NOT NULL AND state <> 'not_sent') "
    "OR outcome = 'stale_local_token'))"
)
#: Everything the history keeps; the claim's hot query reads only `_ATTEMPT_COLUMNS`.
_HISTORY_COLUMNS = _ATTEMPT_COLUMNS + (
    ", actor, try_number, new_generation, received_fp, rotated, outcome_class, error_code, error_description, "
    "http_status, latency, evidence"
)


#: Called with (grant name, generation, kind) when another process commits ("commit") or invalidates an access
#: token ("invalidate"); see `SQLStore.subscribe`.
Subscriber = Callable[[str, int, str], None]


@dataclasses.dataclass(frozen=True, slots=True)
class StoreEvent:
    """What this process's refresh transactions did, for observers such as metrics (names and classes, no tokens).

    ``kind`` is ``"attempt"`` (an attempt ended: ``outcome`` is its class, ``seconds`` the provider's latency when
    known), ``"lease_wait"`` (another worker held the grant's lease: this one waits for its commit) or
    ``"recovered"`` (a successor kept in local recovery storage was committed).
    """

    kind: str
    grant: str
    provider: str | None = None
    outcome: str | None = None
    seconds: float | None = None


#: Called after the transaction the event describes has ended; it must not block (see `SQLStore.observe`).
StoreObserver = Callable[[StoreEvent], None]


class Conn(Protocol):
    """The part of a DB-API connection the shared logic uses: ``execute`` returning a cursor."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


def _floor_key(name: str) -> str:
    return f"deleted_grant/{name}"


def _spent_key(name: str) -> str:
    return f"spent/{name}"


#: What the history remembers of a spending attempt once retention prunes it: the digest of the spent token's
#: fingerprint, the attempt id, its generation and start time. `spent_by` reads it, so a token spent longer
#: ago than the kept history is still recognised on re-import and by `doctor`.
_DIGEST_BYTES = 8
_SPENT_RECORD = struct.Struct(f"<{_DIGEST_BYTES}sqqd")
#: Records kept per grant (newest first to stay; 64 KiB): the tokens spent just before the kept history.
_SPENT_MEMORY = 2048
#: Attempts that spent their token: sent it and committed a different successor (the provider rotated).
_SPENT_CONDITION = "(rotated = 1 OR (state = 'recovered' AND received_fp <> refresh_fp))"
_PRUNED_RETURNING = f" RETURNING grant_name, id, generation, refresh_fp, started_at, {_SPENT_CONDITION}"


def _fp_digest(fingerprint: str) -> bytes | None:
    """The 8 bytes behind a fingerprint ``fp_`` + 16 hex digits; None for anything else."""
    try:
        digest = bytes.fromhex(fingerprint.removeprefix("fp_"))
    except ValueError:
        return None
    return digest if len(digest) == _DIGEST_BYTES else None


def _execute(conn: Conn, step: Sql) -> Any:
    return conn.execute(step.text, step.params)


def _written_row(args: tuple[Any, ...]) -> object:
    """The grant a batched call writes: ``claim(name, ...)``, or the grant of the lease the others take first; an
    object of its own (a row of its own) for anything else."""
    first = args[0] if args else None
    grant = first if isinstance(first, str) else getattr(first, "grant", None)
    return grant if isinstance(grant, str) else object()


def _aad(table: str, row: str, column: str) -> str:
    return f"grantkeeper/{table}/{row}/{column}"


#: `GrantState` by stored value: a dict lookup, cheaper than the enum's own (every grant read does one).
_STATES = {state.value: state for state in GrantState}


class SQLStore:
    """The store contract of `grantkeeper.stores.base` over SQL. Subclasses provide the hooks below."""

    #: Whether every worker that can claim a grant shares this store's local recovery storage (see Claim).
    _shared_recovery = True
    #: Appended to the claim's read of the grant row to hold it until the transaction ends ("" if the
    #: transaction already excludes other writers).
    _row_lock = ""
    #: Appended to the scheduler's due query so concurrent schedulers pass each other's rows ("" where the write
    #: transaction already runs alone).
    _skip_locked = ""
    #: Written after ``FROM grants`` in the scheduler's queries, which read the partial index ``grants_next_due``
    #: (``state = 'active'``, ordered by ``next_due_at``): "" where the planner finds it alone.
    _next_due_index = ""
    #: Whether the claim reads grant, provider, lease and earlier attempts in one statement (`_CLAIM_READ`). Only
    #: where the transaction excludes other writers from its first statement on (SQLite's ``BEGIN IMMEDIATE``):
    #: under READ COMMITTED a row lock is taken by the statement that reads the grant, and what that statement
    #: joins comes from the snapshot taken before the lock wait, i.e. before the previous holder's commit.
    _claim_in_one_read = False
    #: Whether the calls of a batch on different grants run side by side, one round trip for a statement of each
    #: (`transactions.perform_batch`'s ``rows``): where every statement waited for is a round trip (PostgreSQL).
    _batch_side_by_side = False

    def __init__(self, crypto: Crypto, recovery: RecoveryDir, liveness: Liveness | None = None) -> None:
        self._crypto = crypto
        self.recovery = recovery
        #: The signals that tell a dead lease holder from a slow one (None: leases are only ever waited out).
        self.liveness = liveness
        #: Attempt history kept for `grantkeeper history` and `doctor`; pruned as grants are refreshed.
        self.retention = HistoryRetention.from_env()
        self._subscribers: list[Subscriber] = []
        self._observers: list[StoreObserver] = []
        self._providers: dict[tuple[Any, ...], Provider] = {}

    # ---------------------------------------------------------------- hooks

    def _tx(self, *, write: bool = True) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def schema_version(self) -> int:
        raise NotImplementedError

    def _perform(self, fn: Callable[..., Op[T]], write: bool, /, *args: Any, **kwargs: Any) -> T:
        """Run the operation ``fn(self, *args, **kwargs)`` on this store's blocking connections (`write`: in a
        transaction; else a read)."""
        return perform(fn(self, *args, **kwargs), self._begin_write if write else self._begin_read, _execute)

    def perform_batch(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Run store calls (method name, positional and keyword arguments; each a transaction that writes) in one
        transaction, committed once; a call that raises is rolled back alone and its result is `Failed`. See
        `transactions.perform_batch`."""
        rows = [_written_row(args) for _, args, _ in calls] if self._batch_side_by_side else None
        return perform_batch(self._batch_ops(calls), *self._writer(), rows=rows)

    def _batch_ops(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> Callable[[], list[Op[Any]]]:
        """What makes the operations of `calls` (again each time: a batch may run twice); TypeError for a call that
        is not a transaction that writes."""
        fns = []
        for method, _, _ in calls:
            op = getattr(type(self), method)
            if not isinstance(op, operation) or not op.write:
                raise TypeError(f"{method} is not a store transaction that writes; it cannot join a batch")
            fns.append(op.fn)

        def ops() -> list[Op[Any]]:
            return [fn(self, *args, **kwargs) for fn, (_, args, kwargs) in zip(fns, calls, strict=True)]

        return ops

    def _writer(self) -> tuple[Callable[[], AbstractContextManager[Any]], Callable[[Any, Sql], Any]]:
        """How this store runs a transaction that writes: what opens it, and what runs one statement in it."""
        return self._begin_write, _execute

    def _begin_write(self) -> AbstractContextManager[Conn]:
        return self._tx(write=True)

    def _begin_read(self) -> AbstractContextManager[Conn]:
        return self._tx(write=False)

    def _lease_clock(self, now: float) -> float:
        """The time leases are measured in. Default: the caller's clock."""
        return now

    def _notify(self, name: str, generation: int, kind: str) -> Tx[None]:
        """Tell other processes, inside the transaction (delivered on commit). Default: nobody to tell."""
        yield from ()

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` when another process commits or invalidates (stores that can deliver it)."""
        self._subscribers.append(subscriber)

    def observe(self, observer: StoreObserver) -> None:
        """Call `observer` with a `StoreEvent` after each attempt this process ends, lease wait and recovery."""
        self._observers.append(observer)

    def _observed(self, event: StoreEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception as exc:  # an observer's bug must not fail a refresh that committed
                logger.warning("store observer %r failed on %s: %s", observer, event.kind, type(exc).__name__)

    def wait_for_change(self, name: str, *, poll: float, longest: float, generation: int | None = None) -> None:
        """Block until grant `name` may have moved past `generation`. Default: sleep `poll` (nothing to wait on)."""
        time.sleep(poll)

    def _read(self, fn: Callable[[Conn], T]) -> T:
        """Run one read. Stores whose connections can drop retry it (reads are idempotent)."""
        with self._tx(write=False) as conn:
            return fn(conn)

    # ---------------------------------------------------------------- rows

    def fingerprint(self, token: Secret) -> str:
        return self._crypto.fingerprint(token)

    def _seal(self, value: Secret | None, table: str, row: str, column: str) -> bytes | None:
        return None if value is None else self._crypto.encrypt(value, aad=_aad(table, row, column))

    def _open(self, blob: bytes | None, table: str, row: str, column: str) -> Secret | None:
        return None if blob is None else self._crypto.decrypt(blob, aad=_aad(table, row, column))

    def _grant(self, row: Any, *, lazy_refresh: bool = False, lazy_access: bool = False) -> Grant:
        """The grant in `row`. A `lazy_` token is decrypted when first used (`SealedSecret`): a cold token read
        never uses the refresh token, and a claim that takes the lease never uses the access token it replaces."""
        name = str(row[0])
        crypto = self._crypto
        refresh, access = row[2], row[4]
        if refresh is not None:
            aad = _aad("grants", name, "refresh_token")
            refresh = crypto.sealed(refresh, aad=aad) if lazy_refresh else crypto.decrypt(refresh, aad=aad)
        if access is not None:
            aad = _aad("grants", name, "access_token")
            access = crypto.sealed(access, aad=aad) if lazy_access else crypto.decrypt(access, aad=aad)
        return Grant(
            name=name,
            provider=str(row[1]),
            refresh_token=refresh,
            refresh_fp=row[3],
            access_token=access,
            access_fp=row[5],
            expires_at=row[6],
            access_verified=bool(row[7]),
            scopes=tuple(str(row[8]).split()),
            generation=int(row[9]),
            state=_STATES.get(row[10]) or GrantState(row[10]),
            last_error=row[11],
            last_error_at=row[12],
            updated_at=row[13],
            refreshed_at=row[14],
            created_at=row[15],
            refresh_issued_at=row[16],
            refresh_expires_at=row[17],
        )

    def _provider(self, row: Any) -> Provider:
        """Providers change rarely and are read on every cold token read: reuse the decoded value while the
        stored row (ciphertext included) is byte-for-byte the same."""
        key = tuple(row)
        try:
            cached = self._providers.get(key)
        except TypeError:  # a driver that returns BLOBs as memoryview (unhashable)
            key = tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            cached = self._providers.get(key)
        if cached is None:
            if len(self._providers) > 256:
                self._providers.clear()
            cached = self._providers[key] = self._decode_provider(row)
        return cached

    def _decode_provider(self, row: Any) -> Provider:
        name = str(row[0])
        return Provider(
            name=name,
            token_url=str(row[1]),
            client_id=str(row[2]),
            client_secret=self._open(row[3], "providers", name, "client_secret"),
            client_secret_env=row[4],
            auth_method=AuthMethod(row[5]),
            rotation=RotationMode(row[6]),
            reuse_grace=float(row[7]),
            skew=float(row[8]),
            default_expires_in=float(row[9]),
            refresh_idle_ttl=row[10],
            refresh_absolute_ttl=row[11],
            private_key_file=row[12],
            key_id=row[13],
            jwt_audience=row[14],
            send_scope=bool(row[15]),
            profile=row[16],
            authorization_url=row[17],
            revocation_url=row[18],
            device_authorization_url=row[19],
            authorize_params=tuple((str(k), str(v)) for k, v in json.loads(row[20] or "[]")),
            api_base_url=row[21],
            ca_bundle=row[22],
            proxy=row[23],
            insecure_http=bool(row[24]),
        )

    @staticmethod
    def _attempt(row: Any) -> Attempt:
        attempt = Attempt(
            id=int(row[0]),
            grant=str(row[1]),
            generation=int(row[2]),
            refresh_fp=str(row[3]),
            worker=str(row[4]),
            started_at=float(row[5]),
            state=AttemptState(row[6]),
            outcome=row[7],
            resend_of=row[8],
            finished_at=row[9],
        )
        if len(row) <= 10:
            return attempt
        return dataclasses.replace(
            attempt,
            actor=str(row[10]),
            try_number=int(row[11]),
            new_generation=row[12],
            received_fp=row[13],
            rotated=None if row[14] is None else bool(row[14]),
            outcome_class=OutcomeClass(row[15]) if row[15] else None,
            error_code=row[16],
            error_description=row[17],
            http_status=row[18],
            latency=row[19],
            evidence=json.loads(row[20]) if row[20] else {},
        )

    def _read_grant(self, name: str) -> Tx[Grant]:
        row = (yield Sql(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE name = ?", (name,))).fetchone()
        if row is None:
            raise UnknownGrant(f"no grant named {name!r}; import it with 'grantkeeper grant import'", grant=name)
        return self._grant(row)

    def _read_grant_and_provider(self, name: str, *, lock: bool = False) -> Tx[tuple[Grant, Provider]]:
        """One query for both: every cold token read and every claim runs it. `lock` holds the grant row to the
        end of the transaction on databases where the transaction itself does not exclude other writers (a claim:
        its refresh token is decrypted here, so a damaged one fails the claim before an attempt is recorded; the
        access token it replaces is left sealed). A read (no `lock`) leaves the refresh token sealed instead."""
        sql = _GRANT_AND_PROVIDER + self._row_lock if lock else _GRANT_AND_PROVIDER
        row = (yield Sql(sql, (name,))).fetchone()
        if row is None:
            grant = yield from self._read_grant(name)  # raises UnknownGrant; the join cannot miss a provider
            return grant, (yield from self._read_provider(grant.provider))
        grant = self._grant(row[:_GRANT_WIDTH], lazy_refresh=not lock, lazy_access=lock)
        return grant, self._provider(row[_GRANT_WIDTH:])

    def _read_provider(self, name: str) -> Tx[Provider]:
        row = (yield Sql(f"SELECT {_PROVIDER_COLUMNS} FROM providers WHERE name = ?", (name,))).fetchone()
        if row is None:
            raise UnknownProvider(f"no provider named {name!r}; add it with 'grantkeeper provider add'", provider=name)
        return self._provider(row)

    # ---------------------------------------------------------------- configuration

    @transaction
    def put_provider(self, provider: Provider, *, now: float) -> Op[None]:
        secret = self._seal(provider.client_secret, "providers", provider.name, "client_secret")
        yield Sql(
            f"INSERT INTO providers ({_PROVIDER_COLUMNS}, created_at, updated_at) "
            f"VALUES ({', '.join('?' * (_PROVIDER_COLUMNS.count(',') + 3))}) "
            "ON CONFLICT (name) DO UPDATE SET "
            "token_url = excluded.token_url, client_id = excluded.client_id, "
            "client_secret = excluded.client_secret, client_secret_env = excluded.client_secret_env, "
            "auth_method = excluded.auth_method, rotation = excluded.rotation, "
            "reuse_grace = excluded.reuse_grace, skew = excluded.skew, "
            "default_expires_in = excluded.default_expires_in, refresh_idle_ttl = excluded.refresh_idle_ttl, "
            "refresh_absolute_ttl = excluded.refresh_absolute_ttl, private_key_file = excluded.private_key_file, "
            "key_id = excluded.key_id, jwt_audience = excluded.jwt_audience, send_scope = excluded.send_scope, "
            "profile = excluded.profile, authorization_url = excluded.authorization_url, "
            "revocation_url = excluded.revocation_url, "
            "device_authorization_url = excluded.device_authorization_url, "
            "authorize_params = excluded.authorize_params, api_base_url = excluded.api_base_url, "
            "ca_bundle = excluded.ca_bundle, proxy = excluded.proxy, insecure_http = excluded.insecure_http, "
            "updated_at = excluded.updated_at",
            (
                provider.name, provider.token_url, provider.client_id, secret, provider.client_secret_env,
                provider.auth_method.value, provider.rotation.value, provider.reuse_grace, provider.skew,
                provider.default_expires_in, provider.refresh_idle_ttl, provider.refresh_absolute_ttl,
                provider.private_key_file, provider.key_id, provider.jwt_audience, int(provider.send_scope),
                provider.profile, provider.authorization_url, provider.revocation_url,
                provider.device_authorization_url,
                json.dumps([list(p) for p in provider.authorize_params]) if provider.authorize_params else None,
                provider.api_base_url, provider.ca_bundle, provider.proxy, int(provider.insecure_http), now, now,
            ),
            wait=False,
        )  # fmt: skip

    @query
    def get_provider(self, name: str) -> Op[Provider]:
        return (yield from self._read_provider(name))

    @query
    def list_providers(self) -> Op[list[Provider]]:
        rows = (yield Sql(f"SELECT {_PROVIDER_COLUMNS} FROM providers ORDER BY name")).fetchall()
        return [self._provider(r) for r in rows]

    @transaction
    def import_grant(
        self, name: str, *, provider: str, refresh_token: Secret, scopes: tuple[str, ...], now: float,
        min_generation: int = 1, created_at: float | None = None, refreshed_at: float | None = None,
        refresh_issued_at: float | None = None, refresh_expires_at: float | None = None,
        access_token: Secret | None = None, expires_at: float | None = None,
    ) -> Op[Grant]:  # fmt: skip
        """Create the grant, or replace its refresh token (re-consent), in one transaction.

        The generation only goes up: past the stored one, past `min_generation` (a bundle's), and past that of a
        deleted grant of the same name (`delete_grant` leaves a floor in `meta`), so a refresh still in flight
        for an older token or a deleted grant can never commit over this one. The clock fields carry lifetimes
        over from another store (a bundle); by default they start now.

        `access_token` with its `expires_at` is the access token issued with the refresh token (a consent's
        token response): written sealed and fingerprinted as a refresh commit writes it, so the first token
        read needs no refresh. Without it any stored access token is dropped: it belonged to the old consent.
        """
        check_name(name, "grant")
        if not refresh_token:
            raise ConfigurationError("the refresh token is empty; pipe the token on standard input")
        if (access_token is None) != (expires_at is None):
            raise ConfigurationError("an imported access token needs its expiry, and an expiry its access token")
        sealed = self._seal(refresh_token, "grants", name, "refresh_token")
        fp = self.fingerprint(refresh_token)
        access = self._seal(access_token, "grants", name, "access_token")
        access_fp = self.fingerprint(access_token) if access_token is not None else None
        yield from self._read_provider(provider)
        floor_generation, floor_fence = yield from self._floor(name)
        first = max(1, min_generation, floor_generation + 1)
        yield Sql(
            "INSERT INTO grants (name, provider, refresh_token, refresh_fp, access_token, access_fp, expires_at, "
            "access_verified, scopes, generation, state, refreshed_at, created_at, updated_at, refresh_issued_at, "
            "refresh_expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, 'active', ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO "
            "UPDATE SET provider = excluded.provider, refresh_token = excluded.refresh_token, "
            "refresh_fp = excluded.refresh_fp, access_token = excluded.access_token, "
            "access_fp = excluded.access_fp, expires_at = excluded.expires_at, access_verified = 1, "
            "scopes = excluded.scopes, generation = CASE WHEN grants.generation + 1 > excluded.generation "
            "THEN grants.generation + 1 ELSE excluded.generation END, state = 'active', "
            "last_error = NULL, last_error_at = NULL, refreshed_at = excluded.refreshed_at, "
            "created_at = excluded.created_at, updated_at = excluded.updated_at, "
            "refresh_issued_at = excluded.refresh_issued_at, refresh_expires_at = excluded.refresh_expires_at",
            (
                name, provider, sealed, fp, access, access_fp, expires_at, " ".join(scopes), first,
                refreshed_at or now, created_at or now, now, refresh_issued_at or now, refresh_expires_at,
            ),
            wait=False,
        )  # fmt: skip
        if floor_fence:
            # Fences go on from the deleted grant's, so its old holder's release cannot free this one's lease.
            yield Sql(
                "INSERT INTO leases (grant_name, worker, fence, expires_at) VALUES (?, NULL, ?, 0) "
                "ON CONFLICT (grant_name) DO NOTHING",
                (name, floor_fence),
                wait=False,
            )
            yield Sql("DELETE FROM meta WHERE key = ?", (_floor_key(name),), wait=False)
        return (yield from self._read_grant(name))

    @staticmethod
    def _floor(name: str) -> Tx[tuple[int, int]]:
        """The generation and lease fence a deleted grant of this name reached (0, 0 if none)."""
        row = (yield Sql("SELECT value FROM meta WHERE key = ?", (_floor_key(name),))).fetchone()
        if row is None:
            return 0, 0
        generation, fence = bytes(row[0]).decode().split()
        return int(generation), int(fence)

    @query
    def get_grant(self, name: str) -> Op[Grant]:
        return (yield from self._read_grant(name))

    @query
    def served_access(self, name: str, now: float) -> Op[ServedToken | None]:
        """Grant `name`'s access token if it is served at `now` (an active grant, its token valid beyond the skew):
        the read of every ``access_token`` call that misses the keeper's cache, one narrow statement with only the
        access token decrypted. None for anything else (no such grant, no token, due, dead): the caller takes the
        refresh path, which reads the whole grant and says what is wrong."""
        return self._served_token(name, now, (yield Sql(SERVED_ACCESS, (name, now))).fetchone())

    def _served_token(self, name: str, now: float, row: Any) -> ServedToken | None:
        """`served_access`'s answer from the row its statement (`SERVED_ACCESS`) read, or None."""
        if row is None or row[0] is None:
            return None
        access = self._crypto.decrypt(row[0], aad=_aad("grants", name, "access_token"))
        until = serve_until(access, row[1], row[2], float(row[4]))
        if until is None or until <= now:
            return None
        return ServedToken(access, int(row[3]), float(row[1]), until)

    @query
    def get_grant_and_provider(self, name: str) -> Op[tuple[Grant, Provider]]:
        return (yield from self._read_grant_and_provider(name))

    @query
    def list_grants(self) -> Op[list[Grant]]:
        rows = (yield Sql(f"SELECT {_GRANT_COLUMNS} FROM grants ORDER BY name")).fetchall()
        return [self._grant(r) for r in rows]

    #: Served by the ``grants_due (state, expires_at)`` index: a range scan, not a table scan.
    DUE_QUERY = "SELECT name FROM grants WHERE state = 'active' AND expires_at < ? ORDER BY expires_at LIMIT ?"

    @query
    def due_for_refresh(self, *, before: float, limit: int = 1000) -> Op[list[str]]:
        """Active grants whose access token expires before `before`, soonest first (a scheduler's query).
        Grants never refreshed (no access token yet) are not listed: their first use refreshes them."""
        return [str(r[0]) for r in (yield Sql(self.DUE_QUERY, (before, limit))).fetchall()]

    # ---------------------------------------------------------------- the refresh scheduler's plan

    _SCHEDULE_COLUMNS = "name, hot, last_used_at, next_due_at, warned_at"

    @staticmethod
    def _schedule_entry(row: Any) -> ScheduleEntry:
        return ScheduleEntry(str(row[0]), bool(row[1]), row[2], float(row[3]), row[4])

    @transaction
    def take_due(self, *, now: float, hold: float, limit: int) -> Op[list[tuple[ScheduleEntry, Grant, Provider]]]:
        """Active grants whose planned time has come, soonest first, each with its grant (tokens left sealed) and
        provider as read now; each is moved `hold` seconds ahead in the same transaction, so no other scheduler
        takes it meanwhile (`_skip_locked` lets concurrent schedulers on PostgreSQL pass each other's rows instead
        of queueing). One that is never planned again (its scheduler died) is due once more after `hold`."""
        rows = (
            yield Sql(
                f"SELECT {_GRANT_COLUMNS_QUALIFIED}, {_PROVIDER_COLUMNS_QUALIFIED}, grants.hot, grants.last_used_at, "
                f"grants.next_due_at, grants.warned_at FROM grants{self._next_due_index} "
                "JOIN providers ON providers.name = grants.provider "
                "WHERE grants.state = 'active' AND grants.next_due_at <= ? ORDER BY grants.next_due_at LIMIT ?"
                + self._skip_locked,
                (now, limit),
            )
        ).fetchall()
        taken: list[tuple[ScheduleEntry, Grant, Provider]] = []
        providers: dict[str, Provider] = {}
        width = _GRANT_WIDTH + _PROVIDER_WIDTH
        for row in rows:
            grant = self._grant(row[:_GRANT_WIDTH], lazy_refresh=True, lazy_access=True)
            if (provider := providers.get(grant.provider)) is None:
                provider = providers[grant.provider] = self._provider(row[_GRANT_WIDTH:width])
            taken.append((self._schedule_entry((grant.name, *row[width:])), grant, provider))
            yield Sql("UPDATE grants SET next_due_at = ? WHERE name = ?", (now + hold, grant.name), wait=False)
        return taken

    @transaction
    def plan_due(self, plans: list[tuple[str, float, float | None]]) -> Op[None]:
        """Set each grant's next planned time: (grant, next_due_at, warned_at); a warned_at of None keeps the
        stored one. A grant deleted meanwhile is skipped."""
        for name, due, warned in plans:
            yield Sql("UPDATE grants SET next_due_at = ?, warned_at = COALESCE(?, warned_at) WHERE name = ?",
                      (due, warned, name), wait=False)  # fmt: skip

    @transaction
    def note_used(self, names: list[str], *, now: float, window: float) -> Op[None]:
        """The service handed out these grants' tokens at `now`. A grant not used within `window` before (so not
        kept fresh ahead of time until now) is planned again at once."""
        for name in names:
            yield Sql(
                "UPDATE grants SET next_due_at = CASE WHEN NOT hot AND (last_used_at IS NULL OR last_used_at < ?) "
                "THEN 0 ELSE next_due_at END, last_used_at = ? WHERE name = ?",
                (now - window, now, name),
                wait=False,
            )

    @transaction
    def set_hot(self, name: str, hot: bool) -> Op[None]:
        """Mark grant `name` to be kept fresh ahead of time whatever its use (or not); planned again at once."""
        row = yield Sql("UPDATE grants SET hot = ?, next_due_at = 0 WHERE name = ? RETURNING name", (hot, name))
        if row.fetchone() is None:
            raise UnknownGrant(f"no grant named {name!r}; 'grantkeeper status' lists them", grant=name)

    @query
    def schedule(self, *, limit: int = 50) -> Op[list[ScheduleEntry]]:
        """Active grants in the order a scheduler takes them (soonest planned time first)."""
        rows = (
            yield Sql(
                f"SELECT {self._SCHEDULE_COLUMNS} FROM grants{self._next_due_index} WHERE state = 'active' "
                "ORDER BY next_due_at LIMIT ?",
                (limit,),
            )
        ).fetchall()
        return [self._schedule_entry(r) for r in rows]

    @transaction
    def delete_grant(self, name: str, *, expected_generation: int | None = None) -> Op[None]:
        """Delete the grant, its lease and history, and its local recovery entries.

        With `expected_generation`, only if the grant is still at that generation (else `GenerationConflict`:
        a refresh committed meanwhile). The generation and fence it reached stay behind in `meta`, so a grant
        created later under the same name starts above them (see `import_grant`).
        """
        row = (
            yield Sql(
                "SELECT grants.generation, COALESCE(leases.fence, 0) FROM grants LEFT JOIN leases "
                "ON leases.grant_name = grants.name WHERE grants.name = ?" + self._row_lock,
                (name,),
            )
        ).fetchone()
        if row is None:
            raise UnknownGrant(f"no grant named {name!r}", grant=name)
        if expected_generation is not None and int(row[0]) != expected_generation:
            raise GenerationConflict(
                f"grant {name!r} was refreshed meanwhile (generation {expected_generation} -> {row[0]}); it was "
                "not removed. Run the command again",
                grant=name, generation=int(row[0]),
            )  # fmt: skip
        floor_generation, floor_fence = yield from self._floor(name)
        value = f"{max(int(row[0]), floor_generation)} {max(int(row[1]), floor_fence)}".encode()
        yield Sql(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_floor_key(name), value),
            wait=False,
        )
        yield Sql("DELETE FROM grants WHERE name = ?", (name,), wait=False)
        yield COMMIT
        for entry in self.recovery.entries(name):
            self.recovery.remove(entry)

    @query
    def list_attempts(self, name: str, *, limit: int = 20) -> Op[list[Attempt]]:
        """The grant's attempt history, newest first (at most `limit`; retention may have pruned older ones)."""
        sql = f"SELECT {_HISTORY_COLUMNS} FROM attempts WHERE grant_name = ? ORDER BY id DESC LIMIT ?"
        rows = (yield Sql(sql, (name, limit))).fetchall()
        return [self._attempt(r) for r in rows]

    @query
    def get_attempt(self, name: str, attempt_id: int) -> Op[Attempt | None]:
        """One attempt of grant `name` by id; None if it never existed or was pruned."""
        sql = f"SELECT {_HISTORY_COLUMNS} FROM attempts WHERE grant_name = ? AND id = ?"
        row = (yield Sql(sql, (name, attempt_id))).fetchone()
        return self._attempt(row) if row else None

    @query
    def spent_by(self, name: str, refresh_fp: str) -> Op[Attempt | None]:
        """The newest attempt of grant `name` that spent the refresh token with fingerprint `refresh_fp`: it sent
        that token and committed a different successor, so a rotating provider no longer accepts it (and one that
        detects reuse revokes the grant when it sees it again). Once retention has pruned that attempt, what
        pruning remembered of it (id, generation, start time; no worker, state ``committed``); None if neither
        has it."""
        sql = (
            f"SELECT {_HISTORY_COLUMNS} FROM attempts WHERE grant_name = ? AND refresh_fp = ? AND "
            f"{_SPENT_CONDITION} ORDER BY id DESC LIMIT 1"
        )
        row = (yield Sql(sql, (name, refresh_fp))).fetchone()
        if row is not None:
            return self._attempt(row)
        return (yield from self._remembered_spender(name, refresh_fp))

    @staticmethod
    def _remembered_spender(name: str, refresh_fp: str) -> Tx[Attempt | None]:
        digest = _fp_digest(refresh_fp)
        row = (yield Sql("SELECT value FROM meta WHERE key = ?", (_spent_key(name),))).fetchone()
        if digest is None or row is None:
            return None
        records = list(_SPENT_RECORD.iter_unpack(bytes(row[0])))
        for spent, attempt_id, generation, started_at in reversed(records):
            if spent == digest:
                return Attempt(int(attempt_id), name, int(generation), refresh_fp, "", float(started_at),
                               AttemptState.COMMITTED, outcome="spent; pruned from the kept history",
                               rotated=True)  # fmt: skip
        return None

    @staticmethod
    def _remember_pruned(rows: list[Any]) -> Tx[int]:
        """Keep what `spent_by` needs of the spending attempts among `rows` (deleted attempts: grant, id,
        generation, fingerprint, start time, whether it spent its token); returns how many rows were deleted."""
        by_grant: dict[str, list[tuple[int, bytes]]] = {}
        for grant_name, attempt_id, generation, fingerprint, started_at, spent in rows:
            digest = _fp_digest(str(fingerprint))
            if spent and digest is not None:
                record = _SPENT_RECORD.pack(digest, int(attempt_id), int(generation), float(started_at))
                by_grant.setdefault(str(grant_name), []).append((int(attempt_id), record))
        for grant_name, records in by_grant.items():
            key = _spent_key(grant_name)
            row = (yield Sql("SELECT value FROM meta WHERE key = ?", (key,))).fetchone()
            kept = (bytes(row[0]) if row else b"") + b"".join(record for _, record in sorted(records))
            yield Sql(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, kept[-_SPENT_MEMORY * _SPENT_RECORD.size :]),
                wait=False,
            )
        return len(rows)

    @query
    def names(self, kind: str) -> Op[list[str]]:
        """Every grant (`kind` "grants") or provider ("providers") name, sorted; no secret is decrypted."""
        if kind not in ("grants", "providers"):
            raise ValueError(f"no such kind of name: {kind!r}")
        rows = (yield Sql(f"SELECT name FROM {kind} ORDER BY name")).fetchall()
        return [str(r[0]) for r in rows]

    @transaction
    def prune_history(self, *, now: float) -> Op[int]:
        """Apply `retention` to every grant now (commits also prune as they go); returns rows deleted."""
        deleted = (yield from self._remember_pruned((yield Sql(
            f"DELETE FROM attempts WHERE started_at < ? AND NOT {_NEEDED_BY_CLAIM}" + _PRUNED_RETURNING,
            (now - self.retention.days * 86400.0,),
        )).fetchall()))  # fmt: skip
        names = [str(r[0]) for r in (yield Sql("SELECT name FROM grants")).fetchall()]
        for name in names:
            deleted += yield from self._prune_grant_history(name, now=None)
        return int(deleted)

    def _prune_grant_history(self, name: str, *, now: float | None) -> Tx[int]:
        """Delete grant `name`'s attempts past the newest `retention.per_grant` (and, with `now`, those older than
        `retention.days`), except what a claim still needs; returns how many were deleted.

        It runs inside a commit every `_PRUNE_EVERY` generations, so it visits only what it may delete. "Newest"
        is the order of the grant's index (generation, then id; attempts are numbered as generations advance):
        the cut is found by walking that index back from the end, and the deletion walks it only up to the cut.
        Rows older than `days` are looked for in the time index first; usually there are none.
        """
        deleted: list[Any] = []
        cut = (
            yield Sql(
                "SELECT generation, id FROM attempts WHERE grant_name = ? ORDER BY generation DESC, id DESC "
                "LIMIT 1 OFFSET ?",
                (name, self.retention.per_grant),
            )
        ).fetchone()
        if cut is not None:
            deleted += (
                yield Sql(
                    "DELETE FROM attempts WHERE grant_name = ? AND generation <= ? AND (generation < ? OR id <= ?) "
                    f"AND NOT {_NEEDED_BY_CLAIM}" + _PRUNED_RETURNING,
                    (name, cut[0], cut[0], cut[1]),
                )
            ).fetchall()
        oldest = None if now is None else now - self.retention.days * 86400.0
        if (
            oldest is not None
            and (yield Sql("SELECT 1 FROM attempts WHERE started_at < ? LIMIT 1", (oldest,))).fetchone()
        ):
            deleted += (
                yield Sql(
                    f"DELETE FROM attempts WHERE grant_name = ? AND started_at < ? AND NOT {_NEEDED_BY_CLAIM}"
                    + _PRUNED_RETURNING,
                    (name, oldest),
                )
            ).fetchall()
        return (yield from self._remember_pruned(deleted))

    @query
    def lease_holder(self, name: str, *, now: float) -> Op[LeaseHolder | None]:
        sql = (
            "SELECT worker, fence, expires_at FROM leases WHERE grant_name = ? AND worker IS NOT NULL "
            "AND expires_at > ?"
        )
        row = (yield Sql(sql, (name, self._lease_clock(now)))).fetchone()
        return LeaseHolder(row[0], int(row[1]), float(row[2])) if row else None

    # ---------------------------------------------------------------- the refresh transaction

    @transaction
    def claim(
        self, name: str, *, worker: str, lease_ttl: LeaseTTL, now: float, force: bool, seen_generation: int | None,
        actor: str = "",
    ) -> Op[Claim]:  # fmt: skip
        settled: list[RecoveryEntry] = []
        # Held before the lease row names it, so nobody ever finds a recorded signal that is not held yet.
        signal = (yield Blocking(self.liveness.hold, (worker,))) if self.liveness is not None else None
        claim = yield from self._claim(name, worker, lease_ttl, now, force, seen_generation, actor, settled, signal)
        yield COMMIT
        # Recovery files go only once the transaction that used or superseded them has committed: removed earlier,
        # a rollback would lose the successor they hold.
        for entry in settled:
            self.recovery.remove(entry)
        if self._observers and (claim.holder is not None or claim.recovered):
            kind = "lease_wait" if claim.holder is not None else "recovered"
            self._observed(StoreEvent(kind, name, provider=claim.provider.name))
        return claim

    def _claim(
        self, name: str, worker: str, lease_ttl: LeaseTTL, now: float, force: bool,
        seen_generation: int | None, actor: str, settled: list[RecoveryEntry], signal: str | None,
    ) -> Tx[Claim]:  # fmt: skip
        read = (yield from self._read_claim(name)) if self._claim_in_one_read else None
        if read is not None:
            grant, provider = read[0], read[1]
        else:
            grant, provider = yield from self._read_grant_and_provider(name, lock=True)
        forced = force and (seen_generation is None or grant.generation <= seen_generation)
        needed = grant.state is GrantState.ACTIVE and (forced or not grant.access_usable(now, provider.skew))
        if not needed:
            return Claim(grant, provider)
        if read is not None:
            lease_row, earlier = read[2], read[3]
        else:
            # A statement of its own, after the grant row is locked: under READ COMMITTED a lease joined into
            # the locking query would come from the snapshot taken before the lock wait, i.e. before the previous
            # holder's commit, and two workers would both see the lease free (the multi-host tests catch this).
            lease_row, earlier = _lease_and_ids((yield Sql(_LEASE_AND_EARLIER, (name,))).fetchone())
        lease_now = self._lease_clock(now)
        took_over = None
        # A lease this same worker left behind (its commit failed) is reclaimable: in-process single-flight
        # guarantees the worker is not refreshing this grant concurrently.
        if lease_row is not None and lease_row[0] not in (None, worker) and lease_row[2] > lease_now:
            holder = LeaseHolder(lease_row[0], lease_row[1], lease_row[2])
            if not (yield from self._holder_dead(lease_row[3])):
                signal_known = lease_row[3] is not None and self.liveness is not None
                return Claim(grant, provider, holder=holder, holder_signal=signal_known)
            took_over = holder  # its process is gone: waiting out its TTL would only delay the re-send
        kept = self.recovery.entries(name)
        recovered = (yield from self._commit_kept(grant, kept, now, settled)) if kept else None
        if recovered is not None:
            if took_over is not None:  # the dead holder's lease goes with it: nobody is refreshing now
                yield Sql("UPDATE leases SET worker = NULL, expires_at = 0 WHERE grant_name = ?", (name,), wait=False)
            return Claim(recovered, provider, recovered=True)
        fence = (lease_row[1] if lease_row is not None else 0) + 1
        ttl = lease_ttl(provider) if callable(lease_ttl) else lease_ttl
        yield Sql(
            "INSERT INTO leases (grant_name, worker, fence, expires_at, liveness) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (grant_name) DO UPDATE SET worker = excluded.worker, fence = excluded.fence, "
            "expires_at = excluded.expires_at, liveness = excluded.liveness",
            (name, worker, fence, lease_now + ttl, signal),
            wait=False,
        )
        lease = Lease(name, worker, fence, lease_now + ttl)
        prior_row, resend_row = yield from self._earlier_attempts(earlier)
        prior = self._attempt(prior_row) if prior_row else None
        spent_since = None
        if prior is not None:  # rare (a crash or a lost answer): the grace counts from the token's first use
            spent_since = float((yield Sql(
                "SELECT MIN(started_at) FROM attempts WHERE grant_name = ? AND generation = ? AND refresh_fp = ? "
                "AND state IN ('open', 'ambiguous')",
                (name, grant.generation, grant.refresh_fp),
            )).fetchone()[0])  # fmt: skip
        attempt = yield from self._insert_attempt(
            lease, grant.generation, str(grant.refresh_fp), prior.id if prior else None, now, actor, 1
        )
        # The prior attempt stays as it is: the commit of this generation closes it, and until then a deferred
        # or crashed re-send must still find it.
        return Claim(
            grant,
            provider,
            lease=lease,
            attempt=attempt,
            prior=prior,
            recent_resend=self._attempt(resend_row) if resend_row else None,
            shared_recovery=self._shared_recovery,
            spent_since=spent_since,
            took_over=took_over,
        )

    def _read_claim(self, name: str) -> Tx[tuple[Grant, Provider, Any, tuple[int | None, int | None]] | None]:
        """`_CLAIM_READ`: grant, provider, lease row (None if the grant never had a lease) and the ids of the
        attempts `_earlier_attempts` fetches, in one statement; None if there is no such grant (the statement by
        statement path then says so)."""
        row = (yield Sql(_CLAIM_READ, (name,))).fetchone()
        if row is None:
            return None
        lease_at = _GRANT_WIDTH + _PROVIDER_WIDTH
        grant = self._grant(row[:_GRANT_WIDTH], lazy_access=True)  # the refresh token is spent: decrypted now
        return grant, self._provider(row[_GRANT_WIDTH:lease_at]), *_lease_and_ids(row[lease_at:])

    @staticmethod
    def _earlier_attempts(ids: tuple[int | None, int | None]) -> Tx[tuple[Any, Any]]:
        """The rows of the attempts `_PRIOR_ID` and `_RESEND_ID` named (None each if there is none): usually both
        None, and no statement at all."""
        if ids == (None, None):
            return None, None
        rows = {
            row[0]: row
            for row in (
                yield Sql(f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE id IN (?, ?)", (ids[0] or -1, ids[1] or -1))
            ).fetchall()
        }
        return rows.get(ids[0]), rows.get(ids[1])

    def _holder_dead(self, signal: str | None) -> Tx[bool]:
        """Whether the lease holder's liveness signal says it died. Unknown (no signal recorded, this store
        cannot probe it) is not dead: that lease is waited out."""
        return signal is not None and self.liveness is not None and (yield from self.liveness.probe(signal)) is False

    @query
    def worker_alive(self, worker: str) -> Op[bool | None]:
        """Whether `worker` (any worker id, e.g. from the attempt history) still holds its liveness signal;
        None if this store has no signals or cannot tell (the worker never held one here)."""
        if self.liveness is None:
            return None
        return (yield from self.liveness.probe(self.liveness.key_for(worker)))

    def _insert_attempt(
        self, lease: Lease, generation: int, refresh_fp: str, resend_of: int | None,
        now: float, actor: str, try_number: int,
    ) -> Tx[Attempt]:  # fmt: skip
        row = (
            yield Sql(
                "INSERT INTO attempts (grant_name, generation, refresh_fp, worker, fence, started_at, state, "
                "resend_of, actor, try_number) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?) RETURNING id",
                (lease.grant, generation, refresh_fp, lease.worker, lease.fence, now, resend_of, actor, try_number),
            )
        ).fetchone()
        return Attempt(
            int(row[0]), lease.grant, generation, refresh_fp, lease.worker, now, AttemptState.OPEN,
            resend_of=resend_of, actor=actor, try_number=try_number,
        )  # fmt: skip

    @staticmethod
    def _close_attempt(
        attempt_id: int, state: AttemptState, outcome: str, now: float, report: AttemptReport | None
    ) -> Tx[None]:
        if report is None:
            yield Sql(
                "UPDATE attempts SET state = ?, outcome = ?, finished_at = ? WHERE id = ?",
                (state.value, outcome, now, attempt_id),
                wait=False,
            )
            return
        yield Sql(
            "UPDATE attempts SET state = ?, outcome = ?, finished_at = ?, outcome_class = ?, error_code = ?, "
            "error_description = ?, http_status = ?, latency = ?, evidence = ? WHERE id = ?",
            (
                state.value, outcome, now, report.kind.value, report.error_code, report.error_description,
                report.http_status, report.latency,
                json.dumps(dict(report.evidence), sort_keys=True) if report.evidence else None, attempt_id,
            ),
            wait=False,
        )  # fmt: skip

    @staticmethod
    def _close_recovered(attempt_id: int, grant: Grant, now: float) -> Tx[None]:
        yield Sql(
            "UPDATE attempts SET state = 'recovered', outcome = 'committed from recovery', finished_at = ?, "
            "outcome_class = 'recovered', new_generation = ?, received_fp = ? WHERE id = ?",
            (now, grant.generation, grant.refresh_fp, attempt_id),
            wait=False,
        )

    @transaction
    def record_attempt(
        self, lease: Lease, *, generation: int, refresh_fp: str, resend_of: int | None, lease_ttl: float, now: float,
        actor: str = "", try_number: int = 1,
    ) -> Op[Attempt]:  # fmt: skip
        """Record another attempt under a held lease (a retry), renewing the lease in the same transaction."""
        renewed = (
            yield Sql(
                "UPDATE leases SET expires_at = ? WHERE grant_name = ? AND fence = ? AND worker = ?",
                (self._lease_clock(now) + lease_ttl, lease.grant, lease.fence, lease.worker),
            )
        ).rowcount
        if renewed == 0:
            raise LeaseLost(
                f"the lease on grant {lease.grant!r} (fence {lease.fence}) was taken over by another "
                "worker; not sending",
                grant=lease.grant,
                worker=lease.worker,
            )
        return (yield from self._insert_attempt(lease, generation, refresh_fp, resend_of, now, actor, try_number))

    def _apply(
        self, grant: Grant, update: GrantUpdate, *, now: float, generation: int | None = None
    ) -> Tx[Grant | None]:
        """Compare-and-set the next generation; None if the stored generation is not `grant.generation`.

        `grant` is the state the refresh started from (read under the lease); the WHERE clause is the check,
        so nothing is re-read here. A missing refresh token or scope keeps the stored one. `generation` is the
        one written (default: the next); only a successor kept for a generation the store no longer has (it went
        back to an older backup) passes another, see `_commit_kept`.
        """
        name = grant.name
        generation = grant.generation + 1 if generation is None else generation
        refresh_fp = self.fingerprint(update.refresh_token) if update.refresh_token else None
        access_fp = self.fingerprint(update.access_token) if update.access_token is not None else None
        # Lifetime of the refresh token in force after this commit: a new one starts its own; a kept one keeps
        # its issue time, and its stated expiry unless the provider restated it.
        rotated = update.refresh_token is not None
        issued_at = now if rotated else grant.refresh_issued_at
        rt_expires_at = update.refresh_expires_at
        if rt_expires_at is None and not rotated:
            rt_expires_at = grant.refresh_expires_at
        changed = (yield Sql(
            "UPDATE grants SET refresh_token = COALESCE(?, refresh_token), refresh_fp = COALESCE(?, refresh_fp), "
            "access_token = ?, access_fp = ?, expires_at = ?, access_verified = ?, scopes = COALESCE(?, scopes), "
            "generation = ?, last_error = NULL, last_error_at = NULL, refreshed_at = ?, "
            "updated_at = ?, refresh_issued_at = ?, refresh_expires_at = ? "
            "WHERE name = ? AND generation = ? AND state = 'active'",
            (
                self._seal(update.refresh_token, "grants", name, "refresh_token"), refresh_fp,
                self._seal(update.access_token, "grants", name, "access_token"), access_fp, update.expires_at,
                int(update.access_verified), " ".join(update.scopes) if update.scopes is not None else None,
                generation, now, now, issued_at, rt_expires_at, name, grant.generation,
            ),
        )).rowcount  # fmt: skip
        if changed == 0:
            return None
        # Every field named (not `dataclasses.replace`, which costs several times more on the commit's hot path).
        return Grant(
            name=name,
            provider=grant.provider,
            refresh_token=update.refresh_token or grant.refresh_token,
            refresh_fp=refresh_fp or grant.refresh_fp,
            access_token=update.access_token,
            access_fp=access_fp,
            expires_at=update.expires_at,
            scopes=update.scopes if update.scopes is not None else grant.scopes,
            generation=generation,
            state=grant.state,
            access_verified=update.access_verified,
            last_error=None,
            last_error_at=None,
            updated_at=now,
            refreshed_at=now,
            created_at=grant.created_at,
            refresh_issued_at=issued_at,
            refresh_expires_at=rt_expires_at,
        )

    @transaction
    def commit(
        self, lease: Lease, *, attempt_id: int, base: Grant, update: GrantUpdate, now: float,
        latency: float | None = None,
    ) -> Op[Grant]:  # fmt: skip
        committed = yield from self._apply(base, update, now=now)
        if committed is None:
            current = yield from self._read_grant(lease.grant)
            raise GenerationConflict(
                f"grant {lease.grant!r} is at generation {current.generation} ({current.state.value}), not "
                f"{base.generation}: another worker committed first or the grant was re-imported; the "
                "refresh result was not stored",
                grant=lease.grant, generation=current.generation, attempt_id=attempt_id,
            )  # fmt: skip
        # Close this attempt, and any other still-open one of the same generation (a lost lease's), at once.
        rotated = update.refresh_token is not None
        received_fp = committed.refresh_fp if rotated or update.same_refresh_returned else None
        yield Sql(
            "UPDATE attempts SET state = CASE WHEN id = ? THEN 'committed' ELSE 'abandoned' END, "
            "outcome = CASE WHEN id = ? THEN ? ELSE 'superseded by a committed attempt' END, finished_at = ?, "
            "outcome_class = CASE WHEN id = ? THEN 'committed' ELSE 'superseded' END, "
            # Casts: PostgreSQL cannot infer a parameter's type inside CASE (SQLite reads them as affinities).
            "new_generation = CASE WHEN id = ? THEN CAST(? AS BIGINT) END, "
            "received_fp = CASE WHEN id = ? THEN CAST(? AS TEXT) END, "
            "rotated = CASE WHEN id = ? THEN CAST(? AS BIGINT) END, "
            "latency = CASE WHEN id = ? THEN CAST(? AS DOUBLE PRECISION) END, "
            "evidence = CASE WHEN id = ? THEN NULL ELSE CAST(? AS TEXT) END "
            "WHERE id = ? OR (grant_name = ? AND generation = ? AND state = 'open')",
            (attempt_id, attempt_id, f"generation {committed.generation}", now, attempt_id,
             attempt_id, committed.generation, attempt_id, received_fp, attempt_id, int(rotated),
             attempt_id, latency, attempt_id, f'{{"committed_by": {int(attempt_id)}}}', attempt_id, lease.grant,
             base.generation),
            wait=False,
        )  # fmt: skip
        yield from self._release(lease)
        yield from self._notify(lease.grant, committed.generation, "commit")
        if committed.generation % _PRUNE_EVERY == 0:
            yield from self._prune_grant_history(lease.grant, now=now)
        yield COMMIT
        if self._observers:
            self._observed(StoreEvent("attempt", lease.grant, outcome=OutcomeClass.COMMITTED.value, seconds=latency))
        return committed

    @staticmethod
    def _release(lease: Lease) -> Tx[None]:
        yield Sql(
            "UPDATE leases SET worker = NULL, expires_at = 0, liveness = NULL WHERE grant_name = ? AND fence = ?",
            (lease.grant, lease.fence),
            wait=False,
        )

    @transaction
    def finish(
        self, lease: Lease, *, attempt_id: int, state: AttemptState, outcome: str, now: float,
        mark_dead: bool = False, release: bool = True, report: AttemptReport | None = None,
    ) -> Op[None]:  # fmt: skip
        """Close an attempt that did not commit; optionally mark the grant dead and release the lease."""
        deferral = report is not None and report.kind is OutcomeClass.DEFERRED
        folded_into = (yield from self._fold_deferral(lease, attempt_id, now)) if deferral else None
        if folded_into is None:
            yield from self._close_attempt(attempt_id, state, outcome, now, report)
        # Only the generation the attempt spent can be declared dead (I3: a newer one is someone's success).
        yield Sql(
            "UPDATE grants SET last_error = ?, last_error_at = ?, state = CASE WHEN ? THEN 'needs_reauth' "
            "ELSE state END WHERE name = ? AND generation = (SELECT generation FROM attempts WHERE id = ?)",
            (outcome, now, mark_dead, lease.grant, folded_into or attempt_id),
            wait=False,
        )
        if attempt_id % _PRUNE_EVERY == 0:  # a grant that keeps failing never commits: prune here too
            yield from self._prune_grant_history(lease.grant, now=now)
        if release:
            yield from self._release(lease)
            yield from self._notify(lease.grant, -1, "release")
        yield COMMIT
        if self._observers:
            outcome = report.kind.value if report is not None else state.value
            self._observed(StoreEvent("attempt", lease.grant, outcome=outcome,
                                      seconds=report.latency if report is not None else None))  # fmt: skip

    @staticmethod
    def _fold_deferral(lease: Lease, attempt_id: int, now: float) -> Tx[int | None]:
        """Fold a deferral into this worker's earlier deferral behind the same attempt, if there is one.

        While a possibly-spent attempt of another worker may still commit (up to ``adopt_after``), every call
        for the grant is deferred; one row per call buried the history under a thousand rows a minute. The
        earlier row keeps its id and counts the deferrals in its evidence; its finish time is the latest one.
        Returns the earlier row's id, or None if there is none (this attempt is then closed as usual).
        """
        prior = (yield Sql("SELECT resend_of FROM attempts WHERE id = ?", (attempt_id,))).fetchone()
        if prior is None or prior[0] is None:
            return None
        earlier = (
            yield Sql(
                "SELECT id, evidence FROM attempts WHERE grant_name = ? AND worker = ? AND resend_of = ? "
                "AND outcome_class = 'deferred' AND id < ? ORDER BY id DESC LIMIT 1",
                (lease.grant, lease.worker, prior[0], attempt_id),
            )
        ).fetchone()
        if earlier is None:
            return None
        evidence = json.loads(earlier[1]) if earlier[1] else {}
        evidence["deferrals"] = int(evidence.get("deferrals", 1)) + 1
        yield Sql("DELETE FROM attempts WHERE id = ?", (attempt_id,), wait=False)
        yield Sql(
            "UPDATE attempts SET finished_at = ?, evidence = ? WHERE id = ?",
            (now, json.dumps(evidence, sort_keys=True), earlier[0]),
            wait=False,
        )
        return int(earlier[0])

    @transaction
    def release(self, lease: Lease) -> Op[None]:
        yield from self._release(lease)
        yield from self._notify(lease.grant, -1, "release")

    @transaction
    def invalidate_access(self, name: str, *, access_fp: str) -> Op[bool]:
        row = (
            yield Sql(
                "UPDATE grants SET access_token = NULL, access_fp = NULL, expires_at = NULL "
                "WHERE name = ? AND access_fp = ? RETURNING generation",
                (name, access_fp),
            )
        ).fetchone()
        if row is not None:
            yield from self._notify(name, int(row[0]), "invalidate")
        return row is not None

    # ---------------------------------------------------------------- recovery

    @transaction
    def save_recovery(
        self, name: str, *, expected_generation: int, attempt_id: int, update: GrantUpdate, now: float
    ) -> Op[None]:
        yield Blocking(self.recovery.save, (RecoveryEntry(name, expected_generation, attempt_id, update, now),))

    @query
    def pending_recovery(self, name: str | None = None) -> Op[int]:
        """How many successors (of grant `name`, or of any grant) wait in local recovery storage."""
        return len((yield Blocking(self.recovery.entries, (name,))))

    @transaction
    def replay_recovery(self, *, now: float) -> Op[list[str]]:
        """Commit the successor kept in recovery storage for each grant (`_commit_kept`); drop superseded entries
        and those of grants that no longer exist.

        Returns the names of grants brought up to date. Raises StoreUnavailable if the store still cannot
        be written (entries stay on disk).
        """
        pending: dict[str, list[RecoveryEntry]] = {}
        for entry in self.recovery.entries():
            pending.setdefault(entry.grant, []).append(entry)
        done = []
        for name, entries in pending.items():
            settled: list[RecoveryEntry] = []
            try:
                grant = yield from self._read_grant(name)
            except UnknownGrant:
                settled = entries
            else:
                if (yield from self._commit_kept(grant, entries, now, settled)) is not None:
                    yield from self._release_if_dead(name)
                    done.append(name)
            yield COMMIT
            # Removed only once the transaction that used or superseded them has committed (as in `claim`).
            for entry in settled:
                self.recovery.remove(entry)
        for name in done if self._observers else ():
            self._observed(StoreEvent("recovered", name))
        return done

    def _release_if_dead(self, name: str) -> Tx[None]:
        """Free grant `name`'s lease if its holder's liveness signal says it died. After a kept successor is
        committed, the lease its saver kept (a refused commit keeps it) guards nothing; left to its TTL it would
        show a dead worker holding the grant. A live holder keeps its lease: it may be a refresh in progress."""
        sql = "SELECT worker, fence, expires_at, liveness FROM leases WHERE grant_name = ? AND worker IS NOT NULL"
        row = (yield Sql(sql, (name,))).fetchone()
        if row is not None and (yield from self._holder_dead(row[3])):
            yield from self._release(Lease(name, row[0], int(row[1]), float(row[2])))

    def _commit_kept(
        self, grant: Grant, entries: list[RecoveryEntry], now: float, settled: list[RecoveryEntry]
    ) -> Tx[Grant | None]:
        """Commit the successor kept in recovery storage for `grant` as stored; None if there is none to commit.
        Adds to `settled` the entries this makes obsolete (the caller removes them after the transaction).

        Normally that is the entry kept for the stored generation; older ones were committed by other means. An
        entry for a later generation means the store went back (restored from an older backup): the newest such
        entry holds the last refresh token the provider issued, the one it still accepts, and is committed as the
        generation it succeeds, so the generation never goes back for workers that saw the later ones.
        """
        settled.extend(e for e in entries if e.expected_generation < grant.generation)
        ahead = [e for e in entries if e.expected_generation > grant.generation]
        current = [e for e in entries if e.expected_generation == grant.generation]
        chosen = max(ahead, key=lambda e: e.expected_generation) if ahead else next(iter(current), None)
        if chosen is None:
            return None
        recovered = yield from self._apply(grant, chosen.update, now=now, generation=chosen.expected_generation + 1)
        if recovered is None:  # the grant is no longer active: a successor for its stored generation is moot
            settled.extend(current if not ahead else [])
            return None
        if ahead:
            logger.warning(
                "grant %r: the store is at generation %d but local recovery storage held the successor of "
                "generation %d (restored from an older backup?); committed it as generation %d",
                grant.name, grant.generation, chosen.expected_generation, recovered.generation,
                extra={"grantkeeper": {"grant": grant.name, "generation": recovered.generation,
                                       "attempt_id": chosen.attempt_id}},
            )  # fmt: skip
        else:
            # Its attempt is in this store only when the entry was kept for the stored generation.
            yield from self._close_recovered(chosen.attempt_id, recovered, now)
        settled.extend(e for e in entries if grant.generation <= e.expected_generation <= chosen.expected_generation)
        yield from self._notify(grant.name, recovered.generation, "commit")
        return recovered

    # ---------------------------------------------------------------- API keys and audit (`grantkeeper serve`)

    def api_key_digest(self, key: str) -> str:
        """The keyed hash an API key is stored as (the key itself never is)."""
        return self._crypto.keyed_digest(key, purpose="api-key")

    @transaction
    def create_api_key(self, record: ApiKeyRecord, *, key: str) -> Op[None]:
        """Store `record` with the hash of `key`. A name in force is refused; a revoked one is replaced."""
        check_name(record.name, "API key")
        row = (yield Sql("SELECT revoked_at FROM api_keys WHERE name = ?", (record.name,))).fetchone()
        if row is not None and row[0] is None:
            raise ConfigurationError(
                f"API key {record.name!r} exists; revoke it first ('grantkeeper apikey revoke {record.name}') "
                "or choose another name"
            )
        yield Sql("DELETE FROM api_keys WHERE name = ?", (record.name,), wait=False)
        yield from self._notify("", 0, API_KEYS_CHANGED)  # delivered at commit, never before
        yield Sql(
            "INSERT INTO api_keys (name, key_id, key_hash, grants, scopes, created_at, expires_at, revoked_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            (record.name, record.key_id, self.api_key_digest(key), ",".join(record.grants),
             ",".join(record.scopes), record.created_at, record.expires_at),
            wait=False,
        )  # fmt: skip

    @staticmethod
    def _api_key(row: Any) -> ApiKeyRecord:
        return ApiKeyRecord(name=str(row[0]), key_id=str(row[1]), grants=tuple(str(row[2]).split(",")),
                            scopes=tuple(s for s in str(row[3]).split(",") if s), created_at=float(row[4]),
                            expires_at=row[5], revoked_at=row[6])  # fmt: skip

    @query
    def find_api_key(self, key_id: str) -> Op[tuple[ApiKeyRecord, str] | None]:
        """The key with public id `key_id` and its stored hash; None if there is none."""
        sql = "SELECT name, key_id, grants, scopes, created_at, expires_at, revoked_at, key_hash FROM api_keys " \
              "WHERE key_id = ?"  # fmt: skip
        row = (yield Sql(sql, (key_id,))).fetchone()
        return None if row is None else (self._api_key(row), str(row[7]))

    def change_probe(self) -> Callable[[], object] | None:
        """A cheap probe of the whole store, to call on one thread (an event loop's): what it returns differs from
        what it returned before whenever any connection of any process has committed a write since; None when
        this store has no such probe. A reader may keep what it read for as long as the probe returns what it
        returned just before that read (`grantkeeper.serve.apikeys.KeyCache`)."""
        return None

    @query
    def list_api_keys(self) -> Op[list[ApiKeyRecord]]:
        sql = "SELECT name, key_id, grants, scopes, created_at, expires_at, revoked_at FROM api_keys ORDER BY name"
        return [self._api_key(r) for r in (yield Sql(sql)).fetchall()]

    @transaction
    def revoke_api_key(self, name: str, *, now: float) -> Op[ApiKeyRecord]:
        """Revoke API key `name` (at once: every instance looks keys up per request); returns it."""
        yield Sql("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name), wait=False)
        yield from self._notify("", 0, API_KEYS_CHANGED)
        row = (
            yield Sql(
                "SELECT name, key_id, grants, scopes, created_at, expires_at, revoked_at FROM api_keys WHERE name = ?",
                (name,),
            )
        ).fetchone()
        yield COMMIT
        if row is None:
            raise ConfigurationError(f"there is no API key named {name!r}; 'grantkeeper apikey list' shows them")
        return self._api_key(row)

    @transaction
    def record_audit(self, entries: list[AuditEntry]) -> Op[None]:
        """Append audit entries in one transaction, then apply `retention` to the grants they name."""
        if not entries:
            return
        # One multi-row INSERT per chunk rather than one statement per entry: a busy broker writes hundreds at a
        # time, and each statement costs more than its row (the chunk keeps within every backend's parameter limit).
        for start in range(0, len(entries), _AUDIT_ROWS_PER_INSERT):
            chunk = entries[start : start + _AUDIT_ROWS_PER_INSERT]
            rows = [(e.at, e.api_key, e.action, e.grant, e.status, e.fingerprint, e.generation, e.detail)
                    for e in chunk]  # fmt: skip
            yield Sql(
                "INSERT INTO audit (at, api_key, action, grant_name, status, fingerprint, generation, detail) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows)),
                [value for row in rows for value in row],
                wait=False,
            )
        oldest = max(e.at for e in entries) - self.retention.days * 86400.0
        yield Sql("DELETE FROM audit WHERE at < ?", (oldest,), wait=False)
        for grant in {e.grant for e in entries if e.grant is not None}:
            yield Sql(
                "DELETE FROM audit WHERE grant_name = ? AND id <= (SELECT id FROM audit WHERE grant_name = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (grant, grant, self.retention.per_grant),
                wait=False,
            )

    @query
    def list_audit(
        self, *, grant: str | None = None, api_key: str | None = None, limit: int = 100
    ) -> Op[list[AuditEntry]]:
        """The audit trail, newest first: of one grant and of one API key, if given."""
        filters = [(column, value) for column, value in (("grant_name", grant), ("api_key", api_key)) if value]
        where = "".join(f"{'WHERE' if i == 0 else 'AND'} {column} = ? " for i, (column, _) in enumerate(filters))
        sql = ("SELECT id, at, api_key, action, grant_name, status, fingerprint, generation, detail FROM audit "
               f"{where}ORDER BY id DESC LIMIT ?")  # fmt: skip
        rows = (yield Sql(sql, (*(value for _, value in filters), limit))).fetchall()
        return [AuditEntry(id=int(r[0]), at=float(r[1]), api_key=str(r[2]), action=str(r[3]), grant=r[4],
                           status=int(r[5]), fingerprint=r[6], generation=r[7], detail=r[8]) for r in rows]  # fmt: skip

    # ---------------------------------------------------------------- hosted connect sessions (`grantkeeper serve`)

    def connect_digest(self, value: str) -> str:
        """The keyed hash a connect session's URL secret, ``state`` or browser cookie is stored as."""
        return self._crypto.keyed_digest(value, purpose="connect-session")

    def _matches(self, value: str | None, digest: Any) -> bool:
        return value is not None and digest is not None and hmac.compare_digest(self.connect_digest(value), digest)

    @staticmethod
    def _connect_session(row: Any) -> ConnectSession:
        return ConnectSession(
            id=str(row[0]), grant=str(row[1]), provider=str(row[2]), scopes=tuple(str(row[3]).split()),
            replace=bool(row[4]), api_key=str(row[5]), created_at=float(row[6]), expires_at=float(row[7]),
            opened_at=row[8], callback_by=row[9], redirect_uri=row[10], finished_at=row[11], outcome=row[12],
        )  # fmt: skip

    _SESSION_COLUMNS = ("id, grant_name, provider, scopes, replace_grant, api_key, created_at, expires_at, opened_at, "
                        "callback_by, redirect_uri, finished_at, outcome")  # fmt: skip

    @transaction
    def create_connect_session(self, session: ConnectSession, *, token: str) -> Op[None]:
        """Store `session`, reached by the URL secret `token` (kept as a keyed hash only). Sessions whose every
        deadline passed a day ago are forgotten here, so the table holds about a day of them."""
        old = session.created_at - 86400.0
        yield Sql("DELETE FROM connect_sessions WHERE expires_at < ? AND (callback_by IS NULL OR callback_by < ?)",
                  (old, old), wait=False)  # fmt: skip
        yield Sql(
            f"INSERT INTO connect_sessions ({self._SESSION_COLUMNS}, token_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, ?)",
            (session.id, session.grant, session.provider, " ".join(session.scopes), int(session.replace),
             session.api_key, session.created_at, session.expires_at, self.connect_digest(token)),
            wait=False,
        )  # fmt: skip

    @query
    def get_connect_session(self, session_id: str, *, token: str | None = None) -> Op[ConnectSession | None]:
        """The session `session_id`; with `token`, only if it is that session's URL secret."""
        sql = f"SELECT {self._SESSION_COLUMNS}, token_hash FROM connect_sessions WHERE id = ?"
        row = (yield Sql(sql, (session_id,))).fetchone()
        if row is None or (token is not None and not self._matches(token, row[13])):
            return None
        return self._connect_session(row)

    @transaction
    def open_connect_session(
        self, session_id: str, *, token: str, state: str, browser: str, verifier: Secret, redirect_uri: str,
        now: float, callback_by: float,
    ) -> Op[tuple[ConnectSession | None, str | None]]:  # fmt: skip
        """Mark the session opened (once only), with what its callback must match. Returns (the session, None), or
        (the session if the token is its, why not) with why one of ``unknown`` (no such session, or not this
        token), ``used`` (opened before) or ``expired``."""
        sql = f"SELECT {self._SESSION_COLUMNS}, token_hash FROM connect_sessions WHERE id = ?"
        row = (yield Sql(sql, (session_id,))).fetchone()
        if row is None or not self._matches(token, row[13]):
            return None, "unknown"
        session = self._connect_session(row)
        if session.opened_at is not None:
            return session, "used"
        if session.expires_at <= now:
            return session, "expired"
        sealed = self._seal(verifier, "connect_sessions", session_id, "verifier")
        cursor = yield Sql(
            "UPDATE connect_sessions SET opened_at = ?, callback_by = ?, state_hash = ?, browser_hash = ?, "
            "verifier = ?, redirect_uri = ? WHERE id = ? AND opened_at IS NULL",
            (now, callback_by, self.connect_digest(state), self.connect_digest(browser), sealed, redirect_uri,
             session_id),
        )  # fmt: skip
        if cursor.rowcount != 1:
            return session, "used"  # another request opened it first
        return dataclasses.replace(session, opened_at=now, callback_by=callback_by, redirect_uri=redirect_uri), None

    @transaction
    def take_connect_callback(
        self, session_id: str, *, state: str, browser: str | None, now: float
    ) -> Op[tuple[ConnectSession | None, Secret | None, str | None]]:
        """Take the session's one callback: (the session, its verifier, None), or (the session if `state` is its,
        None, why not) with why one of ``unknown`` (no such session, or not its ``state``), ``used`` (a callback was
        taken before), ``expired`` (the callback came too late: recorded, so the session is over) or
        ``other_browser`` (the browser holds no cookie of the one that opened it: the session stays open)."""
        sql = f"SELECT {self._SESSION_COLUMNS}, state_hash, browser_hash, verifier FROM connect_sessions WHERE id = ?"
        row = (yield Sql(sql, (session_id,))).fetchone()
        if row is None or not self._matches(state, row[13]):
            return None, None, "unknown"
        session = self._connect_session(row)
        if session.finished_at is not None:
            return session, None, "expired" if session.outcome == "connect_session_expired" else "used"
        late = session.callback_by is None or session.callback_by <= now
        if not late and not self._matches(browser, row[14]):
            return session, None, "other_browser"  # (a late one is over whoever brings it: its cookie is gone too)
        cursor = yield Sql(
            "UPDATE connect_sessions SET finished_at = ?, outcome = ? WHERE id = ? AND finished_at IS NULL",
            (now, "connect_session_expired" if late else None, session_id),
        )
        if cursor.rowcount != 1:
            return session, None, "used"
        session = dataclasses.replace(session, finished_at=now)
        if late:
            return dataclasses.replace(session, outcome="connect_session_expired"), None, "expired"
        return session, self._open(bytes(row[15]), "connect_sessions", session_id, "verifier"), None

    @transaction
    def finish_connect_session(self, session_id: str, *, outcome: str) -> Op[None]:
        """Record how the session's callback ended: ``connected`` or an error code."""
        yield Sql("UPDATE connect_sessions SET outcome = ? WHERE id = ?", (outcome, session_id), wait=False)
