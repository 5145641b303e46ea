"""Batches on their own threads: while every batch thread is busy the listeners stop reading
and what arrives waits in the socket's buffer; when a thread is free they read on, and what
waited is the next batch. After a long busy spell (a stalled database) the backlog is read out
at once and counts as having waited that long, so it is shed rather than answered after the NAS
gave up on it.

The reactor, the thread pool and the listeners are stand-ins that keep Twisted's order: a call
scheduled with ``callLater(0)`` runs in the reactor's next pass, after the reads in between;
the pool runs a batch only when the test lets its thread finish."""

from __future__ import annotations

import struct
from typing import Any

from billing.calls import Nas
from billing.settings import load_settings
from billing.storage.live import InProcessLiveState
from radiusd.metrics import Metrics
from radiusd.nas import NasTable
from radiusd.server import AUTH, Drop, Job, JobResult, Outcome, RadiusServer

NAS = Nas(1, "gw", "127.0.0.1/32", b"s", "generic", "no", False)
ADDR = ("127.0.0.1", 40000)


class Call:
    """Twisted's IDelayedCall, as far as the server uses it."""

    def __init__(self, f: Any, args: tuple[Any, ...]) -> None:
        self.f, self.args, self.cancelled = f, args, False

    def active(self) -> bool:
        return not self.cancelled

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    def __init__(self) -> None:
        self.now = 100.0
        self.calls: list[Call] = []
        self.listeners: list[Listener] = []

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Any, *args: Any) -> Call:  # noqa: N802
        assert delay == 0
        call = Call(f, args)
        self.calls.append(call)
        return call

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802
        f(*args)  # the pool's stand-in finishes a batch from the reactor's side already

    def run_pass(self) -> None:
        """One pass: the delayed calls scheduled before it, then the reads."""
        calls, self.calls = self.calls, []
        for call in calls:
            if not call.cancelled:
                call.cancelled = True  # run: no longer active
                call.f(*call.args)
        for listener in self.listeners:
            if listener.reading:
                listener.doRead()


class Listener:
    """A UDP port: datagrams wait in its buffer until it reads them."""

    def __init__(self, server: RadiusServer, transport: Transport) -> None:
        self.server = server
        self.transport = transport
        self.buffer: list[int] = []
        self.reading = True
        self.stops = 0

    def stopReading(self) -> None:  # noqa: N802
        self.reading = False
        self.stops += 1

    def startReading(self) -> None:  # noqa: N802
        self.reading = True

    def doRead(self) -> None:  # noqa: N802
        waiting, self.buffer = self.buffer, []
        for ident in waiting:
            self.server.received(self.transport, AUTH, packet(ident), ADDR)


class Pool:
    """Batch threads: each call waits until :meth:`finish` runs it."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, Any, tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:  # noqa: N802
        self.waiting.append((on_result, f, args))

    def callInThread(self, f: Any, *args: Any) -> None:  # noqa: N802
        self.waiting.append((lambda ok, result: None, f, args))

    def finish(self) -> None:
        on_result, f, args = self.waiting.pop(0)
        try:
            result = f(*args)
        except BaseException as exc:
            from twisted.python.failure import Failure

            on_result(False, Failure(exc))
        else:
            on_result(True, result)


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)


class Handler:
    """Answers each datagram with its own bytes, sheds as the real one does (by ``unread``),
    and takes ``seconds`` of the server's monotonic clock."""

    def __init__(self, server_clock: list[float]) -> None:
        self.batches: list[list[Job]] = []
        self.last_wait = 0.0
        self.max_queue_seconds = 2.0
        self.seconds = 0.0
        self._clock = server_clock
        self.shared_replies: Any = None

    def handle_batch(self, jobs: list[Job]) -> list[JobResult]:
        self.batches.append(jobs)
        self._clock[0] += self.seconds
        return [
            Drop("queue-timeout") if job.unread > self.max_queue_seconds else Outcome(job.data, {})
            for job in jobs
        ]


def packet(ident: int) -> bytes:
    return struct.pack("!BBH16s", 1, ident, 20, bytes(16))


class Setup:
    def __init__(self, concurrent_batches: int = 1) -> None:
        self.reactor = Reactor()
        self.monotonic = [0.0]
        self.handler = Handler(self.monotonic)
        self.pool = Pool()
        self.server = RadiusServer(
            self.reactor,
            pool=self.pool,  # type: ignore[arg-type]
            handler=self.handler,  # type: ignore[arg-type]
            nas_table=NasTable([NAS]),
            local_replies=InProcessLiveState(self.reactor.seconds),
            metrics=Metrics(),
        )
        self.server.monotonic = lambda: self.monotonic[0]
        self.server.concurrent_batches = concurrent_batches
        self.transport = Transport()
        self.listener = Listener(self.server, self.transport)
        self.reactor.listeners.append(self.listener)
        self.server.attach(self.listener)

    def arrive(self, *idents: int) -> None:
        self.listener.buffer += idents

    def batches(self) -> list[list[int]]:
        return [[job.data[1] for job in batch] for batch in self.handler.batches]

    def sent(self) -> list[int]:
        return [data[1] for data in self.transport.sent]


def test_the_default_is_one_batch_thread() -> None:
    # What a server with no configuration file runs (and the constructor's own default).
    assert load_settings(None, environ={})["radius"]["concurrent_batches"] == 1
    assert Setup().server.concurrent_batches == 1


