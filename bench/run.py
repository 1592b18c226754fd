"""chatd's benchmark: the real `chatd serve` against minimal aiohttp reference servers.

    python bench/run.py                 # every workload, medians of 3 alternating rounds
    python bench/run.py --smoke         # a tiny version of every workload (proves it works)
    python bench/run.py --only fanout --rounds 5

Each workload runs chatd and its reference server (bench/refserver.py) in alternating
rounds, minutes apart, each on a fresh database copied from a template made with the
real CLI; the load generator (bench/loadgen.py) runs in its own process on another core.
A workload whose reference is "chatd:ROW" compares chatd with chatd: its reference run is
chatd running the workload that has row ROW, in the same alternating rounds, and that row's
figure is its reference (edits: changes fanned out against new messages fanned out, so the
ratio is the cost of a change relative to a new message, whatever the machine's speed).
Prints a table, then one JSON line per workload. Exits 1 if any message was lost or
duplicated or a workload could not run; with --strict, also if a target is missed.
See docs/performance.md for what each workload means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import wsclient  # noqa: E402
from harness import BenchError, Pinning, ServerProcess, Template  # noqa: E402
from procstat import raise_nofile  # noqa: E402

# -- sizes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    users: int = 50
    fanout_subscribers: int = 1000
    fanout_senders: int = 16
    fanout_seconds: float = 10.0
    latency_subscribers: int = 1000
    latency_senders: int = 10
    latency_rate: float = 100.0
    latency_count: int = 1000
    latency_warmup: int = 100
    connections: int = 10_000
    posts_senders: int = 16
    posts_seconds: float = 5.0
    http_clients: int = 16
    pages_messages: int = 1_000_000
    pages_rooms: int = 100
    pages_clients: int = 16
    pages_seconds: float = 5.0
    browser_subscribers: int = 1000
    browser_senders: int = 16
    search_clients: int = 16
    search_seconds: float = 5.0
    search_limit: int = 20
    edits_seeds: int = 4  # messages each edits sender posts first, and then edits in turn
    warmup_seconds: float = 1.0
    settle_seconds: float = 1.0
    drain_seconds: float = 20.0
    max_messages: int = 200_000
    rounds: int = 3


FULL = Sizes()
SMOKE = Sizes(
    users=4, fanout_subscribers=8, fanout_senders=2, fanout_seconds=0.5, latency_subscribers=8,
    latency_senders=2, latency_rate=100, latency_count=20, latency_warmup=5, connections=20,
    posts_senders=4, posts_seconds=0.5, http_clients=4, pages_messages=3000, pages_rooms=5,
    pages_clients=4, pages_seconds=0.5, browser_subscribers=8, browser_senders=2, search_clients=4,
    search_seconds=0.5, edits_seeds=2, warmup_seconds=0.2,
    settle_seconds=0.3, drain_seconds=10.0, max_messages=5000, rounds=1,
)

# -- rows of the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    metric: str
    unit: str
    higher_is_better: bool
    reference: str  # which reference server: bare or sqlite; chatd:ROW, another row of chatd's
    target: str
    passes: Callable[[float, float | None], bool | None]  # (chatd median, ratio) -> met? None: no target


def _ratio_at_least(x: float) -> Callable[[float, float | None], bool]:
    return lambda value, ratio: ratio is not None and ratio >= x


ROWS = [
    Row("fanout", "deliveries/s", "/s", True, "bare", ">= 0.6x bare broadcaster", _ratio_at_least(0.6)),
    Row("latency", "p99 latency", "ms", False, "bare", "<= 2x bare and < 50 ms",
        lambda v, r: r is not None and r <= 2.0 and v < 50.0),
    Row("connections", "memory/connection", "KB", False, "bare", "<= 1.5x bare, all accepted",
        lambda v, r: r is not None and r <= 1.5),
    Row("posts", "acked msgs/s (stream)", "/s", True, "sqlite", ">= 1.3x one-commit-per-message",
        _ratio_at_least(1.3)),
    Row("posts_http", "stored msgs/s (HTTP)", "/s", True, "sqlite", ">= 5,000/s", lambda v, r: v >= 5000),
    # No target: chatd's HTTP posts against aiohttp answering the same POSTs with no auth and
    # no storage, which bounds what any aiohttp server can reach on this machine at this time.
    Row("http_ceiling", "HTTP posts vs no-op", "/s", True, "bare", "none: aiohttp's own ceiling",
        lambda v, r: None),
    Row("pages_room", "room page req/s", "/s", True, "sqlite", ">= 2,500 req/s", lambda v, r: v >= 2500),
    Row("pages_history", "history p99", "ms", False, "sqlite", "< 10 ms", lambda v, r: v < 10.0),
    Row("browser", "deliveries/s (HTML)", "/s", True, "bare", ">= 0.5x bare broadcaster",
        _ratio_at_least(0.5)),
    Row("search", "search p99", "ms", False, "sqlite", "< 50 ms", lambda v, r: v < 50.0),
    # No target: chatd's searches against the same FTS5 query run bare on the same database.
    Row("search_rate", "searches/s", "/s", True, "sqlite", "none: chatd over bare FTS5", lambda v, r: None),
    Row("edits", "change deliveries/s", "/s", True, "chatd:fanout", ">= 0.8x chatd's new messages",
        _ratio_at_least(0.8)),
    Row("broker_fanout", "deliveries/s, Redis broker", "/s", True, "chatd:fanout",
        ">= 0.85x chatd without a broker", _ratio_at_least(0.85)),
    Row("broker_posts", "acked msgs/s, Redis broker", "/s", True, "chatd:posts",
        ">= 0.85x chatd without a broker", _ratio_at_least(0.85)),
    # No target (issue 15 asks for the figures): two processes and Redis on this box against one.
    Row("cluster_fanout", "deliveries/s, 2 processes", "/s", True, "chatd:fanout",
        "none: report, with each process's CPU", lambda v, r: None),
    # The reference is chatd's posts on SQLite, for scale; the target is absolute.
    Row("pg_posts", "acked msgs/s, PostgreSQL", "/s", True, "chatd:posts", ">= 3,000/s", lambda v, r: v >= 3000),
]
ROW_BY_NAME = {row.name: row for row in ROWS}


@dataclass
class Sample:
    """One row's figure from one run of one server."""

    value: float
    server_cpu: float
    loadgen_cpu: float
    other_cpu: float  # everything else on the machine meanwhile: noise
    ok: bool
    problems: list[str]
    details: dict[str, Any]


