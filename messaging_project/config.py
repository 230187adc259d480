"""Configuration read once from the environment and validated at start-up.

Every variable the service understands is parsed here; a bad value raises
:class:`ConfigError` naming the variable, so start-up stops with a message an
operator can act on instead of failing later in a worker.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

#: Where the quick start keeps its SQLite file, uploaded payloads and logs.
VAR_DIR = BASE_DIR / "var"

#: The quick start's secret key, generated once (see :func:`_secret_key`).
QUICK_START_SECRET_KEY_FILE = VAR_DIR / "secret_key"

#: The key used when DJANGO_DEBUG is on and none is given; refused with DEBUG off (so no
#: secret: bandit B105 is a false alarm).
DEBUG_SECRET_KEY = "insecure-dev-key-change-me-in-production"  # nosec B105

#: What ``manage.py check --deploy`` asks of a secret key (Django's W009).
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE_CHARACTERS = 5

#: Dramatiq's ``worker_timeout`` as ``runworkers`` runs it: the longest one call of the
#: consumer waits, and so the longest blocking read it sends to Redis, in milliseconds.
WORKER_TIMEOUT_MS = 1000

#: How much longer than the longest blocking read a Redis socket timeout must be, in ms.
SOCKET_TIMEOUT_MARGIN_MS = 500

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_RATE = re.compile(r"^[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


class ConfigError(Exception):
    """A configuration variable has a value the service cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r} is invalid: expected {expected}")
        self.name = name


class BadConfiguration(ImproperlyConfigured):
    """Start-up stopped on a :class:`ConfigError` (``manage.py`` says it in one line)."""


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration of one process."""

    debug: bool
    secret_key: str
    allowed_hosts: tuple[str, ...]
    csrf_trusted_origins: tuple[str, ...]
    secure_ssl_redirect: bool
    secure_cookies: bool
    secure_hsts_seconds: int
    secure_hsts_include_subdomains: bool
    secure_hsts_preload: bool
    secure_proxy_ssl_header: tuple[str, str] | None
    database_url: str
    database_connect_timeout_s: int
    database_statement_timeout_ms: int
    redis_url: str
    redis_socket_timeout_ms: int
    redis_connect_timeout_ms: int
    redis_cluster: bool
    redis_min_replicas_ack: int
    stream_namespace: str
    stream_partitions: int
    stream_max_retries: int
    stream_poll_interval_ms: int
    stream_batch_size: int
    enable_stream_consumers: bool
    metrics_port: int
    metrics_bind_address: str
    metrics_allowed_networks: tuple[str, ...]
    enable_prometheus_metrics: bool
    idempotency_window_ms: int
    idempotency_grace_ms: int
    inline_payload_max_bytes: int
    max_content_bytes: int
    batch_max_bytes: int
    throttle_user_rate: str | None
    throttle_anon_rate: str | None
    admin_login_failure_rate: str | None
    message_page_max_bytes: int
    dead_letter_redrive_rate: int
    dead_letter_retention_days: int
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


def _rate(env: Mapping[str, str], name: str, default: str) -> str | None:
    """A DRF rate (``100/s``, ``30/min``), or None for ``none``."""
    raw = env.get(name, default).strip()
    if raw.lower() in {"", "none"}:
        return None
    if not _RATE.match(raw):
        raise ConfigError(name, raw, "a rate like 100/s, 30/min, 10/h or none")
    return raw


def _secret_key(env: Mapping[str, str], *, debug: bool, quick_start: bool) -> str:
    """``DJANGO_SECRET_KEY``; with DEBUG off it must be a real key (never the built-in one).

    Without one, the quick start (embedded defaults: no ``DATABASE_URL``, one machine)
    generates a random key once into ``var/secret_key``; a deployment with a database of
    its own must give one, since its processes may run on several hosts.
    """
    key = env.get("DJANGO_SECRET_KEY", "").strip()
    if not key:
        if quick_start:
            return _quick_start_secret_key()
        if debug:
            return DEBUG_SECRET_KEY
    elif debug or (
        key != DEBUG_SECRET_KEY
        and len(key) >= SECRET_KEY_MIN_LENGTH
        and len(set(key)) >= SECRET_KEY_MIN_UNIQUE_CHARACTERS
        and not key.startswith("django-insecure-")
    ):
        return key
    shown = f"<{len(key)} characters>" if key else ""  # never the key itself
    raise ConfigError(
        "DJANGO_SECRET_KEY",
        shown,
        f"a random key of at least {SECRET_KEY_MIN_LENGTH} characters when DJANGO_DEBUG is off "
        "(make one: python -c 'import secrets; print(secrets.token_urlsafe(50))')",
    )


def _quick_start_secret_key() -> str:
    """The quick start's key: read from ``var/secret_key``, generated there (mode 0600,
    created atomically, so concurrent first starts agree) when missing."""
    path = QUICK_START_SECRET_KEY_FILE
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(SECRET_KEY_MIN_LENGTH))
        try:
            os.link(draft, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def _hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
    return tuple(h.strip() for h in raw.split(",") if h.strip())


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("DJANGO_CSRF_TRUSTED_ORIGINS", "")
    origins = tuple(o.strip() for o in raw.split(",") if o.strip())
    for origin in origins:
        if not origin.startswith(("https://", "http://")):
            raise ConfigError("DJANGO_CSRF_TRUSTED_ORIGINS", raw, "origins like https://chat.example.com")
    return origins


def _proxy_ssl_header(env: Mapping[str, str]) -> tuple[str, str] | None:
    """``X-Forwarded-Proto: https`` → Django's ``("HTTP_X_FORWARDED_PROTO", "https")``."""
    raw = env.get("DJANGO_SECURE_PROXY_SSL_HEADER", "").strip()
    if not raw:
        return None
    name, _, value = raw.partition(":")
    if not _HEADER_NAME.match(name.strip()) or not value.strip():
        raise ConfigError(
            "DJANGO_SECURE_PROXY_SSL_HEADER", raw, "a header and value like X-Forwarded-Proto: https"
        )
    return "HTTP_" + name.strip().upper().replace("-", "_"), value.strip()


