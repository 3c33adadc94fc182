"""`Keeper` and `AsyncKeeper` on the engine's ports: a `Store` (or `AsyncStore`) and a `Sender` (or `AsyncSender`).

What a keeper does is written once, in `_KeeperCore`, as generators of operations (`grantkeeper.engine.ops`): take
the grant's lock and refresh, run the protocol's flow, call the store, tell the event sinks. `Keeper` executes them
with plain calls and a `threading.Lock` per grant, `AsyncKeeper` with ``await`` and an `asyncio.Lock`; each public
method of either is a line or two. Opening a store by URL and the default HTTP client are wiring, not engine:
`grantkeeper.keepers` (exported as `grantkeeper.Keeper` and `grantkeeper.AsyncKeeper`) adds them.

Order of checks for a token (docs/design.md): (1) the in-process cache, no lock, no I/O; (2) the grant's
in-process lock, so concurrent callers share one refresh; (3) the cache again under the lock; (4) the
protocol, which takes the store lease and re-reads the grant before spending anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack

from grantkeeper._clock import Clock, SystemClock
from grantkeeper._exceptions import (
    ClientAuthFailed,
    ConfigurationError,
    GrantkeeperError,
    NeedsReauth,
    SpentRefreshToken,
    StoreUnavailable,
    TransientError,
)
from grantkeeper._secrets import Secret
from grantkeeper.diagnosis import Diagnosis, diagnose
from grantkeeper.engine.drivers import drive, drive_async
from grantkeeper.engine.ops import Blocking, Call, Op, Pause, Refresh, RunFlow, Steps, arun_steps, run_steps
from grantkeeper.engine.ports import AsyncSender, AsyncStore, Sender, Store
from grantkeeper.engine.threaded import blocking, threaded
from grantkeeper.model import Attempt, Grant, GrantState, LeaseHolder, OutcomeClass, Provider
from grantkeeper.model.grant import ServedToken
from grantkeeper.model.lifetimes import RefreshTokenExpiry, refresh_token_ends
from grantkeeper.model.retention import HistoryRetention
from grantkeeper.model.times import iso_utc
from grantkeeper.model.token_values import check_refresh_token
from grantkeeper.notify import EventSink, GrantEvent, Notifier, event_for
from grantkeeper.protocol import Refreshed, RefreshPolicy, refresh_flow

__all__ = [
    "AsyncKeeper",
    "GrantStatus",
    "KeepaliveResult",
    "Keeper",
    "KeeperOptions",
    "RefreshTokenExpiry",
    "ServedToken",
    "spent_refusal",
]

logger = logging.getLogger("grantkeeper")
T = TypeVar("T")

#: Cold reads of one grant queue behind one another on one of this many locks, chosen by the grant's name: a lock
#: per grant would be made on every first read and kept for good (a million grants read once, a million locks).
#: Two grants share a lock for the length of one store read at most.
_READ_STRIPES = 4096
_SERVE_TRIES = 3
_CLOSED = "this keeper is closed; open a new one"
_TICKETS = itertools.count(1)  # shared by every keeper: next() on it is atomic under the GIL
_KEEPALIVE_MARGIN = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class GrantStatus:
    """What `status()` reports: evidence, never tokens."""

    name: str
    provider: str
    state: GrantState
    generation: int
    refresh_fp: str | None
    access_fp: str | None
    expires_at: float | None
    access_valid: bool
    scopes: tuple[str, ...]
    last_error: str | None
    last_error_at: float | None
    updated_at: float | None
    lease: LeaseHolder | None
    attempts: tuple[Attempt, ...]
    pending_recovery: int
    #: When the current refresh token was issued (import or rotation; None for grants from before schema v3).
    refresh_issued_at: float | None = None
    #: When the refresh token was last used (or obtained): the idle lifetime counts from here.
    refresh_used_at: float | None = None
    #: Every known end of the refresh token or consent (idle, stated, absolute), soonest first.
    refresh_ends: tuple[RefreshTokenExpiry, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("attempts", "lease")}
        data["state"] = self.state.value
        data["lease"] = (
            None if self.lease is None
            else {"worker": self.lease.worker, "fence": self.lease.fence, "expires_at": self.lease.expires_at}
        )  # fmt: skip
        data["scopes"] = list(self.scopes)
        data["attempts"] = [
            {"id": a.id, "generation": a.generation, "refresh_fp": a.refresh_fp, "worker": a.worker,
             "started_at": a.started_at, "state": a.state.value, "outcome": a.outcome, "resend_of": a.resend_of,
             "finished_at": a.finished_at}
            for a in self.attempts
        ]  # fmt: skip
        data["refresh_ends"] = [{"kind": e.kind, "deadline": e.deadline, "renewable": e.renewable}
                                for e in self.refresh_ends]  # fmt: skip
        return data


@dataclass(frozen=True, slots=True)
class KeepaliveResult:
    """What `keepalive` did for one grant whose refresh token nears the end of its life."""

    grant: str
    action: str  # "refreshed" | "failed" | "reconsent_needed"
    deadline: float  # when the refresh token (idle) or the consent (absolute) would die
    detail: str


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _one(method: str, *args: Any, **kwargs: Any) -> Steps[Any]:
    """A method that is one store transaction."""
    return (yield Call(method, args, kwargs))


class KeeperOptions(TypedDict, total=False):
    """What every keeper takes besides its store and sender (each keeper's ``**options``), declared once.

    clock: the time source (the system clock if None). policy: timeouts, retries and leases (`RefreshPolicy()`).
    worker: this keeper's identity in leases and history (host, pid and a random suffix if None). on_event: sinks
    told when a grant needs a person (`on_event`). retention: how much attempt history the store keeps per grant.
    """

    clock: Clock | None
    policy: RefreshPolicy | None
    worker: str | None
    on_event: EventSink | Iterable[EventSink] | None
    retention: HistoryRetention | None


class _KeeperCore:
    """What both keepers do, once: state (cache, worker identity, event sinks) and every method as steps."""

    store: Store | AsyncStore

    def __init__(
        self, store: Store | AsyncStore, *, clock: Clock | None = None, policy: RefreshPolicy | None = None,
        worker: str | None = None, on_event: EventSink | Iterable[EventSink] | None = None,
        retention: HistoryRetention | None = None,
    ) -> None:  # fmt: skip
        if retention is not None:
            store.retention = retention
        self.store = store
        self._fingerprint = store.fingerprint
        self.clock = clock or SystemClock()
        self.policy = policy or RefreshPolicy()
        self.worker = worker or _worker_id()
        self._now = self.clock.now
        # name -> (access token, serve-until time, generation, expires_at). Written under the grant's lock, read
        # lock-free.
        self._cache: dict[str, ServedToken] = {}
        # name -> ticket of the latest rejection of its access token (a 401 here, an invalidation elsewhere).
        # A refresh that read the store before a rejection must not cache what it read: see `_remember`.
        self._rejections: dict[str, int] = {}
        self._closed = False
        self._stopping = threading.Event()
        self._notifier = Notifier()
        for sink in [on_event] if callable(on_event) else on_event or ():
            self._notifier.add(sink)
        store.subscribe(self._on_store_change)

    def on_event(self, sink: EventSink) -> None:
        """Call `sink` (a callable taking a `GrantEvent`, or a `Webhook`) when a grant needs a person: it entered
        needs_reauth, or the provider rejected the client credentials. See `grantkeeper.notify`."""
        self._notifier.add(sink)

    def announce(self, event: GrantEvent) -> None:
        """Send `event`, which something other than a refresh made (grantkeeper serve's hosted connect), to the
        sinks `on_event` registered. Blocking: sinks are user code."""
        self._notifier.emit(event)

    def _replay_soon(self) -> None:
        """A successor waits in recovery storage: keep trying to commit it in the background (`_replaying`) until
        the store takes it, so the window in which the store lags behind the provider is as short as the outage."""
        raise NotImplementedError

    # --- the cache -----------------------------------------------------------------------------------------------

    def _on_store_change(self, name: str, generation: int, kind: str) -> None:
        """Another worker committed or invalidated: drop what this process cached (I4). Any thread may call."""
        if kind == "invalidate":
            self._rejections[name] = next(_TICKETS)
        entry = self._cache.get(name)
        if entry is not None and (kind == "invalidate" or entry.generation < generation):
            self._cache.pop(name, None)

    def _cached(self, name: str) -> Secret | None:
        entry = self._cache.get(name)
        if entry is not None and entry.serve_until > self._now():
            return entry.access_token
        return None

    def served(self, name: str) -> ServedToken | None:
        """The access token `access_token` would return now without I/O, with its generation and expiry; None if
        it would have to refresh first. For callers that hand tokens on with their metadata (``grantkeeper
        serve``): ask `access_token` (or `refresh`) first, then this, and ask again if it is None."""
        entry = self._cache.get(name)
        if entry is None or entry.serve_until <= self._now():
            return None
        return entry

    def _rejection_mark(self, name: str) -> int:
        return self._rejections.get(name, 0)

    def _remember(self, result: Refreshed, mark: int) -> Grant:
        """Cache the access token `result` holds, unless a rejection arrived since `mark` was taken: the store
        read may predate it, and the token read may be the one rejected (its holder asks again, from the store)."""
        if not result.committed:
            self._replay_soon()
        grant = result.grant
        until = grant.usable_until(result.provider.skew)
        if grant.access_token is not None and until is not None and self._rejection_mark(grant.name) == mark:
            assert grant.expires_at is not None  # usable_until is None without it
            self._cache[grant.name] = ServedToken(grant.access_token, grant.generation, grant.expires_at, until)
        return grant

    # `access_token` after a cache miss, under the grant's read lock (`_READ_STRIPES`: callers queued behind one read
    # find its result cached, so one store read per grant at a time): the cache again, then one plain read,
    # `Store.served_access`, made outside the steps since it is the hottest store call. Anything but a token to
    # serve goes on to `_token_steps`, which refreshes.

    # `_check_open`, `_rejection_mark` and `_cached` are written out in these three: a call costs a tenth of the
    # read they surround.

    def _cold_read(self, name: str) -> int:
        """Before the lock: the keeper is open; the rejection mark to check the read against."""
        if self._closed:
            raise ConfigurationError(_CLOSED)
        return self._rejections.get(name, 0)

    def _cached_token(self, name: str) -> str | None:
        entry = self._cache.get(name)
        return entry.access_token.reveal() if entry is not None and entry.serve_until > self._now() else None

    def _cold_served(self, name: str, served: ServedToken | None, mark: int) -> str | None:
        """Cache and return what the cold read found, unless it stopped being served while the read was on its way
        back (a slow store: judged at the time it arrives, I4), a rejection arrived since `mark` (the read may
        predate it and hold the rejected token) or the cache meanwhile got a later generation (another caller's
        refresh): None then, and the caller takes the refresh path."""
        if served is None or served.serve_until <= self._now() or self._rejections.get(name, 0) != mark:
            return None
        entry = self._cache.get(name)
        if entry is not None and entry.generation > served.generation:
            return None
        self._cache[name] = served
        return served.access_token.reveal()

    @contextlib.contextmanager
    def _forget_if_dead(self, name: str) -> Iterator[None]:
        """A grant found dead takes its cached access token with it: the provider revoked the family."""
        try:
            yield
        except NeedsReauth:
            self._cache.pop(name, None)
            raise

    @staticmethod
    def _issued_to_caller(result: Refreshed | None) -> Secret | None:
        """The access token this caller's own refresh just obtained, even if it lives less than the skew (an
        `expires_in` of 0): it is handed to this caller once rather than refreshed again, and never cached."""
        if result is None or not result.issued:
            return None
        return result.grant.access_token

    def _satisfied(self, name: str, force: bool, seen: int) -> bool:
        """Checked under the grant's lock: did the caller before us already produce what we need?"""
        if self._cached(name) is None:
            return False
        return not force or self._seen_generation(name) > seen

    def _served(self, grant: Grant) -> Grant:
        """The grant as this process serves it (a token waiting in recovery storage is not in the store yet)."""
        entry = self._cache.get(grant.name)
        if entry is None or entry.access_token == grant.access_token or entry.generation < grant.generation:
            return grant
        return replace(grant, access_token=entry.access_token, generation=entry.generation)

    def _seen_generation(self, name: str) -> int:
        entry = self._cache.get(name)
        return entry.generation if entry is not None else -1

    def _before_lock(self, name: str) -> int:
        """Checked before waiting for the grant's lock: the keeper is open; the generation this caller has seen."""
        self._check_open()
        return self._seen_generation(name)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError(_CLOSED)

    @staticmethod
    def _actor() -> str:
        """The calling thread (or asyncio task) as the attempt history names it."""
        # Asked on every cold read: `current_task()` alone raises (and this would catch) where no loop runs.
        loop = asyncio._get_running_loop()
        task = asyncio.current_task(loop) if loop is not None else None
        thread = threading.current_thread().name
        return f"{thread}/{task.get_name()}" if task is not None else thread

    # --- refreshing, as steps ------------------------------------------------------------------------------------

    def _token_steps(self, name: str) -> Steps[str]:
        """`access_token` after a cache miss. The cache is checked again after each refresh: a token can expire
        while the store is slow to answer, and another host's notification can drop the entry in between (I4:
        never serve one past expiry minus skew)."""
        for _ in range(_SERVE_TRIES):
            result = yield Refresh(name, force=False)
            cached = self._cached(name) or self._issued_to_caller(result)
            if cached is not None:
                return cached.reveal()
        raise TransientError(
            f"grant {name!r}: {_SERVE_TRIES} refreshes in a row produced no access token that was still valid when "
            "it could be handed out (the store or provider is slower than the token's lifetime); retry later",
            grant=name,
        )

    def _refresh_steps(self, name: str, force: bool, past: int | None = None) -> Steps[Grant]:
        result: Refreshed | None = yield Refresh(name, force=force, past=-1 if past is None else past)
        if result is not None:
            return result.grant
        return self._served((yield Call.of("get_grant", name)))

    def _locked_steps(self, name: str, force: bool, seen: int) -> Steps[Refreshed | None]:
        """Under the grant's lock: run the protocol unless a caller before us already did the work (None)."""
        if self._satisfied(name, force, seen):
            return None
        mark = self._rejection_mark(name)
        flow = refresh_flow(
            name, worker=self.worker, force=force, policy=self.policy, seen_generation=seen if seen >= 0 else None,
            actor=self._actor(),
        )  # fmt: skip
        with self._forget_if_dead(name):
            try:
                result: Refreshed = yield RunFlow(flow)
            except (NeedsReauth, ClientAuthFailed) as exc:
                yield from self._announce_steps(exc)
                raise
            except StoreUnavailable:
                self._replay_soon()  # a successor the store refused may wait in recovery storage, or in memory
                raise
        self._remember(result, mark)
        return result

    def _announce_steps(self, error: GrantkeeperError) -> Steps[None]:
        """Tell the event sinks about a failure this worker just recorded, if it is one a person must act on."""
        if not self._notifier or error.grant is None:
            return
        try:
            grant: Grant = yield Call.of("get_grant", error.grant)
            repeat = False
            if isinstance(error, ClientAuthFailed):
                previous: list[Attempt] = (yield Call.of("list_attempts", error.grant, limit=2))[1:]
                repeat = bool(previous) and previous[0].outcome_class is OutcomeClass.CLIENT_AUTH_FAILED
        except GrantkeeperError as exc:
            logger.warning("grant %r: could not read the store to announce %s: %s", error.grant, error.code,
                           exc.message)  # fmt: skip
            return
        event = event_for(error, provider=grant.provider, at=self.clock.now(), worker=self.worker, repeat=repeat)
        if event is not None:
            yield Blocking(lambda _store: self._notifier.emit(event))  # user code: may block

    # --- recovery storage ----------------------------------------------------------------------------------------

    def _replay_steps(self) -> Steps[None]:
        """At open: commit what waits in this host's recovery storage; a store still down is only logged."""
        try:
            done: list[str] = yield Call.of("replay_recovery", now=self.clock.now())
        except GrantkeeperError as exc:
            logger.warning("recovery storage could not be replayed yet: %s", exc.message)
            return
        for name in done:
            logger.info("grant %r committed from local recovery storage", name, extra={"grantkeeper": {"grant": name}})

    def _replaying(self) -> Steps[None]:
        """The background replay: try, back off (0.1 s doubling to 2 s), until nothing waits or the keeper closes."""
        delay = 0.1
        while not self._stopping.is_set():
            try:
                done: list[str] = yield Call.of("replay_recovery", now=self.clock.now())
                for name in done:
                    logger.info("grant %r committed from local recovery storage", name)
                if not (yield Call.of("pending_recovery")):
                    return
            except GrantkeeperError:
                pass  # still down; keep trying
            yield Pause(delay)
            delay = min(delay * 2, 2.0)

    def _close_sinks(self) -> None:
        for sink in self._notifier.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()

    # --- reading, as steps ---------------------------------------------------------------------------------------

    def _status_steps(self, name: str) -> Steps[GrantStatus]:
        grant, provider = yield Call.of("get_grant_and_provider", name)
        now = self.clock.now()
        lease = yield Call.of("lease_holder", name, now=now)
        attempts = yield Call.of("list_attempts", name, limit=10)
        pending = yield Call.of("pending_recovery", name)
        return GrantStatus(
            name=grant.name, provider=grant.provider, state=grant.state, generation=grant.generation,
            refresh_fp=grant.refresh_fp, access_fp=grant.access_fp, expires_at=grant.expires_at,
            access_valid=grant.access_usable(now, provider.skew), scopes=grant.scopes,
            last_error=grant.last_error, last_error_at=grant.last_error_at, updated_at=grant.updated_at,
            lease=lease, attempts=tuple(attempts), pending_recovery=pending,
            refresh_issued_at=grant.refresh_issued_at, refresh_used_at=grant.refreshed_at,
            refresh_ends=tuple(sorted(refresh_token_ends(grant, provider), key=lambda e: e.deadline)),
        )  # fmt: skip

    def _doctor_steps(self, name: str) -> Steps[Diagnosis]:
        grant, provider = yield Call.of("get_grant_and_provider", name)
        now = self.clock.now()
        history = yield Call.of("list_attempts", name, limit=self.store.retention.per_grant)
        lease = yield Call.of("lease_holder", name, now=now)

        def examine(store: Store) -> Diagnosis:
            # Liveness comes from the store's signal (a file lock, a session lock), never from the host name and
            # pid in the worker id: containers sharing a host name have separate pid tables.
            return diagnose(grant, provider, history, now=now, lease=lease, alive=store.worker_alive,
                            find=lambda attempt_id: store.get_attempt(name, attempt_id),
                            spent=lambda fingerprint: store.spent_by(name, fingerprint))  # fmt: skip

        diagnosis: Diagnosis = yield Blocking(examine)
        return diagnosis

    def _history_steps(self, name: str, limit: int) -> Steps[list[Attempt]]:
        yield Call.of("get_grant", name)  # an unknown name is an error, not an empty history
        attempts: list[Attempt] = yield Call.of("list_attempts", name, limit=limit)
        return attempts

    def _expiring_steps(self, window: float) -> Steps[list[RefreshTokenExpiry]]:
        """Active grants whose refresh token or consent ends within `window` seconds, soonest first: per grant,
        the earliest end that only a new consent fixes if there is one in the window, else the earliest end."""
        now = self.clock.now()
        providers = {p.name: p for p in (yield Call.of("list_providers"))}
        found = []
        for grant in (yield Call.of("list_grants")):
            if grant.state is not GrantState.ACTIVE:
                continue
            ends = sorted((e for e in refresh_token_ends(grant, providers[grant.provider])
                           if e.deadline - window <= now), key=lambda e: (e.renewable, e.deadline))  # fmt: skip
            if ends:
                found.append(ends[0])
        return sorted(found, key=lambda e: e.deadline)

    def _keepalive_steps(
        self, margin: float, progress: Callable[[int, int], None] | None
    ) -> Steps[list[KeepaliveResult]]:
        """Refresh the grants whose refresh token would die within `margin` seconds by idle or stated expiry (a
        refresh resets it); warn about those whose absolute expiry (only consent resets it) is that close."""
        results: list[KeepaliveResult] = []
        plan = yield from self._expiring_steps(margin)
        if progress is not None:
            progress(0, len(plan))
        for end in plan:
            if not end.renewable:
                results.append(self._reconsent(end.grant, end.deadline))
            else:
                try:
                    grant = yield from self._refresh_steps(end.grant, True)
                    results.append(KeepaliveResult(end.grant, "refreshed", end.deadline,
                                                   f"generation {grant.generation}"))  # fmt: skip
                except GrantkeeperError as exc:
                    results.append(KeepaliveResult(end.grant, "failed", end.deadline, f"{exc.code}: {exc.message}"))
            if progress is not None:
                progress(len(results), len(plan))
        return results

    @staticmethod
    def _reconsent(name: str, deadline: float) -> KeepaliveResult:
        result = KeepaliveResult(name, "reconsent_needed", deadline,
                                 "the provider's absolute refresh-token lifetime ends soon; refreshing cannot extend "
                                 "it: have the user authorize again and re-import the grant")  # fmt: skip
        logger.warning("grant %r: %s (deadline %.0f)", name, result.detail, deadline,
                       extra={"grantkeeper": {"grant": name, "deadline": deadline}})  # fmt: skip
        return result

    # --- writing, as steps ---------------------------------------------------------------------------------------

    def _invalidate_steps(self, name: str, access_token: str) -> Steps[bool]:
        """A resource server rejected `access_token` (401): drop it here and in the store (I4)."""
        # The mark first, then the store: a worker that read the store before it is invalidated there must not
        # cache the rejected token after it was dropped here. The cache is dropped even if the store fails.
        self._rejections[name] = next(_TICKETS)
        try:
            dropped: bool = yield Call.of("invalidate_access", name, access_fp=self._fingerprint(Secret(access_token)))
            return dropped
        finally:
            entry = self._cache.get(name)
            if entry is not None and entry.access_token == Secret(access_token):
                self._cache.pop(name, None)

    def _checked_import_steps(
        self, name: str, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...],
        access_token: str | Secret | None, expires_at: float | None,
    ) -> Steps[Grant]:  # fmt: skip
        """The public import: one token value each (`check_refresh_token`), never a guess."""
        refresh = check_refresh_token(refresh_token)
        access = None
        if access_token is not None:
            if expires_at is None:
                raise ConfigurationError("an imported access token needs its expiry (expires_at, epoch seconds)")
            access = check_refresh_token(access_token, what="the access token")
        return (yield from self._import_steps(name, provider, refresh, scopes, access_token=access,
                                              expires_at=expires_at))  # fmt: skip

    def _import_steps(
        self, name: str, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...], *,
        access_token: Secret | None = None, expires_at: float | None = None, refresh_expires_at: float | None = None,
    ) -> Steps[Grant]:  # fmt: skip
        """Store the grant; `access_token` (with `expires_at`) is the one issued with the refresh token, kept so
        the first token read needs no refresh (`grantkeeper.consent` passes a consent's whole token response).

        A refresh token this grant's kept history shows spent is refused (`SpentRefreshToken`): a rotating
        provider would reject it, and one that detects reuse would revoke the whole grant."""
        secret = refresh_token if isinstance(refresh_token, Secret) else Secret(refresh_token.strip())
        yield from self._refuse_spent(name, secret)
        grant: Grant = yield Call.of(
            "import_grant", name, provider=provider, refresh_token=secret, scopes=scopes, now=self.clock.now(),
            access_token=access_token, expires_at=expires_at, refresh_expires_at=refresh_expires_at,
        )  # fmt: skip
        self._cache.pop(name, None)
        return grant

    def _refuse_spent(self, name: str, token: Secret) -> Steps[None]:
        fingerprint = self._fingerprint(token)
        spender: Attempt | None = yield Call.of("spent_by", name, fingerprint)
        if spender is None:
            return
        current: Grant = yield Call.of("get_grant", name)
        raise spent_refusal(name, fingerprint, spender, current)


