"""The refresh engine: the keepers on their ports (`engine.ports`), the drivers that run the protocol, and the
operations the keepers' shared cores yield (`engine.ops`). The keepers wired to real stores and HTTP are
`grantkeeper.Keeper` and `grantkeeper.AsyncKeeper` (`grantkeeper.keepers`)."""

from grantkeeper.engine.keeper import AsyncKeeper, GrantStatus, Keeper

__all__ = ["AsyncKeeper", "GrantStatus", "Keeper"]
