"""WebSocket clients for the load generator: picows (fast) or aiohttp (always there).

Both call `sink.on_text(index, payload_bytes)` for every text frame and
`sink.on_closed(index)` when a socket ends, so a workload is written once. picows parses
frames in C and, with uvloop, lets one core receive far more frames than the servers under
test can send; aiohttp is the fallback that needs nothing beyond chatd's own dependencies
(`--smoke` and the test suite use it).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, Protocol


class Sink(Protocol):
    def on_text(self, index: int, data: bytes) -> None: ...

    def on_closed(self, index: int) -> None: ...


class Socket(Protocol):
    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class ConnectFailed(Exception):
    """The upgrade was refused or the connection could not be made."""


def fast_client_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("picows", "uvloop"))


class Backend:
    """Opens sockets; `run` drives the load generator's event loop."""

    name = "base"

    async def connect(self, url: str, headers: dict[str, str], sink: Sink, index: int) -> Socket:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run(coro)


# -- picows + uvloop ----------------------------------------------------------------------------


class PicowsBackend(Backend):
    name = "picows+uvloop"

    def __init__(self) -> None:
        import picows

        self._picows = picows
        text, close = picows.WSMsgType.TEXT, picows.WSMsgType.CLOSE

        class Listener(picows.WSListener):  # type: ignore[misc, name-defined]
            """One socket: hands text payloads to the workload, answers a close."""

            def __init__(self, sink: Sink, index: int) -> None:
                self.sink, self.index = sink, index
                self.on_text = sink.on_text  # once per socket, not once per frame

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind is text:
                    self.on_text(self.index, frame.get_payload_as_bytes())
                elif kind is close:
                    transport.send_close(frame.get_close_code(), frame.get_close_message())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                self.sink.on_closed(self.index)

        self._listener = Listener

    async def connect(self, url: str, headers: dict[str, str], sink: Sink, index: int) -> Socket:
        try:
            transport, _ = await self._picows.ws_connect(
                lambda: self._listener(sink, index), url, extra_headers=headers,
                websocket_handshake_timeout=30, max_frame_size=16 << 20,
            )
        except (TimeoutError, OSError, self._picows.WSError) as exc:
            raise ConnectFailed(_describe(exc)) from None
        return _PicowsSocket(transport, self._picows.WSMsgType.TEXT)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        import uvloop

        return uvloop.run(coro)


class _PicowsSocket:
    __slots__ = ("_transport", "_text")

    def __init__(self, transport: Any, text: Any) -> None:
        self._transport, self._text = transport, text

    def send(self, data: bytes) -> None:
        self._transport.send(self._text, data)

    def close(self) -> None:
        self._transport.disconnect(graceful=False)


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status", None)
    return f"HTTP {int(status)}" if status is not None else f"{type(exc).__name__}: {exc}"


# -- aiohttp ------------------------------------------------------------------------------------


class AiohttpBackend(Backend):
    name = "aiohttp"

    def __init__(self) -> None:
        self._session: Any = None

    async def connect(self, url: str, headers: dict[str, str], sink: Sink, index: int) -> Socket:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            ws = await self._session.ws_connect(
                url, headers=headers, autoping=True, max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ConnectFailed(f"HTTP {exc.status}") from None
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        socket = _AiohttpSocket(ws)
        socket.reader = asyncio.create_task(_read(ws, sink, index))
        return socket

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _read(ws: Any, sink: Sink, index: int) -> None:
    import aiohttp

    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                sink.on_text(index, msg.data.encode())
    finally:
        sink.on_closed(index)


class _AiohttpSocket:
    """aiohttp sends are coroutines; tasks start in creation order, so frames keep their order."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self.reader: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def send(self, data: bytes) -> None:
        task = asyncio.ensure_future(self._ws.send_str(data.decode()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def close(self) -> None:
        task = asyncio.ensure_future(self._ws.close())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def pick(wanted: str) -> Backend:
    """`auto` uses picows+uvloop when installed (bench/requirements.txt), else aiohttp."""
    if wanted == "picows" or (wanted == "auto" and fast_client_available()):
        return PicowsBackend()
    if wanted in ("aiohttp", "auto"):
        return AiohttpBackend()
    raise ValueError(f"unknown client {wanted!r}")
