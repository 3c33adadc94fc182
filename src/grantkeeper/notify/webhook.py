"""Deliver events to an HTTP endpoint: JSON, signed with HMAC-SHA256, retried with backoff, off the caller's path.

The request::

    POST <url>
    Content-Type: application/json
    Grantkeeper-Event: needs_reauth
    Grantkeeper-Delivery: <event id>            (the same on every retry: deduplicate on it)
    Grantkeeper-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body with the shared secret, compares in
constant time (`verify_signature`) and rejects old timestamps to stop replays. A 2xx ends delivery; anything
else (or no answer) is retried with exponential backoff up to `max_tries`; then the event is logged as
undelivered. Delivery runs on one background thread so a refresh never waits for a webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time

import httpx

from grantkeeper._exceptions import ConfigurationError
from grantkeeper._secrets import Secret
from grantkeeper.notify.events import GrantEvent

__all__ = ["Webhook", "sign", "verify_signature"]

logger = logging.getLogger("grantkeeper")


def sign(secret: Secret, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.reveal().encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: Secret, body: bytes, header: str, *, now: float, tolerance: float = 300.0) -> bool:
    """Check a ``Grantkeeper-Signature`` header (for receivers, and the tests)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), f"t={timestamp},v1={parts.get('v1', '')}")


class Webhook:
    """An event sink that POSTs each event to `url` (register with ``keeper.on_event(webhook)``)."""

    def __init__(
        self, url: str, *, secret: Secret | str, max_tries: int = 5, backoff: float = 1.0, timeout: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:  # fmt: skip
        if not url.startswith(("https://", "http://")):
            raise ConfigurationError("webhook URL must start with https:// (or http:// for loopback testing)")
        if max_tries < 1 or backoff < 0 or timeout <= 0:
            raise ConfigurationError("webhook max_tries must be >= 1, backoff >= 0 and timeout > 0")
        self.url = url
        # Webhook URLs often carry a credential in the path (Slack, Teams): logs and repr show only the host.
        try:
            parts = httpx.URL(url)
        except (httpx.InvalidURL, UnicodeError):
            parts = None
        if parts is None or not parts.host:
            raise ConfigurationError(
                "the webhook URL is not a valid http(s) URL with a host; check $GRANTKEEPER_WEBHOOK_URL"
            )
        self._where = f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port else "")
        self._secret = secret if isinstance(secret, Secret) else Secret(secret)
        if not self._secret.reveal():
            raise ConfigurationError("webhook secret must not be empty: receivers verify the signature with it")
        self.max_tries, self.backoff, self.timeout = max_tries, backoff, timeout
        self._client = client
        self._queue: queue.Queue[GrantEvent | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.delivered = 0
        self.undelivered = 0

    @classmethod
    def from_env(cls) -> Webhook | None:
        """The webhook $GRANTKEEPER_WEBHOOK_URL names, signed with $GRANTKEEPER_WEBHOOK_SECRET; None if unset."""
        url = os.environ.get("GRANTKEEPER_WEBHOOK_URL")
        if not url:
            return None
        secret = os.environ.get("GRANTKEEPER_WEBHOOK_SECRET", "")
        if not secret:
            raise ConfigurationError(
                "$GRANTKEEPER_WEBHOOK_URL is set but $GRANTKEEPER_WEBHOOK_SECRET is not: set the shared secret "
                "the receiver verifies signatures with"
            )
        return cls(url, secret=Secret(secret))

    def __repr__(self) -> str:
        return f"Webhook({self._where!r})"

    def __call__(self, event: GrantEvent) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="grantkeeper-webhook", daemon=True)
                self._thread.start()
        self._queue.put(event)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (waiting at most `timeout` seconds), then stop the delivery thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            self._stop.set()  # retries still waiting: give up on them
            thread.join(self.timeout + 1)

    def _run(self) -> None:
        client = self._client or httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False)
        try:
            while (event := self._queue.get()) is not None:
                self._deliver(client, event)
        finally:
            if self._client is None:
                client.close()

    def _deliver(self, client: httpx.Client, event: GrantEvent) -> None:
        body = json.dumps(event.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        problem = ""
        for attempt in range(1, self.max_tries + 1):
            headers = {
                "Content-Type": "application/json", "Grantkeeper-Event": event.kind, "Grantkeeper-Delivery": event.id,
                "Grantkeeper-Signature": sign(self._secret, body, int(time.time())), "User-Agent": "grantkeeper",
            }  # fmt: skip
            try:
                status = client.post(self.url, content=body, headers=headers).status_code
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                problem = f"HTTP {status}"
            except Exception as exc:  # any failure (DNS label too long, ...) must not kill the delivery thread
                problem = type(exc).__name__
            if attempt < self.max_tries and self._stop.wait(self.backoff * 2 ** (attempt - 1)):
                break
        self.undelivered += 1
        logger.error("webhook %s: event %s (%s, grant %r) not delivered after %d tries: %s", self._where, event.id,
                     event.kind, event.grant, self.max_tries, problem)  # fmt: skip
