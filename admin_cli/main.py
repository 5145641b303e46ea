"""``prepaidctl``: the operator's commands.

Every command loads the settings (``--config FILE``, else ``$PREPAID_AAA_CONFIG``, else the
built-in defaults, with ``PREPAID_<SECTION>_<KEY>`` overrides), checks that the database schema
is current (except ``db upgrade``, which makes it so) and runs one transaction of
:class:`billing.storage.admin.Admin`.

An operator mistake, a configuration problem, a missing file or an unreachable database prints
one line ``error: ...`` on stderr and exits 1; usage errors detected by the parser exit 2.
PINs are never printed: they appear once, in the export file of ``batch create``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from typer.core import TyperGroup

import schema
from admin_cli.output import OutputFormat, emit_object, emit_records, stderr_console
from billing.calls import utc_from_epoch
from billing.money import MoneyError, format_amount
from billing.pins import PinSpaceError
from billing.ratesheet import RatesheetError, parse_rates_csv
from billing.settings import ConfigError, Settings, load_settings
from billing.storage.admin import (
    Admin,
    AdminError,
    BatchInfo,
    CsvCardExport,
    open_export_file,
)
from billing.storage.database import Database, SchemaNotReady
from billing.storage.keys import KeyError_, load_or_create_pin_key

PROGRESS_THRESHOLD = 10_000
"""Batches at least this large show a progress bar on stderr."""


# ---------------------------------------------------------------------------------- errors
def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _message(exc: BaseException) -> str:
    if isinstance(exc, OperationalError):
        return f"database unavailable: {_one_line(str(exc.orig))}"
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        return f"database error: {_one_line(str(orig if orig is not None else exc))}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return _one_line(str(exc))


_USER_ERRORS = (
    AdminError,
    ConfigError,
    SchemaNotReady,
    RatesheetError,
    MoneyError,
    PinSpaceError,
    KeyError_,
    SQLAlchemyError,
    OSError,
    UnicodeDecodeError,
)


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


class _Group(TyperGroup):
    """The root command group: turns expected failures into one line and exit status 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            fail(_message(exc))


# ---------------------------------------------------------------------------------- context
class Cli:
    """Per-invocation state: settings and database, opened lazily and closed at exit."""

    def __init__(self, ctx: typer.Context, config: Path | None) -> None:
        self._ctx = ctx
        self._config = config
        self._settings: Settings | None = None
        self._db: Database | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self._config)
        return self._settings

    @property
    def places(self) -> int:
        return self.settings.money_places

    def database(self, check: bool = True) -> Database:
        if self._db is None:
            s = self.settings
            self._db = Database.from_url(
                s.database_url, pool_size=2, echo=bool(s["database"]["echo"])
            )
            self._ctx.call_on_close(self._db.dispose)
        if check:
            self._db.check_schema()
        return self._db

    def admin(self) -> Admin:
        return Admin.from_settings(self.database(), self.settings)

    def pin_key(self) -> bytes:
        return load_or_create_pin_key(self.settings.pin_key_file)

    @staticmethod
    def now() -> datetime:
        return utc_from_epoch(time.time())


def _cli(ctx: typer.Context) -> Cli:
    obj = ctx.find_root().obj
    assert isinstance(obj, Cli)
    return obj


