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
from datetime import UTC, date, datetime, timedelta
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
from billing.storage.reports import Reports

PROGRESS_THRESHOLD = 1_000
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


_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)  # click's base exception, wherever this typer version keeps click


class _Group(TyperGroup):
    """The root command group: turns expected failures into one line and exit status 1, and
    usage errors (a missing argument, a bad option value) into one line and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            fail(_message(exc))

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.get("standalone_mode", True)
        kwargs["standalone_mode"] = False
        if not standalone:
            return super().main(*args, **kwargs)
        try:
            result = super().main(*args, **kwargs)
        except _ClickException as exc:
            # NoArgsIsHelpError: the help was printed already, as asked.
            if type(exc).__name__ != "NoArgsIsHelpError":
                where = getattr(getattr(exc, "ctx", None), "command_path", None)
                hint = f" (see `{where} --help`)" if where else ""
                text = exc.format_message()  # type: ignore[attr-defined]
                typer.echo(f"error: {_one_line(text)}{hint}", err=True)
            sys.exit(int(getattr(exc, "exit_code", 2)))
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


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

    def reports(self) -> Reports:
        return Reports.from_settings(self.database(), self.settings)

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


def _calls(count: int) -> str:
    return f"{count} call" if count == 1 else f"{count} calls"


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
    sub = typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode="markdown", name=name)
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
    "report",
    "Reports: card bill, bind number bill, card status, revenue, liability, suspicious usage."
    "\n\nExample: `prepaidctl report card-bill 1000000001 --from 2026-01-01`",
)
expire_app = _sub(
    "expire",
    "Card expiry and forfeiture of balances after the grace period.\n\n"
    "Example: `prepaidctl expire run`",
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
    address: Annotated[str, typer.Option("--address", help="Source IP address or CIDR network.")],
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
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 currency code.")] = "USD",
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
            "--output",
            help="Export CSV of serials and PINs (created, never overwritten).",
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


@batch_app.command("list")
def batch_list(ctx: typer.Context, fmt: FormatOpt = OutputFormat.TABLE) -> None:
    """List the batches with their serial ranges and the value their cards still hold.

    Example: `prepaidctl batch list --format csv`
    """
    cli = _cli(ctx)
    rows = [_record(b) for b in cli.admin().batch_list()]
    columns = [
        "id",
        "card_type",
        "value",
        "currency",
        "count",
        "first_serial",
        "last_serial",
        "rate_group",
        "value_remaining",
        "created_at",
        "note",
    ]
    emit_records(rows, columns, fmt, cli.places, title="Batches", empty="no batches")


@batch_app.command("show")
def batch_show(
    ctx: typer.Context,
    batch_id: Annotated[int, typer.Argument(help="Batch id (see `batch list`).")],
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Show a batch: its settings, cards by state and the value issued, spent and remaining.

    Value issued is the sum of the cards' creation entries; remaining is the sum of balances:
    issued + recharges - call revenue - breakage + transfers + adjustments = remaining.

    Example: `prepaidctl batch show 3 --format json`
    """
    cli = _cli(ctx)
    detail = cli.admin().batch_show(batch_id)
    batch = _record(detail.batch)
    record: dict[str, Any] = {
        k: batch[k]
        for k in (
            "id",
            "card_type",
            "value",
            "currency",
            "rate_group",
            "count",
            "first_serial",
            "last_serial",
            "validity_days",
            "grace_days",
            "expires_on",
            "max_calls",
            "activation",
            "pin_length",
            "note",
            "created_at",
        )
    }
    record.update({f"cards_{state}": n for state, n in detail.states})
    record.update(
        {
            "value_issued": detail.value_issued,
            "recharges": detail.recharges,
            "call_revenue": detail.call_revenue,
            "breakage": detail.breakage,
            "transfers": detail.transfers,
            "adjustments": detail.adjustments,
            "value_remaining": detail.value_remaining,
        }
    )
    emit_object(record, fmt, cli.places, title=f"Batch {detail.batch.id}")


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


