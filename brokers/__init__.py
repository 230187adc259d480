"""A Dramatiq broker on partitioned Redis Streams: ordered, retried in place, leased.

This package knows Redis and Dramatiq only; it never imports Django.
"""

from brokers.broker import DeadLetterEntry, PartitionStats, RedisStreamsBroker
from brokers.consumer import StreamMessageProxy
from brokers.errors import DeadLetterNotFound, StreamsBrokerError
from brokers.keys import partition_for
from brokers.retries import InPlaceRetries

__all__ = [
    "DeadLetterEntry",
    "DeadLetterNotFound",
    "InPlaceRetries",
    "PartitionStats",
    "RedisStreamsBroker",
    "StreamMessageProxy",
    "StreamsBrokerError",
    "partition_for",
]
