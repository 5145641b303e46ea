"""Redis is not money: the server keeps answering while its Redis is down or comes back empty.

The test runs its own Redis (a private process on a free loopback port) so that it can kill and
restart it without disturbing anything else, with the server on the shared PostgreSQL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from pyrad import packet as rp
from support import Deployment, Radius, ServerProcess

pytestmark = pytest.mark.e2e
UK_NUMBER = "441234567890"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server binary not installed")
        self.binary = binary
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("private Redis did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[tuple[Deployment, ServerProcess, PrivateRedis]]:
    cache = PrivateRedis(tmp_path_factory.mktemp("redis"))
    cache.start()
    dep = Deployment(
        tmp_path_factory.mktemp("redis-outage"),
        {
            "PREPAID_SERVER_STATE_DIR": str(tmp_path_factory.mktemp("state")),
            "PREPAID_DATABASE_URL": postgres_url,
            "PREPAID_REDIS_URL": cache.url,
            "PREPAID_REDIS_PREFIX": f"paaa-test-{uuid.uuid4().hex[:8]}:",
        },
    )
    dep.ctl("db", "upgrade")
    dep.add_nas("gw1", profile="cisco")
    dep.add_rates()
    server = dep.start_server(PREPAID_METRICS_ENABLED="true", PREPAID_METRICS_PORT="0")
    try:
        yield dep, server, cache
    finally:
        dep.stop_all()
        cache.stop()


def full_call(nas: Radius, server: ServerProcess, pin: str, seconds: int) -> rp.Packet:
    reply = nas.send(
        nas.access_request(pin, Called_Station_Id=UK_NUMBER), server.auth_port, timeout=5
    )
    assert reply is not None, "no answer to an Access-Request"
    if reply.code != rp.AccessAccept:
        return reply
    base = {"Acct_Session_Id": uuid.uuid4().hex, "Class": reply["Class"][0]}
    for status, extra in (("Start", {}), ("Stop", {"Acct_Session_Time": seconds})):
        ack = nas.send(
            nas.accounting_request(Acct_Status_Type=status, **base, **extra),
            server.acct_port,
            timeout=5,
        )
        assert ack is not None and ack.code == rp.AccountingResponse
    return reply


def test_calls_go_on_through_a_redis_outage_and_an_empty_restart(
    setup: tuple[Deployment, ServerProcess, PrivateRedis],
) -> None:
    dep, server, cache = setup
    card = dep.create_cards(1, "5.00", max_calls="1")[0]
    nas = Radius()
    try:
        assert full_call(nas, server, card["pin"], 125).code == rp.AccessAccept  # Redis up

        cache.stop()  # Redis gone
        assert full_call(nas, server, card["pin"], 125).code == rp.AccessAccept
        server.wait_for("redis.unavailable")
        # a reserved call is still exclusive with Redis down: Max Calls 1 holds
        granted = nas.send(
            nas.access_request(card["pin"], Called_Station_Id=UK_NUMBER),
            server.auth_port,
            timeout=5,
        )
        assert granted is not None and granted.code == rp.AccessAccept
        second = nas.send(
            nas.access_request(card["pin"], Called_Station_Id=UK_NUMBER),
            server.auth_port,
            timeout=5,
        )
        assert second is not None and second.code == rp.AccessReject
        base = {"Acct_Session_Id": uuid.uuid4().hex, "Class": granted["Class"][0]}
        stop = nas.accounting_request(Acct_Status_Type="Stop", Acct_Session_Time=125, **base)
        data = stop.RequestPacket()
        first = nas.send_raw(data, server.acct_port, timeout=5)
        assert first is not None

        cache.start()  # back, and empty
        again = nas.send_raw(data, server.acct_port, timeout=5)  # a retransmission of that Stop
        assert again is not None
        assert full_call(nas, server, card["pin"], 125).code == rp.AccessAccept
    finally:
        nas.close()

    # four calls of 125 s, each billed once: 5.00 - 4 x 0.1970
    shown = dep.ctl_json("card", "show", card["serial"])
    assert Decimal(shown["balance"]) == Decimal("5.00") - 4 * Decimal("0.1970")
    bill = dep.ctl_json("report", "card-bill", card["serial"])
    assert [r["cost"] for r in bill["rows"]] == ["0.1970"] * 4
    assert 'prepaid_backend_errors_total{backend="redis"}' in server.metrics()


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free (for two workers' metrics)."""
    for _ in range(50):
        first = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", first))
                b.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
        return first
    raise AssertionError("no two consecutive free ports")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def accepts(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith('prepaid_radius_requests_total{kind="auth",result="accept"}')
    )