SerialsArg = Annotated[list[str] | None, typer.Argument(help="Card serials.", show_default=False)]
BatchOpt = Annotated[int | None, typer.Option("--batch", help="Every card of a batch.")]
RangeOpt = Annotated[str | None, typer.Option("--range", help="Serials FIRST-LAST, inclusive.")]


def _choice(
    serials: list[str] | None, batch: int | None, serial_range: str | None
) -> dict[str, Any]:
    rng = _parse_range(serial_range) if serial_range is not None else None
    if sum(1 for way in (bool(serials), batch is not None, rng is not None) if way) != 1:
        raise AdminError("give card serials, --batch ID or --range FIRST-LAST (exactly one)")
    return {"serials": serials or (), "batch_id": batch, "serial_range": rng}


@card_app.command("activate")
def card_activate(
    ctx: typer.Context,
    serials: SerialsArg = None,
    batch: BatchOpt = None,
    serial_range: RangeOpt = None,
) -> None:
    """Activate inactive cards by serial, by batch or by serial range.

    Validity still starts at the first call.

    Example: `prepaidctl card activate --range 1000000001-1000000100`
    """
    cli = _cli(ctx)
    result = cli.admin().activate(cli.now(), **_choice(serials, batch, serial_range))
    skipped = result.matched - result.activated
    extra = f" ({skipped} were not inactive)" if skipped else ""
    _say(f"activated {result.activated} of {result.matched} cards{extra}")


@card_app.command("lock")
def card_lock(
    ctx: typer.Context,
    serials: SerialsArg = None,
    batch: BatchOpt = None,
    serial_range: RangeOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the card).")] = "",
) -> None:
    """Lock cards by serial, by batch or by serial range: they are refused until unlocked.

    Cards already locked keep their reason (except one card named alone, which gets the new one).

    Example: `prepaidctl card lock 1000000001 --reason "reported stolen"`, or
    `prepaidctl card lock --batch 7 --reason "stolen shipment"`
    """
    admin = _cli(ctx).admin()
    choice = _choice(serials, batch, serial_range)
    if serials and len(serials) == 1:
        info = admin.lock(serials[0], reason)
        _say(f"card {info.serial} locked ({info.lock_reason})")
        return
    result = admin.lock_cards(reason, **choice)
    skipped = result.matched - result.changed
    extra = f" ({skipped} were already locked)" if skipped else ""
    _say(f"locked {result.changed} of {result.matched} cards{extra}")


@card_app.command("unlock")
def card_unlock(
    ctx: typer.Context,
    serials: SerialsArg = None,
    batch: BatchOpt = None,
    serial_range: RangeOpt = None,
) -> None:
    """Unlock cards by serial, by batch or by serial range, and reset their wrong-PIN counters.

    Cards whose balance was transferred away stay locked.

    Example: `prepaidctl card unlock 1000000001`, or `prepaidctl card unlock --range
    1000000001-1000000100`
    """
    admin = _cli(ctx).admin()
    choice = _choice(serials, batch, serial_range)
    if serials and len(serials) == 1:
        info = admin.unlock(serials[0])
        _say(f"card {info.serial} unlocked ({info.state})")
        return
    result = admin.unlock_cards(**choice)
    skipped = result.matched - result.changed
    extra = f" ({skipped} were not locked or were transferred)" if skipped else ""
    _say(f"unlocked {result.changed} of {result.matched} cards{extra}")


