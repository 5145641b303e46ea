"""The RADIUS server: datagrams in, billing calls, replies out.

On reading a datagram the reactor does only cheap work: find the NAS by source address, check
the packet's structure, answer a retransmission from the reply cache, and queue the rest. The
queue is taken up in batches (what arrived while the last batch ran; see :class:`RadiusServer`),
on the reactor thread itself by default, or on worker threads: decoding, verification and all
database and Redis work happen there, and the replies are sent from the reactor. A datagram is
never answered twice concurrently: a copy that arrives while its original is being processed is
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
    #: How long it may have waited in the socket's buffer before that: read just after a batch
    #: that held the reactor (``concurrent_batches = 0``) for long, as long as that batch took.
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
    """Processes batches of datagrams (on the reactor thread, or a worker thread); returns a
    reply, or why none, for each.

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

    def handle_batch(self, jobs: list[Job], defer_replies: bool = False) -> list[JobResult]:
        """``defer_replies`` (batches on the reactor thread): the shared cache's copies of the
        replies go with the next batch's claims, or when the reactor finds nothing more to do
        (:meth:`RadiusServer._run_here`), instead of in a round trip of their own before the
        replies are sent. Not on a worker thread, whose next command may be long in coming."""
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
                    if defer_replies:
                        shared.reply_put_later(answered, self.reply_ttl)
                    else:
                        shared.reply_put_many(answered, self.reply_ttl)
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


#: A reactor-thread batch that held the reactor this long marks the datagrams read just after
#: it as having waited as long (see :class:`RadiusServer`); shorter ones do not matter.
BLOCKED_SECONDS = 0.1


class RadiusServer:
    """The reactor-side controller shared by the authentication and accounting listeners.

    Datagrams that pass the cheap checks (known NAS, sound structure, not a retransmission)
    queue here and are handled in batches of everything queued, up to ``batch_size``. At low
    load a batch is one datagram, handled at once (no timer, no added latency); under load the
    queue fills while a batch runs and batches grow, so the per-transaction and per-round-trip
    costs are shared by many requests.

    Where a batch runs is ``concurrent_batches``:

    - ``0`` (the default): on the reactor thread, in the reactor's next pass after the
      datagrams were read; the process handles one batch at a time, and what arrives meanwhile
      waits in the socket's buffer in the kernel until the batch is answered. No thread
      hand-off, no lock passed between threads: on the benchmark machine this cut the
      server's CPU per request by about a third at saturation, and by a fifth to a quarter at
      1,000 requests/s; the machine's other processes (one per CPU, and PostgreSQL) overlap
      the waits.
      A datagram read just after a batch that held the reactor for a long time (a slow
      database) may have waited that long in the buffer: it is counted so, so the backlog a
      stall leaves is shed, not answered after the NAS gave up on it.
    - ``N >= 1``: on the worker threads, up to N batches at once; the reactor keeps reading,
      answering retransmissions from the cache and shedding while they run. Two let one
      batch's round trips overlap the other's Python work, at the price of a thread hand-off
      each way and of the threads contending for the interpreter.
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
        self.concurrent_batches = 0  # 0: on the reactor thread
        self._drop_log = DropLog(reactor.seconds)
        self._run_call: Any = None  # the reactor-thread batch (or flush) scheduled, if any
        #: How long the last reactor-thread batch held the reactor, when that was long enough to
        #: matter (``BLOCKED_SECONDS``), until the reactor's pass that reads what waited ends;
        #: and how many such batches there have been.
        self._blocked = 0.0
        self._stalls = 0
        self.monotonic: Callable[[], float] = time.monotonic

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
        """Start a batch of what is queued while a batch slot is free."""
        if self.concurrent_batches == 0:
            if self._queue and self._run_call is None:
                self._run_call = self.reactor.callLater(0, self._run_here)
            return
        while self._queue and self._batches < self.concurrent_batches:
            batch = self._take()
            d = deferToThreadPool(
                self.reactor, self.pool, self.handler.handle_batch, [b[0] for b in batch]
            )
            d.addCallbacks(self._answer, self._failed, (batch,), {}, (batch,), {})
            d.addBoth(self._batch_done, batch)

    def _run_here(self) -> None:
        """One batch on the reactor thread (``concurrent_batches = 0``).

        After each batch this runs once more, in the reactor's next pass: if that pass read
        requests, their batch takes the replies' shared copies along with its claims; if not,
        the copies go now (a pass that reads nothing is the reactor's idle moment)."""
        self._run_call = None
        if not self._queue:
            if self.handler.shared_replies is not None:
                self.handler.shared_replies.flush()
            return
        batch = self._take()
        began = self.monotonic()
        try:
            try:
                results = self.handler.handle_batch([b[0] for b in batch], defer_replies=True)
            except Exception:
                self._failed(Failure(), batch)
            else:
                self._answer(results, batch)
        finally:
            held = self.monotonic() - began
            if held >= BLOCKED_SECONDS:
                self._blocked = held
                self._stalls += 1
                # This runs as a delayed call; one scheduled now runs in the reactor's next
                # pass of delayed calls, after the pass of reads that takes up what waited.
                self.reactor.callLater(0, self._unblock, self._stalls)
            self._batch_done(None, batch)
            if self.handler.shared_replies is not None and self._run_call is None:
                self._run_call = self.reactor.callLater(0, self._run_here)

    def _unblock(self, stalls: int) -> None:
        if stalls == self._stalls:  # no batch held the reactor long since
            self._blocked = 0.0

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
        self._batches -= 1
        for job, *_ in batch:
            self._in_flight.discard(job.cache_key)
        self._pump()


class RadiusProtocol(DatagramProtocol):
    """One UDP listener; decides nothing, hands every datagram to the server."""

    def __init__(self, server: RadiusServer, kind: str) -> None:
        self.server = server
        self.kind = kind

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.server.received(self.transport, self.kind, data, addr)
