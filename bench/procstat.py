"""What a process costs, read from /proc: CPU seconds, resident memory, open-file limits.

Shared by the orchestrator, the load generator and the reference servers. Linux only,
like the rest of the benchmark (taskset, /proc).
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of every thread of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    # The command name (field 2) may contain spaces; the fields after it never do.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores, not idle or iowait), in seconds."""
    with open("/proc/stat", "rb") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_nofile(wanted: int = 65_536) -> int:
    """Lift the open-file limit as far as allowed (10,000 sockets need more than 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class CpuWindow:
    """CPU use between `start()` and `stop()`, in % of one core: the server's, this process's,
    and everything else's on the machine (other work on a shared box makes figures noisy)."""

    def __init__(self, server_pid: int, watched: dict[str, int] | None = None) -> None:
        self.server_pid = server_pid
        self.watched = watched or {}  # more processes to report (name -> pid): a second server, Redis
        self._t0 = self._s0 = self._l0 = self._m0 = 0.0
        self._w0: dict[str, float] = {}
        self.wall = self.server_pct = self.loadgen_pct = self.other_pct = 0.0
        self.watched_pct: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._s0 = cpu_seconds(self.server_pid)
        self._l0 = cpu_seconds(os.getpid())
        self._m0 = machine_busy_seconds()
        self._w0 = {name: cpu_seconds(pid) for name, pid in self.watched.items()}

    def stop(self) -> None:
        self.wall = max(time.perf_counter() - self._t0, 1e-9)
        server = cpu_seconds(self.server_pid) - self._s0
        loadgen = cpu_seconds(os.getpid()) - self._l0
        machine = machine_busy_seconds() - self._m0
        self.server_pct = 100 * server / self.wall
        self.loadgen_pct = 100 * loadgen / self.wall
        watched = {name: cpu_seconds(pid) - self._w0[name] for name, pid in self.watched.items()}
        self.watched_pct = {name: 100 * used / self.wall for name, used in watched.items()}
        self.other_pct = max(0.0, 100 * (machine - server - loadgen - sum(watched.values())) / self.wall)

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"server_cpu": self.server_pct, "loadgen_cpu": self.loadgen_pct,
                                 "other_cpu": self.other_pct, "window_s": self.wall}
        if self.watched:
            found["watched_cpu"] = self.watched_pct
        return found
