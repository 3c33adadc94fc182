"""The error boundary: every grantkeeper error code has an HTTP status, documented, and real failures map to it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import grantkeeper._exceptions as exceptions
from grantkeeper import Keeper, Provider, RotationMode, Secret
from grantkeeper._exceptions import GrantkeeperError, TransientError
from grantkeeper.serve.errors import STATUS, problem_for, status_for
from grantkeeper.testing import HttpError
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


def _error_classes() -> list[type[GrantkeeperError]]:
    found = [getattr(exceptions, n) for n in exceptions.__all__]
    return [c for c in found if isinstance(c, type) and issubclass(c, GrantkeeperError)]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.code)
def test_every_error_code_has_a_status_and_a_problem_body(cls: type[GrantkeeperError]) -> None:
    assert cls.code in STATUS, f"add {cls.code!r} to grantkeeper.serve.errors.STATUS and docs/serve.md"
    error = cls("something went wrong; do this", grant="g") if not issubclass(cls, TransientError) else \
        cls("down; retry", retry_after=2.5, grant="g")  # fmt: skip
    status, body, headers = problem_for(error, doctor_class=None)
    assert status == STATUS[cls.code] == status_for(error)
    problem = json.loads(body)
    assert problem["code"] == cls.code and problem["status"] == status and problem["grant"] == "g"
    assert problem["type"] == "urn:grantkeeper:problem:" + cls.code and problem["detail"] == error.message
    assert headers["content-type"] == "application/problem+json"
    # Retry-After only where retrying helps: a permanent problem is never "retry later".
    assert ("retry-after" in headers) == issubclass(cls, TransientError)
    if issubclass(cls, TransientError):
        assert headers["retry-after"] == "3" and status in (503, 504)


def test_the_docs_table_is_the_code_table() -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d{3}) \|", DOCS.read_text(), flags=re.MULTILINE))
    assert {code: int(status) for code, status in rows.items() if code in STATUS} == STATUS


def test_a_revoked_grant_is_409_with_the_doctors_class(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, sim = grant_on_sim
    with Keeper.open(store_url) as keeper:
        # Accepted once (a later refusal is a revocation, not a bad import); its access token then rejected, so
        # the token request must refresh.
        keeper.report_rejected("acme-1", keeper.access_token("acme-1"))
        refresh = keeper.store.get_grant("acme-1").refresh_token
    assert refresh is not None
    sim.revoke_family(refresh.reveal())  # type: ignore[attr-defined]
    key = make_key(store_url, "ci")
    server = serve_process(store_url)
    with server.client(key) as http:
        answer = http.get("/v1/grants/acme-1/token")
    assert answer.status_code == 409, answer.text
    problem = answer.json()
    assert problem["code"] == "revoked_or_expired" and problem["doctor_class"] == "revoked_or_expired"
    assert "retry-after" not in answer.headers


def test_provider_down_is_503_with_retry_after(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, sim = grant_on_sim
    sim.inject(HttpError(status=503, retry_after="1"), times=50)  # type: ignore[attr-defined]
    key = make_key(store_url, "ci")
    server = serve_process(store_url)
    with server.client(key) as http:
        answer = http.get("/v1/grants/acme-1/token")
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "provider_unavailable" and int(answer.headers["retry-after"]) >= 1


def test_wrong_client_credentials_are_502(serve_store: str, make_sim: Callable[..., object],
                                          serve_process: Start) -> None:  # fmt: skip
    sim = make_sim()
    with Keeper.open(serve_store) as keeper:
        keeper.add_provider(Provider(name="sim", token_url=sim.url, client_id=sim.client_id,  # type: ignore[attr-defined]
                                     client_secret=Secret("not-the-secret"), rotation=RotationMode.ALWAYS))  # fmt: skip
        keeper.import_grant("acme-1", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
    key = make_key(serve_store, "ci")
    server = serve_process(serve_store)
    with server.client(key) as http:
        answer = http.get("/v1/grants/acme-1/token")
    assert answer.status_code == 502, answer.text
    assert answer.json()["code"] == "client_auth_failed" and answer.json()["doctor_class"] == "client_auth_failed"


def test_unknown_routes_and_bad_input_are_problems_too(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, _ = grant_on_sim
    key = make_key(store_url, "ci")
    server = serve_process(store_url)
    with server.client(key) as http:
        missing = http.get("/v2/nothing")
        bad = http.get("/v1/grants/acme-1/token", params={"min_valid": "soon"})
        wrong_method = http.delete("/v1/grants/acme-1/token")
        no_body = http.post("/v1/grants/acme-1/rejected", content=b"access_token=xyz")
        declared = http.post("/v1/grants/acme-1/rejected", content=b"x" * (2 << 20))
        chunked = http.post("/v1/grants/acme-1/rejected", content=(b"x" * 65536 for _ in range(32)))
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    assert no_body.status_code == 422 and "xyz" not in no_body.text
    assert (declared.status_code, declared.json()["code"]) == (413, "body_too_large")
    assert (chunked.status_code, chunked.json()["code"]) == (413, "body_too_large")
    for answer in (missing, bad, wrong_method, no_body, declared, chunked):
        assert answer.headers["content-type"] == "application/problem+json"


def test_a_bug_is_a_500_problem_naming_only_the_exception_type(grant_on_sim: tuple[str, object],
                                                               serve_process: Start) -> None:  # fmt: skip
    store_url, _ = grant_on_sim
    key = make_key(store_url, "ci")
    # An unparsable failpoint action raises ValueError inside the refresh: an error that is nobody's GrantkeeperError.
    server = serve_process(store_url, env={"GRANTKEEPER_FAILPOINTS": "after_claim=sleep:not-a-number"})
    with server.client(key) as http:
        answer = http.get("/v1/grants/acme-1/token")
        assert http.get("/livez").status_code == 200  # the process serves on
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "internal" and "ValueError" in problem["detail"]
    assert "Traceback" not in answer.text and "not-a-number" not in answer.text
    server.terminate()
    logged = [e for e in server.events() if e.get("event") == "unexpected error"]
    assert logged and logged[0]["error"] == "ValueError" and "Traceback" in str(logged[0]["traceback"])
