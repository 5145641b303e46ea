"""Batches on the reactor thread (``[radius] concurrent_batches = 0``, the default): what was
read in one pass of the reactor is handled as one batch in the next, and after a batch that held
the reactor for long, the datagrams read just after it count as having waited that long, so a
stall's backlog is shed rather than answered after the NAS gave up on it."""

from __future__ import annotations

import struct
from typing import Any

from billing.calls import Nas
from billing.storage.live import InProcessLiveState
from radiusd.metrics import Metrics
from radiusd.nas import NasTable
from radiusd.server import AUTH, Drop, Job, JobResult, Outcome, RadiusServer

NAS = Nas(1, "gw", "127.0.0.1/32", b"s", "generic", "no", False)
ADDR = ("127.0.0.1", 40000)


class Reactor:
    """Delayed calls as Twisted's reactor runs them, in passes: a call scheduled during a pass
    runs in the next one, after the reads in between (``ReactorBase.runUntilCurrent`` takes up
    calls scheduled while it runs only on its next turn). ``task.Clock`` runs them at once."""

    def __init__(self) -> None:
        self.now = 100.0
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Any, *args: Any) -> object:  # noqa: N802
        assert delay == 0
        self.calls.append((f, args))
        return object()  # stands for Twisted's IDelayedCall

    def advance(self, seconds: float) -> None:
        """One pass of delayed calls."""
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)


class Handler:
    """Stands in for the real handler: answers each datagram with its own bytes, sheds as the
    real one does (by ``unread``), and takes ``seconds`` of the server's monotonic clock."""

    def __init__(self, server_clock: list[float]) -> None:
        self.batches: list[list[Job]] = []
        self.last_wait = 0.0
        self.max_queue_seconds = 2.0
        self.seconds = 0.0
        self._clock = server_clock
        self.shared_replies: Any = None

    def handle_batch(self, jobs: list[Job], defer_replies: bool = False) -> list[JobResult]:
        assert defer_replies  # on the reactor thread, the shared replies wait for a flush
        self.batches.append(jobs)
        self._clock[0] += self.seconds
        return [
            Drop("queue-timeout") if job.unread > self.max_queue_seconds else Outcome(job.data, {})
            for job in jobs
        ]


def packet(ident: int) -> bytes:
    return struct.pack("!BBH16s", 1, ident, 20, bytes(16))


def setup() -> tuple[RadiusServer, Handler, Reactor, Transport]:
    clock = Reactor()
    monotonic = [0.0]
    handler = Handler(monotonic)
    server = RadiusServer(
        clock,
        pool=None,  # type: ignore[arg-type]  # no worker threads in this mode
        handler=handler,  # type: ignore[arg-type]
        nas_table=NasTable([NAS]),
        local_replies=InProcessLiveState(clock.seconds),
        metrics=Metrics(),
    )
    server.monotonic = lambda: monotonic[0]
    assert server.concurrent_batches == 0  # the default
    return server, handler, clock, Transport()


def receive(server: RadiusServer, transport: Any, *idents: int) -> None:
    for ident in idents:
        server.received(transport, AUTH, packet(ident), ADDR)


def test_what_one_pass_reads_is_one_batch_answered_in_the_next_pass() -> None:
    server, handler, clock, transport = setup()
    receive(server, transport, 1, 2, 3)
    assert handler.batches == [] and transport.sent == []  # nothing handled while reading
    clock.advance(0)
    assert [[job.data[1] for job in batch] for batch in handler.batches] == [[1, 2, 3]]
    assert [data[1] for data in transport.sent] == [1, 2, 3]
    receive(server, transport, 4)
    clock.advance(0)
    assert len(handler.batches) == 2 and transport.sent[-1][1] == 4
    assert not server._in_flight  # nothing left queued or in a batch


def test_a_batch_larger_than_batch_size_is_split_over_passes() -> None:
    server, handler, clock, transport = setup()
    server.batch_size = 2
    receive(server, transport, 1, 2, 3)
    clock.advance(0)
    clock.advance(0)
    assert [len(batch) for batch in handler.batches] == [2, 1]
    assert len(transport.sent) == 3


def test_the_backlog_of_a_long_batch_is_shed_and_later_datagrams_are_not() -> None:
    server, handler, clock, transport = setup()
    handler.seconds = 3.0  # the database stalls: the batch holds the reactor for 3 s
    receive(server, transport, 1)
    clock.advance(0)
    assert len(transport.sent) == 1  # the request that was in the batch is answered
    handler.seconds = 0.0
    receive(server, transport, 2, 3)  # read just after: they may have waited 3 s in the buffer
    clock.advance(0)  # the reactor's next pass: the backlog's batch, and the mark is cleared
    assert [job.unread for job in handler.batches[1]] == [3.0, 3.0]
    assert len(transport.sent) == 1  # shed, not answered late: the NAS retransmits
    receive(server, transport, 4)  # read in a later pass: fresh
    clock.advance(0)
    assert handler.batches[2][0].unread == 0.0
    assert transport.sent[-1][1] == 4


def test_a_short_batch_marks_nothing() -> None:
    server, handler, clock, transport = setup()
    handler.seconds = 0.05  # under BLOCKED_SECONDS
    receive(server, transport, 1)
    clock.advance(0)
    receive(server, transport, 2)
    clock.advance(0)
    assert handler.batches[1][0].unread == 0.0
    assert len(transport.sent) == 2


def test_a_failing_batch_frees_its_requests_and_the_next_one_runs() -> None:
    server, handler, clock, transport = setup()
    calls = []

    def fail(jobs: list[Job], defer_replies: bool = False) -> list[JobResult]:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("a fault in the server")
        return [Outcome(job.data, {}) for job in jobs]

    handler.handle_batch = fail  # type: ignore[method-assign]
    receive(server, transport, 1)
    clock.advance(0)
    assert transport.sent == [] and not server._in_flight  # nothing answered, nothing stuck
    receive(server, transport, 1)  # the NAS retransmits
    clock.advance(0)
    assert calls == [1, 1] and len(transport.sent) == 1


class Shared:
    """The shared reply cache's flush, as the server calls it: how many replies had been sent
    at each."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.flushes: list[int] = []

    def flush(self) -> None:
        self.flushes.append(len(self.transport.sent))


def test_the_shared_replies_go_after_the_replies_or_with_the_next_batch() -> None:
    server, handler, clock, transport = setup()
    shared = handler.shared_replies = Shared(transport)
    receive(server, transport, 1)
    clock.advance(0)
    assert len(transport.sent) == 1 and shared.flushes == []  # the reply first
    clock.advance(0)  # a pass that read nothing: they go now
    assert shared.flushes == [1]
    receive(server, transport, 2)
    clock.advance(0)
    receive(server, transport, 3)  # the next pass reads more: its batch takes them along
    clock.advance(0)
    assert len(transport.sent) == 3 and shared.flushes == [1]
    clock.advance(0)
    assert shared.flushes == [1, 3]
    clock.advance(0)
    assert shared.flushes == [1, 3]  # nothing more after an idle pass
