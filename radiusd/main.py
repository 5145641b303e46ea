"""``prepaid-radiusd``: run the RADIUS server."""

from __future__ import annotations

import argparse
import sys

import structlog
from sqlalchemy.exc import OperationalError

from billing.settings import ConfigError, load_settings
from billing.storage.database import SchemaNotReady
from billing.storage.keys import KeyError_
from radiusd.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prepaid-radiusd",
        description="Prepaid AAA RADIUS server (authentication and accounting).",
        epilog="Example: prepaid-radiusd --config /etc/prepaid-aaa/prepaid-aaa.toml",
    )
    parser.add_argument("--config", help="TOML configuration file (else $PREPAID_AAA_CONFIG)")
    parser.add_argument(
        "--log-format", choices=["json", "console"], help="override [server] log_format"
    )
    # Set by the supervisor of ``workers = N``: this process's index, 0 to N - 1.
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        workers = int(settings["server"]["workers"])
        if workers > 1:
            from radiusd import workers as supervisor

            supervisor.check(settings)
            if args.worker is None:
                forwarded = list(sys.argv[1:] if argv is None else argv)
                return supervisor.supervise(forwarded, workers)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        args.log_format or str(settings["server"]["log_format"]),
        str(settings["server"]["log_level"]),
        worker=args.worker,
    )
    log = structlog.get_logger("radiusd")

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from radiusd.app import freeze_start_up_objects, start

    try:
        running = start(settings, reactor, worker=args.worker or 0)
    except (ConfigError, SchemaNotReady, KeyError_) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        print(f"error: cannot reach the database: {exc.orig}", file=sys.stderr)
        return 2
    except (OSError, CannotListenError) as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        return 2
    running.metrics.gc_frozen.set(freeze_start_up_objects())
    reactor.run()  # type: ignore[attr-defined,misc]
    log.info("server.stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
