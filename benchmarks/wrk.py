"""HTTP load with wrk: a Lua script that POSTs messages, and wrk's figures."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from benchmarks.report import BenchmarkError

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


def write_script(
    path: Path,
    token: str,
    conversations: list[str],
    url: str,
    rate: float = 0.0,
    threads: int = 2,
    batch: int = 0,
) -> None:
    """A wrk script POSTing messages round-robin over ``conversations``, each with its own
    Idempotency-Key and its send time (epoch ms) in the content. With ``rate``, requests
    are paced to that many per second in all (each thread keeps a fixed schedule: a slow
    answer delays only its own connection, not the schedule). With ``batch``, each request
    is ``{"messages": [...]}`` of that many messages (each its own ``client_message_id``),
    for ``POST /api/v1/messages/batch``."""
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
local batch = {batch}
request = function()
  counter = counter + 1
  local key = string.format("%d-%d-%d", id, counter, math.random(1, 1000000000))
  if batch == 0 then
    local conversation = conversations[(counter % #conversations) + 1]
    local body = string.format('{{"conversation_id": "%s", "content": "sent-at %.3f"}}',
      conversation, now_ms())
    return wrk.format("POST", "{url}", {{["Content-Type"] = "application/json",
      ["Authorization"] = "Token {token}", ["Idempotency-Key"] = key}}, body)
  end
  local items = {{}}
  local sent = now_ms()
  for j = 1, batch do
    local conversation = conversations[((counter * batch + j) % #conversations) + 1]
    items[j] = string.format(
      '{{"conversation_id": "%s", "content": "sent-at %.3f", "client_message_id": "%s-%d"}}',
      conversation, sent, key, j)
  end
  local body = '{{"messages": [' .. table.concat(items, ", ") .. ']}}'
  return wrk.format("POST", "{url}", {{["Content-Type"] = "application/json",
    ["Authorization"] = "Token {token}"}}, body)
end
"""
    )


def run(port: int, script: Path, seconds: float, connections: int, threads: int = 2) -> dict[str, float]:
    """Run wrk with ``script`` against the local ``port``: requests per second, latency
    percentiles (ms), requests and non-2xx answers."""
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