def _bind_address(env: Mapping[str, str]) -> str:
    raw = env.get("METRICS_BIND_ADDRESS", "127.0.0.1").strip() or "127.0.0.1"
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ConfigError(
            "METRICS_BIND_ADDRESS", raw, "an IP address like 127.0.0.1, 0.0.0.0 or ::"
        ) from None
    return raw


def _networks(env: Mapping[str, str]) -> tuple[str, ...]:
    """``METRICS_ALLOWED_NETWORKS``: addresses or CIDR networks, or ``*`` for anyone."""
    raw = env.get("METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1").strip()
    if raw == "*":
        return ("0.0.0.0/0", "::/0")
    networks = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(
                "METRICS_ALLOWED_NETWORKS", raw, "addresses or networks like 127.0.0.0/8,10.0.0.0/8, or *"
            ) from None
    return tuple(networks)


def _cluster_url(url: str, cluster: bool) -> str:
    """In cluster mode ``REDIS_URL`` names any one node, database 0 (a cluster has no other)."""
    if not cluster:
        return url
    parts = urlsplit(url)
    if parts.scheme == "unix":
        raise ConfigError(
            "REDIS_URL", url, "a redis:// or rediss:// URL of any cluster node (REDIS_CLUSTER is on)"
        )
    if parts.path.strip("/") not in {"", "0"}:
        raise ConfigError("REDIS_URL", url, "database 0 or none: a Redis Cluster has only database 0")
    return url


