"""Prometheus metrics of one broker, in a registry of its own (never the process-global one).

No label ever holds a token, a fingerprint or a grant name: labels are providers, outcome classes, error codes,
route templates (``/v1/grants/{name}/token``, with the braces), statuses and API key names. Refresh outcomes
come from the store's observer hook (`SQLStore.observe`: every attempt this process ends, lease waits,
commits from recovery storage); needs-a-person events from `AsyncKeeper.on_event`; grant states and refresh
tokens ending soon are read from the store at scrape time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.model import GrantState
from grantkeeper.notify import GrantEvent, Webhook
from grantkeeper.stores import SQLStore
from grantkeeper.stores.sql import StoreEvent

__all__ = ["EXPIRING_WINDOW", "ServeMetrics"]

#: "Refresh token ends soon" means within this many seconds.
EXPIRING_WINDOW = 7 * 86400.0
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _WebhookCollector(Collector):
    """Deliveries counted by the `Webhook` sinks themselves, read at scrape time."""

    def __init__(self, hooks: Iterable[Webhook]) -> None:
        self._hooks = tuple(hooks)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("grantkeeper_webhook_deliveries", "Webhook event deliveries, by outcome.",
                                     labels=["outcome"])  # fmt: skip
        family.add_metric(["delivered"], sum(h.delivered for h in self._hooks))
        family.add_metric(["failed"], sum(h.undelivered for h in self._hooks))
        yield family


class ServeMetrics:
    def __init__(self, store: SQLStore, *, webhooks: Iterable[Webhook] = ()) -> None:
        self.registry = CollectorRegistry()
        self._store = store
        self._providers: dict[str, str] = {}
        self._providers_lock = threading.Lock()
        r = self.registry
        self.refreshes = Counter("grantkeeper_refreshes", "Refresh attempts this process ended, by provider and "
                                 "outcome class (committed, provider_unavailable, ...).", ["provider", "outcome"],
                                 registry=r)  # fmt: skip
        self.refresh_seconds = Histogram("grantkeeper_refresh_duration_seconds", "Token endpoint latency of refresh "
                                         "attempts, by provider.", ["provider"], buckets=_LATENCY_BUCKETS,
                                         registry=r)  # fmt: skip
        self.token_requests = Counter("grantkeeper_token_requests", "Access token requests, by outcome (served, or "
                                      "the error code answered).", ["outcome"], registry=r)  # fmt: skip
        self.lease_waits = Counter("grantkeeper_lease_waits", "Refreshes that found another worker holding the "
                                   "grant's lease and waited for its commit, by provider.", ["provider"],
                                   registry=r)  # fmt: skip
        self.recoveries = Counter("grantkeeper_recovery_commits", "Successor tokens committed from local recovery "
                                  "storage after the store came back.", registry=r)  # fmt: skip
        self.grant_events = Counter("grantkeeper_grant_events", "Events a person must act on (needs_reauth, "
                                    "client_auth_failed), by kind and cause.", ["kind", "cause"],
                                    registry=r)  # fmt: skip
        self.grants = Gauge("grantkeeper_grants", "Grants in the store, by state.", ["state"], registry=r)
        self.expiring = Gauge("grantkeeper_grants_refresh_ending_soon", "Active grants whose refresh token or "
                              "consent ends within 7 days.", registry=r)  # fmt: skip
        self.requests = Counter("grantkeeper_api_requests", "HTTP requests answered, by API key name, route template "
                                "and status.", ["api_key", "route", "status"], registry=r)  # fmt: skip
        self.request_seconds = Histogram("grantkeeper_api_request_duration_seconds", "Time to answer HTTP requests, "
                                         "by route template.", ["route"], buckets=_LATENCY_BUCKETS,
                                         registry=r)  # fmt: skip
        r.register(_WebhookCollector(webhooks))
        store.observe(self.on_store_event)

    def _provider(self, grant: str, known: str | None) -> str:
        if known is not None:
            with self._providers_lock:
                self._providers[grant] = known
            return known
        with self._providers_lock:
            found = self._providers.get(grant)
        if found is None:
            try:  # the observer runs in the thread that ran the store step: a read here blocks no event loop
                found = self._store.get_grant(grant).provider
            except GrantkeeperError:
                return "unknown"
            with self._providers_lock:
                self._providers[grant] = found
        return found

    def on_store_event(self, event: StoreEvent) -> None:
        provider = self._provider(event.grant, event.provider)
        if event.kind == "attempt":
            self.refreshes.labels(provider, event.outcome or "unknown").inc()
            if event.seconds is not None:
                self.refresh_seconds.labels(provider).observe(event.seconds)
        elif event.kind == "lease_wait":
            self.lease_waits.labels(provider).inc()
        elif event.kind == "recovered":
            self.recoveries.inc()

    def on_grant_event(self, event: GrantEvent) -> None:
        self.grant_events.labels(event.kind, event.cause).inc()

    def refresh_store_gauges(self) -> None:
        """Read grant states and ending refresh tokens from the store (blocking: call from a worker thread)."""
        grants = self._store.list_grants()
        with self._providers_lock:
            self._providers.update({g.name: g.provider for g in grants})
        for state in GrantState:
            self.grants.labels(state.value).set(sum(1 for g in grants if g.state is state))

    def render(self) -> bytes:
        return generate_latest(self.registry)
