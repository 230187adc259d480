"""The benchmarks' baseline view (mounted only with ``ENABLE_BENCHMARK_VIEWS``)."""

from django.urls import path

from benchmarks.views import BareMessageApi

urlpatterns = [path("bench/bare", BareMessageApi.as_view(), name="bench-bare")]
