"""The RADIUS server: datagrams in, billing calls, replies out.

On reading a datagram the reactor does only cheap work: find the NAS by source address, check
the packet's structure, answer a retransmission from the reply cache, and queue the rest. The
queue is taken up in batches (what arrived while the last batch ran; see :class:`RadiusServer`)
on the batch threads: decoding, verification and all database and Redis work happen there,
never on the reactor thread, and the replies are sent from the reactor. A datagram is never
answered twice concurrently: a copy that arrives while its original is being processed is
dropped (the NAS will retransmit and get the cached reply).

The outcome vocabulary is the one FreeRADIUS modules use: accept, reject, or drop. A drop sends
nothing — for unknown sources, malformed or unverifiable packets, and when the database fails,
so the NAS retries or fails over and nothing is lost.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from billing.calls import (
    Accepted,
    AcctEvent,
    AcctResult,
    AuthRequest,
    Nas,
    Rejected,
    utc_from_epoch,
)
from billing.domain import RejectReason
from billing.numbers import NumberRules
from billing.service import SessionService
from billing.storage.live import InProcessLiveState, LiveState
from radiusd import translate
from radiusd.codec import (
    ACCESS_ACCEPT,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    STATUS_SERVER,
    Codec,
    Malformed,
    Reply,
    Request,
    check_structure,
)
from radiusd.metrics import Metrics
from radiusd.nas import NasTable
from radiusd.profiles import PROFILES, Profile

log = structlog.get_logger("radiusd")

AUTH = "auth"
ACCT = "acct"


class Drop(Exception):
    """Send nothing; ``reason`` is counted and logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Outcome:
    data: bytes  # the reply to send
    fields: dict[str, Any]


@dataclass(slots=True)
class Job:
    """One datagram waiting for, or in, a batch."""

    kind: str
    nas: Nas
    data: bytes
    cache_key: str
    arrival: float  # when the reactor read it
    #: How long it may have waited in the socket's buffer before that: read as the listeners
    #: start reading again after the batch threads were all busy for long, as long as that was.
    unread: float = 0.0


#: What a job came to: its reply, or why it gets none (Drop, Malformed, a database or Redis
#: error).
JobResult = Outcome | BaseException


@dataclass(slots=True)
class _Decoded:
    index: int
    job: Job
    request: Request
    call: AuthRequest | None  # an Access-Request's authorization (None: refused as malformed)
    throttle: tuple[bool, bool] | None = None


