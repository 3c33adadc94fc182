"""What to do with one request and its 401: a sans-I/O generator shared by every HTTP-client bridge.

`auth_steps` yields steps and receives their results, like httpx's ``Auth.auth_flow``; it never fetches a
token, sends a request or reports a rejection itself, because those take locks and do I/O (STYLE.md §1).
The bridges only run the steps: `run_until_send` (sync) and `arun_until_send` (async) execute the keeper
steps and hand back the next request to send, or the flow's outcome.

The flow: attach the grant's access token; if the resource server rejects that token (a 401 whose
``WWW-Authenticate`` says ``invalid_token``, or any 401 when configured), report that exact token to the
keeper, which invalidates it everywhere only if the grant's generation has not moved on, and send the request
once more with a fresh token. A body that cannot be replayed is never re-sent; a second rejection is final.

Every token a bridge puts into a header passes `checked_token` (RFC 6750-safe characters only), and every error
that leaves a bridge's own code goes through `scrubbing` (the redaction rules), so neither an injected header
nor a library message quoting a token can come out of a bridge.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grantkeeper._exceptions import ConfigurationError, GrantkeeperError, MalformedResponse
from grantkeeper._secrets import Secret
from grantkeeper.redact import scrub
from grantkeeper.tokens.response import access_token_ok

if TYPE_CHECKING:
    from grantkeeper.engine import AsyncKeeper, Keeper

__all__ = [
    "OUTCOME_KEY",
    "Answer",
    "AuthOutcome",
    "FetchToken",
    "ReportRejected",
    "SendWith",
    "arun_steps_until_send",
    "arun_until_send",
    "auth_steps",
    "bearer",
    "checked_token",
    "log_outcome",
    "run_until_send",
    "scrubbing",
]

logger = logging.getLogger("grantkeeper.integrations")

#: Where the bridges record the outcome on a response (httpx ``response.extensions``; an attribute on requests').
OUTCOME_KEY = "grantkeeper_auth"

# RFC 6750 §3: a Bearer challenge whose error parameter is invalid_token ("expired, revoked, malformed, or
# invalid for other reasons"). Other errors (insufficient_scope, invalid_request) are not cured by a new token.
_INVALID_TOKEN = re.compile(r'\berror\s*=\s*"?invalid_token"?', re.IGNORECASE)


class AuthOutcome(enum.Enum):
    """How the flow ended; recorded on the final response under `OUTCOME_KEY`."""

    SENT = "sent"  # the first answer was final (not a token rejection)
    RETRIED = "retried"  # the token was rejected, reported, and the request re-sent once with a fresh token
    REJECTED_AGAIN = "rejected_again"  # the re-sent request was rejected too; not retried again
    NOT_REPLAYABLE = "not_replayable"  # rejected and reported, but the body was a consumed stream: the 401 is final
    NO_FRESH_TOKEN = "no_fresh_token"  # rejected, reported, but the keeper had no other token to offer


@dataclass(frozen=True, slots=True)
class FetchToken:
    """Ask the keeper for the grant's access token (it may refresh: locks and I/O). Reply: the token, a str."""


@dataclass(frozen=True, slots=True)
class SendWith:
    """Send the request with this bearer token. Reply: an `Answer`."""

    token: Secret


@dataclass(frozen=True, slots=True)
class ReportRejected:
    """Tell the keeper the resource server rejected this token. Reply: ignored."""

    token: Secret


@dataclass(frozen=True, slots=True)
class Answer:
    """What the flow needs to know about a response: its status and its ``WWW-Authenticate`` challenges."""

    status: int
    challenges: tuple[str, ...] = ()

    @classmethod
    def of(cls, status: int, challenges: Iterable[str]) -> Answer:
        return cls(status, tuple(challenges))

    def rejects_token(self, *, any_401: bool) -> bool:
        if self.status != 401:
            return False
        return any_401 or any(_INVALID_TOKEN.search(c) for c in self.challenges)


Step = FetchToken | SendWith | ReportRejected
Flow = Generator[Step, Any, AuthOutcome]


def auth_steps(*, replayable: bool, any_401: bool) -> Flow:
    """The decisions for one request. `replayable`: can the request body be sent a second time?"""
    token = Secret((yield FetchToken()))
    answer: Answer = yield SendWith(token)
    if not answer.rejects_token(any_401=any_401):
        return AuthOutcome.SENT
    yield ReportRejected(token)  # even when not re-sending: the caller's next request gets a fresh token
    if not replayable:
        return AuthOutcome.NOT_REPLAYABLE
    fresh = Secret((yield FetchToken()))
    if fresh == token:  # nothing newer to try: sending the same token again would only repeat the 401
        return AuthOutcome.NO_FRESH_TOKEN
    answer = yield SendWith(fresh)
    return AuthOutcome.REJECTED_AGAIN if answer.rejects_token(any_401=any_401) else AuthOutcome.RETRIED


