"""``prepaidctl call``: play a whole test call against the running server.

The operator's check of a card or a rate: the command speaks RADIUS to the server exactly as a
NAS would (from a configured NAS's address, with its secret) and prints what the server answered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from admin_cli.output import OutputFormat, emit_records
from billing.numbers import normalize_number
from billing.storage.store import store_from_settings
from radiusd.nas import NasTable
from radiusd.testcall import NoAnswer, TestCall


def register(
    app: typer.Typer, cli_of: Callable[[typer.Context], Any], fail: Callable[[str], NoReturn]
) -> None:
    """Add the ``call`` command to ``app`` (``cli_of(ctx)`` gives the CLI context)."""

    @app.command("call")
    def call(
        ctx: typer.Context,
        to: Annotated[str, typer.Option("--to", help="The number to call.")],
        pin: Annotated[str | None, typer.Option("--pin", help="Card PIN to dial with.")] = None,
        ani: Annotated[
            str | None, typer.Option("--ani", help="Calling number (a bound ANI needs no PIN).")
        ] = None,
        seconds: Annotated[
            int | None,
            typer.Option(
                "--seconds", min=0, help="Call length to report (default: min(60, grant))."
            ),
        ] = None,
        source: Annotated[
            str, typer.Option("--source", help="Address to send from: a NAS's address.")
        ] = "127.0.0.1",
        server: Annotated[
            str | None, typer.Option("--server", help="Server address (default: [radius] bind).")
        ] = None,
        fmt: Annotated[
            OutputFormat, typer.Option("--format", case_sensitive=False, help="table, json or csv.")
        ] = OutputFormat.TABLE,
    ) -> None:
        """Play a test call: Access-Request, Accounting Start and Stop, as a NAS would.

        The call is real: an accepted call is billed like any other.

        Example: `prepaidctl call --pin 123456789012 --to 441234567890 --seconds 125`
        """
        if not pin and not ani:
            fail("give --pin or --ani")
        cli = cli_of(ctx)
        settings = cli.settings
        try:
            ipaddress.ip_address(source)
        except ValueError:
            fail(f"--source: {source!r} is not an IP address")
        nas = NasTable(store_from_settings(settings, cli.database()).load_nas_clients()).lookup(
            source
        )
        if nas is None:
            fail(
                f"no NAS covers {source}: add one with "
                f"`prepaidctl nas add NAME --address {source} --secret ...`"
            )
        radius = settings["radius"]
        host = server or str(radius["bind"])
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind is reached on loopback
            host = "127.0.0.1"
        number = normalize_number(to, settings.number_rules)
        if not number:
            fail(f"--to: {to!r} is not a telephone number")
        try:
            steps = TestCall(
                host=host,
                auth_port=int(radius["auth_port"]),
                acct_port=int(radius["acct_port"]),
                secret=nas.secret,
                source=source,
            ).play(pin, ani, number, seconds)
        except NoAnswer as exc:
            fail(str(exc))
        rows = [
            {
                "request": s.request,
                "answer": s.answer,
                "details": ", ".join(f"{k}={v}" for k, v in s.details.items()),
            }
            for s in steps
        ]
        title = f"Test call via NAS {nas.name}"
        emit_records(rows, ["request", "answer", "details"], fmt, cli.places, title=title)
