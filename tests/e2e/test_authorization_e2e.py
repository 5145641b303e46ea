"""Authorization over real UDP against the real server, on SQLite and on PostgreSQL + Redis.

Set up exactly as the README tells an operator (prepaidctl), then spoken to as a NAS would.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pyrad import packet as rp
from support import DICTIONARY, Deployment, Radius, ServerProcess, radclient

pytestmark = pytest.mark.e2e

UK_NUMBER = "441234567890"


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    deployment.add_nas("gw1", profile="cisco")
    deployment.add_rates()
    yield deployment.start_server()


@pytest.fixture
def nas() -> Iterator[Radius]:
    client = Radius()
    yield client
    client.close()


def reply_message(reply: rp.Packet) -> str:
    return reply["Reply-Message"][0]


def return_code(reply: rp.Packet) -> str:
    return reply["h323-return-code"][0]


def test_pin_gets_session_timeout_4242_with_radclient(
    deployment: Deployment, server: ServerProcess
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    out = radclient(
        server.auth_port,
        "auth",
        f'User-Name = "{card["pin"]}"\nCalled-Station-Id = "{UK_NUMBER}"\n'
        "Message-Authenticator = 0x00\n",
    )
    assert "Received Access-Accept" in out.stdout, out.stdout + out.stderr
    assert "Session-Timeout = 4242" in out.stdout
    assert "Acct-Interim-Interval = 60" in out.stdout
    assert 'h323-credit-time = "h323-credit-time=4242"' in out.stdout
    assert 'h323-credit-amount = "h323-credit-amount=5.0000"' in out.stdout
    assert 'h323-return-code = "h323-return-code=0"' in out.stdout
    assert 'h323-currency = "h323-currency=USD"' in out.stdout
    assert "Class = 0x" in out.stdout
    event = server.wait_for("radius.request", decision="accept", serial=card["serial"])
    assert event["session_timeout"] == 4242
    assert card["pin"] not in server.output()  # a PIN never reaches the logs


def test_wrong_pin_is_rejected_with_reason(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    wrong = card["pin"][:-1] + str((int(card["pin"][-1]) + 1) % 10)
    reply = nas.send(nas.access_request(wrong, Called_Station_Id=UK_NUMBER), server.auth_port)
    assert reply is not None and reply.code == rp.AccessReject
    assert reply_message(reply) == "Invalid account"
    assert return_code(reply) == "h323-return-code=1"


def test_card_number_and_pin(deployment: Deployment, server: ServerProcess, nas: Radius) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    ok = nas.send(
        nas.access_request(card["serial"], card["pin"], Called_Station_Id=UK_NUMBER),
        server.auth_port,
    )
    assert ok is not None and ok.code == rp.AccessAccept
    assert ok["Session-Timeout"] == [4242]


def test_card_attacked_by_card_number_is_locked(
    deployment: Deployment, server: ServerProcess
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    wrong = "1234567890"
    codes = []
    for i in range(5):
        # each attempt from a different ANI so that source lockout does not hide the card lock
        client = Radius()
        reply = client.send(
            client.access_request(
                card["serial"], wrong, Called_Station_Id=UK_NUMBER, Calling_Station_Id=f"1555000{i}"
            ),
            server.auth_port,
        )
        client.close()
        assert reply is not None and reply.code == rp.AccessReject
        codes.append(return_code(reply))
    assert codes == ["h323-return-code=2"] * 5
    shown = deployment.ctl_json("card", "show", card["serial"])
    assert shown["state"] == "locked"
    client = Radius()
    reply = client.send(
        client.access_request(card["pin"], Called_Station_Id=UK_NUMBER), server.auth_port
    )
    client.close()
    assert reply is not None and reply.code == rp.AccessReject
    assert return_code(reply) == "h323-return-code=7"


def test_bound_ani_is_accepted_without_pin(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    deployment.ctl("bind", "add", card["serial"], "+44 20 7946 0000")
    reply = nas.send(
        nas.access_request(Calling_Station_Id="00442079460000", Called_Station_Id=UK_NUMBER),
        server.auth_port,
    )
    assert reply is not None and reply.code == rp.AccessAccept, reply and reply.get("Reply-Message")
    assert reply["Session-Timeout"] == [4242]
    # User-Name equal to the ANI is the same identity
    again = nas.send(
        nas.access_request(
            "442079460000", Calling_Station_Id="442079460000", Called_Station_Id="4420000000"
        ),
        server.auth_port,
    )
    assert (
        again is not None and again.code == rp.AccessReject
    )  # Max Calls 1: the first grant is live
    assert reply_message(again) == "Card in use"


def test_max_calls_one_rejects_second_grant(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    first = nas.send(nas.access_request(card["pin"], Called_Station_Id=UK_NUMBER), server.auth_port)
    assert first is not None and first.code == rp.AccessAccept
    second = nas.send(
        nas.access_request(card["pin"], Called_Station_Id=UK_NUMBER), server.auth_port
    )
    assert second is not None and second.code == rp.AccessReject
    assert return_code(second) == "h323-return-code=3"


def test_concurrent_grants_never_spend_the_same_money(
    deployment: Deployment, server: ServerProcess
) -> None:
    card = deployment.create_cards(1, "5.00", max_calls="3")[0]
    clients = [Radius() for _ in range(3)]
    packets = [c.access_request(card["pin"], Called_Station_Id=UK_NUMBER) for c in clients]
    raws = [p.RequestPacket() for p in packets]
    for c, raw in zip(clients, raws, strict=True):  # all in flight at once
        c.sock.sendto(raw, ("127.0.0.1", server.auth_port))
    timeouts = []
    for c, p in zip(clients, packets, strict=True):
        c.sock.settimeout(5)
        data, _ = c.sock.recvfrom(8192)
        reply = p.CreateReply(packet=data)
        assert p.VerifyReply(reply, data, enforce_ma=True)
        if reply.code == rp.AccessAccept:
            timeouts.append(reply["Session-Timeout"][0])
        c.close()
    # 5.00 buys 4242 s once; what is left (0.0010) does not buy a 30 s increment.
    assert timeouts == [4242]


def test_longest_prefix_rate_sets_the_session_timeout(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    # 1.00 of credit, per-second billing: 100 s at 0.60/min, 50 s at 1.20/min, 10 s at 6.00/min.
    deployment.add_rates(
        "nested",
        [
            "4,Europe,0.60,0,1,1,0",
            "44,United Kingdom,1.20,0,1,1,0",
            "447,United Kingdom mobile,6.00,0,1,1,0",
            "44712345678901234567890123456789,Longest possible,60.00,0,1,1,0",
        ],
    )
    expected = {
        "4470090012345": 10,
        "441234567890": 50,
        "4930123456": 100,
        "44712345678901234567890123456789": 1,
    }
    for number, seconds in expected.items():
        card = deployment.create_cards(1, "1.00", group="nested")[0]
        reply = nas.send(
            nas.access_request(card["pin"], Called_Station_Id=number), server.auth_port
        )
        assert reply is not None and reply.code == rp.AccessAccept, number
        assert reply["Session-Timeout"][0] == seconds, number
    card = deployment.create_cards(1, "1.00", group="nested")[0]
    for number, message in (
        ("15551234567", "Destination not allowed"),  # no rate
        ("447123456789012345678901234567890", "Request not understood"),  # 33 digits
    ):
        reply = nas.send(
            nas.access_request(card["pin"], Called_Station_Id=number), server.auth_port
        )
        assert reply is not None and reply.code == rp.AccessReject, number
        assert reply_message(reply) == message


def test_unknown_nas_gets_no_reply(server: ServerProcess) -> None:
    stranger = Radius(host="127.0.0.2")
    try:
        pkt = stranger.access_request("123456789012", Called_Station_Id=UK_NUMBER)
        data = pkt.RequestPacket()
        stranger.sock.sendto(data, ("127.0.0.1", server.auth_port))
        stranger.sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            stranger.sock.recvfrom(8192)
    finally:
        stranger.close()
    server.wait_for("radius.drop", reason="unknown-nas")


def test_bad_message_authenticator_gets_no_reply(
    deployment: Deployment, server: ServerProcess
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    forger = Radius(secret=b"not-the-secret")
    pkt = forger.access_request(card["pin"], Called_Station_Id=UK_NUMBER)
    assert forger.send_raw(pkt.RequestPacket(), server.auth_port, timeout=1.5) is None
    forger.close()
    server.wait_for("radius.drop", reason="bad-message-authenticator")


def test_retransmission_gets_the_same_bytes_and_one_grant(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    card = deployment.create_cards(1, "5.00", max_calls="2")[0]
    data = nas.access_request(card["pin"], Called_Station_Id=UK_NUMBER).RequestPacket()
    first = nas.send_raw(data, server.auth_port)
    second = nas.send_raw(data, server.auth_port)
    assert first is not None and first == second
    sessions = deployment.ctl_json("sessions", "list", "--card", card["serial"])
    assert len(sessions) == 1


def test_malformed_datagrams_are_dropped_and_counted(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    garbage = [
        b"\x01\x02",  # too short
        b"\x01\x07\x00\x30" + b"\x00" * 16,  # length beyond the datagram
        # a Vendor-Specific whose sub-attribute has length 0 (the pyrad issue 234 shape)
        b"\x01\x08\x00\x1e" + b"\x00" * 16 + b"\x1a\x0a\x00\x00\x00\x09\x17\x00\x00\x00",
    ]
    for data in garbage:
        assert nas.send_raw(data, server.auth_port, timeout=0.5) is None
    card = deployment.create_cards(1, "5.00")[0]
    reply = nas.send(nas.access_request(card["pin"], Called_Station_Id=UK_NUMBER), server.auth_port)
    assert reply is not None and reply.code == rp.AccessAccept
    reasons = [e["reason"] for e in server.events("radius.drop")]
    assert {"short-packet", "bad-length", "bad-vendor-attribute"} <= set(reasons)


def test_status_server_is_answered_on_both_ports(server: ServerProcess, nas: Radius) -> None:
    for port, code in (
        (server.auth_port, rp.AccessAccept),
        (server.acct_port, rp.AccountingResponse),
    ):
        pkt = rp.AuthPacket(code=rp.StatusServer, secret=nas.secret, dict=DICTIONARY)
        pkt.add_message_authenticator()
        raw = nas.send_raw(pkt.RequestPacket(), port)
        assert raw is not None
        assert raw[0] == code


def test_locked_out_ani_is_refused_even_with_a_good_pin(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    card = deployment.create_cards(1, "5.00")[0]
    ani = "15559990000"
    for _ in range(5):
        reply = nas.send(
            nas.access_request("1234567897", Calling_Station_Id=ani, Called_Station_Id=UK_NUMBER),
            server.auth_port,
        )
        assert reply is not None and reply.code == rp.AccessReject
    reply = nas.send(
        nas.access_request(card["pin"], Calling_Station_Id=ani, Called_Station_Id=UK_NUMBER),
        server.auth_port,
    )
    assert reply is not None and reply.code == rp.AccessReject
    assert return_code(reply) == "h323-return-code=10"
    other = nas.send(
        nas.access_request(
            card["pin"], Calling_Station_Id="15550000001", Called_Station_Id=UK_NUMBER
        ),
        server.auth_port,
    )
    assert other is not None and other.code == rp.AccessAccept


def test_a_good_pin_clears_the_callers_failed_attempts(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    cards = deployment.create_cards(3, "5.00")
    ani = "15559990001"

    def attempt(pin: str) -> int:
        request = nas.access_request(pin, Calling_Station_Id=ani, Called_Station_Id=UK_NUMBER)
        reply = nas.send(request, server.auth_port)
        assert reply is not None
        return reply.code

    for card in cards[:2]:  # 4 wrong PINs, then a good one: below the limit of 5 each time
        assert [attempt("1234567897") for _ in range(4)] == [rp.AccessReject] * 4
        assert attempt(card["pin"]) == rp.AccessAccept
    assert attempt("1234567897") == rp.AccessReject
    assert attempt(cards[2]["pin"]) == rp.AccessAccept  # 9 wrong in all, yet no lockout


def test_pyrad_client_library_interoperates(deployment: Deployment, server: ServerProcess) -> None:
    from pyrad.client import Client

    card = deployment.create_cards(1, "5.00")[0]
    client = Client(
        server="127.0.0.1",
        authport=server.auth_port,
        acctport=server.acct_port,
        secret=b"s3cret",
        dict=DICTIONARY,
    )
    client.timeout = 2
    client.retries = 1
    req = client.CreateAuthPacket(code=rp.AccessRequest, User_Name=card["pin"])
    req["Called-Station-Id"] = UK_NUMBER
    req.add_message_authenticator()
    reply = client.SendPacket(req)
    assert reply.code == rp.AccessAccept
    assert reply["Session-Timeout"] == [4242]


def test_unknown_source_port_probe_does_not_stall(server: ServerProcess) -> None:
    # a burst of junk from a known NAS address must not stop the server from answering
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(200):
        sock.sendto(bytes([1, i % 256]) + b"\xff" * 30, ("127.0.0.1", server.auth_port))
    sock.close()
    nas = Radius()
    pkt = rp.AuthPacket(code=rp.StatusServer, secret=nas.secret, dict=DICTIONARY)
    pkt.add_message_authenticator()
    assert nas.send_raw(pkt.RequestPacket(), server.auth_port) is not None
    nas.close()