def _redis_socket_timeout_ms(env: Mapping[str, str], poll_interval_ms: int) -> int:
    """``REDIS_SOCKET_TIMEOUT_MS``: longer than the consumer's longest blocking read
    (``STREAM_POLL_INTERVAL_MS``, at most Dramatiq's worker timeout) by a margin, or an idle
    consumer would time out on every wait."""
    floor = min(poll_interval_ms, WORKER_TIMEOUT_MS) + SOCKET_TIMEOUT_MARGIN_MS
    value = _int(env, "REDIS_SOCKET_TIMEOUT_MS", 2000, minimum=100, maximum=600_000)
    if value < floor:
        raise ConfigError(
            "REDIS_SOCKET_TIMEOUT_MS",
            str(value),
            f"at least {floor} (the longest blocking read, {floor - SOCKET_TIMEOUT_MARGIN_MS} ms, "
            f"plus {SOCKET_TIMEOUT_MARGIN_MS} ms)",
        )
    return value


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
    debug = _bool(env, "DJANGO_DEBUG", False)
    poll_interval_ms = _int(env, "STREAM_POLL_INTERVAL_MS", 5000, minimum=1, maximum=600_000)
    statement_timeout_ms = _int(env, "DATABASE_STATEMENT_TIMEOUT_MS", 2000, minimum=0, maximum=86_400_000)
    if 0 < statement_timeout_ms < 100:
        raise ConfigError(
            "DATABASE_STATEMENT_TIMEOUT_MS", str(statement_timeout_ms), "0 (off) or at least 100"
        )
    database_url = _database_url(env)
    cluster = _bool(env, "REDIS_CLUSTER", False)
    return Config(
        debug=debug,
        secret_key=_secret_key(env, debug=debug, quick_start=not env.get("DATABASE_URL", "").strip()),
        allowed_hosts=_hosts(env),
        csrf_trusted_origins=_origins(env),
        secure_ssl_redirect=_bool(env, "DJANGO_SECURE_SSL_REDIRECT", False),
        secure_cookies=_bool(env, "DJANGO_SECURE_COOKIES", False),
        secure_hsts_seconds=_int(env, "DJANGO_SECURE_HSTS_SECONDS", 0, minimum=0, maximum=2 * 31_536_000),
        secure_hsts_include_subdomains=_bool(env, "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False),
        secure_hsts_preload=_bool(env, "DJANGO_SECURE_HSTS_PRELOAD", False),
        secure_proxy_ssl_header=_proxy_ssl_header(env),
        database_url=database_url,
        # libpq counts whole seconds and waits at least 2.
        database_connect_timeout_s=_int(env, "DATABASE_CONNECT_TIMEOUT_S", 2, minimum=2, maximum=600),
        database_statement_timeout_ms=statement_timeout_ms,
        redis_url=_cluster_url(_redis_url(env), cluster),
        redis_cluster=cluster,
        # WAIT for this many replicas after each enqueue (0: replication stays asynchronous).
        redis_min_replicas_ack=_int(env, "REDIS_MIN_REPLICAS_ACK", 0, minimum=0, maximum=16),
        redis_socket_timeout_ms=_redis_socket_timeout_ms(env, poll_interval_ms),
        redis_connect_timeout_ms=_int(env, "REDIS_CONNECT_TIMEOUT_MS", 2000, minimum=100, maximum=600_000),
        stream_namespace=namespace,
        stream_partitions=_int(env, "STREAM_PARTITIONS", 16, minimum=1, maximum=1024),
        stream_max_retries=_int(env, "STREAM_MAX_RETRIES", 3, minimum=0, maximum=1000),
        stream_poll_interval_ms=poll_interval_ms,
        stream_batch_size=_int(env, "STREAM_BATCH_SIZE", 10, minimum=1, maximum=1000),
        enable_stream_consumers=_bool(env, "ENABLE_STREAM_CONSUMERS", True),
        metrics_port=_int(env, "METRICS_PORT", 9090, minimum=0, maximum=65535),
        metrics_bind_address=_bind_address(env),
        metrics_allowed_networks=_networks(env),
        enable_prometheus_metrics=_bool(env, "ENABLE_PROMETHEUS_METRICS", True),
        idempotency_window_ms=_int(env, "IDEMPOTENCY_WINDOW_MS", 1000, minimum=1, maximum=86_400_000),
        idempotency_grace_ms=_int(env, "IDEMPOTENCY_GRACE_MS", 60_000, minimum=1_000, maximum=86_400_000),
        inline_payload_max_bytes=inline,
        max_content_bytes=max_content,
        batch_max_bytes=_int(
            env, "BATCH_MAX_BYTES", 8 * 1024 * 1024, minimum=1024, maximum=256 * 1024 * 1024
        ),
        throttle_user_rate=_rate(env, "API_THROTTLE_USER_RATE", "50/s"),
        throttle_anon_rate=_rate(env, "API_THROTTLE_ANON_RATE", "60/min"),
        admin_login_failure_rate=_rate(env, "ADMIN_LOGIN_FAILURE_RATE", "10/h"),
        message_page_max_bytes=_int(
            env, "MESSAGE_PAGE_MAX_BYTES", 1024 * 1024, minimum=1024, maximum=256 * 1024 * 1024
        ),
        # Dead letters requeued or discarded per second by a bulk redrive (SQS caps its
        # redrive at 500/s by default for the same reason: not to swamp the consumers).
        dead_letter_redrive_rate=_int(env, "DEAD_LETTER_REDRIVE_RATE", 500, minimum=1, maximum=1_000_000),
        # Days a requeued or discarded dead letter's row is kept (0: for ever).
        dead_letter_retention_days=_int(env, "DEAD_LETTER_RETENTION_DAYS", 30, minimum=0, maximum=36_500),
        payload_storage=payload_storage,
        payload_s3_bucket=payload_s3_bucket,
        enable_benchmark_views=_bool(env, "ENABLE_BENCHMARK_VIEWS", False),
        log_json=_bool(env, "LOG_JSON", True),
        log_level=log_level,
    )
