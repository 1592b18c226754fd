"""The benchmark's smoke run: every workload, tiny, against the real `chatd serve`.

Proves that `make bench` works (servers start, users and tokens come from the CLI, every
delivery is counted); it asserts nothing about speed. Needs only chatd's own dependencies:
without picows/uvloop the load generator uses aiohttp's client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "fanout", "latency", "connections", "posts", "posts_http", "http_ceiling", "pages_room", "pages_history", "browser",
}


def test_bench_smoke_runs_every_workload_without_loss() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["workload"] for line in lines) == sorted(WORKLOADS)
    for line in lines:
        assert line["ok"] is True, line
        assert line["chatd"] is not None and line["reference"] is not None, line
        assert {"ratio", "target", "pass", "server_cpu", "loadgen_cpu"} <= line.keys()
