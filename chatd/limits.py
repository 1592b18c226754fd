"""In-memory rate limits: token buckets for sends, sliding windows for logins."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up, per key."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._state: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable, now: float | None = None) -> float:
        """Take one token; return 0 on success or the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._state[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._state[key] = (tokens - 1, now)
        if len(self._state) > 100_000:
            self._forget_full(now)
        return 0.0

    def debit(self, key: Hashable, count: int, now: float | None = None) -> None:
        """Take `count` tokens that were spent elsewhere (another process of the server),
        down to none left."""
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        self._state[key] = (max(0.0, tokens - count), now)

    def _forget_full(self, now: float) -> None:
        for key, (tokens, last) in list(self._state.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._state[key]


class Window:
    """At most `limit` events per key in the last `seconds`."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._events: dict[Hashable, deque[float]] = {}
        # Told of every hit, forget_last and clear (op, key), to pass them to the other
        # processes of the server (services/peers.py), which apply them with `remote`.
        self.share: Callable[[str, Hashable], None] | None = None

    def blocked(self, key: Hashable, now: float | None = None) -> float:
        """Seconds until the key may try again, or 0."""
        now = time.monotonic() if now is None else now
        events = self._events.get(key)
        if not events:
            return 0.0
        while events and events[0] <= now - self.seconds:
            events.popleft()
        if not events:
            del self._events[key]
            return 0.0
        return events[0] + self.seconds - now if len(events) >= self.limit else 0.0

    def hit(self, key: Hashable, now: float | None = None) -> None:
        self._hit(key, now)
        self._shared("hit", key)

    def forget_last(self, key: Hashable) -> None:
        """Take back the newest event of this key (an attempt that turned out not to count)."""
        self._forget_last(key)
        self._shared("forget_last", key)

    def clear(self, key: Hashable) -> None:
        self._clear(key)
        self._shared("clear", key)

    def remote(self, op: str, key: Hashable) -> None:
        """What another process's window did, done here too (not shared again)."""
        step = {"hit": self._hit, "forget_last": self._forget_last, "clear": self._clear}.get(op)
        if step is not None:
            step(key)

    def _shared(self, op: str, key: Hashable) -> None:
        if self.share is not None:
            self.share(op, key)

    def _hit(self, key: Hashable, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.setdefault(key, deque()).append(now)
        if len(self._events) > 100_000:
            for k in [k for k, ev in self._events.items() if ev[-1] <= now - self.seconds]:
                del self._events[k]

    def _forget_last(self, key: Hashable) -> None:
        events = self._events.get(key)
        if events:
            events.pop()

    def _clear(self, key: Hashable) -> None:
        self._events.pop(key, None)
