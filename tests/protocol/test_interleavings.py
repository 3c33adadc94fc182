"""Interleavings of the sans-I/O refresh protocol, explored step by step (no threads, no timing luck).

Two workers' `refresh_flow` generators are advanced one step at a time in an order hypothesis chooses,
against one store and a scripted rotating provider. A worker may also be killed between any two steps
(its generator is dropped with no cleanup, as SIGKILL would). Whatever the schedule, spend-once (I2),
monotonic generations (I3) and truthful classification (I5) must hold.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper import GrantkeeperError, LostInFlight, Provider, RefreshPolicy, Secret
from grantkeeper.engine.dispatch import store_call
from grantkeeper.model import AttemptState
from grantkeeper.protocol import refresh_flow
from grantkeeper.protocol.answers import HttpReply
from grantkeeper.protocol.steps import Now, Send, Sleep, StoreStep, WaitForChange
from grantkeeper.stores import open_store

POLICY = RefreshPolicy(lease_ttl=3.0, request_timeout=1.0, wait_timeout=60.0, deadline=10.0)
INITIAL = "refresh-0-" + "x" * 24


@dataclass
class RotatingProvider:
    """Always rotates, no grace, revokes the family on reuse: the strictest real behaviour."""

    current: str = INITIAL
    spent: list[str] = field(default_factory=list)
    revoked: bool = False

    def answer(self, token: str) -> HttpReply:
        self.spent.append(token)
        if self.revoked or token != self.current:
            self.revoked = True
            return HttpReply(400, {"content-type": "application/json"}, b'{"error":"invalid_grant"}')
        self.current = "refresh-" + secrets.token_hex(12)
        body_out = {"access_token": "access-" + secrets.token_hex(12), "token_type": "Bearer", "expires_in": 3600,
                    "refresh_token": self.current}  # fmt: skip
        return HttpReply(200, {"content-type": "application/json"}, json.dumps(body_out).encode())


@dataclass
class Worker:
    name: str
    flow: Generator[Any, Any, Any]
    reply: Any = None
    error: BaseException | None = None
    result: Any = None
    outcome: BaseException | None = None
    done: bool = False
    sent: bool = False


def _step(worker: Worker, store: Any, provider: RotatingProvider, clock: list[float]) -> None:
    """Advance `worker` by one step: execute what its flow yields next and keep the reply for the next step."""
    try:
        step = worker.flow.send(worker.reply) if worker.error is None else worker.flow.throw(worker.error)
    except StopIteration as stop:
        worker.result, worker.done = stop.value, True
        return
    except GrantkeeperError as exc:
        worker.outcome, worker.done = exc, True
        return
    worker.reply, worker.error = None, None
    try:
        if isinstance(step, WaitForChange):
            clock[0] += step.poll  # waiting is simulated time, like Sleep
        elif isinstance(step, StoreStep):
            method, args, kwargs = store_call(step)
            worker.reply = getattr(store, method)(*args, **kwargs)
        elif isinstance(step, Send):
            worker.sent = True
            worker.reply = provider.answer(step.request.refresh_token.reveal())
        elif isinstance(step, Sleep):
            clock[0] += step.seconds
        elif isinstance(step, Now):
            worker.reply = clock[0]
    except GrantkeeperError as exc:
        worker.error = exc


def _setup() -> Any:
    store = open_store("memory://")
    store.put_provider(
        Provider(name="p", token_url="https://as.example/token", client_id="c", client_secret=Secret("s")), now=0
    )
    store.import_grant("g", provider="p", refresh_token=Secret(INITIAL), scopes=(), now=0)
    return store


@settings(max_examples=400, deadline=None)
@given(schedule=st.lists(st.integers(min_value=0, max_value=1), min_size=1, max_size=80))
def test_two_workers_any_interleaving_spend_once(schedule: list[int]) -> None:
    """Two workers refreshing one expired grant, interleaved arbitrarily: one provider call, both get the
    committed generation 2, nothing spent twice."""
    store, provider, clock = _setup(), RotatingProvider(), [1000.0]
    workers = [Worker(n, refresh_flow("g", worker=n, force=False, policy=POLICY)) for n in ("A", "B")]
    for choice in schedule + [0, 1] * 200:
        live = [w for w in workers if not w.done]
        if not live:
            break
        _step(live[choice % len(live)], store, provider, clock)
    assert all(w.done and w.outcome is None for w in workers)
    assert provider.spent == [INITIAL]
    assert [w.result.grant.generation for w in workers] == [2, 2]
    assert workers[0].result.grant.access_token == workers[1].result.grant.access_token
    assert store.get_grant("g").refresh_token == Secret(provider.current)


@settings(max_examples=400, deadline=None)
@given(
    schedule=st.lists(st.integers(min_value=0, max_value=1), min_size=1, max_size=60),
    kill_after=st.integers(min_value=0, max_value=30),
)
def test_worker_killed_at_any_step_is_recovered_truthfully(schedule: list[int], kill_after: int) -> None:
    """Worker A is killed after `kill_after` of its steps (no cleanup). Worker B finishes. If A's request never
    reached the provider, B refreshes normally; if it did and A died before committing, B's single recorded
    re-send is rejected and reported lost_in_flight naming A's attempt; if A committed, B uses generation 2.
    No token is ever sent twice except that one recorded re-send."""
    store, provider, clock = _setup(), RotatingProvider(), [1000.0]
    a = Worker("A", refresh_flow("g", worker="A", force=False, policy=POLICY))
    b = Worker("B", refresh_flow("g", worker="B", force=False, policy=POLICY))
    a_steps = 0
    for choice in schedule:
        if choice == 0 and not a.done and a_steps < kill_after:
            _step(a, store, provider, clock)
            a_steps += 1
        elif not b.done:
            _step(b, store, provider, clock)
    killed = not a.done
    a.flow = iter(())  # type: ignore[assignment]  # SIGKILL: no finally, no lease release
    while not b.done:
        _step(b, store, provider, clock)

    assert provider.spent.count(INITIAL) <= 2
    final = store.get_grant("g")
    attempts = {x.id: x for x in store.list_attempts("g")}
    if not killed:
        assert provider.spent == [INITIAL]
        assert final.generation == 2 and b.outcome is None
        return
    a_attempts = [x for x in attempts.values() if x.worker == "A"]
    committed_by_a = any(x.state is AttemptState.COMMITTED for x in a_attempts)
    if committed_by_a or not a.sent:
        # A committed before dying, or died before its request left: the initial token is sent once. If A died
        # with an open attempt, B cannot know it was never sent: it re-sends it (answered normally), and since a
        # re-send's answer is not served on trust, spends the successor once more (generation 3).
        resent = any(x.resend_of is not None for x in attempts.values() if x.worker == "B")
        assert b.outcome is None and final.generation == (3 if resent else 2)
        assert provider.spent.count(INITIAL) == 1 and len(provider.spent) == (2 if resent else 1)
    else:
        # A spent the token and died before committing: B re-sent once, was refused, and says whose attempt.
        assert isinstance(b.outcome, LostInFlight)
        assert b.outcome.attempt_id in {x.id for x in a_attempts}
        assert provider.spent == [INITIAL, INITIAL]
        assert final.state.value == "needs_reauth"