@card_app.command("recharge")
def card_recharge(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    amount: Annotated[str, typer.Argument(help="Amount to add, e.g. 10.00.")],
    extend_days: Annotated[
        int | None,
        typer.Option(
            "--extend-days",
            help="Also extend the validity by N days (from now if the card has expired).",
        ),
    ] = None,
) -> None:
    """Top up a rechargeable card, optionally extending its validity.

    An expired card can be recharged during its grace period: that reactivates it, valid for
    --extend-days N days from now, else for its validity days from now. After the grace period
    its balance is forfeited and the recharge is refused.

    Example: `prepaidctl card recharge 1000000001 10.00 --extend-days 30`
    """
    cli = _cli(ctx)
    result = cli.admin().recharge(serial, amount, cli.now(), extend_days=extend_days)
    places = cli.places
    line = (
        f"card {result.serial} recharged with {format_amount(result.amount, places)} "
        f"{result.currency}; balance {format_amount(result.balance, places)} {result.currency}"
    )
    if result.reactivated:
        line += "; reactivated"
    if result.expires_at is not None:
        line += f"; valid until {result.expires_at.replace(microsecond=0).isoformat()}Z"
    _say(line)


@card_app.command("transfer")
def card_transfer(
    ctx: typer.Context,
    from_serial: Annotated[str, typer.Argument(help="The lost card's serial.")],
    to_serial: Annotated[str, typer.Argument(help="The card that receives the balance.")],
) -> None:
    """Move the whole balance of a lost card to another card of the same currency.

    The old card is retired and locked (reason "transferred"); its bound numbers move to the
    new card. Refused while the old card has live calls, across currencies, to a card that is
    locked, expired or retired, and when the new card would have more bound numbers than a
    card may have.

    Example: `prepaidctl card transfer 1000000001 1000000002`
    """
    cli = _cli(ctx)
    result = cli.admin().transfer(from_serial, to_serial, cli.now())
    places = cli.places
    _say(
        f"moved {format_amount(result.amount, places)} {result.currency} from card "
        f"{result.from_serial} (now retired and locked) to card {result.to_serial}; its balance "
        f"is {format_amount(result.to_balance, places)} {result.currency}"
        + (f"; bound numbers moved with it: {', '.join(result.numbers)}" if result.numbers else "")
    )