class Handler:
    """Processes batches of datagrams (on a batch thread); returns a reply, or why none, for
    each.

    A batch is whatever arrived while the previous ones were being processed (see
    :class:`RadiusServer`): one datagram at low load, dozens at high load. Its requests share
    one round trip to Redis for their claims and one for their cached replies, and one
    database transaction (:meth:`SessionService.process`); each still gets its own decision,
    reply and log line.
    """

    def __init__(
        self,
        codec: Codec,
        service: SessionService,
        nas_table: NasTable,
        replies: LiveState,
        shared_replies: LiveState | None,
        rules: NumberRules,
        places: int,
        reply_ttl: float,
        on_first_message_authenticator: Callable[[Nas], None],
        interim_interval: int = 0,
    ) -> None:
        self.codec = codec
        self.service = service
        self.nas_table = nas_table
        self.replies = replies
        self.shared_replies = shared_replies
        self.rules = rules
        self.places = places
        self.reply_ttl = reply_ttl
        self.on_first_ma = on_first_message_authenticator
        self.interim_interval = interim_interval
        self.clock: Callable[[], float] = time.time
        self.max_queue_seconds = 2.0
        self.status_text: Callable[[], str] = lambda: "Prepaid AAA is up"
        self.last_wait = 0.0  # how long the last batch taken up had waited for a thread

    def handle_batch(self, jobs: list[Job]) -> list[JobResult]:
        results: list[JobResult | None] = [None] * len(jobs)
        now = self.clock()
        # The oldest: read by the reactor to shed load.
        self.last_wait = now - jobs[0].arrival + jobs[0].unread
        decoded: list[_Decoded] = []
        for index, job in enumerate(jobs):
            if now - job.arrival + job.unread > self.max_queue_seconds:
                # The NAS has given up on this one (and retransmitted, or failed over):
                # answering now only delays the requests behind it. Shed load instead.
                results[index] = Drop("queue-timeout")
                continue
            try:
                request = self._decode(job.kind, job.nas, job.data)
            except Malformed as exc:
                results[index] = exc
                continue
            call = None
            if job.kind == AUTH and request.code == ACCESS_REQUEST:
                call = translate.auth_request(request, job.nas.id, self.rules)
                if request.chap or translate.oversized(call):
                    call = None  # refused as malformed below, without the service
            decoded.append(_Decoded(index, job, request, call))
        shared = self.shared_replies
        if shared is not None and decoded:
            decoded = self._claim(shared, decoded, results)
        if decoded:
            try:
                self._process(decoded, results)
            except BaseException as exc:
                unanswered = [d for d in decoded if results[d.index] is None]
                if shared is not None:
                    shared.reply_release_many([d.job.cache_key for d in unanswered])
                if not isinstance(exc, SQLAlchemyError | RedisError):
                    raise
                for d in unanswered:
                    results[d.index] = exc
            else:
                if shared is not None:
                    answered = [
                        (d.job.cache_key, out.data)
                        for d in decoded
                        if isinstance(out := results[d.index], Outcome)
                    ]
                    # Their copies go with the next batch's claims, or when the server finds
                    # nothing more to do (RadiusServer._batch_done), after the replies: not
                    # in a round trip of their own before them (Redis took 18 % of a batch
                    # thread's time at saturation, in two round trips a batch).
                    shared.reply_put_later(answered, self.reply_ttl)
        return [r if r is not None else Drop("internal-error") for r in results]

    def _claim(
        self, shared: LiveState, decoded: list[_Decoded], results: list[JobResult | None]
    ) -> list[_Decoded]:
        """Another process (or host) may have a request: the NAS retransmitted to it, or failed
        over. Claim them all in the shared cache in one round trip; replay what was answered,
        leave what is in flight to whoever has it. An authorization's throttling state comes in
        the same round trip."""
        claims = []
        for d in decoded:
            keys: tuple[str, ...] | None = None
            failure_key = None
            if d.call is not None:
                keys, failure_key = self.service.throttle_keys(d.call)
            claims.append((d.job.cache_key, keys, failure_key))
        mine = []
        for d, ((claimed, cached), throttle) in zip(
            decoded, shared.claim_many(claims, self.reply_ttl), strict=True
        ):
            if cached is not None:
                results[d.index] = Outcome(cached, {"decision": "replayed"})
            elif not claimed:
                results[d.index] = Drop("in-flight-elsewhere")
            else:
                d.throttle = throttle
                mine.append(d)
        return mine

    def _decode(self, kind: str, nas: Nas, data: bytes) -> Request:
        # The Message-Authenticator policy guards Access-Request (BlastRADIUS); accounting is
        # authenticated by its Request Authenticator, and a Message-Authenticator there is
        # verified when present.
        require_ma = kind == AUTH and self.nas_table.requires_message_authenticator(nas)
        request = self.codec.decode(data, nas.secret, require_ma)
        if request.message_authenticator and self.nas_table.saw_message_authenticator(nas):
            self.on_first_ma(nas)
        return request

    def _process(self, decoded: list[_Decoded], results: list[JobResult | None]) -> None:
        """Answer decoded requests: the service's work for all of them at once, then a reply
        each (``results`` is filled in place)."""
        auths: list[tuple[AuthRequest, datetime, tuple[bool, bool] | None]] = []
        accts: list[tuple[AcctEvent, datetime]] = []
        work: list[tuple[_Decoded, Profile, Any, dict[str, Any]]] = []
        for d in decoded:
            kind, request = d.job.kind, d.request
            fields: dict[str, Any] = {}
            profile = PROFILES.get(d.job.nas.profile, PROFILES["generic"])
            if request.code == STATUS_SERVER:
                code = ACCESS_ACCEPT if kind == AUTH else ACCOUNTING_RESPONSE
                results[d.index] = self._reply(
                    d, Reply(code, [("Reply-Message", self.status_text())]), {"decision": "status"}
                )
            elif kind == AUTH and request.code == ACCESS_REQUEST:
                fields["packet"] = "access-request"
                if d.call is None:
                    # CHAP (a CHAP response cannot be checked against a PIN hash: PAP only), or
                    # a number wider than a call stores.
                    work.append((d, profile, Rejected(RejectReason.MALFORMED), fields))
                else:
                    fields.update(ani=d.call.calling_number, called=d.call.called_number)
                    work.append((d, profile, len(auths), fields))
                    auths.append((d.call, utc_from_epoch(d.job.arrival), d.throttle))
            elif kind == ACCT and request.code == ACCOUNTING_REQUEST:
                fields["packet"] = "accounting-request"
                event = translate.acct_event(
                    request, d.job.nas.id, d.job.arrival, self.rules, profile
                )
                if event is None:
                    work.append((d, profile, AcctResult("ignored"), fields))
                else:
                    fields.update(status=str(event.status), session=event.acct_session_id)
                    work.append((d, profile, len(accts), fields))
                    accts.append((event, utc_from_epoch(d.job.arrival)))
            else:
                results[d.index] = Drop("wrong-port")
        auth_results, acct_results = self.service.process(auths, accts)
        for d, profile, slot, fields in work:
            if isinstance(slot, int):
                slot = (auth_results if d.job.kind == AUTH else acct_results)[slot]
            if isinstance(slot, BaseException):
                results[d.index] = slot
            elif isinstance(slot, AcctResult):
                fields.update(decision="ack", outcome=slot.outcome, serial=slot.serial)
                if slot.cost is not None:
                    fields["cost"] = str(slot.cost)
                results[d.index] = self._reply(d, Reply(ACCOUNTING_RESPONSE), fields)
            else:
                reply = translate.auth_reply(slot, profile, self.places, self.interim_interval)
                if isinstance(slot, Accepted):
                    fields.update(
                        decision="accept",
                        serial=slot.serial,
                        session_timeout=slot.session_seconds,
                        method=slot.auth_method,
                    )
                else:
                    fields.update(decision="reject", reason=str(slot.reason), serial=slot.serial)
                results[d.index] = self._reply(d, reply, fields)

    def _reply(self, d: _Decoded, reply: Reply, fields: dict[str, Any]) -> Outcome:
        raw = self.codec.encode(d.request, reply)
        self.replies.reply_put(d.job.cache_key, raw, self.reply_ttl)
        return Outcome(raw, fields)


