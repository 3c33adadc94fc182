"""The upstream API every proxy test forwards to (`tests.serve_proxy.servers.Upstream`, served on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serve_proxy.servers import Served, Upstream


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, Served]]:
    api = Upstream()
    served = Served(api.app())
    yield api, served
    served.stop()
