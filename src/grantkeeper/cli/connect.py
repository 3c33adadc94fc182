"""``grantkeeper connect``: a new grant through the browser (authorization code + PKCE, loopback redirect), or
with ``--device`` through a code the user enters on any device (RFC 8628 device authorization grant)."""

from __future__ import annotations

import os
import sys
import webbrowser
from collections.abc import Callable
from urllib.parse import urlsplit

import click

from grantkeeper.cli._io import echo_json, json_option, open_keeper
from grantkeeper.cli._render import clean, grant_record
from grantkeeper.cli._session import Session
from grantkeeper.cli.completion import complete_provider
from grantkeeper.cli.providers import authorize_param
from grantkeeper.consent import DEFAULT_CONSENT_TIMEOUT, Connected, connect, connect_device
from grantkeeper.consent.device import DeviceAuthorization
from grantkeeper.consent.flow import AuthorizationRequest

__all__ = ["connect_command"]


@click.command("connect")
@click.argument("name")
@click.option("--provider", "provider_name", required=True, metavar="PROVIDER", shell_complete=complete_provider,
              help="The provider to consent at.")  # fmt: skip
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="A scope to request (repeatable) [default: the provider's profile's scopes].",
)
@click.option(
    "--device",
    is_flag=True,
    help="Use the device flow: show a code to enter at the provider's page on any device (phone, laptop). For "
    "machines without a browser; the provider needs a device authorization URL.",
)
@click.option("--no-browser", is_flag=True, help="Do not open a browser: print the URL and wait.")
@click.option(
    "--authorize-param",
    "authorize_params",
    multiple=True,
    metavar="NAME=VALUE",
    callback=authorize_param,
    help="Add a parameter to the authorization request, e.g. prompt=consent (repeatable; over the provider's).",
)
@click.option("--replace", is_flag=True, help="Replace grant NAME if it exists (its refresh token is dropped).")
@json_option("Print the connected grant as JSON (fingerprints, no token).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=None,
    metavar="SECONDS",
    help=f"How long to wait for the consent [default: {DEFAULT_CONSENT_TIMEOUT:g} for the browser; with --device, "
    "until the code expires, never longer].",
)
@click.pass_obj
def connect_command(session: Session, name: str, provider_name: str, scopes: tuple[str, ...], device: bool,
                    no_browser: bool, authorize_params: dict[str, str], replace: bool, timeout: float | None,
                    as_json: bool) -> None:  # fmt: skip
    """Connect grant NAME: log in and consent at PROVIDER, and keep the grant it issues.

    By default runs the authorization code flow with PKCE and a one-time redirect listener on 127.0.0.1: the
    provider needs an authorization URL (from its profile, 'provider discover', or --authorization-url) and a
    client that allows the redirect URI http://127.0.0.1/callback on any port (RFC 8252).

    With --device, prints a short user code and a URL instead: open the URL on any device, enter the code and
    approve; grantkeeper polls the provider until you do. The provider needs a device authorization URL ('provider
    discover', or --device-authorization-url). Either way the grant is stored as 'grant import' stores one, with
    the access token it came with. Prints no token.
    """
    scope = tuple(dict.fromkeys(s for arg in scopes for s in arg.split()))
    if device and authorize_params:
        raise click.UsageError("--authorize-param applies to the browser flow; the device flow sends none")
    with open_keeper(session) as keeper:
        if device:
            done = connect_device(keeper, name, provider=provider_name, scopes=scope, replace=replace,
                                  show=_device_shower(name, no_browser, timeout), timeout=timeout)  # fmt: skip
        else:
            waited = DEFAULT_CONSENT_TIMEOUT if timeout is None else timeout
            done = connect(keeper, name, provider=provider_name, scopes=scope, replace=replace, timeout=waited,
                           show=_browser_shower(name, no_browser, waited),
                           authorize_params=authorize_params)  # fmt: skip
    _report(done, as_json=as_json)


def _graphical_session() -> bool:
    """Whether a browser window can appear here. On Linux without a display, Python's `webbrowser` falls back to
    console browsers (lynx, w3m) that would take over this terminal, or hang with no terminal at all;
    $BROWSER is an explicit choice and is respected."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"))


def _open_browser(url: str) -> bool:
    """Open `url` in the user's browser; False when there is none to open here (the caller prints the URL)."""
    if not _graphical_session():
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def _browser_shower(name: str, no_browser: bool, timeout: float) -> Callable[[AuthorizationRequest], None]:
    def show(request: AuthorizationRequest) -> None:
        url = clean(request.url)
        if no_browser or not _open_browser(request.url):
            click.echo(f"Open this URL in a browser to connect grant {name}:\n\n    {url}\n", err=True)
            port = urlsplit(request.redirect_uri).port
            if os.environ.get("SSH_CONNECTION") and port is not None:
                # The provider sends the browser to 127.0.0.1 of the machine the browser runs on, not this one.
                click.echo(f"Over SSH, forward the redirect first (ssh -L {port}:127.0.0.1:{port} this host), or "
                           "run 'grantkeeper connect --device' instead.", err=True)  # fmt: skip
        else:
            click.echo(f"Opened the browser to connect grant {name}; if it did not appear, open:\n\n    "
                       f"{url}\n", err=True)  # fmt: skip
        click.echo(f"Waiting up to {timeout:g}s for the redirect to {request.redirect_uri} ...", err=True)

    return show


def _device_shower(name: str, no_browser: bool, timeout: float | None) -> Callable[[DeviceAuthorization], None]:
    def show(authorization: DeviceAuthorization) -> None:
        # The user code and the URLs are meant for the user's eyes; the device code never leaves the process.
        # All three come from the provider's answer: cleaned of control characters before they reach a terminal.
        click.echo(
            f"To connect grant {name}, open this URL on any device and enter the code below:\n\n"
            f"    {clean(authorization.verification_uri)}\n\n    code: {clean(authorization.user_code)}\n",
            err=True,
        )
        if authorization.verification_uri_complete is not None:
            click.echo("Or open this URL, which carries the code:\n\n    "
                       f"{clean(authorization.verification_uri_complete)}\n", err=True)  # fmt: skip
        target = authorization.verification_uri_complete or authorization.verification_uri
        if not no_browser and _open_browser(target):
            click.echo("Opened the browser at that page.", err=True)
        waited = authorization.expires_in if timeout is None else min(timeout, authorization.expires_in)
        click.echo(f"Waiting up to {waited:g}s for the approval (polling every {authorization.interval:g}s; Ctrl-C "
                   "stops) ...", err=True)  # fmt: skip

    return show


def _report(done: Connected, *, as_json: bool) -> None:
    grant = done.grant
    if as_json:  # the URL, the code and the progress went to stderr: stdout holds only this
        echo_json({**grant_record(grant), "replaced": done.replaced})
        return
    click.echo(
        f"grant {grant.name} {'replaced' if done.replaced else 'connected'}: provider {grant.provider}, "
        f"scopes {' '.join(grant.scopes) or '-'}, refresh token {grant.refresh_fp}"
    )
