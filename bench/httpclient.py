"""A minimal keep-alive HTTP/1.1 client on a raw asyncio protocol.

The pages and HTTP-post workloads need a client that costs far less CPU per request
than the server spends answering it; aiohttp's client does not (it would be the
bottleneck at a few thousand requests per second on one core). This one sends a
prepared request and parses only the status line, Content-Length and chunked bodies.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HttpError(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._body_start = -1  # offset of the body once the head is parsed
        self._length = -1  # Content-Length, or -1 for chunked
        self._closed: BaseException | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is not None:
            self._try_finish()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = exc or ConnectionResetError("the server closed the connection")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(str(self._closed)))

    # -- requests -----------------------------------------------------------------------------

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send a complete request; return (status, body)."""
        if self._closed is not None or self.transport is None:
            raise HttpError("the connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._body_start = -1
        self.transport.write(raw)
        self._try_finish()
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _try_finish(self) -> None:
        if self._body_start < 0 and not self._parse_head():
            return
        if self._length >= 0:
            end = self._body_start + self._length
            if len(self._buf) < end:
                return
            body = bytes(self._buf[self._body_start : end])
        else:
            found = self._dechunk()
            if found is None:
                return
            body, end = found
        del self._buf[:end]
        self._body_start = -1
        assert self._waiter is not None
        if not self._waiter.done():
            self._waiter.set_result((self._status, body))

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        self._status = int(lines[0].split(b" ", 2)[1])
        self._length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._length = -1
        self._body_start = end + 4
        return True

    def _dechunk(self) -> tuple[bytes, int] | None:
        pos, parts = self._body_start, []
        while True:
            eol = self._buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(self._buf[pos:eol]).split(b";")[0], 16)
            start = eol + 2
            if len(self._buf) < start + size + 2:
                return None
            if size == 0:
                # Trailers are not used by the servers under test: the body ends with CRLF.
                return b"".join(parts), start + 2
            parts.append(bytes(self._buf[start : start + size]))
            pos = start + size + 2


async def open_connection(url: str) -> HttpConnection:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(HttpConnection, parts.hostname, parts.port)
    return protocol


def build_request(method: str, url: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    host = urlsplit(url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
