"""The benchmark's smoke run: every workload, tiny, against the real `chatd serve`.

Proves that `make bench` works (servers start, users and tokens come from the CLI, every
delivery is counted); it asserts nothing about speed. Needs chatd's test dependencies and, for the
broker and PostgreSQL workloads, Debian's redis-server and postgresql (make test installs them);
without picows/uvloop the load generator uses aiohttp's client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "fanout", "latency", "connections", "posts", "posts_http", "http_ceiling", "pages_room", "pages_history", "browser",
    "search", "search_rate", "edits", "broker_fanout", "broker_posts", "cluster_fanout", "pg_posts",
}


# The workloads that need redis-server and postgresql.
BROKER_ROWS = {"broker_fanout", "broker_posts", "cluster_fanout", "pg_posts"}


def test_bench_smoke_runs_every_workload_without_loss() -> None:
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"]
    expected = WORKLOADS
    services = shutil.which("redis-server") and list(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not services and not os.environ.get("CHATD_REQUIRE_SERVICES"):
        # `make test-fast` on a machine without them: every other workload (make test installs them).
        workloads = ("fanout", "latency", "connections", "posts", "pages", "browser", "search", "edits")
        argv += [arg for name in workloads for arg in ("--only", name)]
        expected = WORKLOADS - BROKER_ROWS
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["workload"] for line in lines) == sorted(expected)
    for line in lines:
        assert line["ok"] is True, line
        assert line["chatd"] is not None and line["reference"] is not None, line
        assert {"ratio", "target", "pass", "server_cpu", "loadgen_cpu"} <= line.keys()


def _frame(message_id: int, client_id: str) -> bytes:
    return json.dumps({"type": "message", "message": {"id": message_id, "client_id": client_id}},
                      separators=(",", ":")).encode()


def test_latency_run_reads_frames_after_the_run_and_still_counts_every_loss_and_duplicate() -> None:
    """The latency workload keeps raw frames while messages arrive and reads them at the end:
    a missed, repeated or reordered delivery must still fail the run."""
    sys.path.insert(0, str(ROOT / "bench"))
    import loadgen

    run = loadgen.LatencyRun({"subscribers": 3, "senders": 1, "protocol": "stream"})
    run.on_text(0, b'{"type":"presence","user":"ann"}')  # before the first send: not counted
    run.start()
    run.sent_at = {b"a": 0.0, b"b": 0.0, b"c": 0.0}
    for mid, cid in ((1, "a"), (2, "b"), (3, "c")):
        run.on_text(0, _frame(mid, cid))
    for mid in (1, 3):  # socket 1 misses message 2
        run.on_text(1, _frame(mid, "x"))
    for mid in (1, 2, 2, 3):  # socket 2 gets message 2 twice
        run.on_text(2, _frame(mid, "x"))
    assert run.acked(3) is True and run.ack_id == {b"a": 1, b"b": 2, b"c": 3}
    assert run.arrived(3) is False  # socket 1 has only two frames
    assert run.drained(3) is False
    assert (run.lost(3), run.extra(3), run.duplicates) == (1, 1, 1)
    run.on_text(1, b'{"type":"error","code":"x","message":"y","client_id":null}')
    assert run.arrived(3) is True  # three frames, but one is not a message
    assert run.drained(3) is False and run.error_count == 1
    assert list(run.ids[0]) == [1, 2, 3] and len(run.times[0]) == 3


def _updated(event_id: int, message_id: int, body: str = "b", reactions: list | None = None) -> bytes:
    return json.dumps({"type": "message_updated", "id": event_id, "message": {
        "id": message_id, "body": body, "reactions": reactions or []}}, separators=(",", ":")).encode()


def test_edits_run_counts_every_change_once_and_acknowledges_only_the_senders_own() -> None:
    """The edits workload: a missed, repeated or reordered message_updated event fails the run,
    a new-message event is counted apart, and a sender's change is acknowledged only by the
    first event of that message that shows it (not by another sender's change to it)."""
    import asyncio

    sys.path.insert(0, str(ROOT / "bench"))
    import loadgen

    async def scenario() -> None:
        run = loadgen.EditsRun({"subscribers": 3, "url": "http://x", "max_messages": 10, "drain": 1.0})
        changer = loadgen.Changer(run, 0, None, {}, "ann", [7], 8)  # type: ignore[arg-type]
        run.changers[0] = changer
        emoji = changer.emoji
        future = asyncio.get_running_loop().create_future()
        changer.waiting = (b'"id":8,', 8, changer._mine, future)
        # Someone else's change to message 8 first: ann's reaction is not on it yet.
        run.on_text(0, _updated(20, 8, reactions=[{"emoji": "x", "users": ["bob"]}]))
        assert not future.done()
        run.on_text(0, _updated(21, 8, reactions=[{"emoji": emoji, "users": ["ann"]}]))
        assert future.result() == 21
        for eid in (20, 21):
            run.on_text(1, _updated(eid, 8))
        run.on_text(2, _updated(21, 8))
        run.on_text(2, _updated(20, 8))  # out of order
        run.on_text(1, b'{"type":"message","id":22,"message":{"id":22}}')
        run.on_text(1, b'{"type":"presence","user":"ann","online":true}')
        assert run.count == [2, 2, 2] and run.duplicates == 1 and run.new_messages == 1
        assert (run.lost(2), run.extra(2), run.lost(3)) == (0, 0, 3)

    asyncio.run(scenario())
