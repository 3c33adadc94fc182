"""Where a store's encryption keys come from: an environment variable, a command, or a key file.

A key source yields a *key ring*: one or more 32-byte keys written in base64url, separated by commas or
whitespace. The first key is the primary one (new values are encrypted with it); the others only decrypt
values not yet re-encrypted by ``grantkeeper keys rotate``. Sources, first match wins:

* ``$GRANTKEEPER_KEY``: the ring itself (``NEW,OLD`` during a rotation);
* ``$GRANTKEEPER_KEY_COMMAND``: a command (split like a shell would, run without a shell) whose standard
  output is the ring, for a KMS or a password manager;
* the key file beside an SQLite store (``<store>.key``): created 0600 with the store, refused when group or
  others can read it, rewritten atomically by ``grantkeeper keys rotate``.

This module never logs or shows a key; errors name the source, never its content.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from grantkeeper import _failpoints
from grantkeeper._exceptions import EncryptionKeyError
from grantkeeper._fsutil import fsync_dir, write_new_private_file

__all__ = [
    "KEY_COMMAND_ENV",
    "KEY_ENV",
    "KeySource",
    "encode_key",
    "generate_key",
    "load_or_create_key",
    "load_ring",
    "parse_key",
    "parse_ring",
    "read_private_file",
    "write_key_file",
    "write_private_file",
]

KEY_ENV = "GRANTKEEPER_KEY"
KEY_COMMAND_ENV = "GRANTKEEPER_KEY_COMMAND"
_COMMAND_TIMEOUT = 30.0  # seconds: a KMS call may be slow, a hung one must not hang every worker
_SEPARATORS = re.compile(r"[\s,]+")
_GENERATE_HINT = "generate one with `grantkeeper keys generate --output FILE`"


def parse_key(text: str, *, origin: str) -> bytes:
    """Decode a base64url key of exactly 32 bytes; `origin` names where it came from for the error."""
    raw = text.strip()
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise EncryptionKeyError(
            f"the key in {origin} is not 32 bytes of base64url; generate one with "
            '`python -c "import secrets,base64;print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"` '
            "or `grantkeeper keys generate --output FILE`"
        )
    return key


def parse_ring(text: str, *, origin: str) -> list[bytes]:
    """Every key in `text`, primary first, duplicates dropped; an empty ring is an error."""
    keys: list[bytes] = []
    for position, part in enumerate(filter(None, _SEPARATORS.split(text.strip())), start=1):
        key = parse_key(part, origin=f"{origin} (key {position})" if position > 1 else origin)
        if key not in keys:
            keys.append(key)
    if not keys:
        raise EncryptionKeyError(f"{origin} holds no key; {_GENERATE_HINT}")
    return keys


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def generate_key() -> bytes:
    return os.urandom(32)


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a ring was read from. `path` is set for key files only: the one source `keys rotate` can rewrite."""

    description: str
    path: Path | None = None
    command: str | None = None

    @property
    def retired_path(self) -> Path | None:
        """Beside a key file: keys retired by `keys rotate`, still read (never written with) until purged."""
        return self.path.with_name(self.path.name + ".retired") if self.path is not None else None

    def ring(self) -> list[bytes]:
        """The ring as the source gives it: primary first, then the older keys still part of it."""
        if self.command is not None:
            return _run_key_command(self.command)
        if self.path is not None:
            return _read_key_file(self.path)
        return parse_ring(os.environ.get(KEY_ENV, ""), origin=self.description)

    def retired(self) -> list[bytes]:
        """Keys retired from a key file's ring; empty for other sources or when none are kept."""
        try:
            return _read_key_file(self.retired_path) if self.retired_path is not None else []
        except FileNotFoundError:
            return []

    def load(self) -> list[bytes]:
        """Every key that may decrypt: the ring, then retired keys (a rotation elsewhere may have changed both
        since this process started). The first is the primary key."""
        ring = self.ring()
        return ring + [k for k in self.retired() if k not in ring]


