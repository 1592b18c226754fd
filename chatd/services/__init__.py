"""Domain operations shared by the web edges and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from chatd.broker import Broker
from chatd.config import Config
from chatd.hub import Hub
from chatd.services.accounts import Accounts
from chatd.services.chat import Chat, parse_int
from chatd.services.live import Live, Renderer
from chatd.services.peers import Peers

__all__ = ["Services", "Accounts", "Chat", "Live", "Renderer", "parse_int"]
log = logging.getLogger("chatd.services")


class Services:
    """The running domain: accounts, chat and live delivery over one store and hub."""

    def __init__(self, config: Config, store, hub: Hub, renderer: Renderer, broker: Broker | None = None) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.broker = broker or Broker()
        self.accounts = Accounts(config, store)
        self.live = Live(config, store, hub, renderer, self.broker)
        self.chat = Chat(config, store, self.live)
        self.accounts.revoked = self.live.credentials_changed
        self.peers: Peers | None = None
        if self.broker.shared:
            self.peers = self.live.peers = Peers(self.live, self._spent_elsewhere)
            self.peers.share_windows({"login_account": self.accounts.by_account, "login_ip": self.accounts.by_ip,
                                      "rooms": self.chat.room_limit})
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.live.load()
        # Subscribed before the writer starts: nothing another process commits from here on is
        # missed (and what it committed before, load() read).
        if self.broker.shared:
            await self.broker.start(self.live, await self.store.channel_name())
        self.store.start_writer(self.live.committed, self.hub.metrics.observe_write)
        if self.peers is not None:
            self.live.catch_up()  # committed by others between load() and the subscription
            self.peers.hello()
        self._poller = asyncio.create_task(self._watch_auth(), name="chatd-auth-watch")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def close_broker(self) -> None:
        """After the store's writer stopped (its last commits are published)."""
        await self.broker.close()

    def _spent_elsewhere(self, spent: dict[int, int]) -> None:
        for user_id, count in spent.items():
            self.chat.flood.debit(user_id, count)

    async def _watch_auth(self) -> None:
        """See a `chatd` command's changes while no request or message comes: sockets of ended
        sessions close, archived or deleted rooms are taken in, new accounts can be mentioned."""
        seen = self.store.auth_epoch
        while True:
            await asyncio.sleep(self.config.auth_poll_seconds)
            try:
                if self.store.postgres:  # closes the moment before a notification arrives (store/postgres.py)
                    self.store.force_look()
                self.live.ensure_current()
                if self.peers is not None:
                    self.peers.tick()
                if self.store.auth_epoch != seen:
                    seen = self.store.auth_epoch
                    await self.live.refresh_users()
            except Exception as exc:  # keep watching; the database may be back next time
                log.warning("event=auth_watch_failed error=%r", str(exc))
