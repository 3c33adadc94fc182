"""A minimal Django project serving django-oauth-toolkit for the integration tests (see docs/testing-against-dot.md).

Configured entirely through the environment (``GK_DOT_DIR``, ``GK_DOT_OAUTH2``) by `tests.dot_server`.
"""
