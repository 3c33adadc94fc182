"""`Keeper` and `AsyncKeeper`: the public face of the refresh engine.

Both share `_KeeperCore` (cache, worker identity, status assembly) and the one protocol in
`grantkeeper.protocol`; they differ only in the lock type and the driver they run it with.

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
from typing import Any, Self, TypeVar

import httpx

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
from grantkeeper.engine.threaded import threaded
from grantkeeper.model import Attempt, Grant, GrantState, LeaseHolder, OutcomeClass, Provider
from grantkeeper.model.lifetimes import RefreshTokenExpiry, refresh_token_ends
from grantkeeper.model.times import iso_utc
from grantkeeper.notify import EventSink, Notifier, event_for
from grantkeeper.protocol import Refreshed, RefreshPolicy, refresh_flow
from grantkeeper.stores import SQLStore, open_store
from grantkeeper.stores.sql import HistoryRetention
from grantkeeper.tokens import transport
from grantkeeper.tokens.sender import AsyncHttpSender, HttpSender
from grantkeeper.tokens.token_input import check_refresh_token

__all__ = ["AsyncKeeper", "GrantStatus", "KeepaliveResult", "Keeper", "RefreshTokenExpiry", "ServedToken"]

logger = logging.getLogger("grantkeeper")
T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_SERVE_TRIES = 3
_TICKETS = itertools.count(1)  # shared by every keeper: next() on it is atomic under the GIL


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
class ServedToken:
    """The access token this process serves for a grant right now, and what is known about it (`served`)."""

    access_token: Secret
    generation: int
    expires_at: float  # the provider's expiry
    serve_until: float  # expiry minus the skew: never served past this (I4)


@dataclass(frozen=True, slots=True)
class KeepaliveResult:
    """What `keepalive` did for one grant whose refresh token nears the end of its life."""

    grant: str
    action: str  # "refreshed" | "failed" | "reconsent_needed"
    deadline: float  # when the refresh token (idle) or the consent (absolute) would die
    detail: str


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class _KeeperCore:
    """State and logic shared by both keepers; no I/O beyond calling the store."""

    def __init__(
        self, store: SQLStore, *, clock: Clock | None, policy: RefreshPolicy | None, worker: str | None,
        on_event: EventSink | Iterable[EventSink] | None, retention: HistoryRetention | None,
    ) -> None:  # fmt: skip
        self.store = store
        if retention is not None:
            store.retention = retention
        self.clock = clock or SystemClock()
        self.policy = policy or RefreshPolicy()
        self.worker = worker or _worker_id()
        self._now = self.clock.now
        # name -> (access token, serve-until time, generation, expires_at). Written under the grant's lock, read
        # lock-free.
        self._cache: dict[str, tuple[Secret, float, int, float]] = {}
        # name -> ticket of the latest rejection of its access token (a 401 here, an invalidation elsewhere).
        # A refresh that read the store before a rejection must not cache what it read: see `_remember`.
        self._rejections: dict[str, int] = {}
        self._closed = False
        self._replayer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._replay_guard = threading.Lock()
        self._notifier = Notifier()
        for sink in [on_event] if callable(on_event) else on_event or ():
            self._notifier.add(sink)
        store.subscribe(self._on_store_change)

    def on_event(self, sink: EventSink) -> None:
        """Call `sink` (a callable taking a `GrantEvent`, or a `Webhook`) when a grant needs a person: it entered
        needs_reauth, or the provider rejected the client credentials. See `grantkeeper.notify`."""
        self._notifier.add(sink)

    def _announce(self, error: GrantkeeperError) -> None:
        """Tell the event sinks about a failure this worker just recorded, if it is one a person must act on."""
        if not self._notifier or error.grant is None:
            return
        try:
            grant = self.store.get_grant(error.grant)
            repeat = False
            if isinstance(error, ClientAuthFailed):
                previous = self.store.list_attempts(error.grant, limit=2)[1:]
                repeat = bool(previous) and previous[0].outcome_class is OutcomeClass.CLIENT_AUTH_FAILED
        except GrantkeeperError as exc:
            logger.warning("grant %r: could not read the store to announce %s: %s", error.grant, error.code,
                           exc.message)  # fmt: skip
            return
        event = event_for(error, provider=grant.provider, at=self.clock.now(), worker=self.worker, repeat=repeat)
        if event is not None:
            self._notifier.emit(event)

    def _close_sinks(self) -> None:
        for sink in self._notifier.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()

    def _doctor(self, name: str) -> Diagnosis:
        grant, provider = self.store.get_grant_and_provider(name)
        now = self.clock.now()
        history = self.store.list_attempts(name, limit=self.store.retention.per_grant)
        lease = self.store.lease_holder(name, now=now)
        # Liveness comes from the store's signal (a file lock, a session lock), never from the host name and pid
        # in the worker id: containers sharing a host name have separate pid tables.
        return diagnose(grant, provider, history, now=now, lease=lease, alive=self.store.worker_alive,
                        find=lambda attempt_id: self.store.get_attempt(name, attempt_id),
                        spent=lambda fingerprint: self.store.spent_by(name, fingerprint))  # fmt: skip

    def _on_store_change(self, name: str, generation: int, kind: str) -> None:
        """Another worker committed or invalidated: drop what this process cached (I4). Any thread may call."""
        if kind == "invalidate":
            self._rejections[name] = next(_TICKETS)
        entry = self._cache.get(name)
        if entry is not None and (kind == "invalidate" or entry[2] < generation):
            self._cache.pop(name, None)

    def _cached(self, name: str) -> Secret | None:
        entry = self._cache.get(name)
        if entry is not None and entry[1] > self._now():
            return entry[0]
        return None

    def served(self, name: str) -> ServedToken | None:
        """The access token `access_token` would return now without I/O, with its generation and expiry; None if
        it would have to refresh first. For callers that hand tokens on with their metadata (``grantkeeper
        serve``): ask `access_token` (or `refresh`) first, then this, and ask again if it is None."""
        entry = self._cache.get(name)
        if entry is None or entry[1] <= self._now():
            return None
        return ServedToken(entry[0], entry[2], entry[3], entry[1])

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
            self._cache[grant.name] = (grant.access_token, until, grant.generation, grant.expires_at)
        return grant

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

    def _unservable(self, name: str) -> TransientError:
        # Checked again after each refresh: a token can expire while the store is slow to answer, and another
        # host's notification can drop the entry in between (I4: never serve one past expiry minus skew).
        return TransientError(
            f"grant {name!r}: {_SERVE_TRIES} refreshes in a row produced no access token that was still valid when "
            "it could be handed out (the store or provider is slower than the token's lifetime); retry later",
            grant=name,
        )

    def _satisfied(self, name: str, force: bool, seen: int) -> bool:
        """Checked under the grant's lock: did the caller before us already produce what we need?"""
        if self._cached(name) is None:
            return False
        return not force or self._seen_generation(name) > seen

    def _served(self, grant: Grant) -> Grant:
        """The grant as this process serves it (a token waiting in recovery storage is not in the store yet)."""
        entry = self._cache.get(grant.name)
        if entry is None or entry[0] == grant.access_token or entry[2] < grant.generation:
            return grant
        return replace(grant, access_token=entry[0], generation=entry[2])

    def _seen_generation(self, name: str) -> int:
        entry = self._cache.get(name)
        return entry[2] if entry is not None else -1

    def _flow(self, name: str, force: bool, seen: int) -> Any:
        return refresh_flow(
            name, worker=self.worker, force=force, policy=self.policy, seen_generation=seen if seen >= 0 else None,
            actor=self._actor(),
        )  # fmt: skip

    @staticmethod
    def _actor() -> str:
        """The calling thread (or asyncio task) as the attempt history names it."""
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        thread = threading.current_thread().name
        return f"{thread}/{task.get_name()}" if task is not None else thread

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this keeper is closed; open a new one")

    def _replay_soon(self) -> None:
        """A successor waits in recovery storage: keep trying to commit it in the background until the store
        takes it, so the window in which the store lags behind the provider is as short as the outage."""
        with self._replay_guard:
            if self._replayer is not None and self._replayer.is_alive():
                return
            self._replayer = threading.Thread(target=self._replay_until_done, name="grantkeeper-replay", daemon=True)
            self._replayer.start()

    def _replay_until_done(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                done = self.store.replay_recovery(now=self.clock.now())
                for name in done:
                    logger.info("grant %r committed from local recovery storage", name)
                if not self.store.pending_recovery():
                    return
            except GrantkeeperError:
                pass  # still down; keep trying
            self._stopping.wait(delay)
            delay = min(delay * 2, 2.0)

    def _stop_background(self) -> None:
        """Before the store closes: a connection must not be closed under a thread still using it."""
        self._closed = True
        self._stopping.set()
        replayer = self._replayer
        if replayer is not None:
            replayer.join(timeout=30)

    def _replay_recovery(self) -> None:
        try:
            done = self.store.replay_recovery(now=self.clock.now())
        except GrantkeeperError as exc:
            logger.warning("recovery storage could not be replayed yet: %s", exc.message)
            return
        for name in done:
            logger.info("grant %r committed from local recovery storage", name, extra={"grantkeeper": {"grant": name}})

    def _status(self, name: str) -> GrantStatus:
        grant, provider = self.store.get_grant_and_provider(name)
        now = self.clock.now()
        return GrantStatus(
            name=grant.name, provider=grant.provider, state=grant.state, generation=grant.generation,
            refresh_fp=grant.refresh_fp, access_fp=grant.access_fp, expires_at=grant.expires_at,
            access_valid=grant.access_usable(now, provider.skew), scopes=grant.scopes,
            last_error=grant.last_error, last_error_at=grant.last_error_at, updated_at=grant.updated_at,
            lease=self.store.lease_holder(name, now=now), attempts=tuple(self.store.list_attempts(name, limit=10)),
            pending_recovery=self.store.pending_recovery(name),
            refresh_issued_at=grant.refresh_issued_at, refresh_used_at=grant.refreshed_at,
            refresh_ends=tuple(sorted(refresh_token_ends(grant, provider), key=lambda e: e.deadline)),
        )  # fmt: skip

    def _expiring(self, window: float) -> list[RefreshTokenExpiry]:
        """Active grants whose refresh token or consent ends within `window` seconds, soonest first: per grant,
        the earliest end that only a new consent fixes if there is one in the window, else the earliest end."""
        now = self.clock.now()
        providers = {p.name: p for p in self.store.list_providers()}
        found = []
        for grant in self.store.list_grants():
            if grant.state is not GrantState.ACTIVE:
                continue
            ends = sorted((e for e in refresh_token_ends(grant, providers[grant.provider])
                           if e.deadline - window <= now), key=lambda e: (e.renewable, e.deadline))  # fmt: skip
            if ends:
                found.append(ends[0])
        return sorted(found, key=lambda e: e.deadline)

    def _keepalive_plan(self, margin: float) -> list[tuple[str, str, float]]:
        """(grant, "refresh" | "reconsent_needed", deadline) for active grants whose refresh token would die
        within `margin` seconds: by idle or stated expiry (a refresh resets it) or absolute expiry (only consent
        does)."""
        return [(e.grant, "refresh" if e.renewable else "reconsent_needed", e.deadline) for e in self._expiring(margin)]

    @staticmethod
    def _reconsent(name: str, deadline: float) -> KeepaliveResult:
        result = KeepaliveResult(name, "reconsent_needed", deadline,
                                 "the provider's absolute refresh-token lifetime ends soon; refreshing cannot extend "
                                 "it: have the user authorize again and re-import the grant")  # fmt: skip
        logger.warning("grant %r: %s (deadline %.0f)", name, result.detail, deadline,
                       extra={"grantkeeper": {"grant": name, "deadline": deadline}})  # fmt: skip
        return result

    def _invalidate(self, name: str, access_token: str) -> bool:
        """A resource server rejected `access_token` (401): drop it here and in the store (I4)."""
        # The mark first, then the store: a worker that read the store before it is invalidated there must not
        # cache the rejected token after it was dropped here. The cache is dropped even if the store fails.
        self._rejections[name] = next(_TICKETS)
        try:
            return self.store.invalidate_access(name, access_fp=self.store.fingerprint(Secret(access_token)))
        finally:
            entry = self._cache.get(name)
            if entry is not None and entry[0] == Secret(access_token):
                self._cache.pop(name, None)

    def _import(
        self, name: str, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...], *,
        access_token: Secret | None = None, expires_at: float | None = None, refresh_expires_at: float | None = None,
    ) -> Grant:  # fmt: skip
        """Store the grant; `access_token` (with `expires_at`) is the one issued with the refresh token, kept so
        the first token read needs no refresh (`grantkeeper.consent` passes a consent's whole token response).

        A refresh token this grant's kept history shows spent is refused (`SpentRefreshToken`): a rotating
        provider would reject it, and one that detects reuse would revoke the whole grant."""
        secret = refresh_token if isinstance(refresh_token, Secret) else Secret(refresh_token.strip())
        self._refuse_spent(name, secret)
        grant = self.store.import_grant(name, provider=provider, refresh_token=secret, scopes=scopes,
                                        now=self.clock.now(), access_token=access_token, expires_at=expires_at,
                                        refresh_expires_at=refresh_expires_at)  # fmt: skip
        self._cache.pop(name, None)
        return grant

    def _refuse_spent(self, name: str, token: Secret) -> None:
        fingerprint = self.store.fingerprint(token)
        spender = self.store.spent_by(name, fingerprint)
        if spender is None:
            return
        current = self.store.get_grant(name)
        raise SpentRefreshToken(
            f"grant {name!r}: this refresh token ({fingerprint}) was spent by attempt {spender.id} at "
            f"{iso_utc(spender.started_at)} (generation {spender.generation}"
            + (f", worker {spender.worker}" if spender.worker else ", since pruned from the kept history")
            + "); the grant's "
            f"current token is generation {current.generation} ({current.refresh_fp}, {current.state.value}). The "
            "provider rotated it, so it would refuse this one (a provider that detects reuse would revoke the whole "
            "grant). Nothing was stored: keep the current token ('grantkeeper doctor "
            f"{name}' says whether it works), or have the user authorize again and import the new token",
            grant=name, generation=current.generation, attempt_id=spender.id, fingerprint=fingerprint,
        )  # fmt: skip

    def _check_import(
        self, refresh_token: str | Secret, access_token: str | Secret | None, expires_at: float | None
    ) -> tuple[Secret, Secret | None]:
        """The public import's input check: one token value each (`check_refresh_token`), never a guess."""
        refresh = check_refresh_token(refresh_token)
        if access_token is None:
            return refresh, None
        if expires_at is None:
            raise ConfigurationError("an imported access token needs its expiry (expires_at, epoch seconds)")
        return refresh, check_refresh_token(access_token, what="the access token")


