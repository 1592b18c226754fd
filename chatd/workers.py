"""`chatd serve --workers N`: N server processes on one port, joined by the broker.

The parent starts N `chatd serve` processes with the same settings and one port, each
listening with SO_REUSEPORT (the kernel spreads new connections over them; any process
serves any socket, so no sticky sessions), prints the address once when all of them are up,
restarts one that dies, and passes SIGTERM/SIGINT on. It serves nothing itself. A worker
whose parent is killed gets SIGTERM from the kernel (PR_SET_PDEATHSIG), so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import click

from chatd.config import Config
from chatd.errors import ChatdError

log = logging.getLogger("chatd.workers")
RESTART_DELAY = 1.0  # seconds before a worker that died is started again
STOP_WAIT = 20.0  # seconds the workers have to shut down before they are killed
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]


def worker_argv(config: Config, config_file: Path | None, port: int) -> list[str]:
    """A worker's command line: the settings this process resolved, one worker, one port. The
    database and broker go in the environment (worker_env): their URLs may hold passwords,
    which a command line shows to every user of the box."""
    argv = [sys.executable, "-m", "chatd", "serve", "--host", config.host,
            "--port", str(port), "--workers", "1", "--log-level", config.log_level,
            "--behind-proxy" if config.behind_proxy else "--no-behind-proxy"]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    return argv


def worker_env(config: Config) -> dict[str, str]:
    return {**os.environ, "CHATD_DB": str(config.db), "CHATD_BROKER": config.broker}


class Worker:
    def __init__(self, number: int, argv: list[str], env: dict[str, str]) -> None:
        self.number, self.argv, self.env = number, argv, env
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0

    async def start(self) -> list[str]:
        """Start it; returns the lines it printed once it listens (its address, the setup link)."""
        self.started = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent, env=self.env)
        assert self.process.stdout is not None
        lines: list[str] = []
        while True:
            line = (await self.process.stdout.readline()).decode(errors="replace").rstrip("\n")
            if not line:
                await self.process.wait()
                raise ChatdError(f"worker {self.number} could not start (exit status {self.process.returncode}); "
                                 "its reason is above")
            lines.append(line)
            if " listening on " in line:
                break
        # The setup link, if any, follows at once (the worker flushes both together).
        with contextlib.suppress(asyncio.TimeoutError):
            line = (await asyncio.wait_for(self.process.stdout.readline(), 0.5)).decode(errors="replace").rstrip()
            if line:
                lines.append(line)
        asyncio.create_task(self._drain())
        return lines

    async def _drain(self) -> None:
        """Pass on whatever else it prints."""
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()


async def supervise(config: Config, config_file: Path | None) -> int:
    """Run config.workers workers until SIGTERM or SIGINT; returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = config.port or free_port(config.host)
    argv = worker_argv(config, config_file, port)
    workers = [Worker(n + 1, argv, worker_env(config)) for n in range(config.workers)]
    try:
        printed: list[str] = []
        for worker in workers:  # one after another: the first makes the setup link the others print
            lines = await worker.start()
            printed = printed or lines
        listening = next((line for line in printed if " listening on " in line), "")
        pids = ", ".join(str(w.process.pid) for w in workers if w.process)
        click.echo(f"{listening} ({config.workers} workers, pids {pids})")
        for line in printed:
            if line is not listening:
                click.echo(line)
        sys.stdout.flush()
        log.info("event=workers_started count=%d port=%d", config.workers, port)
        await _watch(workers, stop)
    finally:
        await _stop_all(workers)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


async def _watch(workers: list[Worker], stop: asyncio.Event) -> None:
    """Until `stop`: a worker that exits is started again."""
    stopping = asyncio.create_task(stop.wait())
    while not stop.is_set():
        waits = {asyncio.create_task(w.process.wait()): w for w in workers if w.process is not None}
        done, _ = await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            if task not in done:
                task.cancel()
        if stop.is_set():
            return
        for task in done:
            worker = waits.get(task)
            if worker is None or worker.process is None:
                continue
            log.error("event=worker_exited worker=%d pid=%d status=%s; starting another", worker.number,
                      worker.process.pid, worker.process.returncode)
            await asyncio.sleep(RESTART_DELAY)
            try:
                await worker.start()
            except ChatdError as exc:
                log.error("event=worker_restart_failed worker=%d error=%r", worker.number, exc.message)


async def _stop_all(workers: list[Worker]) -> None:
    running = [w.process for w in workers if w.process is not None and w.process.returncode is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), STOP_WAIT)
    except TimeoutError:
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await asyncio.gather(*(p.wait() for p in running))