def spent_refusal(name: str, fingerprint: str, spender: Attempt, current: Grant) -> SpentRefreshToken:
    """The error for importing grant `name`'s token `fingerprint`, which attempt `spender` spent (`current` is the
    grant as stored): for `Keeper.import_grant` and for a bundle's replaced grants."""
    return SpentRefreshToken.spent(
        grant=name, fingerprint=fingerprint, attempt_id=spender.id, spent_at=iso_utc(spender.started_at),
        generation=spender.generation, worker=spender.worker, current_generation=current.generation,
        current_fp=current.refresh_fp, current_state=current.state.value,
    )  # fmt: skip


class Keeper(_KeeperCore):
    """Thread-safe, synchronous keeper of grants, on a `Store` and a `Sender`.

    `grantkeeper.Keeper` is this with its HTTP client and ``Keeper.open(url)``:

    >>> with grantkeeper.Keeper.open("sqlite:///var/lib/app/grants.db") as keeper:  # doctest: +SKIP
    ...     headers = {"Authorization": f"Bearer {keeper.access_token('acme')}"}
    """

    store: Store

    def __init__(self, store: Store, *, sender: Sender, **options: Unpack[KeeperOptions]) -> None:
        super().__init__(store, **options)
        self._sender = sender
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._read_locks = [threading.Lock() for _ in range(_READ_STRIPES)]
        self._replayer: threading.Thread | None = None
        self._replay_guard = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._stopping.set()
        replayer = self._replayer
        if replayer is not None:  # a connection must not be closed under a thread still using it
            replayer.join(timeout=30)
        self._close_sinks()
        self.store.close()

    def _execute(self, op: Op) -> Any:
        if isinstance(op, Call):
            return getattr(self.store, op.method)(*op.args, **op.kwargs)
        if isinstance(op, RunFlow):
            return drive(op.flow, store=self.store, sender=self._sender, clock=self.clock)
        if isinstance(op, Refresh):
            return self._run(op.name, force=op.force, past=op.past)
        if isinstance(op, Blocking):
            return op.work(self.store)
        return self._stopping.wait(op.seconds)

    def _drive(self, steps: Steps[T]) -> T:
        return run_steps(steps, self._execute)

    def _lock(self, name: str) -> threading.Lock:
        lock = self._locks.get(name)
        if lock is None:
            with self._locks_guard:
                lock = self._locks.setdefault(name, threading.Lock())
        return lock

    def _run(self, name: str, *, force: bool, past: int = -1) -> Refreshed | None:
        seen = self._before_lock(name) if past < 0 else past
        with self._lock(name):
            return self._drive(self._locked_steps(name, force, seen))

    def _replay_soon(self) -> None:
        with self._replay_guard:
            if self._replayer is not None and self._replayer.is_alive():
                return
            self._replayer = threading.Thread(target=self._drive, args=(self._replaying(),),
                                              name="grantkeeper-replay", daemon=True)  # fmt: skip
            self._replayer.start()

    def _replay_recovery(self) -> None:
        self._drive(self._replay_steps())

    def access_token(self, name: str) -> str:
        """A valid access token for grant `name`, refreshing (once, for all callers) if needed."""
        entry = self._cache.get(name)  # the fast path: no lock, no I/O, as few calls as possible
        if entry is not None and entry.serve_until > self._now():
            return entry.access_token.reveal()
        mark = self._cold_read(name)
        with self._read_locks[hash(name) % _READ_STRIPES]:
            token = self._cached_token(name)
            if token is None:
                token = self._cold_served(name, self.store.served_access(name, self._now()), mark)
        return token if token is not None else self._drive(self._token_steps(name))

    def refresh(self, name: str, *, force: bool = False, unless_past: int | None = None) -> Grant:
        """Refresh grant `name` if its access token is not usable (or always, with `force`). With `unless_past`, a
        forced refresh is satisfied by any stored generation after that one (another worker's refresh counts)."""
        return self._drive(self._refresh_steps(name, force, unless_past))

    def status(self, name: str) -> GrantStatus:
        return self._drive(self._status_steps(name))

    def doctor(self, name: str) -> Diagnosis:
        """Why grant `name` failed last (or that it is healthy), with evidence and the next step."""
        return self._drive(self._doctor_steps(name))

    def history(self, name: str, *, limit: int = 50) -> list[Attempt]:
        """Grant `name`'s refresh attempts, newest first: who, when, which generation and fingerprints, outcome."""
        return self._drive(self._history_steps(name, limit))

    def expiring(self, window: float) -> list[RefreshTokenExpiry]:
        """Grants whose refresh token or consent ends within `window` seconds (what ``status --expiring`` shows);
        `keepalive` refreshes the renewable ones."""
        return self._drive(self._expiring_steps(window))

    def keepalive(
        self, *, margin: float = _KEEPALIVE_MARGIN, progress: Callable[[int, int], None] | None = None
    ) -> list[KeepaliveResult]:
        """Refresh grants whose refresh token would expire from disuse within `margin` seconds; warn about
        grants whose consent ends (absolute lifetime) within it. Run it from a daily scheduler.

        `progress(done, total)` is called once before the first grant (``done == 0``) and after each one.
        """
        return self._drive(self._keepalive_steps(margin, progress))

    def grants(self) -> list[Grant]:
        return self._drive(_one("list_grants"))

    def add_provider(self, provider: Provider) -> None:
        self._drive(_one("put_provider", provider, now=self.clock.now()))

    def import_grant(
        self, name: str, *, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...] = (),
        access_token: str | Secret | None = None, expires_at: float | None = None,
    ) -> Grant:  # fmt: skip
        """Store grant `name` (or replace its refresh token) with `refresh_token`, one OAuth token value.

        Anything else (a JSON document, ``Bearer xyz``, several lines, control characters) is a `TokenInputError`
        that describes its shape; a token this grant's history shows spent is a `SpentRefreshToken`. Nothing is
        stored then. `access_token` with `expires_at` (epoch seconds) is the access token issued with it, so the
        first token read needs no refresh; `grantkeeper.tokens.token_input.read_token_input` reads both from a
        token response."""
        return self._drive(self._checked_import_steps(name, provider, refresh_token, scopes, access_token, expires_at))

    def _import(
        self, name: str, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...], *,
        access_token: Secret | None = None, expires_at: float | None = None, refresh_expires_at: float | None = None,
    ) -> Grant:  # fmt: skip
        """`import_grant` for input already checked, with the refresh token's stated expiry (`grantkeeper.consent`)."""
        steps = self._import_steps(name, provider, refresh_token, scopes, access_token=access_token,
                                   expires_at=expires_at, refresh_expires_at=refresh_expires_at)  # fmt: skip
        return self._drive(steps)

    def report_rejected(self, name: str, access_token: str) -> bool:
        """Tell the keeper a resource server answered 401 to `access_token`; the next call refreshes."""
        return self._drive(self._invalidate_steps(name, access_token))


