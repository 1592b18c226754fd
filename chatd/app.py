"""The one app factory: production and tests both call `create_app(config)`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from chatd import api, views
from chatd.auth import add_security_headers, errors_middleware, host_middleware
from chatd.broker import make_broker
from chatd.config import Config
from chatd.hub import Hub
from chatd.render import HtmlRenderer
from chatd.services import Services
from chatd.state import CONFIG, HUB, RENDERER, SERVICES, SETUP_TOKEN, STORE
from chatd.store import Store
from chatd.store.lock import hold_database

log = logging.getLogger("chatd.app")
SERVICE_RESTART = 1012
SHUTDOWN_CLOSE_WAIT = 1.0  # seconds; part of shutdown_timeout_seconds' budget in practice


def resource_dir(name: str) -> Path:
    """templates/ and static/ ship inside the package; a checkout keeps them at the top."""
    here = Path(__file__).resolve().parent
    installed = here / name
    return installed if installed.is_dir() else here.parent / name


def create_app(config: Config) -> web.Application:
    # The Host check only when public_url names the hosts: without it, no cost per request.
    middlewares = [errors_middleware, host_middleware] if config.public_url else [errors_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=config.max_request_bytes)
    app[CONFIG] = config
    app[SETUP_TOKEN] = [None]
    app[HUB] = Hub(config.send_buffer_bytes)
    app[STORE] = Store(config.db, config.sync)
    app[RENDERER] = HtmlRenderer(str(resource_dir("templates")))
    app[SERVICES] = Services(config, app[STORE], app[HUB], app[RENDERER], make_broker(config.broker))
    app.add_routes(views.routes)
    app.add_routes(api.routes)
    app.router.add_static("/static", resource_dir("static"), append_version=False)
    app.cleanup_ctx.append(_one_server_per_database)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_sockets)
    app.on_response_prepare.append(add_security_headers)
    return app


async def _one_server_per_database(app: web.Application) -> AsyncIterator[None]:
    """Hold the database's lock (store/lock.py) from before the store opens until it has closed.

    This is the one place a server claims its database: processes joined through a broker
    share it (a shared lock), and a server without one has it to itself."""
    with hold_database(app[CONFIG].db, shared=bool(app[CONFIG].broker)):
        yield


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Open the store and start the services; on exit, write what is pending and close.

    A start-up that fails closes what it opened: the store's threads would keep the process
    alive after the error."""
    store, services = app[STORE], app[SERVICES]
    await store.open()  # closes its own connections when it fails
    try:
        try:
            try:
                await services.start()
                app[SETUP_TOKEN][0] = await services.accounts.prepare_setup(services.broker)
                yield
            finally:
                await services.stop()
        finally:
            await store.close()
    finally:
        await services.close_broker()  # after the writer's last commits were published


async def _close_sockets(app: web.Application) -> None:
    """On shutdown every socket closes with 1012: clients reconnect and catch up."""
    # Give clients a moment to answer the close frame (a clean close, so they see 1012);
    # then the runner cancels whatever socket handler is left.
    count = app[HUB].close(list(app[HUB].conns), SERVICE_RESTART, b"service restart")
    await app[HUB].wait_empty(SHUTDOWN_CLOSE_WAIT)
    log.info("event=shutdown sockets_closed=%d", count)
