"""The other processes of this server, as the broker brings them: their notices, acted on here.

Each process sends (chatd.services.live.Live, through chatd.broker):
- `conn`: how many sockets a user has on it now (0: none). Presence is the union over the
  processes, and the connection limit the sum;
- `beat`, every BEAT_SECONDS: all of those counts at once. A process not heard from for
  DEAD_AFTER seconds has died (kill -9, a lost box): its users go offline;
- `hello` when it starts (the others answer with a beat) and `bye` when it stops;
- `typing`: shown to this process's sockets that watch the room;
- `room`: a room, its members or its archived state changed (read again from the database);
- `marks`: a user's read mark or sidebar state moved (their cached marks are read again);
- `auth`: credentials were revoked (the revocation sweep runs now, not at the next poll);
- `spent`: messages let through the rate limit per user, taken from the local rate limits:
  carried by the next message this process sends (the commit that stores them, as a rule),
  or alone within SPENT_AT_MOST seconds.
- `limit`: a sliding-window limit moved (sign-in attempts per account and per address, rooms
  created per member): the same step is taken on this process's window.

Nothing here is trusted for completeness: the database is read for every state a notice
names, and `resync` after a lost connection reads everything again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from chatd.hub import Hub
from chatd.limits import Window
from chatd.services.live import Live
from chatd.store import Store

log = logging.getLogger("chatd.peers")
BEAT_SECONDS = 5.0
DEAD_AFTER = 20.0  # the contract: offline within 30 s of the process dying
SPENT_AT_MOST = 0.05  # seconds before spent messages go out alone, when nothing carried them


class Peers:
    def __init__(self, live: Live, on_spent: Callable[[dict[int, int]], None]) -> None:
        self.live = live
        self.hub: Hub = live.hub
        self.store: Store = live.store
        self.broker = live.broker
        self.on_spent = on_spent
        self.seen: dict[str, float] = {}  # process -> when it was last heard from
        self._last_beat = 0.0
        self._spent: dict[int, int] = {}
        self._spent_due = False  # a lone `spent` notice is scheduled
        self.broker.carry = self._carried
        self.windows: dict[str, Window] = {}  # limits counted across processes (share_windows)

    # -- out -----------------------------------------------------------------------------

    def share_windows(self, windows: dict[str, Window]) -> None:
        """Count these limits across processes: each step one takes is sent to the others."""
        self.windows = windows
        for name, window in windows.items():
            window.share = lambda op, key, name=name: self.broker.notify(
                {"t": "limit", "w": name, "op": op, "k": key})

    def hello(self) -> None:
        self.broker.notify({"t": "hello"})
        self.beat()

    def beat(self) -> None:
        """All of this process's socket counts (also the answer to a `hello`)."""
        self._last_beat = time.monotonic()
        counts = {str(uid): [self.hub.usernames.get(uid, ""), len(conns)] for uid, conns in self.hub.by_user.items()}
        self.broker.notify({"t": "beat", "users": counts})

    def spend(self, user_id: int) -> None:
        """A message this process let through the rate limit: the others take it off theirs.
        They are told with the next message this process sends, so before any later notice:
        as a rule the commit storing the message (one Redis message fewer per batch), or alone
        after SPENT_AT_MOST seconds (a post refused in its transaction)."""
        self._spent[user_id] = self._spent.get(user_id, 0) + 1
        if not self._spent_due:
            self._spent_due = True
            asyncio.get_running_loop().call_later(SPENT_AT_MOST, self._send_spent)

    def _carried(self) -> dict[str, Any]:
        """What the broker adds to the next message it sends (RedisBroker.carry)."""
        if not self._spent:
            return {}
        spent, self._spent = self._spent, {}
        return {"spent": {str(k): v for k, v in spent.items()}}

    def _send_spent(self) -> None:
        self._spent_due = False
        if self._spent:
            self.broker.notify({"t": "spent"})  # the counts ride on it (_carried)

    def spent_elsewhere(self, message: dict[str, Any]) -> None:
        """The `spent` counts any message of another process may carry (_carried)."""
        spent = message.get("spent")
        if spent:
            self.on_spent({int(k): int(v) for k, v in dict(spent).items()})

    def tick(self) -> None:
        """Every poll (about a second): the beat when due, the dead processes,
        and what the database holds that the bus did not bring."""
        now = time.monotonic()
        if now - self._last_beat >= BEAT_SECONDS:
            self.beat()
        for node, at in list(self.seen.items()):
            if now - at > DEAD_AFTER:
                log.warning("event=process_gone node=%s silent_seconds=%.0f", node, now - at)
                self._forget(node)
        self.live.catch_up()

    # -- in ------------------------------------------------------------------------------

    def notice(self, node: str, notice: dict[str, Any]) -> None:
        kind = notice.get("t")
        self.seen[node] = time.monotonic()
        self.spent_elsewhere(notice)
        if kind == "conn":
            self._counts(node, {int(notice["u"]): (str(notice["name"]), int(notice["k"]))})
        elif kind == "beat":
            users = {int(k): (str(v[0]), int(v[1])) for k, v in dict(notice["users"]).items()}
            self._counts(node, users, whole=True)
        elif kind == "hello":
            self.beat()
        elif kind == "bye":
            self._forget(node)
        elif kind == "typing":
            room = self.store.rooms.get(int(notice["r"]))
            if room is not None:
                self.live.typing_here(int(notice["u"]), str(notice["name"]), room)
        elif kind == "room":
            after = notice.get("after")
            self.live.room_changed_elsewhere(int(notice["r"]), None if after is None else int(after))
        elif kind == "marks":
            self.live.marks_changed_elsewhere(int(notice["u"]), int(notice["r"]), str(notice["op"]))
        elif kind == "auth":
            self.live.credentials_changed_elsewhere()
        elif kind == "spent":
            pass  # its counts were taken above
        elif kind == "limit":
            window = self.windows.get(str(notice["w"]))
            key = notice["k"]
            if window is not None and isinstance(key, (str, int)):
                window.remote(str(notice["op"]), key)
        else:
            log.debug("event=unknown_notice kind=%r", kind)

    def _counts(self, node: str, users: dict[int, tuple[str, int]], whole: bool = False) -> None:
        """Take in a process's socket counts (all of them with `whole`); users who came online
        or went offline across the whole server are announced here."""
        before = self.hub.online_ids()
        mine = self.hub.remote.setdefault(node, {})
        if whole:
            mine.clear()
        for uid, (name, count) in users.items():
            if name:
                self.hub.usernames[uid] = name
            if count > 0:
                mine[uid] = count
            else:
                mine.pop(uid, None)
        self._announce(before)

    def _forget(self, node: str) -> None:
        before = self.hub.online_ids()
        self.hub.remote.pop(node, None)
        self.seen.pop(node, None)
        self._announce(before)

    def _announce(self, before: set[int]) -> None:
        after = self.hub.online_ids()
        for uid in after - before:
            self.live.presence_changed(uid, True)
        for uid in before - after:
            self.live.presence_changed(uid, False)