@pytest.mark.parametrize("spread", ["datagram", "flow"])
def test_workers_share_the_ports_and_stop_together(
    setup: tuple[Deployment, ServerProcess, PrivateRedis], spread: str
) -> None:
    """``workers = 2``: two processes bound to one pair of ports, each with its own metrics port,
    sharing even the requests of a NAS that sends them all from one socket (``spread =
    "datagram"``, the default), or not (``"flow"``); stopped as one."""
    import signal

    dep, _, cache = setup
    auth, acct, metrics = free_port(), free_port(), free_port_pair()
    env = dict(
        dep.env,
        PREPAID_SERVER_WORKERS="2",
        PREPAID_RADIUS_AUTH_PORT=str(auth),
        PREPAID_RADIUS_ACCT_PORT=str(acct),
        PREPAID_METRICS_ENABLED="true",
        PREPAID_METRICS_PORT=str(metrics),
        PREPAID_SERVER_SPREAD=spread,
    )
    server = ServerProcess(env, dep.dir)  # reads the output on a thread: a silent worker fails
    proc = server.proc
    try:
        deadline = time.monotonic() + 30
        while len(server.events("server.listening")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        listening = server.events("server.listening")
        assert sorted((e["worker"], e["metrics_port"]) for e in listening) == [
            (0, metrics),
            (1, metrics + 1),
        ]
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2
        cards = dep.create_cards(40, "5.00")
        nas = Radius()  # one socket, as a softswitch sends: one flow
        answered = 0
        for c in cards:
            reply = nas.send(
                nas.access_request(c["pin"], Called_Station_Id=UK_NUMBER), auth, timeout=5
            )
            answered += reply is not None and reply.code == rp.AccessAccept
        nas.close()
        assert answered == len(cards)
        # Each worker counts what it answered. Picked at random per datagram, both answer some
        # of the one flow's requests (all 40 to one has odds of 2 in 10^12); by flow, one does.
        per_worker = [accepts(scrape(metrics)), accepts(scrape(metrics + 1))]
        assert sum(per_worker) == len(cards)
        by_log = {e["worker"] for e in server.events("radius.request")}
        if spread == "datagram":
            assert min(per_worker) > 0, per_worker
            assert by_log == {0, 1}
        else:
            assert min(per_worker) == 0, per_worker
            assert len(by_log) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        server.stop()
    assert all(
        subprocess.run(["kill", "-0", pid], capture_output=True).returncode != 0 for pid in children
    )


def test_an_unknown_spread_is_refused(
    setup: tuple[Deployment, ServerProcess, PrivateRedis],
) -> None:
    dep, _, _ = setup
    for workers in ("1", "2"):
        proc = dep.run_server(
            PREPAID_SERVER_WORKERS=workers,
            PREPAID_SERVER_SPREAD="sideways",
            PREPAID_RADIUS_AUTH_PORT=str(free_port()),
            PREPAID_RADIUS_ACCT_PORT=str(free_port()),
        )
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            "error: [server] spread must be datagram or flow, not 'sideways'"
        )


def test_a_server_that_cannot_listen_for_metrics_exits(
    setup: tuple[Deployment, ServerProcess, PrivateRedis],
) -> None:
    """A taken metrics port is an error at start-up, and the process exits: it must not stay
    up holding its RADIUS ports with nothing reading them (under ``workers = N`` the kernel
    would keep handing it a share of the datagrams)."""
    dep, _, _ = setup
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = dep.run_server(
            PREPAID_METRICS_ENABLED="true",
            PREPAID_METRICS_PORT=str(taken.getsockname()[1]),
            PREPAID_RADIUS_AUTH_PORT=str(free_port()),
            PREPAID_RADIUS_ACCT_PORT=str(free_port()),
        )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot listen: ")
    assert "Address already in use" in proc.stderr


def test_workers_refuse_to_start_without_redis(
    setup: tuple[Deployment, ServerProcess, PrivateRedis],
) -> None:
    dep, _, _ = setup
    proc = dep.run_server(
        PREPAID_SERVER_WORKERS="2",
        PREPAID_REDIS_URL="",
        PREPAID_RADIUS_AUTH_PORT=str(free_port()),
        PREPAID_RADIUS_ACCT_PORT=str(free_port()),
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: workers > 1 needs [redis] url: processes must share live state"
    )
