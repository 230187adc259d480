"""The only way into Redis: the client, the registered scripts and every call the broker makes.

Each public method is one atomic step (a Lua script from ``lua/``) or one read, for one
queue. Three kinds of trouble are handled here, once:

* Redis unreachable or too slow (a refused connection, a reset, a timeout): raised as
  Dramatiq's ``ConnectionClosed``, which workers retry and callers catch.
* A script Redis does not know (it restarted): loaded and run again.
* A consumer group Redis does not know (it lost its data): created again; the read
  returns nothing this time.

Every step that changes what a consumer owns is fenced by the partition's lease and is
safe to run twice, since a reply can be lost after the work is done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ParamSpec, TypeVar, cast

import redis
from redis.cluster import RedisCluster

from brokers.coalesce import Coalescer
from brokers.errors import redis_unreachable_as_connection_closed
from brokers.keys import PartitionKeys, members_key, partition_keys
from brokers.records import ERROR_LIMIT_CHARS, StreamEntry, decode_entry, text
from brokers.scripts import Call, ScriptRunner, raise_first

_P = ParamSpec("_P")
_R = TypeVar("_R")

_SCRIPTS = (
    "enqueue", "read", "claim", "ack", "retry", "start", "dead_letter", "requeue", "lease", "heartbeat",
)  # fmt: skip


def _translated(method: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with redis_unreachable_as_connection_closed():
            return method(*args, **kwargs)

    return wrapper


@dataclass(slots=True)
class Done:
    """What the ack of one partition's processed entries writes."""

    ids: list[str] = field(default_factory=list)
    #: Their messages' fields in the partition's "where" hash (option ``locate``), deleted.
    located: list[bytes] = field(default_factory=list)
    #: Idempotency records kept until the message was done, expired after the grace.
    records: list[str] = field(default_factory=list)


#: Acks to write, by partition.
Acks = dict[int, Done]


@dataclass(slots=True)
class ReadReply:
    """What the fenced read of one partition returned."""

    lost: bool
    entries: list[StreamEntry] = field(default_factory=list)
    #: The newest id delivered to the group ("" when lost).
    last_id: str = ""
    #: Milliseconds until the next delayed message is due (-1: none delayed).
    next_due_ms: int = -1


@dataclass(slots=True)
class ClaimReply:
    """What claiming earlier owners' pending entries of one partition returned."""

    lost: bool
    #: Every pending entry of earlier owners has been claimed.
    done: bool = False
    #: Where the next claim starts (exclusive).
    cursor: str = ""
    entries: list[StreamEntry] = field(default_factory=list)