def sample(value: float, result: dict[str, Any], problems: list[str] | None = None) -> Sample:
    found = list(result.get("problems", [])) + list(problems or [])
    return Sample(value, result.get("server_cpu", 0.0), result.get("loadgen_cpu", 0.0),
                  result.get("other_cpu", 0.0), bool(result.get("ok")) and not found, found, result)


def failed(error: str) -> Sample:
    return Sample(float("nan"), 0.0, 0.0, 0.0, False, [error], {})


# -- one run of one server --------------------------------------------------------------------------------


@dataclass
class Context:
    workdir: Path
    sizes: Sizes
    pinning: Pinning
    client: str
    ref_loop: str
    template: Template | None = None
    pages_expected: dict[str, list[int]] | None = None
    search_expected: dict[str, list[int]] | None = None
    loop_seen: str = "asyncio"
    profile_dir: Path | None = None
    round: int = 0

    @property
    def pages_db(self) -> Path:
        return self.workdir / "pages.db"


@contextlib.contextmanager
def server(ctx: Context, kind: str, name: str, db: Path | str | None = None, broker: str = ""
           ) -> Iterator[ServerProcess]:
    """Start chatd (on a fresh copy of the template, or on `db`; with `broker`, joined to
    that Redis) or a reference server."""
    assert ctx.template is not None
    cpu = ctx.pinning.server_cpu
    if kind == "chatd":
        db = db or ctx.template.copy_to(ctx.workdir / f"{name}.db")
        proc = harness.chatd_server(db, cpu, ctx.workdir / f"chatd-{name}.log", broker)
    else:
        pages = ctx.pages_db if name in ("pages", "search") else None
        proc = harness.reference_server(kind, ctx.workdir, cpu, ctx.ref_loop, pages)
    proc.start()
    profiler = None
    if kind == "chatd":
        ctx.loop_seen = harness.event_loop_of(proc.pid)
        if ctx.profile_dir is not None:
            out = ctx.profile_dir / f"chatd-{name}-round{ctx.round + 1}.svg"
            profiler = harness.Profiler(proc.pid, out, ctx.pinning.loadgen_cpu)
    try:
        yield proc
    finally:
        if profiler is not None:
            profiler.stop()
        code = proc.stop()
        if kind == "chatd" and code != 0:
            raise BenchError(f"chatd serve exited with status {code}: {proc.log_tail()}")


