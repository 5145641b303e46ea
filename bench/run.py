"""Benchmark Prepaid AAA against FreeRADIUS 3 + rlm_sql on the same machine, in one invocation.

    python -m bench.run [--quick] [--cards N] [--rates N] [--duration S] [--workers N]
                        [--window N ...] [--scenario auth|calls|mixed|mixed-open ...]
                        [--no-freeradius]

What it does, all on loopback and a throw-away PostgreSQL database (``bench_<random>``):

1. migrates it with ``prepaidctl db upgrade``, adds a NAS for 127.0.0.1, a rate group with
   ``--rates`` rates (44 at 0.07/min, fee 0.05, 30/6 among them), creates ``--cards`` cards with
   ``prepaidctl batch create`` (timed, with its peak RSS) and activates them;
2. loads FreeRADIUS's own schema into the same database with one radcheck row per card, and
   starts FreeRADIUS (see :mod:`bench.freeradius`) and ``prepaid-radiusd`` (PostgreSQL + Redis,
   log level warning) on fixed loopback ports;
3. runs every scenario against Prepaid AAA and then at once against FreeRADIUS (so a noisy
   machine disturbs both alike), with the same load generator (:mod:`bench.loadgen`);
4. prints one table, and removes everything: processes, temporary files, the database and the
   Redis keys under its own prefix.

Scenarios: ``auth`` authorizations, closed loop; ``calls`` full calls (Access-Request, Start,
Stop), closed loop; ``mixed`` 90 % full calls and 10 % wrong PINs, closed loop; ``mixed-open``
the same mix at a fixed ``--rate`` of requests per second (open loop: the latency target).
The closed-loop scenarios run at each ``--window`` (see :data:`DEFAULT_WINDOWS`); a server's
figure is its best of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path

from bench import freeradius, procstat
from bench.loadgen import (
    ACCESS_ACCEPT,
    ACCESS_REJECT,
    USER_NAME,
    LoadGenerator,
    Result,
    Workload,
    attr,
    encode_access_request,
    reply_valid,
)

BIN = Path(sys.executable).parent
SECRET = "s3cret-bench"  # noqa: S105 - a loopback test NAS secret
PG_BASE = os.environ.get("PREPAID_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PREPAID_BENCH_REDIS", "redis://127.0.0.1:6379/0")
SCENARIOS = ("auth", "calls", "mixed", "mixed-open")
#: The order the scenarios run in. ``auth`` last: its authorizations (over a hundred thousand
#: in a full run) are never started, and the reaper releases them ``start_timeout_seconds``
#: (two minutes) later, in the middle of whatever runs then: with ``auth`` first, the release
#: fell in the open loop at 1,000 requests/s (p99 21.9 ms; 10.5 ms in the next full run, with
#: ``auth`` last).
RUN_ORDER = ("calls", "mixed", "mixed-open", "auth")
#: Requests in flight of the closed-loop scenarios. Throughput depends on it, and not alike for
#: the two servers: FreeRADIUS's threads keep the machine busy from 64 on, so its throughput
#: hardly moves; Prepaid AAA answers whatever has arrived as one batch, so its batches and its
#: throughput grow with what is in flight. A server's figure is its best clean run of these
#: windows (see :func:`best`): its capacity, not one point of its curve.
DEFAULT_WINDOWS = (64, 256)
DESTINATION_PREFIX = "44"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ setup
def pg_connect(dbname: str):  # noqa: ANN201
    import psycopg2
    from psycopg2.extensions import make_dsn, parse_dsn

    params = parse_dsn(PG_BASE)
    params["dbname"] = dbname
    conn = psycopg2.connect(make_dsn(**params))
    conn.autocommit = True
    return conn


def pg_params() -> dict[str, str]:
    from psycopg2.extensions import parse_dsn

    return parse_dsn(PG_BASE)


def rate_sheet(path: Path, count: int, rng: random.Random) -> None:
    """``count`` rates; 44 is the only one that prefixes the benchmark's destinations."""
    header = "prefix,description,price_per_minute,connection_fee,first_increment,"
    header += "next_increment,grace_seconds\n"
    rows = ["44,United Kingdom,0.07,0.05,30,6,0"]
    seen = {"44"}
    while len(rows) < count:
        prefix = str(rng.randint(1, 9)) + "".join(rng.choices("0123456789", k=rng.randint(1, 7)))
        if prefix.startswith("44") or prefix == "4" or prefix in seen:
            continue
        seen.add(prefix)
        price = f"{rng.randint(1, 500) / 1000:.3f}"
        rows.append(f"{prefix},Destination {prefix},{price},0.00,60,60,0")
    path.write_text(header + "\n".join(rows) + "\n")


