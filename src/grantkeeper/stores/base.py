"""The store contract's old home: `grantkeeper.engine.ports` declares it now (with the guarantees the refresh
protocol relies on) and `grantkeeper.model.claims` holds the transaction's data. Re-exported for adapters."""

from __future__ import annotations

# The store contract moved to the engine's ports and the transaction's data to the model (the core depends on
# neither the stores nor the transport); these names stay importable from here for adapters and old callers.
from grantkeeper.engine.ports import Store
from grantkeeper.model.claims import Claim, GenerationConflict, GrantUpdate, LeaseLost, LeaseTTL

__all__ = ["Claim", "GenerationConflict", "GrantUpdate", "LeaseLost", "LeaseTTL", "Store"]