def _parse_date(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(f"{option}: {text!r} is not a date (use YYYY-MM-DD)") from None


def _record(obj: Any, columns: list[str] | None = None) -> dict[str, Any]:
    data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {c: data[c] for c in columns} if columns else data


def _say(message: str) -> None:
    typer.echo(message)


# ---------------------------------------------------------------------------------- apps
HELP = """Operate a Prepaid AAA server: NAS clients, rate groups, card batches, cards, bind
numbers, live sessions and reports.

Example: `prepaidctl --config /etc/prepaid-aaa/prepaid-aaa.toml card show 1000000001`
"""

app = typer.Typer(
    cls=_Group,
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _sub(name: str, help_text: str) -> typer.Typer:
    sub = typer.Typer(
        help=help_text, no_args_is_help=True, rich_markup_mode="markdown", name=name
    )
    app.add_typer(sub, name=name)
    return sub


db_app = _sub("db", "Database schema.\n\nExample: `prepaidctl db upgrade`")
nas_app = _sub(
    "nas",
    "Trusted NAS clients (gateways, softswitches).\n\n"
    "Example: `prepaidctl nas add gw1 --address 10.0.0.0/24 --secret S3cret --profile cisco`",
)
rategroup_app = _sub(
    "rategroup", "Rate groups (a tariff and its currency).\n\nExample: `prepaidctl rategroup list`"
)
rates_app = _sub(
    "rates",
    "Rates per destination prefix.\n\nExample: `prepaidctl rates import retail rates.csv`",
)
batch_app = _sub(
    "batch",
    "Card batches.\n\nExample: `prepaidctl batch create --rate-group retail --type standard "
    "--value 5 --count 1000 --output batch1.csv`",
)
card_app = _sub("card", "Cards, by serial.\n\nExample: `prepaidctl card show 1000000001`")
bind_app = _sub(
    "bind",
    "Bind numbers: ANIs that reach a card without a PIN.\n\n"
    "Example: `prepaidctl bind add 1000000001 '+44 20 7946 0000'`",
)
sessions_app = _sub("sessions", "Live calls.\n\nExample: `prepaidctl sessions list`")
report_app = _sub(
    "report", "Reports.\n\nExample: `prepaidctl report card-bill 1000000001 --from 2026-01-01`"
)
demo_app = _sub("demo", "The demo data set.\n\nExample: `prepaidctl demo seed`")

FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", help="Output format: table, json or csv.", case_sensitive=False),
]


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Configuration file (TOML). Default: $PREPAID_AAA_CONFIG, else built-in defaults.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Cli(ctx, config)


# ---------------------------------------------------------------------------------- db
@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or upgrade the database schema to the latest revision.

    Example: `prepaidctl db upgrade`
    """
    cli = _cli(ctx)
    url = cli.settings.database_url
    db = cli.database(check=False)  # creates the SQLite directory if needed
    schema.upgrade(url)
    db.check_schema()
    shown = make_url(url).render_as_string(hide_password=True)
    _say(f"database {shown} is at revision {schema.current_head()}")


# ---------------------------------------------------------------------------------- nas
@nas_app.command("add")
def nas_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A unique name for the NAS.")],
    address: Annotated[
        str, typer.Option("--address", help="Source IP address or CIDR network.")
    ],
    secret: Annotated[str, typer.Option("--secret", help="RADIUS shared secret.")],
    profile: Annotated[
        str, typer.Option("--profile", help="Vendor profile: generic or cisco.")
    ] = "generic",
    require_message_authenticator: Annotated[
        str,
        typer.Option(
            "--require-message-authenticator",
            help="auto (required once the NAS sent one), yes or no.",
        ),
    ] = "auto",
) -> None:
    """Trust a NAS client (a running server picks it up within seconds).

    Example: `prepaidctl nas add gw1 --address 192.0.2.10 --secret S3cret --profile cisco`
    """
    cli = _cli(ctx)
    info = cli.admin().nas_add(
        name,
        address,
        secret,
        cli.now(),
        profile=profile,
        require_message_authenticator=require_message_authenticator,
    )
    _say(f"added NAS {info.name} ({info.address}, profile {info.profile})")


@nas_app.command("list")
def nas_list(ctx: typer.Context, fmt: FormatOpt = OutputFormat.TABLE) -> None:
    """List the NAS clients (secrets are not shown).

    Example: `prepaidctl nas list --format json`
    """
    cli = _cli(ctx)
    rows = [_record(n) for n in cli.admin().nas_list()]
    columns = [
        "name",
        "address",
        "profile",
        "require_message_authenticator",
        "message_authenticator_seen",
        "created_at",
    ]
    emit_records(rows, columns, fmt, cli.places, title="NAS clients", empty="no NAS clients")


@nas_app.command("remove")
def nas_remove(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The NAS name.")]
) -> None:
    """Stop trusting a NAS client.

    Example: `prepaidctl nas remove gw1`
    """
    _cli(ctx).admin().nas_remove(name)
    _say(f"removed NAS {name}")


# ---------------------------------------------------------------------------------- rate groups
@rategroup_app.command("add")
def rategroup_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A unique name for the rate group.")],
    currency: Annotated[
        str, typer.Option("--currency", help="ISO 4217 currency code.")
    ] = "USD",
) -> None:
    """Create a rate group.

    Example: `prepaidctl rategroup add retail --currency EUR`
    """
    cli = _cli(ctx)
    info = cli.admin().rategroup_add(name, cli.now(), currency=currency)
    _say(f"added rate group {info.name} ({info.currency})")


@rategroup_app.command("list")
def rategroup_list(ctx: typer.Context, fmt: FormatOpt = OutputFormat.TABLE) -> None:
    """List the rate groups with their number of rates.

    Example: `prepaidctl rategroup list --format csv`
    """
    cli = _cli(ctx)
    rows = [_record(g) for g in cli.admin().rategroup_list()]
    emit_records(
        rows,
        ["name", "currency", "rate_count", "created_at"],
        fmt,
        cli.places,
        title="Rate groups",
        empty="no rate groups",
    )


# ---------------------------------------------------------------------------------- rates
@rates_app.command("import")
def rates_import(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="The rate group.")],
    file: Annotated[Path, typer.Argument(help="CSV rate sheet.", dir_okay=False)],
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Delete the group's prefixes that are not in the file."),
    ] = False,
) -> None:
    """Import a rate sheet into a group, all or nothing (upsert by prefix).

    The header is
    `prefix,description,price_per_minute,connection_fee,first_increment,next_increment,grace_seconds`.

    Example: `prepaidctl rates import retail rates.csv --replace`
    """
    cli = _cli(ctx)
    try:
        content = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AdminError(f"{file}: {_message(exc)}") from None
    except OSError as exc:
        raise AdminError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        rates = parse_rates_csv(content, cli.places)
    except RatesheetError as exc:
        raise AdminError(f"{file}: {exc}; nothing imported") from None
    result = cli.admin().import_rates(group, rates, replace=replace)
    _say(
        f"imported {result.total} rates into {result.rate_group}: {result.inserted} new, "
        f"{result.updated} updated, {result.deleted} deleted"
    )


@rates_app.command("lookup")
def rates_lookup(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="The rate group.")],
    number: Annotated[str, typer.Argument(help="A dialled number, in any usual form.")],
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Show the rate a call to NUMBER gets in GROUP (longest matching prefix).

    Exits 1 when no prefix matches (the call would be refused).

    Example: `prepaidctl rates lookup retail +442079460018`
    """
    cli = _cli(ctx)
    found = cli.admin().lookup_rate(group, number)
    if found.rate is None:
        fail(f"no rate in group {found.rate_group} matches {found.number}")
    record = {"number": found.number, **_record(found.rate)}
    emit_object(record, fmt, cli.places, title=f"Rate for {found.number}")


# ---------------------------------------------------------------------------------- batches
@batch_app.command("create")
def batch_create(
    ctx: typer.Context,
    rate_group: Annotated[str, typer.Option("--rate-group", help="Rate group of the cards.")],
    card_type: Annotated[
        str,
        typer.Option("--type", help="standard, rechargeable, unlimited or disposable."),
    ],
    value: Annotated[str, typer.Option("--value", help="Face value of each card, e.g. 5.00.")],
    count: Annotated[int, typer.Option("--count", help="Number of cards.", min=1)],
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="Export CSV of serials and PINs (created, never overwritten).",
            dir_okay=False,
        ),
    ],
    validity_days: Annotated[
        int | None, typer.Option("--validity-days", help="Days of validity from first use.")
    ] = None,
    grace_days: Annotated[
        int, typer.Option("--grace-days", help="Days the balance is kept after expiry.")
    ] = 0,
    expires_on: Annotated[
        str | None, typer.Option("--expires-on", help="Absolute last day of use, YYYY-MM-DD.")
    ] = None,
    max_calls: Annotated[
        int, typer.Option("--max-calls", help="Concurrent calls allowed per card.")
    ] = 1,
    pin_length: Annotated[
        int, typer.Option("--pin-length", help="PIN digits (10-16), check digit included.")
    ] = 12,
    pin_prefix: Annotated[str, typer.Option("--pin-prefix", help="Fixed leading PIN digits.")] = "",
    activation: Annotated[
        str, typer.Option("--activation", help="manual or first-use.")
    ] = "manual",
    note: Annotated[str, typer.Option("--note", help="A note kept with the batch.")] = "",
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Issue a batch of cards; their PINs go to the --output file only (mode 0600).

    Example: `prepaidctl batch create --rate-group retail --type standard --value 5 --count 1000
    --validity-days 30 --output batch-5usd.csv`
    """
    cli = _cli(ctx)
    expiry = _parse_date(expires_on, "--expires-on")
    admin = cli.admin()
    key = cli.pin_key()
    max_density = float(cli.settings["security"]["max_pin_density"])
    fh = open_export_file(output)
    committed = False
    try:
        with contextlib.ExitStack() as stack:
            progress_cb = None
            if count >= PROGRESS_THRESHOLD:
                bar = Progress(
                    TextColumn("issuing cards"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=stderr_console(),
                    transient=True,
                )
                stack.enter_context(bar)
                task = bar.add_task("cards", total=count)

                def progress_cb(done: int) -> None:
                    bar.update(task, completed=done)

            with fh:
                batch = admin.create_batch(
                    rate_group=rate_group,
                    card_type=card_type,
                    value=value,
                    count=count,
                    pin_key=key,
                    now=cli.now(),
                    validity_days=validity_days,
                    grace_days=grace_days,
                    expires_on=expiry,
                    max_calls=max_calls,
                    pin_length=pin_length,
                    pin_prefix=pin_prefix,
                    activation=activation,
                    max_density=max_density,
                    note=note,
                    export=CsvCardExport(fh, cli.places),
                    progress=progress_cb,
                )
                committed = True
    finally:
        if not committed:
            output.unlink(missing_ok=True)
    _print_batch(batch, output, fmt, cli.places)


def _print_batch(batch: BatchInfo, output: Path, fmt: OutputFormat, places: int) -> None:
    if fmt == OutputFormat.TABLE:
        _say(
            f"batch {batch.id}: {batch.count} {batch.card_type} cards of "
            f"{format_amount(batch.value, places)} {batch.currency} (rate group "
            f"{batch.rate_group}), serials {batch.first_serial}-{batch.last_serial}"
        )
        _say(f"PINs written to {output} (mode 0600); they are not shown anywhere else")
        return
    emit_object({**_record(batch), "output": str(output)}, fmt, places)


# ---------------------------------------------------------------------------------- cards
CARD_FIELDS = [
    "serial",
    "state",
    "type",
    "balance",
    "currency",
    "max_calls",
    "expires_at",
    "activated_at",
    "first_used_at",
    "batch_id",
    "rate_group",
    "bound_anis",
    "live_calls",
    "locked",
    "lock_reason",
    "stored_state",
    "activation",
    "validity_days",
    "grace_days",
    "failed_pin_count",
    "created_at",
]


@card_app.command("show")
def card_show(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Show a card: state, balance, expiry, bound numbers, live calls.

    Example: `prepaidctl card show 1000000001 --format json`
    """
    cli = _cli(ctx)
    info = cli.admin().card_show(serial)
    emit_object(_record(info, CARD_FIELDS), fmt, cli.places, title=f"Card {info.serial}")