def stored_problems(proc: ServerProcess, expected: int) -> list[str]:
    """After the server stopped: every acknowledged message is in its database, once."""
    if proc.db is None:
        return []
    found = harness.count_messages(proc.db)
    return [] if found == expected else [f"{found} messages in the database, {expected} acknowledged"]


def base_spec(ctx: Context, proc: ServerProcess, workload: str) -> dict[str, Any]:
    s = ctx.sizes
    return {"workload": workload, "client": ctx.client, "url": proc.url, "server_pid": proc.pid,
            "warmup": s.warmup_seconds, "settle": s.settle_seconds, "drain": s.drain_seconds,
            "max_messages": s.max_messages}


def loadgen(ctx: Context, spec: dict[str, Any], budget: float) -> dict[str, Any]:
    return harness.run_loadgen(spec, ctx.workdir, ctx.pinning.loadgen_cpu, timeout=budget + 120)


def bearer(ctx: Context) -> list[dict[str, str]]:
    assert ctx.template is not None
    return ctx.template.bearer_headers()


# -- workloads: each runs one server once and returns its rows' samples ------------------------------------


def run_fanout(ctx: Context, kind: str, broker: str = "") -> dict[str, Sample]:
    s = ctx.sizes
    with server(ctx, kind, "fanout", broker=broker) as proc:
        spec = {**base_spec(ctx, proc, "fanout"), "protocol": "stream", "headers": bearer(ctx),
                "subscribers": s.fanout_subscribers, "senders": s.fanout_senders,
                "duration": s.fanout_seconds}
        result = loadgen(ctx, spec, s.fanout_seconds + 2 * s.drain_seconds)
    return {"fanout": sample(result.get("deliveries_per_s", 0.0), result,
                             stored_problems(proc, result.get("messages", 0)))}


def run_latency(ctx: Context, kind: str) -> dict[str, Sample]:
    s = ctx.sizes
    with server(ctx, kind, "latency") as proc:
        spec = {**base_spec(ctx, proc, "latency"), "protocol": "stream", "headers": bearer(ctx),
                "subscribers": s.latency_subscribers, "senders": s.latency_senders, "rate": s.latency_rate,
                "count": s.latency_count, "warmup_messages": s.latency_warmup}
        budget = (s.latency_count + s.latency_warmup) / s.latency_rate + 2 * s.drain_seconds
        result = loadgen(ctx, spec, budget)
    return {"latency": sample(result.get("p99_ms", float("nan")), result,
                              stored_problems(proc, result.get("messages", 0)))}


def run_connections(ctx: Context, kind: str) -> dict[str, Sample]:
    s = ctx.sizes
    with server(ctx, kind, "connections") as proc:
        count = ("/metrics", r'chatd_connections\{kind="stream"\} (\d+)') if kind == "chatd" else (
            "/count", r'"streams": ?(\d+)')
        spec = {**base_spec(ctx, proc, "connections"), "headers": bearer(ctx), "connections": s.connections,
                "count_path": count[0], "count_regex": count[1], "settle": max(2.0, s.settle_seconds)}
        result = loadgen(ctx, spec, 120 + s.connections / 100)
    accepted = result.get("accepted")
    extra = [] if accepted == s.connections else [f"{accepted} of {s.connections} accepted"]
    return {"connections": sample(result.get("kb_per_connection", float("nan")), result, extra)}


