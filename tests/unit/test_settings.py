"""Configuration: defaults, the TOML file, PREPAID_<SECTION>_<KEY> overrides, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str, name: str = "prepaid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    s = load_settings(None, {})
    assert s.source == "defaults"
    assert s["radius"]["bind"] == "127.0.0.1"
    assert s["radius"]["auth_port"] == 1812
    assert s["radius"]["acct_port"] == 1813
    assert s["billing"]["max_session_seconds"] == 10800
    assert s.money_places == 4
    assert s.redis_url == ""  # in-process live state
    assert s.state_dir == Path("var")
    assert s.pin_key_file == Path("var") / "pin.key"
    assert s.number_rules.international_prefixes == ("00", "011")


def test_default_database_is_sqlite_under_state_dir(tmp_path: Path) -> None:
    assert load_settings(None, {}).database_url == "sqlite:///var/prepaid-aaa.sqlite3"
    state = tmp_path / "state"
    s = load_settings(None, {"PREPAID_SERVER_STATE_DIR": str(state)})
    assert s.database_url == f"sqlite:///{state}/prepaid-aaa.sqlite3"
    assert s.pin_key_file == state / "pin.key"


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
state_dir = "/srv/prepaid"

[database]
url = "postgresql+psycopg2://aaa@db/aaa"
echo = true

[radius]
bind = "0.0.0.0"
auth_port = 11812

[numbers]
international_prefixes = ["00"]
country_code = "44"
national_prefix = "0"

[security]
max_pin_density = 1
""",
    )
    s = load_settings(path, {})
    assert s.source == str(path)
    assert s.database_url == "postgresql+psycopg2://aaa@db/aaa"
    assert s["database"]["echo"] is True
    assert s["radius"]["bind"] == "0.0.0.0"
    assert s["radius"]["auth_port"] == 11812
    assert s["radius"]["acct_port"] == 1813  # untouched keys keep their defaults
    assert s.state_dir == Path("/srv/prepaid")
    assert s.number_rules.international_prefixes == ("00",)
    assert s.number_rules.country_code == "44"
    # an int where a float is expected is accepted and becomes a float
    assert s["security"]["max_pin_density"] == 1.0
    assert isinstance(s["security"]["max_pin_density"], float)


def test_loading_does_not_mutate_defaults(tmp_path: Path) -> None:
    load_settings(write(tmp_path, '[numbers]\ninternational_prefixes = ["9"]\n'), {})
    load_settings(None, {"PREPAID_RADIUS_AUTH_PORT": "1"})
    s = load_settings(None, {})
    assert s["numbers"]["international_prefixes"] == ["00", "011"]
    assert s["radius"]["auth_port"] == 1812


def test_env_overrides_the_named_settings() -> None:
    s = load_settings(
        None,
        {
            "PREPAID_DATABASE_URL": "postgresql+psycopg2://u@h/db",
            "PREPAID_REDIS_URL": "redis://127.0.0.1:6379/3",
            "PREPAID_RADIUS_AUTH_PORT": "0",
            "PREPAID_RADIUS_ACCT_PORT": "21813",
            "PREPAID_RADIUS_BIND": "::1",
        },
    )
    assert s.database_url == "postgresql+psycopg2://u@h/db"
    assert s.redis_url == "redis://127.0.0.1:6379/3"
    assert s["radius"]["auth_port"] == 0
    assert isinstance(s["radius"]["auth_port"], int)
    assert s["radius"]["acct_port"] == 21813
    assert s["radius"]["bind"] == "::1"


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[radius]\nauth_port = 11812\nbind = "10.0.0.1"\n')
    s = load_settings(path, {"PREPAID_RADIUS_AUTH_PORT": "31812"})
    assert s["radius"]["auth_port"] == 31812
    assert s["radius"]["bind"] == "10.0.0.1"


def test_env_list_is_comma_separated() -> None:
    s = load_settings(None, {"PREPAID_NUMBERS_INTERNATIONAL_PREFIXES": "00, 011,"})
    assert s["numbers"]["international_prefixes"] == ["00", "011"]
    assert s.number_rules.international_prefixes == ("00", "011")


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("ON", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_env_bool(raw: str, value: bool) -> None:
    assert load_settings(None, {"PREPAID_DATABASE_ECHO": raw})["database"]["echo"] is value


def test_env_float() -> None:
    s = load_settings(None, {"PREPAID_SECURITY_MAX_PIN_DENSITY": "0.001"})
    assert s["security"]["max_pin_density"] == 0.001


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[radius]\nacct_port = 4242\n")
    s = load_settings(None, {"PREPAID_AAA_CONFIG": str(path)})
    assert s.source == str(path)
    assert s["radius"]["acct_port"] == 4242


def test_explicit_path_wins_over_environment(tmp_path: Path) -> None:
    env_file = write(tmp_path, "[radius]\nacct_port = 1111\n", "env.toml")
    cli_file = write(tmp_path, "[radius]\nacct_port = 2222\n", "cli.toml")
    s = load_settings(cli_file, {"PREPAID_AAA_CONFIG": str(env_file)})
    assert s["radius"]["acct_port"] == 2222


# -- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(missing, {})
    assert str(missing) in str(info.value)


def test_missing_file_from_environment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        load_settings(None, {"PREPAID_AAA_CONFIG": str(missing)})


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[radius\nauth_port = \n")
    with pytest.raises(ConfigError, match="prepaid.toml"):
        load_settings(path, {})


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[raidus]\nauth_port = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[raidus\]") as info:
        load_settings(path, {})
    assert str(path) in str(info.value)


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[radius]\nauth_prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'auth_prot' in \[radius\]") as info:
        load_settings(path, {})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        'auth_port = "1812"',
        "auth_port = true",
        "auth_port = 18.12",
        "bind = 127",
    ],
)
def test_wrong_type_in_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, f"[radius]\n{text}\n")
    key = text.split()[0]
    with pytest.raises(ConfigError, match=rf"\[radius\] {key} must be"):
        load_settings(path, {})


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ("database", 'echo = "yes"'),
        ("numbers", 'international_prefixes = "00"'),
        ("security", 'max_pin_density = "0.1"'),
    ],
)
def test_wrong_type_other_kinds(tmp_path: Path, section: str, text: str) -> None:
    path = write(tmp_path, f"[{section}]\n{text}\n")
    with pytest.raises(ConfigError, match=rf"\[{section}\] {text.split()[0]} must be"):
        load_settings(path, {})


def test_wrong_type_message_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[radius]\nauth_port = "1812"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("raw", ["abc", "", "18.12", "0x10"])
def test_bad_env_int(raw: str) -> None:
    with pytest.raises(ConfigError, match="PREPAID_RADIUS_AUTH_PORT") as info:
        load_settings(None, {"PREPAID_RADIUS_AUTH_PORT": raw})
    assert "int" in str(info.value)


def test_bad_env_bool() -> None:
    with pytest.raises(ConfigError, match="PREPAID_DATABASE_ECHO"):
        load_settings(None, {"PREPAID_DATABASE_ECHO": "maybe"})


def test_bad_number_rules_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[numbers\].*country_code"):
        load_settings(None, {"PREPAID_NUMBERS_COUNTRY_CODE": "0044"})