def test_what_arrives_while_the_thread_is_busy_waits_in_the_buffer_and_is_the_next_batch() -> None:
    t = Setup()
    t.arrive(1)
    t.reactor.run_pass()  # read
    t.reactor.run_pass()  # dispatched to the thread: the listener stops reading
    assert len(t.pool.waiting) == 1 and not t.listener.reading
    assert t.handler.batches == []  # nothing of the batch ran on the reactor's side
    t.arrive(2, 3, 4)
    t.reactor.run_pass()
    assert t.listener.buffer == [2, 3, 4]  # not read while the thread is busy
    t.pool.finish()
    # Answered; what waited is read at once, not in a later pass, and handed to the thread.
    assert t.sent() == [1]
    assert t.listener.buffer == [] and not t.listener.reading and len(t.pool.waiting) == 1
    t.pool.finish()
    assert t.batches() == [[1], [2, 3, 4]] and t.sent() == [1, 2, 3, 4]
    assert not t.server._in_flight and t.listener.reading


def test_a_backlog_larger_than_batch_size_goes_on_without_reading_more() -> None:
    t = Setup()
    t.server.batch_size = 2
    t.arrive(1, 2, 3)
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.arrive(4)
    t.pool.finish()  # the rest of what was read goes at once; the listener stays paused
    assert t.batches() == [[1, 2]] and len(t.pool.waiting) == 1 and not t.listener.reading
    assert t.listener.buffer == [4]
    t.pool.finish()  # now what waited in the buffer
    assert t.batches() == [[1, 2], [3]] and t.listener.buffer == []
    t.pool.finish()
    assert t.batches()[-1] == [4] and t.sent() == [1, 2, 3, 4] and t.listener.reading


def test_the_backlog_of_a_long_stall_is_shed_and_later_datagrams_are_not() -> None:
    t = Setup()
    t.handler.seconds = 3.0  # the database stalls: the thread is busy for 3 s
    t.arrive(1)
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.arrive(2, 3)  # they wait 3 s in the buffer
    t.pool.finish()
    assert t.sent() == [1]  # the request that was in the batch is answered
    assert not t.listener.buffer  # read out at once, counted as having waited 3 s
    t.handler.seconds = 0.0
    t.pool.finish()
    assert [job.unread for job in t.handler.batches[1]] == [3.0, 3.0]
    assert t.sent() == [1] and t.listener.reading  # shed, not answered late: the NAS retransmits
    t.arrive(4)  # arrives later: fresh
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.pool.finish()
    assert t.handler.batches[2][0].unread == 0.0 and t.sent() == [1, 4]


def test_a_short_busy_spell_marks_nothing() -> None:
    t = Setup()
    t.handler.seconds = 0.05  # under BLOCKED_SECONDS
    t.arrive(1)
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.arrive(2)
    t.pool.finish()
    t.pool.finish()
    assert t.handler.batches[1][0].unread == 0.0 and t.sent() == [1, 2]


def test_a_failing_batch_frees_its_requests_and_reading_goes_on() -> None:
    t = Setup()
    calls = []

    def fail(jobs: list[Job]) -> list[JobResult]:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("a fault in the server")
        return [Outcome(job.data, {}) for job in jobs]

    t.handler.handle_batch = fail  # type: ignore[method-assign]
    t.arrive(1)
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.pool.finish()
    assert t.sent() == [] and not t.server._in_flight and t.listener.reading
    t.arrive(1)  # the NAS retransmits
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.pool.finish()
    assert calls == [1, 1] and t.sent() == [1]


def test_with_two_threads_reading_stops_only_when_both_are_busy() -> None:
    t = Setup(concurrent_batches=2)
    t.arrive(1)
    t.reactor.run_pass()
    t.reactor.run_pass()
    assert len(t.pool.waiting) == 1 and t.listener.reading  # one thread still free
    t.arrive(2)
    t.reactor.run_pass()
    t.reactor.run_pass()
    assert len(t.pool.waiting) == 2 and not t.listener.reading
    t.arrive(3)
    t.pool.finish()  # a thread is free: 3 is read and handed to it at once
    assert len(t.pool.waiting) == 2 and not t.listener.reading and t.listener.stops == 2
    t.pool.finish()
    t.pool.finish()
    assert sorted(t.sent()) == [1, 2, 3] and t.batches() == [[1], [2], [3]]
    assert t.listener.reading


class Shared:
    """The shared reply cache's flush: on which side it ran, and how many replies had been sent
    by then."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.flushes: list[int] = []

    def flush(self) -> None:
        self.flushes.append(len(self.transport.sent))


def test_the_shared_copies_go_with_the_next_batch_or_after_the_replies_on_the_thread() -> None:
    t = Setup()
    shared = t.handler.shared_replies = Shared(t.transport)
    t.arrive(1)
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.arrive(2)  # waits while 1 is handled: its batch's claims will carry 1's copies
    t.pool.finish()
    assert t.sent() == [1] and shared.flushes == [] and len(t.pool.waiting) == 1
    t.pool.finish()  # nothing waited behind 2: its copies go on their own, after its reply
    assert t.sent() == [1, 2] and shared.flushes == [] and len(t.pool.waiting) == 1
    t.pool.finish()  # the flush, on the batch thread
    assert shared.flushes == [2] and t.pool.waiting == []


def test_a_flush_that_fails_is_logged_and_the_next_batch_goes_on() -> None:
    from structlog.testing import capture_logs

    t = Setup()

    class Broken:
        def flush(self) -> None:
            raise RuntimeError("no route to Redis")

    t.handler.shared_replies = Broken()
    t.arrive(1)
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.pool.finish()
    with capture_logs() as logs:
        t.pool.finish()  # the flush
    assert [(e["event"], e["error"]) for e in logs] == [("redis.flush_failed", "no route to Redis")]
    t.arrive(2)
    t.reactor.run_pass()
    t.reactor.run_pass()
    t.pool.finish()
    assert t.sent() == [1, 2]
