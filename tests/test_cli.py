"""The `chatd` command line through click's runner, on a real database file."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from chatd.cli import main
from conftest import PASSWORD


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


def cli(db: Path, *args: str, stdin: str | None = None):
    return CliRunner().invoke(main, [*args, "--db", str(db)], input=stdin, catch_exceptions=False)


def test_adduser_and_users(db: Path) -> None:
    result = cli(db, "adduser", "Alice", "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert cli(db, "adduser", "bob", "--password-stdin", stdin=PASSWORD + "\n").exit_code == 0
    result = cli(db, "users")
    assert result.stdout.splitlines() == ["alice", "bob"]
    result = cli(db, "users", "--long")
    assert "alice\tadmin\tactive" in result.stdout


@pytest.mark.parametrize(
    ("name", "password", "needle"),
    [
        ("_bad", PASSWORD, "usernames"),
        ("b@d", PASSWORD, "usernames"),
        ("a" * 33, PASSWORD, "usernames"),
        ("bad name", PASSWORD, "usernames"),
        ("ok", "short", "at least 8"),
    ],
)
def test_adduser_rejects_bad_input_with_one_line(db: Path, name: str, password: str, needle: str) -> None:
    result = cli(db, "adduser", name, "--password-stdin", stdin=password + "\n")
    assert result.exit_code == 1
    assert needle in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_duplicate_username_regardless_of_case(db: Path) -> None:
    assert cli(db, "adduser", "carol", "--password-stdin", stdin=PASSWORD + "\n").exit_code == 0
    result = cli(db, "adduser", "CAROL", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == 1
    assert "already exists" in result.stderr


def test_password_needs_terminal_or_stdin_flag(db: Path) -> None:
    result = cli(db, "adduser", "dave", stdin=PASSWORD + "\n")
    assert result.exit_code == 1
    assert "--password-stdin" in result.stderr


def test_token_prints_token_alone(db: Path) -> None:
    cli(db, "adduser", "erin", "--password-stdin", stdin=PASSWORD + "\n")
    result = cli(db, "token", "erin", "--label", "bot")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatd_") and len(lines[0]) > 30
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT token_hash FROM tokens").fetchall()
    assert len(stored) == 1 and lines[0].encode() not in stored[0][0]
    assert cli(db, "token", "nobody").exit_code == 1


def test_passwd_and_deluser(db: Path) -> None:
    cli(db, "adduser", "frank", "--password-stdin", stdin=PASSWORD + "\n")
    assert cli(db, "passwd", "frank", "--password-stdin", stdin="another password\n").exit_code == 0
    assert cli(db, "passwd", "ghost", "--password-stdin", stdin="another password\n").exit_code == 1
    assert cli(db, "deluser", "frank").exit_code == 0
    assert "frank" not in cli(db, "users").stdout.split()
    assert "frank\tmember\tdeactivated" in cli(db, "users", "--long", "--all").stdout
    result = cli(db, "deluser", "frank")
    assert result.exit_code == 1 and "no active user" in result.stderr.lower()


def test_passwords_are_hashed_with_scrypt(db: Path) -> None:
    cli(db, "adduser", "gina", "--password-stdin", stdin=PASSWORD + "\n")
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT password_hash FROM users").fetchone()
    assert stored.startswith("scrypt$") and PASSWORD not in stored


def test_backup_copies_the_database(db: Path, tmp_path: Path) -> None:
    cli(db, "adduser", "hank", "--password-stdin", stdin=PASSWORD + "\n")
    dest = tmp_path / "backup.db"
    result = cli(db, "backup", str(dest))
    assert result.exit_code == 0
    with sqlite3.connect(dest) as conn:
        assert conn.execute("SELECT username FROM users").fetchall() == [("hank",)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_backup_to_missing_directory_is_one_sentence(db: Path, tmp_path: Path) -> None:
    result = cli(db, "backup", str(tmp_path / "no" / "such" / "dir.db"))
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_db_from_environment(tmp_path: Path) -> None:
    env_db = tmp_path / "env.db"
    runner = CliRunner()
    result = runner.invoke(main, ["adduser", "ivy", "--password-stdin"], input=PASSWORD + "\n",
                           env={"CHATD_DB": str(env_db)})
    assert result.exit_code == 0
    assert env_db.exists()


def test_serve_check_validates_config(tmp_path: Path, db: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('port = 9000\nlog_level = "warning"\nmessages_per_second = 5\n')
    result = cli(db, "serve", "--config", str(good), "--check")
    assert result.exit_code == 0 and "9000" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 'lots'\n")
    result = cli(db, "serve", "--config", str(bad), "--check")
    assert result.exit_code == 1 and "port" in result.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    result = cli(db, "serve", "--config", str(unknown), "--check")
    assert result.exit_code == 1 and "colour" in result.stderr
    result = cli(db, "serve", "--config", str(tmp_path / "missing.toml"), "--check")
    assert result.exit_code == 1


def test_no_behind_proxy_overrides_the_file_and_the_environment(tmp_path: Path, db: Path) -> None:
    file = tmp_path / "proxy.toml"
    file.write_text("behind_proxy = true\ntrusted_proxies = ['10.0.0.1']\n")
    result = cli(db, "serve", "--config", str(file), "--check")
    assert result.exit_code == 0 and "behind a proxy at 10.0.0.1" in result.stdout
    result = cli(db, "serve", "--config", str(file), "--no-behind-proxy", "--check")
    assert result.exit_code == 0 and "no proxy" in result.stdout, result.output
    result = CliRunner().invoke(main, ["serve", "--db", str(db), "--no-behind-proxy", "--check"],
                                env={"CHATD_BEHIND_PROXY": "1"})
    assert result.exit_code == 0 and "no proxy" in result.stdout, result.output
    result = CliRunner().invoke(main, ["serve", "--db", str(db), "--behind-proxy", "--check"])
    assert result.exit_code == 0 and "behind a proxy at 127.0.0.1" in result.stdout, result.output


def test_unknown_command_is_usage_error(db: Path) -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code == 2


def test_backup_of_a_missing_database_refuses(tmp_path: Path) -> None:
    result = cli(tmp_path / "typo.db", "backup", str(tmp_path / "b.db"))
    assert result.exit_code == 1 and "no database" in result.stderr.lower()
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "b.db").exists()


def test_bad_port_in_environment_is_a_config_error(db: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--db", str(db), "--check"], env={"CHATD_PORT": "http"})
    assert result.exit_code == 1 and "CHATD_PORT" in result.stderr


def test_serve_picks_uvloop_when_installed_and_asyncio_on_request(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli(db, "serve", "--check")
    assert result.exit_code == 0 and "event loop uvloop" in result.stdout, result.output
    result = CliRunner().invoke(main, ["serve", "--db", str(db), "--check"], env={"CHATD_EVENT_LOOP": "asyncio"})
    assert result.exit_code == 0 and "event loop asyncio" in result.stdout, result.output
    result = CliRunner().invoke(main, ["serve", "--db", str(db), "--check"], env={"CHATD_EVENT_LOOP": "trio"})
    assert result.exit_code == 1 and "The event_loop setting must be one of auto, asyncio, uvloop." in result.stderr
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if `chatd[uvloop]` were not installed
    result = cli(db, "serve", "--check")
    assert result.exit_code == 0 and "event loop asyncio" in result.stdout, result.output
    result = CliRunner().invoke(main, ["serve", "--db", str(db), "--check"], env={"CHATD_EVENT_LOOP": "uvloop"})
    assert result.exit_code == 1 and result.stderr.strip() == (
        "Error: The event_loop setting is uvloop, but uvloop is not installed (pip install 'chatd[uvloop]').")
