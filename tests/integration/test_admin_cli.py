"""``prepaidctl`` end to end, on SQLite and on PostgreSQL.

Each backend gets a fresh database for this module (SQLite: a temporary file; PostgreSQL: a
uniquely named database created on the server and dropped at the end). Tests share it, so each
test uses its own names; tests that need an empty database (demo seed) make another one.
PostgreSQL unreachable: skipped, unless PREPAID_TEST_REQUIRE_SERVICES=1 (then failed).
"""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import HEADER, Backend, Ctl
from sqlalchemy.engine import make_url

from billing.pins import luhn_valid, pin_hash

RATES = (
    HEADER
    + """
44,United Kingdom,0.07,0.05,30,6,0
4420,London,0.05,0.05,30,6,0
442079,London central,0.04,0,60,60,0
1,NANP,0.02,0,60,60,0
"""
)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def make_ctl(cli_backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Ctl]:
    def make() -> Ctl:
        return Ctl(cli_backend.new_database(), tmp_path_factory.mktemp("state"))

    return make


@pytest.fixture(scope="module")
def ctl(make_ctl: Callable[[], Ctl]) -> Ctl:
    ctl = make_ctl()
    out = ctl("db", "upgrade").stdout
    assert "revision" in out
    return ctl


def read_export(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def make_group(ctl: Ctl, tmp_path: Path, currency: str = "USD") -> str:
    group = unique("g")
    ctl("rategroup", "add", group, "--currency", currency)
    sheet = tmp_path / f"{group}.csv"
    sheet.write_text(RATES)
    ctl("rates", "import", group, str(sheet))
    return group


def make_batch(ctl: Ctl, tmp_path: Path, *extra: str, count: int = 5) -> tuple[dict, Path]:
    group = make_group(ctl, tmp_path)
    out = tmp_path / f"{unique('batch')}.csv"
    args = ["--rate-group", group, "--type", "standard", "--value", "5", "--count", str(count)]
    data = ctl.json("batch", "create", *args, *extra, "--output", str(out))
    return data, out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- schema
def test_commands_before_db_upgrade_say_what_to_do(make_ctl: Callable[[], Ctl]) -> None:
    fresh = make_ctl()
    err = fresh.error("nas", "list")
    assert "prepaidctl db upgrade" in err
    fresh("db", "upgrade")
    fresh("db", "upgrade")  # idempotent
    fresh("nas", "list")


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    bad = Ctl("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere", tmp_path)
    err = bad.error("card", "show", "1000000001")
    assert "database" in err


def test_help_has_examples(ctl: Ctl) -> None:
    for command in (["nas", "add"], ["batch", "create"], ["card", "activate"], ["rates", "import"]):
        out = ctl(*command, "--help").stdout
        assert "Example" in out and "prepaidctl" in out


# ---------------------------------------------------------------------------------- NAS
def test_nas_add_list_remove(ctl: Ctl) -> None:
    name = unique("gw")
    ctl("nas", "add", name, "--address", "10.1.2.0/24", "--secret", "s3cret", "--profile", "cisco")
    rows = {r["name"]: r for r in ctl.json("nas", "list")}  # type: ignore[union-attr]
    assert rows[name]["address"] == "10.1.2.0/24"
    assert rows[name]["profile"] == "cisco"
    assert rows[name]["require_message_authenticator"] == "auto"
    assert rows[name]["created_at"].endswith("Z")
    assert "secret" not in rows[name]
    assert "s3cret" not in ctl("nas", "list").stdout
    csv_out = ctl("nas", "list", "--format", "csv").stdout
    assert csv_out.splitlines()[0].startswith("name,address,profile")

    single = unique("gw")
    ctl("nas", "add", single, "--address", "192.0.2.7", "--secret", "x")
    rows = {r["name"]: r for r in ctl.json("nas", "list")}  # type: ignore[union-attr]
    assert rows[single]["address"] == "192.0.2.7/32"

    err = ctl.error("nas", "add", name, "--address", "10.9.9.9", "--secret", "x")
    assert "already exists" in err
    ctl("nas", "remove", name)
    assert name not in {r["name"] for r in ctl.json("nas", "list")}  # type: ignore[union-attr]
    assert "no NAS" in ctl.error("nas", "remove", name)


@pytest.mark.parametrize(
    "address", ["10.0.0.0/33", "10.0.0.5/24", "not-an-ip", "300.1.1.1", "fe80::1/129"]
)
def test_nas_bad_address_is_one_line_exit_1(ctl: Ctl, address: str) -> None:
    err = ctl.error("nas", "add", unique("gw"), "--address", address, "--secret", "x")
    assert address in err


def test_nas_bad_profile_and_policy(ctl: Ctl) -> None:
    assert "profile" in ctl.error(
        "nas", "add", unique("gw"), "--address", "10.3.0.1", "--secret", "x", "--profile", "acme"
    )
    assert "require_message_authenticator" in ctl.error(
        "nas",
        "add",
        unique("gw"),
        "--address",
        "10.3.0.2",
        "--secret",
        "x",
        "--require-message-authenticator",
        "maybe",
    )


def test_bad_cidr_in_a_real_process_has_no_traceback(ctl: Ctl) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREPAID_")}
    env.update({k: v for k, v in ctl.env.items() if v is not None})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "admin_cli.main",
            "nas",
            "add",
            "x",
            "--address",
            "1.2.3.4/40",
            "--secret",
            "s",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_usage_error_exits_2(ctl: Ctl) -> None:
    result = ctl("nas", "add", "x", code=2)  # --address and --secret are missing
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------- rates
def test_rategroup_add_and_list(ctl: Ctl) -> None:
    group = unique("rg")
    ctl("rategroup", "add", group, "--currency", "eur")
    rows = {r["name"]: r for r in ctl.json("rategroup", "list")}  # type: ignore[union-attr]
    assert rows[group]["currency"] == "EUR"
    assert rows[group]["rate_count"] == 0
    assert "already exists" in ctl.error("rategroup", "add", group)
    assert "currency" in ctl.error("rategroup", "add", unique("rg"), "--currency", "EURO")


def test_rates_import_and_longest_prefix_lookup(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    rows = {r["name"]: r for r in ctl.json("rategroup", "list")}  # type: ignore[union-attr]
    assert rows[group]["rate_count"] == 4

    hit = ctl.json("rates", "lookup", group, "+44 20 7946 0018")
    assert hit["prefix"] == "442079"  # type: ignore[index]
    assert hit["number"] == "442079460018"  # type: ignore[index]
    assert hit["price_per_minute"] == "0.0400"  # type: ignore[index]
    assert ctl.json("rates", "lookup", group, "00442081234567")["prefix"] == "4420"  # type: ignore[index]
    assert ctl.json("rates", "lookup", group, "447700900123")["prefix"] == "44"  # type: ignore[index]
    uk = ctl.json("rates", "lookup", group, "447700900123")
    assert uk["connection_fee"] == "0.0500"  # type: ignore[index]
    assert (uk["first_increment"], uk["next_increment"]) == (30, 6)  # type: ignore[index]
    assert "no rate" in ctl.error("rates", "lookup", group, "999123")
    assert "no rate group" in ctl.error("rates", "lookup", unique("nope"), "44")


def test_rates_reimport_updates_and_replace_deletes(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    sheet = tmp_path / "new.csv"
    sheet.write_text(HEADER + "\n44,UK,0.09,0.05,30,6,0\n49,Germany,0.05,0,60,60,0\n")
    out = ctl("rates", "import", group, str(sheet)).stdout
    assert "1 new, 1 updated, 0 deleted" in out
    assert ctl.json("rates", "lookup", group, "447700900123")["price_per_minute"] == "0.0900"  # type: ignore[index]
    assert ctl.json("rates", "lookup", group, "4420")["prefix"] == "4420"  # type: ignore[index]
    out = ctl("rates", "import", group, str(sheet), "--replace").stdout
    assert "3 deleted" in out
    assert ctl.json("rates", "lookup", group, "442079460018")["prefix"] == "44"  # type: ignore[index]
    rows = {r["name"]: r for r in ctl.json("rategroup", "list")}  # type: ignore[union-attr]
    assert rows[group]["rate_count"] == 2


def test_rates_import_bad_row_names_line_and_imports_nothing(ctl: Ctl, tmp_path: Path) -> None:
    group = unique("g")
    ctl("rategroup", "add", group)
    sheet = tmp_path / "bad.csv"
    sheet.write_text(RATES + "49,Germany,cheap,0,60,60,0\n")
    err = ctl.error("rates", "import", group, str(sheet))
    assert "line 6" in err and "price_per_minute" in err
    rows = {r["name"]: r for r in ctl.json("rategroup", "list")}  # type: ignore[union-attr]
    assert rows[group]["rate_count"] == 0

    sheet.write_text(RATES + "44,dup,0.01,0,60,60,0\n")
    assert "line 6" in ctl.error("rates", "import", group, str(sheet))
    assert "cannot read" in ctl.error("rates", "import", group, str(tmp_path / "missing.csv"))


# ---------------------------------------------------------------------------------- batches
def test_batch_create_export_pins_and_hashes(ctl: Ctl, tmp_path: Path) -> None:
    batch, out = make_batch(ctl, tmp_path, "--expires-on", "2099-12-31", count=50)
    first, last = int(batch["first_serial"]), int(batch["last_serial"])  # type: ignore[index]
    assert last - first + 1 == 50
    assert first >= 1_000_000_001
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    rows = read_export(out)
    assert list(rows[0]) == ["serial", "pin", "value", "currency", "expires_on"]
    assert len(rows) == 50
    assert [int(r["serial"]) for r in rows] == list(range(first, last + 1))
    pins = [r["pin"] for r in rows]
    assert len(set(pins)) == 50
    assert all(len(p) == 12 and luhn_valid(p) for p in pins)
    assert {r["value"] for r in rows} == {"5.0000"}
    assert {r["expires_on"] for r in rows} == {"2099-12-31"}

    # stored only as keyed hashes, and the hashes match the exported PINs
    key = ctl.pin_key
    for row in rows[:10]:
        stored = ctl.scalar("SELECT pin_hash FROM cards WHERE serial = :s", s=int(row["serial"]))
        assert stored == pin_hash(key, row["pin"])
        assert stored != row["pin"]
    clear = ctl.scalar(
        "SELECT count(*) FROM cards WHERE pin_hash IN :pins".replace(
            ":pins", "(" + ",".join(f":p{i}" for i in range(len(pins))) + ")"
        ),
        **{f"p{i}": p for i, p in enumerate(pins)},
    )
    assert clear == 0
    if ctl.url.startswith("sqlite"):
        db_file = Path(make_url(ctl.url).database or "")
        data = b"".join(
            p.read_bytes() for p in db_file.parent.iterdir() if p.name.startswith(db_file.name)
        )
        assert not any(p.encode() in data for p in pins)

    # one creation ledger entry per card with the face value
    n = ctl.scalar(
        "SELECT count(*) FROM ledger_entries l JOIN cards c ON c.id = l.card_id "
        "WHERE c.batch_id = :b AND l.kind = 'creation' AND l.amount = 5 AND l.balance_after = 5",
        b=batch["id"],  # type: ignore[index]
    )
    assert n == 50

    card = ctl.json("card", "show", str(first))
    assert card["state"] == "inactive"  # type: ignore[index]
    assert card["expires_at"] == "2099-12-31T23:59:59Z"  # type: ignore[index]


def test_batch_create_stdout_never_shows_pins(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    out = tmp_path / "b.csv"
    result = ctl(
        "batch",
        "create",
        "--rate-group",
        group,
        "--type",
        "standard",
        "--value",
        "2",
        "--count",
        "3",
        "--output",
        str(out),
    )
    assert "serials" in result.stdout
    for row in read_export(out):
        assert row["pin"] not in result.output


def test_batch_create_refuses_existing_output_and_bad_input(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    out = tmp_path / "exists.csv"
    out.write_text("keep me\n")
    base = ["batch", "create", "--rate-group", group, "--type", "standard", "--value", "5"]
    assert "already exists" in ctl.error(*base, "--count", "2", "--output", str(out))
    assert out.read_text() == "keep me\n"

    fresh = tmp_path / "never.csv"
    assert "no rate group" in ctl.error(
        "batch",
        "create",
        "--rate-group",
        unique("x"),
        "--type",
        "standard",
        "--value",
        "5",
        "--count",
        "2",
        "--output",
        str(fresh),
    )
    assert not fresh.exists()
    assert "card type" in ctl.error(
        "batch",
        "create",
        "--rate-group",
        group,
        "--type",
        "gold",
        "--value",
        "5",
        "--count",
        "2",
        "--output",
        str(fresh),
    )
    two = ["--count", "2", "--output", str(fresh)]
    assert "decimal places" in ctl.error(*base[:-1], "5.123456", *two)
    assert "YYYY-MM-DD" in ctl.error(*base, *two, "--expires-on", "31/12/2099")
    # too dense: 10-digit PINs hold at most 100,000 cards at density 1e-4
    err = ctl.error(*base, "--count", "200000", "--pin-length", "10", "--output", str(fresh))
    assert "density" in err
    assert not fresh.exists()


def test_serials_are_contiguous_across_batches(ctl: Ctl, tmp_path: Path) -> None:
    a, _ = make_batch(ctl, tmp_path, count=3)
    b, _ = make_batch(ctl, tmp_path, count=4)
    assert int(b["first_serial"]) > int(a["last_serial"])  # type: ignore[index]
    assert int(b["last_serial"]) - int(b["first_serial"]) == 3  # type: ignore[index]


def test_batch_of_20000_cards(ctl: Ctl, tmp_path: Path) -> None:
    batch, out = make_batch(ctl, tmp_path, count=20000)
    rows = read_export(out)
    assert len(rows) == 20000
    assert len({r["pin"] for r in rows}) == 20000
    assert len({r["serial"] for r in rows}) == 20000
    n = ctl.scalar("SELECT count(*) FROM cards WHERE batch_id = :b", b=batch["id"])  # type: ignore[index]
    assert n == 20000


# ---------------------------------------------------------------------------------- cards
def test_card_show_json(ctl: Ctl, tmp_path: Path) -> None:
    batch, _ = make_batch(ctl, tmp_path, "--max-calls", "2", "--validity-days", "30", count=1)
    card = ctl.json("card", "show", batch["first_serial"])  # type: ignore[index]
    assert card["serial"] == batch["first_serial"]  # type: ignore[index]
    assert card["state"] == "inactive"  # type: ignore[index]
    assert card["type"] == "standard"  # type: ignore[index]
    assert card["balance"] == "5.0000"  # type: ignore[index]
    assert card["max_calls"] == 2  # type: ignore[index]
    assert card["expires_at"] is None  # type: ignore[index]
    assert card["validity_days"] == 30  # type: ignore[index]
    assert card["live_calls"] == 0  # type: ignore[index]
    assert card["bound_anis"] == []  # type: ignore[index]
    assert "no card" in ctl.error("card", "show", "999")
    assert "serial" in ctl.error("card", "show", "12ab")


def test_activate_by_range_batch_and_serials(ctl: Ctl, tmp_path: Path) -> None:
    batch, _ = make_batch(ctl, tmp_path, count=6)
    first = int(batch["first_serial"])  # type: ignore[index]
    out = ctl("card", "activate", "--range", f"{first}-{first + 1}").stdout
    assert "activated 2 of 2" in out
    assert ctl.json("card", "show", str(first))["state"] == "active"  # type: ignore[index]
    assert ctl.json("card", "show", str(first + 1))["activated_at"].endswith("Z")  # type: ignore[index]
    assert ctl.json("card", "show", str(first + 2))["state"] == "inactive"  # type: ignore[index]

    out = ctl("card", "activate", "--batch", str(batch["id"])).stdout  # type: ignore[index]
    assert "activated 4 of 6" in out
    assert ctl.json("card", "show", str(first + 5))["state"] == "active"  # type: ignore[index]

    other, _ = make_batch(ctl, tmp_path, count=2)
    s = other["first_serial"]  # type: ignore[index]
    assert "activated 1 of 1" in ctl("card", "activate", s).stdout
    assert "activated 0 of 1" in ctl("card", "activate", s).stdout

    assert "no batch" in ctl.error("card", "activate", "--batch", "999999")
    assert "exactly one" in ctl.error("card", "activate")
    assert "FIRST-LAST" in ctl.error("card", "activate", "--range", "12")
    assert "no card" in ctl.error("card", "activate", "5")


def test_lock_and_unlock(ctl: Ctl, tmp_path: Path) -> None:
    batch, _ = make_batch(ctl, tmp_path, count=1)
    serial = batch["first_serial"]  # type: ignore[index]
    ctl("card", "activate", serial)
    ctl("card", "lock", serial, "--reason", "reported stolen")
    card = ctl.json("card", "show", serial)
    assert card["state"] == "locked"  # type: ignore[index]
    assert card["lock_reason"] == "reported stolen"  # type: ignore[index]
    ctl("card", "unlock", serial)
    card = ctl.json("card", "show", serial)
    assert card["state"] == "active"  # type: ignore[index]
    assert card["locked"] is False  # type: ignore[index]


def test_recharge(ctl: Ctl, tmp_path: Path) -> None:
    standard, _ = make_batch(ctl, tmp_path, count=1)
    err = ctl.error("card", "recharge", standard["first_serial"], "10")  # type: ignore[index]
    assert "rechargeable" in err

    rech, _ = make_batch(ctl, tmp_path, count=1)
    group = rech["rate_group"]  # type: ignore[index]
    out = tmp_path / "r.csv"
    data = ctl.json(
        "batch",
        "create",
        "--rate-group",
        group,
        "--type",
        "rechargeable",
        "--value",
        "5",
        "--count",
        "1",
        "--output",
        str(out),
    )
    serial = data["first_serial"]  # type: ignore[index]
    assert "balance 15.5000" in ctl("card", "recharge", serial, "10.50").stdout
    assert ctl.json("card", "show", serial)["balance"] == "15.5000"  # type: ignore[index]
    row = ctl.scalar(
        "SELECT count(*) FROM ledger_entries l JOIN cards c ON c.id = l.card_id "
        "WHERE c.serial = :s AND l.kind = 'recharge' AND l.amount = 10.5 "
        "AND l.balance_after = 15.5",
        s=int(serial),
    )
    assert row == 1
    assert "greater than 0" in ctl.error("card", "recharge", serial, "0")
    assert "amount" in ctl.error("card", "recharge", serial, "ten")


# ---------------------------------------------------------------------------------- bind
def test_bind_add_list_remove_with_normalization(ctl: Ctl, tmp_path: Path) -> None:
    batch, _ = make_batch(ctl, tmp_path, count=2)
    serial = batch["first_serial"]  # type: ignore[index]
    other = batch["last_serial"]  # type: ignore[index]
    ani = "+44 20 7946 " + str(uuid.uuid4().int % 10000).zfill(4)
    normalized = "44207946" + ani[-4:]
    out = ctl("bind", "add", serial, ani).stdout
    assert normalized in out
    rows = ctl.json("bind", "list", serial)
    assert [r["ani"] for r in rows] == [normalized]  # type: ignore[union-attr]
    assert ctl.json("card", "show", serial)["bound_anis"] == [normalized]  # type: ignore[index]

    assert "already bound" in ctl.error("bind", "add", other, "00" + normalized)
    assert "telephone number" in ctl.error("bind", "add", serial, "abc")

    ctl("bind", "remove", ani)
    assert ctl.json("bind", "list", serial) == []
    assert "not bound" in ctl.error("bind", "remove", normalized)


def test_bind_limit(ctl: Ctl, tmp_path: Path) -> None:
    batch, _ = make_batch(ctl, tmp_path, count=1)
    serial = batch["first_serial"]  # type: ignore[index]
    base = 15550000000 + (uuid.uuid4().int % 1000) * 10
    for i in range(5):
        ctl("bind", "add", serial, str(base + i))
    assert "maximum is 5" in ctl.error("bind", "add", serial, str(base + 5))


# ---------------------------------------------------------------------------------- reports
def test_sessions_list_and_card_bill_empty(ctl: Ctl, tmp_path: Path) -> None:
    batch, _ = make_batch(ctl, tmp_path, count=1)
    serial = batch["first_serial"]  # type: ignore[index]
    assert ctl.json("sessions", "list", "--card", serial) == []
    bill = ctl.json("report", "card-bill", serial, "--from", "2020-01-01", "--to", "2099-01-01")
    assert bill["calls"] == 0  # type: ignore[index]
    assert bill["total_cost"] == "0.0000"  # type: ignore[index]
    assert bill["rows"] == []  # type: ignore[index]
    header = ctl("report", "card-bill", serial, "--format", "csv").stdout.splitlines()[0]
    assert header.startswith("started_at,calling_number,called_number,duration_seconds")
    assert "YYYY-MM-DD" in ctl.error("report", "card-bill", serial, "--from", "yesterday")


# ---------------------------------------------------------------------------------- demo
def test_demo_seed_once(make_ctl: Callable[[], Ctl]) -> None:
    demo = make_ctl()
    demo("db", "upgrade")
    result = demo("demo", "seed")
    export = demo.state_dir / "demo-cards.csv"
    assert str(export) in result.stdout
    assert "radclient" in result.stdout
    rows = read_export(export)
    assert len(rows) == 5
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    for row in rows:
        assert row["pin"] not in result.output
        card = demo.json("card", "show", row["serial"])
        assert card["state"] == "active"  # type: ignore[index]
        assert card["balance"] == "5.0000"  # type: ignore[index]
    nas = demo.json("nas", "list")
    assert [(n["name"], n["address"], n["profile"]) for n in nas] == [  # type: ignore[union-attr]
        ("demo", "127.0.0.1/32", "cisco")
    ]
    uk = demo.json("rates", "lookup", "demo", "442079460018")
    assert (uk["price_per_minute"], uk["connection_fee"]) == ("0.0700", "0.0500")  # type: ignore[index]

    again = demo("demo", "seed")
    assert "did nothing" in again.stdout
    assert read_export(export) == rows
    assert len(demo.json("nas", "list")) == 1  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- misc
def test_missing_config_file_is_one_line(ctl: Ctl, tmp_path: Path) -> None:
    err = ctl.error("--config", str(tmp_path / "nope.toml"), "nas", "list")
    assert "nope.toml" in err


def test_sessions_reap_runs(ctl: Ctl) -> None:
    out = ctl("sessions", "reap").stdout
    assert "released" in out and "purged" in out
