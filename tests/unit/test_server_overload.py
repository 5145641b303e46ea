"""A request that waited too long for a worker thread is shed, not answered late."""

from __future__ import annotations

import pytest

from billing.calls import Nas
from radiusd.server import Drop, Handler

NAS = Nas(1, "gw", "127.0.0.1/32", b"s", "generic", "no", False)


def handler(now: float) -> Handler:
    h = Handler(
        codec=None,  # type: ignore[arg-type]  # never reached: the request is shed first
        service=None,  # type: ignore[arg-type]
        nas_table=None,  # type: ignore[arg-type]
        replies=None,  # type: ignore[arg-type]
        shared_replies=None,
        rules=None,  # type: ignore[arg-type]
        places=4,
        reply_ttl=30,
        on_first_message_authenticator=lambda nas: None,
    )
    h.clock = lambda: now
    h.max_queue_seconds = 2.0
    return h


def test_request_older_than_the_queue_limit_is_dropped() -> None:
    with pytest.raises(Drop) as info:
        handler(now=103.0).handle("auth", NAS, b"", "key", arrival=100.0)
    assert info.value.reason == "queue-timeout"


def test_fresh_request_is_processed() -> None:
    with pytest.raises(AttributeError):  # it went on to the (absent) codec: not shed
        handler(now=101.0).handle("auth", NAS, b"", "key", arrival=100.0)