@dataclass
class Timed:
    seconds: float
    max_rss_mb: float
    stdout: str


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> Timed:
    """Run a command to completion: its wall time and its own peak RSS (wait4 rusage)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)  # noqa: S603 - our own commands
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{stdout}\n{stderr}")
    return Timed(seconds, usage.ru_maxrss / 1024, stdout)


def wait_ready(auth_port: int, what: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until the server answers an Access-Request (any verified answer will do)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.3)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
            packet, auth = encode_access_request(
                1, SECRET.encode(), attr(USER_NAME, b"ready-probe"), b"x"
            )
            sock.sendto(packet, ("127.0.0.1", auth_port))
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                continue
            if reply[0] in (ACCESS_ACCEPT, ACCESS_REJECT) and reply_valid(
                reply, auth, SECRET.encode()
            ):
                return
        raise RuntimeError(f"{what} did not answer on 127.0.0.1:{auth_port} within {timeout} s")
    finally:
        sock.close()


def check_ports_free(ports: list[int]) -> None:
    """Fail early, and clearly, when another process holds one of the benchmark's ports."""
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(
                f"127.0.0.1:{port} is in use (another benchmark still running?); "
                "choose others with --ports"
            ) from None
        finally:
            sock.close()


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ measuring
@dataclass
class Row:
    server: str
    scenario: str
    result: Result
    server_cpu: float
    db_cpu: float
    idle: float  # share of the machine's CPU time left idle during the run
    unit: str  # what one transaction is
    rate: float = 0.0  # open loop: offered requests/s
    window: int = 0  # closed loop: requests in flight

    @property
    def txn_rate(self) -> float:
        return self.result.rate()

    @property
    def req_rate(self) -> float:
        r = self.result
        return r.answered_in_window / r.duration if r.duration else 0.0


@dataclass
class Target:
    name: str
    host: str
    auth_port: int
    acct_port: int
    proc: subprocess.Popen
    label: str
    extra: dict[str, str] = field(default_factory=dict)


class Meter:
    """CPU of the server's process tree, of PostgreSQL, and the machine's idle time."""

    def __init__(self, monitor, database: str) -> None:  # noqa: ANN001
        self.monitor = monitor
        self.database = database

    def pg_pids(self) -> list[int]:
        with self.monitor.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND (datname = %s OR backend_type <> 'client backend')",
                (self.database,),
            )
            return [row[0] for row in cur.fetchall()]

    def sample(self, root: int) -> tuple[dict[int, float], dict[int, float], tuple[float, float]]:
        return (
            procstat.tree_cpu(root),
            procstat.cpu_seconds(self.pg_pids()),
            procstat.machine_idle(),
        )


def measure(
    meter: Meter, target: Target, scenario: str, unit: str, run: Callable[[], Result]
) -> Row:
    with meter.monitor.cursor() as cur:
        # Statistics as autovacuum keeps them in steady state (it would analyze within a minute,
        # longer than a scenario). Without this the tables of calls, which the warm-up has just
        # grown from empty, keep the plans made when they were empty: PostgreSQL then reads every
        # row of live_sessions per authorization. Analyzing invalidates those cached plans.
        cur.execute("ANALYZE")
        cur.execute("CHECKPOINT")
    srv0, pg0, (idle0, total0) = meter.sample(target.proc.pid)
    result = run()
    srv1, pg1, (idle1, total1) = meter.sample(target.proc.pid)
    busy_total = total1 - total0
    return Row(
        server=target.label,
        scenario=scenario,
        result=result,
        server_cpu=procstat.delta(srv0, srv1),
        db_cpu=procstat.delta(pg0, pg1),
        idle=(idle1 - idle0) / busy_total if busy_total else 0.0,
        unit=unit,
    )


