"""Accounting over real UDP against the real server, on SQLite and on PostgreSQL + Redis.

Set up with ``prepaidctl`` as an operator would, spoken to as a NAS would (pyrad packets and
FreeRADIUS ``radclient``), and checked with ``prepaidctl`` (card show, report card-bill, sessions).
Every test uses its own cards and its own NAS socket; tests that restart the server, take the
database away or change the reaper's timing run their own server process on the module's database.

Money at the example rate (0.07/min, fee 0.05, 30/6): cost(125 s) = 0.1970 (126 s billed),
cost(65 s) = 0.1270 (66 s billed), cost(120 s) = 0.1900 (120 s billed).
"""

from __future__ import annotations

import re
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyrad import packet as rp
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support import Deployment, Radius, ServerProcess, radclient

pytestmark = pytest.mark.e2e

UK_NUMBER = "441234567890"
PREMIUM_NUMBER = "88123456"  # rate group "premium": 60.00/min, 1/1 increments -> 1.00 a second
REBOOT_NAS = "127.0.0.3"  # a second NAS, so its Accounting-On touches no other test's calls
QUIET = {"PREPAID_BILLING_REAP_INTERVAL_SECONDS": "3600"}  # servers that must not reap on their own
# Accounting-Requests are protected by their Request Authenticator; NAS devices send them without
# a Message-Authenticator even when they sign their Access-Requests; one that does sign them is
# tested too (test_stop_without_start_is_billed).
SIGN_ACCOUNTING = False


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    deployment.add_nas("gw1", profile="cisco")
    deployment.add_nas("gw-reboot", profile="generic", address=REBOOT_NAS)
    deployment.add_rates()
    deployment.add_rates("premium", ["88,Premium,60.00,0,1,1,0"])
    yield deployment.start_server(**QUIET)


@pytest.fixture
def nas() -> Iterator[Radius]:
    client = Radius()
    yield client
    client.close()


@pytest.fixture
def rebooting_nas() -> Iterator[Radius]:
    """The second NAS: sends from REBOOT_NAS to the server on 127.0.0.1."""
    client = Radius()  # Radius(host=...) would also send *to* that address
    client.sock.close()
    client.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sock.bind((REBOOT_NAS, 0))
    yield client
    client.close()


# ------------------------------------------------------------------------------------ helpers
def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def caller() -> str:
    """A fresh caller number, so no call is ever matched to another test's grant by numbers."""
    return "1555" + "".join(str(secrets.randbelow(10)) for _ in range(7))


def authorize(nas: Radius, port: int, pin: str, called: str = UK_NUMBER, **attrs: Any) -> rp.Packet:
    reply = nas.send(nas.access_request(pin, Called_Station_Id=called, **attrs), port)
    assert reply is not None, "no reply to the Access-Request"
    assert reply.code == rp.AccessAccept, reply.get("Reply-Message")
    return reply


@dataclass
class Call:
    """One call as a NAS reports it: the attributes every accounting packet of it carries."""

    nas: Radius
    port: int  # the server's accounting port
    pin: str
    klass: bytes | None = None  # the Class from the Access-Accept, echoed unless told not to
    session_id: str = field(default_factory=lambda: unique("sess"))
    called: str = UK_NUMBER
    calling: str = field(default_factory=caller)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. h323 VSAs

    def auth(self, server: ServerProcess, send_session_id: bool = True, **attrs: Any) -> rp.Packet:
        if send_session_id:
            attrs.setdefault("Acct_Session_Id", self.session_id)
        reply = authorize(
            self.nas,
            server.auth_port,
            self.pin,
            self.called,
            Calling_Station_Id=self.calling,
            **self.extra,
            **attrs,
        )
        self.klass = reply["Class"][0]
        return reply

    def packet(
        self, status: str, echo_class: bool = True, sign: bool = SIGN_ACCOUNTING, **attrs: Any
    ) -> rp.AcctPacket:
        fields = {
            "Acct_Status_Type": status,
            "Acct_Session_Id": self.session_id,
            "User_Name": self.pin,
            "Calling_Station_Id": self.calling,
            "Called_Station_Id": self.called,
            **self.extra,
            **attrs,
        }
        pkt = self.nas.accounting_request(**fields)
        if echo_class and self.klass is not None:
            pkt["Class"] = self.klass
        if sign:
            pkt.add_message_authenticator()
        return pkt

    def send(self, status: str, echo_class: bool = True, **attrs: Any) -> bytes:
        """Send one accounting packet, assert the ACK, and return the bytes sent."""
        pkt = self.packet(status, echo_class, **attrs)
        data = pkt.RequestPacket()
        assert_acked(self.nas, pkt, data, self.port)
        return data


