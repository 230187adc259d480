"""A Dramatiq broker on partitioned Redis Streams: ordered per key, retried in place, leased.

This package knows Redis and Dramatiq only; it never imports Django.
"""

from brokers.broker import RedisStreamsBroker
from brokers.errors import DeadLetterNotFound, NotReplicated, StreamsBrokerError
from brokers.keys import partition_for
from brokers.proxy import StreamMessageProxy
from brokers.records import DeadLetterBacklog, DeadLetterEntry, PartitionStats
from brokers.retries import InPlaceRetries

__all__ = [
    "DeadLetterBacklog",
    "DeadLetterEntry",
    "DeadLetterNotFound",
    "InPlaceRetries",
    "NotReplicated",
    "PartitionStats",
    "RedisStreamsBroker",
    "StreamMessageProxy",
    "StreamsBrokerError",
    "partition_for",
]
