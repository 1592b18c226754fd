"""The `chatd` command: serve, and account management from the shell."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from aiohttp import web

from chatd import __version__, rules
from chatd.config import LOG_LEVELS, Config, load_config
from chatd.errors import ChatdError, NotFound
from chatd.models import Room
from chatd.services import Accounts
from chatd.store import Store
from chatd.store.db import DatabaseFault
from chatd.store.postgres import is_postgres, redacted

T = TypeVar("T")
log = logging.getLogger("chatd")

class Database(click.ParamType):
    """A SQLite file, or a postgresql://USER@HOST/NAME URL (kept as text)."""

    name = "FILE|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        text = str(value)
        return text if is_postgres(text) else Path(text)


db_option = click.option(
    "--db", "db", type=Database(), envvar="CHATD_DB", default=None,
    help="SQLite database file, or postgresql://USER@HOST/NAME (env CHATD_DB, default ./chatd.db).",
)


def run(coro: Awaitable[T], db: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> T:
    """Run a coroutine on database `db`; domain errors become one sentence on stderr and exit 1
    (a fault of the database names the file and the cause)."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    except DatabaseFault as exc:
        raise click.ClickException(_sentence(exc.describe(db))) from None
    except ChatdError as exc:
        raise click.ClickException(_sentence(exc.message)) from None
    except OSError as exc:
        raise click.ClickException(_sentence(f"{exc.strerror or exc}")) from None


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def with_accounts(db: Path | None, fn: Callable[[Accounts, Store], Awaitable[T]]) -> T:
    """Run an account command against the store (no lock: it works beside a running server)."""
    config = load_config({"db": db})

    async def command() -> T:
        store = Store(config.db, config.sync)
        await store.open()
        try:
            return await fn(Accounts(config, store), store)
        finally:
            await store.close()

    return run(command(), config.db)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.ClickException("No password on stdin.")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise click.ClickException("No terminal to ask for the password; use --password-stdin.")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="chatd")
def main() -> None:
    """chatd: a self-hosted real-time chat server."""


@main.command()
@db_option
@click.option("--host", default=None, help="Address to listen on (env CHATD_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (env CHATD_PORT, default 8080; 0 picks a free one).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML config file (env CHATD_CONFIG).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None, help="Log verbosity (default info).")
@click.option("--behind-proxy/--no-behind-proxy", default=None,
              help="Trust X-Forwarded-For/Proto from trusted_proxies (default loopback); "
                   "--no-behind-proxy overrides a config file or CHATD_BEHIND_PROXY.")
@click.option("--broker", default=None, metavar="URL",
              help="Join the processes using this Redis and database into one server: redis://HOST:PORT/N "
                   "(env CHATD_BROKER; default: none, one process).")
@click.option("--workers", type=int, default=None,
              help="Start this many processes on one port (env CHATD_WORKERS, default 1; more needs --broker).")
@click.option("--check", is_flag=True, help="Validate the configuration and database, then exit.")
def serve(db: Path | None, host: str | None, port: int | None, config_file: Path | None,
          log_level: str | None, behind_proxy: bool | None, broker: str | None, workers: int | None,
          check: bool) -> None:
    """Run the chat server until SIGTERM or SIGINT."""
    flags = {"db": db, "host": host, "port": port, "log_level": log_level, "behind_proxy": behind_proxy,
             "broker": broker, "workers": workers}
    try:
        config = load_config(flags, config_file=config_file)
        loop_name, factory = event_loop(config.event_loop)
    except ChatdError as exc:
        raise click.ClickException(_sentence(exc.message)) from None
    configure_logging(config.log_level)
    if config.workers > 1 and not check:
        from chatd.workers import supervise
        run(_check(config), config.db)  # migrations once, before the workers share the file
        run(_probe_broker(config.broker), config.db)
        raise SystemExit(run(supervise(config, config_file), config.db))
    if check:
        # No lock: --check runs beside a live server (to vet a new configuration before a
        # restart), and a probe of the lock would make a server starting that moment refuse.
        run(_check(config), config.db)
        proxy = f"behind a proxy at {', '.join(config.trusted_proxies)}" if config.behind_proxy else "no proxy"
        click.echo(f"Configuration OK: database {redacted(str(config.db))}, listening on "
                   f"{config.host}:{config.port}, {proxy}, event loop {loop_name}.")
        return
    run(_serve(config, loop_name), config.db, factory)


def event_loop(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The loop `chatd serve` runs on: uvloop's when asked for or, with "auto", installed.

    uvloop runs the same code with about a third fewer instructions per socket write and
    a tenth fewer per HTTP post (docs/performance.md); asyncio's own loop is the fallback."""
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ChatdError("the event_loop setting is uvloop, but uvloop is not installed "
                             "(pip install 'chatd[uvloop]')") from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


async def _check(config: Config) -> None:
    store = Store(config.db, config.sync)
    await store.open()
    await store.close()
    if config.broker:
        await _probe_broker(config.broker)


async def _probe_broker(url: str) -> None:
    """One sentence naming the broker when it cannot be reached."""
    from chatd.broker import make_broker
    await make_broker(url).probe()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one, where the system lets us: each
    connection is a descriptor, and a shell's `ulimit -n 1024` would cap the clients near
    a thousand. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):  # e.g. above the kernel's nr_open: keep ours
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tune_gc() -> None:
    """Fewer cyclic-GC passes: a request allocates thousands of short-lived objects that
    reference counting frees anyway, and at CPython's default threshold (700) the collector
    ran every few requests (measured: ~12% more room pages per second with this)."""
    gc.freeze()  # everything loaded at start-up is permanent: never scan it again
    gc.set_threshold(20_000, 20, 20)


