"""Time every ``prepaidctl report`` over a large PostgreSQL database.

    python -m bench.reports [--cdrs N] [--cards N] [--repeat N] [--keep] [--explain]

Creates a throw-away database ``bench_reports_<random>`` on PostgreSQL (``PREPAID_BENCH_PG``,
default the local trust server), migrates it with ``prepaidctl db upgrade`` and loads, in SQL
(``INSERT ... SELECT generate_series(...)``, no row crosses the wire):

- 10 NAS clients, two rate groups (USD and EUR), 24 batches (four card types, six face values, some
  rechargeable, some unlimited) sharing ``--cards`` cards (default 100,000) in every state, a
  few of them overdrawn;
- ``--cdrs`` CDRs (default 1,000,000) over the last 60 days: calls per card skewed (a few busy
  cards, many quiet ones), 5 % other legs, one card in 20 with a bound ANI whose calls are
  authorized by ANI, some cards shared by many callers, 0.1 % of calls longer than granted;
- the ledger that goes with them: a creation entry per card, a call entry per billed CDR that
  cost something, recharges on rechargeable cards, forfeited balances on expired cards;
- 50,000 security events (PIN failures) from 5,000 callers and the 10 NAS, a few callers
  guessing hard.

then ``VACUUM ANALYZE`` (a database in service is vacuumed and analyzed by autovacuum), and
times each report through the CLI's own code path: ``admin_cli.main.app`` invoked in-process
with ``typer.testing.CliRunner``, default table output (rendered and discarded), a new database
connection per command as in a real ``prepaidctl`` run. Each report is run ``--repeat`` times
(default 3) after one warm-up run; the table shows the best and the median. ``--explain``
prints ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement a report issues. The database is
dropped at the end unless ``--keep``; ``--reuse DATABASE`` times the reports again on a kept one.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.run import PG_BASE, log, pg_connect

TARGET_SECONDS = 2.0
DAYS = 60
NAS_COUNT = 10
SECURITY_EVENTS = 50_000


# ------------------------------------------------------------------------------ data
# Batches: (card type, face value, state mix) — the states are drawn per card below.
BATCH_TYPES = ("standard", "standard", "rechargeable", "standard", "disposable", "unlimited")
FACE_VALUES = ("5.00", "10.00", "20.00", "2.00", "50.00", "0.00")
BATCHES = 24


def load(conn: Any, cards: int, cdrs: int, now: datetime) -> dict[str, float]:
    """Fill the (migrated, empty) database; returns seconds per step."""
    timings: dict[str, float] = {}
    cur = conn.cursor()
    start = now - timedelta(days=DAYS)

    def step(name: str, sql: str, params: dict[str, Any] | None = None) -> None:
        began = time.perf_counter()
        cur.execute(sql, params or {})
        timings[name] = time.perf_counter() - began

    params = {"now": now, "start": start, "cards": cards, "cdrs": cdrs, "days": DAYS}
    cur.execute("SET maintenance_work_mem = '256MB'")
    # The plain (non-unique) indexes are dropped during the load and built again after it:
    # one sort per index instead of a million random insertions.
    cur.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "AND tablename IN ('cards', 'cdrs', 'ledger_entries', 'security_events') "
        "AND indexname LIKE %s",
        ("ix\\_%",),
    )
    plain = cur.fetchall()
    for name, _ in plain:
        cur.execute(f'DROP INDEX "{name}"')
    cur.execute("SELECT setseed(0.4242)")
    step(
        "nas, rate group, batches",
        """
        INSERT INTO nas_clients (id, name, address, secret, profile,
                                 require_message_authenticator, message_authenticator_seen,
                                 boot_epoch, created_at)
        SELECT g, 'nas' || g, '10.0.' || g || '.1/32', 'secret', 'cisco', 'auto', true, 0,
               %(start)s
        FROM generate_series(1, 10) g;
        INSERT INTO rate_groups (id, name, currency, created_at)
        VALUES (1, 'retail', 'USD', %(start)s), (2, 'euro', 'EUR', %(start)s);
        INSERT INTO rates (rate_group_id, prefix, description, price_per_minute,
                           connection_fee, first_increment, next_increment, grace_seconds)
        VALUES (1, '44', 'United Kingdom', 0.07, 0.05, 30, 6, 0),
               (2, '44', 'United Kingdom', 0.06, 0.05, 30, 6, 0);
        """,
        params,
    )
    # Batches b = 1..24 share the cards evenly; serials are contiguous per batch.
    per_batch = -(-cards // BATCHES)
    batch_rows = []
    for b in range(1, BATCHES + 1):
        kind = BATCH_TYPES[(b - 1) % len(BATCH_TYPES)]
        value = FACE_VALUES[(b - 1) % len(FACE_VALUES)] if kind != "unlimited" else "0.00"
        first_card = (b - 1) * per_batch + 1
        last_card = min(b * per_batch, cards)
        if first_card > last_card:
            break
        batch_rows.append((b, kind, value, 2 if b % 8 == 0 else 1, first_card, last_card))
    began = time.perf_counter()
    for b, kind, value, group, first_card, last_card in batch_rows:
        cur.execute(
            """
            INSERT INTO batches (id, card_type, face_value, currency, rate_group_id,
                                 validity_days, grace_days, expires_on, max_calls, pin_length,
                                 pin_prefix, activation_mode, card_count, first_serial,
                                 last_serial, note, created_at)
            VALUES (%s, %s, %s, %s, %s, 90, 30, NULL, 1, 12, '', 'manual', %s, %s, %s, '', %s)
            """,
            (
                b,
                kind,
                value,
                "EUR" if group == 2 else "USD",
                group,
                last_card - first_card + 1,
                1_000_000_000 + first_card,
                1_000_000_000 + last_card,
                start - timedelta(days=30),
            ),
        )
    cur.execute(
        "CREATE TEMP TABLE bench_batches (id int, card_type text, face numeric, grp int, "
        "first_card bigint, last_card bigint)"
    )
    cur.executemany("INSERT INTO bench_batches VALUES (%s, %s, %s, %s, %s, %s)", batch_rows)
    timings["nas, rate group, batches"] += time.perf_counter() - began

    # Cards: states by a random draw; balances below face for used cards, a few negative.
    step(
        "cards",
        """
        INSERT INTO cards (id, serial, batch_id, pin_hash, card_type, state, locked,
                           lock_reason, balance, currency, rate_group_id, max_calls,
                           activation_mode, validity_days, grace_days, expires_at,
                           activated_at, first_used_at, failed_pin_count, created_at)
        SELECT g, 1000000000 + g, b.id, md5('pin' || g) || md5('hash' || g), b.card_type,
               st.state, st.locked, CASE WHEN st.locked THEN 'stolen' END,
               CASE WHEN st.state IN ('exhausted', 'retired') THEN 0
                    WHEN r.r3 < 0.003 THEN -round((r.r4 * 0.5)::numeric, 4)
                    WHEN st.state = 'inactive' THEN b.face
                    ELSE round(b.face * r.r4::numeric, 4) END,
               CASE WHEN b.grp = 2 THEN 'EUR' ELSE 'USD' END, b.grp, 1, 'manual', 90, 30,
               CASE WHEN st.state = 'inactive' THEN NULL
                    ELSE %(start)s + (r.r4 * 150) * interval '1 day' END,
               CASE WHEN st.state = 'inactive' THEN NULL ELSE %(start)s END,
               CASE WHEN st.state = 'inactive' THEN NULL ELSE %(start)s END,
               0, %(start)s - interval '30 days'
        FROM generate_series(1, %(cards)s) g
        JOIN bench_batches b ON g BETWEEN b.first_card AND b.last_card
        CROSS JOIN LATERAL (SELECT random() r1, random() r2, random() r3, random() r4
                            WHERE g > 0) r
        CROSS JOIN LATERAL (
            SELECT CASE WHEN r.r1 < 0.15 THEN 'inactive'
                        WHEN r.r1 < 0.75 THEN 'active'
                        WHEN r.r1 < 0.85 THEN 'exhausted'
                        WHEN r.r1 < 0.93 THEN 'expired'
                        ELSE 'retired' END AS state,
                   r.r2 < 0.02 AS locked
        ) st;
        SELECT setval(pg_get_serial_sequence('cards', 'id'), %(cards)s);
        """,
        params,
    )
    # One card in 20 has a bound ANI (its home number).
    step(
        "bind numbers",
        """
        INSERT INTO bind_numbers (card_id, ani, created_at)
        SELECT g, '4420' || lpad(g::text, 8, '0'), %(start)s
        FROM generate_series(20, %(cards)s, 20) g;
        """,
        params,
    )
    # CDRs: card by a skewed draw (card ids near 1 are busy), calling number the card's home
    # number (2 %% other numbers, and cards 1..50 shared by many callers), bound cards' calls
    # authorized by ANI, 5 %% other legs, 0.1 %% over their grant.
    step(
        "cdrs",
        """
        INSERT INTO cdrs (id, call_key, session_key, card_id, nas_id, acct_session_id, conf_id,
                          leg, auth_method, calling_number, called_number, rate_prefix,
                          price_per_minute, connection_fee, started_at, stopped_at,
                          duration_seconds, billed_seconds, granted_seconds, cost,
                          balance_after, over_grant, close_reason, terminate_cause, created_at)
        SELECT g, md5('call' || g), md5('session' || g), c.card_id, 1 + (g %% 10),
               to_hex(g), NULL,
               CASE WHEN r.r2 < 0.05 THEN 'other' ELSE 'billed' END,
               CASE WHEN c.card_id %% 20 = 0 AND r.r5 < 0.7 THEN 'ani' ELSE 'pin' END,
               CASE WHEN c.card_id <= 50 THEN '4479' || lpad((g %% 997)::text, 8, '0')
                    WHEN r.r3 < 0.02 THEN '4479' || lpad((g %% 99991)::text, 8, '0')
                    ELSE '4420' || lpad(c.card_id::text, 8, '0') END,
               '4477009' || lpad((g %% 100000)::text, 5, '0'), '44',
               CASE WHEN r.r2 < 0.05 THEN 0 ELSE 0.07 END,
               CASE WHEN r.r2 < 0.05 THEN 0 ELSE 0.05 END,
               t.stopped_at - d.dur * interval '1 second', t.stopped_at,
               d.dur, CASE WHEN r.r2 < 0.05 THEN 0 ELSE 30 + ((d.dur + 5) / 6) * 6 END,
               CASE WHEN r.r6 < 0.001 THEN greatest(d.dur - 60, 1) ELSE d.dur + 600 END,
               CASE WHEN r.r2 < 0.05 THEN 0
                    ELSE round(0.05 + (30 + ((d.dur + 5) / 6) * 6) * 0.07 / 60, 6) END,
               round((r.r4 * 5)::numeric, 6),
               r.r6 < 0.001, CASE WHEN r.r6 < 0.0005 THEN 'reaped' ELSE 'stop' END,
               'User-Request', t.stopped_at
        FROM generate_series(1, %(cdrs)s) g
        CROSS JOIN LATERAL (SELECT random() r1, random() r2, random() r3, random() r4,
                                   random() r5, random() r6, random() r7
                            WHERE g > 0) r
        CROSS JOIN LATERAL (
            SELECT 1 + floor(power(r.r1, 1.6) * %(cards)s)::bigint AS card_id
        ) c
        CROSS JOIN LATERAL (
            SELECT %(start)s + (g::float8 / %(cdrs)s) * %(days)s * interval '1 day'
                   AS stopped_at
        ) t
        CROSS JOIN LATERAL (SELECT (1 + floor(power(r.r7, 2) * 1800))::int AS dur) d;
        SELECT setval(pg_get_serial_sequence('cdrs', 'id'), %(cdrs)s);
        """,
        params,
    )
    # The ledger: creation per card, a call entry per costed CDR, recharges, forfeits.
    step(
        "ledger entries",
        """
        INSERT INTO ledger_entries (card_id, kind, amount, balance_after, cdr_id, note,
                                    created_at)
        SELECT c.id, 'creation', b.face_value, b.face_value, NULL, '', c.created_at
        FROM cards c JOIN batches b ON b.id = c.batch_id;
        INSERT INTO ledger_entries (card_id, kind, amount, balance_after, cdr_id, note,
                                    created_at)
        SELECT card_id, 'call', -cost, balance_after, id, '', stopped_at
        FROM cdrs WHERE cost <> 0 ORDER BY id;
        INSERT INTO ledger_entries (card_id, kind, amount, balance_after, cdr_id, note,
                                    created_at)
        SELECT id, 'recharge', 10, balance + 10, NULL, '',
               %(start)s + (id %% %(days)s) * interval '1 day' + interval '3 hours'
        FROM cards WHERE card_type = 'rechargeable' AND id %% 3 = 0;
        INSERT INTO ledger_entries (card_id, kind, amount, balance_after, cdr_id, note,
                                    created_at)
        SELECT id, 'expiry', -1.25, 0, NULL, 'forfeited',
               %(start)s + (id %% %(days)s) * interval '1 day' + interval '2 hours'
        FROM cards WHERE state = 'expired' AND id %% 2 = 0;
        """,
        params,
    )
    step(
        "security events",
        """
        INSERT INTO security_events (kind, nas_id, calling_number, card_id, created_at)
        SELECT (ARRAY['unknown-pin', 'wrong-pin', 'card-locked', 'lockout'])[1 + (g %% 4)],
               1 + (g %% 10),
               CASE WHEN g %% 10 = 0 THEN '4479000000' || (g %% 7)
                    ELSE '4479' || lpad((g %% 5000)::text, 8, '0') END,
               NULL,
               %(start)s + (g::float8 / %(n)s) * %(days)s * interval '1 day'
        FROM generate_series(1, %(n)s) g;
        """,
        {**params, "n": SECURITY_EVENTS},
    )
    began = time.perf_counter()
    for _, definition in plain:
        cur.execute(definition)
    timings["indexes"] = time.perf_counter() - began
    began = time.perf_counter()
    cur.execute("VACUUM ANALYZE")
    timings["vacuum analyze"] = time.perf_counter() - began
    cur.close()
    return timings


# ------------------------------------------------------------------------------ timing
@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pick_subjects(conn: Any) -> dict[str, str]:
    """The busiest card and bound ANI, and a typical (median) one of each."""
    cur = conn.cursor()
    cur.execute(
        "SELECT c.serial, count(*) n FROM cdrs d JOIN cards c ON c.id = d.card_id "
        "GROUP BY c.serial ORDER BY n DESC LIMIT 1"
    )
    busy_serial, busy_calls = cur.fetchone()
    cur.execute(
        "SELECT serial, n FROM (SELECT c.serial, count(*) n FROM cdrs d JOIN cards c "
        "ON c.id = d.card_id GROUP BY c.serial) x ORDER BY n LIMIT 1 OFFSET "
        "(SELECT count(DISTINCT card_id) / 2 FROM cdrs)"
    )
    median_serial, median_calls = cur.fetchone()
    cur.execute(
        "SELECT calling_number, count(*) n FROM cdrs WHERE auth_method = 'ani' "
        "GROUP BY calling_number ORDER BY n DESC LIMIT 1"
    )
    busy_ani, busy_ani_calls = cur.fetchone()
    cur.execute(
        "SELECT calling_number, n FROM (SELECT calling_number, count(*) n FROM cdrs "
        "WHERE auth_method = 'ani' GROUP BY calling_number) x ORDER BY n "
        "LIMIT 1 OFFSET (SELECT count(DISTINCT calling_number) / 2 FROM cdrs "
        "WHERE auth_method = 'ani')"
    )
    median_ani, median_ani_calls = cur.fetchone()
    cur.close()
    return {
        "busy_serial": str(busy_serial),
        "busy_calls": str(busy_calls),
        "median_serial": str(median_serial),
        "median_calls": str(median_calls),
        "busy_ani": busy_ani,
        "busy_ani_calls": str(busy_ani_calls),
        "median_ani": median_ani,
        "median_ani_calls": str(median_ani_calls),
    }


def commands(subjects: dict[str, str], now: datetime) -> list[tuple[str, list[str]]]:
    month_from = (now - timedelta(days=30)).date().isoformat()
    month_to = now.date().isoformat()
    s = subjects
    return [
        (f"card-bill, busiest card ({s['busy_calls']} calls)", ["card-bill", s["busy_serial"]]),
        (
            f"card-bill, median card ({s['median_calls']} calls)",
            ["card-bill", s["median_serial"]],
        ),
        (
            f"bind-bill, busiest ANI ({s['busy_ani_calls']} calls)",
            ["bind-bill", s["busy_ani"]],
        ),
        (
            f"bind-bill, median ANI ({s['median_ani_calls']} calls)",
            ["bind-bill", s["median_ani"]],
        ),
        ("status", ["status"]),
        ("revenue --by type", ["revenue", "--by", "type"]),
        ("revenue --by denomination", ["revenue", "--by", "denomination"]),
        ("revenue --by batch", ["revenue", "--by", "batch"]),
        ("revenue --by day", ["revenue", "--by", "day"]),
        (
            "revenue --by day, last 30 days",
            ["revenue", "--by", "day", "--from", month_from, "--to", month_to],
        ),
        ("liability", ["liability"]),
        ("suspicious (last 30 days)", ["suspicious"]),
        ("suspicious --since start", ["suspicious", "--since", "2000-01-01"]),
    ]


def time_reports(
    db_url: str, state_dir: Path, cmds: list[tuple[str, list[str]]], repeat: int
) -> list[tuple[str, float, float]]:
    from typer.testing import CliRunner

    from admin_cli.main import app

    runner = CliRunner()
    env = {"PREPAID_DATABASE_URL": db_url, "PREPAID_SERVER_STATE_DIR": str(state_dir)}
    results = []
    with environment(env):
        for name, args in cmds:
            seconds = []
            for attempt in range(repeat + 1):
                began = time.perf_counter()
                result = runner.invoke(app, ["report", *args], catch_exceptions=False)
                elapsed = time.perf_counter() - began
                if result.exit_code != 0:
                    raise RuntimeError(f"report {' '.join(args)} failed:\n{result.output}")
                if attempt:  # the first run warms the caches
                    seconds.append(elapsed)
            results.append((name, min(seconds), statistics.median(seconds)))
            log(f"{name}: best {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s")
    return results


def explain_reports(db_url: str, state_dir: Path, cmds: list[tuple[str, list[str]]]) -> None:
    """Print EXPLAIN (ANALYZE, BUFFERS) of every SELECT each report issues."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from typer.testing import CliRunner

    from admin_cli.main import app

    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "alembic_version" not in statement:
            captured.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", capture)
    runner = CliRunner()
    env = {"PREPAID_DATABASE_URL": db_url, "PREPAID_SERVER_STATE_DIR": str(state_dir)}
    conn = pg_connect(db_url.rsplit("/", 1)[1])
    try:
        with environment(env):
            for name, args in cmds:
                captured.clear()
                runner.invoke(app, ["report", *args], catch_exceptions=False)
                print(f"\n===== {name}")
                for statement, parameters in list(captured):
                    with conn.cursor() as cur:
                        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                        plan = "\n".join(r[0] for r in cur.fetchall())
                    print(f"--- {' '.join(statement.split())[:160]}\n{plan}")
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
        conn.close()


