"""What to do with one request and its 401: a sans-I/O generator shared by every HTTP-client bridge.

`auth_steps` yields steps and receives their results, like httpx's ``Auth.auth_flow``; it never fetches a
token, sends a request or reports a rejection itself, because those take locks and do I/O (STYLE.md §1).
The bridges only run the steps, the way httpx's ``Auth`` drives one ``auth_flow`` from both of its faces:
`signed` turns the flow into the bridge's HTTP library's terms once (sign this request, read that response,
record the outcome), and `keeper_driven` (sync) or `akeeper_driven` (async), a few lines each, run its keeper
steps with the face's keeper and hand every request to send out to the library.

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
import functools
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from grantkeeper._exceptions import ConfigurationError, GrantkeeperError, MalformedResponse
from grantkeeper._secrets import Secret
from grantkeeper.protocol.answers import access_token_ok
from grantkeeper.redact import scrub

if TYPE_CHECKING:
    from grantkeeper.engine import AsyncKeeper, Keeper

__all__ = [
    "OUTCOME_KEY",
    "Answer",
    "AuthOutcome",
    "FetchToken",
    "KeeperStep",
    "ReportRejected",
    "SendWith",
    "Steps",
    "advance",
    "akeeper_driven",
    "arun_steps_until_send",
    "auth_steps",
    "bearer",
    "checked_token",
    "keeper_as",
    "keeper_driven",
    "log_outcome",
    "scrubbing",
    "signed",
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

    Refresh answers are checked when they arrive (`grantkeeper.protocol.answers`); this catches a token stored
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


_T = TypeVar("_T")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_K = TypeVar("_K")

KeeperStep = FetchToken | ReportRejected
#: A bridge's flow in its HTTP library's terms: keeper steps, which the face's driver runs with its keeper, and
#: requests to send (`_T`), which the driver hands out, sending the response back in.
Steps = Generator[KeeperStep | _T, Any, None]


def advance(steps: Generator[_T, Any, object], reply: object) -> _T | None:
    """The next step of `steps` after sending it `reply`; None once it has ended."""
    try:
        return steps.send(reply)
    except StopIteration:
        return None


def signed(
    flow: Flow,
    sign: Callable[[str, _Resp | None], _Req],
    answer: Callable[[_Resp], Answer],
    finish: Callable[[AuthOutcome, _Resp | None], None],
) -> Steps[_Req]:
    """`flow` in an HTTP library's terms, for both of its faces.

    Each `SendWith` becomes ``sign(authorization, rejected)``, the request to send (`rejected` is the response
    it follows, None the first time), and the response sent back in becomes the flow's `Answer`; keeper steps
    pass through to the driver. When the flow ends, `finish` gets its outcome and the final response.
    """
    response: _Resp | None = None
    reply: object = None
    with contextlib.closing(flow):
        while not isinstance(step := _advance(flow, reply), AuthOutcome):
            if isinstance(step, SendWith):
                with scrubbing():
                    outgoing = sign(bearer(step), response)
                response = yield outgoing
                reply = answer(response)
            else:
                reply = yield step
    finish(step, response)


def keeper_driven(steps: Steps[_T], keeper: Keeper, grant: str) -> Generator[_T, Any, None]:
    """Drive `steps` with a sync keeper: its keeper steps run here, every other step goes out to the caller,
    and the caller's reply goes back in (the shape of httpx's ``sync_auth_flow``)."""
    reply: object = None
    with contextlib.closing(steps):
        while (step := advance(steps, reply)) is not None:
            if isinstance(step, FetchToken | ReportRejected):
                with scrubbing():
                    reply = _kept(grant, step, _keeper_call(keeper, grant, step)())
            else:
                reply = yield step


async def akeeper_driven(steps: Steps[_T], keeper: AsyncKeeper, grant: str) -> AsyncGenerator[_T, Any]:
    """`keeper_driven` with an asyncio keeper (the shape of httpx's ``async_auth_flow``)."""
    reply: object = None
    with contextlib.closing(steps):
        while (step := advance(steps, reply)) is not None:
            if isinstance(step, FetchToken | ReportRejected):
                with scrubbing():
                    reply = _kept(grant, step, await _keeper_call(keeper, grant, step)())
            else:
                reply = yield step


def _keeper_call(keeper: Keeper | AsyncKeeper, grant: str, step: KeeperStep) -> Callable[[], Any]:
    """The keeper method call that runs `step` (a coroutine function's for an `AsyncKeeper`)."""
    if isinstance(step, FetchToken):
        return functools.partial(keeper.access_token, grant)
    return functools.partial(keeper.report_rejected, grant, step.token.reveal())  # the keeper fingerprints it


def _kept(grant: str, step: KeeperStep, result: object) -> object:
    # A fetched token goes into a header next: check it here, for every face alike.
    return checked_token(grant, cast(str, result)) if isinstance(step, FetchToken) else result


def _advance(flow: Flow, reply: object) -> Step | AuthOutcome:
    try:
        return flow.send(reply)
    except StopIteration as stop:
        outcome: AuthOutcome = stop.value
        return outcome


async def arun_steps_until_send(
    flow: Flow,
    reply: object,
    fetch: Callable[[], Awaitable[str]],
    report: Callable[[str], Awaitable[object]],
) -> SendWith | AuthOutcome:
    """Run `flow`'s keeper steps with the two keeper calls as callables until it wants a request sent, or ends
    (the serve proxy gets the calls, not a keeper)."""
    step = _advance(flow, reply)
    while isinstance(step, FetchToken | ReportRejected):
        step = _advance(flow, await (fetch() if isinstance(step, FetchToken) else report(step.token.reveal())))
    return step


def keeper_as(keeper: object, expected: type[_K], bridge: str, why: str = "") -> _K:
    """`keeper` if it is the kind of keeper `bridge` can drive; else the `ConfigurationError` that says which."""
    if not isinstance(keeper, expected):
        raise wrong_keeper(bridge, expected.__name__ + why)
    return keeper


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
