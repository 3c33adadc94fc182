"""ProviderSimulator: a real OAuth 2.0 token endpoint over loopback HTTP, exercised with httpx."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantkeeper.testing import FakeClock
from grantkeeper.testing import simulator as simulator_module
from grantkeeper.testing.simulator import (
    MALFORMED_KINDS,
    Delay,
    DropAfterRotate,
    DropBeforeProcessing,
    Fault,
    HttpError,
    Malformed,
    ProviderSimulator,
    SimulatorStats,
)

MakeSim = Callable[..., ProviderSimulator]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_sim(make_sim: Callable[..., ProviderSimulator], clock: FakeClock) -> MakeSim:
    """conftest's factory, with this module's fake clock unless a test passes its own."""

    def make(**kwargs: Any) -> ProviderSimulator:
        kwargs.setdefault("clock", clock.monotonic)
        return make_sim(**kwargs)

    return make


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as c:
        yield c


def refresh(client: httpx.Client, sim: ProviderSimulator, token: str, **extra: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return client.post(sim.url, data=data, auth=(sim.client_id, sim.client_secret))


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == code


# ------------------------------------------------------------------------------------------------ rotation


def test_always_rotation_issues_successor_and_supersedes(make_sim: MakeSim, client: httpx.Client) -> None:
    """rotation="always" returns a new refresh token each time and the presented one stops being active."""
    sim = make_sim()
    t0 = sim.issue_grant()
    r = refresh(client, sim, t0)
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    t1 = body["refresh_token"]
    assert t1 != t0
    assert body["access_token"] not in (t0, t1)
    assert not sim.is_active(t0)
    assert sim.is_active(t1)
    t2 = refresh(client, sim, t1).json()["refresh_token"]
    assert len({t0, t1, t2}) == 3
    assert sim.stats.rotations == 2


def test_success_response_headers(make_sim: MakeSim, client: httpx.Client) -> None:
    """Token responses are no-store JSON with a Content-Length and keep the connection open."""
    sim = make_sim()
    r = refresh(client, sim, sim.issue_grant())
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    assert int(r.headers["content-length"]) == len(r.content)
    assert "connection" not in r.headers


def test_never_rotation_omits_refresh_token(make_sim: MakeSim, client: httpx.Client) -> None:
    """rotation="never" omits refresh_token and the same token keeps working."""
    sim = make_sim(rotation="never")
    token = sim.issue_grant()
    for _ in range(3):
        r = refresh(client, sim, token)
        assert r.status_code == 200
        assert "refresh_token" not in r.json()
    assert sim.is_active(token)
    assert sim.stats.rotations == 0


def test_never_rotation_echo_returns_same_token(make_sim: MakeSim, client: httpx.Client) -> None:
    """echo_refresh_token=True returns the unchanged refresh token when not rotating."""
    sim = make_sim(rotation="never", echo_refresh_token=True)
    token = sim.issue_grant()
    assert refresh(client, sim, token).json()["refresh_token"] == token


def test_conditional_rotates_every_nth_success(make_sim: MakeSim, client: httpx.Client) -> None:
    """rotation="conditional" rotates on the Nth, 2Nth, ... success of a family only."""
    sim = make_sim(rotation="conditional", conditional_every=3)
    token = sim.issue_grant()
    rotated_at = []
    for i in range(1, 7):
        body = refresh(client, sim, token).json()
        if "refresh_token" in body:
            rotated_at.append(i)
            assert body["refresh_token"] != token
            assert not sim.is_active(token)
            token = body["refresh_token"]
        else:
            assert sim.is_active(token)
    assert rotated_at == [3, 6]
    assert sim.stats.rotations == 2


def test_conditional_echo_returns_current_token_between_rotations(make_sim: MakeSim, client: httpx.Client) -> None:
    """With echo, conditional mode returns the same token on non-rotating refreshes."""
    sim = make_sim(rotation="conditional", conditional_every=2, echo_refresh_token=True)
    token = sim.issue_grant()
    assert refresh(client, sim, token).json()["refresh_token"] == token
    successor = refresh(client, sim, token).json()["refresh_token"]
    assert successor != token


def test_fractional_access_ttl_sent_as_float(make_sim: MakeSim, client: httpx.Client) -> None:
    """expires_in is an int for whole lifetimes and a float otherwise."""
    sim = make_sim(access_ttl=1.5)
    body = refresh(client, sim, sim.issue_grant()).json()
    assert body["expires_in"] == 1.5
    sim2 = make_sim(access_ttl=60.0)
    body2 = refresh(client, sim2, sim2.issue_grant()).json()
    assert body2["expires_in"] == 60
    assert isinstance(body2["expires_in"], int)


# ------------------------------------------------------------------------------------- grace and reuse


def test_grace_replay_returns_same_successor(make_sim: MakeSim, client: httpx.Client, clock: FakeClock) -> None:
    """Within reuse_grace the superseded token gets the SAME successor and a new access token."""
    sim = make_sim(reuse_grace=10.0)
    t0 = sim.issue_grant()
    first = refresh(client, sim, t0).json()
    clock.advance(5.0)
    replay = refresh(client, sim, t0)
    assert replay.status_code == 200
    assert replay.json()["refresh_token"] == first["refresh_token"]
    assert replay.json()["access_token"] != first["access_token"]
    assert sim.is_active(first["refresh_token"])
    stats = sim.stats
    assert stats.grace_replays == 1
    assert stats.rotations == 1
    assert stats.successes == 2


def test_grace_replay_can_return_previous_access_token(
    make_sim: MakeSim, client: httpx.Client, clock: FakeClock
) -> None:
    """grace_returns_previous_access=True replays the access token issued with the successor with a fresh
    expires_in, as django-oauth-toolkit does, but the token itself still dies at its first expiry."""
    sim = make_sim(reuse_grace=10.0, grace_returns_previous_access=True, access_ttl=30.0)
    t0 = sim.issue_grant()
    first = refresh(client, sim, t0).json()
    clock.advance(9.0)
    replay = refresh(client, sim, t0).json()
    assert replay["access_token"] == first["access_token"]
    assert replay["refresh_token"] == first["refresh_token"]
    assert replay["expires_in"] == 30
    r = client.get(f"{sim.base_url}/resource", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert r.status_code == 200
    clock.advance(25.0)  # past the first lifetime (30 s from t=0), inside the one the replay stated (30 s from t=9)
    r = client.get(f"{sim.base_url}/resource", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert r.status_code == 401


def test_reuse_after_grace_revokes_family(make_sim: MakeSim, client: httpx.Client, clock: FakeClock) -> None:
    """Once the grace window has passed, the superseded token is invalid_grant and the family is revoked."""
    sim = make_sim(reuse_grace=10.0)
    t0 = sim.issue_grant()
    t1 = refresh(client, sim, t0).json()["refresh_token"]
    clock.advance(10.0)
    assert_error(refresh(client, sim, t0), 400, "invalid_grant")
    assert not sim.is_active(t1)
    assert_error(refresh(client, sim, t1), 400, "invalid_grant")
    assert sim.stats.reuse_detections == 1


def test_grace_applies_only_to_immediate_predecessor(make_sim: MakeSim, client: httpx.Client, clock: FakeClock) -> None:
    """An older ancestor is reuse even inside the grace window."""
    sim = make_sim(reuse_grace=60.0)
    t0 = sim.issue_grant()
    t1 = refresh(client, sim, t0).json()["refresh_token"]
    t2 = refresh(client, sim, t1).json()["refresh_token"]
    assert_error(refresh(client, sim, t0), 400, "invalid_grant")
    assert not sim.is_active(t2)


def test_reuse_detection_revokes_whole_family(make_sim: MakeSim, client: httpx.Client) -> None:
    """With grace 0, presenting a superseded token revokes the family, current token included."""
    sim = make_sim()
    t0 = sim.issue_grant()
    body = refresh(client, sim, t0).json()
    r = refresh(client, sim, t0)
    assert_error(r, 400, "invalid_grant")
    assert t0 not in r.text
    assert not sim.is_active(body["refresh_token"])
    assert_error(refresh(client, sim, body["refresh_token"]), 400, "invalid_grant")
    resource = client.get(f"{sim.base_url}/resource", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert resource.status_code == 401
    assert sim.stats.reuse_detections == 1


def test_no_reuse_detection_keeps_family(make_sim: MakeSim, client: httpx.Client) -> None:
    """With reuse_detection=False a superseded token is rejected but the family survives."""
    sim = make_sim(reuse_detection=False)
    t0 = sim.issue_grant()
    t1 = refresh(client, sim, t0).json()["refresh_token"]
    assert_error(refresh(client, sim, t0), 400, "invalid_grant")
    assert sim.is_active(t1)
    assert refresh(client, sim, t1).status_code == 200
    assert sim.stats.reuse_detections == 0


def test_unknown_and_revoked_tokens_are_invalid_grant(make_sim: MakeSim, client: httpx.Client) -> None:
    """Unknown and revoked refresh tokens get invalid_grant with a description that never echoes the token."""
    sim = make_sim()
    r = refresh(client, sim, "not-a-token")
    assert_error(r, 400, "invalid_grant")
    assert "not-a-token" not in r.text
    token = sim.issue_grant()
    sim.revoke_family(token)
    assert not sim.is_active(token)
    r = refresh(client, sim, token)
    assert_error(r, 400, "invalid_grant")
    assert token not in r.text
    assert r.json()["error_description"]
    with pytest.raises(KeyError):
        sim.revoke_family("unknown")


def test_families_are_independent(make_sim: MakeSim, client: httpx.Client) -> None:
    """Reuse in one family does not affect another."""
    sim = make_sim()
    a0, b0 = sim.issue_grant(), sim.issue_grant()
    refresh(client, sim, a0)
    refresh(client, sim, a0)  # reuse -> family A revoked
    assert refresh(client, sim, b0).status_code == 200


# ----------------------------------------------------------------------------------- request validation


def test_missing_and_unsupported_grant_type(make_sim: MakeSim, client: httpx.Client) -> None:
    """Missing grant_type is invalid_request, an unknown one unsupported_grant_type, no token is invalid_request."""
    sim = make_sim()
    auth = (sim.client_id, sim.client_secret)
    assert_error(client.post(sim.url, data={"refresh_token": "x"}, auth=auth), 400, "invalid_request")
    r = client.post(sim.url, data={"grant_type": "authorization_code", "code": "c"}, auth=auth)
    assert_error(r, 400, "unsupported_grant_type")
    assert_error(client.post(sim.url, data={"grant_type": "refresh_token"}, auth=auth), 400, "invalid_request")


def test_body_must_be_form_without_repeated_parameters(make_sim: MakeSim, client: httpx.Client) -> None:
    """A JSON body or a repeated parameter is invalid_request and consumes nothing."""
    sim = make_sim()
    token = sim.issue_grant()
    auth = (sim.client_id, sim.client_secret)
    r = client.post(sim.url, json={"grant_type": "refresh_token", "refresh_token": token}, auth=auth)
    assert_error(r, 400, "invalid_request")
    content = f"grant_type=refresh_token&refresh_token={token}&refresh_token={token}"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert_error(client.post(sim.url, content=content, headers=headers, auth=auth), 400, "invalid_request")
    assert sim.is_active(token)


def test_scope_must_be_subset(make_sim: MakeSim, client: httpx.Client) -> None:
    """A narrower scope is granted; a wider one is invalid_scope and leaves the token usable."""
    sim = make_sim()
    token = sim.issue_grant(scope="read write")
    assert_error(refresh(client, sim, token, scope="read admin"), 400, "invalid_scope")
    assert sim.is_active(token)
    body = refresh(client, sim, token, scope="read").json()
    assert body["scope"] == "read"
    body2 = refresh(client, sim, body["refresh_token"]).json()
    assert body2["scope"] == "read write"  # the refresh token keeps the original scope (RFC 6749 section 6)


def test_other_paths_and_methods(make_sim: MakeSim, client: httpx.Client) -> None:
    """GET /token is 405 and unknown paths are 404."""
    sim = make_sim()
    r = client.get(sim.url)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert client.post(f"{sim.base_url}/nope", data={"a": "b"}).status_code == 404
    assert sim.stats.refresh_calls == 0


# -------------------------------------------------------------------------------------- client auth


def test_client_secret_basic_and_post_both_work(make_sim: MakeSim, client: httpx.Client) -> None:
    """client_secret_basic and client_secret_post both authenticate."""
    sim = make_sim()
    token = sim.issue_grant()
    token = refresh(client, sim, token).json()["refresh_token"]
    data = {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
    }
    assert client.post(sim.url, data=data).status_code == 200


def test_two_auth_methods_is_invalid_request(make_sim: MakeSim, client: httpx.Client) -> None:
    """Basic credentials plus a client_secret body parameter is 400 invalid_request."""
    sim = make_sim()
    token = sim.issue_grant()
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_secret": sim.client_secret}
    r = client.post(sim.url, data=data, auth=(sim.client_id, sim.client_secret))
    assert_error(r, 400, "invalid_request")
    assert sim.is_active(token)


def test_wrong_secret_basic_is_invalid_client_with_challenge(make_sim: MakeSim, client: httpx.Client) -> None:
    """A wrong Basic secret is 401 invalid_client with a Basic WWW-Authenticate challenge."""
    sim = make_sim()
    token = sim.issue_grant()
    r = client.post(sim.url, data={"grant_type": "refresh_token", "refresh_token": token}, auth=(sim.client_id, "no"))
    assert_error(r, 401, "invalid_client")
    assert r.headers["www-authenticate"] == 'Basic realm="simulator"'
    assert sim.is_active(token)


def test_wrong_secret_post_is_invalid_client(make_sim: MakeSim, client: httpx.Client) -> None:
    """A wrong client_secret_post secret or no credentials at all is 401 invalid_client without a challenge."""
    sim = make_sim()
    token = sim.issue_grant()
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": sim.client_id, "client_secret": "x"}
    r = client.post(sim.url, data=data)
    assert_error(r, 401, "invalid_client")
    assert "www-authenticate" not in r.headers
    assert_error(
        client.post(sim.url, data={"grant_type": "refresh_token", "refresh_token": token}), 401, "invalid_client"
    )


def test_disallowed_auth_method_is_invalid_client(make_sim: MakeSim, client: httpx.Client) -> None:
    """Basic is refused when only client_secret_post is configured."""
    sim = make_sim(auth_methods=("client_secret_post",))
    r = refresh(client, sim, sim.issue_grant())
    assert_error(r, 401, "invalid_client")


def test_basic_credentials_are_form_urlencoded(make_sim: MakeSim, client: httpx.Client) -> None:
    """Basic credentials are form-urlencoded before base64 (RFC 6749 section 2.3.1)."""
    sim = make_sim(client_id="my client:1", client_secret="s3cr+t/=%")
    token = sim.issue_grant()
    data = {"grant_type": "refresh_token", "refresh_token": token}

    def basic(client_id: str, secret: str) -> dict[str, str]:
        raw = f"{client_id}:{secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    raw_headers = basic(sim.client_id, sim.client_secret)  # not encoded: '+' reads as a space
    assert_error(client.post(sim.url, data=data, headers=raw_headers), 401, "invalid_client")
    quote = urllib.parse.quote_plus
    r = client.post(sim.url, data=data, headers=basic(quote(sim.client_id), quote(sim.client_secret)))
    assert r.status_code == 200, r.text


def test_public_client_auth_none(make_sim: MakeSim, client: httpx.Client) -> None:
    """With auth_methods=("none",) a public client sends only client_id in the body."""
    sim = make_sim(auth_methods=("none",))
    token = sim.issue_grant()
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": sim.client_id}
    assert client.post(sim.url, data=data).status_code == 200
    data["client_id"] = "someone-else"
    assert_error(client.post(sim.url, data=data), 401, "invalid_client")


# -------------------------------------------------------------------------------------------- faults


def test_http_error_fault_does_not_consume_token(make_sim: MakeSim, client: httpx.Client) -> None:
    """HttpError answers with its status, error body and Retry-After, and leaves the token usable."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(HttpError(503, error="temporarily_unavailable", retry_after="7"))
    r = refresh(client, sim, token)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json() == {"error": "temporarily_unavailable"}
    assert sim.is_active(token)
    assert refresh(client, sim, token).status_code == 200
    assert sim.stats.errors == {"server_error": 1}


