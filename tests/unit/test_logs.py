"""Log lines leave the process whole, so workers sharing one stdout never interleave them."""

from __future__ import annotations

import io
import json
import sys

import pytest
import structlog

from radiusd.logs import configure_logging


class _Raw(io.RawIOBase):
    """An unbuffered file (what stdout is under ``PYTHONUNBUFFERED``) that keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return len(data)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_each_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    raw = _Raw()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, write_through=True))
    try:
        configure_logging(fmt)
        log = structlog.get_logger()
        log.info("server.listening", auth_port=1812, acct_port=1813)
        log.warning("redis.unreachable", error="connection refused")
    finally:
        structlog.reset_defaults()
    assert len(raw.writes) == 2
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in raw.writes)
    if fmt == "json":
        assert json.loads(raw.writes[0])["event"] == "server.listening"
        assert json.loads(raw.writes[1])["error"] == "connection refused"


@pytest.mark.parametrize(("worker", "expected"), [(None, "absent"), (0, 0), (3, 3)])
def test_a_worker_names_itself_on_every_line(
    monkeypatch: pytest.MonkeyPatch, worker: int | None, expected: object
) -> None:
    raw = _Raw()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, write_through=True))
    try:
        configure_logging("json", worker=worker)
        structlog.get_logger().info("radius.request", nas="gw1")
    finally:
        structlog.reset_defaults()
    assert json.loads(raw.writes[0]).get("worker", "absent") == expected