async def _serve(config: Config, loop_name: str) -> None:
    # Signals first: a SIGTERM that arrives during start-up still shuts down cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _run_server(config, loop_name, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _run_server(config: Config, loop_name: str, stop: asyncio.Event) -> None:
    """Start, serve until `stop`, shut down; a start-up that fails closes what it opened."""
    from chatd.app import create_app
    from chatd.server import Runner
    from chatd.state import SETUP_TOKEN

    open_files = raise_open_files_limit()
    app = create_app(config)
    runner = Runner(app, header_timeout=config.header_timeout_seconds,
                    shutdown_timeout=config.shutdown_timeout_seconds)
    try:
        await runner.setup()
        tune_gc()
        # With a broker, several processes may share the port (SO_REUSEPORT; docs/scaling.md).
        site = web.TCPSite(runner, config.host, config.port, backlog=2048, reuse_port=bool(config.broker) or None)
        try:
            await site.start()
        except OSError as exc:
            raise ChatdError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
        host = config.host if ":" not in config.host else f"[{config.host}]"
        url = f"http://{host}:{site.port}"
        click.echo(f"chatd {__version__} listening on {url}")
        log.info("event=started url=%s loop=%s open_files_limit=%d", url, loop_name, open_files)
        token = app[SETUP_TOKEN][0]
        if token:
            public = config.public_url[0] if config.public_url else url
            click.echo(f"No accounts yet. Create the first admin account at: {public}/setup?token={token}")
        sys.stdout.flush()
        await stop.wait()
        log.info("event=stopping")
    finally:
        await runner.cleanup()
    log.info("event=stopped")


@main.command()
@click.argument("name")
@db_option
@click.option("--admin", is_flag=True, help="Make the account an administrator.")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
def adduser(name: str, db: Path | None, admin: bool, password_stdin: bool) -> None:
    """Create an account."""
    password = read_password(password_stdin)
    user = with_accounts(db, lambda a, s: a.create_user(name, password, admin))
    click.echo(f"Created {'admin ' if user.admin else ''}account {user.username}.", err=True)


@main.command()
@click.argument("name")
@db_option
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
def passwd(name: str, db: Path | None, password_stdin: bool) -> None:
    """Set a new password and end that user's sessions."""
    password = read_password(password_stdin)
    with_accounts(db, lambda a, s: a.set_password(name, password))
    click.echo(f"Password changed for {name.lower()}; their sessions have ended.", err=True)


@main.command()
@click.argument("name")
@db_option
def deluser(name: str, db: Path | None) -> None:
    """Deactivate an account: no more sign-ins, sessions and tokens end, messages stay."""
    with_accounts(db, lambda a, s: a.deactivate(name))
    click.echo(f"Deactivated {name.lower()}.", err=True)


@main.command()
@db_option
@click.option("--long", "-l", "long_format", is_flag=True, help="Show role and status too.")
@click.option("--all", "-a", "show_all", is_flag=True, help="Include deactivated accounts.")
def users(db: Path | None, long_format: bool, show_all: bool) -> None:
    """List accounts, one per line."""
    found = with_accounts(db, lambda a, s: s.list_users())
    for user in found:
        if not user.active and not show_all:
            continue
        if long_format:
            role = "admin" if user.admin else "member"
            click.echo(f"{user.username}\t{role}\t{'active' if user.active else 'deactivated'}")
        else:
            click.echo(user.username)


@main.command()
@click.argument("name")
@db_option
@click.option("--label", default="", help="A note on what the token is for.")
def token(name: str, db: Path | None, label: str) -> None:
    """Create an API token for that user and print it once."""
    click.echo(with_accounts(db, lambda a, s: a.create_token(name, label)))


