"""Property-based API testing from /openapi.json (schemathesis): no 500, answers match the published schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from grantkeeper.testing.simulator import ProviderSimulator
from tests.helpers import setup_grant
from tests.serve.conftest import ServeProcess, launch, make_key, serve_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, str]]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    store_url = f"sqlite://{tmp}/serve.db"
    sim = ProviderSimulator()
    sim.start()
    setup_grant(store_url, sim, grant="acme-1")
    key = make_key(store_url, "fuzz", grants="*", scopes="token,refresh,read,metrics")
    server = launch(serve_command(store_url, "--port", "0"), env={"GRANTKEEPER_SERVE_RATE": "0", "GRANTKEEPER_KEY": ""})
    try:
        yield server, key
    finally:
        server.terminate()
        sim.stop()


def test_the_api_keeps_its_published_promises(broker: tuple[ServeProcess, str]) -> None:
    """Each operation of /openapi.json, with generated parameters and bodies, authenticated with an all-scopes key."""
    server, key = broker
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10
    validations = [checks.not_a_server_error, checks.response_schema_conformance, checks.content_type_conformance,
                   checks.status_code_conformance]  # fmt: skip
    for operation in operations:

        @given(case=operation.as_strategy(), real=st.booleans())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case: schemathesis.Case, real: bool) -> None:
            if real and case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = "acme-1"  # half the cases reach the real grant, not a 404
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=validations)

        exercise()
