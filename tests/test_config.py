"""Configuration: defaults < TOML file < CHATD_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.config import Config, load_config
from chatd.errors import BadInput


def test_defaults() -> None:
    config = load_config({}, env={})
    assert config == Config()
    assert config.port == 8080 and config.host == "127.0.0.1" and config.db == Path("chatd.db")


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    file = tmp_path / "chatd.toml"
    file.write_text('port = 7000\nhost = "0.0.0.0"\nlog_level = "debug"\nmessages_per_second = 3\n')
    env = {"CHATD_PORT": "7100", "CHATD_LOG_LEVEL": "warning"}
    config = load_config({"port": 7200}, env=env, config_file=file)
    assert config.port == 7200            # flag beats env and file
    assert config.log_level == "warning"  # env beats file
    assert config.host == "0.0.0.0"       # file beats default
    assert config.messages_per_second == 3.0


def test_config_file_from_environment_and_chatd_table(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[chatd]\nbehind-proxy = true\ntrusted_proxies = ['10.0.0.1']\n")
    config = load_config({}, env={"CHATD_CONFIG": str(file)})
    assert config.behind_proxy is True and config.trusted_proxies == ("10.0.0.1",)


def test_env_types(tmp_path: Path) -> None:
    config = load_config({}, env={"CHATD_BEHIND_PROXY": "yes", "CHATD_DB": str(tmp_path / "x.db"),
                                  "CHATD_TRUSTED_PROXIES": "1.2.3.4, 5.6.7.8", "CHATD_SYNC": "full"})
    assert config.behind_proxy and config.db == tmp_path / "x.db"
    assert config.trusted_proxies == ("1.2.3.4", "5.6.7.8") and config.sync == "full"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CHATD_PORT": "eighty"}, "CHATD_PORT"),
        ({"CHATD_PORT": "70000"}, "port"),
        ({"CHATD_LOG_LEVEL": "loud"}, "log_level"),
        ({"CHATD_SYNC": "sometimes"}, "sync"),
        ({"CHATD_MESSAGES_PER_SECOND": "-1"}, "negative"),
        ({"CHATD_BEHIND_PROXY": "maybe"}, "CHATD_BEHIND_PROXY"),
    ],
)
def test_bad_values_are_clear(env: dict, needle: str) -> None:
    with pytest.raises(BadInput, match=needle):
        load_config({}, env=env)


def test_bad_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("port = [")
    with pytest.raises(BadInput, match="not valid TOML"):
        load_config({}, env={}, config_file=file)


def test_top_level_keys_and_chatd_table_merge(tmp_path: Path) -> None:
    file = tmp_path / "both.toml"
    file.write_text("port = 7001\nhost = '0.0.0.0'\n[chatd]\nport = 7002\n")
    config = load_config({}, env={}, config_file=file)
    assert config.port == 7002 and config.host == "0.0.0.0"


def test_trusted_proxies_accept_networks_and_refuse_junk() -> None:
    assert load_config({}, env={"CHATD_TRUSTED_PROXIES": "10.0.0.0/8,::1"}).trusted_proxies == ("10.0.0.0/8", "::1")
    with pytest.raises(BadInput, match="trusted_proxies"):
        load_config({}, env={"CHATD_TRUSTED_PROXIES": "not-an-ip"})
