"""The README's walkthrough, run as written: its ```sh blocks, copied out of README.md, in
order, in one bash session against a fresh ``manage.py serve`` (what ``make run`` runs),
each block's output checked. A README edit that breaks a command breaks this test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from messaging_project import launch
from tests.acceptance import harness
from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.acceptance

MARKER = "<!-- walkthrough:"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TOKEN_PLACEHOLDER = "paste-the-token-make-run-printed"
SEPARATOR = "@@walkthrough-block@@"
TOKEN_LINE = re.compile(r"Authorization: Token (\w+)")


def _token(lines: list[str]) -> str | None:
    found = [m.group(1) for line in lines if (m := TOKEN_LINE.search(line))]
    return found[0] if found else None


def walkthrough_blocks() -> list[str]:
    """The ```sh blocks between the walkthrough marker and the next "## " heading."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(MARKER)
    end = readme.find("\n## ", start)
    blocks = BLOCK.findall(readme[start : end if end != -1 else None])
    assert blocks, "no ```sh block after the walkthrough marker"
    return list(blocks)


def _json_lines(output: str) -> list[Any]:
    """Each line of output that is a JSON document, parsed (others, e.g. "HTTP 200", as text)."""
    parsed: list[Any] = []
    for line in output.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(line.strip())
    return [p for p in parsed if p != ""]


def test_the_readme_walkthrough_runs_as_written(tmp_path, redis_client, redis_url):
    # given the service as `make run` starts it, on a fresh database
    port = free_port()
    env = harness.project_env(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", redis_url=redis_url, STREAM_NAMESPACE="readme"
    )
    service = harness.Service("serve", launch.manage_argv("serve", "--port", str(port)), env, tmp_path)
    service.start()
    try:
        token = wait_for(lambda: _token(service.log_lines()), timeout=120, what="the demo user's API token")
        wait_for(lambda: launch.answers_ok(port, "/healthz"), timeout=60, what="the API")

        # when the README's blocks run, in order, in one bash session
        blocks = walkthrough_blocks()
        script = "set -euo pipefail\n" + "".join(f"echo '{SEPARATOR}'\n{block}" for block in blocks)
        script = (
            script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            .replace(TOKEN_PLACEHOLDER, token)
            .replace(".venv/bin/python", sys.executable)
        )
        run = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        service.stop()

    # then every block succeeded, and said what the README says it does
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    outputs = run.stdout.split(SEPARATOR + "\n")[1:]
    assert len(outputs) == len(blocks) == 9, run.stdout
    out = [_json_lines(o) for o in outputs]
    assert out[0] == [] and out[1] == []
    [listed] = out[2]
    assert sorted(listed["participants"]) == ["bob", "demo"] and listed["unread_count"] == 0
    [posted] = out[3]
    assert (posted["state"], posted["seq"], posted["idempotent_hit"]) == ("pending", 1, False)
    retried, retried_status, refused, refused_status = out[4]
    assert retried_status == "HTTP 200" and retried["idempotent_hit"] is True
    assert (retried["message_id"], retried["seq"]) == (posted["message_id"], 1)
    assert refused_status == "HTTP 422" and "detail" in refused
    batch, batch_status = out[5]
    assert batch_status == "HTTP 200"
    assert [(r["status"], r["seq"]) for r in batch["results"]] == [(202, 2), (202, 3)]
    assert out[6] == [{"seq": 1, "sender": "demo", "content": "hello bob", "state": "persisted"}]
    assert out[7] == [{"seqs": [2], "next_after_seq": 2}]
    receipt, receipt_status, watermark, receipts = out[8]
    assert receipt_status == "HTTP 201" and receipt["state"] == "delivered"
    assert watermark == {"read_seq": 3, "delivered_seq": 3}
    assert {"user": "bob", "state": "read"} in receipts and {"user": "bob", "state": "delivered"} in receipts
