"""The service's own routes outside the versioned API: health checks and metrics."""

from django.urls import path

from delivery.api import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="prometheus-django-metrics"),
]