def run_posts(ctx: Context, kind: str, broker: str = "", db: str | None = None) -> dict[str, Sample]:
    s = ctx.sizes
    with server(ctx, kind, "posts", db=db, broker=broker) as proc:
        spec = {**base_spec(ctx, proc, "fanout"), "protocol": "stream", "headers": bearer(ctx),
                "subscribers": s.posts_senders, "senders": s.posts_senders, "duration": s.posts_seconds}
        stream = loadgen(ctx, spec, s.posts_seconds + 2 * s.drain_seconds)
        http = http_posts(ctx, proc)
    stored = stored_problems(proc, stream.get("messages", 0) + http.get("messages", 0))
    posts_http = sample(http.get("acked_per_s", 0.0), http, stored)
    if kind == "chatd" or broker or db:
        ceiling = posts_http  # the row compares this same run with the bare server's
    else:
        with server(ctx, "bare", "posts") as bare:
            result = http_posts(ctx, bare)
        ceiling = sample(result.get("acked_per_s", 0.0), result)
    return {"posts": sample(stream.get("acked_per_s", 0.0), stream, stored),
            "posts_http": posts_http, "http_ceiling": ceiling}


def http_posts(ctx: Context, proc: ServerProcess) -> dict[str, Any]:
    """16 clients POSTing messages, each waiting for its answer before the next."""
    s = ctx.sizes
    spec = {**base_spec(ctx, proc, "http_posts"), "headers": bearer(ctx), "clients": s.http_clients,
            "path": "/api/v1/rooms/general/messages", "duration": s.posts_seconds}
    return loadgen(ctx, spec, s.posts_seconds + s.drain_seconds)


def run_pages(ctx: Context, kind: str) -> dict[str, Sample]:
    s = ctx.sizes
    assert ctx.template is not None and ctx.pages_expected is not None
    # A fresh copy per run: a page view may write (read marks, sessions), the next round must not see it.
    db = harness.copy_db(ctx.pages_db, ctx.workdir / "pages-run.db") if kind == "chatd" else None
    with server(ctx, kind, "pages", db=db) as proc:
        # The database was written by hand: chatd must see the read state it was built with.
        token = ctx.template.tokens[0]
        checked = harness.check_unread(proc.url, token, s.pages_rooms) if kind == "chatd" else []
        spec = {**base_spec(ctx, proc, "pages"), "clients": s.pages_clients, "duration": s.pages_seconds,
                "kinds": ["room", "history"], "expected": ctx.pages_expected,
                "paths": {"room": "/r/{slug}", "history": "/api/v1/rooms/{slug}/messages?limit=50"},
                "page_headers": {"room": {"Cookie": f"chatd_session={ctx.template.sessions[0]}"},
                                 "history": bearer(ctx)[0]}}
        result = loadgen(ctx, spec, 2 * (s.pages_seconds + s.drain_seconds))
    kinds = result.get("kinds", {})
    room, history = kinds.get("room", {"problems": result.get("problems")}), kinds.get("history", {})
    return {"pages_room": sample(room.get("requests_per_s", 0.0), room, checked),
            "pages_history": sample(history.get("p99_ms", float("nan")), history)}


def run_browser(ctx: Context, kind: str) -> dict[str, Sample]:
    s = ctx.sizes
    assert ctx.template is not None
    with server(ctx, kind, "browser") as proc:
        spec = {**base_spec(ctx, proc, "fanout"), "protocol": "browser",
                "headers": ctx.template.browser_headers(proc.url), "subscribers": s.browser_subscribers,
                "senders": s.browser_senders, "duration": s.fanout_seconds}
        result = loadgen(ctx, spec, s.fanout_seconds + 2 * s.drain_seconds)
    return {"browser": sample(result.get("deliveries_per_s", 0.0), result,
                              stored_problems(proc, result.get("messages", 0)))}


def run_search(ctx: Context, kind: str) -> dict[str, Sample]:
    s = ctx.sizes
    assert ctx.template is not None and ctx.search_expected is not None
    db = harness.copy_db(ctx.pages_db, ctx.workdir / "search-run.db") if kind == "chatd" else None
    with server(ctx, kind, "search", db=db) as proc:
        # user00 may read every room of the pages database (all public): every hit is theirs.
        spec = {**base_spec(ctx, proc, "pages"), "clients": s.search_clients, "duration": s.search_seconds,
                "kinds": ["search"], "expected": ctx.search_expected,
                "paths": {"search": f"/api/v1/search?q={{slug}}&limit={s.search_limit}"},
                "page_headers": {"search": bearer(ctx)[0]}}
        result = loadgen(ctx, spec, 2 * (s.search_seconds + s.drain_seconds))
    found = result.get("kinds", {}).get("search", {"problems": result.get("problems")})
    return {"search": sample(found.get("p99_ms", float("nan")), found),
            "search_rate": sample(found.get("requests_per_s", 0.0), found)}


