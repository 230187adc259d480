"""Configuration read once from the environment and validated at start-up.

Every variable the service understands is parsed here; a bad value raises
:class:`ConfigError` naming the variable, so start-up stops with a message an
operator can act on instead of failing later in a worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

#: Where the quick start keeps its SQLite file, uploaded payloads and logs.
VAR_DIR = BASE_DIR / "var"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A configuration variable has a value the service cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r} is invalid: expected {expected}")
        self.name = name


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration of one process."""

    debug: bool
    secret_key: str
    allowed_hosts: tuple[str, ...]
    database_url: str
    redis_url: str
    stream_namespace: str
    stream_partitions: int
    stream_max_retries: int
    stream_poll_interval_ms: int
    stream_batch_size: int
    enable_stream_consumers: bool
    metrics_port: int
    enable_prometheus_metrics: bool
    idempotency_window_ms: int
    idempotency_grace_ms: int
    inline_payload_max_bytes: int
    max_content_bytes: int
    batch_max_bytes: int
    throttle_user_rate: str | None
    payload_storage: str
    payload_s3_bucket: str
    enable_benchmark_views: bool
    log_json: bool
    log_level: str


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, f"an integer from {minimum} to {maximum}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, raw, f"an integer from {minimum} to {maximum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name, raw, "one of 1/0, true/false, yes/no, on/off")


def _redis_url(env: Mapping[str, str]) -> str:
    url = env.get("REDIS_URL", "").strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss", "unix"} or (parts.scheme != "unix" and not parts.hostname):
            raise ConfigError("REDIS_URL", url, "a URL like redis://host:6379/0")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError("REDIS_URL", url, "a URL like redis://host:6379/0") from None
        return url
    host = env.get("REDIS_HOST", "127.0.0.1").strip() or "127.0.0.1"
    port = _int(env, "REDIS_PORT", 6379, minimum=1, maximum=65535)
    db = _int(env, "REDIS_STREAM_DB", 0, minimum=0, maximum=15)
    password = env.get("REDIS_PASSWORD", "")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _database_url(env: Mapping[str, str]) -> str:
    default = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    url = env.get("DATABASE_URL", "").strip() or default
    try:
        parsed = dj_database_url.parse(url)
    except Exception:
        raise ConfigError("DATABASE_URL", url, "a URL like postgres://user@host:5432/name") from None
    engine = parsed.get("ENGINE", "")
    if engine not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"}:
        raise ConfigError("DATABASE_URL", url, "a postgres:// or sqlite:/// URL")
    if engine.endswith("postgresql") and not parsed.get("NAME"):
        raise ConfigError("DATABASE_URL", url, "a URL that names a database")
    return url


def _throttle(env: Mapping[str, str]) -> str | None:
    raw = env.get("API_THROTTLE_USER_RATE", "").strip()
    if not raw or raw.lower() == "none":
        return None
    count, _, period = raw.partition("/")
    if not count.isdigit() or not period or period[0] not in "smhd":
        raise ConfigError("API_THROTTLE_USER_RATE", raw, "a DRF rate like 100/s, 1000/min or none")
    return raw


def _payload_storage(env: Mapping[str, str]) -> tuple[str, str]:
    kind = env.get("PAYLOAD_STORAGE", "filesystem").strip().lower() or "filesystem"
    if kind not in {"filesystem", "s3"}:
        raise ConfigError("PAYLOAD_STORAGE", kind, "filesystem or s3")
    bucket = env.get("PAYLOAD_S3_BUCKET", "").strip()
    if kind == "s3":
        if not bucket:
            raise ConfigError("PAYLOAD_S3_BUCKET", bucket, "the bucket name (PAYLOAD_STORAGE=s3)")
        try:
            import storages.backends.s3  # noqa: F401
        except ImportError:
            raise ConfigError(
                "PAYLOAD_STORAGE", kind, "django-storages installed: pip install 'delivery-backbone[s3]'"
            ) from None
    return kind, bucket


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate the configuration from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    inline = _int(env, "INLINE_PAYLOAD_MAX_BYTES", 8 * 1024, minimum=64, maximum=1024 * 1024)
    max_content = _int(env, "MAX_CONTENT_BYTES", 1024 * 1024, minimum=1, maximum=64 * 1024 * 1024)
    log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError("LOG_LEVEL", log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL")
    payload_storage, payload_s3_bucket = _payload_storage(env)
    namespace = env.get("STREAM_NAMESPACE", "delivery").strip()
    if not namespace or any(c in namespace for c in "{}: "):
        raise ConfigError("STREAM_NAMESPACE", namespace, "a non-empty name without braces, colons or spaces")
    return Config(
        debug=_bool(env, "DJANGO_DEBUG", False),
        secret_key=env.get("DJANGO_SECRET_KEY", "insecure-dev-key-change-me-in-production"),
        allowed_hosts=tuple(h.strip() for h in env.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h.strip()),
        database_url=_database_url(env),
        redis_url=_redis_url(env),
        stream_namespace=namespace,
        stream_partitions=_int(env, "STREAM_PARTITIONS", 16, minimum=1, maximum=1024),
        stream_max_retries=_int(env, "STREAM_MAX_RETRIES", 3, minimum=0, maximum=1000),
        stream_poll_interval_ms=_int(env, "STREAM_POLL_INTERVAL_MS", 5000, minimum=1, maximum=600_000),
        stream_batch_size=_int(env, "STREAM_BATCH_SIZE", 10, minimum=1, maximum=1000),
        enable_stream_consumers=_bool(env, "ENABLE_STREAM_CONSUMERS", True),
        metrics_port=_int(env, "METRICS_PORT", 9090, minimum=0, maximum=65535),
        enable_prometheus_metrics=_bool(env, "ENABLE_PROMETHEUS_METRICS", True),
        idempotency_window_ms=_int(env, "IDEMPOTENCY_WINDOW_MS", 1000, minimum=1, maximum=86_400_000),
        idempotency_grace_ms=_int(env, "IDEMPOTENCY_GRACE_MS", 60_000, minimum=1_000, maximum=86_400_000),
        inline_payload_max_bytes=inline,
        max_content_bytes=max_content,
        batch_max_bytes=_int(
            env, "BATCH_MAX_BYTES", 8 * 1024 * 1024, minimum=1024, maximum=256 * 1024 * 1024
        ),
        throttle_user_rate=_throttle(env),
        payload_storage=payload_storage,
        payload_s3_bucket=payload_s3_bucket,
        enable_benchmark_views=_bool(env, "ENABLE_BENCHMARK_VIEWS", False),
        log_json=_bool(env, "LOG_JSON", True),
        log_level=log_level,
    )
