"""Django settings for the test authorization server.

``GK_DOT_DIR`` is the server's own temporary directory (SQLite database, token-endpoint log);
``GK_DOT_OAUTH2`` is a JSON object merged over the OAUTH2_PROVIDER defaults below, which is how each
test server gets its rotation, grace period, reuse protection and access-token lifetime.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

DOT_DIR = Path(os.environ["GK_DOT_DIR"])

SECRET_KEY = secrets.token_urlsafe(50)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.dot.urls"
USE_TZ = True
LOGIN_URL = "/admin/login/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "oauth2_provider",
]

MIDDLEWARE = [
    "tests.dot.views.TokenCallLog",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# One SQLite file per server. IMMEDIATE transactions and a long busy timeout let the server's threads write
# one at a time instead of failing with "database is locked" under the concurrency test.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DOT_DIR / "db.sqlite3",
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# The strength of password hashing is not under test; DOT checks the (hashed) client secret on every token
# request, and PBKDF2's default work factor would make each refresh cost a large share of a CPU second.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

OAUTH2_PROVIDER = {
    "SCOPES": {"read": "Read scope", "write": "Write scope"},
    "PKCE_REQUIRED": True,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "REFRESH_TOKEN_REUSE_PROTECTION": False,
    "ACCESS_TOKEN_EXPIRE_SECONDS": 3600,
    # RFC 8628's default is 5 s between device flow polls; tests that wait for a person to approve poll faster.
    "DEVICE_FLOW_INTERVAL": 1,
    "OAUTH2_VALIDATOR_CLASS": "tests.dot.views.DeviceAwareValidator",
    **json.loads(os.environ.get("GK_DOT_OAUTH2", "{}")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
