"""The broker: how the processes of one server hear each other's changes and notices.

Without `--broker` there is one process, and `Broker` (in-process) carries nothing: the
hub delivers each commit itself, today's behaviour and cost. With `--broker redis://...`,
`RedisBroker` carries over one Redis pub/sub channel per server (per database):

- the change log's events after each commit, as plain data (chatd.models.change_to_wire);
- notices: presence (which users each process has sockets for, and how many), typing,
  rooms and memberships changed, read marks moved, credentials revoked, messages spent
  against the rate limit (these ride on the next message sent: `carry`).

The bus is never trusted for completeness: events carry their ids, and a process that
sees a gap, or whose Redis connection drops and comes back, reads what it missed from the
database by id before delivering more (chatd.services.live.Live.take); every second it
also compares the database's newest id with the newest it delivered. Notices that move
state (rooms, read marks, credentials) only say "read this again": the database stays the
truth, so a notice lost with a dropped connection is made good by the resync after it.

Webhooks and push notifications (later issues) fire in the process whose commit made the
change, never from the bus: each change is committed by exactly one process, so it fires
once however many processes hear of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from chatd.errors import ChatdError
from chatd.models import Change, change_from_wire, change_to_wire

log = logging.getLogger("chatd.broker")
RECONNECT_MIN = 0.1  # seconds between reconnection attempts, doubling up to RECONNECT_MAX
RECONNECT_MAX = 2.0
SETUP_TOKEN_SECONDS = 7 * 86400


class BrokerUnavailable(ChatdError):
    """The broker cannot be reached or used (one sentence naming it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unavailable", status=503)


class Node(Protocol):
    """What a broker calls back: chatd.services.live.Live."""

    def remote_changes(self, changes: list[Change]) -> None: ...

    def remote_notice(self, node: str, notice: dict[str, Any]) -> None: ...

    def resync(self) -> None: ...


def safe_url(url: str) -> str:
    """The broker's URL without its password, fit for a log line or an error."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + ':***@' if parts.username else ':***@'}{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Broker:
    """In-process: one process, nothing to carry. The interface every broker keeps."""

    kind = "in-process"

    def __init__(self) -> None:
        self.node_id = secrets.token_hex(8)
        self.connected = True
        # Fields to add to the next message this process sends, whatever it is (Peers: the
        # messages spent against the rate limit since the last one).
        self.carry: Callable[[], dict[str, Any]] | None = None

    @property
    def shared(self) -> bool:
        """Are there (or may there be) other processes?"""
        return False

    async def start(self, node: Node, channel: str) -> None:
        """Begin carrying for `node`, on the server's channel (a name unique to its database)."""

    async def close(self) -> None:
        """Stop carrying; other processes hear that this one has gone."""

    def publish(self, changes: list[Change]) -> None:
        """Tell the other processes about this process's commit (after it)."""

    def notify(self, notice: dict[str, Any]) -> None:
        """Tell the other processes something; `notice["t"]` names what."""

    async def setup_token(self, candidate: str) -> str:
        """The first-run setup token every process of the server prints: the first one offered."""
        return candidate

    async def forget_setup_token(self) -> None:
        """The first account exists: no process hands the token out again."""

    def status(self) -> str:
        return "ok" if self.connected else "unavailable"

    async def probe(self) -> None:
        """Raise BrokerUnavailable (one sentence) unless the broker answers."""


class RedisBroker(Broker):
    """Redis pub/sub, with the `redis` package's asyncio client (pip install 'chatd[scale]')."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.connected = False
        self._redis: Any = None
        self._pubsub: Any = None
        self._node: Node | None = None
        self._channel = ""
        self._outbox: list[bytes] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self.on_state: Callable[[bool], None] | None = None  # told when the connection drops or returns
        # Every message this process publishes begins so (_queue puts "n" first).
        self._own = ('{"n":' + json.dumps(self.node_id) + ",").encode()

    @property
    def shared(self) -> bool:
        return True

    async def probe(self) -> None:
        await self._connect()
        await self._drop_client()

    async def _connect(self) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError
        except ImportError:
            raise BrokerUnavailable("the Redis broker needs the redis package: pip install 'chatd[scale]'") from None
        self._errors = (RedisError, OSError)
        try:
            self._redis = aioredis.Redis.from_url(self.url, socket_connect_timeout=3, socket_timeout=None,
                                                  health_check_interval=5)
            await asyncio.wait_for(self._redis.ping(), 5)
        except (ValueError, TimeoutError, *self._errors) as exc:
            await self._drop_client()
            raise BrokerUnavailable(f"cannot reach the broker {safe_url(self.url)}: {_reason(exc)}") from None

    async def start(self, node: Node, channel: str) -> None:
        await self._connect()
        self._node, self._channel = node, channel
        try:
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(channel)
        except (ValueError, TimeoutError, *self._errors) as exc:
            await self._drop_client()
            raise BrokerUnavailable(f"cannot reach the broker {safe_url(self.url)}: {_reason(exc)}") from None
        self.connected = True
        self._tasks = [asyncio.create_task(self._listen(), name="chatd-broker-listen"),
                       asyncio.create_task(self._send(), name="chatd-broker-send")]
        log.info("event=broker_connected url=%s node=%s", safe_url(self.url), self.node_id)

    async def close(self) -> None:
        if self._redis is None:
            return
        self.notify({"t": "bye"})
        self._closing = True
        self._wake.set()
        if len(self._tasks) == 2:
            with contextlib.suppress(asyncio.TimeoutError, *self._errors):
                await asyncio.wait_for(self._tasks[1], 2)  # the last notices, "bye" among them
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, *self._errors):
                await task
        self._tasks = []
        await self._drop_client()

    async def _drop_client(self) -> None:
        pubsub, client, self._pubsub, self._redis = self._pubsub, self._redis, None, None
        with contextlib.suppress(Exception):
            if pubsub is not None:
                await pubsub.aclose()
        with contextlib.suppress(Exception):
            if client is not None:
                await client.aclose()

    # -- out ----------------------------------------------------------------------------

    def publish(self, changes: list[Change]) -> None:
        if changes:
            self._queue({"n": self.node_id, "c": [change_to_wire(c) for c in changes]})

    def notify(self, notice: dict[str, Any]) -> None:
        self._queue({"n": self.node_id, **notice})

    def _queue(self, data: dict[str, Any]) -> None:
        if not self.connected and not self._closing:
            return  # the others resync from the database when we are back
        if self.carry is not None:
            data.update(self.carry())
        self._outbox.append(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
        self._wake.set()

    async def _send(self) -> None:
        """One sender, so this process's messages reach Redis in the order they were made."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for data in batch:
                            pipe.publish(self._channel, data)
                        await pipe.execute()
                except self._errors as exc:
                    # Lost with the connection; the listener notices the drop and resyncs.
                    log.warning("event=broker_publish_failed messages=%d error=%r", len(batch), _reason(exc))
            if self._closing:
                return

    # -- in -----------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = RECONNECT_MIN
        while True:
            if not self.connected:
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX, delay * 2)
                if not await self._reconnect():
                    continue
                delay = RECONNECT_MIN
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except self._errors as exc:
                self.connected = False
                log.warning("event=broker_lost url=%s error=%r", safe_url(self.url), _reason(exc))
                self._tell(False)
                continue
            if message is not None and message.get("type") == "message":
                self._received(message["data"])

    async def _reconnect(self) -> bool:
        """A fresh subscription; True when Redis answers again."""
        old, self._pubsub = self._pubsub, None
        with contextlib.suppress(Exception):
            if old is not None:
                await old.aclose()
        try:
            await self._redis.ping()
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            await pubsub.subscribe(self._channel)
        except self._errors:
            return False
        self.connected = True
        log.info("event=broker_back url=%s", safe_url(self.url))
        self._tell(True)
        assert self._node is not None
        self._node.resync()  # what the others committed meanwhile, from the database
        return True

    def _tell(self, up: bool) -> None:
        if self.on_state is not None:
            self.on_state(up)

    def _received(self, raw: bytes) -> None:
        node = self._node
        assert node is not None
        if raw.startswith(self._own):
            return  # our own (delivered when we committed it), passed over without parsing
        try:
            data = json.loads(raw)
            origin = data.get("n")
            if origin == self.node_id:
                return  # our own, delivered when we committed it
            changes = data.get("c")
            if changes is None:
                node.remote_notice(str(origin), data)
                return
            if "spent" in data:  # carried (Broker.carry), taken before what follows it
                node.remote_notice(str(origin), {"t": "spent", "spent": data["spent"]})
            node.remote_changes([change_from_wire(c) for c in changes])
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning("event=broker_bad_message error=%r", str(exc)[:200])
        except ChatdError as exc:  # the database closing at shutdown, or away for a moment
            log.warning("event=broker_message_skipped error=%r", exc.message)
        except Exception:  # a bug in handling one message must not stop the listener
            log.exception("event=broker_message_failed")

    # -- shared values --------------------------------------------------------------------

    async def setup_token(self, candidate: str) -> str:
        key = f"{self._channel}:setup-token"
        try:
            await self._redis.set(key, candidate, nx=True, ex=SETUP_TOKEN_SECONDS)
            found = await self._redis.get(key)
        except self._errors as exc:
            raise BrokerUnavailable(f"cannot reach the broker {safe_url(self.url)}: {_reason(exc)}") from None
        return found.decode() if isinstance(found, bytes) else candidate

    async def forget_setup_token(self) -> None:
        with contextlib.suppress(*self._errors):
            await self._redis.delete(f"{self._channel}:setup-token")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.rstrip(".")


def make_broker(url: str) -> Broker:
    """The broker a `broker` setting names: empty for in-process, redis:// or rediss://."""
    if not url:
        return Broker()
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisBroker(url)
    raise BrokerUnavailable(f"the broker {safe_url(url)} is not a redis:// address")
