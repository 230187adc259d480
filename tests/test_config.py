"""Configuration: read once from the environment; a bad value names its variable."""

from __future__ import annotations

import pytest

from messaging_project.config import ConfigError, load_config


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
    ],
)
def test_a_bad_value_is_refused_with_the_variable_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        load_config({name: value})
    assert raised.value.name == name


def test_s3_payloads_need_a_bucket() -> None:
    with pytest.raises(ConfigError, match="PAYLOAD_S3_BUCKET"):
        load_config({"PAYLOAD_STORAGE": "s3"})
