"""Django settings: wiring only. Values come from :mod:`messaging_project.config`."""

from __future__ import annotations

import logging
import sys
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from messaging_project.config import VAR_DIR, ConfigError, load_config

try:
    CONFIG = load_config()
except ConfigError as error:  # stop start-up with a message that names the variable
    raise ImproperlyConfigured(f"Bad configuration: {error}") from None

DEBUG = CONFIG.debug
SECRET_KEY = CONFIG.secret_key
ALLOWED_HOSTS = list(CONFIG.allowed_hosts)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "delivery",
    # Tooling, not the domain: ``manage.py benchmark`` and its baseline view.
    "benchmarks",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "delivery.middleware.CorrelationIdMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "messaging_project.urls"
WSGI_APPLICATION = "messaging_project.wsgi.application"
ASGI_APPLICATION = "messaging_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database() -> dict[str, Any]:
    db: dict[str, Any] = dict(dj_database_url.parse(CONFIG.database_url, conn_max_age=60))
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # The quick start runs API and workers on one SQLite file: WAL lets readers run beside
        # the writer, IMMEDIATE transactions and a busy timeout make writers queue, not fail.
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        db["CONN_MAX_AGE"] = 0
        db["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    else:
        # No health check (a "SELECT 1" round trip before every request's first query):
        # ingress reconnects once on a broken connection, other views answer 503 once.
        db["CONN_HEALTH_CHECKS"] = False
        db.setdefault("OPTIONS", {})["connect_timeout"] = 5
    return db


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# WhiteNoise serves STATIC_ROOT (filled by collectstatic) and warns when it is missing.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    # Offloaded message payloads: the filesystem, or S3 with PAYLOAD_STORAGE=s3.
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "payloads": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "payloads")},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
if CONFIG.payload_storage == "s3":  # credentials: the usual AWS_* variables, read by boto3
    STORAGES["payloads"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": CONFIG.payload_s3_bucket, "location": "payloads"},
    }

REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "delivery.api.auth.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "delivery.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": (
        ["rest_framework.throttling.UserRateThrottle"] if CONFIG.throttle_user_rate else []
    ),
    "DEFAULT_THROTTLE_RATES": {"user": CONFIG.throttle_user_rate},
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "Delivery backbone API",
    "DESCRIPTION": "Durable, ordered, idempotent chat message delivery.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Delivery backbone -------------------------------------------------------------------
REDIS_URL = CONFIG.redis_url
STREAM_NAMESPACE = CONFIG.stream_namespace
STREAM_PARTITIONS = CONFIG.stream_partitions
STREAM_MAX_RETRIES = CONFIG.stream_max_retries
STREAM_POLL_INTERVAL_MS = CONFIG.stream_poll_interval_ms
STREAM_BATCH_SIZE = CONFIG.stream_batch_size
ENABLE_STREAM_CONSUMERS = CONFIG.enable_stream_consumers
METRICS_PORT = CONFIG.metrics_port
ENABLE_PROMETHEUS_METRICS = CONFIG.enable_prometheus_metrics
IDEMPOTENCY_WINDOW_MS = CONFIG.idempotency_window_ms
#: How long Redis still answers a client key after its message was persisted (the database
#: answers from then on; a repeat racing with the persistence is answered either way).
IDEMPOTENCY_GRACE_MS = CONFIG.idempotency_grace_ms
INLINE_PAYLOAD_MAX_BYTES = CONFIG.inline_payload_max_bytes
MAX_CONTENT_BYTES = CONFIG.max_content_bytes
#: Serves the bare baseline view that ``manage.py benchmark ingress`` compares against.
ENABLE_BENCHMARK_VIEWS = CONFIG.enable_benchmark_views
#: Largest body of ``POST /api/v1/messages/batch`` (413 over it).
BATCH_MAX_BYTES = CONFIG.batch_max_bytes
# The request body may hold the content JSON-escaped (up to 6 bytes a byte) plus the other
# fields; a batch, up to BATCH_MAX_BYTES.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, CONFIG.max_content_bytes * 6 + 65_536, BATCH_MAX_BYTES + 65_536)

# Python warnings go through logging too, so every line a process writes is JSON.
logging.captureWarnings(True)

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "delivery.logging.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": sys.stderr,
            "formatter": "json" if CONFIG.log_json else "plain",
        },
    },
    "root": {"handlers": ["console"], "level": CONFIG.log_level},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "dramatiq": {"level": "WARNING" if CONFIG.log_level == "INFO" else CONFIG.log_level},
    },
}