def test_http_error_fault_body_override_and_empty(make_sim: MakeSim, client: httpx.Client) -> None:
    """HttpError's body is sent verbatim; without error or body the response is empty."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(HttpError(502, body=b"<html>bad gateway</html>"))
    sim.inject(HttpError(429))
    r = refresh(client, sim, token)
    assert r.status_code == 502
    assert r.content == b"<html>bad gateway</html>"
    assert r.headers["content-type"].startswith("text/html")
    r = refresh(client, sim, token)
    assert r.status_code == 429
    assert r.content == b""
    assert sim.stats.errors == {"server_error": 1, "http_429": 1}


def test_faults_apply_fifo_with_times(make_sim: MakeSim, client: httpx.Client) -> None:
    """Injected faults hit the next requests in FIFO order, `times` each, and clear_faults drops the rest."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(HttpError(500), times=2)
    sim.inject(HttpError(502))
    sim.inject(HttpError(503))
    assert [refresh(client, sim, token).status_code for _ in range(4)] == [500, 500, 502, 503]
    sim.inject(HttpError(500), times=3)
    sim.clear_faults()
    assert refresh(client, sim, token).status_code == 200


def test_delay_fault_then_processes_normally(make_sim: MakeSim, client: httpx.Client) -> None:
    """Delay sleeps and then processes the refresh normally."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(Delay(0.01))
    r = refresh(client, sim, token)
    assert r.status_code == 200
    assert not sim.is_active(token)


def test_delay_sleeps_outside_lock_and_stop_wakes_it(make_sim: MakeSim) -> None:
    """A delayed request does not block other requests, and stop() ends it with a dropped connection."""
    sim = make_sim()
    slow_token, fast_token = sim.issue_grant(), sim.issue_grant()
    sim.inject(Delay(60.0))
    outcome: list[BaseException | int] = []

    def slow() -> None:
        with httpx.Client(timeout=120.0) as c:
            try:
                outcome.append(refresh(c, sim, slow_token).status_code)
            except httpx.TransportError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    while sim.stats.refresh_calls == 0:  # the slow request has taken the Delay fault
        threading.Event().wait(0.005)
    with httpx.Client(timeout=30.0) as c:
        assert refresh(c, sim, fast_token).status_code == 200
    assert thread.is_alive()
    assert outcome == []
    sim.stop()
    thread.join(timeout=30.0)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.TransportError)
    assert sim.is_active(slow_token)


MALFORMED_CHECKS: dict[str, Callable[[httpx.Response], bool]] = {
    "html": lambda r: r.headers["content-type"].startswith("text/html") and r.text.startswith("<!DOCTYPE html>"),
    "non_json": lambda r: _not_json(r.content),
    "missing_access_token": lambda r: "access_token" not in r.json() and r.json()["token_type"] == "Bearer",
    "missing_expires_in": lambda r: "expires_in" not in r.json() and isinstance(r.json()["access_token"], str),
    "wrong_types": lambda r: isinstance(r.json()["access_token"], int) and isinstance(r.json()["expires_in"], list),
    "expires_in_string": lambda r: r.json()["expires_in"] == "3600",
    "expires_in_negative": lambda r: r.json()["expires_in"] < 0,
    "expires_in_huge": lambda r: r.json()["expires_in"] == 10**12,
    "oversized": lambda r: len(r.content) > 2 * 1024 * 1024 and isinstance(r.json()["access_token"], str),
    "wrong_token_type": lambda r: r.json()["token_type"] == "mac",
    "json_array": lambda r: isinstance(r.json(), list),
    "empty": lambda r: r.content == b"",
}


def _not_json(content: bytes) -> bool:
    try:
        json.loads(content)
    except ValueError:
        return True
    return False


def test_malformed_checks_cover_every_kind() -> None:
    """Every Malformed kind has a check in this file."""
    assert set(MALFORMED_CHECKS) == set(MALFORMED_KINDS)


@pytest.mark.parametrize("kind", sorted(MALFORMED_KINDS))
def test_malformed_without_rotate_keeps_token(make_sim: MakeSim, client: httpx.Client, kind: str) -> None:
    """Malformed(kind) answers 200 with that broken body and, without rotate, consumes nothing."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(Malformed(kind))
    r = refresh(client, sim, token)
    assert r.status_code == 200
    assert MALFORMED_CHECKS[kind](r)
    assert "refresh_token" not in r.text
    assert sim.is_active(token)
    assert sim.stats.errors == {"malformed": 1}
    assert sim.stats.rotations == 0


