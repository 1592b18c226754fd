"""The HTTP server beneath the app: a header read timeout, and malformed requests answered
and logged as chatd's own.

aiohttp 3.14 has neither. It has no header timeout (a half-sent request waits for
keepalive_timeout), and it logs each request its parser refuses with a traceback
(RequestHandler.handle_error), answering with the parser's message, which quotes the
request's bytes, and without chatd's security headers. RequestHandler is the protocol class,
and web.Server makes one per connection; this module is the one place that subclasses them,
so a change in aiohttp lands here (tests/test_edges.py runs the real `chatd serve` on it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader

from chatd.auth import SECURITY_HEADERS

log = logging.getLogger("chatd.http")

# An idle keep-alive connection closes after this long (aiohttp's default is 3630 s, made to
# outlast a proxy's; chatd's proxies reconnect, and idle descriptors are what a server runs out of).
KEEPALIVE_SECONDS = 75.0
_ANSWERS = {400: "Bad request", 500: "Server error", 504: "Server timeout"}


class Protocol(web.RequestHandler):
    """One connection. A request's headers must be complete within `header_timeout` seconds
    of its first byte, or the connection is closed; idle connections wait for keepalive_timeout."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, header_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.event_loop = loop
        self.header_timeout = header_timeout
        self.header_timer: asyncio.TimerHandle | None = None
        self.in_request = False  # from complete headers until the response is written

    def data_received(self, data: bytes) -> None:
        # Bytes outside a request begin the next one. (Bytes of a pipelined request that came
        # while the previous one was handled start no timer: keepalive_timeout bounds those.)
        if self.header_timer is None and not self.in_request:
            self.header_timer = self.event_loop.call_later(self.header_timeout, self.headers_too_slow)
        super().data_received(data)

    def headers_received(self) -> None:
        """A request's headers are complete (Server.make_request calls this)."""
        self.in_request = True
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self.in_request = False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        super().connection_lost(exc)

    def headers_too_slow(self) -> None:
        self.header_timer = None
        peer = self.peername
        log.info("event=header_timeout ip=%s", peer[0] if isinstance(peer, tuple) else peer)
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request the parser refused (400), or one that failed outside chatd's middleware:
        one log line, a short fixed answer with chatd's security headers, never the request's
        bytes; a traceback only for the server's own failures."""
        if status == 400:  # the client's mistake; its bytes stay out of the log
            log.info("event=bad_request ip=%s reason=%s", request.remote, type(exc).__name__ if exc else "unknown")
        else:
            log.error("event=request_failed status=%d ip=%s", status, request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun; the connection is closed instead")
        response = web.Response(status=status, text=_ANSWERS.get(status, "Error") + "\n", headers=SECURITY_HEADERS)
        response.force_close()
        return response


class Server(web.Server):
    """Makes a `Protocol` for each connection (web.Server always makes a plain RequestHandler)."""

    def __init__(self, handler: Any, *, request_factory: Any, handler_cancellation: bool,
                 loop: asyncio.AbstractEventLoop, **protocol_args: Any) -> None:
        super().__init__(handler, request_factory=self.make_request, handler_cancellation=handler_cancellation,
                         loop=loop)
        self.app_request_factory = request_factory
        self.protocol_args = {"loop": loop, **protocol_args}

    def __call__(self) -> Protocol:
        return Protocol(self, **self.protocol_args)

    def make_request(self, message: RawRequestMessage, payload: StreamReader, protocol: Protocol,
                     writer: AbstractStreamWriter, task: asyncio.Task[None]) -> web.BaseRequest:
        protocol.headers_received()
        return self.app_request_factory(message, payload, protocol, writer, task)


class Runner(web.AppRunner):
    """`chatd serve`'s runner: the app on `Server`, with its read timeouts and no access log."""

    def __init__(self, app: web.Application, *, header_timeout: float, shutdown_timeout: float,
                 keepalive_timeout: float = KEEPALIVE_SECONDS) -> None:
        super().__init__(app, access_log=None, shutdown_timeout=shutdown_timeout)
        self.protocol_args = {"header_timeout": header_timeout, "keepalive_timeout": keepalive_timeout,
                              "access_log": None}

    async def _make_server(self) -> web.Server:
        # The hook BaseRunner declares for its subclasses. AppRunner's runs the app's start-up
        # and makes a plain web.Server; ours takes that one's handler and request factory.
        made = await super()._make_server()
        return Server(made.request_handler, request_factory=made.request_factory,
                      handler_cancellation=made.handler_cancellation, loop=asyncio.get_running_loop(),
                      **self.protocol_args)
