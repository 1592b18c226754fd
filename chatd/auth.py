"""The HTTP edge's security: who is asking, CSRF and Origin, headers, errors.

Errors raised anywhere below are translated here, once: JSON for /api,
a plain page for the browser, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from multidict import istr  # aiohttp's header keys
from yarl import URL

from chatd import security
from chatd.errors import (
    BadInput,
    ChatdError,
    Forbidden,
    MisdirectedRequest,
    RateLimited,
    RequestTimeout,
    TooLarge,
    Unauthorized,
)
from chatd.models import Credential, User
from chatd.state import CONFIG, RENDERER, SERVICES

log = logging.getLogger("chatd.http")

SESSION_COOKIE = "chatd_session"
FORM_COOKIE = "chatd_form"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Case-insensitive keys made once: a response's headers would fold a plain str on every call.
SECURITY_HEADERS = {
    istr("Content-Security-Policy"): CSP,
    istr("X-Content-Type-Options"): "nosniff",
    istr("Referrer-Policy"): "same-origin",
    istr("X-Frame-Options"): "DENY",
    istr("Cross-Origin-Opener-Policy"): "same-origin",
    istr("Permissions-Policy"): "camera=(), microphone=(), geolocation=()",
}
# JSON is never a document: no scripts, no framing, no sniffing, no referrer (OWASP's REST set;
# the page-only policies would cost every API call three more headers to write).
API_SECURITY_HEADERS = {
    istr("Content-Security-Policy"): "default-src 'none'; frame-ancestors 'none'",
    istr("X-Content-Type-Options"): "nosniff",
    istr("Referrer-Policy"): "no-referrer",
}
HSTS = istr("Strict-Transport-Security")

_TITLES = {400: "Bad request", 401: "Sign in required", 403: "Not allowed", 404: "Not found",
           408: "Too slow", 413: "Too large", 421: "Wrong address", 429: "Slow down", 500: "Server error",
           503: "Unavailable"}
# Host names that are always this machine: a DNS-rebinding page cannot make a browser send
# them, and local health checks and metrics scrapers use them.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- where the request comes from --------------------------------------------------


def _peer_address(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _trusted_peer(request: web.Request) -> bool:
    """Is the direct peer one of trusted_proxies (addresses or networks, e.g. 10.0.0.0/8)?"""
    config = request.app[CONFIG]
    if not config.behind_proxy:
        return False
    peer = _peer_address(request)
    return peer is not None and any(peer in net for net in trusted_networks(config.trusted_proxies))


@functools.lru_cache(maxsize=8)
def trusted_networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_ip(request: web.Request) -> str:
    """The client's address; X-Forwarded-For counts only from a trusted proxy."""
    if _trusted_peer(request):
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            pass
    return request.remote or "unknown"


def is_https(request: web.Request) -> bool:
    if _trusted_peer(request):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        if proto:
            return proto == "https"
    return request.secure


def own_origin(request: web.Request) -> str:
    return f"{'https' if is_https(request) else 'http'}://{request.host}"


def origin_ok(request: web.Request, *, required: bool) -> bool:
    """True if Origin is ours, or absent and not required (bots and scripts send none).

    Ours is one of public_url's origins when that is set (whatever scheme the request came
    over: a proxy may speak plain HTTP to chatd), else the request's own scheme and Host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return not required
    public = request.app[CONFIG].public_url
    if public:
        return origin.lower() in public
    return origin == own_origin(request)


@functools.lru_cache(maxsize=8)
def public_hosts(public_url: tuple[str, ...]) -> frozenset[str]:
    """The Host headers that name public_url's origins: host[:port], the default port either way."""
    hosts = set()
    for origin in public_url:
        url = URL(origin)
        host = url.raw_authority.lower()
        hosts.add(host)
        if url.is_default_port():
            hosts.add(f"{host}:{url.port}")
    return frozenset(hosts)


def host_ok(host: str, public_url: tuple[str, ...]) -> bool:
    """Is this Host header one of public_url's hosts, or a loopback name with any port?"""
    host = host.lower()
    if host in public_hosts(public_url):
        return True
    name, colon, port = host.rpartition(":")
    return (name if colon and port.isdigit() else host) in LOOPBACK_HOSTS


def is_loopback(request: web.Request) -> bool:
    peer = _peer_address(request)
    return peer is not None and peer.is_loopback


# -- who is asking -------------------------------------------------------------------


async def identify(request: web.Request) -> tuple[User, Credential] | None:
    """The user behind a bearer token or a session cookie, or None."""
    accounts = request.app[SERVICES].accounts
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        return await accounts.user_for_token(token) if token and scheme.lower() == "bearer" else None
    cookie = request.cookies.get(SESSION_COOKIE)
    return await accounts.user_for_session(cookie) if cookie else None


