"""Run the broker in the foreground: open the keeper, bind the listeners, serve until SIGTERM or SIGINT.

One process per instance. The TCP listener (TLS when configured) and the Unix listener are two uvicorn servers on
one event loop over one application; the runner binds their sockets itself (so port 0 works, and the Unix socket
is created with mode 0660 from the start) and owns the signal handling, so one SIGTERM stops both. Shutdown:
``/readyz`` turns 503, both listeners stop accepting, requests in flight (refreshes included) finish within
``shutdown_timeout``, the audit trail is flushed, then the keeper and its store are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from grantkeeper._exceptions import ConfigurationError
from grantkeeper._secrets import Secret
from grantkeeper.engine.scheduler import SchedulerOptions
from grantkeeper.keepers import AsyncKeeper
from grantkeeper.notify import EventSink, Webhook
from grantkeeper.serve.app import create_app
from grantkeeper.serve.audit import AuditTrail
from grantkeeper.serve.auth import LISTENER_KEY, UNIX_CALLER, Authenticator, Caller
from grantkeeper.serve.broker import Broker, Heartbeat
from grantkeeper.serve.config import ServeConfig
from grantkeeper.serve.connect_sessions import ConnectSettings
from grantkeeper.serve.logs import configure_logging, get_logger
from grantkeeper.serve.metrics import ServeMetrics
from grantkeeper.serve.ratelimit import RateLimiter
from grantkeeper.serve.scheduling import SchedulerCollector, running_scheduler, scheduler_options
from grantkeeper.stores import SQLStore, backend, open_store

__all__ = ["build_broker", "run"]

UNIX_MODE = 0o660


class _Listener(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the runner handles the signals, once for every listener


class _Tagged:
    """Marks each request with the listener it came in on (`LISTENER_KEY`), for `Authenticator`."""

    def __init__(self, app: Any, listener: str) -> None:
        self.app, self.listener = app, listener

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[LISTENER_KEY] = self.listener
        await self.app(scope, receive, send)


def build_broker(keeper: AsyncKeeper, config: ServeConfig, *, store_url: str,
                 webhooks: tuple[Webhook, ...] = ()) -> Broker:  # fmt: skip
    store = keeper.store
    if not isinstance(store, SQLStore):
        raise ConfigurationError(
            "grantkeeper serve needs its keeper on the blocking SQL store: open it with threads=True"
        )
    metrics = ServeMetrics(store, webhooks=webhooks)
    keeper.on_event(metrics.on_grant_event)
    unix = Caller(UNIX_CALLER, config.unix_grants, frozenset(config.unix_scopes)) if config.unix else None
    auth = Authenticator(store, RateLimiter(config.rate, config.burst), unix=unix)
    return Broker(keeper, store=store, backend=backend(store_url), auth=auth, audit=AuditTrail(store), metrics=metrics)


def _unix_socket(path: str) -> socket.socket:
    where = Path(path)
    if where.exists() or where.is_symlink():
        if not stat.S_ISSOCK(where.lstat().st_mode):
            raise ConfigurationError(f"--unix {path!r} exists and is not a socket; choose another path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                where.unlink()  # a socket nobody listens on: left behind by a killed instance
            else:
                raise ConfigurationError(f"--unix {path!r} is in use by another running process")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~UNIX_MODE)  # created with mode 0660, never briefly wider
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot create the Unix socket {path!r}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, UNIX_MODE)
    return sock


def _tcp_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP spelled out: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose proto says
    # TCP, and socket.create_server leaves it 0; with Nagle on, every answer waited ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _webhooks(config: ServeConfig) -> tuple[Webhook, ...]:
    if config.webhook_url is not None:
        assert config.webhook_secret is not None  # ServeConfig.check
        return (Webhook(config.webhook_url, secret=Secret(config.webhook_secret)),)
    hook = Webhook.from_env()
    return (hook,) if hook is not None else ()


async def _start_scheduler(
    stack: contextlib.AsyncExitStack, broker: Broker, options: SchedulerOptions, webhooks: tuple[Webhook, ...]
) -> None:
    """The refresh scheduler beside the listeners: its heartbeat in ``/readyz``, its counters in ``/metrics``,
    and every token handed out keeps its grant hot."""
    heartbeat = Heartbeat(max_age=max(60.0, 10 * options.tick))
    sinks: list[EventSink] = [*webhooks, broker.metrics.on_grant_event]
    scheduler = await stack.enter_async_context(
        running_scheduler(broker.store, options, on_event=sinks, on_round=heartbeat.beat)
    )
    broker.add_check("scheduler", heartbeat.check)
    broker.on_token = scheduler.note_used
    broker.metrics.registry.register(SchedulerCollector(scheduler))


async def run(config: ServeConfig, *, store_url: str) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully (see the module docstring)."""
    configure_logging(config.log_level)
    log = get_logger()
    webhooks = _webhooks(config)
    sockets = [("tcp", _tcp_socket(config.host, config.port))]
    if config.unix is not None:
        sockets.append(("unix", _unix_socket(config.unix)))
    # The blocking SQL store in worker threads: the broker also reads API keys, the audit trail and metrics from it.
    keeper = await AsyncKeeper.open(store_url, create=False, threads=True, on_event=webhooks)
    broker = build_broker(keeper, config, store_url=store_url, webhooks=webhooks)
    scheduling = scheduler_options(config.scheduler)
    app = create_app(broker, max_body=config.max_body, connect=ConnectSettings(config.public_url, config.connect_ttl),
                     hot_window=scheduling.hot_window if scheduling is not None else None)  # fmt: skip
    servers = []
    for listener, _sock in sockets:
        tcp = listener == "tcp"
        servers.append(_Listener(uvicorn.Config(
            _Tagged(app, listener), lifespan="off", log_config=None, access_log=False, server_header=False,
            timeout_graceful_shutdown=int(config.shutdown_timeout), proxy_headers=config.behind_proxy,
            ssl_certfile=config.tls_cert if tcp else None, ssl_keyfile=config.tls_key if tcp else None,
        )))  # fmt: skip

    def stop(signum: int) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        broker.draining = True
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    stack = contextlib.AsyncExitStack()
    try:
        await broker.start()
        if scheduling is not None:
            await _start_scheduler(stack, broker, scheduling, webhooks)
        # Everything made so far (modules, the app, its OpenAPI models, the keeper) lives until exit: moved out
        # of the collector's reach, a full collection no longer walks it in the middle of a request.
        gc.collect()
        gc.freeze()
        host, port = sockets[0][1].getsockname()[:2]
        scheme = "https" if config.tls_cert else "http"
        log.info("listening", url=f"{scheme}://{host}:{port}", unix=config.unix, pid=os.getpid())
        pairs = zip(servers, sockets, strict=True)
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, (_, sock) in pairs))
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await stack.aclose()  # the scheduler's refreshes in flight finish before the keeper and store close
        await broker.stop()
        await app.state.proxy_clients.aclose()
        await keeper.aclose()
        if config.unix is not None:
            with contextlib.suppress(OSError):
                os.unlink(config.unix)
        log.info("stopped")


async def run_scheduler(config: ServeConfig, *, store_url: str) -> None:
    """`grantkeeper schedule`: the refresh scheduler alone, until SIGTERM/SIGINT; then the refreshes in flight
    finish and the plan is written back before the store closes."""
    options = scheduler_options(config.scheduler)
    if options is None:
        raise ConfigurationError("the [scheduler] section says enabled = false: there is nothing to run")
    configure_logging(config.log_level)
    log = get_logger()
    store = open_store(store_url)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    try:
        async with running_scheduler(store, options, on_event=list(_webhooks(config))):
            log.info("scheduling", store=backend(store_url), pid=os.getpid())
            await done.wait()
            log.info("stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        store.close()
        log.info("stopped")