@card_app.command("history")
def card_history(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Card serial.")],
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """A card's ledger: every balance change (creation, recharge, call, transfer, expiry...).

    Example: `prepaidctl card history 1000000001 --format csv`
    """
    cli = _cli(ctx)
    history = cli.admin().history(serial)
    rows = [_record(r) for r in history.rows]
    columns = ["created_at", "kind", "amount", "balance_after", "note"]
    emit_records(
        rows,
        columns,
        fmt,
        cli.places,
        title=f"Ledger of card {history.serial} ({history.currency})",
        empty=f"no ledger entries for card {history.serial}",
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
        rows,
        ["serial", "ani", "created_at"],
        fmt,
        cli.places,
        title="Bound numbers",
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
    from billing.storage.store import store_from_settings

    cli = _cli(ctx)
    store = store_from_settings(cli.settings, cli.database())
    result = store.reap(cli.now())
    _say(
        f"released {result.released} grants never started, closed {result.closed} silent "
        f"calls, purged {result.purged} finished sessions"
    )


# ---------------------------------------------------------------------------------- expiry
def _parse_now(text: str) -> datetime:
    """``--now``: YYYY-MM-DD (midnight) or YYYY-MM-DDTHH:MM[:SS], UTC unless an offset is given."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise AdminError(
            f"--now: {text!r} is not a date or time (use YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC)"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


@expire_app.command("run")
def expire_run(
    ctx: typer.Context,
    now: Annotated[
        str | None,
        typer.Option(
            "--now", help="Run as of this UTC time, YYYY-MM-DD[THH:MM] (default: the clock)."
        ),
    ] = None,
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Expire cards past their validity and forfeit balances past the grace period.

    Cards active, inactive or exhausted whose expiry has passed become expired; expired cards
    past expiry + grace days lose their balance (an `expiry` ledger entry each: breakage).
    Idempotent and safe while the server runs (cards with live calls wait for the next run);
    systemd runs it daily (prepaid-expire.timer).

    Example: `prepaidctl expire run`, or `prepaidctl expire run --now 2026-12-31T23:59`
    """
    from billing.storage.expiry import run_expiry

    cli = _cli(ctx)
    when = _parse_now(now) if now is not None else cli.now()
    result = run_expiry(cli.database(), when, cli.places)
    places = cli.places
    if fmt != OutputFormat.TABLE:
        emit_object(
            {
                "now": when,
                "expired": result.expired,
                "forfeited": result.forfeited,
                "forfeited_amount": " ".join(
                    f"{format_amount(a, places)} {c}" for c, a in result.forfeited_amounts
                ),
                "skipped_live": result.skipped_live,
            },
            fmt,
            places,
        )
        return
    amounts = ", ".join(f"{format_amount(a, places)} {c}" for c, a in result.forfeited_amounts)
    _say(
        f"expired {result.expired} cards; forfeited the balance of {result.forfeited} cards"
        + (f" ({amounts})" if amounts else "")
    )
    if result.skipped_live:
        _say(f"{result.skipped_live} cards past grace have live calls; the next run takes them")


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
    emit_records(
        rows,
        BILL_FIELDS,
        fmt,
        places,
        title=f"Calls of card {bill.serial}",
        empty=f"no calls for card {bill.serial}",
    )
    if fmt == OutputFormat.TABLE:
        _say(
            f"{_calls(bill.calls)}, {bill.total_duration_seconds} s ({bill.total_billed_seconds} s "
            f"billed), total {format_amount(bill.total_cost, places)} {bill.currency}"
        )


FromOpt = Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD (UTC).")]
ToOpt = Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (UTC).")]


def _money_totals(totals: dict[str, Any], places: int) -> str:
    return ", ".join(f"{format_amount(v, places)} {c}" for c, v in sorted(totals.items()))


@report_app.command("bind-bill")
def report_bind_bill(
    ctx: typer.Context,
    ani: Annotated[str, typer.Argument(help="The bound caller number, in any usual form.")],
    from_date: FromOpt = None,
    to_date: ToOpt = None,
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Bind Number Bill: the calls placed through a bound ANI (no PIN), with the card billed.

    Example: `prepaidctl report bind-bill '+44 20 7946 0000' --from 2026-01-01 --to 2026-01-31`
    """
    cli = _cli(ctx)
    places = cli.places
    bill = cli.reports().bind_bill(
        ani, _parse_date(from_date, "--from"), _parse_date(to_date, "--to")
    )
    columns = ["serial", *BILL_FIELDS]
    rows = [_record(r) for r in bill.rows]
    if fmt == OutputFormat.JSON:
        emit_object(
            {
                "ani": bill.ani,
                "from": bill.from_date,
                "to": bill.to_date,
                "calls": bill.calls,
                "total_duration_seconds": bill.total_duration_seconds,
                "total_billed_seconds": bill.total_billed_seconds,
                "totals": [_record(t) for t in bill.totals],
                "rows": [{k: r[k] for k in [*columns, "currency"]} for r in rows],
            },
            fmt,
            places,
        )
        return
    emit_records(
        rows,
        columns,
        fmt,
        places,
        title=f"Calls through {bill.ani}",
        empty=f"no calls through {bill.ani}",
    )
    if fmt == OutputFormat.TABLE:
        cost = _money_totals({t.currency: t.cost for t in bill.totals}, places) or "0"
        _say(
            f"{_calls(bill.calls)}, {bill.total_duration_seconds} s ({bill.total_billed_seconds} s "
            f"billed), total {cost}"
        )


STATUS_FIELDS = [
    "batch",
    "type",
    "value",
    "currency",
    "inactive",
    "active",
    "locked",
    "expired",
    "exhausted",
    "retired",
    "total",
]


@report_app.command("status")
def report_status(
    ctx: typer.Context,
    batch: Annotated[int | None, typer.Option("--batch", help="Only this batch.")] = None,
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Card Status: cards by batch and type, counted by state ("locked" counts locked cards).

    Example: `prepaidctl report status --format csv`
    """
    cli = _cli(ctx)
    rows = [_record(r) for r in cli.reports().status(batch)]
    emit_records(rows, STATUS_FIELDS, fmt, cli.places, title="Card status", empty="no cards")
    if fmt == OutputFormat.TABLE and rows:
        _say(f"{sum(r['total'] for r in rows)} cards in {len({r['batch'] for r in rows})} batches")


@report_app.command("revenue")
def report_revenue(
    ctx: typer.Context,
    by: Annotated[
        str, typer.Option("--by", help="Group by: type, denomination, batch or day.")
    ] = "type",
    from_date: FromOpt = None,
    to_date: ToOpt = None,
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Revenue: call revenue, calls, billed minutes, recharges and breakage, by group.

    Calls count on the day they stopped; recharges and breakage (balances forfeited at expiry)
    on the day of their ledger entry. Amounts are per currency.

    Example: `prepaidctl report revenue --by day --from 2026-01-01 --to 2026-01-31`
    """
    cli = _cli(ctx)
    places = cli.places
    result = cli.reports().revenue(
        by, _parse_date(from_date, "--from"), _parse_date(to_date, "--to")
    )
    key = by.strip().lower()
    rows = [{key: r.key, **_record(r)} for r in result]
    columns = [
        key,
        "currency",
        "calls",
        "billed_seconds",
        "billed_minutes",
        "call_revenue",
        "recharges",
        "breakage",
    ]
    emit_records(rows, columns, fmt, places, title=f"Revenue by {key}", empty="no revenue")
    if fmt == OutputFormat.TABLE and rows:
        totals: dict[str, dict[str, Any]] = {}
        for r in result:
            t = totals.setdefault(r.currency, {"calls": 0, "rev": 0, "rch": 0, "brk": 0})
            t["calls"] += r.calls
            t["rev"] += r.call_revenue
            t["rch"] += r.recharges
            t["brk"] += r.breakage
        for currency, t in sorted(totals.items()):
            _say(
                f"{currency}: {_calls(t['calls'])}, "
                f"call revenue {format_amount(t['rev'], places)}, "
                f"recharges {format_amount(t['rch'], places)}, "
                f"breakage {format_amount(t['brk'], places)}"
            )


LIABILITY_FIELDS = [
    "batch",
    "type",
    "value",
    "currency",
    "cards",
    "cards_with_balance",
    "liability",
    "in_expired_cards",
    "overdrawn_cards",
    "overdrawn",
]


@report_app.command("liability")
def report_liability(ctx: typer.Context, fmt: FormatOpt = OutputFormat.TABLE) -> None:
    """Outstanding liability: the balances card holders may still spend, by batch.

    Forfeited balances are no longer owed; expired cards in their grace period still are (shown
    apart). Negative balances are shown as overdrawn, not netted.

    Example: `prepaidctl report liability --format json`
    """
    cli = _cli(ctx)
    places = cli.places
    result = cli.reports().liability()
    rows = [_record(r) for r in result]
    emit_records(rows, LIABILITY_FIELDS, fmt, places, title="Liability", empty="no cards")
    if fmt == OutputFormat.TABLE and rows:
        totals: dict[str, Any] = {}
        for r in result:
            totals[r.currency] = totals.get(r.currency, 0) + r.liability
        _say(f"total liability: {_money_totals(totals, places)}")


_FAILURE_COLUMNS = [
    "source",
    "failures",
    "unknown_pin",
    "wrong_pin",
    "card_locked",
    "lockout",
    "first_at",
    "last_at",
]
SUSPICIOUS_SECTIONS = {
    "failures_by_ani": (
        "PIN failures by calling number",
        _FAILURE_COLUMNS,
    ),
    "failures_by_nas": (
        "PIN failures by NAS",
        _FAILURE_COLUMNS,
    ),
    "cards_many_anis": (
        "Cards used from many calling numbers",
        ["serial", "distinct_anis", "calls", "first_at", "last_at"],
    ),
    "negative_balances": (
        "Cards with a negative balance",
        ["serial", "balance", "currency", "state"],
    ),
    "over_grant_calls": (
        "Calls longer than granted",
        [
            "serial",
            "nas",
            "started_at",
            "calling_number",
            "called_number",
            "duration_seconds",
            "granted_seconds",
            "cost",
            "close_reason",
        ],
    ),
}


def _suspicious_flat(name: str, item: Any) -> dict[str, Any]:
    """One finding as a CSV row with the same columns for every section."""
    row: dict[str, Any] = {"section": name}
    if name in ("failures_by_ani", "failures_by_nas"):
        detail = (
            f"unknown-pin {item.unknown_pin}, wrong-pin {item.wrong_pin}, "
            f"card-locked {item.card_locked}, lockout {item.lockout}"
        )
        row.update(
            subject=item.source,
            count=item.failures,
            first_at=item.first_at,
            last_at=item.last_at,
            detail=detail,
        )
    elif name == "cards_many_anis":
        row.update(
            subject=item.serial,
            count=item.distinct_anis,
            first_at=item.first_at,
            last_at=item.last_at,
            detail=f"{item.calls} calls",
        )
    elif name == "negative_balances":
        row.update(
            subject=item.serial, amount=item.balance, currency=item.currency, detail=item.state
        )
    else:
        row.update(
            subject=item.serial,
            count=item.duration_seconds,
            amount=item.cost,
            first_at=item.started_at,
            detail=f"{item.calling_number} -> {item.called_number}, granted "
            f"{item.granted_seconds} s, {item.close_reason}, NAS {item.nas or '-'}",
        )
    return row


@report_app.command("suspicious")
def report_suspicious(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option("--since", help="First day, YYYY-MM-DD (UTC). Default: 30 days ago."),
    ] = None,
    min_failures: Annotated[
        int, typer.Option("--min-failures", help="PIN failures that make a source suspicious.")
    ] = 5,
    ani_threshold: Annotated[
        int,
        typer.Option(
            "--ani-threshold", help="Flag cards used from more than N distinct calling numbers."
        ),
    ] = 3,
    limit: Annotated[int, typer.Option("--limit", help="Rows per section, worst first.")] = 50,
    fmt: FormatOpt = OutputFormat.TABLE,
) -> None:
    """Suspicious usage: PIN guessing by caller and NAS, cards shared by many callers,
    negative balances, calls longer than granted.

    CSV output puts every finding in one table: section, subject, count, amount, currency,
    first_at, last_at, detail.

    Example: `prepaidctl report suspicious --since 2026-01-01 --min-failures 10`
    """
    cli = _cli(ctx)
    places = cli.places
    start = _parse_date(since, "--since")
    if start is None:
        start = (cli.now() - timedelta(days=30)).date()
    found = cli.reports().suspicious(start, min_failures, ani_threshold, limit)
    if fmt == OutputFormat.JSON:
        emit_object(
            {
                "since": found.since,
                "min_failures": found.min_failures,
                "ani_threshold": found.ani_threshold,
                **{
                    name: [_record(x) for x in getattr(found, name)] for name in SUSPICIOUS_SECTIONS
                },
            },
            fmt,
            places,
        )
        return
    if fmt == OutputFormat.CSV:
        columns = [
            "section",
            "subject",
            "count",
            "amount",
            "currency",
            "first_at",
            "last_at",
            "detail",
        ]
        flat = [
            _suspicious_flat(name, x) for name in SUSPICIOUS_SECTIONS for x in getattr(found, name)
        ]
        emit_records(flat, columns, fmt, places)
        return
    _say(f"suspicious usage since {found.since.isoformat() if found.since else 'the start'}")
    for name, (title, columns) in SUSPICIOUS_SECTIONS.items():
        items = getattr(found, name)
        if not items:
            _say(f"{title}: none")
            continue
        emit_records([_record(x) for x in items], columns, fmt, places, title=title)


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


from admin_cli import call as _call  # noqa: E402 - registers `prepaidctl call` on the app above

_call.register(app, _cli, fail)


def main() -> None:
    """Console script entry point."""
    app(prog_name="prepaidctl")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())  # type: ignore[func-returns-value]
