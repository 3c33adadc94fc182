"""grantkeeper serve: the HTTP token broker (docs/serve.md)."""