class AsyncKeeper(_KeeperCore):
    """Task-safe asyncio keeper of grants on an `AsyncStore` (a plain `Store` runs in worker threads) and an
    `AsyncSender`: the same steps as `Keeper`, driven with ``await``."""

    def __init__(self, store: Store | AsyncStore, *, sender: AsyncSender, **options: Unpack[KeeperOptions]) -> None:
        super().__init__(store, **options)
        self._sender = sender
        self._astore = threaded(store)
        self._locks: dict[str, asyncio.Lock] = {}
        self._read_locks: dict[int, asyncio.Lock] = {}  # by stripe, made when first used (on the running loop)
        self._replayer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set when closing: ends the replay's pause at once (one per replay task)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        self._stopping.set()
        self._wake.set()
        replayer = self._replayer
        if replayer is not None and not replayer.done():  # it stops at its next step; the store must outlive it
            await asyncio.wait([replayer], timeout=30)
        await asyncio.to_thread(self._close_sinks)
        await self._astore.close()

    async def _execute(self, op: Op) -> Any:
        if isinstance(op, Call):
            return await getattr(self._astore, op.method)(*op.args, **op.kwargs)
        if isinstance(op, RunFlow):
            return await drive_async(op.flow, store=self._astore, sender=self._sender, clock=self.clock)
        if isinstance(op, Refresh):
            return await self._run(op.name, force=op.force, past=op.past)
        if isinstance(op, Blocking):
            return await asyncio.to_thread(op.work, blocking(self._astore, asyncio.get_running_loop()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), op.seconds)
        return None

    async def _drive(self, steps: Steps[T]) -> T:
        return await arun_steps(steps, self._execute)

    async def _run(self, name: str, *, force: bool, past: int = -1) -> Refreshed | None:
        seen = self._before_lock(name) if past < 0 else past
        async with self._locks.setdefault(name, asyncio.Lock()):
            return await self._drive(self._locked_steps(name, force, seen))

    def _replay_soon(self) -> None:
        if self._replayer is None or self._replayer.done():
            self._wake = asyncio.Event()  # an Event binds to the loop that first waits on it: this task's
            self._replayer = asyncio.get_running_loop().create_task(self._drive(self._replaying()),
                                                                    name="grantkeeper-replay")  # fmt: skip

    async def _replay_recovery(self) -> None:
        await self._drive(self._replay_steps())

    async def access_token(self, name: str) -> str:
        entry = self._cache.get(name)
        if entry is not None and entry.serve_until > self._now():
            return entry.access_token.reveal()
        mark = self._cold_read(name)
        stripe = hash(name) % _READ_STRIPES
        lock = self._read_locks.get(stripe)
        if lock is None:
            lock = self._read_locks[stripe] = asyncio.Lock()
        async with lock:
            token = self._cached_token(name)
            if token is None:
                token = self._cold_served(name, await self._astore.served_access(name, self._now()), mark)
        return token if token is not None else await self._drive(self._token_steps(name))

    async def refresh(self, name: str, *, force: bool = False, unless_past: int | None = None) -> Grant:
        return await self._drive(self._refresh_steps(name, force, unless_past))

    async def status(self, name: str) -> GrantStatus:
        return await self._drive(self._status_steps(name))

    async def doctor(self, name: str) -> Diagnosis:
        return await self._drive(self._doctor_steps(name))

    async def history(self, name: str, *, limit: int = 50) -> list[Attempt]:
        return await self._drive(self._history_steps(name, limit))

    async def expiring(self, window: float) -> list[RefreshTokenExpiry]:
        """See `Keeper.expiring`."""
        return await self._drive(self._expiring_steps(window))

    async def keepalive(
        self, *, margin: float = _KEEPALIVE_MARGIN, progress: Callable[[int, int], None] | None = None
    ) -> list[KeepaliveResult]:
        """See `Keeper.keepalive`."""
        return await self._drive(self._keepalive_steps(margin, progress))

    async def grants(self) -> list[Grant]:
        return await self._drive(_one("list_grants"))

    async def add_provider(self, provider: Provider) -> None:
        await self._drive(_one("put_provider", provider, now=self.clock.now()))

    async def import_grant(
        self, name: str, *, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...] = (),
        access_token: str | Secret | None = None, expires_at: float | None = None,
    ) -> Grant:  # fmt: skip
        """See `Keeper.import_grant`."""
        return await self._drive(self._checked_import_steps(name, provider, refresh_token, scopes, access_token,
                                                            expires_at))  # fmt: skip

    async def _import(
        self, name: str, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...], *,
        access_token: Secret | None = None, expires_at: float | None = None, refresh_expires_at: float | None = None,
    ) -> Grant:  # fmt: skip
        """See `Keeper._import` (grantkeeper serve's hosted connect stores its consents through this)."""
        steps = self._import_steps(name, provider, refresh_token, scopes, access_token=access_token,
                                   expires_at=expires_at, refresh_expires_at=refresh_expires_at)  # fmt: skip
        return await self._drive(steps)

    async def report_rejected(self, name: str, access_token: str) -> bool:
        return await self._drive(self._invalidate_steps(name, access_token))