@main.command()
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@db_option
def backup(dest: Path, db: Path | None) -> None:
    """Write a consistent copy of the database, safe while the server runs."""

    async def op(accounts: Accounts, store: Store) -> None:
        await store.backup(dest)

    source = load_config({"db": db}).db
    if not is_postgres(source) and not source.exists():  # PostgreSQL: the store says to use pg_dump
        # A mistyped --db must not "back up" a fresh empty database.
        raise click.ClickException(f"No database at {source}; check --db or CHATD_DB.")
    with_accounts(db, op)
    click.echo(f"Backup written to {dest}.", err=True)


@main.command("migrate-db")
@db_option
@click.option("--to", "target", required=True, metavar="URL",
              help="The empty PostgreSQL database to copy into: postgresql://USER@HOST/NAME.")
def migrate_db(db: Path | None, target: str) -> None:
    """Copy the SQLite database into an empty PostgreSQL one (stop the server first)."""
    from chatd.store.lock import hold_database
    from chatd.store.migrate import copy_to_postgres

    source = load_config({"db": db}).db
    if is_postgres(source):
        raise click.ClickException("migrate-db copies a SQLite database; --db names PostgreSQL already.")
    if not is_postgres(target):
        raise click.ClickException(f"--to must be a postgresql:// URL, not {target!r}.")
    if not source.exists():
        raise click.ClickException(f"No database at {source}; check --db or CHATD_DB.")

    async def op() -> dict[str, int]:
        with hold_database(source):  # refused while a server uses the file: the copy would be stale
            return await asyncio.to_thread(
                copy_to_postgres, source, target, lambda table, n: click.echo(f"  {table}: {n} rows", err=True))

    counts = run(op(), target)
    click.echo(f"Copied {counts['users']} accounts, {counts['rooms']} rooms and {counts['messages']} messages "
               f"to {redacted(target)}. Start chatd with --db {redacted(target)}.", err=True)


@main.command()
@db_option
def reindex(db: Path | None) -> None:
    """Rebuild the search indexes from the messages (safe while the server runs; posts wait)."""

    async def op(accounts: Accounts, store: Store) -> int:
        return await store.reindex()

    count = with_accounts(db, op)
    click.echo(f"Search indexes rebuilt: {count} messages.", err=True)


# -- rooms -----------------------------------------------------------------------------------


@main.group()
def room() -> None:
    """List, archive and delete rooms (a running server sees the change at once)."""


def _room(store: Store, slug: str) -> Room:
    found = store.room_named(slug)
    if found is None:
        raise NotFound(f"no room named {slug}")
    rules.check_administrable(found.slug, found.kind)
    return found


@room.command("list")
@db_option
@click.option("--all", "-a", "show_all", is_flag=True, help="Include archived rooms.")
def room_list(db: Path | None, show_all: bool) -> None:
    """List public and private rooms: slug, kind, messages, archived, one per line."""
    found = with_accounts(db, lambda a, s: s.all_rooms())
    for entry, _ in found:
        if entry.archived and not show_all:
            continue
        state = "archived" if entry.archived else "active"
        click.echo(f"{entry.slug}\t{entry.kind}\t{entry.message_count}\t{state}")


@room.command("archive")
@click.argument("slug")
@db_option
def room_archive(slug: str, db: Path | None) -> None:
    """Archive a room: its history stays readable, it takes no new messages."""
    with_accounts(db, lambda a, s: s.archive_room(_room(s, slug), True))
    click.echo(f"Archived {slug}.", err=True)


@room.command("unarchive")
@click.argument("slug")
@db_option
def room_unarchive(slug: str, db: Path | None) -> None:
    """Take a room out of the archive: it takes messages again."""
    with_accounts(db, lambda a, s: s.archive_room(_room(s, slug), False))
    click.echo(f"Unarchived {slug}.", err=True)


@room.command("delete")
@click.argument("slug")
@db_option
@click.option("--yes", is_flag=True, help="Do not ask for a confirmation.")
def room_delete(slug: str, db: Path | None, yes: bool) -> None:
    """Delete a room with its messages and memberships, after a confirmation."""

    async def op(accounts: Accounts, store: Store) -> int:
        found = _room(store, slug)
        if not yes:
            if not sys.stdin.isatty():
                raise ChatdError("no terminal to confirm on; add --yes to delete without asking")
            question = f"Delete the room {found.slug} and its {found.message_count} messages? This cannot be undone."
            if not click.confirm(question, default=False):
                raise ChatdError("nothing was deleted")
        return await store.delete_room(found)

    gone = with_accounts(db, op)
    click.echo(f"Deleted {slug} and its {gone} messages.", err=True)
