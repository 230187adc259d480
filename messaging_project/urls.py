"""URL wiring: the API, health checks, metrics, schema and admin.

The apps' routes are included by module name, so the project imports none of its apps."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("delivery.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("delivery.urls")),
]

if settings.ENABLE_BENCHMARK_VIEWS:
    urlpatterns.append(path("", include("benchmarks.urls")))
