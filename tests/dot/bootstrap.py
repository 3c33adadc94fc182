"""Migrate a fresh database and create the resource owner and a confidential client.

Run once per test session as ``python -m tests.dot.bootstrap USERNAME PASSWORD CLIENT_ID CLIENT_SECRET``
with ``GK_DOT_DIR`` set; every test server starts from a copy of the result. DOT hashes the client secret
on save (``hash_client_secret``), so the caller chooses the plain secret and keeps it.
"""

from __future__ import annotations

import os
import sys

import django


def main(username: str, password: str, client_id: str, client_secret: str) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from oauth2_provider.models import get_application_model

    call_command("migrate", interactive=False, verbosity=0)
    get_user_model().objects.create_user(username=username, password=password, is_staff=True)
    application = get_application_model()
    application.objects.create(
        name="grantkeeper tests",
        client_id=client_id,
        client_secret=client_secret,
        hash_client_secret=True,
        client_type=application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=application.GRANT_AUTHORIZATION_CODE,
        # RFC 8252 section 7.3: a loopback IP redirect URI matches on any port, so the browser's listener can
        # take an ephemeral one; /oauth/callback is grantkeeper serve's hosted connect (tests/serve/connect).
        redirect_uris="http://127.0.0.1/callback http://127.0.0.1/oauth/callback",
        skip_authorization=False,
    )
    # DOT allows one grant type per application: the device flow (RFC 8628) needs its own client. Same secret,
    # client id with a suffix (DotServer.device_client_id).
    application.objects.create(
        name="grantkeeper device tests",
        client_id=f"{client_id}-device",
        client_secret=client_secret,
        hash_client_secret=True,
        client_type=application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=application.GRANT_DEVICE_CODE,
    )
    connection.close()  # the last connection closing checkpoints the WAL: the database is one file to copy


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.dot.settings")
    django.setup()
    main(*sys.argv[1:5])
