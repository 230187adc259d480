"""Scenario ``receipts``: read watermarks through ``POST /api/v1/conversations/{id}/read``
against per-message receipts (``POST /api/v1/messages/{id}/receipts``), the way a client
reported reading before watermarks, through the same gunicorn, in groups of each size."""

from __future__ import annotations

import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from benchmarks import wrk
from benchmarks.fixtures import bench_conversations
from benchmarks.processes import api_server, bench_env, cpu_of_tree, peak_rss_mb
from benchmarks.report import BenchmarkError, Progress, Report, drop_namespace, median
from delivery import services

#: Client connections of the receipts load (as ingress: gunicorn's 2 sync workers).
CONNECTIONS = 16

#: Conversations per group size, and messages persisted in each before measuring.
CONVERSATIONS = 20
MESSAGES_PER_CONVERSATION = 100

#: Share of non-2xx answers past which a run measured errors, not receipts.
MAX_ERROR_SHARE = 0.01


def _persist_messages(sender: User, conversations: list[str]) -> list[str]:
    """``MESSAGES_PER_CONVERSATION`` messages in each conversation (one batch each); their ids."""
    ids: list[str] = []
    for conversation_id in conversations:
        envelopes = [
            {
                "message_id": str(uuid.uuid4()),
                "conversation_id": conversation_id,
                "sender_id": sender.pk,
                "created_at": 1_700_000_000_000,
                "idempotency_key": f"bench:{uuid.uuid4()}",
                "content": "benchmark message",
                "seq": seq,
            }
            for seq in range(1, MESSAGES_PER_CONVERSATION + 1)
        ]
        services.messages_persist(envelopes=envelopes)
        ids += [str(e["message_id"]) for e in envelopes]
    return ids


def _tokens(users: list[User]) -> list[str]:
    tokens = [Token(user=u, key=Token.generate_key()) for u in users]
    Token.objects.bulk_create(tokens)
    return [t.key for t in tokens]


def _statements_per_update(sender: User, conversation_id: str) -> int:
    """Statements one watermark update runs, counted in this process."""
    with CaptureQueriesContext(connection) as queries:
        services.watermark_advance(conversation_id=uuid.UUID(conversation_id), user=sender, seq=1)
    return len(queries)


def _lua_list(values: list[str]) -> str:
    return "{" + ", ".join(f'"{v}"' for v in values) + "}"


def write_script(path: Path, tokens: list[str], targets: list[str], watermark: bool) -> None:
    """A wrk script: each request from a random member. ``watermark``: ``read`` up to a
    random ``seq`` of a random conversation (``targets``); else ``read`` for one random
    message (``targets``)."""
    if watermark:
        request = (
            f'local path = "/api/v1/conversations/" .. target .. "/read"\n'
            f"  local body = string.format('{{\"seq\": %d}}', math.random(1, {MESSAGES_PER_CONVERSATION}))"
        )
    else:
        request = (
            'local path = "/api/v1/messages/" .. target .. "/receipts"\n  local body = \'{"state": "read"}\''
        )
    path.write_text(
        f"""
local tokens = {_lua_list(tokens)}
local targets = {_lua_list(targets)}
local thread_id = 0
setup = function(thread) thread:set("id", thread_id); thread_id = thread_id + 1 end
init = function(args) math.randomseed(os.time() * 100 + id) end
request = function()
  local token = tokens[math.random(#tokens)]
  local target = targets[math.random(#targets)]
  {request}
  return wrk.format("POST", path, {{["Content-Type"] = "application/json",
    ["Authorization"] = "Token " .. token}}, body)
end
"""
    )


def run_receipts(
    seconds: int, rounds: int, progress: Progress, participants: tuple[int, ...] = (2,)
) -> Report:
    """Watermark updates per second against per-message receipts per second, in
    conversations of each size in ``participants`` (rounds alternate sizes and systems)."""
    report = Report("receipts")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = bench_env(STREAM_NAMESPACE=namespace)
    report.method = {
        "rounds": rounds,
        "seconds_per_run": seconds,
        "participants": list(participants),
        "conversations_per_size": CONVERSATIONS,
        "messages_per_conversation": MESSAGES_PER_CONVERSATION,
        "server": "gunicorn, 2 sync workers",
        "load": f"wrk -t2 -c{CONNECTIONS} (closed loop)",
        "what": "ours: POST /api/v1/conversations/{id}/read {seq: random} from a random member of a random "
        "conversation (every member, the sender too: one watermark statement each, moved or not); "
        "baseline: POST /api/v1/messages/{id}/receipts {state: read} for a random message from a random "
        "recipient (the per-message way: one request and a row or two per message read)",
    }
    ours: dict[int, list[float]] = {p: [] for p in participants}
    base: dict[int, list[float]] = {p: [] for p in participants}
    statements: dict[int, int] = {}
    api_rss = 0.0
    try:
        with ExitStack() as stack:
            groups = {}
            for p in participants:
                progress(f"receipts: setting up conversations of {p} members")
                sender, conversations = stack.enter_context(
                    bench_conversations(count=CONVERSATIONS, participants=p)
                )
                message_ids = _persist_messages(sender, conversations)
                members = list(User.objects.filter(conversations__id=conversations[0]).exclude(pk=sender.pk))
                groups[p] = (sender, conversations, message_ids, _tokens([sender, *members]))
                statements[p] = _statements_per_update(sender, conversations[0])
            port, server = stack.enter_context(api_server(env))
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            for r in range(rounds):
                for p, (_sender, conversations, message_ids, tokens) in groups.items():
                    for name, results, watermark in (("ours", ours, True), ("baseline", base, False)):
                        progress(f"receipts round {r + 1}/{rounds}, {p} members: {name}")
                        script = folder / f"{name}-{p}.lua"
                        # The baseline's readers are recipients: the sender's own token is the first.
                        readers = tokens if watermark else tokens[1:]
                        write_script(script, readers, conversations if watermark else message_ids, watermark)
                        cpu0 = cpu_of_tree(server.pid)
                        result = wrk.run(port, script, seconds, CONNECTIONS)
                        result["server_cpu_s"] = cpu_of_tree(server.pid) - cpu0
                        if result["errors"] > MAX_ERROR_SHARE * max(1.0, result.get("requests", 0.0)):
                            raise BenchmarkError(
                                f"{name} with {p} members: {result['errors']:.0f} non-2xx answers"
                            )
                        results[p].append(result["per_s"])
                        report.rounds.append({"system": name, "participants": p, **result})
            api_rss = peak_rss_mb(server.pid)
    finally:
        drop_namespace(namespace)
    first = participants[0]
    report.figures = {
        "updates_per_s": round(median(ours[first])),
        "baseline_per_s": round(median(base[first])),
        "ratio": round(median(ours[first]) / median(base[first]), 2),
        "statements_per_update": statements[first],
    }
    if len(participants) > 1:
        for p in participants:
            report.figures[f"updates_per_s_{p}_members"] = round(median(ours[p]))
            report.figures[f"baseline_per_s_{p}_members"] = round(median(base[p]))
            report.figures[f"statements_per_update_{p}_members"] = statements[p]
    report.figures["api_peak_rss_mb"] = api_rss
    return report