def bearer(step: SendWith) -> str:
    """The Authorization header value for `step` (the one place the token is revealed, to go on the wire)."""
    return f"Bearer {step.token.reveal()}"


def checked_token(grant: str, token: str) -> str:
    """`token` if it may go into an Authorization header; else a `MalformedResponse` that does not quote it.

    Refresh answers are checked when they arrive (`grantkeeper.tokens.response`); this catches a token stored
    before that check existed, so a CR/LF can never inject a header and the HTTP library never gets to quote it.
    """
    if access_token_ok(token):
        return token
    raise MalformedResponse(
        f"grant {grant!r}: its stored access token contains characters that may not go into an Authorization "
        "header (control characters, spaces or non-ASCII), so it was not sent. It was stored before grantkeeper "
        f"checked token syntax: run 'grantkeeper refresh {grant} --force' to replace it",
        grant=grant,
    )


@contextlib.contextmanager
def scrubbing() -> Iterator[None]:
    """Let no error leave a bridge carrying a token: a foreign exception's arguments (an HTTP library quoting a
    header, say) are scrubbed in place, so its type, which callers may catch, is kept."""
    try:
        yield
    except GrantkeeperError:
        raise  # our messages never hold a token
    except Exception as exc:
        exc.args = tuple(scrub(arg) if isinstance(arg, str | bytes) else arg for arg in exc.args)
        raise


def _advance(flow: Flow, reply: object) -> Step | AuthOutcome:
    try:
        return flow.send(reply)
    except StopIteration as stop:
        outcome: AuthOutcome = stop.value
        return outcome


def run_until_send(flow: Flow, reply: object, keeper: Keeper, grant: str) -> SendWith | AuthOutcome:
    """Run keeper steps with a sync keeper until the flow wants a request sent, or ends."""
    step = _advance(flow, reply)
    while isinstance(step, FetchToken | ReportRejected):
        fetch = isinstance(step, FetchToken)
        reply = (
            checked_token(grant, keeper.access_token(grant)) if fetch else keeper.report_rejected(grant, _token(step))
        )
        step = _advance(flow, reply)
    return step


async def arun_until_send(flow: Flow, reply: object, keeper: AsyncKeeper, grant: str) -> SendWith | AuthOutcome:
    """`run_until_send` with an asyncio keeper."""

    async def fetch() -> str:
        return checked_token(grant, await keeper.access_token(grant))

    return await arun_steps_until_send(flow, reply, fetch, lambda token: keeper.report_rejected(grant, token))


async def arun_steps_until_send(
    flow: Flow,
    reply: object,
    fetch: Callable[[], Awaitable[str]],
    report: Callable[[str], Awaitable[object]],
) -> SendWith | AuthOutcome:
    """`arun_until_send` with the two keeper steps as callables (the serve proxy gets them, not a keeper)."""
    step = _advance(flow, reply)
    while isinstance(step, FetchToken | ReportRejected):
        step = _advance(flow, await (fetch() if isinstance(step, FetchToken) else report(_token(step))))
    return step


def _token(step: Step) -> str:
    assert isinstance(step, ReportRejected)
    return step.token.reveal()  # to the keeper, which fingerprints it


def log_outcome(grant: str, outcome: AuthOutcome, method: str, url: str) -> None:
    """Say why a rejected request was (not) retried; names and the URL without its credentials or query."""
    if outcome is AuthOutcome.SENT:
        return
    where = url.split("?", 1)[0]
    scheme, sep, rest = where.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:  # https://user:password@host/...
        where = f"{scheme}://{rest.split('@', 1)[1]}"
    evidence = {"grant": grant, "auth_outcome": outcome.value}
    if outcome is AuthOutcome.RETRIED:
        logger.info("grant %r: %s %s rejected the access token; re-sent once with a fresh one", grant, method,
                    where, extra={"grantkeeper": evidence})  # fmt: skip
    elif outcome is AuthOutcome.NOT_REPLAYABLE:
        logger.warning("grant %r: %s %s rejected the access token (401) and was NOT re-sent: its body is a stream "
                       "that cannot be replayed; the token was reported, so sending it again gets a fresh one",
                       grant, method, where, extra={"grantkeeper": evidence})  # fmt: skip
    else:
        logger.warning("grant %r: %s %s rejected the access token again after one retry with a fresh token (%s); "
                       "not retrying further: check the token's audience and scope for this resource",
                       grant, method, where, outcome.value, extra={"grantkeeper": evidence})  # fmt: skip


def wrong_keeper(bridge: str, expected: str) -> ConfigurationError:
    return ConfigurationError(f"{bridge} needs a grantkeeper {expected} for this client; pass one")
