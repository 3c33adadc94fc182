"""The public API is small and deliberate: this list changes only on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

import grantkeeper


def test_exported_names_are_pinned() -> None:
    """grantkeeper.__all__ is exactly the documented public surface."""
    assert sorted(grantkeeper.__all__) == sorted([
        "AsyncKeeper", "Attempt", "AttemptState", "AuthMethod", "ClientAuthFailed", "ConfigurationError",
        "EncryptionKeyError", "Grant", "GrantState", "GrantStatus", "GrantkeeperError", "Keeper", "LeaseTimeout",
        "LostInFlight", "MalformedResponse", "NeedsReauth", "Provider", "ProviderRejected", "ProviderUnavailable",
        "RefreshPolicy", "ReuseDetected", "RevokedOrExpired", "RotationMode", "Secret", "StaleLocalToken",
        "StoreFormatError", "StoreUnavailable", "TLSVerificationFailed", "TransientError", "UnknownGrant",
        "UnknownProvider",
        "Diagnosis", "GrantEvent", "HistoryRetention", "OutcomeClass", "Webhook",
    ])  # fmt: skip
    for name in grantkeeper.__all__:
        assert hasattr(grantkeeper, name)


def test_library_modules_do_not_import_cli_dependencies() -> None:
    """Only grantkeeper.cli imports click or rich; the library works without the command line's choices.
    (httpx imports them itself when they are installed, so this checks our own imports statically.)"""
    root = Path(grantkeeper.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "cli" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("click", "rich")]
    assert offenders == []


def test_error_exit_codes_are_distinct_per_outcome_class() -> None:
    """Each error class a caller acts on differently has its own CLI exit code."""
    classes = [grantkeeper.ConfigurationError, grantkeeper.ClientAuthFailed, grantkeeper.NeedsReauth,
               grantkeeper.ProviderUnavailable, grantkeeper.StoreUnavailable, grantkeeper.LeaseTimeout,
               grantkeeper.MalformedResponse, grantkeeper.ProviderRejected, grantkeeper.StaleLocalToken]  # fmt: skip
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and 0 not in codes and 2 not in codes
