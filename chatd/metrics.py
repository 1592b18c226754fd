"""Prometheus text exposition of the hub's and the writer's counters."""

from __future__ import annotations

import os

from aiohttp import web

from chatd.state import HUB, SERVICES, STORE


def render_metrics(app: web.Application) -> str:
    hub = app[HUB]
    m = hub.metrics
    streams = sum(1 for c in hub.conns if c.kind == "stream")
    writer = app[STORE].messages_writer
    broker = app[SERVICES].broker
    node = broker.node_id if broker.shared else ""
    engine = "postgresql" if app[STORE].postgres else "sqlite"
    lines = [
        # Every figure below is this process's: with several, scrape each and tell them apart by this.
        "# HELP chatd_process_info The process these figures are from: its pid, its id among the processes"
        " joined by the broker (empty without one), and the database engine.",
        "# TYPE chatd_process_info gauge",
        f'chatd_process_info{{pid="{os.getpid()}",node="{node}",database="{engine}"}} 1',
        "# HELP chatd_connections Open WebSocket connections.",
        "# TYPE chatd_connections gauge",
        f'chatd_connections{{kind="stream"}} {streams}',
        f'chatd_connections{{kind="browser"}} {len(hub.conns) - streams}',
        "# HELP chatd_users_online Users with at least one open connection.",
        "# TYPE chatd_users_online gauge",
        f"chatd_users_online {len(hub.by_user)}",
        "# HELP chatd_messages_stored_total Messages committed to the database.",
        "# TYPE chatd_messages_stored_total counter",
        f"chatd_messages_stored_total {m.messages_stored}",
        "# HELP chatd_deliveries_total Frames handed to sockets.",
        "# TYPE chatd_deliveries_total counter",
        f"chatd_deliveries_total {m.deliveries}",
        "# HELP chatd_slow_consumers_dropped_total Sockets dropped for not reading.",
        "# TYPE chatd_slow_consumers_dropped_total counter",
        f"chatd_slow_consumers_dropped_total {m.dropped_slow}",
        "# HELP chatd_message_batches_deferred_total Message batches that found SQLite's write lock"
        " taken (a chatd command writing) and waited for it off the event loop.",
        "# TYPE chatd_message_batches_deferred_total counter",
        f"chatd_message_batches_deferred_total {writer.deferred if writer else 0}",
        "# HELP chatd_message_batches_guessed_total On PostgreSQL, message batches written in one round"
        " trip, their reads guessed from this process's own commits and checked under the lock.",
        "# TYPE chatd_message_batches_guessed_total counter",
        f"chatd_message_batches_guessed_total {writer.guessed if writer else 0}",
        "# HELP chatd_message_batches_read_again_total On PostgreSQL, guessed batches whose check found"
        " the database otherwise (another writer, a retry, a room changed) and that read it again.",
        "# TYPE chatd_message_batches_read_again_total counter",
        f"chatd_message_batches_read_again_total {writer.read_again if writer else 0}",
        "# HELP chatd_messages_waiting Messages received and not yet committed (queued, or in the batch"
        " being written; a slow disk or a chatd command holding SQLite's write lock makes them wait).",
        "# TYPE chatd_messages_waiting gauge",
        f"chatd_messages_waiting {writer.waiting if writer else 0}",
        "# HELP chatd_sqlite_write_seconds Time to commit one batch of messages.",
        "# TYPE chatd_sqlite_write_seconds histogram",
    ]
    running = 0
    for bound, count in zip(m.write_buckets, m.write_counts[:-1], strict=True):
        running += count
        lines.append(f'chatd_sqlite_write_seconds_bucket{{le="{bound}"}} {running}')
    running += m.write_counts[-1]
    lines += [
        f'chatd_sqlite_write_seconds_bucket{{le="+Inf"}} {running}',
        f"chatd_sqlite_write_seconds_sum {m.write_sum:.6f}",
        f"chatd_sqlite_write_seconds_count {running}",
    ]
    return "\n".join(lines) + "\n"