class Keeper(_KeeperCore):
    """Thread-safe, synchronous keeper of grants.

    >>> with Keeper.open("sqlite:///var/lib/app/grants.db") as keeper:  # doctest: +SKIP
    ...     headers = {"Authorization": f"Bearer {keeper.access_token('acme')}"}
    """

    def __init__(
        self, store: SQLStore, *, http: httpx.Client | None = None, clock: Clock | None = None,
        policy: RefreshPolicy | None = None, worker: str | None = None,
        on_event: EventSink | Iterable[EventSink] | None = None, retention: HistoryRetention | None = None,
    ) -> None:  # fmt: skip
        super().__init__(store, clock=clock, policy=policy, worker=worker, on_event=on_event, retention=retention)
        self._own_http = http is None
        self._http = http or transport.client(timeout=DEFAULT_TIMEOUT)
        self._sender = HttpSender(self._http)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def open(cls, url: str, *, create: bool = True, **options: Any) -> Keeper:
        """Open the store at `url` and commit anything waiting in its local recovery storage."""
        keeper = cls(open_store(url, create=create), **options)
        keeper._replay_recovery()
        return keeper

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop_background()
        self._close_sinks()
        if self._own_http:
            self._http.close()
        self.store.close()

    def _lock(self, name: str) -> threading.Lock:
        lock = self._locks.get(name)
        if lock is None:
            with self._locks_guard:
                lock = self._locks.setdefault(name, threading.Lock())
        return lock

    def access_token(self, name: str) -> str:
        """A valid access token for grant `name`, refreshing (once, for all callers) if needed."""
        entry = self._cache.get(name)  # the fast path: no lock, no I/O, as few calls as possible
        if entry is not None and entry[1] > self._now():
            return entry[0].reveal()
        for _ in range(_SERVE_TRIES):
            result = self._run(name, force=False)
            cached = self._cached(name) or self._issued_to_caller(result)
            if cached is not None:
                return cached.reveal()
        raise self._unservable(name)

    def refresh(self, name: str, *, force: bool = False) -> Grant:
        """Refresh grant `name` if its access token is not usable (or always, with `force`)."""
        result = self._run(name, force=force)
        return result.grant if result is not None else self._served(self.store.get_grant(name))

    def _run(self, name: str, *, force: bool) -> Refreshed | None:
        """Run the protocol under the grant's lock; None if a caller before us already did the work."""
        self._check_open()
        seen = self._seen_generation(name)
        with self._lock(name):
            if self._satisfied(name, force, seen):
                return None
            mark = self._rejection_mark(name)
            with self._forget_if_dead(name):
                try:
                    result = drive(
                        self._flow(name, force, seen), store=self.store, sender=self._sender, clock=self.clock
                    )
                except (NeedsReauth, ClientAuthFailed) as exc:
                    self._announce(exc)
                    raise
                except StoreUnavailable:
                    self._replay_soon()  # a successor the store refused may wait in recovery storage, or in memory
                    raise
            self._remember(result, mark)
            return result

    def status(self, name: str) -> GrantStatus:
        return self._status(name)

    def doctor(self, name: str) -> Diagnosis:
        """Why grant `name` failed last (or that it is healthy), with evidence and the next step."""
        return self._doctor(name)

    def history(self, name: str, *, limit: int = 50) -> list[Attempt]:
        """Grant `name`'s refresh attempts, newest first: who, when, which generation and fingerprints, outcome."""
        self.store.get_grant(name)  # an unknown name is an error, not an empty history
        return self.store.list_attempts(name, limit=limit)

    def expiring(self, window: float) -> list[RefreshTokenExpiry]:
        """Grants whose refresh token or consent ends within `window` seconds (what ``status --expiring`` shows);
        `keepalive` refreshes the renewable ones."""
        return self._expiring(window)

    def keepalive(
        self, *, margin: float = 7 * 86400.0, progress: Callable[[int, int], None] | None = None
    ) -> list[KeepaliveResult]:
        """Refresh grants whose refresh token would expire from disuse within `margin` seconds; warn about
        grants whose consent ends (absolute lifetime) within it. Run it from a daily scheduler.

        `progress(done, total)` is called once before the first grant (``done == 0``) and after each one.
        """
        results = []
        plan = self._keepalive_plan(margin)
        if progress is not None:
            progress(0, len(plan))
        for name, action, deadline in plan:
            if action == "reconsent_needed":
                results.append(self._reconsent(name, deadline))
            else:
                try:
                    grant = self.refresh(name, force=True)
                    results.append(KeepaliveResult(name, "refreshed", deadline, f"generation {grant.generation}"))
                except GrantkeeperError as exc:
                    results.append(KeepaliveResult(name, "failed", deadline, f"{exc.code}: {exc.message}"))
            if progress is not None:
                progress(len(results), len(plan))
        return results

    def grants(self) -> list[Grant]:
        return self.store.list_grants()

    def add_provider(self, provider: Provider) -> None:
        self.store.put_provider(provider, now=self.clock.now())

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
        refresh, access = self._check_import(refresh_token, access_token, expires_at)
        return self._import(name, provider, refresh, scopes, access_token=access, expires_at=expires_at)

    def report_rejected(self, name: str, access_token: str) -> bool:
        """Tell the keeper a resource server answered 401 to `access_token`; the next call refreshes."""
        return self._invalidate(name, access_token)


