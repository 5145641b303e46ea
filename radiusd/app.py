"""Wiring: one small function builds the server from settings (no module-level state)."""

from __future__ import annotations

import gc
import socket
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client.twisted import MetricsResource
from twisted.internet import task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from billing.calls import Nas, utc_from_epoch
from billing.service import SessionService, ThrottlePolicy
from billing.settings import ConfigError, Settings
from billing.storage.database import Database
from billing.storage.live import FallbackLiveState, InProcessLiveState, LiveState, RedisLiveState
from billing.storage.store import store_from_settings
from radiusd.codec import Codec, load_dictionary
from radiusd.metrics import Metrics
from radiusd.nas import NasTable
from radiusd.reuseport import spread_per_datagram
from radiusd.server import ACCT, AUTH, Handler, RadiusProtocol, RadiusServer
from radiusd.sockets import SocketCollector, set_receive_buffer
from radiusd.workers import check_spread

log = structlog.get_logger("radiusd")


def throttle_policy(settings: Settings) -> ThrottlePolicy:
    sec = settings["security"]
    return ThrottlePolicy(
        ani_failure_limit=int(sec["ani_failure_limit"]),
        nas_failure_limit=int(sec["nas_failure_limit"]),
        window_seconds=int(sec["failure_window_seconds"]),
        lockout_seconds=int(sec["lockout_seconds"]),
    )


def listen_udp(
    reactor: Any, reuse_port: bool, port: int, protocol: Any, interface: str, spread: int = 1
) -> Any:
    """Listen on UDP; with ``reuse_port`` several processes share the port (SO_REUSEPORT).

    With ``spread`` > 1 the port's datagrams are spread one by one over that many workers (see
    :mod:`radiusd.reuseport`); where the kernel cannot, by flow, and a warning says so.
    """
    if not reuse_port:
        return reactor.listenUDP(port, protocol, interface=interface)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        if spread > 1:
            try:
                spread_per_datagram(sock, spread)
            except OSError as exc:
                log.warning("server.spread_by_flow", port=port, error=exc.strerror or str(exc))
        sock.setblocking(False)
        return reactor.adoptDatagramPort(sock.fileno(), family, protocol)
    finally:
        sock.close()  # the reactor keeps its own duplicate of the descriptor


@dataclass
class Running:
    """What :func:`start` started, so tests and shutdown can reach it."""

    auth_port: Any
    acct_port: Any
    metrics_port: Any | None
    server: RadiusServer
    metrics: Metrics
    pool: ThreadPool
    batch_pool: ThreadPool
    db: Database

    def stop(self) -> None:
        self.pool.stop()
        self.batch_pool.stop()
        self.db.dispose()


