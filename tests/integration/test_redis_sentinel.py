"""Redis through Sentinel: the live state finds the master the way production does."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from billing.storage.live import RedisLiveState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sentinel(redis_url: str, tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server binary not installed")
    target = urlparse(redis_url)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor paaa-test {target.hostname} {target.port or 6379} 1\n"
    )
    proc = subprocess.Popen(
        [server, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_live_state_through_sentinel(sentinel: str) -> None:
    state = RedisLiveState(
        "redis://", f"paaa-test-{uuid.uuid4().hex[:8]}:", [sentinel], "paaa-test"
    )
    assert state.ping()
    assert state.reply_claim("k", 5) == (True, None)
    state.reply_put("k", b"\x02ok", 5)
    assert state.reply_get("k") == b"\x02ok"
