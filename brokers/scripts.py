"""Running the broker's Lua scripts: one round trip on a single node, one per node on a
Redis Cluster, with what cannot run in a pipeline (a script Redis forgot after a restart,
a slot that moved) run again alone through the client that follows; and, when asked, a
``WAIT`` for replicas after enqueues."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from brokers.errors import UNREACHABLE, NotReplicated

#: A script call: (script, keys, args).
Call = tuple[Any, list[str], list[Any]]


class ScriptRunner:
    """Runs script calls for one client; each result is a value or the error that call
    answered with (raise the first with :func:`raise_first`)."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        min_replicas_ack: int = 0,
        replicas_ack_timeout_ms: int = 1000,
    ) -> None:
        self.client = client
        self.is_cluster = isinstance(client, RedisCluster)
        #: Replicas that must hold an enqueue before it counts as done (``WAIT``), and how
        #: long to wait for them.
        self.min_replicas_ack = min_replicas_ack
        self.replicas_ack_timeout_ms = replicas_ack_timeout_ms

    def run(self, calls: list[Call]) -> list[Any]:
        """Run scripts in one round trip (single node; on a cluster, one per node); each
        result is a value or the error that script answered with.

        Pipelines use ``EVALSHA`` directly: redis-py's pipelined scripts cost an extra
        ``SCRIPT EXISTS`` round trip on every execute (and its cluster pipeline refuses
        scripts). A call a pipeline could not run (a script Redis does not know after a
        restart, a slot that moved) is run again alone, through the client that follows.
        """
        if not calls:
            return []
        if len(calls) == 1:
            return [self._run_alone(calls[0])]
        if not self.is_cluster:
            return self._pipelined(self.client, calls)
        cluster = cast(RedisCluster, self.client)
        results: list[Any] = [None] * len(calls)
        for node, indexes in self._by_node(calls).values():
            if len(indexes) == 1:
                results[indexes[0]] = self._run_alone(calls[indexes[0]])
                continue
            try:
                replies = self._pipelined(cluster.get_redis_connection(node), [calls[i] for i in indexes])
            except UNREACHABLE:
                cluster.nodes_manager.initialize()  # the node failed over: ask the cluster again
                replies = [self._run_alone(calls[i]) for i in indexes]
            for i, reply in zip(indexes, replies, strict=True):
                results[i] = reply
        return results

    def _by_node(self, calls: list[Call]) -> dict[str, tuple[Any, list[int]]]:
        """The calls' indexes by the cluster node that serves their first key."""
        cluster = cast(RedisCluster, self.client)
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (_, keys, _) in enumerate(calls):
            node = cluster.get_node_from_key(keys[0])
            by_node.setdefault(node.name, (node, []))[1].append(i)
        return by_node

    def _pipelined(self, client: Any, calls: list[Call], *, wait: bool = False) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if wait:
            pipe.execute_command("WAIT", self.min_replicas_ack, self.replicas_ack_timeout_ms)
            *results, replicas = cast(list[Any], pipe.execute(raise_on_error=False))
            if isinstance(replicas, Exception):
                raise replicas
            unknown = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
            if unknown:
                # Redis restarted and forgot the scripts: load them, run those calls again
                # (they did nothing), and let their WAIT decide for them.
                for script in {id(calls[i][0]): calls[i][0] for i in unknown}.values():
                    client.script_load(script.script)
                again = self._pipelined(client, [calls[i] for i in unknown], wait=True)
                for i, reply in zip(unknown, again, strict=True):
                    results[i] = reply
            if int(replicas) < self.min_replicas_ack:
                shortfall = NotReplicated(
                    f"{replicas} of {self.min_replicas_ack} replicas confirmed within "
                    f"{self.replicas_ack_timeout_ms} ms"
                )
                return [
                    r if isinstance(r, Exception) or i in unknown else shortfall
                    for i, r in enumerate(results)
                ]
            return results
        results = cast(list[Any], pipe.execute(raise_on_error=False))
        for i, (result, call) in enumerate(zip(results, calls, strict=True)):
            if isinstance(
                result,
                redis.exceptions.NoScriptError | redis.exceptions.MovedError | redis.exceptions.AskError,
            ):
                results[i] = self._run_alone(call)
        return results

    @staticmethod
    def _run_alone(call: Call) -> Any:
        script, keys, args = call
        try:
            return script(keys=keys, args=args)
        except (redis.ResponseError, *UNREACHABLE) as error:
            # One node down (a cluster failing over) fails its own calls, not the others'.
            return error

    def run_enqueues(self, calls: list[Call]) -> list[Any]:
        """:meth:`run`, then ``WAIT`` for ``min_replicas_ack`` replicas (if asked)."""
        if not self.min_replicas_ack:
            return self.run(calls)
        # WAIT counts the replicas holding this connection's writes: it must follow them on
        # the same connection, so even one call goes through a pipeline.
        if not self.is_cluster:
            return self._pipelined(self.client, calls, wait=True)
        cluster = cast(RedisCluster, self.client)
        results: list[Any] = [None] * len(calls)
        for node, indexes in self._by_node(calls).values():
            try:
                replies = self._pipelined(
                    cluster.get_redis_connection(node), [calls[i] for i in indexes], wait=True
                )
            except UNREACHABLE:
                # The node failed over (or is failing over): learn the new map for the
                # caller's retry, which the idempotency key makes safe, then fail this one.
                with contextlib.suppress(*UNREACHABLE, redis.exceptions.RedisClusterException):
                    cluster.nodes_manager.initialize()
                raise
            for i, reply in zip(indexes, replies, strict=True):
                results[i] = reply
        return results


def raise_first(replies: Sequence[Any]) -> None:
    """Raise the first error among a round trip's replies."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