def freeze_start_up_objects() -> int:
    """Keep every object made so far out of the garbage collector's passes; return how many.

    Start-up leaves about 100,000 long-lived objects (modules, the RADIUS dictionary,
    SQLAlchemy's tables and compiled statements). Each full collection scanned them all: 46 to
    68 ms on the benchmark machine, with the GIL held, so every request in flight waited; at 300
    requests/s that came twice in half a minute. Frozen, a full pass takes under a millisecond.
    What is made later (caches, connections) is collected as before.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def start(settings: Settings, reactor: Any, worker: int = 0) -> Running:
    """Open the database, load the NAS table, listen, and schedule housekeeping.

    ``worker`` is the index of this process among ``workers = N`` (0 to N - 1): worker ``i``
    serves its metrics on ``[metrics] port`` + ``i``, since each process counts its own. If
    anything fails to listen, what was opened is closed again and the error raised, so the
    process exits rather than stay up with a port it never reads.
    """
    if int(settings["radius"]["batch_size"]) < 1:
        raise ConfigError("[radius] batch_size must be at least 1")
    if int(settings["radius"]["concurrent_batches"]) < 1:
        raise ConfigError("[radius] concurrent_batches must be at least 1")
    if int(settings["radius"]["receive_buffer"]) < 0:
        raise ConfigError("[radius] receive_buffer must be 0 (the kernel's default) or more")
    check_spread(settings)
    if int(settings["server"]["workers"]) > 1 and not settings.redis_url:
        raise ConfigError("workers > 1 needs [redis] url: processes must share live state")
    db = Database.from_url(
        settings.database_url,
        pool_size=int(settings["database"]["pool_size"]),
        echo=bool(settings["database"]["echo"]),
        sqlite_busy_seconds=float(settings["database"]["sqlite_busy_seconds"]),
        prepared_statements=bool(settings["database"]["prepared_statements"]),
    )
    db.check_schema()
    store = store_from_settings(settings, db)
    metrics = Metrics()
    local = InProcessLiveState(reactor.seconds)
    live: LiveState = local
    shared: LiveState | None = None
    if settings.redis_url:

        def redis_failed(exc: Exception) -> None:
            metrics.backend_errors.labels("redis").inc()
            log.warning("redis.unavailable", error=type(exc).__name__)

        redis_state = RedisLiveState(
            settings.redis_url,
            str(settings["redis"]["prefix"]),
            sentinels=list(settings["redis"]["sentinels"]),
            sentinel_service=str(settings["redis"]["sentinel_service"]),
        )
        live = FallbackLiveState(redis_state, local, redis_failed)
        shared = live
    service = SessionService(store, live, throttle_policy(settings))
    nas_table = NasTable(store.load_nas_clients())
    metrics.nas_clients.set(len(nas_table))

    threads = int(settings["server"]["threads"])
    if db.is_sqlite:
        threads = min(threads, 4)  # one writer at a time anyway; more threads only queue
    pool = ThreadPool(minthreads=1, maxthreads=threads, name="prepaid-db")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)

    def remember_ma(nas: Nas) -> None:
        store.mark_message_authenticator_seen(nas.id)
        log.info("nas.message_authenticator_seen", nas=nas.name)

    radius = settings["radius"]
    handler = Handler(
        codec=Codec(load_dictionary(str(radius["dictionary"]))),
        service=service,
        nas_table=nas_table,
        replies=local,
        shared_replies=shared,
        rules=settings.number_rules,
        places=settings.money_places,
        interim_interval=int(radius["acct_interim_interval"]),
        reply_ttl=float(radius["reply_cache_seconds"]),
        on_first_message_authenticator=remember_ma,
    )
    handler.status_text = lambda: "Prepaid AAA is up: " + metrics.summary()
    # The batches' own threads, always running: each keeps its database and Redis connections
    # (and the statements prepared on them) from one batch to the next.
    concurrent = int(radius["concurrent_batches"])
    batch_pool = ThreadPool(minthreads=concurrent, maxthreads=concurrent, name="prepaid-batches")
    batch_pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", batch_pool.stop)
    server = RadiusServer(reactor, batch_pool, handler, nas_table, local, metrics)
    bind = str(radius["bind"])
    server.max_pending = int(radius["max_pending"])
    server.batch_size = int(radius["batch_size"])
    server.concurrent_batches = concurrent
    # What the last batch left waiting for the shared cache, when the server stops.
    reactor.addSystemEventTrigger(
        "before",
        "shutdown",
        lambda: deferToThreadPool(reactor, batch_pool, server.flush_shared_replies),
    )
    handler.clock = reactor.seconds
    handler.max_queue_seconds = float(radius["max_queue_seconds"])
    reuse = bool(settings["server"]["reuse_port"])
    # Spread the datagrams one by one over the workers, unless told to leave it to the flows.
    spread = int(settings["server"]["workers"]) if settings["server"]["spread"] != "flow" else 1
    listening: list[Any] = []
    try:
        for port, kind in ((int(radius["auth_port"]), AUTH), (int(radius["acct_port"]), ACCT)):
            listening.append(
                listen_udp(
                    reactor,
                    reuse,
                    port,
                    RadiusProtocol(server, kind),
                    interface=bind,
                    spread=spread,
                )
            )
        metrics_port = None
        if settings["metrics"]["enabled"]:
            root = Resource()
            # prometheus-client's resource is a WSGIResource, an IResource at run time
            root.putChild(b"metrics", MetricsResource(registry=metrics.registry))  # type: ignore[arg-type]
            first = int(settings["metrics"]["port"])  # 0: any free port
            metrics_port = reactor.listenTCP(
                first + worker if first else 0,
                Site(root),
                interface=str(settings["metrics"]["bind"]),
            )
    except BaseException:
        for listener in listening:
            listener.stopListening()
        pool.stop()  # or its threads keep the process alive after the error is reported
        batch_pool.stop()
        db.dispose()
        raise
    auth_port, acct_port = listening
    for listener in listening:
        server.attach(listener)
    # What waits while the batch threads are busy waits in these buffers (radiusd.sockets).
    asked = int(radius["receive_buffer"])
    granted = min(set_receive_buffer(listener.socket, asked) for listener in listening)
    if granted < asked:
        log.warning(
            "server.receive_buffer_capped",
            asked=asked,
            granted=granted,
            hint="the kernel caps it at net.core.rmem_max; see docs/DEPLOYMENT.md",
        )
    metrics.registry.register(SocketCollector({AUTH: auth_port.socket, ACCT: acct_port.socket}))

    def refresh_nas() -> Any:
        d = deferToThreadPool(reactor, pool, store.load_nas_clients)

        def apply(clients: list[Nas]) -> None:
            nas_table.replace(clients)
            metrics.nas_clients.set(len(nas_table))

        d.addCallbacks(apply, lambda f: log.warning("nas.refresh_failed", error=str(f.value)))
        return d

    def reap() -> Any:
        d = deferToThreadPool(reactor, pool, service.reap, utc_from_epoch(reactor.seconds()))

        def report(result: Any) -> None:
            metrics.reaped.labels("released").inc(result.released)
            metrics.reaped.labels("closed").inc(result.closed)
            metrics.live_calls.set(result.live)
            if result.released or result.closed or result.purged:
                log.info(
                    "sessions.reaped",
                    released=result.released,
                    closed=result.closed,
                    purged=result.purged,
                )

        d.addCallbacks(report, lambda f: log.warning("sessions.reap_failed", error=str(f.value)))
        return d

    nas_loop = task.LoopingCall(refresh_nas)
    nas_loop.clock = reactor
    nas_loop.start(float(settings["server"]["nas_refresh_seconds"]), now=False)
    reap_loop = task.LoopingCall(reap)
    reap_loop.clock = reactor
    reap_loop.start(float(settings["billing"]["reap_interval_seconds"]), now=False)

    log.info(
        "server.listening",
        bind=bind,
        auth_port=auth_port.getHost().port,
        acct_port=acct_port.getHost().port,
        metrics_port=metrics_port.getHost().port if metrics_port else None,
        receive_buffer=granted,
        database=db.engine.dialect.name,
        live_state="redis" if settings.redis_url else "in-process",
        nas_clients=len(nas_table),
        config=settings.source,
    )
    return Running(auth_port, acct_port, metrics_port, server, metrics, pool, batch_pool, db)