def assert_acked(
    nas: Radius, pkt: rp.Packet, data: bytes, port: int, timeout: float = 2.0
) -> bytes:
    raw = nas.send_raw(data, port, timeout)
    assert raw is not None, "no Accounting-Response"
    reply = pkt.CreateReply(packet=raw)
    assert reply.code == rp.AccountingResponse
    assert pkt.VerifyReply(reply, raw, enforce_ma=True), "reply failed verification"
    assert raw[20] == 80, "Message-Authenticator must be the first attribute"
    return raw


def accounting_on(nas: Radius, port: int) -> None:
    pkt = nas.accounting_request(Acct_Status_Type="Accounting-On", Acct_Session_Id="0")
    if SIGN_ACCOUNTING:
        pkt.add_message_authenticator()
    assert_acked(nas, pkt, pkt.RequestPacket(), port)


def card(deployment: Deployment, serial: str) -> dict[str, Any]:
    shown: dict[str, Any] = deployment.ctl_json("card", "show", serial)
    return shown


def card_bill(deployment: Deployment, serial: str) -> dict[str, Any]:
    bill: dict[str, Any] = deployment.ctl_json("report", "card-bill", serial)
    return bill


def billed_rows(bill: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in bill["rows"] if r["leg"] == "billed"]


def live_calls(deployment: Deployment, serial: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = deployment.ctl_json("sessions", "list", "--card", serial)
    return calls


def database_url(deployment: Deployment) -> str:
    url = deployment.env.get("PREPAID_DATABASE_URL")
    return url or f"sqlite:///{deployment.env['PREPAID_SERVER_STATE_DIR']}/prepaid-aaa.sqlite3"


def cdr_flags(deployment: Deployment, serial: str) -> list[dict[str, Any]]:
    """What the CLI report does not show: over_grant and close_reason of each CDR."""
    engine = create_engine(database_url(deployment))
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    text(
                        "SELECT c.leg, c.over_grant, c.close_reason, c.granted_seconds, c.duration_seconds "
                        "FROM cdrs c JOIN cards k ON k.id = c.card_id WHERE k.serial = :serial ORDER BY c.id"
                    ),
                    {"serial": int(serial)},
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def assert_one_call_of_125s(deployment: Deployment, serial: str) -> None:
    assert card(deployment, serial)["balance"] == "4.8030"
    bill = card_bill(deployment, serial)
    assert bill["calls"] == 1, bill
    (row,) = bill["rows"]
    assert row["cost"] == "0.1970"
    assert row["billed_seconds"] == 126
    assert row["duration_seconds"] == 125
    assert row["balance_after"] == "4.8030"


# ------------------------------------------------------------------------------------ Done-when
def test_done_when_radclient_call_is_billed_once_whatever_the_duplicates(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    """README quick start: radclient signs its Access-Request, its accounting is not signed."""
    c = deployment.create_cards(1, "5.00")[0]
    calling, session_id = caller(), unique("rc")
    out = radclient(
        server.auth_port,
        "auth",
        f'User-Name = "{c["pin"]}"\nCalled-Station-Id = "{UK_NUMBER}"\n'
        f'Calling-Station-Id = "{calling}"\nMessage-Authenticator = 0x00\n',
    )
    assert "Received Access-Accept" in out.stdout, out.stdout + out.stderr
    assert "Session-Timeout = 4242" in out.stdout
    found = re.search(r"Class = 0x([0-9a-fA-F]+)", out.stdout)
    assert found, out.stdout
    klass = bytes.fromhex(found.group(1))
    assert klass.startswith(b"paaa:")

    common = (
        f'User-Name = "{c["pin"]}"\nCalled-Station-Id = "{UK_NUMBER}"\nCalling-Station-Id = "{calling}"\n'
        f'Acct-Session-Id = "{session_id}"\nClass = 0x{klass.hex()}\n'
    )
    start = radclient(server.acct_port, "acct", "Acct-Status-Type = Start\n" + common)
    assert "Received Accounting-Response" in start.stdout, start.stdout + start.stderr
    stop = radclient(
        server.acct_port, "acct", "Acct-Status-Type = Stop\nAcct-Session-Time = 125\n" + common
    )
    assert "Received Accounting-Response" in stop.stdout, stop.stdout + stop.stderr
    server.wait_for("radius.request", outcome="billed", serial=c["serial"])
    assert_one_call_of_125s(deployment, c["serial"])

    # The same Stop from pyrad, three times with the very same bytes, then once more as a NAS
    # that gave up waiting would send it: new Identifier, bumped Acct-Delay-Time.
    call = Call(nas, server.acct_port, c["pin"], klass, session_id, calling=calling)
    pkt = call.packet("Stop", Acct_Session_Time=125)
    data = pkt.RequestPacket()
    replies = [assert_acked(nas, pkt, data, server.acct_port) for _ in range(3)]
    assert replies[0] == replies[1] == replies[2]
    again = call.packet("Stop", Acct_Session_Time=125, Acct_Delay_Time=5)
    again.id = (pkt.id + 1) % 256
    assert_acked(nas, again, again.RequestPacket(), server.acct_port)
    assert_one_call_of_125s(deployment, c["serial"])
    outcomes = [
        e["outcome"]
        for e in server.events("radius.request")
        if e.get("serial") == c["serial"] and e.get("packet") == "accounting-request"
    ]
    assert outcomes.count("billed") == 1, outcomes


def test_duplicate_stop_after_a_server_restart_is_acked_and_not_billed_again(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    first = deployment.start_server(**QUIET)
    try:
        c = deployment.create_cards(1, "5.00")[0]
        call = Call(nas, first.acct_port, c["pin"])
        call.auth(first)
        call.send("Start")
        stop = call.packet("Stop", Acct_Session_Time=125)
        data = stop.RequestPacket()
        assert_acked(nas, stop, data, first.acct_port)
    finally:
        first.stop()
    second = deployment.start_server(**QUIET)
    try:
        assert_acked(nas, stop, data, second.acct_port)  # the very same bytes
        retry = call.packet("Stop", Acct_Session_Time=125, Acct_Delay_Time=30)
        retry.id = (stop.id + 1) % 256
        call.port = second.acct_port
        assert_acked(nas, retry, retry.RequestPacket(), second.acct_port)
    finally:
        second.stop()
    assert_one_call_of_125s(deployment, c["serial"])


# ------------------------------------------------------------------------------------ ordering
def test_stop_without_start_is_billed(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00")[0]
    call = Call(nas, server.acct_port, c["pin"])
    call.auth(server)
    call.send("Stop", sign=True, Acct_Session_Time=125)  # a NAS that signs its accounting too
    assert_one_call_of_125s(deployment, c["serial"])
    assert live_calls(deployment, c["serial"]) == []


def test_stop_without_start_and_without_class_is_billed_once(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00")[0]
    call = Call(nas, server.acct_port, c["pin"])
    call.auth(server)  # the Access-Request carries the Acct-Session-Id
    first = call.packet("Stop", echo_class=False, Acct_Session_Time=125)
    assert_acked(nas, first, first.RequestPacket(), server.acct_port)
    second = call.packet("Stop", echo_class=False, Acct_Session_Time=125, Acct_Delay_Time=10)
    second.id = (first.id + 1) % 256
    assert_acked(nas, second, second.RequestPacket(), server.acct_port)
    assert_one_call_of_125s(deployment, c["serial"])
    assert live_calls(deployment, c["serial"]) == []


def test_interim_before_start_opens_the_call_and_accounting_on_bills_the_lost_stop(
    deployment: Deployment, server: ServerProcess, rebooting_nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00")[0]  # Max Calls 1
    call = Call(rebooting_nas, server.acct_port, c["pin"])
    call.auth(server)
    call.send("Interim-Update", Acct_Session_Time=65)
    (live,) = live_calls(deployment, c["serial"])
    assert live["state"] == "started"
    assert live["started_at"] is not None
    # The Stop is lost; the NAS reboots and says so.
    accounting_on(rebooting_nas, server.acct_port)
    assert live_calls(deployment, c["serial"]) == []
    assert card(deployment, c["serial"])["balance"] == "4.8730"
    bill = card_bill(deployment, c["serial"])
    assert bill["calls"] == 1, bill
    (row,) = bill["rows"]
    assert (row["duration_seconds"], row["billed_seconds"], row["cost"]) == (65, 66, "0.1270")
    # the reservation is released: the Max Calls 1 card can call again
    again = authorize(rebooting_nas, server.auth_port, c["pin"], Calling_Station_Id=caller())
    assert again["Session-Timeout"][0] > 0


def test_start_after_stop_does_not_reopen_the_call(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00")[0]
    call = Call(nas, server.acct_port, c["pin"])
    call.auth(server)
    call.send("Stop", Acct_Session_Time=125)
    call.send("Start", Acct_Delay_Time=130)  # the late Start, delayed in some queue
    assert live_calls(deployment, c["serial"]) == []
    assert_one_call_of_125s(deployment, c["serial"])
    # and the card is free for a new call (Max Calls 1)
    authorize(nas, server.auth_port, c["pin"], Calling_Station_Id=caller())


def test_acct_session_id_reused_by_a_rebooted_nas_is_a_new_call(
    deployment: Deployment, server: ServerProcess, rebooting_nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00")[0]
    first = Call(rebooting_nas, server.acct_port, c["pin"], session_id="A1")
    first.auth(server)
    first.send("Start", echo_class=False)
    first.send("Stop", echo_class=False, Acct_Session_Time=125)
    accounting_on(rebooting_nas, server.acct_port)
    second = Call(rebooting_nas, server.acct_port, c["pin"], session_id="A1")
    second.auth(server)
    assert second.klass != first.klass
    second.send("Start", echo_class=False)
    second.send("Stop", echo_class=False, Acct_Session_Time=125)
    bill = card_bill(deployment, c["serial"])
    assert bill["calls"] == 2, bill
    assert [r["cost"] for r in bill["rows"]] == ["0.1970", "0.1970"]
    assert card(deployment, c["serial"])["balance"] == "4.6060"
    assert live_calls(deployment, c["serial"]) == []


# ------------------------------------------------------------------------------------ rating
def test_stop_without_session_time_is_rated_from_event_timestamps(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00")[0]
    call = Call(nas, server.acct_port, c["pin"])
    call.auth(server)
    t0 = int(time.time()) - 200
    call.send("Start", Event_Timestamp=t0)
    call.send("Stop", Event_Timestamp=t0 + 125)
    assert_one_call_of_125s(deployment, c["serial"])


def test_call_longer_than_its_grant_is_billed_in_full_and_flagged(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    c = deployment.create_cards(1, "0.10")[0]
    call = Call(nas, server.acct_port, c["pin"])
    reply = call.auth(server)
    granted = reply["Session-Timeout"][0]
    assert granted == 42  # cost(42) = 0.0990 <= 0.10 < cost(48) = 0.1060
    call.send("Start")
    call.send("Stop", Acct_Session_Time=120)
    shown = card(deployment, c["serial"])
    assert shown["balance"] == "-0.0900"
    bill = card_bill(deployment, c["serial"])
    assert bill["calls"] == 1, bill
    (row,) = bill["rows"]
    assert (row["duration_seconds"], row["billed_seconds"], row["cost"]) == (120, 120, "0.1900")
    (flags,) = cdr_flags(deployment, c["serial"])
    assert flags["over_grant"] in (True, 1)
    assert flags["granted_seconds"] == 42
    # nothing left: the next call is refused
    again = nas.send(nas.access_request(c["pin"], Called_Station_Id=UK_NUMBER), server.auth_port)
    assert again is not None and again.code == rp.AccessReject


# ------------------------------------------------------------------------------------ card types
def test_unlimited_card_call_is_recorded_at_zero_cost(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00", type="unlimited", validity_days="30")[0]
    call = Call(nas, server.acct_port, c["pin"])
    call.auth(server)
    call.send("Start")
    call.send("Stop", Acct_Session_Time=125)
    assert card(deployment, c["serial"])["balance"] == "5.0000"
    bill = card_bill(deployment, c["serial"])
    assert bill["calls"] == 1, bill
    (row,) = bill["rows"]
    assert row["cost"] == "0.0000"
    assert row["duration_seconds"] == 125


def test_disposable_card_is_retired_after_its_first_call(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    c = deployment.create_cards(1, "5.00", type="disposable")[0]
    call = Call(nas, server.acct_port, c["pin"])
    call.auth(server)
    call.send("Start")
    call.send("Stop", Acct_Session_Time=125)
    shown = card(deployment, c["serial"])
    assert shown["state"] == "retired"
    assert shown["balance"] == "4.8030"
    again = nas.send(nas.access_request(c["pin"], Called_Station_Id=UK_NUMBER), server.auth_port)
    assert again is not None and again.code == rp.AccessReject


# ------------------------------------------------------------------------------------ multi-leg
@pytest.mark.parametrize("echo_class", [True, False], ids=["class-echoed", "conf-id-only"])
def test_cisco_two_legs_are_billed_once(
    deployment: Deployment, server: ServerProcess, nas: Radius, echo_class: bool
) -> None:
    c = deployment.create_cards(1, "5.00")[0]
    conf = " ".join(secrets.token_hex(4).upper() for _ in range(4))
    conf_attr = {"h323_conf_id": f"h323-conf-id={conf}"}
    answer = Call(nas, server.acct_port, c["pin"], extra=dict(conf_attr))
    answer.auth(server)
    originate = Call(
        nas, server.acct_port, c["pin"], answer.klass, calling=answer.calling, extra=dict(conf_attr)
    )
    answer.extra["h323_call_origin"] = "h323-call-origin=answer"
    originate.extra["h323_call_origin"] = "h323-call-origin=originate"
    answer.send("Start", echo_class)
    answer.send("Stop", echo_class, Acct_Session_Time=130)
    originate.send("Start", echo_class)
    originate.send("Stop", echo_class, Acct_Session_Time=125)
    # a retransmitted answer-leg Stop (new Identifier) adds nothing
    answer.send("Stop", echo_class, Acct_Session_Time=130, Acct_Delay_Time=3)
    assert card(deployment, c["serial"])["balance"] == "4.8030"
    bill = card_bill(deployment, c["serial"])
    (billed,) = billed_rows(bill)
    assert (billed["duration_seconds"], billed["billed_seconds"], billed["cost"]) == (
        125,
        126,
        "0.1970",
    )
    others = [r for r in bill["rows"] if r["leg"] != "billed"]
    assert len(others) <= 1, bill
    for row in others:
        assert row["cost"] == "0.0000"
        assert row["duration_seconds"] == 130
    assert bill["total_cost"] == "0.1970"
    assert live_calls(deployment, c["serial"]) == []


# ------------------------------------------------------------------------------------ stale calls
def test_grant_never_started_is_released_by_the_reaper(
    deployment: Deployment, server: ServerProcess
) -> None:
    reaper = deployment.start_server(
        PREPAID_BILLING_START_TIMEOUT_SECONDS="1", PREPAID_BILLING_REAP_INTERVAL_SECONDS="0.5"
    )
    client = Radius()
    try:
        c = deployment.create_cards(1, "5.00")[0]  # Max Calls 1
        first = Call(client, reaper.acct_port, c["pin"])
        first.auth(reaper)
        busy = client.send(
            client.access_request(c["pin"], Called_Station_Id=UK_NUMBER), reaper.auth_port
        )
        assert busy is not None and busy.code == rp.AccessReject
        assert busy["h323-return-code"] == ["h323-return-code=3"]
        reaper.wait_for("sessions.reaped", timeout=15)
        assert live_calls(deployment, c["serial"]) == []
        authorize(client, reaper.auth_port, c["pin"])
        assert (
            card(deployment, c["serial"])["balance"] == "5.0000"
        )  # a released grant costs nothing
        # ... but if that call did happen after all, its late Stop is still billed, once
        first.send("Stop", Acct_Session_Time=125)
        assert_one_call_of_125s(deployment, c["serial"])
    finally:
        client.close()
        reaper.stop()


def test_sessions_reap_bills_silent_started_calls_from_last_progress(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    srv = deployment.start_server(PREPAID_BILLING_STALE_MARGIN_SECONDS="0", **QUIET)
    try:
        # premium: 1.00 a second, so 3.00 buys a 3 s grant and a call goes silent quickly
        only_start, with_interim = deployment.create_cards(2, "3.00", group="premium")
        calls = []
        for c in (only_start, with_interim):
            call = Call(nas, srv.acct_port, c["pin"], called=PREMIUM_NUMBER)
            assert call.auth(srv)["Session-Timeout"] == [3]
            call.send("Start")
            calls.append(call)
        calls[1].send("Interim-Update", Acct_Session_Time=2)
        silent_from = time.monotonic() + 3  # both deadlines: the 3 s grant, plus a margin of 0
        closed = 0
        deadline = time.monotonic() + 20
        while closed < 2 and time.monotonic() < deadline:
            time.sleep(max(0.0, silent_from - time.monotonic()))
            out = deployment.ctl("sessions", "reap").stdout
            found = re.search(r"closed (\d+)", out)
            assert found, out
            closed += int(found.group(1))
            silent_from = time.monotonic() + 0.5
        assert closed == 2
        still_live = {x["serial"] for x in deployment.ctl_json("sessions", "list")}
        assert not {only_start["serial"], with_interim["serial"]} & still_live
        (row,) = card_bill(deployment, with_interim["serial"])["rows"]
        assert (row["duration_seconds"], row["cost"]) == (2, "2.0000")
        assert card(deployment, with_interim["serial"])["balance"] == "1.0000"
        (flags,) = cdr_flags(deployment, with_interim["serial"])
        assert flags["close_reason"] == "reaped"
        (flags,) = cdr_flags(deployment, only_start["serial"])
        assert (flags["close_reason"], flags["duration_seconds"]) == (
            "reaped",
            0,
        )  # no progress known
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------ database down
class Outage:
    """Take the server's database away and give it back, without touching the shared servers.

    PostgreSQL: refuse new connections to this test's database and end the open ones.
    SQLite: hold the file's write lock, as another writer would (the server's busy wait is
    shortened so it gives up quickly).
    """

    def __init__(self, deployment: Deployment) -> None:
        self.url = database_url(deployment)
        self._lock: sqlite3.Connection | None = None
        self._admin: Any = None
        self.server_settings: dict[str, str] = {"PREPAID_DATABASE_SQLITE_BUSY_SECONDS": "1"}

    def begin(self) -> None:
        if self.url.startswith("sqlite"):
            self._lock = sqlite3.connect(make_url(self.url).database, isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")
            return
        parsed = make_url(self.url)
        self._admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{parsed.database}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": parsed.database},
            )

    def end(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None
        if self._admin is not None:
            name = make_url(self.url).database
            with self._admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            self._admin.dispose()
            self._admin = None


def test_stop_is_acknowledged_only_after_commit_when_the_database_is_down(
    deployment: Deployment, server: ServerProcess, nas: Radius
) -> None:
    outage = Outage(deployment)
    srv = deployment.start_server(**QUIET, **outage.server_settings)
    try:
        c = deployment.create_cards(1, "5.00")[0]
        call = Call(nas, srv.acct_port, c["pin"])
        call.auth(srv)
        call.send("Start")
        stop = call.packet("Stop", Acct_Session_Time=125)
        data = stop.RequestPacket()

        outage.begin()
        assert nas.send_raw(data, srv.acct_port, timeout=3) is None
        assert srv.proc.poll() is None, "the server died with its database"
        srv.wait_for("radius.drop", reason="database-error")

        outage.end()
        # The NAS retransmits the very same bytes: answered now that the database is back.
        raw = nas.send_raw(data, srv.acct_port, timeout=3)
        assert raw is not None, "no Accounting-Response once the database is back"
        reply = stop.CreateReply(packet=raw)
        assert reply.code == rp.AccountingResponse
        assert stop.VerifyReply(reply, raw, enforce_ma=True)
        assert nas.send_raw(data, srv.acct_port) == raw  # and once more: the cached reply
    finally:
        outage.end()
        srv.stop()
    assert_one_call_of_125s(deployment, c["serial"])
