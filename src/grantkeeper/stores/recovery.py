"""Durable local recovery storage: where a successor token waits when the store cannot be written.

One file per pending commit in a directory beside the store, encrypted with the store's key (bound to the
grant name), written to a temporary name, fsync'd, renamed, and the directory fsync'd: after `save`
returns, the token survives a crash or power loss. When even that fails (a full disk, no permission), `save`
keeps the entry in process memory and raises, naming the successor by fingerprint. A store without a path
(``memory://``) keeps entries in process memory, which is all a memory store can promise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from grantkeeper._exceptions import StoreFormatError, StoreUnavailable
from grantkeeper._fsutil import fsync_dir, make_private_dirs, write_new_private_file
from grantkeeper._secrets import Secret
from grantkeeper.keys.crypto import Crypto
from grantkeeper.stores.base import GrantUpdate

__all__ = ["RecoveryDir", "RecoveryEntry"]


_SUFFIX = ".gkr"
#: A listing is reused only while the directory's change times are at least this much older than the listing: a
#: change in the same timestamp granule would leave them as they were (git's "racily clean" index entries). It covers
#: coarse file system timestamps (2 s on FAT) and the coarse kernel clock that stamps them.
_RACY_NS = 3_000_000_000


@dataclass(frozen=True, slots=True)
class RecoveryEntry:
    grant: str
    expected_generation: int
    attempt_id: int
    update: GrantUpdate
    saved_at: float
    path: Path | None = None


def _grant_tag(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


class RecoveryDir:
    def __init__(self, path: Path | None, crypto: Crypto) -> None:
        self._path = path
        self._crypto = crypto
        self._memory: dict[str, RecoveryEntry] = {}
        #: The last listing of the directory's entry names and the directory's (device, inode, mtime, ctime) when
        #: it was taken; None: list again. Every claim asks for its grant's entries, and listing costs far more
        #: than the `os.stat` that tells whether the directory changed since.
        self._listing: tuple[tuple[int, int, int, int], list[str]] | None = None

    def save(self, entry: RecoveryEntry) -> None:
        update = entry.update
        record = {
            "grant": entry.grant,
            "expected_generation": entry.expected_generation,
            "attempt_id": entry.attempt_id,
            "saved_at": entry.saved_at,
            "refresh_token": update.refresh_token.reveal() if update.refresh_token else None,
            "access_token": update.access_token.reveal() if update.access_token is not None else None,
            "expires_at": update.expires_at,
            "scopes": list(update.scopes) if update.scopes is not None else None,
            "access_verified": update.access_verified,
            "refresh_expires_at": update.refresh_expires_at,
        }
        name = f"{_grant_tag(entry.grant)}.{entry.expected_generation}.{entry.attempt_id}.{secrets.token_hex(4)}"
        if self._path is None:
            self._memory[name] = dataclasses.replace(entry, path=Path(name))
            return
        blob = self._crypto.encrypt_bytes(json.dumps(record).encode(), aad=f"recovery/{_grant_tag(entry.grant)}")
        temporary: Path | None = None
        self._listing = None
        try:
            make_private_dirs(self._path)
            temporary = self._path / (name + ".tmp")
            write_new_private_file(temporary, blob)
            os.replace(temporary, self._path / (name + _SUFFIX))
            fsync_dir(self._path)
        except OSError as exc:
            if temporary is not None:  # a full disk leaves an empty or partial file: it must not look like an entry
                with contextlib.suppress(OSError):
                    temporary.unlink()
            # Last line of defence for I1: keep it in this process (claim() and the replay still find it here), and
            # tell the caller: a process that exits now takes the successor with it.
            self._memory[name] = dataclasses.replace(entry, path=Path(name))
            raise self._not_durable(entry, exc) from None

    def _not_durable(self, entry: RecoveryEntry, exc: OSError) -> StoreUnavailable:
        token = entry.update.refresh_token
        fingerprint = self._crypto.fingerprint(token) if token is not None else None
        generation = entry.expected_generation + 1
        if fingerprint is not None:
            what = f"the successor refresh token {fingerprint} (generation {generation})"
            stake = (
                "it is held only in this process's memory: if the process exits before the store can be written, "
                "it is lost and the grant will likely need a new consent"
            )
        else:
            what = f"the new access token (generation {generation}; the refresh token did not change)"
            stake = "it is held only in this process's memory; the refresh token it came with is still stored"
        return StoreUnavailable(
            f"grant {entry.grant!r}: {what} could not be made durable: the store refused to commit it and local "
            f"recovery storage {self._path} could not be written either ({exc.strerror or exc}); {stake}. Free "
            "disk space and fix the permissions of the store and that directory",
            grant=entry.grant, generation=generation, attempt_id=entry.attempt_id, fingerprint=fingerprint,
        )  # fmt: skip

    def entries(self, grant: str | None = None) -> list[RecoveryEntry]:
        held = [e for e in self._memory.values() if grant is None or e.grant == grant] if self._memory else []
        if self._path is None:
            return held
        names = self._names()
        if not names:
            return held
        prefix = _grant_tag(grant) + "." if grant is not None else ""
        loaded = (self._load(self._path / n) for n in names if n.startswith(prefix))
        return held + [entry for entry in loaded if entry is not None]

    def _names(self) -> list[str]:
        """The entry files in the directory, sorted: the last listing while the directory has not changed since."""
        assert self._path is not None
        try:
            st = os.stat(self._path)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
            listing = self._listing
            if listing is not None and listing[0] == key:
                return listing[1]
            # Stat first, list second: a change between the two shows in the listing and changes the key.
            names = sorted(n for n in os.listdir(self._path) if n.endswith(_SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []  # no directory, so nothing can be waiting in it
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot list local recovery storage {self._path} ({exc.strerror}); refusing to refresh while a "
                "kept successor token might be there. Fix the directory's permissions"
            ) from None
        settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS
        self._listing = (key, names) if settled else None
        return names

    def _load(self, path: Path) -> RecoveryEntry | None:
        """The entry in `path`; None if another worker committed and removed it since the listing."""
        tag = path.name.split(".", 1)[0]
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"could not read recovery file {path}: {exc.strerror}") from None
        try:
            record = json.loads(self._crypto.decrypt_bytes(blob, aad=f"recovery/{tag}"))
            if _grant_tag(record["grant"]) != tag:
                raise ValueError("grant name does not match the file name")
            update = GrantUpdate(
                refresh_token=Secret(record["refresh_token"]) if record["refresh_token"] else None,
                access_token=Secret(record["access_token"]) if record["access_token"] is not None else None,
                expires_at=float(record["expires_at"]) if record["expires_at"] is not None else None,
                scopes=tuple(record["scopes"]) if record["scopes"] is not None else None,
                access_verified=bool(record["access_verified"]),
                # Absent in files written before schema version 3.
                refresh_expires_at=record.get("refresh_expires_at"),
            )
            return RecoveryEntry(
                grant=record["grant"],
                expected_generation=int(record["expected_generation"]),
                attempt_id=int(record["attempt_id"]),
                update=update,
                saved_at=float(record["saved_at"]),
                path=path,
            )
        except (StoreFormatError, ValueError, KeyError, TypeError) as exc:
            raise StoreFormatError(
                f"recovery file {path} cannot be read with this store's key ({type(exc).__name__}); it may "
                "hold the only copy of a refresh token: do not delete it, restore the key it was written with"
            ) from None

    def sealed_files(self) -> list[tuple[Path, str]]:
        """Every recovery file with the associated data it is encrypted with (for key rotation)."""
        if self._path is None:
            return []
        try:
            names = sorted(n for n in os.listdir(self._path) if n.endswith(_SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [(self._path / n, f"recovery/{n.split('.', 1)[0]}") for n in names]

    def remove(self, entry: RecoveryEntry) -> None:
        assert entry.path is not None
        if entry.path.name in self._memory:
            del self._memory[entry.path.name]
            return
        self._listing = None
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(entry.path.parent)