def settle(root: int, limit: float, quiet: float = 0.1) -> bool:
    """Wait until the process tree uses under ``quiet`` of a core; False after ``limit`` s."""
    deadline = time.monotonic() + limit
    before = procstat.tree_cpu(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        after = procstat.tree_cpu(root)
        if procstat.delta(before, after) < quiet * 0.5:
            return True
        before = after
    return False


# ------------------------------------------------------------------------------ scenarios
@dataclass
class Plan:
    duration: float
    warmup: float
    window: int
    rate: float
    timeout: float
    nas_sockets: int = 64


def scenario_run(
    scenario: str,
    target: Target,
    pins: dict[str, list[str]],
    cursor: dict[str, int],
    plan: Plan,
    meter: Meter,
    seed: int,
    issued: Container[str] = (),
) -> tuple[Row, int]:
    """One scenario against one server; also returns the card cursor it reached. The wrong
    PINs of the mixed load are drawn outside ``issued``."""
    secret = SECRET.encode()
    kind = {"auth": "auth"}.get(scenario, "call")
    fail_share = 0.1 if scenario.startswith("mixed") else 0.0
    part = {"auth": "auth", "calls": "calls"}.get(scenario, "mixed")
    workload = Workload(
        scenario,
        kind,
        pins[part],
        secret,
        fail_share=fail_share,
        seed=seed,
        first_card=cursor[part],
        issued=issued,
    )
    unit = {"auth": "auth", "calls": "call"}.get(scenario, "txn")
    if scenario == "mixed-open":
        slots = 256 * plan.nas_sockets  # 256 Identifiers per socket
        gen = LoadGenerator(
            target.host, target.auth_port, target.acct_port, secret, slots, plan.timeout, 256
        )
        try:
            # The rate is in requests; a transaction is 2.8 requests on average (0.9 x 3 + 0.1).
            txn_rate = plan.rate / (3 * (1 - fail_share) + fail_share)
            warm = gen.plan(workload, int(txn_rate * plan.warmup))
            gen.open_loop(warm, txn_rate, plan.warmup)
            txns = gen.plan(workload, int(txn_rate * plan.duration))
            row = measure(
                meter,
                target,
                scenario,
                unit,
                lambda: gen.open_loop(txns, txn_rate, plan.duration),
            )
            return row, workload.next_card
        finally:
            gen.close()
    # A socket per slot: as many flows as requests in flight, as from a fleet of NAS, so the
    # kernel spreads them evenly over the server's workers (SO_REUSEPORT hashes by flow; over
    # eight flows one worker often got three quarters of them).
    gen = LoadGenerator(
        target.host, target.auth_port, target.acct_port, secret, plan.window, per_socket=1
    )
    try:
        # Warm up (connection pools, caches) and learn the rate, to encode just enough.
        # A small plan, so the cards it binds are few (an authorized card stays held).
        warm = gen.plan(workload, plan.window * 8)
        first = gen.closed_loop(warm, plan.warmup)
        rate = first.done_total / max(first.wall, 1e-3)
        count = int(rate * plan.duration * 3.0) + plan.window * 8
        base = workload.next_card
        txns = gen.plan(workload, count)
        row = measure(meter, target, scenario, unit, lambda: gen.closed_loop(txns, plan.duration))
        # The cards the run took (slot s's round r is card base + s + window * r), not all
        # those encoded: a later run starts after the held ones, not three times further on.
        used = min(row.result.rounds * plan.window, workload.next_card - base)
        return row, base + used
    finally:
        gen.close()


# ------------------------------------------------------------------------------ report
def machine() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return info


def per(cpu: float, done: int) -> str:
    return f"{cpu / done * 1000:.2f}" if done else "-"


def fmt_ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.1f}"


