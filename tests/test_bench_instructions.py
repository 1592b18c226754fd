"""bench/instructions.py: the deterministic per-request count works against the real server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="bench/instructions.py needs valgrind")
@pytest.mark.parametrize(
    ("workload", "count", "unit", "least"),
    [
        # A post is parsed, authenticated, stored and answered: far more than a no-op's handful.
        ("post", "32", "request", 100_000),
        # One message to 200 stream subscribers: a socket write and its bookkeeping each.
        ("deliver", "400", "delivery", 1_000),
    ],
)
def test_instruction_count(workload: str, count: str, unit: str, least: int) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--workload", workload, "--requests", count],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.fullmatch(rf"chatd {workload} \((?:asyncio|uvloop)\): ([\d,]+) instructions per {unit}\n", proc.stdout)
    assert found, proc.stdout
    assert int(found.group(1).replace(",", "")) > least
