"""Routes: DOT under /o/, the admin (for its login page), a protected resource and a health check."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from tests.dot import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("api/resource/", views.resource, name="resource"),
    path("healthz/", views.healthz, name="healthz"),
]
