"""The refresh transaction, sans I/O: decisions as generators and pure functions."""

from grantkeeper.protocol.policy import RefreshPolicy
from grantkeeper.protocol.refresh import Refreshed, refresh_flow

__all__ = ["RefreshPolicy", "Refreshed", "refresh_flow"]
