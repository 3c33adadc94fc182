"""The proxy's upstream client: an ``aiohttp.ClientSession`` per provider network and API origin.

aiohttp rather than httpx: the proxy hop is a server-side relay on the request path, and on this kind of machine
one ``httpx.AsyncClient`` request cost about 1 ms of CPU (httpx's models, then httpcore's pool and its locks)
where an ``aiohttp.ClientSession`` request costs a fraction of that (C HTTP parser, a simpler pool); the
benchmark's relay rows measure both side by side (benchmarks/bench_serve.py). Token requests keep httpx
(`grantkeeper.tokens.transport`): they are rare and need its trace hooks.

The session trusts and proxies as token requests do (`transport`'s CA choice and proxy choice), keeps no cookie
jar (one session serves every caller of the provider, so a cookie the API set for one caller must not ride along
on the next caller's exchange), does not decompress (bodies are passed on raw, with their Content-Encoding) and
follows no redirect itself (`grantkeeper.serve.proxy` decides). aiohttp sets TCP_NODELAY on its connections.
"""

from __future__ import annotations

import aiohttp
import httpx

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.tokens.transport import Network, proxy_for, tls_context, trust_of

__all__ = ["MAX_CONNECTIONS", "api_session"]

MAX_CONNECTIONS = 200
_PROXY_SCHEMES = ("http", "https")


def api_session(network: Network, base_url: str) -> aiohttp.ClientSession:
    """A keep-alive session for the API at `base_url`; call from the event loop that will use it."""
    source, cafile, capath = trust_of(network)
    proxy = proxy_for(httpx.URL(base_url), network)
    if proxy is not None and httpx.URL(proxy).scheme not in _PROXY_SCHEMES:
        raise ConfigurationError(
            f"the proxy {httpx.URL(proxy).scheme}://... of this provider cannot be used by the service's proxy route "
            "(HTTP and HTTPS proxies only); give the provider an HTTP proxy ('grantkeeper provider add NAME "
            "--proxy http://HOST:PORT') or unset it"
        )
    connector = aiohttp.TCPConnector(ssl=tls_context(source, cafile, capath), limit=MAX_CONNECTIONS,
                                     limit_per_host=0, keepalive_timeout=30.0)  # fmt: skip
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False,
        proxy=proxy, timeout=aiohttp.ClientTimeout(total=None), raise_for_status=False,
    )  # fmt: skip