async def api_user(request: web.Request) -> User:
    """Authenticate an API call; a cookie-authenticated write must come from our own pages."""
    found = await identify(request)
    if found is None:
        raise Unauthorized("missing or invalid credentials")
    user, credential = found
    if credential.kind == "session" and request.method not in ("GET", "HEAD", "OPTIONS"):
        header = request.headers.get("X-CSRF-Token", "")
        if not (origin_ok(request, required=True) or (header and security.same(header, credential.csrf))):
            raise Forbidden("cross-site request refused")
    return user


def session_cookie(response: web.StreamResponse, request: web.Request, token: str, days: int) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, max_age=days * 86400, path="/", httponly=True,
        samesite="Lax", secure=is_https(request),
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def form_token(request: web.Request, response_cookies: dict[str, str]) -> str:
    """A CSRF token for forms shown before sign-in (double submit with a cookie)."""
    token = request.cookies.get(FORM_COOKIE)
    if not token or len(token) > 64:
        token = secrets.token_urlsafe(24)
        response_cookies[FORM_COOKIE] = token
    return token


def set_form_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(
        FORM_COOKIE, token, path="/", httponly=True, samesite="Strict", secure=is_https(request)
    )


def check_form_token(request: web.Request, form: Any) -> None:
    """Refuse a pre-sign-in form post that did not come from our own form."""
    sent = form.get("csrf", "") if form else ""
    cookie = request.cookies.get(FORM_COOKIE, "")
    if not origin_ok(request, required=False) or not (
        sent and cookie and isinstance(sent, str) and security.same(sent, cookie)
    ):
        raise Forbidden("the form has expired; reload the page and try again")


def check_session_csrf(request: web.Request, credential: Credential, form: Any) -> None:
    sent = form.get("csrf", "") if form else ""
    if not origin_ok(request, required=False) or not (
        isinstance(sent, str) and sent and security.same(sent, credential.csrf)
    ):
        raise Forbidden("the form has expired; reload the page and try again")


async def _within_body_timeout(request: web.Request, read: Callable[[], Awaitable[Any]]) -> Any:
    """Read the body, giving the client body_timeout_seconds to send it (408 after that)."""
    try:
        if request.content.is_eof():  # most bodies came with the headers: nothing to wait for
            return await read()
        async with asyncio.timeout(request.app[CONFIG].body_timeout_seconds):
            return await read()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    except web.RequestPayloadError:  # e.g. a broken chunked encoding after the headers
        raise BadInput("the request body could not be read") from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or a clear 400/408/413."""
    try:
        raw = await _within_body_timeout(request, request.read)
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("the request body is too large") from None
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadInput("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object")
    return data


async def read_form(request: web.Request) -> Any:
    """The request's form fields, or a clear 400/408/413."""
    try:
        return await _within_body_timeout(request, request.post)
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("the form is too large") from None
    except (ValueError, UnicodeDecodeError):
        raise BadInput("the form could not be read") from None


# -- middlewares and signals -----------------------------------------------------------


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path in ("/metrics", "/healthz")


def error_response(request: web.Request, error: ChatdError) -> web.StreamResponse:
    if wants_json(request):
        response = web.json_response(error.to_json(), status=error.status)
    else:
        response = request.app[RENDERER].page(
            "error.html", {"error": error, "title": _TITLES.get(error.status, "Error")}, error.status)
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if isinstance(error, RequestTimeout):
        response.force_close()  # the rest of that body may still be on its way
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate domain errors once; never show a traceback to a client."""
    try:
        return await handler(request)
    except ChatdError as exc:
        return error_response(request, exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, TooLarge("the request body is too large"))
    except web.HTTPException as exc:
        if exc.status >= 400:  # aiohttp's own 404/405/413: the same error shapes as ours
            return error_response(request, _http_error(exc))
        raise  # redirects
    except Exception:
        log.exception("event=internal_error method=%s path=%s", request.method, request.path)
        return error_response(
            request, ChatdError("something went wrong on the server", code="internal", status=500)
        )


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With public_url set, answer only requests for its hosts (and loopback names): 421.

    A page on another site that points its own name at chatd's address (DNS rebinding)
    gets nothing; nor does a request meant for another site behind the same proxy."""
    if not host_ok(request.headers.get(hdrs.HOST, ""), request.app[CONFIG].public_url):
        raise MisdirectedRequest("this server does not answer for that host name")
    return await handler(request)


def _http_error(exc: web.HTTPException) -> ChatdError:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request"}
    text = {404: "not found", 405: "method not allowed"}.get(exc.status, exc.reason.lower())
    return ChatdError(text, code=codes.get(exc.status, "error"), status=exc.status)


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    # raw_path: the decoded path is built on first use, which these checks alone would pay for
    # (a percent-encoded /api/ or /static/ would only get the page policies).
    path = request.raw_path
    for name, value in (API_SECURITY_HEADERS if path.startswith("/api/") else SECURITY_HEADERS).items():
        headers.setdefault(name, value)
    if is_https(request):
        headers.setdefault(HSTS, "max-age=31536000")
    if hdrs.CACHE_CONTROL not in headers and not path.startswith("/static/"):
        headers[hdrs.CACHE_CONTROL] = "no-store"