def _parse_range(text: str) -> tuple[str, str]:
    first, sep, last = text.partition("-")
    if not sep or not first.strip() or not last.strip():
        raise AdminError(f"--range: {text!r} is not FIRST-LAST")
    return first.strip(), last.strip()


@card_app.command("activate")
def card_activate(
    ctx: typer.Context,
    serials: Annotated[
        list[str] | None, typer.Argument(help="Card serials.", show_default=False)
    ] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Every card of a batch.")] = None,
    serial_range: Annotated[
        str | None, typer.Option("--range", help="Serials FIRST-LAST, inclusive.")
    ] = None,
) -> None:
    """Activate inactive cards by serial, by batch or by serial range.

    Validity still starts at the first call.

    Example: `prepaidctl card activate --range 1000000001-1000000100`
    """
    cli = _cli(ctx)
    rng = _parse_range(serial_range) if serial_range is not None else None
    if sum(1 for way in (bool(serials), batch is not None, rng is not None) if way) != 1:
        raise AdminError("give card serials, --batch ID or --range FIRST-LAST (exactly one)")
    result = cli.admin().activate(
        cli.now(), serials=serials or (), batch_id=batch, serial_range=rng
    )
    skipped = result.matched - result.activated
    extra = f" ({skipped} were not inactive)" if skipped else ""
    _say(f"activated {result.activated} of {result.matched} cards{extra}")


