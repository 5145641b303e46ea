"""Two server instances on one PostgreSQL and one Redis, under a storm on a few shared cards.

NAS threads authorize, start and stop calls against both instances at once, retransmitting
every request to the *other* instance too (a NAS failing over), and re-sending Stops with new
identifiers. Every call uses its whole grant. Afterwards:

* no card is overdrawn: granted seconds never exceeded what the balance covered;
* every accepted call has exactly one CDR (debited exactly once);
* the balance change, the CDR costs and the call ledger entries agree to the last decimal;
* whenever both instances answered the same request, they answered with the same bytes.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from pyrad import packet as rp
from support import Deployment, Radius, ServerProcess

pytestmark = pytest.mark.e2e

UK_NUMBER = "441234567890"
CARDS = 3
CARD_VALUE = Decimal("1.00")  # 0.05 + 0.07/min: about 13 minutes of calls per card
THREADS = 6
CALLS_PER_THREAD = 12


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str
) -> Iterator[tuple[Deployment, ServerProcess, ServerProcess]]:
    dep = Deployment(
        tmp_path_factory.mktemp("shared"),
        {
            "PREPAID_SERVER_STATE_DIR": str(tmp_path_factory.mktemp("state")),
            "PREPAID_DATABASE_URL": postgres_url,
            "PREPAID_REDIS_URL": redis_url,
            "PREPAID_REDIS_PREFIX": f"paaa-test-{uuid.uuid4().hex[:8]}:",
        },
    )
    dep.ctl("db", "upgrade")
    dep.add_nas("gw1", profile="cisco")
    dep.add_rates()
    # One batch thread (the default) in one instance, two batch threads in the other.
    a = dep.start_server()
    b = dep.start_server(PREPAID_RADIUS_CONCURRENT_BATCHES="2")
    try:
        yield dep, a, b
    finally:
        dep.stop_all()


class Nas:
    """One NAS thread: a socket, and the exchange 'send to one, retransmit to the other'."""

    def __init__(self, a: ServerProcess, b: ServerProcess, seed: int) -> None:
        self.radius = Radius()
        self.a, self.b = a, b
        self.rng = random.Random(seed)
        self.mismatches: list[str] = []

    def exchange(self, pkt: rp.Packet, acct: bool) -> rp.Packet | None:
        first, second = (self.a, self.b) if self.rng.random() < 0.5 else (self.b, self.a)
        port = (lambda s: s.acct_port) if acct else (lambda s: s.auth_port)
        data = pkt.RequestPacket()
        sock = self.radius.sock
        mode = self.rng.random()
        sock.sendto(data, ("127.0.0.1", port(first)))
        if mode < 0.4:
            sock.sendto(data, ("127.0.0.1", port(second)))  # failover while the first works
        replies: list[bytes] = []
        sock.settimeout(3.0)
        for attempt in range(4):
            try:
                raw, _ = sock.recvfrom(8192)
            except TimeoutError:
                if replies:
                    break
                sock.sendto(data, ("127.0.0.1", port(first if attempt % 2 else second)))
                continue
            if raw[1] != data[1]:
                continue  # a late duplicate of an earlier exchange
            replies.append(raw)
            sock.settimeout(0.3)  # collect the other instance's answer, if any
        if not replies:
            return None
        if mode > 0.8:
            # The reply was lost on its way: the NAS retransmits to its other server, which
            # must replay the very same reply from the shared cache.
            sock.sendto(data, ("127.0.0.1", port(second)))
            sock.settimeout(3.0)
            while True:
                raw, _ = sock.recvfrom(8192)
                if raw[1] == data[1]:
                    replies.append(raw)
                    break
        if any(r != replies[0] for r in replies):
            self.mismatches.append(f"{pkt.code}: different replies")
        reply = pkt.CreateReply(packet=replies[0])
        assert pkt.VerifyReply(reply, replies[0], enforce_ma=not acct)
        return reply


def storm(nas: Nas, pins: list[str], calls: list[tuple[str, int]], lock: threading.Lock) -> None:
    for _ in range(CALLS_PER_THREAD):
        pin = nas.rng.choice(pins)
        auth = nas.radius.access_request(
            pin, Called_Station_Id=UK_NUMBER, Calling_Station_Id="15551230000"
        )
        reply = nas.exchange(auth, acct=False)
        assert reply is not None, "the pair must answer every Access-Request"
        if reply.code != rp.AccessAccept:
            continue
        granted = int(reply["Session-Timeout"][0])
        session = uuid.uuid4().hex
        base = {
            "Acct_Session_Id": session,
            "Class": reply["Class"][0],
            "Called_Station_Id": UK_NUMBER,
        }
        start = nas.radius.accounting_request(Acct_Status_Type="Start", **base)
        assert nas.exchange(start, acct=True) is not None
        stop = nas.radius.accounting_request(
            Acct_Status_Type="Stop", Acct_Session_Time=granted, **base
        )
        assert nas.exchange(stop, acct=True) is not None
        again = nas.radius.accounting_request(
            Acct_Status_Type="Stop", Acct_Session_Time=granted, Acct_Delay_Time=5, **base
        )
        assert nas.exchange(again, acct=True) is not None  # a new identifier: not a retransmission
        with lock:
            calls.append((pin, granted))


def test_two_instances_keep_money_right_under_a_storm(
    pair: tuple[Deployment, ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    dep, a, b = pair
    cards = dep.create_cards(CARDS, str(CARD_VALUE), max_calls="3")
    pins = [c["pin"] for c in cards]
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()
    nases = [Nas(a, b, seed) for seed in range(THREADS)]
    errors: list[BaseException] = []

    def run(n: Nas) -> None:
        try:
            storm(n, pins, calls, lock)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert not [m for n in nases for m in n.mismatches]
    assert calls, "the storm granted no call at all"

    for c in cards:
        shown = dep.ctl_json("card", "show", c["serial"])
        balance = Decimal(shown["balance"])
        bill = dep.ctl_json("report", "card-bill", c["serial"])
        rows = [r for r in bill["rows"] if r["leg"] == "billed"]
        history = dep.ctl_json("card", "history", c["serial"])
        entries = history["entries"] if isinstance(history, dict) else history
        ledger_calls = sum(Decimal(e["amount"]) for e in entries if e["kind"] == "call")
        cdr_total = sum(Decimal(r["cost"]) for r in rows)
        accepted = [g for pin, g in calls if pin == c["pin"]]
        assert balance >= 0, f"card {c['serial']} overdrawn: grants exceeded the balance"
        assert len(rows) == len(accepted), "every accepted call is billed exactly once"
        assert sorted(r["duration_seconds"] for r in rows) == sorted(accepted)
        assert cdr_total == CARD_VALUE - balance
        assert ledger_calls == -cdr_total
    # the storm really exercised the shared paths: replies replayed from the other instance's
    # answer, and requests left to the instance already working on them
    events = a.events("radius.request") + b.events("radius.request")
    assert any(e.get("decision") == "replayed" for e in events)
    drops = a.events("radius.drop") + b.events("radius.drop")
    assert all(d["reason"] == "in-flight-elsewhere" for d in drops), drops[:3]
    duplicates = [e for e in events if e.get("outcome") == "duplicate"]
    assert duplicates, "re-sent Stops with new identifiers reached the database and were refused"
    for n in nases:
        n.radius.close()
