"""The refresh scheduler: keeps grants fresh ahead of time, through the keeper's one refresh path.

Each round takes the grants whose planned time has come (`take_due`: at most as many as there are free refresh
slots; the same transaction moves each one `hold` seconds ahead, so another scheduler on the same store passes it
by, and a scheduler that dies leaves it due again after `hold`). For each, the plan (`protocol.planning`) says:

* refresh it (ahead of its access token's end if it is hot, or before its refresh token's renewable end): a forced
  `AsyncKeeper.refresh`, satisfied by any generation after the one planned from, so a grant another worker just
  refreshed is not refreshed twice. The keeper's store is a `GroupCommit`: the claims and commits of all refreshes
  in flight share their transactions;
* warn that its refresh token reaches an absolute end (an event; only a new consent renews it);
* nothing yet: it is planned for its time.

A provider's gate (`protocol.throttle`) bounds its refreshes in flight and pauses it after 429s and outages, so one
provider in trouble slows only its own grants. Every grant's next planned time is written back in one transaction
per round. No leader is elected: two schedulers never take one grant at once (the due query), and if they ever
refresh it at once anyway (a `hold` that ran out) the keeper's lease lets one send and the other finds the
generation moved on (docs/serve.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Unpack

from grantkeeper._exceptions import (
    ClientAuthFailed,
    GrantkeeperError,
    NeedsReauth,
    ProviderUnavailable,
    StoreUnavailable,
    TransientError,
)
from grantkeeper.engine.group_commit import GroupCommit, store_batch
from grantkeeper.engine.keeper import AsyncKeeper, KeeperOptions
from grantkeeper.engine.ports import AsyncSender
from grantkeeper.engine.threaded import threaded
from grantkeeper.model import Grant, Provider
from grantkeeper.model.schedule import ScheduleEntry
from grantkeeper.notify.events import GrantEvent
from grantkeeper.protocol.planning import Action, Planned, SchedulePolicy, next_action
from grantkeeper.protocol.throttle import GateOutcome, ProviderGate

__all__ = ["LAG_BUCKETS", "ScheduleStore", "Scheduler", "SchedulerOptions", "SchedulerStats"]

logger = logging.getLogger("grantkeeper")

#: Upper bounds (seconds) of the lag histogram: how late a planned refresh started.
LAG_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))


class ScheduleStore(Protocol):
    """What the scheduler needs of a store beside the keeper's `Store` (`SQLStore` has both)."""

    def take_due(self, *, now: float, hold: float, limit: int) -> list[tuple[ScheduleEntry, Grant, Provider]]: ...

    def plan_due(self, plans: list[tuple[str, float, float | None]]) -> None: ...

    def note_used(self, names: list[str], *, now: float, window: float) -> None: ...

    def perform_batch(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    """How the scheduler runs.

    Args:
        plan: when grants are acted on (`SchedulePolicy`).
        hot_window: a grant whose token the service handed out this recently is kept fresh ahead of time.
        concurrency: refreshes in flight at once, over all providers.
        per_provider: refreshes in flight at once at one provider.
        hold: how long a taken grant is hidden from other schedulers (longer than one refresh can take).
        tick: the longest pause between two due queries.
        recheck: when a grant with nothing planned (or a failure that needs a person) is looked at again.
        retry: when a grant whose refresh failed for another reason is tried again.
    """

    plan: SchedulePolicy = field(default_factory=SchedulePolicy)
    hot_window: float = 600.0
    concurrency: int = 64
    per_provider: int = 16
    hold: float = 120.0
    tick: float = 1.0
    recheck: float = 3600.0
    retry: float = 30.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_provider < 1:
            raise ValueError("concurrency and per_provider must be at least 1")
        if self.tick <= 0 or self.hold <= 0 or self.hot_window < 0 or self.recheck <= 0 or self.retry <= 0:
            raise ValueError("tick, hold, recheck and retry must be positive and hot_window not negative")


@dataclass
class SchedulerStats:
    """What the scheduler did, for metrics and `grantkeeper schedule` (counters since start)."""

    outcomes: Counter[str] = field(default_factory=Counter)  # refreshes by outcome
    lag_buckets: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS))
    lag_sum: float = 0.0
    batches: Counter[int] = field(default_factory=Counter)  # store transactions shared, by size
    missed: int = 0  # refreshes that ended after their window (the token stopped being served, the token ended)
    warnings: int = 0
    heartbeat: float = 0.0  # wall clock of the last round

    def lag(self, seconds: float) -> None:
        self.lag_sum += seconds
        for i, bound in enumerate(LAG_BUCKETS):
            if seconds <= bound:
                self.lag_buckets[i] += 1
                return


