"""The load generator: runs one workload against one server and prints one JSON result line.

Started by bench/run.py as `taskset -c 1 python bench/loadgen.py SPEC.json`, pinned to its own
core so that it never takes CPU from the server under test. It counts every delivery on
every socket: a message that one subscriber misses, or receives twice, or out of id order,
makes the result `ok: false`, whatever the throughput.

Workloads (the spec's "workload" key):
  fanout       N sockets subscribe; S of them also send, each waiting for its acknowledgement
               (its own message coming back) before sending the next. Used for fanout, posts
               (stream) and browser (HTML fragments over /ws).
  latency      N sockets subscribe; S of them send at a fixed total rate without waiting
               (open loop, so a slow server cannot slow the clock); send-to-receive latency
               of every delivery.
  connections  N idle sockets; server RSS before and after.
  http_posts   C clients POST messages, each waiting for its 201 before the next.
  pages        C clients GET room pages or history pages and check the newest message ids;
               also search (kind "search": each "slug" is a word, its answer the newest hits).
  edits        The fanout workload's sockets, but S senders change existing messages over HTTP
               (an edit of one of their own, then a reaction toggled on another sender's, in
               turn), each waiting for its answer and for its change's message_updated event to
               come back on its own socket; every socket must get every change once, in id order.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpclient  # noqa: E402
import wsclient  # noqa: E402
from procstat import CpuWindow, raise_nofile, rss_bytes  # noqa: E402

Spec = dict[str, Any]
BODY = "message {seq} from {name}: the quick brown fox jumps over the lazy dog, <b>twice</b> & more"
MAX_ERRORS_KEPT = 5
# Client ids must be new on every run: chatd answers a repeated (client_id, room, body) from the same
# user as a retry, with the first copy's id and only to the sender.
RUN = secrets.token_hex(4)

# -- protocols: how to read a message id and an acknowledgement out of a frame -------------------


def _up_to_quote(data: bytes, at: int, key: bytes) -> bytes | None:
    """The bytes after `key` (found at `at`, -1 if not) up to the next double quote."""
    if at < 0:
        return None
    start = at + len(key)
    return data[start : data.index(b'"', start)]


class StreamProtocol:
    """JSON events of GET /api/v1/stream (and of the reference broadcaster)."""

    path = "/api/v1/stream"
    send_base: dict[str, str] = {"type": "send", "room": "general"}
    # chatd serialises the event's id first ({"type":"message","id":N,...}, since its change
    # log), its releases before that and the reference the message's id first; anything else
    # takes the slow path (a full JSON parse), so the count stays right whatever the key order.
    # Both fast paths: a parse per frame halves what one load generator core can receive.
    prefix = b'{"type":"message","id":'
    old_prefix = b'{"type":"message","message":{"id":'
    cid_key = b'"client_id":"'

    def message_id(self, data: bytes) -> int | None:
        if data.startswith(self.prefix):
            start = len(self.prefix)
            return int(data[start : data.index(b",", start)])
        if data.startswith(self.old_prefix):
            start = len(self.old_prefix)
            return int(data[start : data.index(b",", start)])
        if b'"type":"message"' in data:
            event = json.loads(data)
            if event.get("type") == "message":
                return int(event["message"]["id"])
        return None  # presence, typing, errors

    def client_id(self, data: bytes) -> bytes | None:
        # Keys inside a JSON string are escaped (\"), so only the real key matches.
        return _up_to_quote(data, data.rfind(self.cid_key), self.cid_key)

    def is_error(self, data: bytes) -> bool:
        return b'"type":"error"' in data

    def send_frame(self, body: str, client_id: str) -> bytes:
        frame = {**self.send_base, "body": body, "client_id": client_id}
        return json.dumps(frame, separators=(",", ":")).encode()


class BrowserProtocol(StreamProtocol):
    """HTML fragments of GET /ws (the HTMX socket): <article ... id="message-{id}" ...>."""

    path = "/ws?room=general"
    send_base = {"type": "send"}  # the tab's room comes from its URL
    id_attr = b'id="message-'
    cid_attr = b'data-client-id="'

    def message_id(self, data: bytes) -> int | None:
        found = _up_to_quote(data, data.find(self.id_attr), self.id_attr)
        return None if found is None else int(found)  # None: online list, unread counts, typing

    def client_id(self, data: bytes) -> bytes | None:
        return _up_to_quote(data, data.find(self.cid_attr), self.cid_attr)

    def is_error(self, data: bytes) -> bool:
        return data.startswith(b'{"error"')


PROTOCOLS: dict[str, StreamProtocol] = {"stream": StreamProtocol(), "browser": BrowserProtocol()}


# -- shared plumbing ------------------------------------------------------------------------------


class Failure(Exception):
    """The workload could not run at all (a refused connection, a dead server)."""


class Subscribers:
    """Per-socket delivery accounting shared by the socket workloads."""

    def __init__(self, n: int, protocol: StreamProtocol) -> None:
        self.protocol = protocol
        self.count = [0] * n
        self.last = [0] * n
        self.duplicates = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.closed_early = 0
        self.closing = False

    def record_error(self, data: bytes) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(data[:300].decode(errors="replace"))

    def on_closed(self, index: int) -> None:
        if not self.closing:
            self.closed_early += 1

    def lost(self, total: int) -> int:
        return sum(max(0, total - c) for c in self.count)

    def extra(self, total: int) -> int:
        return sum(max(0, c - total) for c in self.count)


async def connect_all(
    backend: wsclient.Backend, url: str | list[str], headers: list[dict[str, str]], sink: wsclient.Sink,
    n: int, concurrency: int,
) -> tuple[list[wsclient.Socket | None], Counter[str]]:
    """Open n sockets, at most `concurrency` handshakes at a time; socket i uses headers[i % len]
    (and, given several servers' URLs, urls[i % len])."""
    urls = [url] if isinstance(url, str) else url
    gate = asyncio.Semaphore(concurrency)
    failures: Counter[str] = Counter()

    async def one(i: int) -> wsclient.Socket | None:
        async with gate:
            try:
                return await backend.connect(urls[i % len(urls)], headers[i % len(headers)], sink, i)
            except wsclient.ConnectFailed as exc:
                failures[str(exc)] += 1
                return None

    sockets = await asyncio.gather(*(one(i) for i in range(n)))
    return list(sockets), failures


async def wait_until(done: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def close_all(sockets: list[wsclient.Socket | None]) -> None:
    for socket in sockets:
        if socket is not None:
            socket.close()


def ws_url(spec: Spec, protocol: StreamProtocol) -> str:
    return spec["url"].replace("http://", "ws://", 1) + protocol.path


def ws_urls(spec: Spec, protocol: StreamProtocol) -> str | list[str]:
    """The fanout's sockets: spread over every server in spec["urls"] when it names several."""
    if not spec.get("urls"):
        return ws_url(spec, protocol)
    return [u.replace("http://", "ws://", 1) + protocol.path for u in spec["urls"]]


def percentile(sorted_values: list[float] | array, q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- fanout: closed-loop senders, every subscriber gets everything ----------------------------------


class Sender:
    """Sends one message, waits for its acknowledgement, sends the next."""

    def __init__(self, run: FanoutRun, socket: wsclient.Socket, name: str) -> None:
        self.run, self.socket, self.name = run, socket, name
        self.pending: bytes | None = None
        self.seq = 0
        self.acked: list[int] = []
        self.refused = 0

    def send_next(self) -> None:
        run = self.run
        if run.stopping or run.sent >= run.max_messages:
            self.pending = None
            return
        self.seq += 1
        cid = f"{self.name}-{self.seq}"
        self.pending = cid.encode()
        run.sent += 1
        self.socket.send(run.protocol.send_frame(BODY.format(seq=self.seq, name=self.name), cid))

    def on_ack(self, message_id: int) -> None:
        self.acked.append(message_id)
        if self.run.measuring:
            self.run.window_acks += 1
        self.send_next()


class FanoutRun(Subscribers):
    def __init__(self, spec: Spec) -> None:
        self.n = spec["subscribers"]
        super().__init__(self.n, PROTOCOLS[spec["protocol"]])
        self.max_messages = spec["max_messages"]
        self.sent = 0
        self.stopping = False
        self.measuring = False
        self.window_deliveries = 0
        self.window_acks = 0
        self.senders: list[Sender | None] = [None] * self.n
        self._mid = self.protocol.message_id
        self._cid = self.protocol.client_id

    def on_text(self, index: int, data: bytes) -> None:
        mid = self._mid(data)
        sender = self.senders[index]
        if mid is None:
            if self.protocol.is_error(data):
                self.record_error(data)
                if sender is not None and sender.pending is not None and sender.pending in data:
                    sender.refused += 1
                    sender.send_next()
            return
        if mid <= self.last[index]:
            self.duplicates += 1
        else:
            self.last[index] = mid
        self.count[index] += 1
        if self.measuring:
            self.window_deliveries += 1
        if sender is not None and sender.pending is not None and sender.pending == self._cid(data):
            sender.on_ack(mid)


async def fanout(spec: Spec, backend: wsclient.Backend) -> dict[str, Any]:
    run = FanoutRun(spec)
    started = time.perf_counter()
    sockets, failures = await connect_all(
        backend, ws_urls(spec, run.protocol), spec["headers"], run, run.n, spec.get("concurrency", 100)
    )
    if failures:
        raise Failure(f"{sum(failures.values())} of {run.n} sockets refused: {dict(failures)}")
    connect_s = time.perf_counter() - started
    senders = [Sender(run, sockets[i], f"{RUN}-s{i}") for i in range(spec["senders"])]  # type: ignore[arg-type]
    for i, sender in enumerate(senders):
        run.senders[i] = sender
    await asyncio.sleep(spec["settle"])  # let presence events for the new sockets pass
    cpu = CpuWindow(spec["server_pid"], spec.get("watch_pids"))
    for sender in senders:
        sender.send_next()
    await asyncio.sleep(spec["warmup"])
    run.measuring = True
    cpu.start()
    await asyncio.sleep(spec["duration"])
    run.measuring = False
    cpu.stop()
    run.stopping = True
    acked_all = await wait_until(lambda: all(s.pending is None for s in senders), spec["drain"])
    total = sum(len(s.acked) for s in senders)
    drained = await wait_until(lambda: min(run.count) >= total, spec["drain"])
    run.closing = True
    close_all(sockets)
    acked_ids = [mid for s in senders for mid in s.acked]
    unacked = run.sent - total - sum(s.refused for s in senders)
    problems = _fanout_problems(run, total, acked_ids, unacked, acked_all and drained)
    return {
        "ok": not problems, "problems": problems,
        "deliveries_per_s": run.window_deliveries / cpu.wall,
        "acked_per_s": run.window_acks / cpu.wall,
        "messages": total, "deliveries": sum(run.count), "expected_deliveries": total * run.n,
        "lost": run.lost(total) + unacked, "duplicates": run.duplicates, "errors": run.errors,
        "subscribers": run.n, "senders": len(senders), "connect_s": connect_s,
        **cpu.as_dict(),
        "hit_max_messages": run.sent >= run.max_messages,
    }


def _fanout_problems(
    run: FanoutRun, total: int, acked_ids: list[int], unacked: int, finished: bool
) -> list[str]:
    problems = []
    if not finished:
        problems.append("timed out waiting for acknowledgements or deliveries")
    if unacked:
        problems.append(f"{unacked} sends never acknowledged")
    if len(set(acked_ids)) != len(acked_ids):
        problems.append("two sends acknowledged with the same message id")
    lost, extra = run.lost(total), run.extra(total)
    if lost:
        problems.append(f"{lost} deliveries missing ({sum(1 for c in run.count if c < total)} sockets short)")
    if extra:
        problems.append(f"{extra} deliveries more than sent")
    if run.duplicates:
        problems.append(f"{run.duplicates} duplicate or out-of-order deliveries")
    if run.error_count:
        problems.append(f"{run.error_count} error events, e.g. {run.errors[0]}")
    if run.closed_early:
        problems.append(f"{run.closed_early} sockets closed by the server")
    if total == 0:
        problems.append("no message was acknowledged")
    return problems


# -- latency: open-loop senders at a fixed rate -----------------------------------------------------


class LatencyRun(Subscribers):
    """Receive time and frame only, while messages arrive; reading them waits for the end.

    At 100 messages a second to 1,000 sockets the load generator's core is as busy as the
    server's (100,000 frames a second, most of it the kernel's receive), and every
    microsecond spent per frame delays the next frame's timestamp: so `on_text` keeps the
    time and the bytes, and `account` reads ids, counts and acknowledgements later, once
    per frame, from where it last stopped. Waiting for the last deliveries looks at raw
    frame counts first and reads frames only once every socket has enough of them.
    """

    def __init__(self, spec: Spec) -> None:
        self.n = spec["subscribers"]
        self.senders = spec["senders"]  # sockets 0..senders-1 send; their frames carry the acks
        super().__init__(self.n, PROTOCOLS[spec["protocol"]])
        self.received: list[list[tuple[float, bytes]]] = [[] for _ in range(self.n)]
        self.read_upto = [0] * self.n
        self.base = [0] * self.n  # frames received before the first message was sent
        self.ids = [array("q") for _ in range(self.n)]
        self.times = [array("d") for _ in range(self.n)]
        self.sent_at: dict[bytes, float] = {}
        self.ack_id: dict[bytes, int] = {}

    def on_text(self, index: int, data: bytes) -> None:
        self.received[index].append((time.perf_counter(), data))

    def start(self) -> None:
        self.base = [len(frames) for frames in self.received]

    def account(self, index: int) -> None:
        """Read the frames socket `index` received since the last call."""
        frames, protocol = self.received[index], self.protocol
        ids, times, last, count = self.ids[index], self.times[index], self.last[index], self.count[index]
        sender = index < self.senders
        for now, data in frames[self.read_upto[index]:]:
            mid = protocol.message_id(data)
            if mid is None:
                if protocol.is_error(data):
                    self.record_error(data)
                continue
            if mid <= last:
                self.duplicates += 1
            else:
                last = mid
            count += 1
            ids.append(mid)
            times.append(now)
            if sender:
                cid = protocol.client_id(data)
                if cid is not None and cid in self.sent_at:
                    self.ack_id[cid] = mid
        self.read_upto[index], self.last[index], self.count[index] = len(frames), last, count

    def acked(self, total: int) -> bool:
        for i in range(self.senders):
            self.account(i)
        return len(self.ack_id) >= total

    def arrived(self, total: int) -> bool:
        """Every socket has at least `total` frames since the start (nothing read yet)."""
        return all(len(frames) - base >= total for frames, base in zip(self.received, self.base, strict=True))

    def drained(self, total: int) -> bool:
        for i in range(self.n):
            self.account(i)
        return min(self.count) >= total


async def latency(spec: Spec, backend: wsclient.Backend) -> dict[str, Any]:
    run = LatencyRun(spec)
    sockets, failures = await connect_all(
        backend, ws_urls(spec, run.protocol), spec["headers"], run, run.n, spec.get("concurrency", 100)
    )
    if failures:
        raise Failure(f"{sum(failures.values())} of {run.n} sockets refused: {dict(failures)}")
    senders = sockets[: spec["senders"]]
    await asyncio.sleep(spec["settle"])
    warm, count, rate = spec["warmup_messages"], spec["count"], spec["rate"]
    cpu = CpuWindow(spec["server_pid"])
    order: list[bytes] = []
    run.start()
    lag = await _pace(run, senders, warm + count, rate, order, lambda k: cpu.start() if k == warm else None)
    total = warm + count
    # Counting frames first, reading them after: reading the senders' 11,000 frames for their
    # acknowledgements holds this loop for tens of milliseconds, and a frame still on its way
    # would be stamped that much late (it made the last message the slowest of the run).
    arrived = await wait_until(lambda: run.arrived(total), spec["drain"])
    acked = await wait_until(lambda: run.acked(total), spec["drain"])
    cpu.stop()  # before reading 1,000 sockets' frames: that is not the load generator's load
    # A frame that is not a message (an error, a presence event) counts as arrived: then the
    # reading finds a socket short and waits for the rest, reading only what is new.
    drained = arrived and await wait_until(lambda: run.drained(total), spec["drain"])
    run.closing = True
    close_all(sockets)
    for i in range(run.n):
        run.account(i)  # whatever came after the wait gave up, so the counts are complete
    samples = _latencies(run, order, warm)
    problems = []
    if not (acked and drained):
        problems.append(f"timed out: {len(run.ack_id)} of {total} acknowledged")
    lost = run.lost(total)
    if lost or run.extra(total) or run.duplicates:
        problems.append(f"{lost} lost, {run.extra(total)} extra, {run.duplicates} duplicate/out-of-order")
    if run.error_count:
        problems.append(f"{run.error_count} error events, e.g. {run.errors[0]}")
    if run.closed_early:
        problems.append(f"{run.closed_early} sockets closed by the server")
    return {
        "ok": not problems, "problems": problems,
        "p50_ms": percentile(samples, 0.50) * 1e3, "p90_ms": percentile(samples, 0.90) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3, "p999_ms": percentile(samples, 0.999) * 1e3,
        "max_ms": (samples[-1] if samples else float("nan")) * 1e3, "samples": len(samples),
        "messages": total, "rate": rate, "subscribers": run.n, "max_send_lag_ms": lag * 1e3,
        "lost": lost, "duplicates": run.duplicates, "errors": run.errors,
        **cpu.as_dict(),
    }


async def _pace(
    run: LatencyRun, senders: list[Any], total: int, rate: float, order: list[bytes],
    on_send: Callable[[int], object],
) -> float:
    """Send message k at start + k/rate, round-robin over the senders; return the worst lateness."""
    start = time.perf_counter()
    worst = 0.0
    for k in range(total):
        due = start + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        on_send(k)
        cid = f"{RUN}-L{k}"
        key = cid.encode()
        now = time.perf_counter()
        worst = max(worst, now - due)
        run.sent_at[key] = now
        order.append(key)
        senders[k % len(senders)].send(run.protocol.send_frame(BODY.format(seq=k, name="latency"), cid))
    return worst


def _latencies(run: LatencyRun, order: list[bytes], warm: int) -> list[float]:
    """Every delivery's send-to-receive time, in seconds, sorted; warm-up messages left out."""
    sent_at = {run.ack_id[cid]: run.sent_at[cid] for cid in order[warm:] if cid in run.ack_id}
    samples: list[float] = []
    for ids, times in zip(run.ids, run.times, strict=False):
        samples.extend(t - sent_at[mid] for mid, t in zip(ids, times, strict=False) if mid in sent_at)
    samples.sort()
    return samples


# -- connections: many idle sockets, server memory ----------------------------------------------------


class IdleRun(Subscribers):
    def __init__(self, n: int) -> None:
        super().__init__(n, PROTOCOLS["stream"])
        self.frames = 0

    def on_text(self, index: int, data: bytes) -> None:
        self.frames += 1  # presence events while the others connect


async def connections(spec: Spec, backend: wsclient.Backend) -> dict[str, Any]:
    n, pid = spec["connections"], spec["server_pid"]
    run = IdleRun(n)
    rss_before = rss_bytes(pid)
    cpu = CpuWindow(pid)
    cpu.start()
    sockets, failures = await connect_all(
        backend, ws_url(spec, run.protocol), spec["headers"], run, n, spec.get("concurrency", 200)
    )
    cpu.stop()
    accepted = sum(1 for s in sockets if s is not None)
    await asyncio.sleep(spec["settle"])
    server_count = await _server_count(spec)
    rss_after = rss_bytes(pid)
    still_open = accepted - run.closed_early
    run.closing = True
    close_all(sockets)
    problems = []
    if failures:
        problems.append(f"{sum(failures.values())} refused: {dict(failures)}")
    if run.closed_early:
        problems.append(f"{run.closed_early} sockets closed by the server while idle")
    if server_count is not None and server_count < still_open:
        problems.append(f"the server counts {server_count} sockets, {still_open} open")
    per_conn = (rss_after - rss_before) / max(accepted, 1)
    return {
        "ok": not problems, "problems": problems, "connections": n, "accepted": accepted,
        "server_count": server_count, "rss_before_mb": rss_before / 2**20, "rss_after_mb": rss_after / 2**20,
        "kb_per_connection": per_conn / 1024, "connect_s": cpu.wall, "connects_per_s": accepted / cpu.wall,
        **cpu.as_dict(), "idle_frames": run.frames,
    }


async def _server_count(spec: Spec) -> int | None:
    """How many sockets the server itself reports (chatd: /metrics; reference: /count)."""
    conn = await httpclient.open_connection(spec["url"])
    try:
        request = httpclient.build_request("GET", spec["url"], spec["count_path"], {})
        status, body = await conn.request(request)
    finally:
        conn.close()
    found = re.search(spec["count_regex"].encode(), body) if status == 200 else None
    return int(found.group(1)) if found else None


async def measure_clients(spec: Spec, state: dict[str, Any], clients: list[Any]) -> tuple[CpuWindow, list[Any]]:
    """Run closed-loop clients: warm up, measure for `duration` (state["measuring"] is True
    meanwhile, CPU counted), then stop them and collect how each ended."""
    cpu = CpuWindow(spec["server_pid"])
    tasks = [asyncio.create_task(client) for client in clients]
    await asyncio.sleep(spec["warmup"])
    state["measuring"] = True
    cpu.start()
    await asyncio.sleep(spec["duration"])
    state["measuring"] = False
    cpu.stop()
    state["stop"] = True
    ended = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), spec["drain"])
    return cpu, ended


# -- HTTP posts -------------------------------------------------------------------------------------


async def http_posts(spec: Spec, backend: wsclient.Backend) -> dict[str, Any]:
    url, path = spec["url"], spec["path"]
    conns = [await httpclient.open_connection(url) for _ in range(spec["clients"])]
    state = {"measuring": False, "stop": False, "window": 0}
    ids: list[int] = []
    errors: Counter[str] = Counter()

    async def client(c: int, conn: httpclient.HttpConnection) -> None:
        headers = {**spec["headers"][c % len(spec["headers"])], "Content-Type": "application/json"}
        seq = 0
        while not state["stop"]:
            seq += 1
            body = json.dumps({"body": BODY.format(seq=seq, name=f"h{c}"), "client_id": f"{RUN}-h{c}-{seq}"})
            request = httpclient.build_request("POST", url, path, headers, body.encode())
            status, answer = await conn.request(request)
            if status != 201:
                errors[f"HTTP {status}: {answer[:120].decode(errors='replace')}"] += 1
                continue
            ids.append(json.loads(answer)["message"]["id"])
            if state["measuring"]:
                state["window"] += 1

    cpu, results = await measure_clients(spec, state, [client(c, conn) for c, conn in enumerate(conns)])
    for conn in conns:
        conn.close()
    problems = [f"client failed: {r!r}" for r in results if isinstance(r, BaseException)]
    if errors:
        problems.append(f"{sum(errors.values())} failed posts: {dict(errors.most_common(3))}")
    if len(set(ids)) != len(ids):
        problems.append("two posts answered with the same message id")
    return {
        "ok": not problems, "problems": problems, "acked_per_s": state["window"] / cpu.wall,
        "messages": len(ids), "clients": len(conns),
        **cpu.as_dict(),
    }


# -- pages: room page and history API -----------------------------------------------------------------

_MESSAGE_ID = re.compile(rb'id="message-(\d+)"')


def _page_ids(kind: str, body: bytes) -> list[int]:
    if kind == "room":
        return [int(m) for m in _MESSAGE_ID.findall(body)]
    if kind == "search":  # newest first; a result without its hit marked counts as a wrong answer
        results = json.loads(body)["results"]
        return [r["message"]["id"] if "<mark>" in r["snippet"] else -1 for r in results]
    return [m["id"] for m in json.loads(body)["messages"]]


async def pages(spec: Spec, backend: wsclient.Backend) -> dict[str, Any]:
    results = {}
    for kind in spec["kinds"]:
        results[kind] = await _pages_kind(spec, kind)
    return {"ok": all(r["ok"] for r in results.values()), "kinds": results,
            "problems": [p for r in results.values() for p in r["problems"]]}


async def _pages_kind(spec: Spec, kind: str) -> dict[str, Any]:
    url, expected = spec["url"], {slug: ids for slug, ids in spec["expected"].items()}
    slugs = sorted(expected)
    template, headers = spec["paths"][kind], spec["page_headers"][kind]
    conns = [await httpclient.open_connection(url) for _ in range(spec["clients"])]
    state = {"measuring": False, "stop": False}
    latencies: list[float] = []
    bad: Counter[str] = Counter()
    requests = {
        slug: httpclient.build_request("GET", url, template.format(slug=slug), headers) for slug in slugs
    }

    async def client(c: int, conn: httpclient.HttpConnection) -> None:
        k = c
        while not state["stop"]:
            slug = slugs[k % len(slugs)]
            k += len(conns) + 1
            t0 = time.perf_counter()
            status, body = await conn.request(requests[slug])
            took = time.perf_counter() - t0
            if status != 200:
                bad[f"HTTP {status}"] += 1
            elif _page_ids(kind, body) != expected[slug]:
                bad[f"wrong message ids for {slug}"] += 1
            if state["measuring"]:
                latencies.append(took)

    cpu, done = await measure_clients(spec, state, [client(c, conn) for c, conn in enumerate(conns)])
    for conn in conns:
        conn.close()
    latencies.sort()
    problems = [f"client failed: {r!r}" for r in done if isinstance(r, BaseException)]
    if bad:
        problems.append(f"{sum(bad.values())} bad responses: {dict(bad.most_common(3))}")
    return {
        "ok": not problems, "problems": problems, "requests_per_s": len(latencies) / cpu.wall,
        "requests": len(latencies), "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3, "max_ms": (latencies[-1] if latencies else 0) * 1e3,
        "clients": len(conns), **cpu.as_dict(),
    }


# -- edits: closed-loop changes to existing messages, every subscriber gets every change ------------

UPDATED = b'{"type":"message_updated","id":'
EDIT_BODY = "edited {seq} from {name}: the quick brown fox jumps over the lazy dog, <b>twice</b> & more"


class Changer:
    """One sender: over its own HTTP connection, an edit of one of its own messages, then its
    reaction toggled on another sender's message, in turn. Each change is acknowledged by its
    200 and by its message_updated event coming back on the sender's own socket (events reach a
    socket in id order, so the first one for that message showing the change is its own)."""

    def __init__(self, run: EditsRun, index: int, conn: httpclient.HttpConnection, headers: dict[str, str],
                 username: str, own: list[int], target: int) -> None:
        self.run, self.index, self.conn, self.username = run, index, conn, username
        self.headers = {**headers, "Content-Type": "application/json"}
        self.own, self.target = own, target
        self.emoji = f"\N{THUMBS UP SIGN}{index}"  # one per sender: only this sender changes it
        self.emoji_path = quote(self.emoji, safe="")
        self.reacted = False
        # (the message's id, as its JSON starts, and as a number; does a message show the change; its event id)
        self.waiting: tuple[bytes, int, Callable[[dict[str, Any]], bool], asyncio.Future[int]] | None = None
        self.acked: list[int] = []  # event ids of this sender's changes
        self.bodies: dict[int, str] = {}  # message id -> its last body acknowledged
        self.failed = 0

    def _mine(self, message: dict[str, Any]) -> bool:
        return any(r["emoji"] == self.emoji and self.username in r["users"] for r in message["reactions"])

    def _next(self, k: int) -> tuple[bytes, int, Callable[[dict[str, Any]], bool], str | None]:
        url = self.run.url
        if k % 2 == 0:
            mid = self.own[(k // 2) % len(self.own)]
            body = EDIT_BODY.format(seq=k, name=f"{RUN}-e{self.index}")
            data = json.dumps({"body": body}).encode()
            return (httpclient.build_request("PATCH", url, f"/api/v1/messages/{mid}", self.headers, data), mid,
                    lambda m: m["body"] == body, body)
        mid = self.target
        self.reacted = not self.reacted
        if not self.reacted:
            path = f"/api/v1/messages/{mid}/reactions/{self.emoji_path}"
            return (httpclient.build_request("DELETE", url, path, self.headers), mid,
                    lambda m: not self._mine(m), None)
        data = json.dumps({"emoji": self.emoji}).encode()
        return (httpclient.build_request("POST", url, f"/api/v1/messages/{mid}/reactions", self.headers, data),
                mid, self._mine, None)

    async def loop(self) -> None:
        run, k = self.run, 0
        while not run.stopping and run.sent < run.max_messages:
            request, mid, shows, body = self._next(k)
            k += 1
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self.waiting = (b'"id":%d,' % mid, mid, shows, future)
            run.sent += 1
            status, answer = await self.conn.request(request)
            if status != 200 or not shows(json.loads(answer)["message"]):
                self.waiting = None
                self.failed += 1
                run.record_error(b"HTTP %d: %s" % (status, answer[:200]))
                return  # the state of its reaction is not known any more: this sender stops
            try:
                event_id = await asyncio.wait_for(future, run.drain)
            except TimeoutError:
                self.waiting = None
                return  # counted as unacknowledged
            self.waiting = None
            self.acked.append(event_id)
            if body is not None:
                self.bodies[mid] = body
            if run.measuring:
                run.window_acks += 1

    def on_event(self, event_id: int, data: bytes) -> None:
        waiting = self.waiting
        if waiting is None or waiting[3].done() or waiting[0] not in data:
            return
        message = json.loads(data)["message"]
        if message["id"] == waiting[1] and waiting[2](message):
            waiting[3].set_result(event_id)


class EditsRun(Subscribers):
    def __init__(self, spec: Spec) -> None:
        self.n = spec["subscribers"]
        super().__init__(self.n, PROTOCOLS["stream"])
        self.url = spec["url"]
        self.max_messages = spec["max_messages"]
        self.drain = spec["drain"]
        self.sent = 0
        self.stopping = False
        self.measuring = False
        self.window_deliveries = 0
        self.window_acks = 0
        self.new_messages = 0  # new-message events: none is sent during the run
        self.changers: list[Changer | None] = [None] * self.n

    def on_text(self, index: int, data: bytes) -> None:
        if data.startswith(UPDATED):
            start = len(UPDATED)
            event_id = int(data[start : data.index(b",", start)])
        elif b'"type":"message_updated"' in data:
            event_id = int(json.loads(data)["id"])
        else:
            if self.protocol.message_id(data) is not None:
                self.new_messages += 1
            elif self.protocol.is_error(data):
                self.record_error(data)
            return
        if event_id <= self.last[index]:
            self.duplicates += 1
        else:
            self.last[index] = event_id
        self.count[index] += 1
        if self.measuring:
            self.window_deliveries += 1
        changer = self.changers[index]
        if changer is not None:
            changer.on_event(event_id, data)


async def _seed(spec: Spec, conn: httpclient.HttpConnection, headers: dict[str, str], name: str,
                count: int) -> list[int]:
    """The messages a sender will edit, posted before any socket opens (so no socket gets them)."""
    ids = []
    for seq in range(count):
        body = json.dumps({"body": BODY.format(seq=seq, name=name), "client_id": f"{name}-{seq}"}).encode()
        request = httpclient.build_request("POST", spec["url"], spec["path"],
                                           {**headers, "Content-Type": "application/json"}, body)
        status, answer = await conn.request(request)
        if status != 201:
            raise Failure(f"seeding: HTTP {status}: {answer[:200].decode(errors='replace')}")
        ids.append(json.loads(answer)["message"]["id"])
    return ids


async def edits(spec: Spec, backend: wsclient.Backend) -> dict[str, Any]:
    run = EditsRun(spec)
    headers, users, senders = spec["headers"], spec["usernames"], spec["senders"]
    conns = [await httpclient.open_connection(spec["url"]) for _ in range(senders)]
    own = [await _seed(spec, conns[i], headers[i % len(headers)], f"{RUN}-e{i}", spec["seeds"])
           for i in range(senders)]
    started = time.perf_counter()
    sockets, failures = await connect_all(
        backend, ws_url(spec, run.protocol), headers, run, run.n, spec.get("concurrency", 100)
    )
    if failures:
        raise Failure(f"{sum(failures.values())} of {run.n} sockets refused: {dict(failures)}")
    connect_s = time.perf_counter() - started
    # Sender i is socket i's user (socket i uses headers[i % len(headers)]).
    changers = [Changer(run, i, conns[i], headers[i % len(headers)], users[i % len(users)], own[i],
                        own[(i + 1) % senders][0]) for i in range(senders)]
    for i, changer in enumerate(changers):
        run.changers[i] = changer
    await asyncio.sleep(spec["settle"])
    cpu = CpuWindow(spec["server_pid"])
    tasks = [asyncio.create_task(c.loop()) for c in changers]
    await asyncio.sleep(spec["warmup"])
    run.measuring = True
    cpu.start()
    await asyncio.sleep(spec["duration"])
    run.measuring = False
    cpu.stop()
    run.stopping = True
    ended = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2 * spec["drain"])
    total = sum(len(c.acked) for c in changers)
    drained = await wait_until(lambda: min(run.count) >= total, spec["drain"])
    await asyncio.sleep(spec["settle"])  # anything more than expected has its chance to arrive
    run.closing = True
    close_all(sockets)
    for conn in conns:
        conn.close()
    acked_ids = [e for c in changers for e in c.acked]
    unacked = run.sent - total
    problems = [f"sender failed: {r!r}" for r in ended if isinstance(r, BaseException)]
    # The fanout workload's checks (a change's event is its acknowledgement), and one more.
    problems += _fanout_problems(run, total, acked_ids, unacked, drained)
    if run.new_messages:
        problems.append(f"{run.new_messages} new-message events, none was posted")
    bodies = {mid: body for c in changers for mid, body in c.bodies.items()}
    return {
        "ok": not problems, "problems": problems,
        "deliveries_per_s": run.window_deliveries / cpu.wall, "changes_per_s": run.window_acks / cpu.wall,
        "changes": total, "seeded": sum(len(o) for o in own), "bodies": bodies,
        "deliveries": sum(run.count), "expected_deliveries": total * run.n,
        "lost": run.lost(total) + unacked, "duplicates": run.duplicates, "errors": run.errors,
        "subscribers": run.n, "senders": senders, "connect_s": connect_s,
        **cpu.as_dict(),
        "hit_max_messages": run.sent >= run.max_messages,
    }


WORKLOADS = {
    "fanout": fanout, "latency": latency, "connections": connections,
    "http_posts": http_posts, "pages": pages, "edits": edits,
}


async def _main(spec: Spec, backend: wsclient.Backend) -> dict[str, Any]:
    try:
        return await WORKLOADS[spec["workload"]](spec, backend)
    finally:
        await backend.aclose()


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    raise_nofile()
    backend = wsclient.pick(spec.get("client", "auto"))
    try:
        result = backend.run(_main(spec, backend))
    except Failure as exc:
        result = {"ok": False, "problems": [str(exc)], "failed": True}
    result["client"] = backend.name
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
