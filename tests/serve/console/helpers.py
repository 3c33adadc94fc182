"""Signing in to the console over plain HTTP (the browser tests sign in through the form itself)."""

from __future__ import annotations

import re
import time

import httpx

from grantkeeper.stores import open_store

__all__ = ["csrf_of", "revoke_key", "sign_in"]

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token of the first form on `page`."""
    found = _CSRF.search(page)
    assert found is not None, page[:2000]
    return found.group(1)


def sign_in(http: httpx.Client, key: str) -> httpx.Response:
    """Sign in with API key `key` through the sign-in form; returns the answer to the form's POST."""
    form = http.get("/ui/login")
    assert form.status_code == 200, form.text
    return http.post("/ui/login", data={"csrf": csrf_of(form.text), "key": key})


def revoke_key(store_url: str, name: str) -> None:
    """Revoke API key `name` straight in the store, behind the running services' backs."""
    store = open_store(store_url)
    try:
        store.revoke_api_key(name, now=time.time())
    finally:
        store.close()
