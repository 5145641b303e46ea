"""The RADIUS server: datagrams in, billing calls, replies out.

The reactor thread does only cheap work: find the NAS by source address, check the packet's
structure, answer a retransmission from the reply cache, and hand the rest to a worker thread.
Decoding, verification and all database or Redis work run on the worker pool; the reply is sent
back from the reactor. A datagram is never answered twice concurrently: a copy that arrives
while its original is being processed is dropped (the NAS will retransmit and get the cached
reply).

The outcome vocabulary is the one FreeRADIUS modules use: accept, reject, or drop. A drop sends
nothing — for unknown sources, malformed or unverifiable packets, and when the database fails,
so the NAS retries or fails over and nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from billing.calls import Accepted, AcctResult, AuthRequest, Nas, Rejected, utc_from_epoch
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
from radiusd.profiles import PROFILES

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
    data: bytes | None
    fields: dict[str, Any]


class Handler:
    """Processes one datagram on a worker thread and returns the reply bytes (or None)."""

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
        self.last_wait = 0.0  # how long the last request taken up had waited for a thread

    def handle(self, kind: str, nas: Nas, data: bytes, cache_key: str, arrival: float) -> Outcome:
        waited = self.clock() - arrival
        self.last_wait = waited  # read by the reactor to shed load at the door
        if waited > self.max_queue_seconds:
            # The NAS has given up on this one (and retransmitted, or failed over): answering
            # now only delays the requests behind it. Shed load instead of falling behind.
            raise Drop("queue-timeout")
        request = self._decode(kind, nas, data)
        call = None
        if kind == AUTH and request.code == ACCESS_REQUEST:
            call = translate.auth_request(request, nas.id, self.rules)
            if request.chap or translate.oversized(call):
                call = None  # refused as malformed below, without the service
        shared = self.shared_replies
        if shared is None:
            return self._process(kind, nas, request, call, cache_key, arrival, None)
        # Another process (or host) may have this request: the NAS retransmitted to it, or
        # failed over. Claim it in the shared cache; replay its reply, or leave it to them.
        # An authorization's throttling state comes in the same round trip.
        throttle = None
        if call is not None:
            keys, failure_key = self.service.throttle_keys(call)
            (claimed, cached), throttle = shared.claim_and_throttle(
                cache_key, self.reply_ttl, keys, failure_key
            )
        else:
            claimed, cached = shared.reply_claim(cache_key, self.reply_ttl)
        if cached is not None:
            return Outcome(cached, {"decision": "replayed"})
        if not claimed:
            raise Drop("in-flight-elsewhere")
        try:
            outcome = self._process(kind, nas, request, call, cache_key, arrival, throttle)
        except BaseException:
            shared.reply_release(cache_key)
            raise
        if outcome.data is not None:
            shared.reply_put(cache_key, outcome.data, self.reply_ttl)
        return outcome

    def _decode(self, kind: str, nas: Nas, data: bytes) -> Request:
        # The Message-Authenticator policy guards Access-Request (BlastRADIUS); accounting is
        # authenticated by its Request Authenticator, and a Message-Authenticator there is
        # verified when present.
        require_ma = kind == AUTH and self.nas_table.requires_message_authenticator(nas)
        request = self.codec.decode(data, nas.secret, require_ma)
        if request.message_authenticator and self.nas_table.saw_message_authenticator(nas):
            self.on_first_ma(nas)
        return request

    def _process(
        self,
        kind: str,
        nas: Nas,
        request: Request,
        call: AuthRequest | None,
        cache_key: str,
        arrival: float,
        throttle: tuple[bool, bool] | None,
    ) -> Outcome:
        """Answer a decoded request; ``call`` is its authorization (None: a malformed one),
        ``throttle`` its throttling state when already fetched."""
        profile = PROFILES.get(nas.profile, PROFILES["generic"])
        fields: dict[str, Any] = {}
        if request.code == STATUS_SERVER:
            code = ACCESS_ACCEPT if kind == AUTH else ACCOUNTING_RESPONSE
            reply = Reply(code, [("Reply-Message", self.status_text())])
            fields["decision"] = "status"
        elif kind == AUTH and request.code == ACCESS_REQUEST:
            fields["packet"] = "access-request"
            if call is None:
                # CHAP (a CHAP response cannot be checked against a PIN hash: PAP only), or a
                # number wider than a call stores.
                result: Any = Rejected(RejectReason.MALFORMED)
            else:
                fields.update(ani=call.calling_number, called=call.called_number)
                result = self.service.authorize(call, utc_from_epoch(arrival), throttle)
            reply = translate.auth_reply(result, profile, self.places, self.interim_interval)
            if isinstance(result, Accepted):
                fields.update(
                    decision="accept",
                    serial=result.serial,
                    session_timeout=result.session_seconds,
                    method=result.auth_method,
                )
            else:
                fields.update(decision="reject", reason=str(result.reason), serial=result.serial)
        elif kind == ACCT and request.code == ACCOUNTING_REQUEST:
            fields["packet"] = "accounting-request"
            event = translate.acct_event(request, nas.id, arrival, self.rules, profile)
            if event is None:
                outcome = AcctResult("ignored")
            else:
                fields.update(status=str(event.status), session=event.acct_session_id)
                outcome = self.service.account(event, utc_from_epoch(arrival))
            fields.update(decision="ack", outcome=outcome.outcome, serial=outcome.serial)
            if outcome.cost is not None:
                fields["cost"] = str(outcome.cost)
            reply = Reply(ACCOUNTING_RESPONSE)
        else:
            raise Drop("wrong-port")
        raw = self.codec.encode(request, reply)
        self.replies.reply_put(cache_key, raw, self.reply_ttl)
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


class RadiusServer:
    """The reactor-side controller shared by the authentication and accounting listeners."""

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
        self._in_flight: set[str] = set()
        self.max_pending = 1000  # requests queued for the worker threads, at most
        self._drop_log = DropLog(reactor.seconds)

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

        When the last request a worker took up had already waited more than half of
        ``max_queue_seconds``, a new one would wait about as long and most likely be shed
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
        d = deferToThreadPool(
            self.reactor, self.pool, self.handler.handle, kind, nas, data, cache_key, arrival
        )

        def done(outcome: Outcome) -> None:
            latency = time.perf_counter() - started
            if outcome.data is not None:
                transport.write(outcome.data, addr)
            decision = outcome.fields.get("decision", "")
            if decision == "replayed":
                self.metrics.retransmissions.inc()
            self.metrics.requests.labels(kind, decision).inc()
            self.metrics.latency.labels(kind).observe(latency)
            log.info(
                "radius.request",
                listener=kind,
                nas=nas.name,
                id=ident,
                latency_ms=round(latency * 1000, 2),
                **{k: v for k, v in outcome.fields.items() if v is not None},
            )

        def failed(failure: Failure) -> None:
            exc = failure.value
            if isinstance(exc, Malformed):
                self.drop(kind, exc.reason, addr, nas=nas.name)
            elif isinstance(exc, Drop):
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
                    exc_info=(type(exc), exc, failure.getTracebackObject()),
                )

        def release(result: object) -> object:
            self._in_flight.discard(cache_key)
            return result

        d.addCallbacks(done, failed)
        d.addBoth(release)


class RadiusProtocol(DatagramProtocol):
    """One UDP listener; decides nothing, hands every datagram to the server."""

    def __init__(self, server: RadiusServer, kind: str) -> None:
        self.server = server
        self.kind = kind

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.server.received(self.transport, self.kind, data, addr)
