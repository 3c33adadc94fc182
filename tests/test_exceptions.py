"""An error class names its code, exit code (and, for the proxy's errors, HTTP status) in its header."""

from __future__ import annotations

import pytest

from grantkeeper._exceptions import ConfigurationError, GrantkeeperError, StoreUnavailable, TransientError
from grantkeeper.serve.proxy import ProxyError, UpstreamTimeout


def test_a_header_names_the_code_and_exit_code_and_what_it_leaves_out_is_inherited() -> None:
    class Outer(GrantkeeperError, code="outer", exit_code=42):
        pass

    class Inner(Outer, code="inner"):
        pass

    class Plain(Inner):
        pass

    assert (Outer.code, Outer.exit_code) == ("outer", 42)
    assert (Inner.code, Inner.exit_code) == ("inner", 42)
    assert (Plain.code, Plain.exit_code) == ("inner", 42)
    assert (GrantkeeperError.code, GrantkeeperError.exit_code) == ("error", 1)  # the parent is not changed
    with pytest.raises(Outer) as caught:
        raise Plain("boom", grant="g")
    assert caught.value.evidence() == {"code": "inner", "grant": "g"}


def test_the_declared_classes_keep_their_codes() -> None:
    assert (StoreUnavailable.code, StoreUnavailable.exit_code) == ("store_unavailable", 7)
    assert issubclass(StoreUnavailable, TransientError)
    assert (ConfigurationError.code, ConfigurationError.exit_code) == ("configuration", 3)
    assert (UpstreamTimeout.code, UpstreamTimeout.http_status, UpstreamTimeout.exit_code) == (
        "upstream_timeout",
        504,
        1,
    )


def test_a_proxy_error_header_names_its_http_status() -> None:
    class Teapot(ProxyError, code="teapot", http_status=418):
        pass

    class Cup(Teapot):
        pass

    assert (Teapot.code, Teapot.http_status, Cup.http_status) == ("teapot", 418, 418)
    assert ProxyError.http_status == 502
