"""The refresh scheduler on the command line: ``grantkeeper schedule`` (the scheduler alone, for deployments
without the HTTP service), ``grantkeeper grant set NAME --hot`` and ``grantkeeper status --due``."""

from __future__ import annotations

import os
import time

import click

from grantkeeper.admin import Admin, DuePlan
from grantkeeper.cli import _render
from grantkeeper.cli._io import echo_json
from grantkeeper.cli._session import Session
from grantkeeper.cli.completion import grant_argument

__all__ = ["report_due", "schedule", "set_grant"]


@click.command()
@click.option("--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="A grantkeeper.toml: its [store], [webhook], [logging] and [scheduler] sections.")  # fmt: skip
@click.pass_obj
def schedule(session: Session, config_file: str | None) -> None:
    """Keep grants fresh ahead of time, without the HTTP service (docs/serve.md, "The scheduler").

    Refreshes grants marked hot ('grantkeeper grant set NAME --hot') before their access tokens stop being served,
    and every grant before its refresh token's renewable end; warns ahead of an absolute end. Any number may run
    on one PostgreSQL store: they share the work. Runs in the foreground until SIGTERM or SIGINT, then finishes the
    refreshes in flight. Logs are JSON lines on standard error. Needs the 'serve' extra.
    """
    from grantkeeper.serve import require_extra

    require_extra()
    from grantkeeper.admin import STORE_ENV, default_store_url
    from grantkeeper.serve.config import load_config
    from grantkeeper.serve.eventloop import run as run_on_loop
    from grantkeeper.serve.runner import run_scheduler

    config = load_config(config_file)
    url = session.store_url or os.environ.get(STORE_ENV) or config.store_url or default_store_url()
    run_on_loop(run_scheduler(config, store_url=url), loop=config.loop)


@click.command("set")
@grant_argument()
@click.option("--hot/--not-hot", default=None, help="Keep the grant's access token fresh ahead of time whatever "
              "its use (the scheduler refreshes it before it stops being served), or stop.")  # fmt: skip
@click.pass_obj
def set_grant(session: Session, name: str, hot: bool | None) -> None:
    """Change how grant NAME is kept."""
    if hot is None:
        raise click.UsageError("nothing to set: give --hot or --not-hot")
    with Admin.open(session.url()) as admin:
        admin.set_hot(name, hot)
    click.echo(f"grant {name}: {'hot: refreshed ahead of time' if hot else 'not marked hot'}")


def report_due(session: Session, *, as_json: bool, limit: int = 50) -> None:
    """``status --due``: the grants the scheduler looks at first and what it plans for each."""
    with Admin.open(session.url()) as admin:
        plans = admin.due(limit=limit)
    if as_json:
        echo_json([p.as_dict() for p in plans])
        return
    if not plans:
        click.echo("no active grants: the scheduler has nothing to do")
        return
    now = time.time()
    _render.echo_table(("GRANT", "HOT", "NEXT LOOK", "ACTION", "AT", "WHY"), [_due_row(p, now) for p in plans])


def _due_row(due: DuePlan, now: float) -> tuple[object, ...]:
    look = "now" if due.entry.next_due_at <= now else _render.iso_utc(due.entry.next_due_at)
    plan = due.plan
    if plan is None:
        return (due.entry.grant, "yes" if due.hot else "no", look, "-", "-", "nothing to keep ahead of")
    at = "now" if plan.at <= now else _render.iso_utc(plan.at)
    return (due.entry.grant, "yes" if due.hot else "no", look, plan.action.value, at, plan.reason)