def table(rows: list[Row]) -> str:
    head = (
        "server",
        "scenario",
        "load",
        "txn/s",
        "req/s",
        "lost",
        "p50 ms",
        "p99 ms",
        "ok",
        "srv ms/txn",
        "db ms/txn",
        "srv cores",
        "db cores",
        "gen cores",
        "idle",
    )
    lines = []
    for row in rows:
        r = row.result
        wall = r.wall or 1.0
        ok = f"{ok_share(row):.0%}"
        if r.fail_accepted:
            ok += f" ({r.fail_accepted} bad PINs accepted!)"
        load = f"window {row.window}" if r.mode == "closed" else f"{row.rate:.0f} req/s"
        lost = f"{r.lost}" + (f"+{r.slot_busy}" if r.slot_busy else "")
        if r.sent:
            lost += f" ({r.lost / r.sent:.2%})"
        lines.append(
            (
                row.server,
                row.scenario,
                load,
                f"{row.txn_rate:.0f}",
                f"{row.req_rate:.0f}",
                lost,
                fmt_ms(r.percentile(0.5)),
                fmt_ms(r.percentile(0.99)),
                ok,
                per(row.server_cpu, r.done_total),
                per(row.db_cpu, r.done_total),
                f"{row.server_cpu / wall:.2f}",
                f"{row.db_cpu / wall:.2f}",
                f"{r.loadgen_cpu / wall:.2f}",
                f"{row.idle:.0%}",
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        out.append("| " + " | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + " |")
    return "\n".join(out)


def ok_share(row: Row) -> float:
    """The share of valid PINs that were accepted (auth) or whose calls were billed (calls,
    mixed): the table's ``ok``."""
    r = row.result
    valid = r.accepted + r.rejected
    done = r.calls_billed if row.unit in ("call", "txn") else r.accepted
    return done / valid if valid else 0.0


def clean(row: Row) -> bool:
    """Nothing lost, no wrong PIN accepted, at least 99 % ``ok``: a run whose valid PINs were
    refused (say as in use, because the window is wider than the cards) measured cheap
    refusals, and a lost request is not throughput (RFC 1242)."""
    return row.result.lost == 0 and row.result.fail_accepted == 0 and ok_share(row) >= 0.99


def best(rows: list[Row], server: str, scenario: str) -> Row | None:
    """A server's figure for a closed-loop scenario: its highest throughput among its clean
    runs. Without one, the run nearest to clean (the most ``ok``, then the fewest lost), whose
    throughput may be cheap refusals: the ratios then give no verdict."""
    runs = [row for row in rows if row.server == server and row.scenario == scenario]
    clean_runs = [row for row in runs if clean(row)]
    if clean_runs:
        return max(clean_runs, key=lambda row: row.txn_rate)
    return max(runs, key=lambda row: (ok_share(row), -row.result.lost, row.txn_rate), default=None)


def ratios(rows: list[Row], rate: float) -> list[str]:
    out = []
    for scenario, what in (
        ("auth", "authorizations/s"),
        ("calls", "full calls/s"),
        ("mixed", "mixed transactions/s"),
    ):
        ours, theirs = best(rows, "prepaid-aaa", scenario), best(rows, "freeradius", scenario)
        for row in (ours, theirs):
            if row is not None and not clean(row):
                out.append(
                    f"  note: no clean {scenario} run of {row.server} (lost requests, a wrong "
                    "PIN accepted, or under 99 % ok): its figure below is not a clean one"
                )
        if ours and theirs and theirs.txn_rate:
            ratio = ours.txn_rate / theirs.txn_rate
            verdict = "met" if ratio >= 1.5 or scenario == "mixed" else "MISSED"
            if not (clean(ours) and clean(theirs)):
                verdict = "(no verdict: not a clean figure)"
            target = " (target >= 1.5x)" if scenario != "mixed" else ""
            out.append(
                f"{what}: Prepaid AAA {ours.txn_rate:.0f} (window {ours.window}) / FreeRADIUS "
                f"{theirs.txn_rate:.0f} (window {theirs.window}) = {ratio:.2f}x{target}"
                + (f" {verdict}" if target else "")
            )
        elif ours:
            out.append(f"{what}: Prepaid AAA {ours.txn_rate:.0f} (window {ours.window})")
        if scenario != "auth":
            continue
        for row in rows:
            r = row.result
            refused = r.rejected / max(r.accepted + r.rejected, 1)
            if row.server == "prepaid-aaa" and row.scenario == "auth" and refused > 0.01:
                out.append(
                    f"  note: {refused:.0%} of the authorizations at window {row.window} were "
                    "refused, most likely on cards still held by the scenario's own grants "
                    "(cheap refusals): rerun with more --cards for a clean figure"
                )
    for row in rows:
        if row.server != "prepaid-aaa" or row.scenario != "mixed-open":
            continue
        r = row.result
        p99 = r.percentile(0.99) * 1000
        ok = p99 < 10 and r.lost == 0 and r.slot_busy == 0
        target = " (target at 1000: p99 < 10 ms, no loss)" if row.rate >= 1000 else ""
        out.append(
            f"Prepaid AAA, mixed load at {row.rate:.0f} requests/s: "
            + (f"p99 {p99:.1f} ms" if r.answered else "no reply within the timeout")
            + f", lost {r.lost} of {r.sent}{target}"
            + ((" met" if ok else " MISSED") if target else "")
        )
    return out


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="about 2 minutes: fewer cards, short runs"
    )
    parser.add_argument("--cards", type=int, help="cards to create (default 700000, quick 250000)")
    parser.add_argument("--rates", type=int, help="rates in the group (default 1000, quick 100)")
    parser.add_argument(
        "--card-value",
        default="5.00",
        help="value of each card (default 5.00, about 40 calls of the benchmark's; give few "
        "cards more, or they run out of money and the runs measure cheap rejects)",
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per scenario (default 20, quick 6)"
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per scenario (default 3, quick 1.5)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="prepaid-radiusd worker processes (default: one per CPU, as deployed)",
    )
    parser.add_argument(
        "--window",
        type=int,
        action="append",
        help="requests in flight of the closed-loop scenarios (repeatable; default 64 and 256: "
        "each server's best of them is its figure)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="requests/s of the open-loop mixed load (repeatable; default 1000)",
    )
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="seconds before a request is lost"
    )
    parser.add_argument(
        "--nas-sockets",
        type=int,
        default=64,
        help="sockets the open-loop load comes from (default 64, as from a fleet of NAS; "
        "1: one softswitch that sends everything from one socket)",
    )
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="repeatable; default all"
    )
    parser.add_argument("--no-freeradius", action="store_true", help="measure Prepaid AAA only")
    parser.add_argument(
        "--ports",
        default="21812,21813,31812,31813",
        help="Prepaid AAA auth,acct and FreeRADIUS auth,acct ports on 127.0.0.1",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for prepaid-radiusd, e.g. PREPAID_SERVER_THREADS=16",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the server with py-spy during one scenario (.svg or .txt)",
    )
    parser.add_argument(
        "--profile-scenario",
        default="auth",
        choices=SCENARIOS,
        help="the scenario --profile records (default auth)",
    )
    parser.add_argument(
        "--profile-wall",
        action="store_true",
        help="profile wall-clock time of every thread instead of GIL holders",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the database and temp dir")
    args = parser.parse_args(argv)

    if args.nas_sockets < 1:
        print("error: --nas-sockets must be at least 1", file=sys.stderr)
        return 2
    if args.profile and not py_spy():
        print("error: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    windows = sorted(set(args.window or DEFAULT_WINDOWS))
    if windows[0] < 1:
        print("error: --window must be at least 1", file=sys.stderr)
        return 2
    cards = args.cards or (250_000 if args.quick else 700_000)
    rates = args.rates or (100 if args.quick else 1_000)
    plan = Plan(
        duration=args.duration or (6.0 if args.quick else 20.0),
        warmup=args.warmup or (1.5 if args.quick else 3.0),
        window=windows[0],
        rate=(args.rate or [1000.0])[0],
        timeout=args.timeout,
        nas_sockets=args.nas_sockets,
    )
    scenarios = sorted(set(args.scenario or SCENARIOS), key=RUN_ORDER.index)
    ports = [int(p) for p in args.ports.split(",")]
    use_fr = not args.no_freeradius
    if use_fr and (missing := freeradius.available()):
        print(f"error: {missing} (or run with --no-freeradius)", file=sys.stderr)
        return 2

    tag = secrets.token_hex(4)
    database = f"bench_{tag}"
    tmp = Path(tempfile.mkdtemp(prefix=f"prepaid-bench-{tag}-"))
    redis_prefix = f"bench-{tag}:"
    pg = pg_params()
    db_url = (
        f"postgresql+psycopg2://{pg.get('user', 'postgres')}@{pg.get('host', '127.0.0.1')}:"
        f"{pg.get('port', '5432')}/{database}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREPAID_")}
    env.update(
        PREPAID_DATABASE_URL=db_url,
        PREPAID_REDIS_URL=REDIS_URL,
        PREPAID_REDIS_PREFIX=redis_prefix,
        PREPAID_SERVER_STATE_DIR=str(tmp / "state"),
        PREPAID_SERVER_LOG_LEVEL="warning",
        PREPAID_SERVER_WORKERS=str(args.workers),
        # One NAS stands for a whole network here: a real deployment has many NAS, so the
        # per-NAS wrong-PIN lockout must not turn the mixed load's failures into cheap rejects.
        PREPAID_SECURITY_NAS_FAILURE_LIMIT="1000000000",
        PREPAID_RADIUS_BIND="127.0.0.1",
        PREPAID_RADIUS_AUTH_PORT=str(ports[0]),
        PREPAID_RADIUS_ACCT_PORT=str(ports[1]),
        PYTHONUNBUFFERED="1",
    )
    for item in args.server_env:
        key, _, value = item.partition("=")
        env[key] = value

    check_ports_free(ports if use_fr else ports[:2])
    admin = pg_connect(pg.get("dbname", "postgres"))
    monitor = None
    server: subprocess.Popen | None = None
    fr_proc: subprocess.Popen | None = None
    setup: dict[str, str] = {}
    rows: list[Row] = []
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
        log(f"database {database}, temp dir {tmp}, redis prefix {redis_prefix}")
        ctl = str(BIN / "prepaidctl")

        def prepaidctl(*a: str) -> Timed:
            return run_measured([ctl, *a], env, tmp)

        prepaidctl("db", "upgrade")
        prepaidctl(
            "nas",
            "add",
            "bench",
            "--address",
            "127.0.0.1",
            "--secret",
            SECRET,
            "--profile",
            "cisco",
        )
        prepaidctl("rategroup", "add", "bench", "--currency", "USD")
        rate_sheet(tmp / "rates.csv", rates, random.Random(7))
        t = prepaidctl("rates", "import", "bench", str(tmp / "rates.csv"))
        setup["rates import"] = f"{rates} rates in {t.seconds:.1f} s"
        log(f"creating {cards} cards")
        out = tmp / "cards.csv"
        t = run_measured(
            [
                ctl,
                "batch",
                "create",
                "--rate-group",
                "bench",
                "--type",
                "standard",
                "--value",
                args.card_value,
                "--count",
                str(cards),
                "--output",
                str(out),
                "--format",
                "json",
            ],
            env,
            tmp,
        )
        batch = json.loads(t.stdout)
        batch = batch[0] if isinstance(batch, list) else batch
        setup["batch create"] = (
            f"{cards} cards in {t.seconds:.1f} s ({cards / t.seconds:.0f} cards/s), "
            f"peak RSS {t.max_rss_mb:.0f} MB"
        )
        log(setup["batch create"])
        t = run_measured([ctl, "card", "activate", "--batch", str(batch["id"])], env, tmp)
        setup["activate batch"] = f"{t.seconds:.1f} s, peak RSS {t.max_rss_mb:.0f} MB"
        with out.open() as fh:
            all_pins = [row["pin"] for row in csv.DictReader(fh)]
        random.Random(11).shuffle(all_pins)
        # A random well-formed PIN is a card's one time in 100,000 with a million 12-digit cards
        # (the density the batch allows): the mixed load's wrong PINs must be no card's.
        issued = frozenset(all_pins)
        n = len(all_pins)
        # An authorization without accounting holds its card until the grant times out, so
        # the auth scenario needs a card per request; a call gives its card back at the Stop
        # and a card of 5.00 pays for about 40 of them, so calls need few.
        pins = {
            "auth": all_pins[: 8 * n // 10],
            "calls": all_pins[8 * n // 10 : 9 * n // 10],
            "mixed": all_pins[9 * n // 10 :],
        }
        for part in {s for s in scenarios if s != "mixed-open"}:
            if len(pins[part]) < windows[-1]:
                log(
                    f"note: {len(pins[part])} cards for {part}, fewer than {windows[-1]} in "
                    "flight: cards are shared between slots and their calls refused as in use "
                    "(give more --cards, or a smaller --window)"
                )

        monitor = pg_connect(database)
        if use_fr:
            started = time.perf_counter()
            freeradius.load_tables(monitor, all_pins)
            setup["radcheck load"] = f"{n} rows in {time.perf_counter() - started:.1f} s"
        with monitor.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
        meter = Meter(monitor, database)

        log(f"starting prepaid-radiusd on 127.0.0.1:{ports[0]}/{ports[1]}")
        srv_log = (tmp / "prepaid-radiusd.log").open("ab")

        def start_server() -> subprocess.Popen:
            proc = subprocess.Popen(  # noqa: S603 - our own commands
                [str(BIN / "prepaid-radiusd")],
                env=env,
                cwd=tmp,
                stdout=srv_log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_ready(ports[0], "prepaid-radiusd", proc)
            except BaseException:
                stop_process(proc)  # it may hang instead of exiting when it cannot start
                raise
            return proc

        server = start_server()
        targets = [Target("prepaid", "127.0.0.1", ports[0], ports[1], server, "prepaid-aaa")]
        if use_fr:
            log(f"starting FreeRADIUS {freeradius.version()} on 127.0.0.1:{ports[2]}/{ports[3]}")
            raddb = freeradius.write_config(
                tmp / "freeradius",
                database,
                SECRET,
                ports[2],
                ports[3],
                pg_host=pg.get("host", "127.0.0.1"),
                pg_port=int(pg.get("port", 5432)),
                pg_user=pg.get("user", "postgres"),
            )
            fr_proc = freeradius.start(raddb, tmp / "freeradius.log")
            wait_ready(ports[2], "freeradius", fr_proc)
            targets.append(
                Target("freeradius", "127.0.0.1", ports[2], ports[3], fr_proc, "freeradius")
            )

        # (scenario, open-loop rate, closed-loop window) in turn.
        runs: list[tuple[str, float, int]] = []
        for scenario in scenarios:
            if scenario == "mixed-open":
                runs += [(scenario, rate, 0) for rate in args.rate or [1000.0]]
            else:
                runs += [(scenario, plan.rate, window) for window in windows]
        cursor = dict.fromkeys(pins, 0)
        profiled = False
        for i, (scenario, rate, window) in enumerate(runs):
            plan.rate, plan.window = rate, window or windows[0]
            start_cursor = dict(cursor)  # both servers get the same cards
            for target in targets:
                log(f"{scenario} against {target.label}" + (f", window {window}" if window else ""))
                profiler = None
                if (
                    args.profile
                    and not profiled
                    and scenario == args.profile_scenario
                    and target.name == "prepaid"
                ):
                    profiler = start_profiler(args.profile, server.pid, plan, not args.profile_wall)
                    profiled = True
                row, reached = scenario_run(
                    scenario, target, pins, start_cursor, plan, meter, seed=100 + i, issued=issued
                )
                if target.name == "prepaid":
                    # Only Prepaid AAA holds a card after an authorization (until the grant
                    # times out); the next run starts after the cards its run took.
                    part = {"auth": "auth", "calls": "calls"}.get(scenario, "mixed")
                    cursor[part] = max(cursor[part], reached)
                row.rate, row.window = rate, window
                if profiler is not None:
                    profiler.wait()
                rows.append(row)
                r = row.result
                log(
                    f"  {row.txn_rate:.0f} {row.unit}/s, lost {r.lost}, "
                    f"p99 {fmt_ms(r.percentile(0.99))} ms"
                    + (" (ran out of pre-encoded transactions)" if r.exhausted else "")
                )
                for proc, what in ((server, "prepaid-radiusd"), (fr_proc, "freeradius")):
                    if proc is not None and proc.poll() is not None:
                        raise RuntimeError(f"{what} exited with {proc.returncode}")
                # An overloaded server may still be working through requests its NAS has
                # given up on; that work must not be billed to the next measurement.
                if not settle(target.proc.pid, limit=20.0):
                    if target.name != "prepaid":
                        log(f"  {target.label} still busy after 20 s")
                        continue
                    log(
                        f"  {target.label} still busy after 20 s (a backlog of requests "
                        "already given up on): restarting it"
                    )
                    stop_process(server)
                    server = start_server()
                    target.proc = server

        info = machine()
        print()
        print(
            f"Prepaid AAA benchmark: {cards} cards of {args.card_value}, {rates} rates, "
            f"{plan.duration:.0f} s per "
            f"scenario, closed loop with {' and '.join(map(str, windows))} in flight, "
            f"server workers {args.workers}"
            + (f", open loop from {plan.nas_sockets} sockets" if plan.nas_sockets != 64 else "")
        )
        print(
            f"machine: {info.get('nproc')} CPUs, {info.get('cpu', '?')}, {info.get('memory', '?')}"
            + (f"; FreeRADIUS {freeradius.version()}" if use_fr else "")
        )
        for key, value in setup.items():
            print(f"{key}: {value}")
        print()
        print(table(sorted(rows, key=lambda row: (SCENARIOS.index(row.scenario), row.window))))
        print()
        for line in ratios(rows, plan.rate):
            print(line)
        warnings = [
            line
            for line in (tmp / "prepaid-radiusd.log").read_text(errors="replace").splitlines()
            if line.strip()
        ]
        if warnings:
            print(
                f"prepaid-radiusd logged {len(warnings)} warning lines; first: {warnings[0][:300]}"
            )
        if args.json:
            Path(args.json).write_text(
                json.dumps(to_json(rows, setup, info, args, cards, rates), indent=2)
            )
        return 0
    finally:
        stop_process(server)
        stop_process(fr_proc)
        if monitor is not None:
            monitor.close()
        try:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=redis_prefix + "*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        except Exception as exc:  # noqa: BLE001 - cleanup goes on
            log(f"could not clean Redis keys {redis_prefix}*: {exc}")
        if not args.keep:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept database {database} and {tmp}")
        admin.close()


def py_spy() -> str | None:
    """py-spy's path: on the PATH, or beside this Python; None when it is not installed."""
    local = BIN / "py-spy"
    return shutil.which("py-spy") or (str(local) if local.exists() else None)


def start_profiler(path: str, pid: int, plan: Plan, gil: bool) -> subprocess.Popen:
    """py-spy on the server; with ``gil`` only samples holding the GIL (Python CPU time)."""
    spy = py_spy()
    assert spy is not None  # checked before the run (main)
    seconds = int(plan.warmup + plan.duration)
    fmt = "flamegraph" if path.endswith(".svg") else "raw"
    return subprocess.Popen(  # noqa: S603 - our own commands
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--duration",
            str(seconds),
            "--rate",
            "100",
            "--format",
            fmt,
            "--output",
            path,
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(path + ".log", "wb"),  # noqa: SIM115 - closed when the process exits
    )


def to_json(
    rows: list[Row], setup: dict[str, str], info: dict[str, str], args, cards: int, rates: int
) -> dict:  # noqa: ANN001
    return {
        "machine": info,
        "cards": cards,
        "rates": rates,
        "setup": setup,
        "rows": [
            {
                "server": row.server,
                "scenario": row.scenario,
                "offered_req_per_s": row.rate if row.result.mode == "open" else None,
                "window": row.window if row.result.mode == "closed" else None,
                "txn_per_s": row.txn_rate,
                "req_per_s": row.req_rate,
                "lost": row.result.lost,
                "sent": row.result.sent,
                "p50_ms": row.result.percentile(0.5) * 1000,
                "p99_ms": row.result.percentile(0.99) * 1000,
                "server_cpu_s": row.server_cpu,
                "db_cpu_s": row.db_cpu,
                "loadgen_cpu_s": row.result.loadgen_cpu,
                "wall_s": row.result.wall,
                "done": row.result.done_total,
                "accepted": row.result.accepted,
                "rejected": row.result.rejected,
                "calls_billed": row.result.calls_billed,
                "idle": row.idle,
            }
            for row in rows
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
