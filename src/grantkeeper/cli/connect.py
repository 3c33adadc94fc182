"""``grantkeeper connect``: a new grant through the browser (authorization code + PKCE, loopback redirect)."""

from __future__ import annotations

import webbrowser

import click

from grantkeeper.cli._io import open_keeper
from grantkeeper.cli._session import Session
from grantkeeper.consent import DEFAULT_CONSENT_TIMEOUT, connect
from grantkeeper.consent.flow import AuthorizationRequest

__all__ = ["connect_command"]


@click.command("connect")
@click.argument("name")
@click.option("--provider", "provider_name", required=True, metavar="PROVIDER", help="The provider to consent at.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="A scope to request (repeatable) [default: the provider's profile's scopes].",
)
@click.option("--no-browser", is_flag=True, help="Do not open a browser: print the URL and wait for the redirect.")
@click.option("--replace", is_flag=True, help="Replace grant NAME if it exists (its refresh token is dropped).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_CONSENT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the browser to come back.",
)
@click.pass_obj
def connect_command(session: Session, name: str, provider_name: str, scopes: tuple[str, ...], no_browser: bool,
                    replace: bool, timeout: float) -> None:  # fmt: skip
    """Connect grant NAME: log in and consent at PROVIDER in a browser, and keep the grant it issues.

    Runs the authorization code flow with PKCE and a one-time redirect listener on 127.0.0.1. The provider
    needs an authorization URL (from its profile, 'provider discover', or --authorization-url) and a client
    that allows the redirect URI http://127.0.0.1/callback on any port (RFC 8252). Prints no token.
    """
    scope = tuple(dict.fromkeys(s for arg in scopes for s in arg.split()))

    def show(request: AuthorizationRequest) -> None:
        if no_browser or not webbrowser.open(request.url):
            click.echo(f"Open this URL in a browser to connect grant {name}:\n\n    {request.url}\n", err=True)
        else:
            click.echo(f"Opened the browser to connect grant {name}; if it did not appear, open:\n\n    "
                       f"{request.url}\n", err=True)  # fmt: skip
        click.echo(f"Waiting up to {timeout:g}s for the redirect to {request.redirect_uri} ...", err=True)

    with open_keeper(session) as keeper:
        done = connect(keeper, name, provider=provider_name, scopes=scope, replace=replace, timeout=timeout,
                       show=show)  # fmt: skip
    grant = done.grant
    click.echo(
        f"grant {grant.name} {'replaced' if done.replaced else 'connected'}: provider {grant.provider}, "
        f"scopes {' '.join(grant.scopes) or '-'}, refresh token {grant.refresh_fp}"
    )