@card_app.command("lock")
def card_lock(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the card).")] = "",
) -> None:
    """Lock a card: it is refused until unlocked.

    Example: `prepaidctl card lock 1000000001 --reason "reported stolen"`
    """
    info = _cli(ctx).admin().lock(serial, reason)
    _say(f"card {info.serial} locked ({info.lock_reason})")


@card_app.command("unlock")
def card_unlock(
    ctx: typer.Context, serial: Annotated[str, typer.Argument(help="Card serial.")]
) -> None:
    """Unlock a card and reset its wrong-PIN counter.

    Example: `prepaidctl card unlock 1000000001`
    """
    info = _cli(ctx).admin().unlock(serial)
    _say(f"card {info.serial} unlocked ({info.state})")


@card_app.command("recharge")
def card_recharge(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    amount: Annotated[str, typer.Argument(help="Amount to add, e.g. 10.00.")],
) -> None:
    """Top up a rechargeable card.

    Example: `prepaidctl card recharge 1000000001 10.00`
    """
    cli = _cli(ctx)
    result = cli.admin().recharge(serial, amount, cli.now())
    places = cli.places
    _say(
        f"card {result.serial} recharged with {format_amount(result.amount, places)} "
        f"{result.currency}; balance {format_amount(result.balance, places)} {result.currency}"
    )


