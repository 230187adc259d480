"""The scenarios of ``manage.py benchmark``: our system and its baseline, measured in the
same run, alternating, medians of several rounds.

Every scenario works in its own Redis namespace and on its own users and conversations,
and removes them afterwards, so it can run beside a live service.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dramatiq
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Max
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from rest_framework.authtoken.models import Token

from brokers import RedisStreamsBroker, partition_for
from delivery import actors
from delivery.broker import MESSAGES_QUEUE
from delivery.models import Conversation, Message
from delivery.worker_middleware import DbConnections
from messaging_project import launch
from messaging_project.config import BASE_DIR

#: Keys the broker scenario spreads its messages over.
BROKER_KEYS = 100

#: Conversations the persistence, ingress and end-to-end scenarios use.
CONVERSATIONS = 100


class BenchmarkError(Exception):
    """A benchmark cannot run here (a service is missing, a tool is not installed)."""


@dataclass
class Report:
    """Figures and how they were obtained; printed as JSON with ``--json``."""

    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        import dramatiq as dramatiq_module
        import redis as redis_module

        versions = {
            "python": sys.version.split()[0],
            "dramatiq": dramatiq_module.__version__,
            "redis-py": redis_module.__version__,
            "redis": _redis().info("server").get("redis_version"),
            "database": connection.vendor,
        }
        return {
            "scenario": self.scenario,
            **self.figures,
            "method": self.method,
            "rounds": self.rounds,
            "versions": versions,
        }


Progress = Callable[[str], None]


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3)


def check_services() -> None:
    """Fail clearly when Redis or the database does not answer."""
    try:
        _redis().ping()
    except redis.RedisError as error:
        raise BenchmarkError(f"Redis at {settings.REDIS_URL} is not reachable: {error}") from None
    try:
        connection.ensure_connection()
    except Exception as error:
        raise BenchmarkError(f"The database is not reachable: {error}") from None


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    """CPU seconds a live process (and its waited-for children) used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks


def _cpu_of_tree(pid: int) -> float:
    """CPU seconds of a live process and its live children."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return _cpu_of(pid) + sum(_cpu_of(int(c)) for c in children)


def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process and its live children, in MB."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total_kb = 0
    for process in (pid, *(int(c) for c in children)):
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def _self_peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _redis_used_memory() -> int:
    return int(cast(dict[str, Any], _redis().info("memory"))["used_memory"])


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _drop_namespace(namespace: str) -> None:
    client = _redis()
    for pattern in (f"{{{namespace}:*", f"{namespace}:*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])


# -- broker ------------------------------------------------------------------------------


def _broker_round(broker: dramatiq.Broker, messages: int, threads: int) -> dict[str, float]:
    done = [0]
    lock = threading.Lock()
    finished = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="bench", actor_name="bench_noop")
    def noop(key: str, i: int) -> None:
        with lock:
            done[0] += 1
            if done[0] == messages:
                finished.set()

    def produce(offset: int) -> None:
        for i in range(offset, messages, threads):
            key = f"key-{i % BROKER_KEYS}"
            noop.send_with_options(args=(key, i), partition_key=key)

    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    memory0 = _redis_used_memory()
    cpu0, started = _cpu_self(), time.perf_counter()
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    enqueue_s, enqueue_cpu = time.perf_counter() - started, _cpu_self() - cpu0
    queued_bytes = _redis_used_memory() - memory0
    worker = Worker(broker, worker_threads=threads)
    cpu0, started = _cpu_self(), time.perf_counter()
    worker.start()
    if not finished.wait(timeout=600):
        raise BenchmarkError("the consumers did not finish within 10 minutes")
    consume_s, consume_cpu = time.perf_counter() - started, _cpu_self() - cpu0
    worker.stop()
    broker.close()
    return {
        "enqueue_per_s": messages / enqueue_s,
        "consume_per_s": messages / consume_s,
        "enqueue_cpu_s": enqueue_cpu,
        "consume_cpu_s": consume_cpu,
        # Redis memory the queued messages took (used_memory before and after enqueuing)
        "redis_bytes_per_message": queued_bytes / messages,
    }


def run_broker(messages: int, rounds: int, threads: int, progress: Progress) -> Report:
    report = Report("broker")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "keys": BROKER_KEYS,
        "partitions": 16,
        "what": "T producer threads enqueue N messages (partition key = one of 100 keys), then a Dramatiq "
        "Worker with T threads consumes them with a no-op actor; ours: RedisStreamsBroker (ordered per "
        "partition), baseline: dramatiq RedisBroker on the same Redis; rounds alternate",
    }
    ours: list[dict[str, float]] = []
    stock: list[dict[str, float]] = []
    for r in range(rounds):
        for name, results in (("ours", ours), ("baseline", stock)):
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            progress(f"broker round {r + 1}/{rounds}: {name}")
            broker: dramatiq.Broker
            if name == "ours":
                broker = RedisStreamsBroker(settings.REDIS_URL, namespace=namespace, partitions=16)
            else:
                broker = RedisBroker(url=settings.REDIS_URL, namespace=namespace)
            try:
                results.append(_broker_round(broker, messages, threads))
            finally:
                _drop_namespace(namespace)
            report.rounds.append({"system": name, **results[-1]})
    enqueue, consume = (
        _median([o["enqueue_per_s"] for o in ours]),
        _median([o["consume_per_s"] for o in ours]),
    )
    base_enqueue = _median([s["enqueue_per_s"] for s in stock])
    base_consume = _median([s["consume_per_s"] for s in stock])
    report.figures = {
        "enqueue_per_s": round(enqueue),
        "consume_per_s": round(consume),
        "baseline_enqueue_per_s": round(base_enqueue),
        "baseline_consume_per_s": round(base_consume),
        "enqueue_ratio": round(enqueue / base_enqueue, 2),
        "consume_ratio": round(consume / base_consume, 2),
        "redis_bytes_per_message": round(_median([o["redis_bytes_per_message"] for o in ours])),
        "baseline_redis_bytes_per_message": round(_median([s["redis_bytes_per_message"] for s in stock])),
        "process_peak_rss_mb": _self_peak_rss_mb(),
    }
    return report


# -- fixtures of the database scenarios ---------------------------------------------------


@contextmanager
def bench_conversations(count: int = CONVERSATIONS) -> Iterator[tuple[User, list[str]]]:
    """A sender, a recipient and ``count`` conversations between them, removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    sender = User.objects.create_user(f"bench-{tag}-a")
    recipient = User.objects.create_user(f"bench-{tag}-b")
    conversations = []
    for _ in range(count):
        conversation = Conversation.objects.create(title=f"bench {tag}")
        conversation.participants.add(sender, recipient)
        conversations.append(str(conversation.pk))
    try:
        yield sender, conversations
    finally:
        Message.objects.filter(conversation_id__in=conversations).delete()
        Conversation.objects.filter(pk__in=conversations).delete()
        User.objects.filter(pk__in=[sender.pk, recipient.pk]).delete()


def _envelope(sender: User, conversation_id: str) -> dict[str, Any]:
    message_id = str(uuid.uuid4())
    return {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "sender_id": sender.pk,
        "created_at": int(time.time() * 1000),
        "idempotency_key": f"bench:{message_id}",
        "correlation_id": "bench",
        "priority": "normal",
        "content": "benchmark message",
    }


def _persist_message(sender: User, conversation_id: str) -> dramatiq.Message[Any]:
    """A message for the persist actor, sent as ingress sends it (partitioned, numbered)."""
    return dramatiq.Message(
        queue_name=MESSAGES_QUEUE,
        actor_name=actors.persist_messages.actor_name,
        args=(_envelope(sender, conversation_id),),
        kwargs={},
        options={"partition_key": conversation_id, "sequence_key": conversation_id},
    )


def _count(conversations: list[str]) -> int:
    return Message.objects.filter(conversation_id__in=conversations).count()


# -- persist -----------------------------------------------------------------------------