@pytest.mark.parametrize("kind", ["expires_in_string", "missing_access_token", "html"])
def test_malformed_with_rotate_supersedes_token(make_sim: MakeSim, client: httpx.Client, kind: str) -> None:
    """Malformed(kind, rotate=True) rotates server-side first; the client never sees the successor."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(Malformed(kind, rotate=True))
    r = refresh(client, sim, token)
    assert r.status_code == 200
    assert MALFORMED_CHECKS[kind](r)
    assert "refresh_token" not in r.text
    assert not sim.is_active(token)
    assert sim.stats.rotations == 1
    assert_error(refresh(client, sim, token), 400, "invalid_grant")


def test_malformed_rotate_access_token_is_real(make_sim: MakeSim, client: httpx.Client) -> None:
    """With rotate=True the access token inside a lenient-looking body really works at /resource."""
    sim = make_sim()
    sim.inject(Malformed("expires_in_string", rotate=True))
    access = refresh(client, sim, sim.issue_grant()).json()["access_token"]
    r = client.get(f"{sim.base_url}/resource", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 200


def test_drop_before_processing_keeps_token(make_sim: MakeSim, client: httpx.Client) -> None:
    """DropBeforeProcessing closes the connection unanswered and consumes nothing."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(DropBeforeProcessing())
    with pytest.raises(httpx.TransportError):
        refresh(client, sim, token)
    assert sim.is_active(token)
    assert refresh(client, sim, token).status_code == 200
    assert sim.stats.errors == {"dropped": 1}


