"""The test server's own parts: a DOT-protected resource, a health check, and a log of token-endpoint calls."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from oauth2_provider.models import get_access_token_model
from oauth2_provider.oauth2_backends import get_oauthlib_core

_log_lock = threading.Lock()
LOGGED_PATHS = ("/o/token/", "/o/revoke_token/")


def resource(request: HttpRequest) -> HttpResponse:
    """200 for an access token DOT accepts (DOT decides, through its OAuthLibCore); otherwise 401 with why the
    token is not accepted: ``unknown`` (DOT no longer has it: revoked, or replaced by a refresh) or ``expired``."""
    valid, oauth_request = get_oauthlib_core().verify_request(request, scopes=["read"])
    if valid:
        return JsonResponse({"user": oauth_request.user.get_username()})
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    checksum = hashlib.sha256(token.encode()).hexdigest()
    found = get_access_token_model().objects.filter(token_checksum=checksum).first()
    reason = "unknown" if found is None else "expired" if found.is_expired() else "rejected"
    return JsonResponse({"error": "invalid_token", "reason": reason}, status=401)


def healthz(request: HttpRequest) -> HttpResponse:
    """Ready once the database answers."""
    return JsonResponse({"users": get_user_model().objects.count()})


class TokenCallLog:
    """Append one JSON line per call to the token and revocation endpoints: what DOT saw (no token values)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.path = settings.DOT_DIR / "token-calls.jsonl"

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path not in LOGGED_PATHS:
            return self.get_response(request)
        grant_type = request.POST.get("grant_type")
        response = self.get_response(request)
        error = None
        if response.status_code >= 400:
            try:
                error = json.loads(response.content).get("error")
            except ValueError:
                error = "unparsable"
        line = json.dumps({"path": request.path, "grant_type": grant_type, "status": response.status_code,
                           "error": error})  # fmt: skip
        with _log_lock, self.path.open("a", encoding="utf-8") as log:
            log.write(line + "\n")
        return response