def _persist_round(
    sender: User, conversations: list[str], messages: int, batch_size: int, threads: int
) -> dict[str, float]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    broker = RedisStreamsBroker(settings.REDIS_URL, namespace=namespace, partitions=16)
    broker.add_middleware(DbConnections())
    dramatiq.actor(
        broker=broker,
        actor_name=actors.persist_messages.actor_name,
        queue_name=MESSAGES_QUEUE,
        **{**actors.persist_messages.options, "batch_size": batch_size},
    )(actors.persist_messages.fn)
    before = _count(conversations)
    try:
        for i in range(messages):
            broker.enqueue(_persist_message(sender, conversations[i % len(conversations)]))
        worker = Worker(broker, worker_threads=threads)
        cpu0, started = _cpu_self(), time.time()
        worker.start()
        deadline = time.monotonic() + 600
        # Polled slowly (counting rows costs the database); the end is the last row's time.
        while _count(conversations) < before + messages:
            if time.monotonic() > deadline:
                raise BenchmarkError("persistence did not finish within 10 minutes")
            time.sleep(0.25)
        cpu = _cpu_self() - cpu0
        last = Message.objects.filter(conversation_id__in=conversations).aggregate(last=Max("persisted_at"))
        elapsed = last["last"].timestamp() - started
        worker.stop()
        broker.close()
    finally:
        _drop_namespace(namespace)
    Message.objects.filter(conversation_id__in=conversations).delete()
    return {"per_s": messages / elapsed, "cpu_s": cpu}