def test_drop_after_rotate_loses_successor(make_sim: MakeSim, client: httpx.Client) -> None:
    """DropAfterRotate rotates server-side, then drops; the old token then behaves as superseded."""
    sim = make_sim()
    token = sim.issue_grant()
    sim.inject(DropAfterRotate())
    with pytest.raises(httpx.TransportError):
        refresh(client, sim, token)
    assert not sim.is_active(token)
    stats = sim.stats
    assert stats.rotations == 1
    assert stats.errors == {"dropped": 1}
    assert stats.successes == 0
    assert_error(refresh(client, sim, token), 400, "invalid_grant")
    assert sim.stats.reuse_detections == 1


def test_drop_after_rotate_recovered_by_grace(make_sim: MakeSim, client: httpx.Client, clock: FakeClock) -> None:
    """After DropAfterRotate, a retry within the grace window receives the successor the server recorded."""
    sim = make_sim(reuse_grace=30.0)
    token = sim.issue_grant()
    sim.inject(DropAfterRotate())
    with pytest.raises(httpx.TransportError):
        refresh(client, sim, token)
    clock.advance(1.0)
    r = refresh(client, sim, token)
    assert r.status_code == 200
    successor = r.json()["refresh_token"]
    assert sim.is_active(successor)
    assert refresh(client, sim, successor).status_code == 200


