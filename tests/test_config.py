"""Configuration: read once from the environment; a bad value names its variable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from messaging_project import config
from messaging_project.config import ConfigError, load_config

#: What a deployment with a database of its own gives (DEBUG off).
DEPLOYED = {"DATABASE_URL": "postgres://app@db:5432/chat", "DJANGO_SECRET_KEY": "k3y-Q9" * 9}


@pytest.fixture(autouse=True)
def quick_start_key_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The quick start's generated key goes to a temporary ``var/``, not the checkout's."""
    monkeypatch.setattr(config, "VAR_DIR", tmp_path / "var")
    monkeypatch.setattr(config, "QUICK_START_SECRET_KEY_FILE", tmp_path / "var" / "secret_key")
    return tmp_path / "var" / "secret_key"


def test_defaults_need_no_environment() -> None:
    config = load_config({})
    assert (config.stream_partitions, config.stream_max_retries, config.stream_batch_size) == (16, 3, 10)
    assert config.stream_poll_interval_ms == 5000 and config.idempotency_window_ms == 1000
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.database_url.startswith("sqlite:///") and config.payload_storage == "filesystem"


def test_redis_parts_compose_a_url_as_the_seed_names_them() -> None:
    config = load_config(
        {"REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_PASSWORD": "p@ss", "REDIS_STREAM_DB": "1"}
    )
    assert config.redis_url == "redis://:p%40ss@cache:6380/1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAM_PARTITIONS", "abc"),
        ("STREAM_PARTITIONS", "0"),
        ("STREAM_MAX_RETRIES", "-1"),
        ("STREAM_BATCH_SIZE", "1.5"),
        ("ENABLE_STREAM_CONSUMERS", "maybe"),
        ("METRICS_PORT", "70000"),
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "redis://host:port/0"),
        ("API_THROTTLE_USER_RATE", "fast"),
        ("PAYLOAD_STORAGE", "ftp"),
        ("LOG_LEVEL", "LOUD"),
        ("REDIS_SOCKET_TIMEOUT_MS", "1000"),
        ("REDIS_CONNECT_TIMEOUT_MS", "soon"),
        ("DATABASE_CONNECT_TIMEOUT_S", "1"),
        ("DATABASE_STATEMENT_TIMEOUT_MS", "50"),
        ("METRICS_BIND_ADDRESS", "localhost"),
        ("METRICS_ALLOWED_NETWORKS", "10.0.0.0/33"),
        ("API_THROTTLE_ANON_RATE", "fast"),
        ("ADMIN_LOGIN_FAILURE_RATE", "10/fortnight"),
        ("DJANGO_SECURE_PROXY_SSL_HEADER", "https"),
        ("DJANGO_SECURE_HSTS_SECONDS", "-1"),
        ("DJANGO_CSRF_TRUSTED_ORIGINS", "chat.example.com"),
        ("MESSAGE_PAGE_MAX_BYTES", "10"),
        ("REDIS_CLUSTER", "sometimes"),
        ("REDIS_MIN_REPLICAS_ACK", "-1"),
        ("REDIS_MIN_REPLICAS_ACK", "all"),
    ],
)
def test_a_bad_value_is_refused_with_the_variable_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        load_config({name: value})
    assert raised.value.name == name


def test_cluster_mode_takes_any_node_at_database_0_and_waits_for_replicas_only_when_asked() -> None:
    assert (load_config({}).redis_cluster, load_config({}).redis_min_replicas_ack) == (False, 0)
    config = load_config(
        {"REDIS_URL": "redis://node-2:7001", "REDIS_CLUSTER": "yes", "REDIS_MIN_REPLICAS_ACK": "1"}
    )
    assert (config.redis_url, config.redis_cluster, config.redis_min_replicas_ack) == (
        "redis://node-2:7001",
        True,
        1,
    )
    for url in ("redis://node-2:7001/3", "unix:///run/redis.sock"):
        with pytest.raises(ConfigError, match="REDIS_URL"):
            load_config({"REDIS_URL": url, "REDIS_CLUSTER": "true"})


