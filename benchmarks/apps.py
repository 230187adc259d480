"""App configuration."""

from django.apps import AppConfig


class BenchmarksConfig(AppConfig):
    """The benchmarks: ``manage.py benchmark`` and the ingress baseline's view."""

    name = "benchmarks"
