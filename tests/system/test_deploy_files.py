"""The deployment files: the Dockerfile (hadolint and docker are not available here, so its instructions are
parsed and checked), .dockerignore, and the systemd unit (checked by `systemd-analyze verify` and
`systemd-analyze security` when systemd-analyze is installed, and parsed either way)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from grantkeeper.stores import store_path

ROOT = Path(__file__).resolve().parents[2]
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
STATE = PurePosixPath("/var/lib/grantkeeper")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def env_values(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                values[name] = value
    return values


def exec_form(rest: str) -> list[str]:
    words = json.loads(rest)
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), rest
    return words


def test_base_image_and_install() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "[serve,postgres]" in runs


def test_runs_as_a_non_root_user_from_before_the_command() -> None:
    instructions = dockerfile()
    users = [(n, rest) for n, (word, rest) in enumerate(instructions) if word == "USER"]
    assert users, "no USER: the container would run as root"
    last_index, user = users[-1]
    assert user.split(":")[0] not in {"root", "0"}
    cmd_index = max(n for n, (word, _) in enumerate(instructions) if word == "CMD")
    assert last_index < cmd_index
    assert any(word == "RUN" and "useradd" in rest and user.split(":")[0] in rest for word, rest in instructions)


def test_no_secret_in_the_image_environment() -> None:
    instructions = dockerfile()
    for word, rest in instructions:
        if word in {"ENV", "ARG", "LABEL"}:
            for name in re.findall(r"(\w+)=", rest) or rest.split()[:1]:
                assert not SECRETISH.search(name), f"{word} {name}: secrets are given at run time, not baked in"
    assert not any(word == "COPY" and SECRETISH.search(rest) for word, rest in instructions)


def test_store_is_the_sqlite_file_in_the_volume() -> None:
    """GRANTKEEPER_STORE must name /var/lib/grantkeeper/grants.db as grantkeeper parses it (the SQLAlchemy-style
    ``sqlite:////var/...`` would be read as ``//var/...``, a path SQLite refuses)."""
    instructions = dockerfile()
    store = env_values(instructions)["GRANTKEEPER_STORE"]
    assert store_path(store) == Path("/var/lib/grantkeeper/grants.db")
    volumes = [exec_form(rest) for word, rest in instructions if word == "VOLUME"]
    assert [str(STATE)] in volumes
    recovery = PurePosixPath(env_values(instructions)["GRANTKEEPER_RECOVERY_DIR"])
    assert recovery.is_relative_to(STATE)


def test_healthcheck_probes_livez_with_python_on_the_served_port() -> None:
    instructions = dockerfile()
    [healthcheck] = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    probe = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert probe[0] == "python" and "curl" not in healthcheck
    [cmd] = [exec_form(rest) for word, rest in instructions if word == "CMD"]
    assert cmd[:2] == ["grantkeeper", "serve"] and "--behind-proxy" in cmd
    port = cmd[cmd.index("--port") + 1]
    assert f"http://127.0.0.1:{port}/livez" in probe[-1]
    assert ("EXPOSE", port) in instructions
    compile(probe[-1], "<healthcheck>", "exec")  # the probe is valid Python


def test_dockerignore_keeps_what_copy_needs_and_drops_secrets() -> None:
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*", "the context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in dockerfile():
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert source in allowed, f"COPY {source} is excluded by .dockerignore"
    for pattern in ("**/*.db", "**/*.key", "**/.env*"):
        assert pattern in ignore


# --- systemd --------------------------------------------------------------------------------------------------

UNIT = ROOT / "deploy" / "grantkeeper.service"


def unit_directives() -> dict[str, list[str]]:
    """Directive -> every value it is given (systemd allows repeats), across sections."""
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_unit_hardening() -> None:
    d = unit_directives()
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "StateDirectory": "grantkeeper", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "", "KillSignal": "SIGTERM", "DynamicUser": "yes",
    }  # fmt: skip
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["TimeoutStopSec"]
    assert "User" not in d or d["User"] != ["root"]


def test_unit_key_comes_from_a_credential_not_the_environment() -> None:
    d = unit_directives()
    assert any(v.startswith("grantkeeper.key:") for v in d["LoadCredential"])
    environment = " ".join(d["Environment"])
    assert "GRANTKEEPER_KEY=" not in environment
    assert "GRANTKEEPER_KEY_COMMAND=/bin/cat %d/grantkeeper.key" in environment
    [store] = [v.split("=", 1)[1] for v in d["Environment"] if v.startswith("GRANTKEEPER_STORE=")]
    assert store_path(store) == Path("/var/lib/grantkeeper/grants.db")  # StateDirectory=grantkeeper


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies_and_scores_ok(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (ExecStart pointed at this checkout's grantkeeper, since
    /opt/grantkeeper is not installed here) and its offline security exposure is at most 2.0 ("OK")."""
    grantkeeper = shutil.which("grantkeeper") or str(Path(__file__).resolve().parents[2] / ".venv/bin/grantkeeper")
    unit = tmp_path / "grantkeeper.service"
    unit.write_text(UNIT.read_text().replace("/opt/grantkeeper/bin/grantkeeper", grantkeeper))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
                              capture_output=True, text=True, check=False)  # fmt: skip
    assert security.returncode == 0, security.stdout[-2000:]
