"""The store contract: the source of truth for providers and grants, leases and attempts.

Every method is one transaction. The guarantees the refresh protocol relies on:

* ``claim`` takes the grant's lease and durably records the attempt in the same transaction, after
  re-reading the grant inside it (steps 3-5 of docs/design.md): if the grant no longer needs a refresh, or
  another worker holds an unexpired lease, nothing is written. A successor kept in local recovery storage
  for the current generation is committed by ``claim`` instead of recording an attempt, so no worker on
  this host spends a token whose successor is already known.
* ``commit`` is a compare-and-set on generation (I3): it writes generation+1 only if the stored generation
  is the one the refresh started from (``base``, the grant as claimed), closes the attempt and releases the
  lease, atomically and durably.
  A holder whose lease has expired may still commit while its generation is current: its successor token
  is the only valid one (I1).
* Leases carry a fence that increases on every acquisition; releasing or renewing checks it.
* A lease records its holder's liveness signal (`grantkeeper.stores.liveness`). An unexpired lease whose
  holder's signal is free (the holder died) is taken over at once, as if it had expired (``took_over``);
  a holder whose signal is held or unknown is waited for.
"""

from __future__ import annotations

# The store contract moved to the engine's ports and the transaction's data to the model (the core depends on
# neither the stores nor the transport); these names stay importable from here for adapters and old callers.
from grantkeeper.engine.ports import Store
from grantkeeper.model.claims import Claim, GenerationConflict, GrantUpdate, LeaseLost, LeaseTTL

__all__ = ["Claim", "GenerationConflict", "GrantUpdate", "LeaseLost", "LeaseTTL", "Store"]
