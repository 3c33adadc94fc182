"""The refresh engine: keepers and the drivers that run the protocol."""

from grantkeeper.engine.keeper import AsyncKeeper, GrantStatus, Keeper

__all__ = ["AsyncKeeper", "GrantStatus", "Keeper"]
