"""The refresh scheduler as the service runs it: its settings from ``[scheduler]``, its metrics, and one runner
shared by `grantkeeper serve` (beside the HTTP listeners) and `grantkeeper schedule` (alone).

The scheduler itself is `grantkeeper.engine.scheduler`; it refreshes through the keeper like every other caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.engine.scheduler import LAG_BUCKETS, Scheduler, SchedulerOptions
from grantkeeper.notify import EventSink
from grantkeeper.protocol.planning import SchedulePolicy
from grantkeeper.stores import SQLiteStore, SQLStore
from grantkeeper.tokens import aiohttp_transport
from grantkeeper.tokens.aiohttp_transport import AiohttpSender

__all__ = ["SchedulerCollector", "running_scheduler", "scheduler_options"]

_PLAN_KEYS = {f.name for f in dataclasses.fields(SchedulePolicy)}
_RUN_KEYS = {f.name for f in dataclasses.fields(SchedulerOptions)} - {"plan"}


def scheduler_options(section: dict[str, Any]) -> SchedulerOptions | None:
    """The ``[scheduler]`` section of grantkeeper.toml as options; None when it says ``enabled = false``.

    Keys: ``enabled`` and `SchedulerOptions`' and `SchedulePolicy`'s fields (``concurrency``, ``per_provider``,
    ``hot_window``, ``lead_fraction``, ``warn_before``, ...), all numbers of seconds or counts."""
    values = dict(section)
    enabled = values.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigurationError("[scheduler] enabled must be true or false")
    unknown = set(values) - _PLAN_KEYS - _RUN_KEYS
    if unknown:
        raise ConfigurationError(f"[scheduler] has unknown keys {sorted(unknown)}; known: "
                                 f"{sorted(_PLAN_KEYS | _RUN_KEYS | {'enabled'})}")  # fmt: skip
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"[scheduler] {key} must be a number, not {value!r}")
    try:
        plan = SchedulePolicy(**{k: float(v) for k, v in values.items() if k in _PLAN_KEYS})
        run: dict[str, Any] = {k: (int(v) if k in ("concurrency", "per_provider") else float(v))
                               for k, v in values.items() if k in _RUN_KEYS}  # fmt: skip
        options = SchedulerOptions(plan=plan, **run)
    except ValueError as exc:
        raise ConfigurationError(f"[scheduler]: {exc}") from None
    return options if enabled else None


class SchedulerCollector(Collector):
    """The scheduler's counters, read at scrape time: scheduled refreshes by outcome, how late they started
    (lag behind the planned time), how many store transactions they shared (group-commit batch sizes), and the
    grants that missed their window."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self._scheduler.stats
        outcomes = CounterMetricFamily("grantkeeper_scheduled_refreshes", "Refreshes the scheduler ran, by outcome "
                                       "(refreshed, already_refreshed, or the error code).",
                                       labels=["outcome"])  # fmt: skip
        for outcome, count in sorted(stats.outcomes.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        cumulative, buckets = 0, []
        for bound, count in zip(LAG_BUCKETS, stats.lag_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        lag = HistogramMetricFamily("grantkeeper_schedule_lag_seconds", "How long after its planned time a "
                                    "scheduled refresh started.")  # fmt: skip
        lag.add_metric([], buckets, sum_value=stats.lag_sum)
        yield lag
        sizes = HistogramMetricFamily("grantkeeper_group_commit_batch_size", "Store transactions of refreshes "
                                      "run as one durable commit.")  # fmt: skip
        size_buckets, seen = [], 0
        for bound in (1, 2, 4, 8, 16, 32, 64, 128, 256, float("inf")):
            seen = sum(n for size, n in stats.batches.items() if size <= bound)
            size_buckets.append(("+Inf" if bound == float("inf") else str(bound), seen))
        sizes.add_metric([], size_buckets, sum_value=sum(size * n for size, n in stats.batches.items()))
        yield sizes
        missed = CounterMetricFamily("grantkeeper_schedule_missed", "Scheduled refreshes that ended after the "
                                     "grant's window (its token stopped being served, or its refresh token "
                                     "ended).")  # fmt: skip
        missed.add_metric([], stats.missed)
        yield missed
        warned = CounterMetricFamily("grantkeeper_schedule_warnings", "Warnings that a refresh token reaches an "
                                     "absolute end (refresh_token_ending events).")  # fmt: skip
        warned.add_metric([], stats.warnings)
        yield warned
        beat = GaugeMetricFamily("grantkeeper_scheduler_heartbeat_timestamp_seconds", "When the scheduler last "
                                 "started a round (seconds since the epoch).")  # fmt: skip
        beat.add_metric([], stats.heartbeat)
        yield beat


@asynccontextmanager
async def running_scheduler(
    store: SQLStore,
    options: SchedulerOptions,
    *,
    on_event: Iterable[EventSink] = (),
    on_round: Callable[[], None] | None = None,
    worker: str | None = None,
) -> AsyncIterator[Scheduler]:
    """Run a scheduler on `store` in the background while the block runs; on leaving, stop it gracefully (the
    refreshes in flight finish and their plans are written back)."""
    # aiohttp's client costs an eighth of httpx's async client's CPU per request (benchmarks/bench_schedule.py),
    # and the scheduler is CPU-bound; it is part of the serve extra, which this module needs anyway.
    async with aiohttp_transport.session() as http:
        flushers = 1 if isinstance(store, SQLiteStore) else 2  # PostgreSQL: one batch fills while one commits
        scheduler = Scheduler(store, sender=AiohttpSender(http), options=options, on_event=list(on_event),
                              worker=worker, on_round=on_round, flushers=flushers)  # fmt: skip
        task = asyncio.create_task(scheduler.run(), name="grantkeeper-scheduler")
        try:
            yield scheduler
        finally:
            scheduler.stop()
            await task
