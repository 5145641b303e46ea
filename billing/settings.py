"""Configuration: one TOML file plus ``PREPAID_<SECTION>_<KEY>`` environment overrides.

Where the file comes from: ``--config FILE``, else ``$PREPAID_AAA_CONFIG``, else built-in
defaults only. Every key of :data:`DEFAULTS` can be overridden from the environment; the value is
parsed to the type of the default (integers, floats, booleans ``true/false/1/0``, lists as
comma-separated text). Unknown sections or keys in the file are an error, so a typo never
silently does nothing.

The embedded default needs no file at all: a SQLite database and the PIN key in ``state_dir``
(``./var``), live state in the process, listening on 127.0.0.1.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing.numbers import NumberRules

DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        "state_dir": "var",  # SQLite file and generated PIN key (embedded default)
        "pin_key_file": "",  # default: <state_dir>/pin.key, created on first use
        "log_format": "json",  # json (journald) or console
        "log_level": "info",
        "threads": 8,  # threads for housekeeping (the reaper, the NAS table's refresh)
        "nas_refresh_seconds": 10.0,  # how soon `prepaidctl nas add` reaches a running server
        "workers": 1,  # server processes sharing the ports (SO_REUSEPORT); > 1 needs Redis
        "spread": "datagram",  # how the kernel hands datagrams to workers: datagram or flow
        "reuse_port": False,  # set for worker processes; share the ports with other processes
    },
    "database": {
        "url": "",  # default: sqlite:///<state_dir>/prepaid-aaa.sqlite3
        "pool_size": 10,
        "echo": False,
        "sqlite_busy_seconds": 30.0,  # SQLite: how long a writer waits for another's lock
        "prepared_statements": True,  # PostgreSQL: PREPARE the hot statements per connection
    },
    "redis": {
        "url": "",  # empty: in-process live state (single process only)
        "prefix": "paaa:",
        "sentinels": [],  # ["host:26379", ...]: find the master through Redis Sentinel
        "sentinel_service": "",  # the Sentinel service name (with sentinels)
    },
    "radius": {
        "bind": "127.0.0.1",
        "auth_port": 1812,
        "acct_port": 1813,
        "dictionary": "",  # default: the packaged dictionaries/dictionary
        "reply_cache_seconds": 30,  # how long a reply is replayed for a retransmission
        "acct_interim_interval": 60,  # asked of the NAS in every Accept; 0: not sent
        "max_queue_seconds": 2.0,  # a request waiting longer for a worker is dropped (overload)
        "max_pending": 1000,  # requests waiting for a worker, at most; more are dropped
        "batch_size": 64,  # requests handled together (one transaction), at most
        "concurrent_batches": 1,  # batch threads: batches handled at once by a process
        "receive_buffer": 4194304,  # bytes of each listener's buffer (SO_RCVBUF); 0: the kernel's
    },
    "billing": {
        "max_session_seconds": 10800,
        "money_places": 4,
        "default_currency": "USD",
        "start_timeout_seconds": 120,  # a grant with no accounting Start is released after this
        "stale_margin_seconds": 300,  # a call with no news for Session-Timeout + this is reaped
        "reap_interval_seconds": 30.0,
        "closed_session_retention_days": 30,  # how long a finished call's keys stop duplicates
    },
    "security": {
        "ani_failure_limit": 5,  # wrong PINs from one ANI within the window, then lockout
        "nas_failure_limit": 50,  # wrong PINs from one NAS within the window, then lockout
        "failure_window_seconds": 300,
        "lockout_seconds": 900,
        "card_failure_limit": 5,  # wrong PINs against one card number, then the card locks
        "max_pin_density": 1e-4,
    },
    "cards": {
        "max_bind_numbers": 5,
    },
    "numbers": {
        "international_prefixes": ["00", "011"],
        "national_prefix": "",
        "country_code": "",
        "strip_prefixes": [],
    },
    "metrics": {
        "enabled": False,  # Prometheus endpoint at http://<bind>:<port>/metrics
        "bind": "127.0.0.1",
        "port": 9812,
    },
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, section and key."""


def _parse_env(raw: str, default: Any, name: str) -> Any:
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


def _check_type(where: str, section: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}: [{section}] {key} must be a {type(default).__name__}")
    return value


@dataclass(frozen=True)
class Settings:
    """The merged configuration; sections are plain dicts, with typed accessors for the rest."""

    values: Mapping[str, Mapping[str, Any]]
    source: str  # where the file came from, for logs ("defaults" when none)

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self.values[section]

    @property
    def state_dir(self) -> Path:
        return Path(self.values["server"]["state_dir"])

    @property
    def database_url(self) -> str:
        url = self.values["database"]["url"]
        if url:
            return str(url)
        return f"sqlite:///{self.state_dir / 'prepaid-aaa.sqlite3'}"

    @property
    def redis_url(self) -> str:
        """The Redis URL; with Sentinel, the URL carries only database and credentials."""
        url = str(self.values["redis"]["url"])
        if not url and self.values["redis"]["sentinels"]:
            return "redis://"
        return url

    @property
    def pin_key_file(self) -> Path:
        explicit = self.values["server"]["pin_key_file"]
        return Path(explicit) if explicit else self.state_dir / "pin.key"

    @property
    def number_rules(self) -> NumberRules:
        return NumberRules.from_mapping(self.values["numbers"])

    @property
    def money_places(self) -> int:
        return int(self.values["billing"]["money_places"])


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    merged = copy.deepcopy(DEFAULTS)
    source = "defaults"
    file_path = path or env.get("PREPAID_AAA_CONFIG") or None
    if file_path:
        source = str(file_path)
        try:
            with open(file_path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {file_path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path}: {exc}") from None
        for section, items in data.items():
            if section not in merged or not isinstance(items, dict):
                raise ConfigError(f"{file_path}: unknown section [{section}]")
            for key, value in items.items():
                if key not in merged[section]:
                    raise ConfigError(f"{file_path}: unknown key {key!r} in [{section}]")
                merged[section][key] = _check_type(
                    str(file_path), section, key, value, DEFAULTS[section][key]
                )
    for section, items in merged.items():
        for key, default in items.items():
            name = f"PREPAID_{section.upper()}_{key.upper()}"
            if name in env:
                items[key] = _parse_env(env[name], default, name)
    settings = Settings(merged, source)
    try:
        settings.number_rules  # noqa: B018 - validate early with a readable message
    except ValueError as exc:
        raise ConfigError(f"[numbers] {exc}") from None
    return settings