def run_persist(messages: int, rounds: int, threads: int, batch_size: int, progress: Progress) -> Report:
    report = Report("persist")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "batch_size": batch_size,
        "conversations": CONVERSATIONS,
        "what": "N envelopes enqueued over 16 partitions, then a Worker runs the real persist actor until "
        "every row is in the database; baseline: the same actor with batch_size=1 (one message per "
        "transaction); rounds alternate",
    }
    ours: list[float] = []
    base: list[float] = []
    with bench_conversations() as (sender, conversations):
        for r in range(rounds):
            progress(f"persist round {r + 1}/{rounds}: ours")
            result = _persist_round(sender, conversations, messages, batch_size, threads)
            ours.append(result["per_s"])
            report.rounds.append({"system": "ours", **result})
            progress(f"persist round {r + 1}/{rounds}: baseline")
            result = _persist_round(sender, conversations, max(1, messages // 4), 1, threads)
            base.append(result["per_s"])
            report.rounds.append({"system": "baseline", **result})
    report.method["baseline_messages"] = max(1, messages // 4)
    report.figures = {
        "persist_per_s": round(_median(ours)),
        "baseline_per_s": round(_median(base)),
        "ratio": round(_median(ours) / _median(base), 2),
        "process_peak_rss_mb": _self_peak_rss_mb(),
    }
    return report


# -- processes: API server, workers, load generators --------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "LOG_LEVEL": "WARNING",
            "ENABLE_BENCHMARK_VIEWS": "1",
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-metrics-"),
            **extra,
        }
    )
    return env


@contextmanager
def api_server(env: dict[str, str], workers: int = 2) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = _free_port()
    process = subprocess.Popen(
        launch.gunicorn_argv(bind=f"127.0.0.1:{port}", workers=workers),
        cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not launch.answers_ok(port, "/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError("the API server did not start")
            time.sleep(0.1)
        yield port, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@contextmanager
def run_workers(
    env: dict[str, str], processes: int = 2, threads: int = 8
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        launch.runworkers_argv(processes=processes, threads=threads, shutdown_timeout_ms=10_000),
        env={**env, "METRICS_PORT": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: LuaJIT's FFI gives wrk's scripts a wall clock (wrk itself offers none).
_WRK_CLOCK = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(0, ts)  -- CLOCK_REALTIME, comparable with the database's now()
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
"""


def _wrk_script(
    path: Path, token: str, conversations: list[str], url: str, rate: float = 0.0, threads: int = 2
) -> None:
    """A wrk script POSTing messages round-robin over ``conversations``, each with its own
    Idempotency-Key and its send time (epoch ms) in the content. With ``rate``, requests
    are paced to that many per second in all (each thread keeps a fixed schedule: a slow
    answer delays only its own connection, not the schedule)."""
    ids = ", ".join(f'"{c}"' for c in conversations)
    interval_ms = threads * 1000.0 / rate if rate > 0 else 0.0
    pacing = (
        f"""
local interval = {interval_ms}
local next_at = nil
delay = function()
  local now = now_ms()
  if next_at == nil or next_at < now - 1000 then next_at = now end
  local slot = next_at
  next_at = next_at + interval
  return math.max(0, math.floor(slot - now))
end
"""
        if rate > 0
        else ""
    )
    path.write_text(
        _WRK_CLOCK
        + pacing
        + f"""
local conversations = {{{ids}}}
local counter = 0
local thread_id = 0
setup = function(thread) thread:set("id", thread_id); thread_id = thread_id + 1 end
init = function(args) math.randomseed(os.time() + id) end
request = function()
  counter = counter + 1
  local conversation = conversations[(counter % #conversations) + 1]
  local key = string.format("%d-%d-%d", id, counter, math.random(1, 1000000000))
  local body = string.format('{{"conversation_id": "%s", "content": "sent-at %.3f"}}', conversation, now_ms())
  return wrk.format("POST", "{url}", {{["Content-Type"] = "application/json",
    ["Authorization"] = "Token {token}", ["Idempotency-Key"] = key}}, body)
end
"""
    )


def _wrk(port: int, script: Path, seconds: float, connections: int, threads: int = 2) -> dict[str, float]:
    binary = shutil.which("wrk")
    if binary is None:
        raise BenchmarkError("the ingress and e2e benchmarks need wrk: apt-get install wrk")
    duration = f"{max(1, round(seconds))}s"
    out = subprocess.run(
        [binary, f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    figures: dict[str, float] = {"errors": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["per_s"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in {"50%", "90%", "99%"}:
            figures[f"p{parts[0][:-1]}_ms"] = _ms(parts[1])
        elif "requests in" in line:
            figures["requests"] = float(parts[0])
        elif "Non-2xx or 3xx responses" in line:
            figures["errors"] = float(parts[-1])
    return figures


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- ingress -----------------------------------------------------------------------------


def run_ingress(seconds: int, rounds: int, progress: Progress) -> Report:
    report = Report("ingress")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = _env(STREAM_NAMESPACE=namespace)
    report.method = {
        "rounds": rounds,
        "seconds_per_run": seconds,
        "server": "gunicorn, 2 sync workers, same settings for both",
        "load": "wrk -t2 -c16 (closed loop) for the maximum rate; then wrk -t2 -c16 paced to 70% of our "
        "maximum (a fixed schedule per thread) for latency",
        "what": "POST /api/v1/messages with token auth, an Idempotency-Key per request, participant check "
        "and the atomic enqueue; baseline: a bare DRF view validating the same body and answering 202",
    }
    ours: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    try:
        with bench_conversations() as (sender, conversations), api_server(env) as (port, server):
            token = Token.objects.create(user=sender).key
            with tempfile.TemporaryDirectory() as folder:
                for r in range(rounds):
                    for name, url, results in (
                        ("ours", "/api/v1/messages", ours),
                        ("baseline", "/bench/bare", base),
                    ):
                        progress(f"ingress round {r + 1}/{rounds}: {name}")
                        script = Path(folder) / f"{name}.lua"
                        _wrk_script(script, token, conversations, url)
                        cpu0 = _cpu_of_tree(server.pid)
                        result = _wrk(port, script, seconds, 16)
                        result["server_cpu_s"] = _cpu_of_tree(server.pid) - cpu0
                        results.append(result)
                        report.rounds.append({"system": name, **result})
                best = _median([o["per_s"] for o in ours])
                progress("ingress: latency at 70% of the maximum rate")
                script = Path(folder) / "paced.lua"
                _wrk_script(script, token, conversations, "/api/v1/messages", rate=0.7 * best)
                paced = _wrk(port, script, seconds, 16)
                report.rounds.append({"system": "ours at 70%", **paced})
                api_rss = _peak_rss_mb(server.pid)
    finally:
        _drop_namespace(namespace)
    report.figures = {
        "ingress_per_s": round(_median([o["per_s"] for o in ours])),
        "baseline_per_s": round(_median([b["per_s"] for b in base])),
        "ratio": round(_median([o["per_s"] for o in ours]) / _median([b["per_s"] for b in base]), 2),
        "p50_ms": round(paced.get("p50_ms", 0.0), 2),
        "p99_ms": round(paced.get("p99_ms", 0.0), 2),
        "offered_per_s": round(0.7 * best),
        "achieved_per_s": round(paced.get("per_s", 0.0)),
        "closed_loop_p99_ms": round(_median([o.get("p99_ms", 0.0) for o in ours]), 2),
        "api_peak_rss_mb": api_rss,
    }
    return report


# -- end to end --------------------------------------------------------------------------

#: Client connections of the e2e load. Gunicorn's sync workers (meant to sit behind a
#: buffering proxy) block on a connection accepted before its request arrives: with 64
#: paced connections idling between requests, requests queued behind idle ones (at 100/s,
#: p90 84 ms against p90 5 ms with 8 connections; docs/benchmarks.md).
E2E_CONNECTIONS = 16


def run_e2e(messages: int, rate: float, progress: Progress) -> Report:
    report = Report("e2e")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = _env(STREAM_NAMESPACE=namespace)
    seconds = max(1.0, messages / rate)
    report.method = {
        "messages": messages,
        "offered_per_s": rate,
        "seconds": round(seconds),
        "what": f"wrk -t2 -c{E2E_CONNECTIONS} paced to the offered rate (a fixed schedule per thread) POSTs "
        "through gunicorn "
        "(2 sync workers); runworkers (2 processes, 8 threads) persists; latency = the row's persisted_at "
        "(database clock) minus the send time the client wrote into the message",
    }
    try:
        with bench_conversations() as (sender, conversations), api_server(env) as (port, server):
            token = Token.objects.create(user=sender).key
            with run_workers(env) as workers, tempfile.TemporaryDirectory() as folder:
                progress(f"e2e: {rate:.0f}/s for {seconds:.0f} s")
                script = Path(folder) / "e2e.lua"
                _wrk_script(script, token, conversations, "/api/v1/messages", rate=rate)
                _wait_for_balanced_leases(workers, namespace)
                cpu0 = (_cpu_of_tree(server.pid), _cpu_of_tree(workers.pid))
                started = time.time()
                result = _wrk(port, script, seconds, E2E_CONNECTIONS)
                acknowledged = int(result.get("requests", 0) - result["errors"])
                deadline = time.monotonic() + 300
                while _count(conversations) < acknowledged:
                    if time.monotonic() > deadline:
                        raise BenchmarkError("messages were not all persisted within 5 minutes")
                    time.sleep(0.2)
                report.method["cpu_s"] = {
                    "api_server": round(_cpu_of_tree(server.pid) - cpu0[0], 2),
                    "workers": round(_cpu_of_tree(workers.pid) - cpu0[1], 2),
                }
                memory = {"api_peak_rss_mb": _peak_rss_mb(server.pid)}
                memory["workers_peak_rss_mb"] = _peak_rss_mb(workers.pid)
                rows = list(
                    Message.objects.filter(conversation_id__in=conversations).values_list(
                        "content", "persisted_at"
                    )
                )
    finally:
        _drop_namespace(namespace)
    latencies = [p.timestamp() * 1000 - float(c.split()[1]) for c, p in rows if c.startswith("sent-at ")]
    last = max((p.timestamp() for _, p in rows), default=started)
    report.figures = {
        "offered_per_s": round(rate),
        # acknowledged POSTs per second while sending; everything is persisted by the end
        "achieved_per_s": round(acknowledged / seconds),
        "persisted": len(rows),
        "drained_after_s": round(last - started, 2),
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p95_ms": round(_percentile(latencies, 0.95), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "failed_posts": int(result["errors"]),
        # The POST alone, as wrk saw it (from sending to the answer).
        "http_p50_ms": round(result.get("p50_ms", 0.0), 2),
        "http_p99_ms": round(result.get("p99_ms", 0.0), 2),
        **memory,
    }
    return report


# -- takeover ----------------------------------------------------------------------------


def run_takeover(rounds: int, progress: Progress) -> Report:
    report = Report("takeover")
    report.method = {
        "rounds": rounds,
        "what": "runworkers with 2 processes on a steady trickle of messages to every partition; SIGKILL one "
        "worker process; time until every partition it leased has persisted a new message",
    }
    results: list[float] = []
    with bench_conversations() as (sender, conversations):
        by_partition: dict[int, list[str]] = {}
        for c in conversations:
            by_partition.setdefault(partition_for(c, 16), []).append(c)
        for r in range(rounds):
            progress(f"takeover round {r + 1}/{rounds}")
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            env = _env(STREAM_NAMESPACE=namespace)
            producer = RedisStreamsBroker(settings.REDIS_URL, namespace=namespace, partitions=16)
            stop = threading.Event()

            def trickle(target: RedisStreamsBroker = producer, halt: threading.Event = stop) -> None:
                i = 0
                while not halt.is_set():
                    target.enqueue(_persist_message(sender, conversations[i % len(conversations)]))
                    i += 1
                    halt.wait(0.002)

            feeder = threading.Thread(target=trickle, daemon=True)
            feeder.start()
            try:
                with run_workers(env, processes=2, threads=4) as workers:
                    victim, partitions = _wait_for_two_owners(workers, namespace)
                    killed_at = time.time()
                    os.kill(victim, signal.SIGKILL)
                    takeover = _wait_for_progress(partitions, by_partition, killed_at)
                    results.append(takeover)
                    report.rounds.append({"takeover_s": takeover, "partitions_moved": len(partitions)})
            finally:
                stop.set()
                feeder.join()
                _drop_namespace(namespace)
                Message.objects.filter(conversation_id__in=conversations).delete()
    report.figures = {"takeover_s": round(_median(results), 2), "takeover_max_s": round(max(results), 2)}
    return report


def _lease_holders(workers: subprocess.Popen[bytes], namespace: str) -> dict[int, set[int]]:
    """The partitions each worker process (a child of ``workers``) holds a lease on."""
    client = _redis()
    children = {
        int(c)
        for c in subprocess.run(
            ["pgrep", "-P", str(workers.pid)], capture_output=True, text=True
        ).stdout.split()
    }
    holders: dict[int, set[int]] = {}
    for p in range(16):
        value = client.get(f"{{{namespace}:{p}}}:q:{MESSAGES_QUEUE}:lease")
        if value:
            pid = int(str(value.decode() if isinstance(value, bytes) else value).rsplit("-", 2)[1])
            if pid in children:
                holders.setdefault(pid, set()).add(p)
    return holders


def _wait_for_balanced_leases(
    workers: subprocess.Popen[bytes], namespace: str, processes: int = 2
) -> dict[int, set[int]]:
    """Wait until the worker processes share the 16 partitions evenly (measuring while they
    still rebalance would count the hand-over of partitions as latency); their holdings."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        holders = _lease_holders(workers, namespace)
        if len(holders) == processes and all(len(held) == 16 // processes for held in holders.values()):
            return holders
        time.sleep(0.1)
    raise BenchmarkError(f"the {processes} worker processes did not share the partitions within 60 s")


def _wait_for_two_owners(workers: subprocess.Popen[bytes], namespace: str) -> tuple[int, set[int]]:
    holders = _wait_for_balanced_leases(workers, namespace)
    owner = min(holders)
    return owner, holders[owner]


def _wait_for_progress(partitions: set[int], by_partition: dict[int, list[str]], killed_at: float) -> float:
    from datetime import UTC, datetime

    since = datetime.fromtimestamp(killed_at, UTC)
    deadline = time.monotonic() + 120
    resumed: dict[int, float] = {}
    while time.monotonic() < deadline:
        for p in partitions - set(resumed):
            first = (
                Message.objects.filter(conversation_id__in=by_partition.get(p, []), persisted_at__gt=since)
                .order_by("persisted_at")
                .values_list("persisted_at", flat=True)
                .first()
            )
            if first is not None:
                resumed[p] = first.timestamp() - killed_at
        if len(resumed) == len(partitions):
            return max(resumed.values())
        time.sleep(0.05)
    raise BenchmarkError("the killed worker's partitions did not move within 2 minutes")