# ---------------------------------------------------------------------------------- bind numbers
@bind_app.command("add")
def bind_add(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    ani: Annotated[str, typer.Argument(help="Caller number, in any usual form.")],
) -> None:
    """Bind a caller number (ANI) to a card.

    Example: `prepaidctl bind add 1000000001 '+44 20 7946 0000'`
    """
    cli = _cli(ctx)
    info = cli.admin().bind_add(serial, ani, cli.now())
    _say(f"bound {info.ani} to card {info.serial}")


@bind_app.command("remove")
def bind_remove(
    ctx: typer.Context, ani: Annotated[str, typer.Argument(help="The bound number.")]
) -> None:
    """Unbind a caller number.

    Example: `prepaidctl bind remove 442079460000`
    """
    info = _cli(ctx).admin().bind_remove(ani)
    _say(f"unbound {info.ani} from card {info.serial}")


@bind_app.command("list")
def bind_list(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """List the numbers bound to a card.

    Example: `prepaidctl bind list 1000000001`
    """
    cli = _cli(ctx)
    rows = [_record(b) for b in cli.admin().bind_list(serial)]
    emit_records(
        rows, ["serial", "ani", "created_at"], fmt, cli.places, title="Bound numbers",
        empty="no bound numbers",
    )


# ---------------------------------------------------------------------------------- sessions
SESSION_FIELDS = [
    "serial",
    "nas",
    "calling_number",
    "called_number",
    "granted_seconds",
    "reserved_amount",
    "state",
    "authorized_at",
    "started_at",
    "elapsed_seconds",
]


@sessions_app.command("list")
def sessions_list(
    ctx: typer.Context,
    card: Annotated[str | None, typer.Option("--card", help="Only this card's calls.")] = None,
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """List live calls (authorized or started).

    Example: `prepaidctl sessions list --card 1000000001`
    """
    cli = _cli(ctx)
    rows = [_record(x) for x in cli.admin().sessions_list(cli.now(), card)]
    emit_records(rows, SESSION_FIELDS, fmt, cli.places, title="Live calls", empty="no live calls")


@sessions_app.command("reap")
def sessions_reap(ctx: typer.Context) -> None:
    """Release grants never started and bill calls that went silent, now.

    The server does this every `reap_interval_seconds`; run it by hand after an outage.

    Example: `prepaidctl sessions reap`
    """
    from billing.domain import Limits
    from billing.storage.store import SecurityPolicy, SessionPolicy, Store

    cli = _cli(ctx)
    settings = cli.settings
    billing = settings["billing"]
    store = Store(
        cli.database(),
        pin_key=cli.pin_key(),
        limits=Limits(
            max_session_seconds=int(billing["max_session_seconds"]), places=settings.money_places
        ),
        security=SecurityPolicy(
            card_failure_limit=int(settings["security"]["card_failure_limit"])
        ),
        sessions=SessionPolicy(
            start_timeout_seconds=int(billing["start_timeout_seconds"]),
            stale_margin_seconds=int(billing["stale_margin_seconds"]),
            closed_session_retention_days=int(billing["closed_session_retention_days"]),
        ),
    )
    result = store.reap(cli.now())
    _say(
        f"released {result.released} grants never started, closed {result.closed} silent "
        f"calls, purged {result.purged} finished sessions"
    )


# ---------------------------------------------------------------------------------- reports
BILL_FIELDS = [
    "started_at",
    "calling_number",
    "called_number",
    "duration_seconds",
    "billed_seconds",
    "cost",
    "balance_after",
    "leg",
]


@report_app.command("card-bill")
def report_card_bill(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    from_date: Annotated[
        str | None, typer.Option("--from", help="First day, YYYY-MM-DD (UTC).")
    ] = None,
    to_date: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (UTC).")] = None,
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Phone Card Bill: a card's calls with cost and balance after each.

    Example: `prepaidctl report card-bill 1000000001 --from 2026-01-01 --to 2026-01-31`
    """
    cli = _cli(ctx)
    places = cli.places
    bill = cli.admin().card_bill(
        serial, _parse_date(from_date, "--from"), _parse_date(to_date, "--to")
    )
    rows = [_record(r) for r in bill.rows]
    if fmt == OutputFormat.JSON:
        emit_object(
            {
                "serial": bill.serial,
                "currency": bill.currency,
                "from": bill.from_date,
                "to": bill.to_date,
                "calls": bill.calls,
                "total_duration_seconds": bill.total_duration_seconds,
                "total_billed_seconds": bill.total_billed_seconds,
                "total_cost": bill.total_cost,
                "rows": [{k: r[k] for k in BILL_FIELDS} for r in rows],
            },
            fmt,
            places,
        )
        return
    emit_records(rows, BILL_FIELDS, fmt, places, title=f"Calls of card {bill.serial}",
                 empty=f"no calls for card {bill.serial}")
    if fmt == OutputFormat.TABLE:
        _say(
            f"{bill.calls} calls, {bill.total_duration_seconds} s ({bill.total_billed_seconds} s "
            f"billed), total {format_amount(bill.total_cost, places)} {bill.currency}"
        )


# ---------------------------------------------------------------------------------- demo
@demo_app.command("seed")
def demo_seed(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Where to write the demo PINs. Default: <state_dir>/demo-cards.csv.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Seed a demo (NAS 127.0.0.1, rates, 5 active cards) into an empty database.

    Does nothing when the database already holds a NAS, a rate group or a card.

    Example: `prepaidctl demo seed`
    """
    cli = _cli(ctx)
    settings = cli.settings
    path = output or settings.state_dir / "demo-cards.csv"
    admin = cli.admin()
    if not admin.is_empty():
        _say("the database is not empty; demo seed did nothing")
        return
    result = admin.demo_seed(cli.pin_key(), cli.now(), path)
    if not result.seeded or result.batch is None:
        _say("the database is not empty; demo seed did nothing")
        return
    batch = result.batch
    radius = settings["radius"]
    host = radius["bind"] if radius["bind"] not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
    _say(
        f"seeded the demo: NAS demo (127.0.0.1/32, secret s3cret, profile cisco), rate group "
        f"demo (USD: 44, 1, 49), {batch.count} active cards {batch.first_serial}-"
        f"{batch.last_serial} worth {format_amount(batch.value, cli.places)} {batch.currency}"
    )
    _say(f"PINs written to {path} (mode 0600)")
    _say(
        "try: echo 'User-Name=<PIN from that file>,Called-Station-Id=442079460018,"
        f"Calling-Station-Id=442079460000' | radclient -x {host}:{radius['auth_port']} auth s3cret"
    )


def main() -> None:
    """Console script entry point."""
    app(prog_name="prepaidctl")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())  # type: ignore[func-returns-value]
