"""Instructions the server executes per request, counted by valgrind's callgrind.

The benchmark's figures move by a third within minutes on a shared virtual machine, so a
change worth 3% cannot be seen in them. The number of instructions a request takes does not
move: two runs of the same code agree to 0.1%. It leaves out time in the kernel (socket
calls, writes to the WAL file), so it compares versions of chatd's own code, not servers
that differ in their system calls. Needs valgrind (`apt-get install valgrind`).

    python bench/instructions.py --workload post           # chatd, HTTP posts
    python bench/instructions.py --workload page           # chatd, room pages (session cookie)
    python bench/instructions.py --workload post --server bare   # aiohttp answering, storing nothing
    python bench/instructions.py --workload deliver        # one message at a time to 200 streams

The server runs under callgrind (about 50 times slower), 16 keep-alive clients send the
requests, and only the measured window is counted: after a warm-up, with the counters
zeroed, until the last answer. `deliver` is the latency workload's shape: 200 event-stream
subscribers, one message sent at a time (its own commit), each received by every subscriber
before the next; it reports instructions per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import aiohttp

from chatd.cli import event_loop
from chatd.config import EVENT_LOOPS
from chatd.errors import ChatdError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from httpclient import HttpConnection, open_connection  # noqa: E402

CLIENTS = 16
SEED_ROUNDS = 15  # 240 messages before a page workload, so a room page shows a full 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("post", "page", "history", "deliver"), default="post")
    parser.add_argument("--server", choices=("chatd", "bare", "sqlite"), default="chatd",
                        help="chatd, or a reference server of bench/refserver.py (post only)")
    parser.add_argument("--requests", type=int, default=800, help="requests counted (default 800)")
    parser.add_argument("--loop", choices=EVENT_LOOPS, default="auto",
                        help="the server's event loop (default: chatd's own choice, uvloop when installed)")
    args = parser.parse_args()
    if args.server != "chatd" and args.workload != "post":
        parser.error("the reference servers are measured on --workload post only")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("error: needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    try:
        loop = event_loop(args.loop)[0]  # what `chatd serve` would pick, so "auto" means the same
    except ChatdError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="chatd-instructions-") as tmp:
        per_request = measure(Path(tmp), args.server, args.workload, max(CLIENTS, args.requests), loop)
    unit = "delivery" if args.workload == "deliver" else "request"
    print(f"{args.server} {args.workload} ({loop}): {per_request:,.0f} instructions per {unit}")
    return 0


def measure(workdir: Path, kind: str, workload: str, requests: int, loop: str) -> float:
    template = harness.build_template(workdir, CLIENTS, workdir / "template.log")
    out = workdir / "callgrind.out"
    log = workdir / "server.log"
    if kind == "chatd":
        server = harness.chatd_server(template.copy_to(workdir / "chatd.db"), None, log)
        server.env["CHATD_EVENT_LOOP"] = loop
    else:
        server = harness.reference_server(kind, workdir, None, loop)
    # The same process the benchmark starts, under callgrind.
    server.argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                   *server.argv]
    server.start(timeout=300)
    try:
        if workload == "deliver":
            counted = asyncio.run(_deliver(server, template.tokens, requests))
        else:
            counted = asyncio.run(_drive(server, template.tokens, template.sessions, workload, requests))
    finally:
        server.stop(timeout=120)
    return _total(workdir, out.name) / counted


async def _drive(server: harness.ServerProcess, tokens: list[str], sessions: list[str], workload: str,
                 requests: int) -> int:
    host = server.url.split("//", 1)[1]
    conns = [await open_connection(server.url) for _ in range(CLIENTS)]
    sent = 0

    def post(i: int) -> bytes:
        nonlocal sent
        sent += 1
        body = json.dumps({"body": f"hello from client {i}, message {sent}", "client_id": f"c{i}-{sent}"})
        return (f"POST /api/v1/rooms/general/messages HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {tokens[i]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def request(i: int) -> bytes:
        if workload == "post":
            return post(i)
        if workload == "history":
            return (f"GET /api/v1/rooms/general/messages?limit=50 HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {tokens[i]}\r\n\r\n").encode()
        return f"GET /r/general HTTP/1.1\r\nHost: {host}\r\nCookie: chatd_session={sessions[i]}\r\n\r\n".encode()

    async def client(conn: HttpConnection, i: int, n: int, make: Callable[[int], bytes]) -> None:
        for _ in range(n):
            status, body = await conn.request(make(i))
            if status not in (200, 201):
                raise harness.BenchError(f"{workload}: HTTP {status}: {body[:200]!r}")

    async def everyone(n: int, make: Callable[[int], bytes] = request) -> None:
        await asyncio.gather(*(client(c, i, n, make) for i, c in enumerate(conns)))

    try:
        if workload != "post":
            await everyone(SEED_ROUNDS, post)
        await everyone(20)  # warm-up: caches filled, code paths taken, before instrumenting
        _control("-i", "on", server.pid)
        await everyone(4)  # the first requests under instrumentation translate code: not counted
        _control("-z", None, server.pid)
        per_client = requests // CLIENTS
        await everyone(per_client)
        _control("-d", "window", server.pid)
        return per_client * CLIENTS
    finally:
        for conn in conns:
            conn.close()


SUBSCRIBERS = 200


async def _deliver(server: harness.ServerProcess, tokens: list[str], deliveries: int) -> int:
    """Messages sent one at a time from the first socket, each awaited on every socket."""
    received = [0] * SUBSCRIBERS
    arrived = asyncio.Event()

    async def read(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith('{"type":"message"'):
                received[i] += 1
                arrived.set()

    async def send_one(k: int) -> None:
        await sockets[0].send_str(json.dumps(
            {"type": "send", "room": "general", "body": f"message {k} to everyone", "client_id": f"d{k}"}))
        while min(received) < k:
            arrived.clear()
            await arrived.wait()

    url = server.url.replace("http", "ws", 1) + "/api/v1/stream"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = [await session.ws_connect(url, headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"})
                   for i in range(SUBSCRIBERS)]
        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
        k = 0
        for _ in range(20):  # warm-up
            k += 1
            await send_one(k)
        _control("-i", "on", server.pid)
        for _ in range(4):
            k += 1
            await send_one(k)
        _control("-z", None, server.pid)
        messages = max(1, deliveries // SUBSCRIBERS)
        for _ in range(messages):
            k += 1
            await send_one(k)
        _control("-d", "window", server.pid)
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()
    return messages * SUBSCRIBERS


def _control(option: str, value: str | None, pid: int) -> None:
    args = ["callgrind_control", option, *([value] if value else []), str(pid)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise harness.BenchError(f"{' '.join(args)} failed: {done.stderr.strip()}")


def _total(workdir: Path, name: str) -> int:
    """Instructions in the dump of the measured window (`callgrind.out.1`, one per thread)."""
    total = 0
    for dump in workdir.glob(f"{name}.*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    if total == 0:
        raise harness.BenchError("callgrind wrote no counts for the measured window")
    return total


if __name__ == "__main__":
    sys.exit(main())
