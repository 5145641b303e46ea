"""A stalled database, over real UDP against the real server: the batch thread waits, the
listeners stop reading, and what waited in the socket's buffer longer than
``max_queue_seconds`` is shed (the NAS has retried or failed over by then), not answered late;
the request that was in the stalled batch is answered when the database comes back, and what
arrives after is answered at once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg2
import pytest
from support import Deployment, Radius, ServerProcess

pytestmark = pytest.mark.e2e

UK_NUMBER = "441234567890"


@pytest.fixture
def setup(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[tuple[Deployment, ServerProcess, str]]:
    dep = Deployment(
        tmp_path_factory.mktemp("stall"),
        {
            "PREPAID_SERVER_STATE_DIR": str(tmp_path_factory.mktemp("state")),
            "PREPAID_DATABASE_URL": postgres_url,
            "PREPAID_RADIUS_MAX_QUEUE_SECONDS": "1.0",
        },
    )
    dep.ctl("db", "upgrade")
    dep.add_nas("gw1", profile="cisco")
    dep.add_rates()
    server = dep.start_server(PREPAID_METRICS_ENABLED="true", PREPAID_METRICS_PORT="0")
    try:
        yield dep, server, postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    finally:
        dep.stop_all()


def drops(server: ServerProcess, reason: str) -> float:
    prefix = f'prepaid_radius_drops_total{{reason="{reason}"}} '
    return sum(
        float(line[len(prefix) :])
        for line in server.metrics().splitlines()
        if line.startswith(prefix)
    )


def test_a_stall_backlog_is_shed_and_the_server_answers_at_once_after(
    setup: tuple[Deployment, ServerProcess, str],
) -> None:
    dep, server, dsn = setup
    warm_card, first, *waiting, after = dep.create_cards(8, "5.00")
    nas = Radius()
    others = [Radius() for _ in waiting]
    warm = nas.send(
        nas.access_request(warm_card["pin"], Called_Station_Id=UK_NUMBER), server.auth_port
    )
    assert warm is not None and warm.code == 2  # warm: connections open, statements prepared

    blocker = psycopg2.connect(dsn)
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE cards IN ACCESS EXCLUSIVE MODE")  # the database "stalls"
        stalled = nas.access_request(first["pin"], Called_Station_Id=UK_NUMBER)
        nas.sock.sendto(stalled.RequestPacket(), ("127.0.0.1", server.auth_port))
        time.sleep(0.3)  # its batch is waiting on the lock; the listeners have stopped reading
        backlog = []
        for other, card in zip(others, waiting, strict=True):
            pkt = other.access_request(card["pin"], Called_Station_Id=UK_NUMBER)
            other.sock.sendto(pkt.RequestPacket(), ("127.0.0.1", server.auth_port))
            backlog.append(pkt)
        time.sleep(2.0)  # longer than max_queue_seconds
    finally:
        blocker.rollback()  # the database is back
        blocker.close()

    nas.sock.settimeout(5.0)
    raw, _ = nas.sock.recvfrom(8192)
    assert stalled.VerifyReply(stalled.CreateReply(packet=raw), raw)  # answered, late
    for other in others:
        other.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            other.sock.recvfrom(8192)  # shed: no reply after the NAS gave up
    assert drops(server, "queue-timeout") == len(backlog)

    began = time.monotonic()
    reply = nas.send(
        nas.access_request(after["pin"], Called_Station_Id=UK_NUMBER), server.auth_port
    )
    assert reply is not None and reply.code == 2  # an Accept
    assert time.monotonic() - began < 0.5  # answered at once again
    for radius in (nas, *others):
        radius.close()
