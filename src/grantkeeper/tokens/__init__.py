"""The token-endpoint client: request building, response reading, transport over httpx."""
