"""``prepaidctl report ...`` on SQLite and PostgreSQL: Bind Number Bill, Card Status, Revenue,
Liability and Suspicious usage, with calls written through the real billing path, the money
identity (revenue + liability + breakage == value issued + recharges, to the last decimal), and
a larger data set (2,000 cards, a few thousand CDRs) on which every report runs and agrees."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cli_support import (
    UK,
    Ctl,
    make_batch,
    make_group,
    make_nas,
    now_utc,
    unique,
)
from sqlalchemy import insert, select, update

from billing.calls import Accepted, Rejected
from billing.rating import Rate, billed_seconds, cost
from billing.storage.admin import Admin
from billing.storage.models import Card, Cdr, LedgerEntry

UK_RATE = Rate("44", Decimal("0.07"), Decimal("0.05"), 30, 6, 0)


def day(offset: int) -> date:
    return now_utc().date() + timedelta(days=offset)


def at(offset_days: int) -> str:
    return f"{day(offset_days).isoformat()}T12:00"


def total(rows: list[dict[str, Any]], field: str) -> Decimal:
    return sum((Decimal(r[field]) for r in rows), Decimal(0))


def sql_money(ctl: Ctl, sql: str, **params: object) -> Decimal:
    value = ctl.scalar(sql, **params)
    return Decimal(str(value or 0)).quantize(Decimal("0.0001"))


def fresh_ani() -> str:
    return "4420" + str(uuid.uuid4().int % 10**8).zfill(8)


# ---------------------------------------------------------------------------------- bind bill
def test_bind_bill(ctl: Ctl, tmp_path: Path) -> None:
    nas = make_nas(ctl)
    _, rows = make_batch(ctl, tmp_path, count=2)
    serial, pin = rows[0]["serial"], rows[0]["pin"]
    ani = fresh_ani()
    ctl("bind", "add", serial, "+" + ani)
    when = now_utc() - timedelta(hours=1)
    assert ctl.call(nas, when, 125, calling=ani) == Decimal("0.1970")
    assert ctl.call(nas, when + timedelta(minutes=5), 60, calling=ani) == Decimal("0.1200")
    ctl.call(nas, when + timedelta(minutes=9), 60, pin=rows[1]["pin"], calling=ani)  # by PIN
    ctl.call(nas, when + timedelta(minutes=12), 30, pin=pin, calling=fresh_ani())

    shown = "+" + ani[:2] + " " + ani[2:4] + " " + ani[4:]
    bill = ctl.json("report", "bind-bill", shown)
    assert bill["ani"] == ani
    assert bill["calls"] == 2
    assert bill["total_duration_seconds"] == 185
    assert bill["totals"] == [{"currency": "USD", "calls": 2, "cost": "0.3170"}]
    assert [(r["serial"], r["cost"], r["balance_after"]) for r in bill["rows"]] == [
        (serial, "0.1970", "4.8030"),
        (serial, "0.1200", "4.6830"),
    ]
    header = ctl("report", "bind-bill", ani, "--format", "csv").stdout.splitlines()[0]
    assert header.startswith("serial,started_at,calling_number,called_number,duration_seconds")
    table = ctl("report", "bind-bill", ani).stdout
    assert "2 calls, 185 s" in table and "0.3170 USD" in table
    assert "\n1 call, 60 s (60 s billed)" in ctl("report", "card-bill", rows[1]["serial"]).stdout
    later = ctl.json("report", "bind-bill", ani, "--from", day(1).isoformat())
    assert later["calls"] == 0 and later["rows"] == []
    assert ctl.json("report", "bind-bill", fresh_ani())["calls"] == 0
    assert "telephone number" in ctl.error("report", "bind-bill", "abc")


# ---------------------------------------------------------------------------------- status
def test_status_and_liability_by_batch(ctl: Ctl, tmp_path: Path) -> None:
    nas = make_nas(ctl)
    group = make_group(ctl, tmp_path)
    batch, rows = make_batch(ctl, tmp_path, count=5, group=group, activate=False)
    serials = [r["serial"] for r in rows]
    ctl("card", "activate", serials[0], serials[1], serials[2])
    ctl("card", "lock", serials[2])
    ctl.call(nas, now_utc() - timedelta(minutes=3), 125, pin=rows[0]["pin"])
    status = ctl.json("report", "status", "--batch", str(batch["id"]))
    assert status == [
        {
            "batch": batch["id"],
            "type": "standard",
            "value": "5.0000",
            "currency": "USD",
            "inactive": 2,
            "active": 2,
            "locked": 1,
            "expired": 0,
            "exhausted": 0,
            "retired": 0,
            "total": 5,
        }
    ]
    assert "5 cards in 1 batches" in ctl("report", "status", "--batch", str(batch["id"])).stdout
    liability = {r["batch"]: r for r in ctl.json("report", "liability")}[batch["id"]]
    assert liability["cards"] == 5 and liability["cards_with_balance"] == 5
    assert liability["liability"] == "24.8030"
    assert liability["overdrawn"] == "0.0000" and liability["in_expired_cards"] == "0.0000"
    assert "no batch" in ctl.error("report", "status", "--batch", "999999")


# ---------------------------------------------------------------------------------- suspicious
def test_suspicious_usage(ctl: Ctl, tmp_path: Path) -> None:
    nas_name = unique("gw")
    ctl(
        "nas", "add", nas_name, "--address", f"10.99.{uuid.uuid4().int % 250}.0/24", "--secret", "s"
    )
    nas = ctl.nas_id(nas_name)
    group = make_group(ctl, tmp_path)
    _, rows = make_batch(ctl, tmp_path, count=3, group=group)
    _, low = make_batch(ctl, tmp_path, count=1, group=group, value="0.30")
    now = now_utc() - timedelta(minutes=30)

    guesser, attacker = fresh_ani(), fresh_ani()
    for i in range(6):  # PINs that match no card
        result = ctl.authorize(nas, now, pin=f"9{i:011d}", calling=guesser)
        assert isinstance(result, Rejected)
    for _ in range(5):  # a card number with wrong PINs: locked at the fifth
        ctl.authorize(nas, now, pin=rows[0]["serial"], password="000000000000", calling=attacker)
    assert ctl.json("card", "show", rows[0]["serial"])["state"] == "locked"
    for i in range(5):  # one card, five callers
        ctl.call(nas, now + timedelta(minutes=i), 30, pin=rows[1]["pin"], calling=fresh_ani())
    granted = ctl.authorize(nas, now, pin=low[0]["pin"], calling=fresh_ani())
    assert isinstance(granted, Accepted)
    ctl.stop(nas, granted.token, now + timedelta(seconds=700), granted.session_seconds + 600)

    found = ctl.json(
        "report",
        "suspicious",
        "--since",
        day(0).isoformat(),
        "--min-failures",
        "5",
        "--ani-threshold",
        "3",
    )
    by_ani = {f["source"]: f for f in found["failures_by_ani"]}
    assert by_ani[guesser]["failures"] == 6 and by_ani[guesser]["unknown_pin"] == 6
    assert (by_ani[attacker]["wrong_pin"], by_ani[attacker]["card_locked"]) == (4, 1)
    by_nas = {f["source"]: f for f in found["failures_by_nas"]}
    assert by_nas[nas_name]["failures"] == 11
    many = {c["serial"]: c for c in found["cards_many_anis"]}
    assert many[rows[1]["serial"]]["distinct_anis"] == 5
    negative = {c["serial"]: c for c in found["negative_balances"]}
    assert Decimal(negative[low[0]["serial"]]["balance"]) < 0
    over = [c for c in found["over_grant_calls"] if c["serial"] == low[0]["serial"]]
    assert len(over) == 1 and over[0]["nas"] == nas_name
    assert over[0]["duration_seconds"] == over[0]["granted_seconds"] + 600

    strict = ctl.json(
        "report",
        "suspicious",
        "--since",
        day(0).isoformat(),
        "--min-failures",
        "7",
        "--ani-threshold",
        "5",
    )
    assert guesser not in {f["source"] for f in strict["failures_by_ani"]}
    assert rows[1]["serial"] not in {c["serial"] for c in strict["cards_many_anis"]}
    future = ctl.json("report", "suspicious", "--since", day(1).isoformat())
    assert future["failures_by_ani"] == [] and future["over_grant_calls"] == []
    assert future["negative_balances"]  # a balance is negative whatever the date

    csv_lines = ctl("report", "suspicious", "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "section,subject,count,amount,currency,first_at,last_at,detail"
    sections = {line.split(",")[0] for line in csv_lines[1:]}
    assert {
        "failures_by_ani",
        "failures_by_nas",
        "cards_many_anis",
        "negative_balances",
        "over_grant_calls",
    } <= sections
    table = ctl("report", "suspicious").stdout
    assert "PIN failures by calling number" in table and "Calls longer than granted" in table
    assert "at least 1" in ctl.error("report", "suspicious", "--min-failures", "0")


# ---------------------------------------------------------------------------------- identity
def test_money_adds_up_after_calls_recharge_transfer_and_expiry(
    make_ctl: Callable[[], Ctl], tmp_path: Path
) -> None:
    ctl = make_ctl()  # its own database: the totals below are the whole database's
    nas = make_nas(ctl)
    group = make_group(ctl, tmp_path)
    std, s_rows = make_batch(
        ctl, tmp_path, "--expires-on", day(2).isoformat(), count=3, group=group
    )
    rch, r_rows = make_batch(
        ctl,
        tmp_path,
        "--validity-days",
        "30",
        "--grace-days",
        "3",
        count=2,
        group=group,
        card_type="rechargeable",
        value="10",
    )
    when = now_utc() - timedelta(minutes=30)
    assert ctl.call(nas, when, 125, pin=s_rows[0]["pin"]) == Decimal("0.1970")
    assert ctl.call(nas, when, 300, pin=s_rows[1]["pin"]) == Decimal("0.4000")
    assert ctl.call(nas, when, 61, pin=r_rows[0]["pin"]) == Decimal("0.1270")
    ctl("card", "recharge", r_rows[0]["serial"], "7.50")
    ctl("card", "transfer", s_rows[2]["serial"], s_rows[0]["serial"])
    out = ctl("expire", "run", "--now", at(3)).stdout
    assert "expired 2 cards; forfeited the balance of 2 cards (14.4030 USD)" in out

    revenue = ctl.json("report", "revenue", "--by", "type")
    liability = ctl.json("report", "liability")
    issued = sum(
        (Decimal(ctl.json("batch", "show", str(b["id"]))["value_issued"]) for b in (std, rch)),
        Decimal(0),
    )
    call_revenue = total(revenue, "call_revenue")
    breakage = total(revenue, "breakage")
    recharges = total(revenue, "recharges")
    owed = total(liability, "liability")
    assert (call_revenue, breakage, recharges, owed, issued) == (
        Decimal("0.7240"),
        Decimal("14.4030"),
        Decimal("7.5000"),
        Decimal("27.3730"),
        Decimal("35.0000"),
    )
    assert total(liability, "overdrawn") == 0
    assert call_revenue + owed + breakage == issued + recharges
    by_type = {r["type"]: r for r in revenue}
    assert (by_type["standard"]["calls"], by_type["rechargeable"]["calls"]) == (2, 1)
    assert by_type["rechargeable"]["billed_seconds"] == 66
    assert by_type["rechargeable"]["billed_minutes"] == "1.1000"
    assert by_type["standard"]["breakage"] == "14.4030"

    # the same money, grouped otherwise
    for by in ("denomination", "batch", "day"):
        rows = ctl.json("report", "revenue", "--by", by)
        assert total(rows, "call_revenue") == call_revenue, by
        assert total(rows, "breakage") == breakage, by
        assert total(rows, "recharges") == recharges, by
        assert sum(r["calls"] for r in rows) == 3, by
    by_day = {r["day"]: r for r in ctl.json("report", "revenue", "--by", "day")}
    assert by_day[day(3).isoformat()]["breakage"] == "14.4030"
    assert by_day[day(3).isoformat()]["calls"] == 0
    by_denomination = {
        r["denomination"]: r for r in ctl.json("report", "revenue", "--by", "denomination")
    }
    assert by_denomination["10.0000"]["recharges"] == "7.5000"
    # a period: only the expiry day
    window = ctl.json(
        "report",
        "revenue",
        "--by",
        "batch",
        "--from",
        day(3).isoformat(),
        "--to",
        day(3).isoformat(),
    )
    assert [(r["batch"], r["calls"], r["breakage"]) for r in window] == [(std["id"], 0, "14.4030")]
    table = ctl("report", "revenue", "--by", "batch").stdout
    assert "USD: 3 calls, call revenue 0.7240, recharges 7.5000, breakage 14.4030" in table
    assert "total liability: 27.3730 USD" in ctl("report", "liability").stdout
    # a second expiry run changes nothing
    assert (
        "expired 0 cards; forfeited the balance of 0 cards"
        in ctl("expire", "run", "--now", at(3)).stdout
    )
    assert total(ctl.json("report", "revenue"), "breakage") == breakage


# ---------------------------------------------------------------------------------- volume
def _synthetic_calls(
    ctl: Ctl, nas: int, card_ids: list[int], n: int, start: datetime, bound_ani: str
) -> dict[str, Any]:
    """``n`` calls billed as the server bills them (CDR, call ledger entry, balance), written
    in bulk: the real path costs two transactions a call, too slow for thousands."""
    rng = random.Random(4242)
    callers = [fresh_ani() for _ in range(300)]
    with ctl.db.transaction() as s:
        balances = dict(s.execute(select(Card.id, Card.balance).where(Card.id.in_(card_ids))).all())
    cdrs, ledger, flagged, ani_calls = [], [], 0, 0
    for i in range(n):
        card_id = rng.choice(card_ids)
        seconds = rng.randint(0, 900)
        over = i % 97 == 0
        price = cost(UK_RATE, seconds)
        if price > balances[card_id] and not over:
            seconds, price = 0, cost(UK_RATE, 0)
        balances[card_id] -= price
        stopped = start + timedelta(seconds=i * 251)
        via_ani = i % 50 == 0
        ani_calls += via_ani
        flagged += over
        key = uuid.uuid4().hex
        cdrs.append(
            {
                "call_key": key,
                "card_id": card_id,
                "nas_id": nas,
                "leg": "billed",
                "auth_method": "ani" if via_ani else "pin",
                "calling_number": bound_ani if via_ani else rng.choice(callers),
                "called_number": UK,
                "rate_prefix": "44",
                "price_per_minute": Decimal("0.07"),
                "connection_fee": Decimal("0.05"),
                "started_at": stopped - timedelta(seconds=seconds),
                "stopped_at": stopped,
                "duration_seconds": seconds,
                "billed_seconds": billed_seconds(UK_RATE, seconds),
                "granted_seconds": max(0, seconds - 30) if over else seconds + 60,
                "cost": price,
                "balance_after": balances[card_id],
                "over_grant": over,
                "close_reason": "stop",
                "created_at": stopped,
            }
        )
        if i % 10 == 0:  # the other leg of a two-leg NAS: recorded, never billed
            cdrs.append(
                {
                    **cdrs[-1],
                    "call_key": uuid.uuid4().hex,
                    "leg": "other",
                    "cost": Decimal(0),
                    "over_grant": False,
                    "billed_seconds": 0,
                }
            )
        ledger.append((key, card_id, price, balances[card_id], stopped))
    with ctl.db.transaction() as s:
        s.execute(insert(Cdr), cdrs)
        ids = dict(s.execute(select(Cdr.call_key, Cdr.id).where(Cdr.leg == "billed")).all())
        s.execute(
            insert(LedgerEntry),
            [
                {
                    "card_id": c,
                    "kind": "call",
                    "amount": -p,
                    "balance_after": b,
                    "cdr_id": ids[k],
                    "note": "",
                    "created_at": t,
                }
                for k, c, p, b, t in ledger
                if p != 0
            ],
        )
        s.execute(update(Card), [{"id": c, "balance": b} for c, b in balances.items()])
    return {"over_grant": flagged, "ani_calls": ani_calls}


def test_two_thousand_cards_and_thousands_of_calls(
    make_ctl: Callable[[], Ctl], tmp_path: Path
) -> None:
    ctl = make_ctl()
    nas = make_nas(ctl)
    group = make_group(ctl, tmp_path)
    batches = [
        make_batch(ctl, tmp_path, count=800, group=group)[0],
        make_batch(ctl, tmp_path, count=500, group=group, card_type="rechargeable", value="10")[0],
        make_batch(
            ctl, tmp_path, "--expires-on", day(1).isoformat(), count=400, group=group, value="2"
        )[0],
        make_batch(ctl, tmp_path, count=300, group=group, activate=False)[0],
    ]
    with ctl.db.transaction() as s:
        used = list(
            s.scalars(select(Card.id).where(Card.batch_id.in_([b["id"] for b in batches[:3]])))
        )
    ani = fresh_ani()
    made = _synthetic_calls(ctl, nas, used, 3000, now_utc() - timedelta(days=9), ani)
    admin = Admin(ctl.db)
    first = int(batches[1]["first_serial"])
    for i in range(40):
        admin.recharge(first + i, "2.50", now_utc())
    admin.lock_cards(
        serial_range=(batches[0]["first_serial"], str(int(batches[0]["first_serial"]) + 99))
    )
    expired = ctl("expire", "run", "--now", at(3)).stdout
    assert "expired 400 cards" in expired

    # every report as a table (JSON below, CSV in the other tests)
    for command in (
        ["report", "status"],
        ["report", "liability"],
        ["report", "suspicious"],
        ["report", "bind-bill", ani],
        ["batch", "list"],
        *(["report", "revenue", "--by", by] for by in ("type", "denomination", "batch", "day")),
    ):
        assert ctl(*command).stdout, command

    status = ctl.json("report", "status")
    assert sum(r["total"] for r in status) == 2000
    assert sum(r["locked"] for r in status) == 100
    assert sum(r["expired"] for r in status) == 400
    assert sum(r["inactive"] for r in status) == 300

    billed = ctl.scalar("SELECT count(*) FROM cdrs WHERE leg = 'billed'")
    cdr_revenue = sql_money(ctl, "SELECT sum(cost) FROM cdrs WHERE leg = 'billed'")
    ledger_calls = -sql_money(ctl, "SELECT sum(amount) FROM ledger_entries WHERE kind = 'call'")
    assert billed == 3000 and cdr_revenue == ledger_calls
    figures = {}
    for by in ("type", "denomination", "batch", "day"):
        rows = ctl.json("report", "revenue", "--by", by)
        figures[by] = (
            sum(r["calls"] for r in rows),
            sum(r["billed_seconds"] for r in rows),
            total(rows, "call_revenue"),
            total(rows, "recharges"),
            total(rows, "breakage"),
        )
    assert len(set(figures.values())) == 1, figures
    calls, _, revenue, recharges, breakage = figures["type"]
    assert (calls, revenue, recharges) == (3000, cdr_revenue, Decimal("100.0000"))
    assert breakage == -sql_money(
        ctl, "SELECT sum(amount) FROM ledger_entries WHERE kind = 'expiry'"
    )
    assert breakage > 0
    days = ctl.json("report", "revenue", "--by", "day")
    assert len([r for r in days if r["calls"]]) >= 9
    one = next(r for r in days if r["calls"])
    window = ctl.json("report", "revenue", "--by", "day", "--from", one["day"], "--to", one["day"])
    assert window == [one]

    liability = ctl.json("report", "liability")
    owed, overdrawn = total(liability, "liability"), total(liability, "overdrawn")
    assert owed + overdrawn == sql_money(ctl, "SELECT sum(balance) FROM cards")
    issued = sql_money(ctl, "SELECT sum(amount) FROM ledger_entries WHERE kind = 'creation'")
    assert issued == Decimal("11300.0000")  # 800 x 5 + 500 x 10 + 400 x 2 + 300 x 5
    assert revenue + owed + overdrawn + breakage == issued + recharges
    remaining = {b["id"]: Decimal(b["value_remaining"]) for b in ctl.json("batch", "list")}
    for row in liability:
        assert Decimal(row["liability"]) + Decimal(row["overdrawn"]) == remaining[row["batch"]]
    shown = ctl.json("batch", "show", str(batches[1]["id"]))
    assert Decimal(shown["value_issued"]) + Decimal(shown["recharges"]) - Decimal(
        shown["call_revenue"]
    ) - Decimal(shown["breakage"]) == Decimal(shown["value_remaining"])

    found = ctl.json("report", "suspicious", "--since", day(-30).isoformat(), "--limit", "1000")
    assert len(found["over_grant_calls"]) == made["over_grant"]
    negatives = ctl.scalar("SELECT count(*) FROM cards WHERE balance < 0")
    assert len(found["negative_balances"]) == negatives
    bill = ctl.json("report", "bind-bill", ani)
    assert sum(r["leg"] == "billed" for r in bill["rows"]) == made["ani_calls"]
    assert Decimal(bill["totals"][0]["cost"]) == sql_money(
        ctl,
        "SELECT sum(cost) FROM cdrs WHERE auth_method = 'ani' AND calling_number = :a",
        a=ani,
    )
