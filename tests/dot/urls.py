"""Routes: DOT under /o/, its RFC 8414 metadata at the root as well (the well-known URL of issuer ``/o`` is
``/.well-known/oauth-authorization-server/o``, which DOT's docs say prefixed deployments mount), the admin (for
its login page), a protected resource, a health check, and a fix for DOT's device authorization endpoint."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from oauth2_provider.urls import metadata_urlpatterns

from tests.dot import views

urlpatterns = [
    path("admin/", admin.site.urls),
    # Before DOT's own routes, so it wins: see views.DeviceAuthorization.
    path("o/device-authorization/", views.DeviceAuthorization.as_view(), name="device-authorization"),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("", include(metadata_urlpatterns)),
    path("api/resource/", views.resource, name="resource"),
    path("healthz/", views.healthz, name="healthz"),
]
