"""A scripted browser: obtain a grant from DOT the way a person does, through its real pages.

`authorize(server)` opens DOT's authorization endpoint with PKCE (S256) and a ``state``, is sent to the login
page, logs in, submits the consent form ("Authorize"), follows DOT's redirect to a loopback listener on an
ephemeral port (RFC 8252, section 7.3), checks ``state`` there and exchanges the code at /o/token/ with the
code verifier. Everything goes through httpx with a cookie jar, like a browser session. `consent` is the
person's part alone (log in, press "Authorize", get the redirect), for flows whose client runs the listener.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

from tests.dot_server import DotServer


@dataclass(frozen=True)
class AuthorizedGrant:
    """What the code exchange returned."""

    access_token: str
    refresh_token: str
    expires_in: int
    scope: str


class _Forms(HTMLParser):
    """The named inputs of each <form> on a page, by form id (submit buttons included, as a browser sees them)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, str]] = {}
        self._current: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = self.forms.setdefault(a.get("id", f"form{len(self.forms)}"), {})
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def form_fields(html: str, form_id: str) -> dict[str, str]:
    parser = _Forms()
    parser.feed(html)
    if form_id not in parser.forms:
        raise AssertionError(f"no form {form_id!r} on the page; forms: {sorted(parser.forms)}")
    return parser.forms[form_id]


class LoopbackListener:
    """A one-request HTTP listener on 127.0.0.1 and an ephemeral port: where the authorization server sends the
    browser back. It records the query of the first request to /callback and answers with a short page."""

    def __init__(self) -> None:
        self.query: dict[str, list[str]] | None = None
        received = threading.Event()
        self.received = received
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/callback" or received.is_set():
                    self.send_error(404)
                    return
                listener.query = parse_qs(parts.query)
                received.set()
                body = b"<p>Authorization received; you can close this tab.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the query holds an authorization code: keep it out of stderr

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-listener", daemon=True)

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/callback"

    def __enter__(self) -> LoopbackListener:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _expect_redirect(response: httpx.Response, what: str) -> str:
    if response.status_code != 302:
        raise AssertionError(f"{what}: expected a redirect, got HTTP {response.status_code}")
    return urljoin(str(response.url), response.headers["Location"])


def _log_in(browser: httpx.Client, server: DotServer, url: str, what: str) -> str:
    """Open `url`, which sends a browser without a session to DOT's login page; log in there and return the URL
    the login form sends the browser back to."""
    login_url = _expect_redirect(browser.get(url), what)
    login = form_fields(browser.get(login_url).text, "login-form")
    login.update(username=server.accounts.username, password=server.accounts.password)
    return _expect_redirect(browser.post(login_url, data=login), "login form")


def enter_user_code(
    browser: httpx.Client, server: DotServer, verification_uri: str, user_code: str, *, allow: bool = True
) -> httpx.Response:
    """The device flow's person (RFC 8628 §3.3): open `verification_uri`, log in, type `user_code` into DOT's
    form, then press Accept (or Deny) on the confirmation page. Returns the grant status page DOT ends on."""
    code_url = _log_in(browser, server, verification_uri, "device page before login")
    fields = form_fields(browser.get(code_url).text, "form0")  # DOT's user-code form has no id
    fields["user_code"] = user_code
    confirm_url = _expect_redirect(browser.post(code_url, data=fields), "user code form")
    confirm = form_fields(browser.get(confirm_url).text, "form0")
    confirm["action"] = "accept" if allow else "deny"
    status_url = _expect_redirect(browser.post(confirm_url, data=confirm), "device confirmation form")
    return browser.get(status_url)


def consent(browser: httpx.Client, server: DotServer, authorization_url: str, *, allow: bool = True) -> str:
    """Open `authorization_url` (DOT's /o/authorize/ with its query), log in when DOT asks, press "Authorize" on
    the consent page (or "Cancel" when not `allow`), and return the URL DOT redirects to (the client's
    redirect URI with ``code`` and ``state``, or ``error=access_denied``). The caller follows it: to its own
    listener here, to grantkeeper's for ``connect``."""
    consent_url = _log_in(browser, server, authorization_url, "authorization endpoint before login")
    consent_page = browser.get(consent_url)
    if consent_page.status_code != 200:
        raise AssertionError(f"consent page: HTTP {consent_page.status_code}")
    fields = form_fields(consent_page.text, "authorizationForm")
    if allow:
        fields["allow"] = "Authorize"
    else:
        fields.pop("allow", None)
    return _expect_redirect(browser.post(consent_url, data=fields), "consent form")


def authorize(server: DotServer, *, scope: str = "read write") -> AuthorizedGrant:
    """Log in, consent and exchange the code; returns the tokens DOT issued for this new grant."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    with LoopbackListener() as listener, httpx.Client(timeout=30, follow_redirects=False) as browser:
        query = {
            "response_type": "code", "client_id": server.accounts.client_id, "redirect_uri": listener.redirect_uri,
            "scope": scope, "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
        }  # fmt: skip
        callback = consent(browser, server, f"{server.authorize_url}?{urlencode(query)}")
        if not callback.startswith(listener.redirect_uri + "?"):
            raise AssertionError("DOT redirected somewhere other than the loopback listener")
        landing = browser.get(callback)
        if landing.status_code != 200 or not listener.received.wait(10):
            raise AssertionError("the loopback listener did not receive the redirect")
        received = listener.query or {}
        if received.get("state") != [state]:
            raise AssertionError("state returned to the redirect URI does not match the one sent")
        if "code" not in received:
            raise AssertionError(f"no code in the redirect; error: {received.get('error')}")
        exchange = browser.post(
            server.token_url,
            data={"grant_type": "authorization_code", "code": received["code"][0],
                  "redirect_uri": listener.redirect_uri, "code_verifier": verifier},
            auth=server.client_auth,
        )  # fmt: skip
    if exchange.status_code != 200:
        raise AssertionError(f"code exchange: HTTP {exchange.status_code} {exchange.json().get('error')}")
    body = exchange.json()
    return AuthorizedGrant(body["access_token"], body["refresh_token"], int(body["expires_in"]), body["scope"])