def _run_key_command(command: str) -> list[bytes]:
    origin = f"the output of ${KEY_COMMAND_ENV}"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise EncryptionKeyError(f"${KEY_COMMAND_ENV} cannot be split into arguments ({exc}); fix its quotes") from None
    if not argv:
        raise EncryptionKeyError(f"${KEY_COMMAND_ENV} is set but empty; unset it or name a command")
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise EncryptionKeyError(f"the key command {argv[0]!r} (from ${KEY_COMMAND_ENV}) was not found") from None
    except subprocess.TimeoutExpired:
        raise EncryptionKeyError(
            f"the key command {argv[0]!r} (from ${KEY_COMMAND_ENV}) did not finish within {_COMMAND_TIMEOUT:.0f} s"
        ) from None
    except OSError as exc:
        raise EncryptionKeyError(f"the key command {argv[0]!r} could not run: {exc.strerror}") from None
    if done.returncode != 0:
        # Its stderr is not shown: a key tool may echo what it was handed.
        raise EncryptionKeyError(
            f"the key command {argv[0]!r} (from ${KEY_COMMAND_ENV}) exited with status {done.returncode}; run it "
            "yourself to see why"
        )
    return parse_ring(done.stdout.decode("ascii", errors="replace"), origin=origin)


def read_private_file(path: Path) -> bytes:
    """The bytes of a key file, refused if any group or other permission bit is set. FileNotFoundError passes
    through (callers decide whether a missing file is an error); any other failure is an EncryptionKeyError."""
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EncryptionKeyError(
                f"key file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); run "
                f"`chmod 600 {path}`"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise EncryptionKeyError(f"cannot read key file {path}: {exc.strerror}; check its path and owner") from None


def _read_key_file(path: Path) -> list[bytes]:
    """The ring in a key file (see `read_private_file`)."""
    return parse_ring(read_private_file(path).decode("ascii", errors="replace"), origin=str(path))


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write `data` to `path` with mode 0600, durably: a crash leaves the old file or the new one, never half.

    `exclusive` creates `path` itself and fails if it exists; otherwise a temporary file is renamed over it.
    """
    # The data goes to a private temporary name first, so `path` only ever appears complete. The name is per
    # process: two processes creating the same store must not write into each other's temporary file.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write_new_private_file(temporary, data)
        _failpoints.hit("private_file_written")
        if exclusive:
            os.link(temporary, path)  # atomic, and fails if `path` exists: never replaces another's file
        else:
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    fsync_dir(path.parent)


def write_key_file(path: Path, keys: list[bytes], *, exclusive: bool) -> None:
    """Write the ring to `path` (mode 0600, durably). `exclusive`: a new store must never replace a key."""
    write_private_file(path, "".join(encode_key(k) + "\n" for k in keys).encode("ascii"), exclusive=exclusive)


def load_ring(key_file: Path | None, *, create: bool) -> tuple[list[bytes], KeySource]:
    """The ring and its source: ``$GRANTKEEPER_KEY``, else ``$GRANTKEEPER_KEY_COMMAND``, else `key_file`.

    The key file is created (mode 0600, exclusively) only when `create` is true, that is when the store is
    being created; a store that exists without its key is an error, never a reason to make a new key.
    """
    if os.environ.get(KEY_ENV):
        source = KeySource(f"${KEY_ENV}")
        return source.load(), source
    command = os.environ.get(KEY_COMMAND_ENV)
    if command:
        source = KeySource(f"${KEY_COMMAND_ENV}", command=command)
        return source.load(), source
    if key_file is None:
        raise EncryptionKeyError(
            f"no encryption key: set ${KEY_ENV} (the same key on every host) or ${KEY_COMMAND_ENV} (a command "
            "printing it); there is no key file beside a database server"
        )
    source = KeySource(str(key_file), path=key_file)
    try:
        return source.load(), source
    except FileNotFoundError:
        if not create:
            raise EncryptionKeyError(
                f"no encryption key: ${KEY_ENV} is not set and the key file {key_file} does not exist; "
                "set the key this store was created with"
            ) from None
    key = generate_key()
    try:
        write_key_file(key_file, [key], exclusive=True)
    except FileExistsError:  # another process created the same store a moment ago: its key is the store's
        return source.load(), source
    except OSError as exc:  # an unwritable folder, or a filesystem without hard links (see write_private_file)
        raise EncryptionKeyError(
            f"cannot create the new store's key file {key_file}: {exc.strerror}; put the store on a local "
            f"filesystem you can write to, or give the key in ${KEY_ENV}"
        ) from None
    return [key], source


def load_or_create_key(key_file: Path, *, create: bool) -> bytes:
    """The primary key of `load_ring` (kept for callers that hold one key)."""
    return load_ring(key_file, create=create)[0][0]
