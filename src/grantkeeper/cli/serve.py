"""``grantkeeper serve``: run the HTTP token broker in the foreground (docs/serve.md)."""

from __future__ import annotations

import os

import click

from grantkeeper.cli._session import Session
from grantkeeper.serve.config import DEFAULT_PORT

__all__ = ["serve"]


@click.command()
@click.option("--host", help="TCP address to listen on [default: 127.0.0.1]. Any other than loopback needs "
              "--tls-cert/--tls-key or --behind-proxy.")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), help=f"TCP port [default: {DEFAULT_PORT}; 0: any free one].")
@click.option("--unix", "unix", metavar="PATH", help="Also listen on a Unix socket (mode 0660) for sidecars: "
              "its file permissions are the access control, no API key needed.")  # fmt: skip
@click.option("--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="A grantkeeper.toml (settings in docs/serve.md); GRANTKEEPER_* variables override it.")  # fmt: skip
@click.option("--tls-cert", metavar="FILE", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", metavar="FILE", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--behind-proxy", is_flag=True, default=None,
              help="A TLS-terminating proxy is the only way in: allow a non-loopback --host without TLS.")  # fmt: skip
@click.option("--public-url", metavar="URL", help="Where end users' browsers reach this service, e.g. "
              "https://gk.example.com: turns hosted connect on (redirect URI: URL/oauth/callback).")  # fmt: skip
@click.option("--connect-ttl", type=click.FloatRange(10, 86400), metavar="SECONDS",
              help="How long a hosted connect URL stays valid [default: 600].")  # fmt: skip
@click.pass_obj
def serve(session: Session, host: str | None, port: int | None, unix: str | None, config_file: str | None,
          tls_cert: str | None, tls_key: str | None, behind_proxy: bool | None, public_url: str | None,
          connect_ttl: float | None) -> None:  # fmt: skip
    """Serve access tokens over HTTP to callers with an API key ('grantkeeper apikey create').

    Runs in the foreground until SIGTERM or SIGINT, then finishes the requests in flight and closes the store.
    Logs are JSON lines on standard error. Needs the 'serve' extra: pip install 'grantkeeper[serve]'.
    """
    from grantkeeper.serve import require_extra

    require_extra()
    from grantkeeper.admin import STORE_ENV, default_store_url
    from grantkeeper.serve.config import load_config
    from grantkeeper.serve.eventloop import run as run_on_loop
    from grantkeeper.serve.runner import run

    config = load_config(config_file, host=host, port=port, unix=unix, tls_cert=tls_cert, tls_key=tls_key,
                         behind_proxy=behind_proxy, public_url=public_url, connect_ttl=connect_ttl)  # fmt: skip
    # --store, then $GRANTKEEPER_STORE, then the config file, then the default store.
    url = session.store_url or os.environ.get(STORE_ENV) or config.store_url or default_store_url()
    run_on_loop(run(config, store_url=url), loop=config.loop)
