"""Encrypted bundles of grants and their providers, for moving them between stores or hosts.

A bundle is three parts, in this order::

    GRANTKEEPER-BUNDLE\\n
    <header: one line of JSON>\\n
    <AES-256-GCM ciphertext and tag of the payload>

The header is the only plaintext: the format version, how the key is derived (scrypt parameters and salt for a
passphrase; HKDF salt for a key file), the nonce, the ciphertext length, and the grant names with their refresh
tokens' fingerprints (as the exporting store computed them), so ``grantkeeper import FILE --list`` needs no
passphrase. The magic line and the header are the associated data of the encryption, so a changed byte anywhere
fails authentication. The payload (JSON) holds the providers (client secret included) and, per grant, the
refresh token, scopes, generation and lifetimes; never an access token (the importing store refreshes).

Keys: a passphrase (scrypt) or a key file (HKDF), derived and sealed by `grantkeeper.keys.wrapping`. Every error
is typed (`BundleError` and subclasses) and no message holds a secret.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from grantkeeper._exceptions import (
    BundleAuthError,
    BundleConflict,
    BundleError,
    ConfigurationError,
)
from grantkeeper._secrets import Secret
from grantkeeper.engine.keeper import spent_refusal
from grantkeeper.engine.ports import Store
from grantkeeper.keys.wrapping import NONCE_BYTES, SALT_BYTES, SCRYPT_N, TAG_BYTES, BundleKey
from grantkeeper.model import AuthMethod, Provider, RotationMode, check_name

__all__ = [
    "FORMAT_VERSION",
    "SCRYPT_N",
    "BundleAuthError",
    "BundleConflict",
    "BundleContents",
    "BundleError",
    "BundleHeader",
    "BundleKey",
    "ImportReport",
    "export_bundle",
    "import_bundle",
    "open_bundle",
    "read_header",
]

FORMAT_VERSION = 1
MAGIC = b"GRANTKEEPER-BUNDLE\n"
_MAX_HEADER = 1 << 20


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """The plaintext part: what ``import --list`` shows."""

    version: int
    protection: str
    grants: tuple[tuple[str, str | None], ...]  # (name, refresh-token fingerprint)
    kdf: dict[str, Any]
    salt: bytes
    nonce: bytes
    length: int
    raw: bytes  # magic + header line: the associated data


@dataclass(frozen=True, slots=True)
class ImportReport:
    grants: tuple[str, ...]
    replaced: tuple[str, ...]
    providers_added: tuple[str, ...]
    providers_kept: tuple[str, ...]
    #: Kept providers whose token URL or client id differ from the bundle's: the imported grants will be
    #: refreshed against this store's definition, which may not be where their tokens came from.
    providers_differing: tuple[str, ...] = ()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(str(text))
    except (binascii.Error, ValueError):
        raise BundleError(f"the bundle header's {what} is damaged") from None


# ------------------------------------------------------------------------------------------------ export


def _provider_data(provider: Provider) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f in fields(provider):
        value = getattr(provider, f.name)
        if isinstance(value, Secret | Enum):
            value = value.reveal() if isinstance(value, Secret) else value.value
        data[f.name] = value
    return data


def export_bundle(
    store: Store, key: BundleKey, *, grants: Sequence[str] = (), now: float, scrypt_n: int = SCRYPT_N,
    progress: Callable[[int, int], None] | None = None,
) -> bytes:  # fmt: skip
    """The bundle of `grants` (every grant when empty) and the providers they use, encrypted with `key`.

    `progress(done, total)` is called after each grant is read.
    """
    chosen = [store.get_grant(name) for name in dict.fromkeys(grants)] if grants else store.list_grants()
    if not chosen:
        raise ConfigurationError("there is no grant to export in this store")
    records = []
    for grant in chosen:
        if grant.refresh_token is None:
            raise ConfigurationError(f"grant {grant.name!r} has no refresh token to export", grant=grant.name)
        records.append({
            "name": grant.name, "provider": grant.provider, "refresh_token": grant.refresh_token.reveal(),
            "refresh_fp": grant.refresh_fp, "scopes": list(grant.scopes), "generation": grant.generation,
            "created_at": grant.created_at, "refreshed_at": grant.refreshed_at,
            "refresh_issued_at": grant.refresh_issued_at, "refresh_expires_at": grant.refresh_expires_at,
        })  # fmt: skip
        if progress is not None:
            progress(len(records), len(chosen))
    providers = [_provider_data(store.get_provider(p)) for p in dict.fromkeys(g.provider for g in chosen)]
    payload = json.dumps({"exported_at": now, "providers": providers, "grants": records}).encode()
    kdf, salt, nonce = key.new_parameters(scrypt_n=scrypt_n)
    header = {
        "format": FORMAT_VERSION, "protection": key.kind, "kdf": kdf, "salt": _b64(salt), "nonce": _b64(nonce),
        "length": len(payload) + TAG_BYTES,
        "grants": [{"name": g.name, "refresh_fp": g.refresh_fp} for g in chosen],
    }  # fmt: skip
    raw = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n"
    return raw + key.seal(payload, kdf=kdf, salt=salt, nonce=nonce, associated=raw)


# ------------------------------------------------------------------------------------------------ import


def read_header(data: bytes) -> BundleHeader:
    """The plaintext header (no key needed). Raises BundleError for anything that is not a bundle we read."""
    if not data.startswith(MAGIC):
        raise BundleError("this file is not a grantkeeper bundle (it does not start with the bundle marker)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end < 0:
        raise BundleError("the bundle is truncated or damaged: its header does not end")
    try:
        header = json.loads(data[len(MAGIC) : end])
        version = header["format"]
    except (ValueError, KeyError, TypeError):
        raise BundleError("the bundle header is damaged") from None
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format {version!r} is not supported by this grantkeeper (it reads format {FORMAT_VERSION}); "
            "import it with the grantkeeper version that wrote it, or a newer one"
        )
    try:
        grants = tuple((str(g["name"]), None if g["refresh_fp"] is None else str(g["refresh_fp"]))
                       for g in header["grants"])  # fmt: skip
        kdf, protection, length = dict(header["kdf"]), str(header["protection"]), int(header["length"])
        salt, nonce = _unb64(header["salt"], "salt"), _unb64(header["nonce"], "nonce")
    except (KeyError, TypeError, ValueError):
        raise BundleError("the bundle header is damaged") from None
    return BundleHeader(version, protection, grants, kdf, salt, nonce, length, data[: end + 1])


def _check_kdf(header: BundleHeader, key: BundleKey) -> None:
    if header.protection != key.kind:
        wanted = "--passphrase-stdin" if header.protection == "passphrase" else "--key-file"
        raise BundleAuthError(f"this bundle is protected by a {header.protection}, not a {key.kind}; use {wanted}")
    if not key.accepts(header.kdf) or len(header.salt) != SALT_BYTES or len(header.nonce) != NONCE_BYTES:
        raise BundleError("the bundle header names key-derivation parameters this grantkeeper does not accept")


def _open(data: bytes, key: BundleKey) -> tuple[BundleHeader, dict[str, Any]]:
    header = read_header(data)
    _check_kdf(header, key)
    body = data[len(header.raw) :]
    if len(body) != header.length:
        raise BundleError(
            f"the bundle is truncated or has extra bytes: {len(body)} encrypted bytes where the header says "
            f"{header.length}"
        )
    plain = key.open(body, kdf=header.kdf, salt=header.salt, nonce=header.nonce, associated=header.raw)
    try:
        payload = json.loads(plain)
        names = [g["name"] for g in payload["grants"]]
    except (ValueError, KeyError, TypeError):
        raise BundleError("the bundle's content is damaged") from None
    if names != [name for name, _ in header.grants]:
        raise BundleError("the bundle's content does not match its header")
    return header, payload


def _provider(data: dict[str, Any]) -> Provider:
    known = {f.name for f in fields(Provider)}
    values = {k: v for k, v in data.items() if k in known}
    if values.get("client_secret") is not None:
        values["client_secret"] = Secret(values["client_secret"])
    values["auth_method"] = AuthMethod(values["auth_method"])
    values["rotation"] = RotationMode(values["rotation"])
    values["authorize_params"] = tuple((str(k), str(v)) for k, v in values.get("authorize_params") or ())
    return Provider(**values)


@dataclass(frozen=True, slots=True)
class BundleContents:
    """A decrypted, checked bundle: what `import_bundle` writes. Its repr shows no token or secret."""

    providers: tuple[Provider, ...]
    grants: tuple[tuple[str, str, Secret, tuple[str, ...], int, float | None, float | None, float | None,
                        float | None], ...]  # fmt: skip

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g[0] for g in self.grants)


def open_bundle(data: bytes, key: BundleKey) -> BundleContents:
    """Decrypt and check the whole bundle (no store needed). Raises BundleError / BundleAuthError."""
    _, payload = _open(data, key)
    try:
        providers = tuple(_provider(p) for p in payload["providers"])
        records = tuple(
            (str(g["name"]), str(g["provider"]), Secret(str(g["refresh_token"])), _scopes(g["scopes"]),
             _generation(g["generation"]), _time(g["created_at"]), _time(g["refreshed_at"]),
             _time(g["refresh_issued_at"]), _time(g["refresh_expires_at"]))
            for g in payload["grants"]
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise BundleError("the bundle's content is damaged") from None
    return BundleContents(providers, records)


#: Later than any real timestamp (year 2500) and any real generation: a value past these is damage, not data.
_LATEST_TIME = 16_725_225_600.0
_MOST_GENERATIONS = 2**53


def _time(value: object) -> float | None:
    """A timestamp from the bundle, or None; anything else (text, NaN, negative, far future) is damage, refused
    before it reaches a store column that every later read parses as a number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _LATEST_TIME:
        raise ValueError("not a timestamp")
    return float(value)