def run_edits(ctx: Context, kind: str) -> dict[str, Sample]:
    """The fanout workload's sockets and senders, the senders changing messages instead."""
    s = ctx.sizes
    assert ctx.template is not None and kind == "chatd"
    with server(ctx, kind, "edits") as proc:
        spec = {**base_spec(ctx, proc, "edits"), "headers": bearer(ctx), "usernames": ctx.template.users,
                "subscribers": s.fanout_subscribers, "senders": s.fanout_senders, "duration": s.fanout_seconds,
                "seeds": s.edits_seeds, "path": "/api/v1/rooms/general/messages"}
        result = loadgen(ctx, spec, s.fanout_seconds + 4 * s.drain_seconds)
    stored = harness.changes_problems(proc.db, result) if proc.db is not None and result.get("ok") else []
    return {"edits": sample(result.get("deliveries_per_s", 0.0), result, stored)}


def run_broker_fanout(ctx: Context, kind: str) -> dict[str, Sample]:
    """The fanout workload against one chatd joined to a private Redis (its reference: the
    same workload without a broker)."""
    assert kind == "chatd"
    with harness.RedisProcess(ctx.workdir) as redis:
        return {"broker_fanout": run_fanout(ctx, kind, redis.url)["fanout"]}


def run_broker_posts(ctx: Context, kind: str) -> dict[str, Sample]:
    """The posts workload's 16 stream senders, against one chatd joined to a private Redis."""
    assert kind == "chatd"
    with harness.RedisProcess(ctx.workdir) as redis:
        return {"broker_posts": run_posts(ctx, kind, redis.url)["posts"]}


def run_cluster_fanout(ctx: Context, kind: str) -> dict[str, Sample]:
    """The fanout workload against two chatd processes on one database joined by a private
    Redis, the subscribers and senders spread over both. Nothing pinned: the two processes,
    Redis and the load generator share the box's cores as they would in production."""
    assert kind == "chatd" and ctx.template is not None
    s = ctx.sizes
    db = ctx.template.copy_to(ctx.workdir / "cluster.db")
    with harness.RedisProcess(ctx.workdir) as redis:
        procs = [harness.chatd_server(db, None, ctx.workdir / f"chatd-cluster-{n}.log", redis.url) for n in (1, 2)]
        try:
            for proc in procs:
                proc.start()
            spec = {**base_spec(ctx, procs[0], "fanout"), "protocol": "stream", "headers": bearer(ctx),
                    "urls": [p.url for p in procs], "subscribers": s.fanout_subscribers,
                    "senders": s.fanout_senders, "duration": s.fanout_seconds,
                    "watch_pids": {"chatd_2": procs[1].pid, "redis": redis.proc.pid}}  # type: ignore[union-attr]
            result = harness.run_loadgen(spec, ctx.workdir, None, timeout=s.fanout_seconds + 2 * s.drain_seconds + 120)
        finally:
            codes = [proc.stop() for proc in procs]
    if any(codes):
        raise BenchError(f"a chatd serve of the pair exited with status {codes}")
    watched = result.get("watched_cpu", {})
    result = {**result, "server_cpu": result.get("server_cpu", 0.0) + watched.get("chatd_2", 0.0),
              "per_process_cpu": [result.get("server_cpu", 0.0), watched.get("chatd_2", 0.0)],
              "redis_cpu": watched.get("redis", 0.0)}
    return {"cluster_fanout": sample(result.get("deliveries_per_s", 0.0), result,
                                     stored_problems(procs[0], result.get("messages", 0)))}


def run_pg_posts(ctx: Context, kind: str) -> dict[str, Sample]:
    """The posts workload's 16 stream senders against chatd on a private PostgreSQL (fsync on),
    the template's users copied in with `chatd migrate-db`."""
    assert kind == "chatd" and ctx.template is not None
    with harness.PostgresProcess(ctx.workdir) as pg:
        url = pg.database_from(ctx.template.copy_to(ctx.workdir / "pg-template.db"))
        return {"pg_posts": run_posts(ctx, kind, db=url)["posts"]}


