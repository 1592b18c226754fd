"""Configuration: one frozen `Config` built once from flags, env and a TOML file.

Precedence, highest first: command-line flags, `CHATD_*` environment
variables, the TOML file given with `--config` (or `CHATD_CONFIG`), defaults.
Nothing reads `os.environ` after `load_config` returns.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chatd.errors import BadInput
from chatd.store.postgres import is_postgres

LOG_LEVELS = ("debug", "info", "warning", "error")
SYNC_MODES = ("normal", "full")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


@dataclass(frozen=True)
class Config:
    db: Path | str = Path("chatd.db")  # a SQLite file, or a postgresql://... URL (a str)
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    # Trust X-Forwarded-For/Proto, and only from these peers.
    behind_proxy: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # SQLite synchronous mode: "normal" survives a process crash, "full" a power cut too.
    sync: str = "normal"
    # "auto": uvloop when it is installed (pip install 'chatd[uvloop]'), else asyncio's own.
    event_loop: str = "auto"
    session_days: int = 30
    history_page: int = 50
    login_attempts_per_account: int = 10
    login_attempts_per_ip: int = 50
    login_window_seconds: int = 300
    messages_per_second: float = 10.0
    message_burst: int = 30
    max_frame_bytes: int = 65_536
    max_request_bytes: int = 262_144
    connections_per_user: int = 50
    send_buffer_bytes: int = 1_048_576
    typing_interval_seconds: float = 2.0
    shutdown_timeout_seconds: float = 8.0
    auth_poll_seconds: float = 1.0
    # Rooms a member (not an administrator) may create per hour.
    rooms_per_hour: int = 10
    # The address(es) people use, e.g. "https://chat.example.org"; the first is the one chatd
    # prints and links to. When set, requests for any other Host, and any other Origin, are refused.
    public_url: tuple[str, ...] = ()
    # A client must send a request's headers within this many seconds, and its body within
    # body_timeout_seconds, or the connection is closed (slow clients tie up descriptors).
    header_timeout_seconds: float = 5.0
    body_timeout_seconds: float = 10.0
    # Joins the processes that use the same broker and database into one server
    # ("redis://HOST:PORT/N"); empty: one process, no broker (docs/scaling.md).
    broker: str = ""
    # `chatd serve` starts this many processes on one port (SO_REUSEPORT); more than one
    # needs a broker.
    workers: int = 1

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise BadInput(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.sync not in SYNC_MODES:
            raise BadInput(f"sync must be one of {', '.join(SYNC_MODES)}")
        if self.event_loop not in EVENT_LOOPS:
            raise BadInput(f"the event_loop setting must be one of {', '.join(EVENT_LOOPS)}")
        if not 0 <= self.port <= 65535:
            raise BadInput("port must be between 0 and 65535")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise BadInput(f"{f.name} must not be negative")
        if self.messages_per_second <= 0 or self.message_burst < 1:
            raise BadInput("messages_per_second and message_burst must be positive")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise BadInput(f"trusted_proxies: {entry!r} is not an address or network") from None
        if self.connections_per_user < 1 or self.max_frame_bytes < 1024:
            raise BadInput("connections_per_user must be at least 1, max_frame_bytes at least 1024")
        if self.workers < 1:
            raise BadInput("workers must be at least 1")
        if self.workers > 1 and not self.broker:
            raise BadInput("more than one worker needs a broker (--broker redis://HOST:PORT/N) to join them")
        if self.broker and not self.broker.lower().startswith(("redis://", "rediss://", "unix://")):
            raise BadInput(f"the broker must be a redis:// address, not {self.broker.split('@')[-1]!r}")
        if self.header_timeout_seconds <= 0 or self.body_timeout_seconds <= 0:
            raise BadInput("header_timeout_seconds and body_timeout_seconds must be positive")
        # Frozen: the normalised form replaces what was given, once, here.
        object.__setattr__(self, "public_url", tuple(origin_of(entry) for entry in self.public_url))

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """A public_url entry as the origin browsers send: scheme://host[:port], lower case,
    without a default port or a trailing slash; BadInput for anything else."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or port == -1 or parts.username
            or parts.password is not None or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise BadInput(f"public_url: {url!r} is not an http or https address with a host and no path, "
                       "such as https://chat.example.org")
    scheme = parts.scheme.lower()
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Turn a file or environment value into the type of the field's default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if isinstance(default, Path):  # the database: a SQLite file, or a postgresql:// URL
            return str(value) if is_postgres(str(value)) else Path(value)
        if isinstance(default, tuple):
            items = value if isinstance(value, list) else str(value).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise BadInput(f"the setting {name} has a bad value: {value!r}") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise BadInput(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"the config file {path} is not valid TOML: {exc}") from None
    # Keys may sit at the top level or in a [chatd] table (which wins).
    table = data.pop("chatd", {})
    if not isinstance(table, dict):
        raise BadInput(f"in the config file {path}, chatd must be a table")
    return {**data, **table}


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Config:
    """Build the Config from defaults, the file, the environment and flags, in that order."""
    env = os.environ if env is None else env
    defaults = {f.name: f.default for f in fields(Config)}
    values: dict[str, Any] = {}
    if config_file is None and env.get("CHATD_CONFIG"):
        config_file = Path(env["CHATD_CONFIG"])
    if config_file is not None:
        for key, value in read_toml(config_file).items():
            key = key.replace("-", "_")
            if key not in defaults:
                raise BadInput(f"unknown setting {key!r} in {config_file}")
            values[key] = _coerce(key, value, defaults[key])
    for name, default in defaults.items():
        raw = env.get(f"CHATD_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(f"CHATD_{name.upper()}", raw, default)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(f"--{name.replace('_', '-')}", value, defaults[name])
    return Config(**values)
