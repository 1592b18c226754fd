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
def test_instruction_count_of_an_http_post() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--workload", "post", "--requests", "32"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.fullmatch(r"chatd post: ([\d,]+) instructions per request\n", proc.stdout)
    assert found, proc.stdout
    # A post is parsed, authenticated, stored and answered: far more than a no-op's handful.
    assert int(found.group(1).replace(",", "")) > 100_000


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="bench/instructions.py needs valgrind")
def test_instruction_count_of_a_delivery_to_stream_subscribers() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--workload", "deliver", "--requests", "400"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.fullmatch(r"chatd deliver: ([\d,]+) instructions per delivery\n", proc.stdout)
    assert found, proc.stdout
    assert int(found.group(1).replace(",", "")) > 1_000  # a socket write and its bookkeeping
