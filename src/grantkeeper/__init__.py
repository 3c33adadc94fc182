"""grantkeeper: keep OAuth 2.0 grants alive when authorization servers rotate refresh tokens.

The public API is what ``__all__`` lists (pinned by ``tests/test_public_api.py``).
"""

from grantkeeper._exceptions import (
    ClientAuthFailed,
    ConfigurationError,
    EncryptionKeyError,
    GrantkeeperError,
    LeaseTimeout,
    LostInFlight,
    MalformedResponse,
    NeedsReauth,
    ProviderRejected,
    ProviderUnavailable,
    ReuseDetected,
    RevokedOrExpired,
    StaleLocalToken,
    StoreFormatError,
    StoreUnavailable,
    TLSVerificationFailed,
    TransientError,
    UnknownGrant,
    UnknownProvider,
)
from grantkeeper._secrets import Secret
from grantkeeper.diagnosis import Diagnosis
from grantkeeper.engine import GrantStatus
from grantkeeper.keepers import AsyncKeeper, Keeper
from grantkeeper.model import Attempt, AttemptState, AuthMethod, Grant, GrantState, OutcomeClass, Provider, RotationMode
from grantkeeper.model.retention import HistoryRetention
from grantkeeper.notify import GrantEvent, Webhook
from grantkeeper.protocol import RefreshPolicy

__version__ = "0.1.0"

__all__ = [
    "AsyncKeeper",
    "Attempt",
    "AttemptState",
    "AuthMethod",
    "ClientAuthFailed",
    "ConfigurationError",
    "Diagnosis",
    "EncryptionKeyError",
    "Grant",
    "GrantEvent",
    "GrantState",
    "GrantStatus",
    "GrantkeeperError",
    "HistoryRetention",
    "Keeper",
    "LeaseTimeout",
    "LostInFlight",
    "MalformedResponse",
    "NeedsReauth",
    "OutcomeClass",
    "Provider",
    "ProviderRejected",
    "ProviderUnavailable",
    "RefreshPolicy",
    "ReuseDetected",
    "RevokedOrExpired",
    "RotationMode",
    "Secret",
    "StaleLocalToken",
    "StoreFormatError",
    "StoreUnavailable",
    "TLSVerificationFailed",
    "TransientError",
    "UnknownGrant",
    "UnknownProvider",
    "Webhook",
]
