"""A throwaway PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` into a fresh temporary directory and starts a
postmaster that listens on 127.0.0.1 only, on a free port, with trust
authentication. It can be stopped cleanly, crashed (``stop_immediate``, ``kill``)
and started again on the same data directory, and ``close()`` always leaves no
server process behind (an ``atexit`` hook closes anything still open).

When running as root (as in CI), the server binaries run as the unprivileged
``postgres`` system user via ``runuser``, because ``initdb`` refuses to run as root.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

__all__ = ["PostgresServer", "PostgresServerError", "find_bindir", "process_alive"]

BINDIR_ENV = "GRANTKEEPER_PG_BINDIR"
SERVICE_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")

INITDB_TIMEOUT = 120.0
PG_CTL_WAIT = 60  # seconds pg_ctl itself waits (-t)
PG_CTL_TIMEOUT = PG_CTL_WAIT + 30.0  # our hard limit on the pg_ctl process
CONNECT_TIMEOUT = 60.0
KILL_WAIT = 30.0
LOG_TAIL_LINES = 40


class PostgresServerError(RuntimeError):
    """A server command failed; the message carries the command output and the server log tail."""


# --------------------------------------------------------------------------- discovery


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in REQUIRED_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts) or (-1,)


def find_bindir() -> tuple[Path | None, str]:
    """Return ``(bindir, "")`` for the server binaries to use, or ``(None, reason)``."""
    override = os.environ.get(BINDIR_ENV)
    if override:
        bindir = Path(override)
        if _has_binaries(bindir):
            return bindir, ""
        return None, f"{BINDIR_ENV}={override} does not contain executable {', '.join(REQUIRED_BINARIES)}"

    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            if out and _has_binaries(Path(out)):
                return Path(out), ""

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if _has_binaries(bindir):
            return bindir, ""
    return None, "no PostgreSQL server binaries found (install the Debian package postgresql)"


def _runuser() -> str | None:
    found = shutil.which("runuser")
    if found:
        return found
    for candidate in ("/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _service_ids() -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


# --------------------------------------------------------------------------- processes


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None if unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; the state follows the last ')'.
    rest = stat.rsplit(")", 1)[-1].split()
    return rest[0] if rest else None


def process_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as dead: they only wait to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return _proc_state(pid) not in {"Z", "X"}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not any(process_alive(p) for p in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _quote_conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --------------------------------------------------------------------------- the keeper process
#
# ``pg_ctl start`` daemonises the postmaster, which is then re-parented to the nearest "subreaper"
# (normally PID 1, which in containers may reap zombies late or never: a dead postmaster that is
# still a zombie makes the next start refuse with "lock file postmaster.pid already exists").
# So ``pg_ctl start`` runs under a small keeper process (this file run as a script) that makes
# itself a child subreaper: the postmaster, and any backend orphaned by kill(), become its children
# and are reaped at once. The keeper also watches its stdin: when the test process dies without
# closing the server (SIGKILL, os._exit), the pipe reaches EOF and the keeper shuts the server down
# (SIGQUIT = immediate shutdown, then SIGKILL). It exits when it has no children left.

_PR_SET_CHILD_SUBREAPER = 36
_KEEPER_BYE = b"bye\n"  # sent by the owner before it closes the keeper's stdin on purpose


def _keeper_main(argv: list[str]) -> int:
    command = json.loads(argv[0])
    timeout = float(argv[1])
    out_path = argv[2]
    owned_dir = argv[3]
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def shut_down_children() -> None:
        me = os.getpid()
        for sig, grace in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            children = _children(me)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, sig)
            if _wait_gone(children, grace):
                return

    orphaned = threading.Event()

    def watch_stdin() -> None:
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sys.stdin.buffer.read(4096):
                received += chunk
        if _KEEPER_BYE not in received:
            orphaned.set()  # the owner died without closing the server
        shut_down_children()

    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = str(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = "timeout"
    with contextlib.suppress(OSError):
        sys.stdout.write(status + "\n")
        sys.stdout.flush()
    threading.Thread(target=watch_stdin, daemon=True).start()
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    if orphaned.is_set():
        shutil.rmtree(owned_dir, ignore_errors=True)
    os._exit(0)


# --------------------------------------------------------------------------- the server

_open_servers: set[PostgresServer] = set()
_open_lock = threading.Lock()


def _close_all_at_exit() -> None:
    with _open_lock:
        servers = list(_open_servers)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


atexit.register(_close_all_at_exit)


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1, in its own temporary directory."""

    def __init__(self) -> None:
        self._bindir: Path | None = None
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._pid: int | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self._as_service_user = os.geteuid() == 0

    # ---- discovery

    @staticmethod
    def available() -> str | None:
        """None if a server can be started here, else a human-readable reason why not."""
        bindir, reason = find_bindir()
        if bindir is None:
            return reason
        if os.geteuid() == 0:
            if _runuser() is None:
                return "running as root but runuser is not available to drop to the postgres user"
            if _service_ids() is None:
                return f"running as root but there is no {SERVICE_USER!r} system user to run the server as"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed"
        return None

    # ---- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresServerError("server was never started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster pid recorded at the last (re)start."""
        return self._pid

    @property
    def directory(self) -> Path:
        if self._tmpdir is None:
            raise PostgresServerError("server was never started (or is closed)")
        return self._tmpdir

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "log"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{urllib.parse.quote(dbname, safe='')}"

    @property
    def running(self) -> bool:
        return self._pid is not None and process_alive(self._pid)

    # ---- command plumbing

    def _bin(self, name: str) -> str:
        assert self._bindir is not None
        return str(self._bindir / name)

    def _wrap(self, argv: list[str]) -> list[str]:
        if self._as_service_user:
            runuser = _runuser()
            if runuser is None:
                raise PostgresServerError("runuser not found")
            return [runuser, "-u", SERVICE_USER, "--", *argv]
        return argv

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, PostgresServerError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"

    def _error(self, what: str, detail: str) -> PostgresServerError:
        return PostgresServerError(f"{what}\n{detail}\n--- server log tail ---\n{self.log_tail()}")

    @staticmethod
    def _env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _run(self, argv: list[str], timeout: float) -> str:
        """Run a server command (as the service user if root); raise with output and log tail on failure."""
        env = self._env()
        cmd = self._wrap(argv)
        # Output goes to files, not pipes: a daemonised postmaster must never hold our pipe open.
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
                start_new_session=True,  # so a timeout can kill runuser and everything below it
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out.seek(0)
                output = out.read().decode(errors="replace")
                raise self._error(
                    f"command timed out after {timeout:.0f}s: {' '.join(cmd)}", f"--- output ---\n{output}"
                ) from None
            out.seek(0)
            output = out.read().decode(errors="replace")
        if rc != 0:
            raise self._error(f"command failed with exit status {rc}: {' '.join(cmd)}", f"--- output ---\n{output}")
        return output

    def _read_pid(self) -> int:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            first = pidfile.read_text().splitlines()[0]
            return int(first.strip())
        except (OSError, IndexError, ValueError) as exc:
            raise self._error(f"cannot read the postmaster pid from {pidfile}", repr(exc)) from exc

    def _wait_accepting(self, timeout: float = CONNECT_TIMEOUT) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.url, connect_timeout=5, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                last = exc
                if self._pid is not None and not process_alive(self._pid):
                    break
                time.sleep(0.1)
        raise self._error("server does not accept connections", f"last error: {last!r}")

    # ---- lifecycle

    def start(self) -> Self:
        """initdb a fresh cluster in a new temporary directory and start it."""
        if self._tmpdir is not None:
            raise PostgresServerError("start() was already called; use start_again() to restart")
        reason = self.available()
        if reason is not None:
            raise PostgresServerError(reason)
        self._bindir, _ = find_bindir()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="gk-pg-"))
        with _open_lock:
            _open_servers.add(self)
        try:
            if self._as_service_user:
                ids = _service_ids()
                assert ids is not None
                os.chown(self._tmpdir, *ids)
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                timeout=INITDB_TIMEOUT,
            )
            (self.data_dir / "pg_hba.conf").write_text(
                "# written by tests/pg_server.py\n"
                "local   all   all                 trust\n"
                "host    all   all   127.0.0.1/32  trust\n"
            )
            # A port picked by binding port 0 can be taken by someone else before the postmaster binds it:
            # retry with another one when that happens.
            for attempt in range(3):
                self._port = _free_port()
                self._write_config()
                try:
                    self._pg_ctl_start()
                    break
                except PostgresServerError:
                    if attempt == 2 or "could not bind" not in self.log_tail(200):
                        raise
                    self._kill_processes()
            self._wait_accepting()
        except BaseException:
            self.close()
            raise
        return self

    def _write_config(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        marker = "\n# --- tests/pg_server.py ---\n"
        text = text.split(marker, 1)[0]
        settings = {
            "listen_addresses": _quote_conf(HOST),
            "port": str(self.port),
            "unix_socket_directories": _quote_conf(str(self.directory)),
            "fsync": "on",
            "max_connections": "200",
            "shared_buffers": "'128MB'",
        }
        conf.write_text(text + marker + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def _pg_ctl_start(self) -> None:
        """``pg_ctl start`` under a fresh keeper process (see above); record the postmaster pid."""
        self._reap_keeper()
        argv = self._wrap(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(PG_CTL_WAIT),
                "start",
            ]
        )
        out_path = self.directory / "pg_ctl-start.out"
        with open(self.directory / "keeper.log", "ab") as keeper_log:
            keeper = self._spawn_keeper(argv, out_path, keeper_log)
        self._keeper = keeper
        assert keeper.stdout is not None
        status = ""
        with selectors.DefaultSelector() as sel:
            sel.register(keeper.stdout, selectors.EVENT_READ)
            if sel.select(timeout=PG_CTL_TIMEOUT + 30):
                status = keeper.stdout.readline().decode(errors="replace").strip()
        try:
            output = out_path.read_text(errors="replace")
        except OSError:
            output = "(no output)"
        cmd = " ".join(argv)
        if status == "timeout" or not status:
            raise self._error(f"command timed out after {PG_CTL_TIMEOUT:.0f}s: {cmd}", f"--- output ---\n{output}")
        if status != "0":
            raise self._error(f"command failed with exit status {status}: {cmd}", f"--- output ---\n{output}")
        self._pid = self._read_pid()

    def _spawn_keeper(self, argv: list[str], out_path: Path, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-I",  # stdlib only: no script directory, PYTHON* variables or user site on sys.path
                str(Path(__file__).resolve()),
                "--keeper",
                json.dumps(argv),
                str(PG_CTL_TIMEOUT),
                str(out_path),
                str(self.directory),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=self.directory,
            env=self._env(),
            start_new_session=True,  # ^C in the test terminal must not reach the keeper or the server
        )

    def _reap_keeper(self, timeout: float = KILL_WAIT) -> None:
        """Let the keeper go (it exits once the server's processes are gone) and reap it."""
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        assert keeper.stdin is not None and keeper.stdout is not None
        with contextlib.suppress(OSError):
            keeper.stdin.write(_KEEPER_BYE)
        with contextlib.suppress(OSError):
            keeper.stdin.close()  # EOF: the keeper shuts down whatever is still running below it
        try:
            keeper.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()
        keeper.stdout.close()

    def start_again(self) -> Self:
        """Start the server again on the same data directory and port; wait until it accepts connections."""
        if self.running:
            raise PostgresServerError(f"server is still running (pid {self._pid})")
        self._remove_stale_pidfile()
        try:
            self._pg_ctl_start()
        except PostgresServerError:
            # pg_ctl may have given up while a postmaster came up regardless: never leave it behind.
            with contextlib.suppress(PostgresServerError):
                self._pid = self._read_pid()
            raise
        self._wait_accepting()
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>`` (smart, fast or immediate) and wait for the postmaster to exit."""
        if mode not in {"smart", "fast", "immediate"}:
            raise ValueError(f"unknown shutdown mode {mode!r}")
        pid = self._pid
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(PG_CTL_WAIT), "stop"],
            timeout=PG_CTL_TIMEOUT,
        )
        if pid is not None and not _wait_gone([pid], KILL_WAIT):
            raise self._error(f"postmaster {pid} is still alive after pg_ctl stop -m {mode}", "")
        self._reap_keeper()

    def stop_immediate(self) -> None:
        """Crash-like stop: no checkpoint, crash recovery runs at the next start."""
        self.stop("immediate")

    def kill(self) -> None:
        """Last resort: SIGKILL the postmaster and its children."""
        self._kill_processes()

    def _kill_processes(self) -> None:
        pid = self._pid
        if pid is None:
            with contextlib.suppress(PostgresServerError):
                pid = self._read_pid()
        if pid is None or not process_alive(pid):
            return
        # Freeze the postmaster so it forks nothing new, then kill it and every child it has.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        if not _wait_gone(victims, KILL_WAIT):
            raise self._error(f"postgres processes {victims} survived SIGKILL", "")
        self._reap_keeper()

    def _remove_stale_pidfile(self) -> None:
        """Remove postmaster.pid if it names a dead postmaster that is still an unreaped zombie.

        PostgreSQL treats a zombie as a live postmaster and would refuse to start.
        """
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0].strip())
        except (OSError, IndexError, ValueError):
            return
        if _proc_state(pid) == "Z":
            pidfile.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server (killing it if pg_ctl cannot) and remove its temporary directory. Idempotent."""
        try:
            if self._tmpdir is not None and self._bindir is not None:
                if self._pid is None:
                    with contextlib.suppress(PostgresServerError):
                        self._pid = self._read_pid()
                if self.running:
                    try:
                        self.stop("fast")
                    except PostgresServerError:
                        self._kill_processes()
        finally:
            self._reap_keeper()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            with _open_lock:
                _open_servers.discard(self)

    # ---- databases

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` WITH (FORCE), disconnecting its sessions."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # ---- context manager

    def __enter__(self) -> Self:
        if self._tmpdir is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresServer port={self._port} pid={self._pid} dir={self._tmpdir}>"


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--keeper":
    sys.exit(_keeper_main(sys.argv[2:]))
