"""Domain operations shared by the web edges and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from chatd.config import Config
from chatd.hub import Hub
from chatd.services.accounts import Accounts
from chatd.services.chat import Chat, parse_int
from chatd.services.live import Live, Renderer

__all__ = ["Services", "Accounts", "Chat", "Live", "Renderer", "parse_int"]
log = logging.getLogger("chatd.services")


class Services:
    """The running domain: accounts, chat and live delivery over one store and hub."""

    def __init__(self, config: Config, store, hub: Hub, renderer: Renderer) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.accounts = Accounts(config, store)
        self.live = Live(config, store, hub, renderer)
        self.chat = Chat(config, store, self.live)
        self.accounts.revoked = self.live.ensure_current
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.live.load()
        self.store.start_writer(self.live.on_commit, self.hub.metrics.observe_write)
        self._poller = asyncio.create_task(self._watch_auth(), name="chatd-auth-watch")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _watch_auth(self) -> None:
        """See a `chatd` command's changes while no request or message comes: sockets of ended
        sessions close, archived or deleted rooms are taken in, new accounts can be mentioned."""
        seen = self.store.auth_epoch
        while True:
            await asyncio.sleep(self.config.auth_poll_seconds)
            try:
                self.live.ensure_current()
                if self.store.auth_epoch != seen:
                    seen = self.store.auth_epoch
                    await self.live.refresh_users()
            except Exception as exc:  # keep watching; the database may be back next time
                log.warning("event=auth_watch_failed error=%r", str(exc))
