"""Structured logs: JSON lines on stdout (journald) or a console format for people.

Each line goes out in one ``write`` (structlog's ``WriteLogger``, not ``PrintLogger``, whose
``print`` writes the text and its newline separately when stdout is unbuffered). With
``workers = N`` every worker shares the service's stdout, and lines written whole (under the
pipe's 4 KiB atomic size) never interleave there.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "json", level: str = "info", worker: int | None = None) -> None:
    """``worker``: the process's index under ``workers = N``, added to every line as
    ``worker``, since the workers share one stdout (and journald sees one process)."""
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    elif fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        raise ValueError(f"log format must be json or console, not {fmt!r}")

    def add_worker(
        _logger: structlog.typing.WrappedLogger, _name: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event.setdefault("worker", worker)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([add_worker] if worker is not None else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