def _generation(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MOST_GENERATIONS:
        raise ValueError("not a generation")
    return value


def _scopes(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("not a list of scopes")
    return tuple(value)


def _refuse_spent(store: Store, name: str, token: Secret) -> None:
    """A bundle older than this store's grant may carry a token this store has since spent: bringing it back
    would fail at the next refresh, and revoke the whole grant at a provider that detects reuse (I3)."""
    fingerprint = store.fingerprint(token)
    spender = store.spent_by(name, fingerprint)
    if spender is None:
        return
    raise spent_refusal(name, fingerprint, spender, store.get_grant(name))


def import_bundle(
    store: Store, bundle: BundleContents | bytes, key: BundleKey | None = None, *, replace: bool = False, now: float,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:  # fmt: skip
    """Write a bundle (opened with `open_bundle`, or its bytes and `key`) into `store`.

    `progress(done, total)` is called after each grant is written.

    Nothing is written when the bundle does not open or is damaged, or when a grant in it already exists here
    and `replace` is false. Providers already in the store are kept as they are; missing ones are added. A
    replaced grant's generation still only goes up, so a refresh in flight on the old token cannot commit.
    """
    if isinstance(bundle, bytes):
        if key is None:
            raise ConfigurationError("a bundle's bytes need the passphrase or key to import")
        bundle = open_bundle(bundle, key)
    providers, records = bundle.providers, bundle.grants
    existing = {g.name for g in store.list_grants()}
    replaced = tuple(r[0] for r in records if r[0] in existing)
    if replaced and not replace:
        raise BundleConflict(
            f"grant(s) {', '.join(replaced)} already exist in this store; nothing was imported. Use --replace to "
            "replace them (their history stays, their generation goes on increasing)"
        )
    current = {p.name: p for p in store.list_providers()}
    have = set(current)
    for name, provider_name, token, *_ in records:  # everything that could refuse is checked before writing
        check_name(name, "grant")
        if not token:
            raise BundleError(f"the bundle's grant {name!r} has an empty refresh token")
        if provider_name not in have and provider_name not in {p.name for p in providers}:
            raise BundleError(f"the bundle's grant {name!r} names provider {provider_name!r}, which it does not hold")
        if name in existing:
            _refuse_spent(store, name, token)
    added = tuple(p.name for p in providers if p.name not in have)
    differing = tuple(
        p.name for p in providers
        if p.name in have and (current[p.name].token_url, current[p.name].client_id) != (p.token_url, p.client_id)
    )  # fmt: skip
    for provider in providers:
        if provider.name not in have:
            store.put_provider(provider, now=now)
    for done, (name, provider_name, token, scopes, generation, created, refreshed, issued, expires) in enumerate(
        records, start=1
    ):
        # One transaction per grant: a worker must never see the bundle's token at a generation that then jumps.
        store.import_grant(name, provider=provider_name, refresh_token=token, scopes=scopes, now=now,
                           min_generation=generation, created_at=created, refreshed_at=refreshed,
                           refresh_issued_at=issued, refresh_expires_at=expires)  # fmt: skip
        if progress is not None:
            progress(done, len(records))
    kept = tuple(p.name for p in providers if p.name in have)
    return ImportReport(tuple(r[0] for r in records), replaced, added, kept, differing)
