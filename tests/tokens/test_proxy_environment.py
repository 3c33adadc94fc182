"""`proxy_for` reads the proxy variables by name; it must choose exactly what urllib's environment scan chooses
(the rules requests and httpx follow too): lower case wins, an empty lower-case variable means none, HTTP_PROXY
is ignored under CGI, ALL_PROXY is the fallback, NO_PROXY bypasses."""

from __future__ import annotations

import os
import urllib.request
from unittest import mock

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper.tokens.transport import Network, proxy_for

NAMES = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
         "NO_PROXY", "REQUEST_METHOD"]  # fmt: skip
VALUES = st.sampled_from(["", "http://p1:3128", "http://p2:8080", "auth.example.com", "*", ".example.com",
                          "127.0.0.1", "other.test"])  # fmt: skip


def _urllib_choice(url: httpx.URL) -> str | None:
    found = urllib.request.getproxies_environment()
    chosen = found.get(url.scheme) or found.get("all")
    if not chosen or urllib.request.proxy_bypass_environment(url.host, found):  # type: ignore[attr-defined]
        return None
    return chosen


@settings(max_examples=400, deadline=None)
@given(env=st.dictionaries(st.sampled_from(NAMES), VALUES),
       url=st.sampled_from(["https://auth.example.com/token", "http://auth.example.com/token",
                            "http://127.0.0.1:8080/token", "https://other.test/oauth/token"]))  # fmt: skip
def test_proxy_for_chooses_what_urllib_chooses(env: dict[str, str], url: str) -> None:
    kept = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "REQUEST_METHOD"}
    with mock.patch.dict(os.environ, {**kept, **env}, clear=True):
        target = httpx.URL(url)
        assert proxy_for(target, Network()) == _urllib_choice(target), env


def test_the_providers_own_proxy_wins_over_the_environment() -> None:
    with mock.patch.dict(os.environ, {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}):
        assert proxy_for(httpx.URL("https://a.test/t"), Network(proxy="http://own:2")) == "http://own:2"
