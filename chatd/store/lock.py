"""One `chatd serve` per database: an flock on a file beside it, held while the server runs.

Two servers on one database would each trust their own memory of rooms, counts and
sessions, and drift apart. The lock is on `chatd.db.lock`, never on the database itself:
SQLite takes POSIX (fcntl) locks on the database, and where flock is emulated with fcntl
locks (NFS) the two would meet. The kernel drops the lock when the process ends, kill -9
included, so a stale lock file stops nothing; it is left in place (removing it would let
two servers lock two different files). The account commands and `chatd backup` take no
lock: they work beside a running server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from chatd.errors import Conflict, StorageUnavailable
from chatd.store.db import storage_error
from chatd.store.postgres import PgFault, hold_server, is_postgres


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def hold_database(db: Path | str, shared: bool = False) -> Iterator[None]:
    """Hold the database's lock for the block, or refuse with one sentence. `shared`: the
    processes of one server joined by a broker hold it together (and a server without a
    broker then cannot take it, nor they while such a server holds it)."""
    if is_postgres(db):
        try:
            with hold_server(str(db), shared):
                yield
        except PgFault as exc:
            raise storage_error(exc) from None
        return
    path = lock_path(db)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StorageUnavailable(f"cannot write the database {os.path.abspath(db)}: its directory is "
                                     f"read-only (cannot open {path.name} for writing: {exc.strerror})") from None
        raise StorageUnavailable(f"cannot create the lock file {os.path.abspath(path)}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(fd)
            if shared:
                raise Conflict(f"a chatd serve without --broker is using the database {os.path.abspath(db)}"
                               f"{f' (pid {holder})' if holder else ''}; stop it first, or give it the same "
                               "--broker") from None
            raise Conflict(f"another chatd serve is already using the database {os.path.abspath(db)}"
                           f"{f' (pid {holder})' if holder else ''}; stop it first") from None
        # The pid is for the sentence above and for people; the lock itself is the flock
        # (so a full disk, which the store will name, does not stop it here).
        if not shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