@dataclass(frozen=True)
class Workload:
    name: str
    reference: str
    rows: tuple[str, ...]
    run: Callable[[Context, str], dict[str, Sample]]


WORKLOADS = [
    Workload("fanout", "bare", ("fanout",), run_fanout),
    Workload("latency", "bare", ("latency",), run_latency),
    Workload("connections", "bare", ("connections",), run_connections),
    Workload("posts", "sqlite", ("posts", "posts_http", "http_ceiling"), run_posts),
    Workload("pages", "sqlite", ("pages_room", "pages_history"), run_pages),
    Workload("browser", "bare", ("browser",), run_browser),
    Workload("search", "sqlite", ("search", "search_rate"), run_search),
    Workload("edits", "chatd:fanout", ("edits",), run_edits),
    Workload("broker_fanout", "chatd:fanout", ("broker_fanout",), run_broker_fanout),
    Workload("broker_posts", "chatd:posts", ("broker_posts",), run_broker_posts),
    Workload("cluster_fanout", "chatd:fanout", ("cluster_fanout",), run_cluster_fanout),
    Workload("pg_posts", "chatd:posts", ("pg_posts",), run_pg_posts),
]


def run_side(ctx: Context, workload: Workload, kind: str) -> dict[str, Sample]:
    """One run of chatd or of the workload's reference; a reference "chatd:ROW" is chatd
    running the workload that has that row, whose figure then stands for every row here."""
    if kind.startswith("chatd:"):
        row = kind.split(":", 1)[1]
        other = next(w for w in WORKLOADS if row in w.rows)
        found = other.run(ctx, "chatd")[row]
        return dict.fromkeys(workload.rows, found)
    return workload.run(ctx, kind)


# -- rounds and medians -------------------------------------------------------------------------------------


@dataclass
class Result:
    row: Row
    chatd: list[Sample] = field(default_factory=list)
    reference: list[Sample] = field(default_factory=list)


def run_workload(ctx: Context, workload: Workload, rounds: int, results: dict[str, Result]) -> None:
    """Alternate chatd and its reference (chatd first in odd rounds, second in even ones)."""
    for r in range(rounds):
        ctx.round = r
        order = ["chatd", workload.reference] if r % 2 == 0 else [workload.reference, "chatd"]
        for kind in order:
            started = time.monotonic()
            try:
                samples = run_side(ctx, workload, kind)
            except BenchError as exc:
                samples = {name: failed(str(exc)) for name in workload.rows}
            for name, found in samples.items():
                side = results[name].chatd if kind == "chatd" else results[name].reference
                side.append(found)
                took = time.monotonic() - started
                progress(f"[{workload.name}] round {r + 1}/{rounds} {kind:6s} "
                         f"{describe(ROW_BY_NAME[name], found)} ({took:.0f} s)")


def describe(row: Row, s: Sample) -> str:
    text = (f"{row.name}: {fmt(s.value)} {row.unit} (CPU: server {s.server_cpu:.0f}%, loadgen "
            f"{s.loadgen_cpu:.0f}%, others {s.other_cpu:.0f}%)")
    return text if s.ok else text + " FAILED: " + "; ".join(s.problems)


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN (a failed run)
    return statistics.median(clean) if clean else float("nan")


def summarize(result: Result, smoke: bool) -> dict[str, Any]:
    row = result.row
    chatd = median([s.value for s in result.chatd])
    ref = median([s.value for s in result.reference])
    ratio = chatd / ref if ref == ref and ref and chatd == chatd else None
    ok = bool(result.chatd) and all(s.ok for s in result.chatd + result.reference)
    met = None if smoke or not ok else row.passes(chatd, ratio)
    return {
        "workload": row.name, "metric": row.metric, "unit": row.unit, "chatd": _num(chatd),
        "reference": _num(ref), "reference_server": row.reference, "ratio": _num(ratio), "target": row.target,
        "pass": met, "ok": ok,
        "server_cpu": _num(median([s.server_cpu for s in result.chatd])),
        "loadgen_cpu": _num(median([s.loadgen_cpu for s in result.chatd])),
        "reference_server_cpu": _num(median([s.server_cpu for s in result.reference])),
        "reference_loadgen_cpu": _num(median([s.loadgen_cpu for s in result.reference])),
        "other_cpu": _num(median([s.other_cpu for s in result.chatd + result.reference])),
        # Throughput per core-second of server CPU: steadier than the raw figure on a shared machine
        # when the server is CPU-bound (it is not for latency-bound runs).
        "chatd_per_server_core": _per_core(row, result.chatd),
        "reference_per_server_core": _per_core(row, result.reference),
        "rounds": len(result.chatd), "chatd_runs": [_num(s.value) for s in result.chatd],
        "reference_runs": [_num(s.value) for s in result.reference],
        "problems": sorted({p for s in result.chatd + result.reference for p in s.problems}),
        **_cluster_cpu(result.chatd),
    }


