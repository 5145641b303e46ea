"""Operating the server: a test call from the CLI, the metrics endpoint, Status-Server counters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyrad import packet as rp
from support import DICTIONARY, Deployment, Radius, ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    deployment.add_nas("gw1", profile="cisco")
    deployment.add_rates()
    yield deployment.start_server(PREPAID_METRICS_ENABLED="true", PREPAID_METRICS_PORT="0")


def call(deployment: Deployment, server: ServerProcess, *args: str) -> list[dict[str, str]]:
    ports = {
        "PREPAID_RADIUS_AUTH_PORT": str(server.auth_port),
        "PREPAID_RADIUS_ACCT_PORT": str(server.acct_port),
    }
    out = deployment.ctl("call", *args, "--format", "json", env=ports)
    return json.loads(out.stdout)


def test_prepaidctl_call_plays_and_bills_a_whole_call(
    deployment: Deployment, server: ServerProcess
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    steps = call(
        deployment, server, "--pin", card["pin"], "--to", "441234567890", "--seconds", "125"
    )
    assert [s["answer"] for s in steps] == [
        "Access-Accept",
        "Accounting-Response",
        "Accounting-Response",
    ]
    assert "Session-Timeout=4242" in steps[0]["details"]
    assert deployment.ctl_json("card", "show", card["serial"])["balance"] == "4.8030"
    bill = deployment.ctl_json("report", "card-bill", card["serial"])
    rows = bill["rows"] if isinstance(bill, dict) else bill
    assert [(c["cost"], c["billed_seconds"]) for c in rows] == [("0.1970", 126)]


def test_prepaidctl_call_shows_a_rejection(deployment: Deployment, server: ServerProcess) -> None:
    steps = call(deployment, server, "--pin", "1234567897", "--to", "441234567890")
    assert len(steps) == 1
    assert steps[0]["answer"] == "Access-Reject"
    assert "h323-return-code=1" in steps[0]["details"]


def test_prepaidctl_call_without_a_server_is_one_line_error(
    deployment: Deployment, server: ServerProcess
) -> None:
    result = deployment.ctl_process(
        "call",
        "--pin",
        "1234567897",
        "--to",
        "441234567890",
        env={"PREPAID_RADIUS_AUTH_PORT": "9", "PREPAID_RADIUS_ACCT_PORT": "9"},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no answer") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_metrics_endpoint_counts_requests_and_drops(
    deployment: Deployment, server: ServerProcess
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    call(deployment, server, "--pin", card["pin"], "--to", "441234567890", "--seconds", "30")
    nas = Radius()
    nas.send_raw(b"\x01\x02junk", server.auth_port, timeout=0.3)
    nas.close()
    server.wait_for("radius.drop", reason="short-packet")
    body = server.metrics()
    assert 'prepaid_radius_requests_total{kind="auth",result="accept"}' in body
    assert 'prepaid_radius_requests_total{kind="acct",result="ack"}' in body
    assert 'prepaid_radius_drops_total{reason="short-packet"}' in body
    # The kernel's own count at the listeners' sockets: nothing overflowed their buffers.
    assert 'prepaid_radius_socket_drops_total{listener="auth"} 0.0' in body
    assert 'prepaid_radius_socket_drops_total{listener="acct"} 0.0' in body
    assert 'prepaid_radius_socket_queued_bytes{listener="auth"}' in body
    assert "prepaid_radius_latency_seconds_bucket" in body
    assert "process_resident_memory_bytes" in body and "python_gc_collections_total" in body
    # Start-up objects are out of the collector's full passes (a 50 ms pause each, otherwise).
    frozen = next(
        float(line.split()[1])
        for line in body.splitlines()
        if line.startswith("prepaid_gc_frozen_objects ")
    )
    assert frozen > 10_000


def test_status_server_reply_carries_counters(server: ServerProcess) -> None:
    nas = Radius()
    pkt = rp.AuthPacket(code=rp.StatusServer, secret=nas.secret, dict=DICTIONARY)
    pkt.add_message_authenticator()
    reply = nas.send(pkt, server.auth_port)
    nas.close()
    assert reply is not None and reply.code == rp.AccessAccept
    message = reply["Reply-Message"][0]
    assert message.startswith("Prepaid AAA is up: accept=")
    assert "drops=" in message


def test_server_exits_with_a_clear_error_when_its_port_is_taken(deployment: Deployment) -> None:
    import socket

    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        proc = deployment.run_server(PREPAID_RADIUS_AUTH_PORT=str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot listen")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BATCH_SIZE", "0", "error: [radius] batch_size must be at least 1"),
        ("CONCURRENT_BATCHES", "0", "error: [radius] concurrent_batches must be at least 1"),
        (
            "RECEIVE_BUFFER",
            "-1",
            "error: [radius] receive_buffer must be 0 (the kernel's default) or more",
        ),
    ],
)
def test_server_refuses_batch_settings_it_cannot_run(
    deployment: Deployment, key: str, value: str, message: str
) -> None:
    proc = deployment.run_server(**{f"PREPAID_RADIUS_{key}": value})
    assert proc.returncode == 2
    assert proc.stderr.strip() == message


def metric(body: str, name: str) -> float:
    return sum(float(line.split()[1]) for line in body.splitlines() if line.startswith(name + " "))


def test_a_burst_is_answered_in_batches_each_request_on_its_own(
    deployment: Deployment, server: ServerProcess
) -> None:
    """Sixty Access-Requests sent at once, each on a card of its own: every one is answered
    for itself (its Identifier, its grant), and the server handled them in fewer batches than
    requests (the batch-size histogram of the metrics)."""
    cards = deployment.create_cards(60, "5.00")
    before = server.metrics()
    nas = Radius()
    packets = []
    for ident, card in enumerate(cards):
        pkt = nas.access_request(card["pin"], Called_Station_Id="441234567890")
        pkt.id = ident
        packets.append(pkt)
    raws = [pkt.RequestPacket() for pkt in packets]
    for raw in raws:  # all in flight at once, from one NAS port
        nas.sock.sendto(raw, ("127.0.0.1", server.auth_port))
    nas.sock.settimeout(5)
    timeouts = {}
    for _ in packets:
        data, _ = nas.sock.recvfrom(8192)
        pkt = packets[data[1]]
        reply = pkt.CreateReply(packet=data)
        assert pkt.VerifyReply(reply, data, enforce_ma=True)
        timeouts[pkt.id] = reply["Session-Timeout"][0]
    nas.close()
    assert timeouts == dict.fromkeys(range(60), 4242)
    after = server.metrics()
    requests = metric(after, "prepaid_radius_batch_size_sum") - metric(
        before, "prepaid_radius_batch_size_sum"
    )
    batches = metric(after, "prepaid_radius_batch_size_count") - metric(
        before, "prepaid_radius_batch_size_count"
    )
    assert requests == 60
    assert batches < requests


def test_listeners_get_the_receive_buffer_asked_for_up_to_the_kernels_cap(
    deployment: Deployment,
) -> None:
    """While the batch thread is busy, requests wait in these buffers (radiusd.sockets)."""
    cap = int(Path("/proc/sys/net/core/rmem_max").read_text())
    server = deployment.start_server(PREPAID_RADIUS_RECEIVE_BUFFER=str(cap // 2))
    assert server.wait_for("server.listening")["receive_buffer"] == cap // 2
    assert not server.events("server.receive_buffer_capped")
    server.stop()
    server = deployment.start_server(PREPAID_RADIUS_RECEIVE_BUFFER=str(cap * 2))
    assert server.wait_for("server.listening")["receive_buffer"] == cap
    capped = server.wait_for("server.receive_buffer_capped")
    assert capped["asked"] == cap * 2 and capped["granted"] == cap