def test_fault_arguments_are_validated(make_sim: MakeSim) -> None:
    """Bad fault parameters and abstract faults are rejected."""
    sim = make_sim()
    with pytest.raises(ValueError):
        Malformed("nope")
    with pytest.raises(ValueError):
        Delay(-1)
    with pytest.raises(ValueError):
        HttpError(200)
    with pytest.raises(TypeError):
        sim.inject(Fault())
    with pytest.raises(ValueError):
        sim.inject(HttpError(), times=0)


# ------------------------------------------------------------------------------------------ resource


def test_resource_accepts_live_access_token_until_expiry(
    make_sim: MakeSim, client: httpx.Client, clock: FakeClock
) -> None:
    """/resource accepts an issued access token until it expires by the injected clock."""
    sim = make_sim(access_ttl=60.0)
    access = refresh(client, sim, sim.issue_grant()).json()["access_token"]
    headers = {"Authorization": f"Bearer {access}"}
    r = client.get(f"{sim.base_url}/resource", headers=headers)
    assert r.status_code == 200
    assert r.json() == {"ok": True}
    clock.advance(59.0)
    assert client.get(f"{sim.base_url}/resource", headers=headers).status_code == 200
    clock.advance(1.0)
    r = client.get(f"{sim.base_url}/resource", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_resource_rejects_unknown_missing_and_revoked(make_sim: MakeSim, client: httpx.Client) -> None:
    """/resource rejects unknown tokens, missing credentials and tokens of revoked families."""
    sim = make_sim()
    token = sim.issue_grant()
    body = refresh(client, sim, token).json()
    resource = f"{sim.base_url}/resource"
    assert client.get(resource, headers={"Authorization": "Bearer bogus"}).status_code == 401
    r = client.get(resource)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    sim.revoke_family(body["refresh_token"])
    assert client.get(resource, headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 401


# --------------------------------------------------------------------------------------------- stats


def test_stats_count_every_outcome(make_sim: MakeSim, client: httpx.Client) -> None:
    """stats counts calls, successes, errors by code and rotations; /stats serves the same; reset_stats zeroes."""
    sim = make_sim()
    token = sim.issue_grant()
    token = refresh(client, sim, token).json()["refresh_token"]
    sim.inject(HttpError(500))
    refresh(client, sim, token)
    refresh(client, sim, "unknown")
    client.post(sim.url, data={"grant_type": "refresh_token", "refresh_token": token}, auth=("x", "y"))
    stats = sim.stats
    assert isinstance(stats, SimulatorStats)
    assert stats == SimulatorStats(
        refresh_calls=4,
        successes=1,
        errors={"server_error": 1, "invalid_grant": 1, "invalid_client": 1},
        grace_replays=0,
        reuse_detections=0,
        rotations=1,
    )
    assert client.get(f"{sim.base_url}/stats").json() == stats.as_dict()
    sim.reset_stats()
    assert sim.stats == SimulatorStats()
    assert sim.is_active(token)


# ------------------------------------------------------------------------------------------ concurrency


def test_concurrent_same_token_exactly_one_success(make_sim: MakeSim) -> None:
    """32 threads presenting one token at once with grace 0: exactly one succeeds and the family is revoked."""
    sim = make_sim(reuse_grace=0.0, reuse_detection=True)
    token = sim.issue_grant()
    n = 32
    barrier = threading.Barrier(n)
    results: list[httpx.Response] = []
    failures: list[BaseException] = []
    results_lock = threading.Lock()

    def worker() -> None:
        try:
            with httpx.Client(timeout=60.0) as c:
                c.get(f"{sim.base_url}/stats")  # open the connection before the race
                barrier.wait(timeout=60.0)
                r = refresh(c, sim, token)
            with results_lock:
                results.append(r)
        except BaseException as exc:  # reported by the main thread
            with results_lock:
                failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120.0)
    assert failures == []
    assert len(results) == n
    ok = [r for r in results if r.status_code == 200]
    assert len(ok) == 1
    assert all(r.status_code == 400 and r.json()["error"] == "invalid_grant" for r in results if r.status_code != 200)
    successor = ok[0].json()["refresh_token"]
    assert not sim.is_active(successor)
    stats = sim.stats
    assert stats.successes == 1
    assert stats.reuse_detections == 1
    assert stats.errors == {"invalid_grant": n - 1}


# -------------------------------------------------------------------------------------------- lifecycle


def test_lifecycle_errors(clock: FakeClock) -> None:
    """Using the URL before start, starting twice and restarting after stop raise RuntimeError."""
    sim = ProviderSimulator(clock=clock.monotonic)
    with pytest.raises(RuntimeError, match="not started"):
        _ = sim.url
    with sim:
        assert sim.url.startswith("http://127.0.0.1:")
        assert sim.url.endswith("/token")
        assert sim.url == sim.base_url + "/token"
        with pytest.raises(RuntimeError, match="already started"):
            sim.start()
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        sim.start()
    with pytest.raises(RuntimeError, match="stopped"):
        _ = sim.url
    with pytest.raises(RuntimeError, match="stopped"):
        sim.issue_grant()
    sim.stop()  # idempotent
    assert sim.stats.refresh_calls == 0


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"rotation": "sometimes"}, "rotation"),
        ({"reuse_grace": -1}, "reuse_grace"),
        ({"access_ttl": 0}, "access_ttl"),
        ({"conditional_every": 0}, "conditional_every"),
        ({"auth_methods": ()}, "auth_methods"),
        ({"auth_methods": ("client_secret_jwt_typo",)}, "auth_methods"),
        ({"client_id": ""}, "client_id"),
        ({"response_quirks": ("no_such_quirk",)}, "no_such_quirk"),
        ({"auth_methods": ("private_key_jwt",)}, "client_public_key"),
        ({"port": 70000}, "port"),
        ({"device_code_ttl": 0}, "device_code_ttl"),
        ({"device_interval": 0}, "device_interval"),
    ],
)
def test_constructor_rejects_each_option_out_of_range_naming_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ProviderSimulator(**options)


def test_generated_secret_and_custom_credentials() -> None:
    """client_secret defaults to a random value; explicit credentials are kept."""
    a, b = ProviderSimulator(), ProviderSimulator()
    assert a.client_secret != b.client_secret
    assert len(a.client_secret) >= 24
    c = ProviderSimulator(client_id="app", client_secret="s")
    assert (c.client_id, c.client_secret) == ("app", "s")


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_smoke() -> None:
    """python -m grantkeeper.testing --json prints credentials and a working refresh token, and exits 0 on SIGTERM."""
    src = Path(simulator_module.__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "grantkeeper.testing", "--json", "--grants", "2", "--rotation", "always"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            info = json.loads(line)
            assert info["token_url"].endswith("/token")
            assert len(info["refresh_tokens"]) == 2
            data = {"grant_type": "refresh_token", "refresh_token": info["refresh_tokens"][0]}
            with httpx.Client(timeout=30.0) as c:
                r = c.post(info["token_url"], data=data, auth=(info["client_id"], info["client_secret"]))
            assert r.status_code == 200, r.text
            assert r.json()["refresh_token"] not in info["refresh_tokens"]
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