def test_s3_payloads_need_a_bucket() -> None:
    with pytest.raises(ConfigError, match="PAYLOAD_S3_BUCKET"):
        load_config({"PAYLOAD_STORAGE": "s3"})


def test_defaults_are_safe_for_production() -> None:
    loaded = load_config(DEPLOYED)
    assert loaded.allowed_hosts == ("localhost", "127.0.0.1", "[::1]")
    assert (loaded.throttle_user_rate, loaded.throttle_anon_rate) == ("50/s", "60/min")
    assert loaded.admin_login_failure_rate == "10/h"
    assert loaded.metrics_bind_address == "127.0.0.1"
    assert loaded.metrics_allowed_networks == ("127.0.0.0/8", "::1/128")
    assert (loaded.redis_socket_timeout_ms, loaded.redis_connect_timeout_ms) == (2000, 2000)
    assert (loaded.database_connect_timeout_s, loaded.database_statement_timeout_ms) == (2, 2000)


def test_the_redis_socket_timeout_must_outlast_the_longest_blocking_read() -> None:
    assert load_config({"STREAM_POLL_INTERVAL_MS": "200", "REDIS_SOCKET_TIMEOUT_MS": "700"})
    with pytest.raises(
        ConfigError, match=r"REDIS_SOCKET_TIMEOUT_MS='1499' is invalid: expected at least 1500"
    ):
        load_config({"REDIS_SOCKET_TIMEOUT_MS": "1499"})


@pytest.mark.parametrize(
    "key",
    [
        None,
        "insecure-dev-key-change-me-in-production",
        "short-key",
        "a" * 60,
        "django-insecure-" + "x1y2z3" * 9,
    ],
)
def test_with_debug_off_a_deployment_refuses_a_missing_default_or_weak_secret_key(key: str | None) -> None:
    env = {"DATABASE_URL": DEPLOYED["DATABASE_URL"]}
    if key is not None:
        env["DJANGO_SECRET_KEY"] = key
    with pytest.raises(ConfigError) as raised:
        load_config(env)
    assert raised.value.name == "DJANGO_SECRET_KEY"
    message = str(raised.value)
    assert message.startswith("DJANGO_SECRET_KEY=") and "\n" not in message
    assert key is None or key not in message  # the key itself is never printed


def test_a_good_secret_key_is_taken_and_debug_may_use_the_built_in_one() -> None:
    assert load_config(DEPLOYED).secret_key == DEPLOYED["DJANGO_SECRET_KEY"]
    debug = load_config({"DATABASE_URL": DEPLOYED["DATABASE_URL"], "DJANGO_DEBUG": "1"})
    assert debug.secret_key == config.DEBUG_SECRET_KEY


def test_the_quick_start_generates_its_key_once_readable_by_its_owner_only(quick_start_key_in: Path) -> None:
    first = load_config({}).secret_key
    assert len(first) >= 50 and first != config.DEBUG_SECRET_KEY
    assert stat.S_IMODE(quick_start_key_in.stat().st_mode) == 0o600
    assert load_config({}).secret_key == first
    assert list(quick_start_key_in.parent.iterdir()) == [quick_start_key_in]  # no draft left behind


def test_https_settings_are_read_as_django_wants_them() -> None:
    loaded = load_config(
        {
            **DEPLOYED,
            "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
            "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com, https://admin.example.com",
            "METRICS_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.1.7",
        }
    )
    assert loaded.secure_proxy_ssl_header == ("HTTP_X_FORWARDED_PROTO", "https")
    assert loaded.csrf_trusted_origins == ("https://chat.example.com", "https://admin.example.com")
    assert loaded.metrics_allowed_networks == ("10.0.0.0/8", "192.168.1.7/32")
    assert load_config({**DEPLOYED, "METRICS_ALLOWED_NETWORKS": "*"}).metrics_allowed_networks == (
        "0.0.0.0/0",
        "::/0",
    )
