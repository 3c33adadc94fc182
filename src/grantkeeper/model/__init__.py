"""Plain data: providers, grants, token sets, attempts. No I/O."""

from grantkeeper.model.attempt import Attempt, AttemptReport, AttemptState, OutcomeClass
from grantkeeper.model.grant import Grant, GrantState, Lease, LeaseHolder
from grantkeeper.model.provider import AuthMethod, Provider, RotationMode, check_name
from grantkeeper.model.tokens import TokenSet

__all__ = [
    "Attempt",
    "AttemptReport",
    "AttemptState",
    "AuthMethod",
    "Grant",
    "GrantState",
    "Lease",
    "LeaseHolder",
    "OutcomeClass",
    "Provider",
    "RotationMode",
    "TokenSet",
    "check_name",
]
