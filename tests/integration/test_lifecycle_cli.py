"""``prepaidctl`` card lifecycle on SQLite and PostgreSQL: bulk lock/unlock, recharge with
validity extension and grace period, balance transfer, card history, batch figures, expiry runs,
and the CLI's manners (help with examples everywhere, one-line errors)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from cli_support import (
    UK,
    Ctl,
    make_batch,
    make_group,
    make_nas,
    now_utc,
)

from admin_cli.main import app
from billing.storage.admin import Admin, AdminError
from billing.storage.expiry import run_expiry


def day(offset: int) -> date:
    return now_utc().date() + timedelta(days=offset)


def at(offset_days: int, hour: int = 12) -> str:
    return f"{day(offset_days).isoformat()}T{hour:02d}:00"


def card(ctl: Ctl, serial: str) -> dict[str, Any]:
    return ctl.json("card", "show", serial)  # type: ignore[no-any-return]


def ledger(ctl: Ctl, serial: str) -> list[dict[str, Any]]:
    return ctl.json("card", "history", serial)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------- manners
def _leaf_commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    found: list[list[str]] = []

    def walk(group: Any, path: list[str]) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                found.append([*path, name])  # the group's own help
                walk(command, [*path, name])
            else:
                found.append([*path, name])

    walk(root, [])
    return found


def test_every_command_has_help_with_an_example(tmp_path: Path) -> None:
    ctl = Ctl(f"sqlite:///{tmp_path / 'unused.sqlite3'}", tmp_path)  # --help opens no database
    commands = _leaf_commands()
    for expected in (
        ["card", "transfer"],
        ["card", "history"],
        ["batch", "list"],
        ["batch", "show"],
        ["expire", "run"],
        ["report", "bind-bill"],
        ["report", "status"],
        ["report", "revenue"],
        ["report", "liability"],
        ["report", "suspicious"],
    ):
        assert expected in commands
    missing = []
    for path in commands:
        out = ctl(*path, "--help").stdout
        if "Example" not in out or "prepaidctl" not in out:
            missing.append(" ".join(path))
    assert not missing, f"no example in --help of: {missing}"


def test_errors_are_one_line(ctl: Ctl, tmp_path: Path) -> None:
    batch, _ = make_batch(ctl, tmp_path, count=1, card_type="rechargeable")
    serial = batch["first_serial"]
    assert "no card with serial 999" in ctl.error("card", "history", "999")
    assert "no card with serial 999" in ctl.error("card", "transfer", "999", serial)
    assert "amount" in ctl.error("card", "recharge", serial, "1.2.3")
    assert "decimal places" in ctl.error("card", "recharge", serial, "1.00001")
    assert "YYYY-MM-DD" in ctl.error("report", "revenue", "--from", "31/01/2026")
    assert "after" in ctl.error("report", "revenue", "--from", "2026-02-01", "--to", "2026-01-01")
    assert "--now" in ctl.error("expire", "run", "--now", "tomorrow")
    assert "no batch with id 999999" in ctl.error("batch", "show", "999999")
    assert "cannot group revenue" in ctl.error("report", "revenue", "--by", "planet")
    sheet = tmp_path / "bad.csv"
    sheet.write_text("prefix,description\n44,UK\n")
    assert "nothing imported" in ctl.error("rates", "import", make_group(ctl, tmp_path), str(sheet))
    # usage errors: one line too, exit status 2
    assert "Missing argument" in ctl.error("card", "recharge", serial, code=2)
    assert "--format" in ctl.error("report", "status", "--format", "xml", code=2)
    assert "No such command" in ctl.error("card", "melt", code=2)


# ---------------------------------------------------------------------------------- lock
def test_bulk_lock_and_unlock(ctl: Ctl, tmp_path: Path) -> None:
    batch, rows = make_batch(ctl, tmp_path, count=5)
    first = int(batch["first_serial"])
    serials = [r["serial"] for r in rows]
    ctl("card", "lock", serials[0], "--reason", "reported stolen")
    out = ctl("card", "lock", "--batch", str(batch["id"]), "--reason", "shipment lost").stdout
    assert "locked 4 of 5 cards (1 were already locked)" in out
    assert card(ctl, serials[0])["lock_reason"] == "reported stolen"
    assert card(ctl, serials[4])["lock_reason"] == "shipment lost"
    assert {card(ctl, s)["state"] for s in serials} == {"locked"}
    status = {r["batch"]: r for r in ctl.json("report", "status", "--batch", str(batch["id"]))}
    assert status[batch["id"]]["locked"] == 5 and status[batch["id"]]["active"] == 0

    out = ctl("card", "unlock", "--range", f"{first}-{first + 2}").stdout
    assert "unlocked 3 of 3 cards" in out
    assert card(ctl, serials[1])["state"] == "active"
    assert card(ctl, serials[3])["state"] == "locked"
    out = ctl("card", "unlock", serials[3], serials[4]).stdout
    assert "unlocked 2 of 2 cards" in out
    out = ctl("card", "lock", serials[3], serials[4]).stdout
    assert "locked 2 of 2 cards" in out
    assert card(ctl, serials[3])["lock_reason"] == "locked by operator"
    assert "exactly one" in ctl.error("card", "lock", serials[0], "--batch", str(batch["id"]))
    assert "exactly one" in ctl.error("card", "unlock")
    assert "no batch" in ctl.error("card", "lock", "--batch", "999999")
    assert "FIRST-LAST" in ctl.error("card", "unlock", "--range", "5")
    assert "no card with serial 77" in ctl.error("card", "lock", serials[0], "77")
    assert "reserved" in ctl.error("card", "lock", serials[0], "--reason", "transferred")


# ---------------------------------------------------------------------------------- recharge
def test_recharge_extends_validity(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    dated, _ = make_batch(
        ctl,
        tmp_path,
        "--expires-on",
        day(30).isoformat(),
        count=1,
        card_type="rechargeable",
        group=group,
    )
    serial = dated["first_serial"]
    before = card(ctl, serial)["expires_at"]
    assert before == f"{day(30).isoformat()}T23:59:59Z"
    out = ctl("card", "recharge", serial, "2.50", "--extend-days", "10").stdout
    assert "balance 7.5000" in out and f"valid until {day(40).isoformat()}T23:59:59Z" in out
    assert card(ctl, serial)["expires_at"] == f"{day(40).isoformat()}T23:59:59Z"

    # validity from first use, never used: the validity period grows instead
    fresh, _ = make_batch(
        ctl, tmp_path, "--validity-days", "30", count=1, card_type="rechargeable", group=group
    )
    ctl("card", "recharge", fresh["first_serial"], "1", "--extend-days", "15")
    shown = card(ctl, fresh["first_serial"])
    assert shown["validity_days"] == 45 and shown["expires_at"] is None

    forever, _ = make_batch(ctl, tmp_path, count=1, card_type="rechargeable", group=group)
    err = ctl.error("card", "recharge", forever["first_serial"], "1", "--extend-days", "5")
    assert "never expires" in err
    assert "at least 1" in ctl.error("card", "recharge", serial, "1", "--extend-days", "0")
    # refused recharges changed nothing
    assert card(ctl, forever["first_serial"])["balance"] == "5.0000"


def test_recharge_in_grace_reactivates_and_after_grace_is_refused(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    batch, rows = make_batch(
        ctl,
        tmp_path,
        "--expires-on",
        day(1).isoformat(),
        "--grace-days",
        "5",
        "--validity-days",
        "30",
        count=3,
        card_type="rechargeable",
        group=group,
    )
    a, b, c = (r["serial"] for r in rows)
    ctl("expire", "run", "--now", at(3))
    assert {card(ctl, s)["state"] for s in (a, b, c)} == {"expired"}
    assert card(ctl, a)["balance"] == "5.0000"  # kept during the grace period

    admin = Admin(ctl.db)
    when = datetime.fromisoformat(at(4))
    # no --extend-days: a fresh validity period (the card's 30 days) from the recharge
    result = admin.recharge(a, "3", when)
    assert result.reactivated and result.state == "active"
    assert result.expires_at == when + timedelta(days=30)
    assert result.balance == Decimal("8.0000")
    # --extend-days: that many days from now
    result = admin.recharge(b, "1", when, extend_days=7)
    assert result.expires_at == when + timedelta(days=7)
    shown = card(ctl, b)
    assert shown["state"] == "active" and shown["balance"] == "6.0000"

    # past the grace period: refused, nothing changes
    late = datetime.fromisoformat(at(7, 1))  # expired at the end of day 1, + 5 days of grace
    with pytest.raises(AdminError, match="grace period is over"):
        admin.recharge(c, "1", late)
    assert card(ctl, c)["balance"] == "5.0000"
    # the expiry run at that time forfeits it, and a reactivated card is left alone
    result2 = run_expiry(ctl.db, late)
    assert result2.forfeited >= 1
    assert card(ctl, c)["balance"] == "0.0000"
    assert card(ctl, a)["balance"] == "8.0000"

    # the CLI, with the real clock: a card expired yesterday, 5 days of grace
    ctl.execute(
        "UPDATE cards SET expires_at = :t, state = 'expired' WHERE serial = :s",
        t=now_utc() - timedelta(days=1),
        s=int(a),
    )
    out = ctl("card", "recharge", a, "1.00").stdout
    assert "reactivated" in out and "balance 9.0000" in out
    assert card(ctl, a)["state"] == "active"
    assert card(ctl, a)["expires_at"] > now_utc().isoformat()
    ctl.execute(
        "UPDATE cards SET expires_at = :t, state = 'expired' WHERE serial = :s",
        t=now_utc() - timedelta(days=6),
        s=int(a),
    )
    assert "forfeited" in ctl.error("card", "recharge", a, "1.00")

    # an expired card without validity days needs --extend-days
    nodays, rows = make_batch(
        ctl,
        tmp_path,
        "--expires-on",
        day(1).isoformat(),
        "--grace-days",
        "5",
        count=1,
        card_type="rechargeable",
        group=group,
    )
    run_expiry(ctl.db, datetime.fromisoformat(at(3)))
    with pytest.raises(AdminError, match="--extend-days"):
        admin.recharge(rows[0]["serial"], "1", when)
    assert admin.recharge(rows[0]["serial"], "1", when, extend_days=3).state == "active"


# ---------------------------------------------------------------------------------- transfer
def fresh_ani() -> str:
    """A UK number no other test has bound, as the server normalizes it."""
    return "44207946" + str(uuid.uuid4().int % 10000).zfill(4)


def bound(ctl: Ctl, serial: str) -> list[str]:
    """The numbers bound to a card, sorted."""
    rows: Any = ctl.json("bind", "list", serial)
    return sorted(row["ani"] for row in rows)


def test_transfer_moves_the_balance_with_two_ledger_entries(ctl: Ctl, tmp_path: Path) -> None:
    nas = make_nas(ctl)
    group = make_group(ctl, tmp_path)
    batch, rows = make_batch(ctl, tmp_path, count=4, group=group)
    lost, spare, locked, busy = (r["serial"] for r in rows)
    ctl.call(nas, now_utc() - timedelta(minutes=10), 125, pin=rows[0]["pin"])
    assert card(ctl, lost)["balance"] == "4.8030"

    phone = fresh_ani()
    ctl("bind", "add", lost, phone)  # the customer's phone calls without a PIN
    ctl("card", "lock", lost, "--reason", "reported lost")
    out = ctl("card", "transfer", lost, spare).stdout
    assert "moved 4.8030 USD" in out and "9.8030" in out
    assert f"bound numbers moved with it: {phone}" in out
    assert (bound(ctl, spare), bound(ctl, lost)) == ([phone], [])
    by_phone = ctl.authorize(nas, now_utc(), calling=phone)  # the same phone, the new card
    assert by_phone.serial == spare
    ctl.stop(nas, by_phone.token, now_utc(), 0)  # a free call: the balance stays 9.8030
    old, new = card(ctl, lost), card(ctl, spare)
    assert (old["balance"], old["state"], old["lock_reason"]) == ("0.0000", "locked", "transferred")
    assert old["stored_state"] == "retired"
    assert new["balance"] == "9.8030" and new["state"] == "active"
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in ledger(ctl, lost)][-1] == (
        "transfer",
        "-4.8030",
        "0.0000",
    )
    entry = ledger(ctl, spare)[-1]
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == (
        "transfer",
        "4.8030",
        "9.8030",
    )
    assert entry["note"] == f"from card {lost}"

    # refusals, each leaving everything as it was
    assert "nothing to transfer" in ctl.error("card", "transfer", lost, spare)
    assert "stays locked" in ctl.error("card", "unlock", lost)
    assert "itself" in ctl.error("card", "transfer", spare, spare)
    ctl("card", "lock", locked)
    assert "locked" in ctl.error("card", "transfer", spare, locked)
    granted = ctl.authorize(nas, now_utc(), pin=rows[3]["pin"])
    assert "live call" in ctl.error("card", "transfer", busy, spare)
    ctl.stop(nas, granted.token, now_utc(), 0)  # a free call: the balance stays 5.0000
    euro = make_group(ctl, tmp_path, currency="EUR")
    _, eur_rows = make_batch(ctl, tmp_path, count=1, group=euro)
    assert "currency" in ctl.error("card", "transfer", busy, eur_rows[0]["serial"])
    inactive, in_rows = make_batch(ctl, tmp_path, count=1, group=group, activate=False)
    ctl("card", "transfer", busy, in_rows[0]["serial"])  # an inactive card may receive
    assert card(ctl, in_rows[0]["serial"])["balance"] == "10.0000"
    assert card(ctl, spare)["balance"] == "9.8030"
    expired, ex_rows = make_batch(
        ctl, tmp_path, "--expires-on", day(0).isoformat(), count=1, group=group
    )
    ctl.execute(
        "UPDATE cards SET expires_at = :t WHERE serial = :s",
        t=now_utc() - timedelta(hours=1),
        s=int(ex_rows[0]["serial"]),
    )
    assert "expired" in ctl.error("card", "transfer", spare, ex_rows[0]["serial"])
    # the ledger still adds up on every card involved
    for serial in (lost, spare, busy, in_rows[0]["serial"]):
        total = sum(Decimal(e["amount"]) for e in ledger(ctl, serial))
        assert total == Decimal(card(ctl, serial)["balance"])


# ---------------------------------------------------------------------------------- history
def test_card_history_and_card_bill_json(ctl: Ctl, tmp_path: Path) -> None:
    nas = make_nas(ctl)
    batch, rows = make_batch(ctl, tmp_path, count=1, card_type="rechargeable")
    serial = rows[0]["serial"]
    ctl.call(nas, now_utc() - timedelta(minutes=5), 125, pin=rows[0]["pin"])
    ctl("card", "recharge", serial, "1.25")
    entries = ledger(ctl, serial)
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in entries] == [
        ("creation", "5.0000", "5.0000"),
        ("call", "-0.1970", "4.8030"),
        ("recharge", "1.2500", "6.0530"),
    ]
    assert entries[1]["note"] == f"call to {UK}, 125 s"
    assert entries[0]["created_at"].endswith("Z")
    csv_out = ctl("card", "history", serial, "--format", "csv").stdout.splitlines()
    assert csv_out[0] == "created_at,kind,amount,balance_after,note"
    assert len(csv_out) == 4
    table = ctl("card", "history", serial).stdout
    assert "recharge" in table and "6.0530" in table

    bill = ctl.json("report", "card-bill", serial)
    assert bill["calls"] == 1 and bill["total_cost"] == "0.1970"
    assert bill["rows"][0]["cost"] == "0.1970"
    assert bill["rows"][0]["started_at"].endswith("Z")


# ---------------------------------------------------------------------------------- batches
def test_batch_list_and_show(ctl: Ctl, tmp_path: Path) -> None:
    nas = make_nas(ctl)
    batch, rows = make_batch(ctl, tmp_path, count=4, card_type="rechargeable", value="2.50")
    ctl("card", "lock", rows[3]["serial"])
    ctl.call(nas, now_utc() - timedelta(minutes=5), 125, pin=rows[0]["pin"])
    ctl("card", "recharge", rows[1]["serial"], "1")
    listed = {b["id"]: b for b in ctl.json("batch", "list")}
    entry = listed[batch["id"]]
    assert entry["count"] == 4 and entry["value"] == "2.5000"
    assert entry["value_remaining"] == "10.8030"  # 4 x 2.50 - 0.1970 + 1
    assert entry["first_serial"] == batch["first_serial"]

    shown = ctl.json("batch", "show", str(batch["id"]))
    assert (shown["cards_active"], shown["cards_locked"], shown["cards_inactive"]) == (3, 1, 0)
    assert shown["value_issued"] == "10.0000"
    assert shown["recharges"] == "1.0000"
    assert shown["call_revenue"] == "0.1970"
    assert shown["breakage"] == "0.0000"
    assert shown["value_remaining"] == "10.8030"
    assert "value issued" in ctl("batch", "show", str(batch["id"])).stdout
    header = ctl("batch", "list", "--format", "csv").stdout.splitlines()[0]
    assert header.startswith("id,card_type,value,currency,count")


# ---------------------------------------------------------------------------------- expiry
def test_expire_run_expires_forfeits_and_is_idempotent(
    make_ctl: Callable[[], Ctl], tmp_path: Path
) -> None:
    ctl = make_ctl()  # its own database: the counts below are exact
    nas = make_nas(ctl)
    group = make_group(ctl, tmp_path)
    soon = day(2).isoformat()
    graced, g_rows = make_batch(
        ctl, tmp_path, "--expires-on", soon, "--grace-days", "10", count=3, group=group
    )
    nograce, n_rows = make_batch(ctl, tmp_path, "--expires-on", soon, count=2, group=group)
    validity, v_rows = make_batch(ctl, tmp_path, "--validity-days", "5", count=2, group=group)
    ctl.call(nas, now_utc() - timedelta(minutes=5), 125, pin=g_rows[0]["pin"])
    ctl.call(nas, now_utc() - timedelta(minutes=5), 60, pin=v_rows[0]["pin"])  # validity starts
    ctl("card", "lock", g_rows[2]["serial"])
    granted = ctl.authorize(nas, now_utc(), pin=g_rows[1]["pin"])  # a call still going on

    before = ctl("expire", "run", "--now", at(1)).stdout
    assert "expired 0 cards; forfeited the balance of 0 cards" in before

    out = ctl("expire", "run", "--now", at(3)).stdout
    # 3 + 2 dated cards expire (the locked one too); the no-grace ones forfeit at once
    assert "expired 5 cards; forfeited the balance of 2 cards (10.0000 USD)" in out
    assert card(ctl, g_rows[2]["serial"])["stored_state"] == "expired"
    assert card(ctl, g_rows[0]["serial"])["balance"] == "4.8030"
    assert card(ctl, n_rows[0]["serial"])["balance"] == "0.0000"
    assert ledger(ctl, n_rows[0]["serial"])[-1]["kind"] == "expiry"
    assert ledger(ctl, n_rows[0]["serial"])[-1]["amount"] == "-5.0000"
    again = ctl("expire", "run", "--now", at(3)).stdout
    assert "expired 0 cards; forfeited the balance of 0 cards" in again

    # past the grace period: the used validity card (first use + 5 days) expires and forfeits
    # at once; the card with a live call is skipped, and forfeited once the call has ended
    out = ctl("expire", "run", "--now", at(13)).stdout
    assert "expired 1 cards; forfeited the balance of 3 cards (14.6830 USD)" in out
    assert "1 cards past grace have live calls" in out
    assert card(ctl, g_rows[1]["serial"])["balance"] == "5.0000"
    ctl.stop(nas, granted.token, now_utc(), 0)
    data = ctl.json("expire", "run", "--now", at(13))
    assert (data["expired"], data["forfeited"], data["forfeited_amount"]) == (0, 1, "5.0000 USD")
    assert ctl.json("expire", "run", "--now", at(13))["forfeited"] == 0

    # never used with validity from first use: never expires by validity
    assert card(ctl, v_rows[1]["serial"])["state"] == "active"
    assert card(ctl, v_rows[1]["serial"])["balance"] == "5.0000"
    # every card's ledger adds up to its balance, and breakage is what was forfeited
    total_expiry = ctl.scalar("SELECT sum(amount) FROM ledger_entries WHERE kind = 'expiry'")
    assert Decimal(str(total_expiry)).quantize(Decimal("0.0001")) == Decimal("-29.6830")
    mismatched = ctl.scalar(
        "SELECT count(*) FROM cards c WHERE abs(c.balance - (SELECT sum(amount) FROM "
        "ledger_entries l WHERE l.card_id = c.id)) > 0.00001"
    )
    assert mismatched == 0


def test_expire_run_in_small_chunks_matches(make_ctl: Callable[[], Ctl], tmp_path: Path) -> None:
    ctl = make_ctl()
    _, rows = make_batch(ctl, tmp_path, "--expires-on", day(0).isoformat(), count=23)
    result = run_expiry(ctl.db, datetime.fromisoformat(at(1)), chunk_size=4)
    assert (result.expired, result.forfeited) == (23, 23)
    assert result.forfeited_amounts == (("USD", Decimal("115.0000")),)
    again = run_expiry(ctl.db, datetime.fromisoformat(at(1)), chunk_size=4)
    assert (again.expired, again.forfeited, again.forfeited_amounts) == (0, 0, ())


def test_transfer_refused_when_the_new_card_would_have_too_many_bound_numbers(
    ctl: Ctl, tmp_path: Path
) -> None:
    _, rows = make_batch(ctl, tmp_path, count=2)
    lost, spare = (r["serial"] for r in rows)
    for serial in (lost, spare):
        for _ in range(3):  # 3 + 3 > the 5 a card may have
            ctl("bind", "add", serial, fresh_ani())

    before = bound(ctl, lost), bound(ctl, spare)
    assert "unbind some first" in ctl.error("card", "transfer", lost, spare)
    assert (bound(ctl, lost), bound(ctl, spare)) == before
    assert (card(ctl, lost)["balance"], card(ctl, spare)["balance"]) == ("5.0000", "5.0000")