class AsyncKeeper(_KeeperCore):
    """Task-safe asyncio keeper of grants; the same protocol as `Keeper`, driven with ``await``."""

    def __init__(
        self, store: SQLStore, *, http: httpx.AsyncClient | None = None, clock: Clock | None = None,
        policy: RefreshPolicy | None = None, worker: str | None = None,
        on_event: EventSink | Iterable[EventSink] | None = None, retention: HistoryRetention | None = None,
    ) -> None:  # fmt: skip
        super().__init__(store, clock=clock, policy=policy, worker=worker, on_event=on_event, retention=retention)
        self._own_http = http is None
        self._http = http or transport.async_client(timeout=DEFAULT_TIMEOUT)
        self._sender = AsyncHttpSender(self._http)
        self._astore = threaded(store)
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    async def open(cls, url: str, *, create: bool = True, **options: Any) -> AsyncKeeper:
        store = await asyncio.to_thread(open_store, url, create=create)
        keeper = cls(store, **options)
        await asyncio.to_thread(keeper._replay_recovery)
        return keeper

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._stop_background)
        await asyncio.to_thread(self._close_sinks)
        if self._own_http:
            await self._http.aclose()
        await asyncio.to_thread(self.store.close)

    async def access_token(self, name: str) -> str:
        entry = self._cache.get(name)
        if entry is not None and entry[1] > self._now():
            return entry[0].reveal()
        for _ in range(_SERVE_TRIES):
            result = await self._run(name, force=False)
            cached = self._cached(name) or self._issued_to_caller(result)
            if cached is not None:
                return cached.reveal()
        raise self._unservable(name)

    async def refresh(self, name: str, *, force: bool = False) -> Grant:
        result = await self._run(name, force=force)
        return result.grant if result is not None else self._served(await self._call(self.store.get_grant, name))

    async def _run(self, name: str, *, force: bool) -> Refreshed | None:
        self._check_open()
        seen = self._seen_generation(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self._satisfied(name, force, seen):
                return None
            mark = self._rejection_mark(name)
            with self._forget_if_dead(name):
                try:
                    result = await drive_async(
                        self._flow(name, force, seen), store=self._astore, sender=self._sender, clock=self.clock
                    )
                except (NeedsReauth, ClientAuthFailed) as exc:
                    await self._call(self._announce, exc)
                    raise
                except StoreUnavailable:
                    self._replay_soon()  # see Keeper._run
                    raise
            self._remember(result, mark)
            return result

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def status(self, name: str) -> GrantStatus:
        return await self._call(self._status, name)

    async def doctor(self, name: str) -> Diagnosis:
        return await self._call(self._doctor, name)

    async def history(self, name: str, *, limit: int = 50) -> list[Attempt]:
        await self._call(self.store.get_grant, name)
        return await self._call(self.store.list_attempts, name, limit=limit)

    async def expiring(self, window: float) -> list[RefreshTokenExpiry]:
        """See `Keeper.expiring`."""
        return await self._call(self._expiring, window)

    async def keepalive(
        self, *, margin: float = 7 * 86400.0, progress: Callable[[int, int], None] | None = None
    ) -> list[KeepaliveResult]:
        """See `Keeper.keepalive`."""
        results = []
        plan = await self._call(self._keepalive_plan, margin)
        if progress is not None:
            progress(0, len(plan))
        for name, action, deadline in plan:
            if action == "reconsent_needed":
                results.append(self._reconsent(name, deadline))
            else:
                try:
                    grant = await self.refresh(name, force=True)
                    results.append(KeepaliveResult(name, "refreshed", deadline, f"generation {grant.generation}"))
                except GrantkeeperError as exc:
                    results.append(KeepaliveResult(name, "failed", deadline, f"{exc.code}: {exc.message}"))
            if progress is not None:
                progress(len(results), len(plan))
        return results

    async def grants(self) -> list[Grant]:
        return await self._call(self.store.list_grants)

    async def add_provider(self, provider: Provider) -> None:
        await self._call(self.store.put_provider, provider, now=self.clock.now())

    async def import_grant(
        self, name: str, *, provider: str, refresh_token: str | Secret, scopes: tuple[str, ...] = (),
        access_token: str | Secret | None = None, expires_at: float | None = None,
    ) -> Grant:  # fmt: skip
        """See `Keeper.import_grant`."""
        refresh, access = self._check_import(refresh_token, access_token, expires_at)
        return await self._call(self._import, name, provider, refresh, scopes, access_token=access,
                                expires_at=expires_at)  # fmt: skip

    async def report_rejected(self, name: str, access_token: str) -> bool:
        return await self._call(self._invalidate, name, access_token)
