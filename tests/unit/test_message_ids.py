"""Message ids carry their partition (and stay UUIDv7, sorted by time, unique)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.message_ids import MAX_PARTITION, new_message_id, partition_of_message_id


@given(st.integers(min_value=0, max_value=MAX_PARTITION))
def test_an_id_gives_back_the_partition_it_was_made_for(partition):
    message_id = new_message_id(partition)
    assert uuid.UUID(message_id).version == 7
    assert uuid.UUID(message_id).variant == uuid.RFC_4122
    assert partition_of_message_id(message_id) == partition


def test_ids_are_unique_and_sort_by_creation_time_across_milliseconds():
    ids = [new_message_id(i % 16) for i in range(20_000)]
    assert len(set(ids)) == len(ids)
    stamps = [uuid.UUID(i).bytes[:6] for i in ids]
    assert stamps == sorted(stamps)


def test_an_id_that_is_not_ours_carries_no_partition():
    assert partition_of_message_id(str(uuid.uuid4())) is None


def test_a_partition_that_does_not_fit_is_refused():
    with pytest.raises(ValueError):
        new_message_id(MAX_PARTITION + 1)
