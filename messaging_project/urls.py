"""URL wiring: the API, health checks, metrics, schema and admin."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from delivery.api import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("delivery.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="prometheus-django-metrics"),
]

if settings.ENABLE_BENCHMARK_VIEWS:
    from benchmarks.views import BareMessageApi

    urlpatterns.append(path("bench/bare", BareMessageApi.as_view(), name="bench-bare"))
