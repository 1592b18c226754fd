"""The shipped systemd unit: hardened enough for systemd-analyze, and it runs `chatd serve` right."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from chatd.config import Config, load_config
from conftest import run_cli

UNIT = Path(__file__).resolve().parent.parent / "chatd.service"
MAX_EXPOSURE = 2.0  # our bar; systemd-analyze calls 1.0 to 4.9 "OK" and below 1.0 "SAFE"
STATE_DIR = Path("/var/lib/chatd")


def unit_entries(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; systemd allows repeated keys."""
    entries, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment in {path.name}: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def service_values(key: str) -> list[str]:
    return [value for section, k, value in unit_entries() if section == "Service" and k == key]


def service_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in service_values("Environment"):
        for item in shlex.split(value):
            name, _, setting = item.partition("=")
            env[name] = setting
    return env


def exec_start() -> list[str]:
    (command,) = service_values("ExecStart")
    return shlex.split(command)


def database_of(argv: list[str], env: dict[str, str]) -> str | None:
    """The database the service uses: --db wins over CHATD_DB, as in the CLI."""
    for i, arg in enumerate(argv):
        if arg == "--db" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--db="):
            return arg.split("=", 1)[1]
    return env.get("CHATD_DB")


def exposure_score(output: str) -> float:
    """The number on systemd-analyze's "Overall exposure level for X: 0.9 SAFE" line."""
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no overall exposure line in systemd-analyze output:\n{output[-2000:]}"
    return float(match.group(1))


def test_exposure_line_is_parsed() -> None:
    assert exposure_score("→ Overall exposure level for chatd.service: 0.9 SAFE 😀\n") == 0.9
    assert exposure_score("-> Overall exposure level for chatd.service: 9.6 UNSAFE :-(\n") == 9.6


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_scores_ok_in_systemd_analyze_security() -> None:
    """The README's command: `systemd-analyze security --offline=true chatd.service` is 2.0 or lower."""
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    score = exposure_score(output)
    assert score <= MAX_EXPOSURE, f"exposure {score} is above {MAX_EXPOSURE}:\n{output}"


def test_unit_runs_chatd_serve_with_its_database_under_var_lib_chatd() -> None:
    argv = exec_start()
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "chatd", argv
    assert argv[1] == "serve", argv
    db = database_of(argv[2:], service_environment())
    assert db is not None, "the unit must name its database (--db or CHATD_DB)"
    assert Path(db).is_absolute() and Path(db).parent == STATE_DIR, db
    # StateDirectory is what makes /var/lib/chatd exist and stay writable under ProtectSystem=strict.
    assert service_values("StateDirectory") == ["chatd"]


def test_unit_command_line_is_accepted_by_chatd(tmp_path: Path) -> None:
    """The unit's flags and environment pass `chatd serve --check` (database moved to tmp_path)."""
    argv, env = exec_start(), service_environment()
    args, skip = [], False
    for arg in argv[1:]:
        if skip or arg.startswith("--db="):
            skip = False
            continue
        if arg == "--db":
            skip = True
            continue
        args.append(arg)
    env.pop("CHATD_DB", None)
    result = run_cli(*args, "--check", db=tmp_path / "chatd.db", env=env)
    assert result.returncode == 0, result.stderr
    assert "Configuration OK" in result.stdout


def test_systemd_waits_longer_than_chatd_takes_to_stop() -> None:
    """SIGTERM is a graceful stop; systemd must not SIGKILL chatd while it drains."""
    assert service_values("KillSignal") == ["SIGTERM"]
    (timeout,) = service_values("TimeoutStopSec")
    assert float(timeout) > Config().shutdown_timeout_seconds


# -- the example configuration shipped beside the unit --------------------------------------

EXAMPLE = UNIT.parent / "docs" / "chatd.example.toml"
SETTING_LINE = re.compile(r"^# ([a-z_]+ = .+)$")


def test_example_config_is_valid_as_shipped() -> None:
    assert load_config(env={}, config_file=EXAMPLE) == Config()


def test_example_config_shows_every_setting_at_its_default(tmp_path: Path) -> None:
    """Uncommenting every `# name = value` line changes nothing: the docs match the code."""
    lines = [SETTING_LINE.sub(r"\1", line) for line in EXAMPLE.read_text().splitlines()]
    uncommented = tmp_path / "chatd.toml"
    uncommented.write_text("\n".join(lines) + "\n")
    shown = tomllib.loads(uncommented.read_text())["chatd"]
    assert sorted(shown) == sorted(f.name for f in fields(Config))
    assert load_config(env={}, config_file=uncommented) == Config()
