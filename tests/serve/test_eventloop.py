"""The event loop ``grantkeeper serve`` and ``grantkeeper schedule`` run on: uvloop when installed, else asyncio's;
``[serve] loop`` / ``$GRANTKEEPER_SERVE_LOOP`` chooses, and a choice that cannot run is refused before anything
starts. The commands are run through the CLI with their runner replaced by one that reports its loop."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.cli.main import cli
from grantkeeper.serve import eventloop
from grantkeeper.serve.config import ServeConfig, load_config

uvloop = pytest.importorskip("uvloop")


def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "grantkeeper.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_setting_comes_from_the_file_and_the_environment_overrides_it(tmp_path: Path) -> None:
    assert load_config(None, env={}).loop == "auto"
    path = _toml(tmp_path, '[serve]\nloop = "asyncio"\n')
    assert load_config(path, env={}).loop == "asyncio"
    assert load_config(path, env={"GRANTKEEPER_SERVE_LOOP": "uvloop"}).loop == "uvloop"


def test_an_unknown_loop_is_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'trio' is not one of auto, asyncio, uvloop"):
        load_config(_toml(tmp_path, '[serve]\nloop = "trio"\n'), env={})
    with pytest.raises(ConfigurationError, match="unknown setting 'loops' in \\[serve\\]"):
        load_config(_toml(tmp_path, '[serve]\nloops = "auto"\n'), env={})


def test_uvloop_asked_for_where_it_is_not_installed_is_refused_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an install without uvloop (Windows) imports
    with pytest.raises(ConfigurationError, match=r"uvloop is not installed.*loop = 'auto'"):
        ServeConfig(loop="uvloop").check()

    async def main() -> str:
        return _loop_module()

    coroutine = main()
    with pytest.raises(ConfigurationError, match="uvloop is not installed"):
        eventloop.run(coroutine, loop="uvloop")
    assert coroutine.cr_frame is None  # closed, not left to warn that it was never awaited
    assert eventloop.loop_name("auto") == "asyncio"
    assert eventloop.run(main(), loop="auto") == "asyncio"


@pytest.mark.parametrize(("setting", "expected"), [(None, "uvloop"), ("auto", "uvloop"), ("asyncio", "asyncio"),
                                                   ("uvloop", "uvloop")])  # fmt: skip
@pytest.mark.parametrize("command", ["serve", "schedule"])
def test_serve_and_schedule_run_on_the_chosen_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, setting: str | None, expected: str
) -> None:
    from grantkeeper.serve import runner

    seen: list[tuple[str, str, int]] = []

    async def fake(config: ServeConfig, *, store_url: str) -> None:
        seen.append((_loop_module(), store_url, gc.get_threshold()[0]))

    monkeypatch.setattr(runner, "run" if command == "serve" else "run_scheduler", fake)
    env = {"GRANTKEEPER_SERVE_LOOP": setting} if setting is not None else {}
    monkeypatch.delenv("GRANTKEEPER_SERVE_LOOP", raising=False)
    store = f"sqlite://{tmp_path / 'grants.db'}"
    result = CliRunner().invoke(cli, ["--store", store, command], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == [(expected, store, eventloop.GC_THRESHOLD)]
    assert gc.get_threshold()[0] != eventloop.GC_THRESHOLD  # undone when the command returns


def test_the_collector_is_tuned_for_the_block_and_restored_after() -> None:
    before = gc.get_threshold()
    with eventloop.collector_tuned():
        assert gc.get_threshold() == (eventloop.GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_refused_loop_stops_the_command_before_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from grantkeeper.serve import runner

    started: list[str] = []

    async def fake(config: ServeConfig, *, store_url: str) -> None:
        started.append(store_url)

    monkeypatch.setattr(runner, "run_scheduler", fake)
    store = f"sqlite://{tmp_path / 'grants.db'}"
    result = CliRunner().invoke(cli, ["--store", store, "schedule"], env={"GRANTKEEPER_SERVE_LOOP": "gevent"})
    assert result.exit_code != 0
    assert "'gevent' is not one of auto, asyncio, uvloop" in result.output
    assert started == []