class Scheduler:
    """Keeps the grants of `store` fresh ahead of time (see the module docs). `run()` until `stop()`."""

    def __init__(
        self,
        store: ScheduleStore,
        *,
        sender: AsyncSender,
        options: SchedulerOptions | None = None,
        on_round: Callable[[], None] | None = None,
        flushers: int = 1,
        **keeper_options: Unpack[KeeperOptions],
    ) -> None:
        """`on_round` is called as each round starts (a heartbeat: `grantkeeper serve`'s ``/readyz`` reads it);
        `flushers` batches of store transactions may commit at once (`GroupCommit`)."""
        self.options = options or SchedulerOptions()
        self._on_round = on_round
        self.stats = SchedulerStats()
        self._store = store
        self._run_batch = store_batch(store)
        self._grouped = GroupCommit(threaded(store), self._batch, flushers=flushers)  # type: ignore[arg-type]
        self.keeper = AsyncKeeper(self._grouped, sender=sender, **keeper_options)  # type: ignore[arg-type]
        self._now = self.keeper.clock.now
        self._announcing: set[asyncio.Task[None]] = set()
        self._gates: dict[str, ProviderGate] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._plans: list[tuple[str, float, float | None]] = []
        self._used: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    # --- what the service tells it ------------------------------------------------------------------------------

    def note_used(self, name: str) -> None:
        """The service handed out grant `name`'s token: it is hot (written to the store once per round)."""
        self._used[name] = self._now()

    def stop(self) -> None:
        """Take no more grants; `run` returns once the refreshes in flight have finished."""
        self._stopping.set()
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                await self._round()
                self._wake.clear()
                if not self._stopping.is_set() and self._free() > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.options.tick)
                elif self._in_flight:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            if self._in_flight:  # a graceful stop: what was sent is committed
                await asyncio.wait(self._in_flight)
            await self._write_back()
        finally:
            await self.keeper.aclose()

    def _free(self) -> int:
        return self.options.concurrency - len(self._in_flight)

    async def _round(self) -> None:
        now = self._now()
        self.stats.heartbeat = now
        if self._on_round is not None:
            self._on_round()
        await self._write_back()
        free = self._free()
        if free <= 0:
            return
        try:
            taken = await asyncio.to_thread(self._store.take_due, now=now, hold=self.options.hold, limit=free)
        except StoreUnavailable as exc:
            logger.warning("grantkeeper scheduler: the store is unavailable (%s); trying again", exc.message)
            return
        for entry, grant, provider in taken:
            task = asyncio.create_task(self._handle(entry, grant, provider), name=f"grantkeeper-schedule-{entry.grant}")
            self._in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("grantkeeper scheduler: planning a grant failed", exc_info=error)
        self._wake.set()

    async def _write_back(self) -> None:
        used, self._used = self._used, {}
        plans, self._plans = self._plans, []
        try:
            if used:
                await asyncio.to_thread(self._store.note_used, list(used), now=max(used.values()),
                                        window=self.options.hot_window)  # fmt: skip
            if plans:
                await asyncio.to_thread(self._store.plan_due, plans)
        except StoreUnavailable as exc:  # planned again from the store's own times: nothing is lost but time
            logger.warning("grantkeeper scheduler: could not write the plan back (%s)", exc.message)
            for name, at in used.items():
                self._used.setdefault(name, at)
            self._plans.extend(plans)

    async def _batch(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        self.stats.batches[len(calls)] += 1
        return await self._run_batch(calls)

    # --- one grant ----------------------------------------------------------------------------------------------

    async def _handle(self, entry: ScheduleEntry, grant: Grant, provider: Provider) -> None:
        now = self._now()
        plan = self._plan(entry, grant, provider, warned_at=entry.warned_at)
        warned = None
        if plan is not None and plan.action is Action.WARN and plan.at <= now:
            self._warn(plan, provider)
            warned = now
            plan = self._plan(entry, grant, provider, warned_at=now)
        if plan is None or plan.at > now or plan.action is Action.WARN:
            self._plans.append((entry.grant, plan.at if plan else now + self.options.recheck, warned))
            return
        gate = self._gates.setdefault(provider.name, ProviderGate(concurrency=self.options.per_provider))
        if gate.free(now) < 1:  # paused after failures, or its slots are taken: come back then
            self._plans.append((entry.grant, max(gate.paused_until, now + 0.2), warned))
            return
        due = await self._refresh(entry, plan, provider, gate)  # before `self._plans` is read: a round swaps it
        self._plans.append((entry.grant, due, warned))

    def _plan(
        self, entry: ScheduleEntry, grant: Grant, provider: Provider, *, warned_at: float | None
    ) -> Planned | None:
        now = self._now()
        hot = entry.hot or (entry.last_used_at is not None and now - entry.last_used_at <= self.options.hot_window)
        return next_action(grant, provider, hot=hot, skew=provider.skew, policy=self.options.plan,
                           warned_at=warned_at)  # fmt: skip

    async def _refresh(self, entry: ScheduleEntry, plan: Planned, provider: Provider, gate: ProviderGate) -> float:
        """Refresh as planned; the grant's next planned time."""
        started = self._now()
        self.stats.lag(max(0.0, started - plan.at))
        gate.start(started)
        try:
            grant = await self.keeper.refresh(plan.grant, force=True, unless_past=plan.generation)
        except GrantkeeperError as exc:
            self.stats.outcomes[exc.code] += 1
            return self._failed(plan, exc, gate)
        except BaseException:  # a bug or a cancellation: the slot must not stay taken, or the provider stalls
            gate.finish(GateOutcome.PERMANENT, self._now())
            raise
        ended = self._now()
        gate.finish(GateOutcome.OK, ended)
        self.stats.outcomes["refreshed" if grant.generation > plan.generation else "already_refreshed"] += 1
        if ended > plan.deadline:
            self.stats.missed += 1
            logger.warning("grantkeeper scheduler: grant %r was refreshed %.1f s after its window ended (%s)",
                           plan.grant, ended - plan.deadline, plan.reason)  # fmt: skip
        after = self._plan(entry, grant, provider, warned_at=entry.warned_at)
        return after.at if after is not None else ended + self.options.recheck

    def _failed(self, plan: Planned, exc: GrantkeeperError, gate: ProviderGate) -> float:
        """Tell the provider's gate how the refresh failed; when to look at the grant again."""
        now = self._now()
        if isinstance(exc, ProviderUnavailable):  # the provider's health: its gate pauses it
            text = exc.message
            throttled = exc.retry_after is not None or "429" in text or "temporarily_unavailable" in text
            outcome = GateOutcome.THROTTLED if throttled else GateOutcome.TRANSIENT
            gate.finish(outcome, now, retry_after=exc.retry_after, reason=exc.code)
            return max(gate.paused_until, now + 1.0)
        gate.finish(GateOutcome.PERMANENT, now)  # about the grant, the client or the store: not the provider
        if isinstance(exc, NeedsReauth | ClientAuthFailed):  # a person must act; the keeper announced it
            return now + self.options.recheck
        if isinstance(exc, TransientError) and exc.retry_after is not None:  # a lease held elsewhere, a store down
            return now + exc.retry_after
        if not isinstance(exc, TransientError):
            logger.warning("grantkeeper scheduler: grant %r: %s", plan.grant, exc.message)
        return now + self.options.retry

    def _announce(self, event: GrantEvent) -> None:
        task = asyncio.create_task(asyncio.to_thread(self.keeper.announce, event))  # sinks are user code: may block
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    def _warn(self, plan: Planned, provider: Provider) -> None:
        self.stats.warnings += 1
        event = GrantEvent(kind="refresh_token_ending", grant=plan.grant, provider=provider.name,
                           cause="absolute_lifetime", message=f"grant {plan.grant!r}: {plan.reason}",
                           evidence={"ends_at": plan.deadline, "generation": plan.generation}, at=self._now(),
                           worker=self.keeper.worker)  # fmt: skip
        logger.warning("grantkeeper scheduler: %s", event.message)
        self._announce(event)