def _cluster_cpu(samples: list[Sample]) -> dict[str, Any]:
    """For the two-process workload: each process's CPU and Redis's (medians), in % of a core."""
    found = [s.details for s in samples if "per_process_cpu" in s.details]
    if not found:
        return {}
    return {"per_process_cpu": [_num(median([d["per_process_cpu"][i] for d in found])) for i in (0, 1)],
            "redis_cpu": _num(median([d["redis_cpu"] for d in found]))}


def _per_core(row: Row, samples: list[Sample]) -> float | None:
    if not row.higher_is_better:
        return None
    return _num(median([s.value * 100 / s.server_cpu for s in samples if s.server_cpu > 0]))


def _num(x: float | None) -> float | None:
    if x is None or x != x:
        return None
    return round(x, 3 if abs(x) < 100 else 1)


# -- output -----------------------------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.2f}" if abs(x) < 100 else f"{x:.0f}"


def table(summaries: list[dict[str, Any]]) -> str:
    head = ("workload", "metric", "chatd", "reference", "ratio", "target", "result", "CPU srv/lg chatd",
            "CPU srv/lg ref")
    lines = [head]
    for s in summaries:
        result = "FAIL (loss)" if not s["ok"] else {True: "pass", False: "miss", None: "-"}[s["pass"]]
        lines.append((
            s["workload"], f"{s['metric']} [{s['unit']}]", fmt(s["chatd"]),
            f"{fmt(s['reference'])} ({s['reference_server']})",
            "-" if s["ratio"] is None else f"{s['ratio']:.2f}x", s["target"], result,
            f"{fmt(s['server_cpu'])}% / {fmt(s['loadgen_cpu'])}%",
            f"{fmt(s['reference_server_cpu'])}% / {fmt(s['reference_loadgen_cpu'])}%",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def progress(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "loadavg": os.getloadavg()}


# -- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny version of every workload, a few seconds")
    parser.add_argument("--only", action="append", choices=[w.name for w in WORKLOADS], metavar="WORKLOAD",
                        help="run only this workload (repeatable): " + ", ".join(w.name for w in WORKLOADS))
    parser.add_argument("--rounds", type=int, help="alternating rounds per workload (default 3; smoke 1)")
    parser.add_argument("--client", choices=("auto", "picows", "aiohttp"), default="auto",
                        help="load generator's WebSocket client (auto: picows+uvloop if installed)")
    parser.add_argument("--ref-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="reference servers' event loop (auto: the one chatd runs on)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the servers (default 0)")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="core for the load generator (default 1)")
    parser.add_argument("--strict", action="store_true", help="also exit 1 when a target is missed")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record a py-spy flame graph of chatd during each run into DIR (needs py-spy; "
                             "the profiler takes CPU on the load generator's core, so figures drop)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="directory for the raw JSON results (not written with --smoke)")
    return parser.parse_args(argv)


def prepare(ctx: Context, selected: list[Workload]) -> None:
    started = time.monotonic()
    ctx.template = harness.build_template(ctx.workdir, ctx.sizes.users, ctx.workdir / "chatd-template.log")
    ctx.loop_seen = ctx.template.loop  # so that the first workload's reference runs on it too
    progress(f"template: {ctx.sizes.users} users, tokens and sessions via the CLI and /login "
             f"({time.monotonic() - started:.0f} s)")
    if any(w.name in ("pages", "search") for w in selected):
        started = time.monotonic()
        ctx.pages_expected = harness.build_pages_db(
            ctx.template, ctx.pages_db, ctx.sizes.pages_messages, ctx.sizes.pages_rooms)
        progress(f"pages database: {ctx.sizes.pages_messages:,} messages in {ctx.sizes.pages_rooms} rooms "
                 f"({time.monotonic() - started:.0f} s, search indexes included)")
    if any(w.name == "search" for w in selected):
        ctx.search_expected = harness.search_expected(ctx.pages_db, ctx.sizes.search_limit)
        short = [w for w, ids in ctx.search_expected.items() if len(ids) < ctx.sizes.search_limit]
        if short:
            raise BenchError(f"the pages database has too few messages for the search words {short}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client == "picows" and not wsclient.fast_client_available():
        progress("error: --client picows needs picows and uvloop: pip install -r bench/requirements.txt")
        return 2
    sizes = SMOKE if args.smoke else FULL
    rounds = args.rounds or sizes.rounds
    selected = [w for w in WORKLOADS if not args.only or w.name in args.only]
    nofile = raise_nofile()
    if not args.smoke and nofile < sizes.connections + 1000:
        progress(f"warning: open-file limit {nofile} is too low for {sizes.connections} connections")
    client = args.client
    if client == "auto" and not wsclient.fast_client_available():
        progress("note: picows/uvloop not installed (pip install -r bench/requirements.txt); "
                 "using the aiohttp client, which may be the bottleneck")
    pinning = Pinning.choose(args.server_cpu, args.loadgen_cpu)
    started = time.monotonic()
    info = {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "smoke": args.smoke, "rounds": rounds, "pinning": pinning.describe(),
            "client": wsclient.pick(client).name, **machine()}
    progress(f"chatd benchmark: {info['pinning']}; client {info['client']}; load average {info['loadavg']}")
    with tempfile.TemporaryDirectory(prefix="chatd-bench-") as tmp:
        workdir = Path(tmp)
        ref_loop = "asyncio" if args.ref_loop == "auto" else args.ref_loop
        ctx = Context(workdir, sizes, pinning, client, ref_loop, profile_dir=args.profile)
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        results = {name: Result(ROW_BY_NAME[name]) for w in selected for name in w.rows}
        try:
            prepare(ctx, selected)
            for workload in selected:
                if args.ref_loop == "auto":
                    ctx.ref_loop = ctx.loop_seen
                run_workload(ctx, workload, rounds, results)
        except BenchError as exc:
            progress(f"error: {exc}")
            return 1
        finally:
            if args.keep:
                kept = Path(tempfile.mkdtemp(prefix="chatd-bench-kept-"))
                shutil.copytree(tmp, kept, dirs_exist_ok=True)
                progress(f"kept {kept}")
    summaries = [summarize(r, args.smoke) for r in results.values()]
    info.update(elapsed_s=round(time.monotonic() - started), loadavg_after=os.getloadavg(),
                chatd_loop=ctx.loop_seen, reference_loop=ctx.ref_loop)
    report(info, summaries)
    if not args.smoke:
        save(args.results, info, summaries, results)
    lost = any(not s["ok"] for s in summaries)
    missed = any(s["pass"] is False for s in summaries)
    return 1 if lost or (args.strict and missed) else 0


def report(info: dict[str, Any], summaries: list[dict[str, Any]]) -> None:
    print(f"chatd benchmark, {info['date']}, {info['cpu']} ({info['cores']} cores), Python {info['python']}")
    print(f"{info['pinning']}; client {info['client']}; chatd loop {info['chatd_loop']}, reference loop "
          f"{info['reference_loop']}; medians of {info['rounds']} alternating round(s); "
          f"load average before {fmt_load(info['loadavg'])}, after {fmt_load(info['loadavg_after'])}; "
          f"{info['elapsed_s']} s")
    print()
    print(table(summaries))
    print()
    for s in summaries:
        print(json.dumps(s))
    sys.stdout.flush()


def fmt_load(load: tuple[float, ...]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def save(
    directory: Path, info: dict[str, Any], summaries: list[dict[str, Any]], results: dict[str, Result]
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw = {name: {"chatd": [s.__dict__ for s in r.chatd], "reference": [s.__dict__ for s in r.reference]}
           for name, r in results.items()}
    path.write_text(json.dumps({"info": info, "summary": summaries, "runs": raw}, indent=1, default=str))
    progress(f"raw results: {path}")


if __name__ == "__main__":
    sys.exit(main())