class StreamStore:
    """Redis for one broker: scripts, keys and the calls of every layer above."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        namespace: str,
        consumer_name: str,
        idempotency_grace_ms: int = 60_000,
        min_replicas_ack: int = 0,
        replicas_ack_timeout_ms: int = 1000,
    ) -> None:
        self.client = client
        #: How long an idempotency record kept "until done" lives after its message's ack.
        self.idempotency_grace_ms = idempotency_grace_ms
        self.is_cluster = isinstance(client, RedisCluster)
        self.namespace = namespace
        self.consumer_name = consumer_name
        self.members_key = members_key(namespace)
        folder = resources.files("brokers") / "lua"
        self._scripts = {
            name: client.register_script((folder / f"{name}.lua").read_text()) for name in _SCRIPTS
        }
        self._keys: dict[tuple[str, int], PartitionKeys] = {}
        self._groups_ready: set[str] = set()
        #: Concurrent enqueues share round trips (each still waits for its own answer).
        self.runner = ScriptRunner(
            client, min_replicas_ack=min_replicas_ack, replicas_ack_timeout_ms=replicas_ack_timeout_ms
        )
        self._enqueues = Coalescer(self.runner.run_enqueues)

    def keys(self, queue_name: str, partition: int) -> PartitionKeys:
        """Key names of ``queue_name``'s ``partition``."""
        keys = self._keys.get((queue_name, partition))
        if keys is None:
            keys = self._keys[(queue_name, partition)] = partition_keys(self.namespace, queue_name, partition)
        return keys

    def same_slot(self, key: str, other: str) -> bool:
        """Whether two keys may be used by one script (always, unless on a cluster)."""
        if not self.is_cluster:
            return True
        cluster = cast(RedisCluster, self.client)
        return bool(cluster.keyslot(key) == cluster.keyslot(other))

    # -- groups ---------------------------------------------------------------------------

    @_translated
    def ensure_groups(self, queue_name: str, partitions: int) -> None:
        """Create the consumer group of every partition stream of ``queue_name`` (once)."""
        if queue_name in self._groups_ready:
            return
        for partition in range(partitions):
            try:
                self.client.xgroup_create(
                    self.keys(queue_name, partition).stream, queue_name, id="0", mkstream=True
                )
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
        self._groups_ready.add(queue_name)

    def forget_groups(self) -> None:
        """Create the groups again before the next use (Redis was flushed)."""
        self._groups_ready.clear()

    def _group_lost(self, queue_name: str, replies: Sequence[Any]) -> bool:
        """Whether Redis lost the queue's groups (restarted without its data)."""
        if any(isinstance(r, redis.ResponseError) and "NOGROUP" in str(r) for r in replies):
            self._groups_ready.discard(queue_name)
            return True
        return False

    # -- enqueue --------------------------------------------------------------------------

    @_translated
    def enqueue(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run the enqueue script once per (keys, args): one call is group-committed with
        concurrent callers; several go in one round trip of their own. With
        ``min_replicas_ack``, each round trip ends with ``WAIT`` on its node.

        Raises:
          NotReplicated: fewer replicas than asked confirmed in time.
        """
        script = self._scripts["enqueue"]
        if len(calls) == 1:
            return [self._enqueues.call((script, *calls[0]))]
        replies = self.runner.run_enqueues([(script, keys, args) for keys, args in calls])
        raise_first(replies)
        return replies

    # -- the consumer's steps -------------------------------------------------------------

    @_translated
    def fetch(
        self, queue_name: str, claims: Mapping[int, tuple[str, int]], reads: Mapping[int, int]
    ) -> tuple[dict[int, ClaimReply], dict[int, ReadReply]]:
        """Claim earlier owners' pending entries (``claims``: partition → (cursor, count))
        and read new entries (``reads``: partition → count), in one round trip."""
        calls: list[Call] = []
        for partition, (cursor, count) in claims.items():
            keys = self.keys(queue_name, partition)
            start = "-" if cursor in ("", "-") else f"({cursor}"
            calls.append(
                (
                    self._scripts["claim"],
                    [keys.stream, keys.state, keys.lease],
                    [queue_name, self.consumer_name, self.consumer_name, start, count],
                )
            )
        # One read call covers every partition on a single node; a cluster needs one per slot.
        groups = [[p] for p in reads] if self.is_cluster else ([list(reads)] if reads else [])
        for group in groups:
            script_keys: list[str] = []
            for partition in group:
                names = self.keys(queue_name, partition)
                script_keys += [names.stream, names.delayed, names.lease]
            args = [queue_name, self.consumer_name, self.consumer_name, *(reads[p] for p in group)]
            calls.append((self._scripts["read"], script_keys, args))
        replies = self.runner.run(calls)
        if self._group_lost(queue_name, replies):
            return {}, {}
        raise_first(replies)
        claimed = {p: _claim_reply(r) for p, r in zip(claims, replies, strict=False)}
        read_replies = [reply for group in replies[len(claims) :] for reply in group]
        read = {p: _read_reply(r) for p, r in zip(reads, read_replies, strict=True)}
        return claimed, read

    @_translated
    def wait(
        self, queue_name: str, last_ids: Mapping[int, str], block_ms: int, acks: Acks | None = None
    ) -> set[int]:
        """Block until a partition has entries newer than its ``last_ids`` (at most
        ``block_ms``); return those partitions. It delivers nothing: the fenced read does.

        ``acks`` (as :meth:`ack` takes them) are written first, in the same round trip.
        Single node only (the streams of a cluster live on different nodes).
        """
        by_stream = {self.keys(queue_name, p).stream: p for p in last_ids}
        streams = {self.keys(queue_name, p).stream: last for p, last in last_ids.items()}
        pipe = self.client.pipeline(transaction=False)
        calls = self._ack_calls(queue_name, acks) if acks else []
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.xread(cast(Any, streams), count=1, block=block_ms)
        *acked, reply = pipe.execute(raise_on_error=False)
        for answer, (script, keys, args) in zip(acked, calls, strict=True):
            if isinstance(answer, redis.exceptions.NoScriptError):
                script(keys=keys, args=args)  # Redis restarted: load it, ack again
            elif isinstance(answer, Exception):
                raise answer
        if isinstance(reply, Exception):
            raise reply
        return {by_stream[text(stream)] for stream, entries in cast(list[Any], reply or []) if entries}

    @_translated
    def ack(self, queue_name: str, acks: Acks) -> None:
        """Ack and delete processed entries of several partitions (one round trip where
        possible), forget where their messages were and let their idempotency records expire."""
        raise_first(self.runner.run(self._ack_calls(queue_name, acks)))

    def _ack_calls(self, queue_name: str, acks: Acks) -> list[Call]:
        calls = []
        for p, done in acks.items():
            keys = self.keys(queue_name, p)
            calls.append(
                (
                    self._scripts["ack"],
                    [keys.stream, keys.state, keys.where, *done.records],
                    [queue_name, self.idempotency_grace_ms, len(done.located), *done.located, *done.ids],
                )
            )
        return calls

    @_translated
    def retry(self, queue_name: str, partition: int, entries: list[StreamEntry], delay_ms: int) -> bool:
        """Record the entries' attempt and start counts and when they run again; False
        when the lease is lost (the next owner runs them)."""
        keys = self.keys(queue_name, partition)
        args: list[Any] = [self.consumer_name, delay_ms]
        for entry in entries:
            args += [entry.stream_id, entry.attempts, entry.starts]
        return bool(self._scripts["retry"](keys=[keys.state, keys.lease], args=args))

    @_translated
    def mark_started(self, queue_name: str, partition: int, entries: list[StreamEntry]) -> bool:
        """Record durably that the entries start a run (their ``starts``); False when the
        lease is lost."""
        keys = self.keys(queue_name, partition)
        args: list[Any] = [self.consumer_name]
        for entry in entries:
            args += [entry.stream_id, entry.starts]
        return bool(self._scripts["start"](keys=[keys.state, keys.lease], args=args))

    @_translated
    def dead_letter(
        self,
        queue_name: str,
        partition: int,
        entry: StreamEntry,
        *,
        reason: str,
        error: str,
        traceback: str,
        attempts: int,
        located: bytes = b"",
        fenced: bool = True,
    ) -> str | None:
        """Move ``entry`` to the dead-letter stream and ack it, atomically.

        Returns the dead-letter id ("" when an earlier run of this step did it already),
        or None when this process no longer holds the lease (the entry stays pending).
        """
        keys = self.keys(queue_name, partition)
        reply = self._scripts["dead_letter"](
            keys=[keys.stream, keys.state, keys.dead, keys.lease, keys.where],
            args=[
                queue_name,
                self.consumer_name if fenced else "",
                entry.stream_id,
                entry.data,
                "" if entry.seq is None else entry.seq,
                reason,
                error[:ERROR_LIMIT_CHARS],
                traceback,
                attempts,
                partition,
                queue_name,
                located,
            ],
        )
        return None if reply is None else text(reply)

    # -- leases and membership ------------------------------------------------------------

    @_translated
    def acquire(self, queue_name: str, partitions: list[int], ttl_ms: int) -> list[bool]:
        """Acquire or renew the leases of ``partitions``; True where held. A lease whose
        node does not answer (a cluster node failing over) counts as not held; only when no
        node answers does it raise."""
        calls: list[Call] = [
            (
                self._scripts["lease"],
                [self.keys(queue_name, p).lease, self.keys(queue_name, p).state],
                ["acquire", self.consumer_name, ttl_ms],
            )
            for p in partitions
        ]
        replies = self.runner.run(calls)
        if replies and all(isinstance(r, Exception) for r in replies):
            raise_first(replies)
        return [bool(r) and not isinstance(r, Exception) for r in replies]

    @_translated
    def release(self, queue_name: str, unstarted: Mapping[int, list[StreamEntry]]) -> None:
        """Release the leases of the partitions in ``unstarted``, noting per partition the
        pending entries this process held and never started."""
        calls: list[Call] = []
        for p, entries in unstarted.items():
            marks: list[Any] = []
            for entry in entries:
                marks += [entry.stream_id, entry.deliveries]
            keys = self.keys(queue_name, p)
            calls.append(
                (self._scripts["lease"], [keys.lease, keys.state], ["release", self.consumer_name, 0, *marks])
            )
        raise_first(self.runner.run(calls))

    @_translated
    def heartbeat(self, ttl_ms: int, *, leave: bool = False) -> list[str]:
        """Renew (or end) this process's membership; the live members, sorted."""
        members = self._scripts["heartbeat"](
            keys=[self.members_key], args=[self.consumer_name, ttl_ms, "leave" if leave else ""]
        )
        return sorted(text(m) for m in members)

    # -- script plumbing ------------------------------------------------------------------

    def script(self, name: str) -> Any:
        """A registered script, for the inspection layer."""
        return self._scripts[name]


def _read_reply(reply: Sequence[Any]) -> ReadReply:
    if text(reply[0]) == "lost":
        return ReadReply(lost=True)
    return ReadReply(
        lost=False,
        entries=[decode_entry(raw[0], raw[1]) for raw in reply[3]],
        last_id=text(reply[2]),
        next_due_ms=int(reply[1]),
    )


def _claim_reply(reply: Sequence[Any]) -> ClaimReply:
    status = text(reply[0])
    if status == "lost":
        return ClaimReply(lost=True)
    entries = []
    for raw, (attempts, starts, released_at, retry_in_ms, deliveries) in zip(reply[2], reply[3], strict=True):
        entry = decode_entry(raw[0], raw[1])
        entry.attempts = int(attempts)
        entry.starts = int(starts)
        entry.deliveries = int(deliveries)
        entry.retry_in_ms = int(retry_in_ms)
        # Delivered before, and its last holder did not hand it back unstarted (on a clean
        # release): that holder may have died running it. Or a run of it started and never
        # finished before (``starts``): a hand-back unstarted does not clear that, or the
        # next run would go unrecorded and uncounted (one run past ``max_deliveries``).
        entry.suspect = int(released_at) != entry.deliveries - 1 or entry.starts > 0
        entries.append(entry)
    return ClaimReply(lost=False, done=status == "done", cursor=text(reply[1]), entries=entries)
