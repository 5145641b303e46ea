"""Overload: a request that waited too long for a worker thread is shed, not answered late;
while the threads are behind, new requests are refused at the door; drops are counted and their
log lines sampled."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from billing.calls import Nas
from radiusd.metrics import Metrics
from radiusd.server import Drop, DropLog, Handler, Job, RadiusServer

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
    (result,) = handler(now=103.0).handle_batch([Job("auth", NAS, b"", "key", arrival=100.0)])
    assert isinstance(result, Drop) and result.reason == "queue-timeout"


def test_fresh_request_is_processed() -> None:
    with pytest.raises(AttributeError):  # it went on to the (absent) codec: not shed
        handler(now=101.0).handle_batch([Job("auth", NAS, b"", "key", arrival=100.0)])


def test_a_batch_tells_the_reactor_how_long_its_oldest_request_waited() -> None:
    h = handler(now=103.0)
    jobs = [Job("auth", NAS, b"", key, arrival) for key, arrival in (("a", 100.0), ("b", 100.5))]
    results = h.handle_batch(jobs)
    assert [r.reason for r in results if isinstance(r, Drop)] == ["queue-timeout"] * 2
    assert h.last_wait == 3.0  # what the reactor reads to refuse new calls at the door


def server(handler: Handler) -> RadiusServer:
    return RadiusServer(
        Clock(),
        pool=None,  # type: ignore[arg-type]  # nothing is handed to threads here
        handler=handler,
        nas_table=None,  # type: ignore[arg-type]
        local_replies=None,  # type: ignore[arg-type]
        metrics=Metrics(),
    )


def test_new_requests_are_refused_at_the_door_while_the_threads_are_behind() -> None:
    h = handler(now=100.0)
    srv = server(h)
    assert not srv.overloaded("auth")  # idle
    srv._in_flight.add("queued")
    h.last_wait = 0.9  # within half the 2 s limit: keep admitting
    assert not srv.overloaded("auth")
    h.last_wait = 1.1  # the threads take up requests that waited over 1 s
    assert srv.overloaded("auth")  # no new calls
    assert not srv.overloaded("acct")  # but the calls granted are still accounted for
    srv._in_flight.clear()  # the queue drained: admit again, whatever the last wait was
    assert not srv.overloaded("auth")


def test_the_queue_is_bounded_whatever_the_waits() -> None:
    srv = server(handler(now=100.0))
    srv.max_pending = 3
    srv._in_flight.update({"a", "b"})
    assert not srv.overloaded("acct")
    srv._in_flight.add("c")
    assert srv.overloaded("acct") and srv.overloaded("auth")


def test_drops_are_logged_once_per_reason_per_second_and_all_counted() -> None:
    clock = Clock()
    log = DropLog(clock.seconds)
    assert log.admit("overload") == 0
    assert [log.admit("overload") for _ in range(5)] == [None] * 5
    assert log.admit("unknown-nas") == 0  # another reason has its own allowance
    clock.advance(1.0)
    assert log.admit("overload") == 5  # the line says how many were left out
    assert log.admit("overload") is None