def machine() -> str:
    cpu = "?"
    memory = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {memory}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reports", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cdrs", type=int, default=1_000_000, help="CDRs (default 1,000,000)")
    parser.add_argument("--cards", type=int, default=100_000, help="cards (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per report")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE every query")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--reuse", metavar="DATABASE", help="time the reports on a database kept by --keep"
    )
    args = parser.parse_args(argv)
    if args.cards < BATCHES or args.cdrs < 1 or args.repeat < 1:
        parser.error(f"need --cards >= {BATCHES}, --cdrs >= 1, --repeat >= 1")

    from psycopg2.extensions import parse_dsn

    pg = parse_dsn(PG_BASE)
    database = args.reuse or f"bench_reports_{secrets.token_hex(4)}"
    db_url = (
        f"postgresql+psycopg2://{pg.get('user', 'postgres')}@{pg.get('host', '127.0.0.1')}:"
        f"{pg.get('port', '5432')}/{database}"
    )
    admin = pg_connect(pg.get("dbname", "postgres"))
    with admin.cursor() as cur:
        cur.execute("SHOW server_version")
        version = cur.fetchone()[0]
    now = datetime.utcnow().replace(microsecond=0)  # noqa: DTZ003 - naive UTC, as stored
    with tempfile.TemporaryDirectory(prefix="prepaid-bench-reports-") as tmp:
        state_dir = Path(tmp)
        try:
            if not args.reuse:
                with admin.cursor() as cur:
                    cur.execute(f'CREATE DATABASE "{database}"')
                log(f"database {database}")
                import schema

                schema.upgrade(db_url)
            conn = pg_connect(database)
            try:
                if args.reuse:
                    with conn.cursor() as cur:
                        cur.execute("SELECT max(stopped_at), count(*) FROM cdrs")
                        now, args.cdrs = cur.fetchone()
                        cur.execute("SELECT count(*) FROM cards")
                        args.cards = cur.fetchone()[0]
                else:
                    log(f"loading {args.cards} cards and {args.cdrs} CDRs")
                    began = time.perf_counter()
                    steps = load(conn, args.cards, args.cdrs, now)
                    log(
                        f"loaded in {time.perf_counter() - began:.1f} s ("
                        + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
                        + ")"
                    )
                subjects = pick_subjects(conn)
            finally:
                conn.close()
            cmds = commands(subjects, now)
            if args.explain:
                explain_reports(db_url, state_dir, cmds)
            results = time_reports(db_url, state_dir, cmds, args.repeat)
        finally:
            if args.keep or args.reuse:
                log(f"kept database {database} ({db_url})")
            else:
                with admin.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.close()

    print(
        f"\n{args.cdrs:,} CDRs, {args.cards:,} cards, PostgreSQL {version}; "
        f"{machine()}; best and median of {args.repeat} runs after a warm-up\n"
    )
    width = max(len(name) for name, _, _ in results)
    print(f"| {'report'.ljust(width)} | best s | median s | < {TARGET_SECONDS:g} s |")
    print(f"|{'-' * (width + 2)}|--------|----------|-------|")
    for name, best, median in results:
        ok = "yes" if median < TARGET_SECONDS else "**no**"
        print(f"| {name.ljust(width)} | {best:6.3f} | {median:8.3f} | {ok:5} |")
    return 0 if all(m < TARGET_SECONDS for _, _, m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
