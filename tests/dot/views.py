"""The test server's own parts: a DOT-protected resource, a health check, and a log of token-endpoint calls."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from oauth2_provider.models import get_access_token_model, get_device_grant_model
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.views import DeviceAuthorizationView

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


class DeviceAuthorization(DeviceAuthorizationView):
    """DOT 3.4.1's device authorization endpoint with oauthlib 4: oauthlib 4 adds ``scope`` to its answer, and DOT
    passes the whole answer to ``DeviceCodeResponse``, which has no such field, so every request that resolves a
    scope fails with HTTP 500. DOT takes the scope from the request itself; dropping it from oauthlib's answer
    before DOT reads it restores DOT's own behaviour (the answer it sends never had ``scope``)."""

    def create_device_authorization_response(self, request: HttpRequest) -> tuple[dict[str, str], object, int]:
        headers, answer, status = super().create_device_authorization_response(request)
        if status == 200 and isinstance(answer, dict):
            answer.pop("scope", None)
        return headers, answer, status


class DeviceAwareValidator(OAuth2Validator):
    """DOT 3.4.1's validator with oauthlib 4: oauthlib 4 asks the validator about a polled device code
    (``validate_device_code``), a hook DOT 3.4.1 predates, so every device_code token request failed with HTTP
    500. DOT's token view has already answered pending, denied and expired codes itself; this answers from DOT's
    own DeviceGrant row, and for an approved code puts its user and scopes on the request, as oauthlib asks."""

    def validate_device_code(
        self, client_id: str | None, code: str, request: Any, *args: Any, **kwargs: Any
    ) -> str | None:
        model = get_device_grant_model()
        grant = model.objects.filter(device_code=code, client_id=request.client.client_id).first()
        if grant is None:
            return None
        if grant.is_expired():
            return "expired_token"
        if grant.status == model.AUTHORIZED:
            request.user = grant.user
            request.scopes = grant.scope.split()
            return "authorized"
        return {model.DENIED: "access_denied", model.AUTHORIZATION_PENDING: "authorization_pending"}.get(grant.status)
