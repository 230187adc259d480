"""Django settings: wiring only. Values come from :mod:`messaging_project.config`."""

from __future__ import annotations

import logging
import sys
from typing import Any

import dj_database_url

from messaging_project.config import VAR_DIR, WORKER_TIMEOUT_MS, BadConfiguration, ConfigError, load_config

try:
    CONFIG = load_config()
except ConfigError as error:  # stop start-up with a message that names the variable
    raise BadConfiguration(f"Bad configuration: {error}") from None

DEBUG = CONFIG.debug
SECRET_KEY = CONFIG.secret_key
ALLOWED_HOSTS = list(CONFIG.allowed_hosts)
CSRF_TRUSTED_ORIGINS = list(CONFIG.csrf_trusted_origins)

# HTTPS, for a deployment behind TLS (the quick start serves plain HTTP on loopback).
SECURE_SSL_REDIRECT = CONFIG.secure_ssl_redirect
# Probes and scrapers speak plain HTTP to the process itself.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = CONFIG.secure_cookies
SECURE_HSTS_SECONDS = CONFIG.secure_hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = CONFIG.secure_hsts_include_subdomains
SECURE_HSTS_PRELOAD = CONFIG.secure_hsts_preload
SECURE_PROXY_SSL_HEADER = CONFIG.secure_proxy_ssl_header

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
    # Swagger UI's JavaScript and CSS, served as static files (no CDN: the docs work offline).
    "drf_spectacular_sidecar",
    "delivery",
    # Tooling, not the domain: ``manage.py benchmark`` and its baseline view.
    "benchmarks",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "delivery.api.middleware.KnownMethodsOnly",
    "delivery.api.middleware.JsonErrors",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "delivery.login_throttle.AdminLoginThrottle",
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


#: TCP keepalive of database connections: first probe after this many idle seconds, then
#: one a second; three unanswered probes drop the connection.
DATABASE_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3}

#: ``tcp_user_timeout``: a connection whose sent data goes unacknowledged this long is
#: dropped, in milliseconds (the API server and the workers use their answer deadline).
DEFAULT_TCP_USER_TIMEOUT_MS = 10_000


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
        # Django's backend, able to bound every answer: the API server and the workers turn
        # that on (messaging_project.postgresql.bound_answers); commands such as migrate wait.
        db["ENGINE"] = "messaging_project.postgresql"
        db.setdefault("OPTIONS", {}).update(
            connect_timeout=CONFIG.database_connect_timeout_s,
            tcp_user_timeout=DEFAULT_TCP_USER_TIMEOUT_MS,
            **DATABASE_KEEPALIVES,
        )
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
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "delivery.api.errors.exception_handler",
    # Counted per API process (Django's default, in-memory cache).
    "DEFAULT_THROTTLE_CLASSES": [
        *(["rest_framework.throttling.UserRateThrottle"] if CONFIG.throttle_user_rate else []),
        *(["rest_framework.throttling.AnonRateThrottle"] if CONFIG.throttle_anon_rate else []),
    ],
    "DEFAULT_THROTTLE_RATES": {"user": CONFIG.throttle_user_rate, "anon": CONFIG.throttle_anon_rate},
    "DEFAULT_PARSER_CLASSES": ["delivery.api.parsers.JSONParser"],
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "Delivery backbone API",
    "DESCRIPTION": "Durable, ordered, idempotent chat message delivery.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Delivery backbone -------------------------------------------------------------------
#: The server's statement timeout in the API server and the workers (0: none); their
#: clients give up on an answer a second later (messaging_project.postgresql).
DATABASE_STATEMENT_TIMEOUT_MS = CONFIG.database_statement_timeout_ms
REDIS_URL = CONFIG.redis_url
REDIS_SOCKET_TIMEOUT_MS = CONFIG.redis_socket_timeout_ms
REDIS_CONNECT_TIMEOUT_MS = CONFIG.redis_connect_timeout_ms
#: ``REDIS_URL`` names one node of a Redis Cluster: every Redis user builds a cluster client.
REDIS_CLUSTER = CONFIG.redis_cluster
#: Replicas that must confirm each enqueue (``WAIT``) before ingress acknowledges it.
REDIS_MIN_REPLICAS_ACK = CONFIG.redis_min_replicas_ack
#: Dramatiq's worker timeout (``runworkers``): REDIS_SOCKET_TIMEOUT_MS is validated against it.
WORKER_TIMEOUT_MS = WORKER_TIMEOUT_MS
STREAM_NAMESPACE = CONFIG.stream_namespace
STREAM_PARTITIONS = CONFIG.stream_partitions
STREAM_MAX_RETRIES = CONFIG.stream_max_retries
STREAM_POLL_INTERVAL_MS = CONFIG.stream_poll_interval_ms
STREAM_BATCH_SIZE = CONFIG.stream_batch_size
ENABLE_STREAM_CONSUMERS = CONFIG.enable_stream_consumers
METRICS_PORT = CONFIG.metrics_port
METRICS_BIND_ADDRESS = CONFIG.metrics_bind_address
#: Who may read the API's ``/metrics`` (client addresses; see delivery/api/metrics.py).
METRICS_ALLOWED_NETWORKS = CONFIG.metrics_allowed_networks
#: Failed admin logins allowed per client address and per username (delivery/login_throttle.py).
ADMIN_LOGIN_FAILURE_RATE = CONFIG.admin_login_failure_rate
#: Content bytes one page of a conversation's messages holds, about (at least one message).
MESSAGE_PAGE_MAX_BYTES = CONFIG.message_page_max_bytes
DEAD_LETTER_REDRIVE_RATE = CONFIG.dead_letter_redrive_rate
DEAD_LETTER_RETENTION_DAYS = CONFIG.dead_letter_retention_days
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
