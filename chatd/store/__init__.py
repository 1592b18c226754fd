"""Every SQL statement in chatd: accounts, sessions, rooms, memberships, messages.

Small reads run inline on the event loop (WAL: they never wait for the writer),
big reads on a reader thread. Writes are one transaction each, on the writer
thread (message batches too: see writer.py). The parts live in accounts.py and
rooms.py; connections and the mapping of SQLite's errors in db.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import tempfile
from pathlib import Path

from chatd.errors import BadInput, StorageUnavailable
from chatd.store.accounts import AccountsStore
from chatd.store.db import storage_error
from chatd.store.postgres import redacted
from chatd.store.rooms import RoomsStore
from chatd.store.schema import SCHEMA_VERSION
from chatd.store.search import SearchStore

__all__ = ["Store", "SCHEMA_VERSION"]

BACKUP_PREFIX = ".chatd-backup-"
_SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


class Store(AccountsStore, RoomsStore, SearchStore):
    async def open(self) -> None:
        """Open every connection; when one fails, close those already open (each has a thread
        that would keep the process alive after the error) and raise a domain error."""
        try:
            await super().open()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc) or StorageUnavailable(
                    f"cannot use the database {redacted(str(self.path))}: {exc}") from None
            raise

    # -- operations ---------------------------------------------------------

    async def backup(self, dest: Path) -> None:
        """Write a consistent copy with SQLite's online backup, then rename into place.

        The copy is made in a temporary file beside DEST, locked while it is written; what a
        backup killed midway left there is deleted by the next one."""
        dest = Path(dest)
        if self.postgres:
            raise BadInput("chatd backup copies a SQLite database; back up PostgreSQL with pg_dump "
                           "(see docs/scaling.md)")

        def op(conn: sqlite3.Connection) -> None:
            _remove_leftovers(dest.parent)
            fd, tmp = _claim_temporary(dest.parent)
            try:
                target = sqlite3.connect(tmp)
                try:
                    conn.backup(target)
                    target.execute("PRAGMA journal_mode = DELETE")
                finally:
                    target.close()
                os.replace(tmp, dest)
            except BaseException:
                _remove_with_side_files(Path(tmp))
                raise
            finally:
                os.close(fd)  # after the rename: the lock lasts as long as the file is temporary

        try:
            await self._reader.run(op)
        except sqlite3.Error as exc:
            raise storage_error(exc) or exc from None


def _claim_temporary(folder: Path) -> tuple[int, str]:
    """A new temporary file in folder, flocked by this backup so that no other removes it."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=BACKUP_PREFIX, dir=folder)
        # Blocking: another backup's clean-up may hold it for a moment, and then delete it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)  # deleted under us before we locked it: take another


def _remove_leftovers(folder: Path) -> None:
    """Delete what backups killed midway left in folder: temporary files no running backup
    holds locked, with SQLite's journal files beside them."""
    for path in folder.glob(BACKUP_PREFIX + "*"):
        side = next((s for s in _SQLITE_SIDE_FILES if path.name.endswith(s)), None)
        if side is not None:
            if not path.with_name(path.name.removesuffix(side)).exists():
                with contextlib.suppress(OSError):
                    path.unlink()  # its temporary file is gone already
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while a running backup writes it
            _remove_with_side_files(path)
        except OSError:
            pass  # locked, or not ours to remove: it stays, and the backup goes on
        finally:
            os.close(fd)


def _remove_with_side_files(path: Path) -> None:
    for name in (path.name, *(path.name + side for side in _SQLITE_SIDE_FILES)):
        path.with_name(name).unlink(missing_ok=True)
