"""Every SQL statement in chatd: accounts, sessions, rooms, memberships, messages.

Small reads run inline on the event loop (WAL: they never wait for the writer),
big reads on a reader thread. Writes are one transaction each: message batches
inline on their own connection when that waits for nothing (see writer.py), all
others on the writer thread. The parts live in accounts.py and rooms.py.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from chatd.store.accounts import AccountsStore
from chatd.store.db import storage_error
from chatd.store.rooms import RoomsStore
from chatd.store.schema import SCHEMA_VERSION

__all__ = ["Store", "SCHEMA_VERSION"]


class Store(AccountsStore, RoomsStore):
    # -- operations ---------------------------------------------------------

    async def backup(self, dest: Path) -> None:
        """Write a consistent copy with SQLite's online backup, then rename into place."""
        dest = Path(dest)

        def op(conn: sqlite3.Connection) -> None:
            fd, tmp = tempfile.mkstemp(prefix=".chatd-backup-", dir=dest.parent or Path("."))
            os.close(fd)
            try:
                target = sqlite3.connect(tmp)
                try:
                    conn.backup(target)
                    target.execute("PRAGMA journal_mode = DELETE")
                finally:
                    target.close()
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

        try:
            await self._reader.run(op)
        except sqlite3.Error as exc:
            raise storage_error(exc) or exc from None