class DropLog:
    """At most one log line per drop reason per ``interval`` seconds; the metric counts all.

    Under overload or a flood from a bad source, a line per dropped datagram would cost more
    than the datagram and bury the log; each line logged says how many were left out before it.
    """

    def __init__(self, clock: Callable[[], float], interval: float = 1.0) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def admit(self, reason: str) -> int | None:
        """None: leave this one out; else log it, with the number left out since the last."""
        now = self._clock()
        last, suppressed = self._last.get(reason, (float("-inf"), 0))
        if now - last < self._interval:
            self._last[reason] = (last, suppressed + 1)
            return None
        self._last[reason] = (now, 0)
        return suppressed


#: Batch threads all busy this long (a slow database, an unreachable Redis) mark the datagrams
#: then waiting in the listeners' buffers as having waited as long (see :class:`RadiusServer`);
#: shorter spells do not matter.
BLOCKED_SECONDS = 0.1
#: How many reads of each listener a stall's backlog is read out in, at most.
MAX_READ_OUT = 64


class RadiusServer:
    """The reactor-side controller shared by the authentication and accounting listeners.

    Datagrams that pass the cheap checks (known NAS, sound structure, not a retransmission)
    queue here and are handled in batches of everything queued, up to ``batch_size``, each
    batch on one of ``concurrent_batches`` threads of their own (``pool``). At low load a batch
    is one datagram, handled at once (no timer, no added latency); under load the queue fills
    while a batch runs and batches grow, so the per-transaction and per-round-trip costs are
    shared by many requests.

    While every batch thread is busy the listeners stop reading: what arrives waits in the
    socket's buffer in the kernel, and the reactor thread sleeps instead of taking the
    interpreter's lock from the batch threads for every datagram. When a thread is free again,
    what waited is read at once and is its next batch, and the listeners read on. In quick runs
    on the benchmark machine with 64 requests in flight, a reactor that read on meanwhile cost
    the server 0.17 ms of CPU per authorization and 0.50 ms per full call, against 0.15 and
    0.44-0.46 ms with the listeners paused (docs/BENCHMARKS.md).

    Blocking work never runs on the reactor thread: it stays free for the metrics, the timers
    and the replies. When the threads were all busy for ``BLOCKED_SECONDS`` or more (a stalled
    database), the listeners are read out at once, before anything else, and what they held
    counts as having waited that long, so a stall's backlog is shed (``queue-timeout``) rather
    than answered after the NAS gave up on it.
    """

    def __init__(
        self,
        reactor: Any,  # IReactorTime; the interface does not type-check as a class
        pool: ThreadPool,
        handler: Handler,
        nas_table: NasTable,
        local_replies: InProcessLiveState,
        metrics: Metrics,
    ) -> None:
        self.reactor = reactor
        self.pool = pool
        self.handler = handler
        self.nas_table = nas_table
        self.local_replies = local_replies
        self.metrics = metrics
        self._in_flight: set[str] = set()  # queued or in a batch
        self._queue: deque[tuple[Job, Any, tuple[str, int], int, float]] = deque()
        self._batches = 0  # batches running now
        self.max_pending = 1000  # requests queued for a batch, at most
        self.batch_size = 64
        self.concurrent_batches = 1  # batch threads
        self._drop_log = DropLog(reactor.seconds)
        self._dispatch_call: Any = None  # the dispatch scheduled, if any
        self._listeners: list[Any] = []  # the ports the protocols read from
        self._paused_at: float | None = None  # when the listeners stopped reading, if they have
        #: While the listeners are read out after a stall: how long it lasted.
        self._blocked = 0.0
        self._received = 0  # datagrams read
        self.monotonic: Callable[[], float] = time.monotonic

    def attach(self, listener: Any) -> None:
        """A listening port (IListeningPort with ``stopReading``, ``startReading`` and
        ``doRead``) whose protocol feeds this server; paused with the others."""
        self._listeners.append(listener)

    def drop(self, kind: str, reason: str, addr: tuple[str, int], **fields: Any) -> None:
        self.metrics.drops.labels(reason).inc()
        suppressed = self._drop_log.admit(reason)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed  # drops of this reason not logged since the last
        log.warning(
            "radius.drop", listener=kind, reason=reason, src=f"{addr[0]}:{addr[1]}", **fields
        )

    def overloaded(self, kind: str) -> bool:
        """Whether to refuse a new request of ``kind`` at the door: the threads are behind.

        When the last batch a worker took up had already waited more than half of
        ``max_queue_seconds``, a new request would wait about as long and most likely be shed
        after it; refusing it here costs nothing, so the threads spend their time on requests
        they can still answer in time. Only new calls are refused so (the NAS tries again or
        fails over to its other server): accounting for calls already granted goes on, so the
        work spent on their grants is not wasted and their money is settled. ``max_pending``
        bounds the queue for both.
        """
        if not self._in_flight:
            return False
        if len(self._in_flight) >= self.max_pending:
            return True
        return kind == AUTH and self.handler.last_wait > self.handler.max_queue_seconds / 2

    def received(self, transport: Any, kind: str, data: bytes, addr: tuple[str, int]) -> None:
        self._received += 1
        arrival = self.reactor.seconds()
        started = time.perf_counter()
        nas = self.nas_table.lookup(addr[0])
        if nas is None:
            self.drop(kind, "unknown-nas", addr)
            return
        try:
            code, ident, authenticator = check_structure(data)
        except Malformed as exc:
            self.drop(kind, exc.reason, addr, nas=nas.name)
            return
        cache_key = f"{kind}|{addr[0]}|{addr[1]}|{code}|{ident}|{authenticator.hex()}"
        cached = self.local_replies.reply_get(cache_key)
        if cached is not None:
            self.metrics.retransmissions.inc()
            transport.write(cached, addr)
            log.info("radius.retransmission", listener=kind, nas=nas.name, id=ident)
            return
        if cache_key in self._in_flight:
            self.drop(kind, "in-flight-duplicate", addr, nas=nas.name)
            return
        if self.overloaded(kind):
            self.drop(kind, "overload", addr, nas=nas.name)
            return
        self._in_flight.add(cache_key)
        job = Job(kind, nas, data, cache_key, arrival, self._blocked)
        self._queue.append((job, transport, addr, ident, started))
        self._pump()

    def _take(self) -> list[tuple[Job, Any, tuple[str, int], int, float]]:
        batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
        self._batches += 1
        self.metrics.batch_size.observe(len(batch))
        return batch

    def _pump(self) -> None:
        """Start a batch of what is queued, in the reactor's next pass: after the reads of this
        one, so that what they bring goes in the same batch."""
        if self._queue and self._dispatch_call is None and self._batches < self.concurrent_batches:
            self._dispatch_call = self.reactor.callLater(0, self._dispatch)

    def _dispatch(self) -> None:
        if self._dispatch_call is not None and self._dispatch_call.active():
            self._dispatch_call.cancel()  # called directly: what it was scheduled for goes now
        self._dispatch_call = None
        while self._queue and self._batches < self.concurrent_batches:
            batch = self._take()
            d = deferToThreadPool(
                self.reactor, self.pool, self.handler.handle_batch, [b[0] for b in batch]
            )
            d.addCallbacks(self._answer, self._failed, (batch,), {}, (batch,), {})
            d.addBoth(self._batch_done, batch)
        if self._batches >= self.concurrent_batches and self._paused_at is None:
            self._paused_at = self.monotonic()
            for listener in self._listeners:
                listener.stopReading()

    def _resume(self) -> None:
        """A batch thread is free: read what waited meanwhile now, rather than in the reactor's
        next pass, and read on. After a long spell of busy threads, read all of it, counting it
        as having waited that long."""
        assert self._paused_at is not None
        held = self.monotonic() - self._paused_at
        self._paused_at = None
        stalled = held >= BLOCKED_SECONDS
        self._blocked = held if stalled else 0.0
        try:
            for _ in range(MAX_READ_OUT if stalled else 1):  # a read: up to 256 KiB (Twisted's)
                before = self._received
                for listener in self._listeners:
                    listener.doRead()
                if self._received == before:
                    break
        finally:
            self._blocked = 0.0
        for listener in self._listeners:
            listener.startReading()

    def _answer(self, results: list[JobResult], batch: list[Any]) -> None:
        for (job, transport, addr, ident, started), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self._failed_one(job, addr, result, None)
                continue
            latency = time.perf_counter() - started
            transport.write(result.data, addr)
            decision = result.fields.get("decision", "")
            if decision == "replayed":
                self.metrics.retransmissions.inc()
            self.metrics.requests.labels(job.kind, decision).inc()
            self.metrics.latency.labels(job.kind).observe(latency)
            log.info(
                "radius.request",
                listener=job.kind,
                nas=job.nas.name,
                id=ident,
                latency_ms=round(latency * 1000, 2),
                **{k: v for k, v in result.fields.items() if v is not None},
            )

    def _failed(self, failure: Failure, batch: list[Any]) -> None:
        """The whole batch failed (a fault in the server itself): nothing is answered."""
        for job, _, addr, _, _ in batch:
            self._failed_one(job, addr, failure.value, failure)

    def _failed_one(
        self, job: Job, addr: tuple[str, int], exc: BaseException, failure: Failure | None
    ) -> None:
        kind, nas = job.kind, job.nas
        if isinstance(exc, Malformed | Drop):
            self.drop(kind, exc.reason, addr, nas=nas.name)
        elif isinstance(exc, SQLAlchemyError):
            self.metrics.backend_errors.labels("database").inc()
            self.drop(kind, "database-error", addr, nas=nas.name, error=type(exc).__name__)
        elif isinstance(exc, RedisError):
            self.metrics.backend_errors.labels("redis").inc()
            self.drop(kind, "redis-error", addr, nas=nas.name, error=type(exc).__name__)
        else:
            self.metrics.drops.labels("internal-error").inc()
            log.error(
                "radius.internal_error",
                listener=kind,
                nas=nas.name,
                exc_info=(
                    type(exc),
                    exc,
                    failure.getTracebackObject() if failure else exc.__traceback__,
                ),
            )

    def _batch_done(self, result: object, batch: list[Any]) -> None:
        """A batch thread is free (its replies are sent): give it the next batch at once, what
        was queued, else what waited in the listeners' buffers."""
        self._batches -= 1
        for job, *_ in batch:
            self._in_flight.discard(job.cache_key)
        if self._queue:
            self._dispatch()  # what was read already goes first; reading stays paused if full
        if self._paused_at is not None and self._batches < self.concurrent_batches:
            self._resume()
            self._dispatch()
        if self.handler.shared_replies is not None and not self._batches:
            # Nothing more to do: the replies' shared copies go now, on a batch thread, which
            # need not tell the reactor when it is done.
            self.pool.callInThread(self.flush_shared_replies)

    def flush_shared_replies(self) -> None:
        """On a batch thread: send the replies' copies still waiting for the shared cache
        (when nothing more is to be done, and when the server stops). A failure is logged:
        the copies are a courtesy to other processes, and their claims expire."""
        if self.handler.shared_replies is None:
            return
        try:
            self.handler.shared_replies.flush()
        except Exception as exc:  # noqa: BLE001 - Redis's own errors are the fallback's
            log.warning("redis.flush_failed", error=str(exc))


class RadiusProtocol(DatagramProtocol):
    """One UDP listener; decides nothing, hands every datagram to the server."""

    def __init__(self, server: RadiusServer, kind: str) -> None:
        self.server = server
        self.kind = kind

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.server.received(self.transport, self.kind, data, addr)
