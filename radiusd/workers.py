"""``workers = N``: N server processes on the same ports, supervised by the first one.

Each worker is a whole server (``prepaid-radiusd --worker``) bound with SO_REUSEPORT; everything
they must share — reservations, Max Calls, exactly-once keys (PostgreSQL) and the reply cache,
PIN-failure counters and lockouts (Redis) — is shared through the database and Redis, so the
supervisor only starts, restarts and stops them. A worker that dies is restarted; one that keeps
dying within seconds of its start stops the whole server, so systemd can report the failure.

Each worker gets its index (``--worker i``, 0 to N - 1; a restarted worker keeps its own): its log
lines carry it, and it serves its metrics on ``[metrics] port`` + ``i``. The kernel spreads the
datagrams over the workers one by one (:mod:`radiusd.reuseport`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from billing.settings import ConfigError, Settings

RESTART_WINDOW_SECONDS = 10.0
MAX_QUICK_DEATHS = 3


SPREADS = ("datagram", "flow")


def check_spread(settings: Settings) -> None:
    spread = settings["server"]["spread"]
    if spread not in SPREADS:
        raise ConfigError(f"[server] spread must be datagram or flow, not {spread!r}")


def check(settings: Settings) -> None:
    check_spread(settings)
    if not settings.redis_url:
        raise ConfigError("workers > 1 needs [redis] url: processes must share live state")
    radius = settings["radius"]
    if not int(radius["auth_port"]) or not int(radius["acct_port"]):
        raise ConfigError("workers > 1 needs fixed auth_port and acct_port (not 0)")


def supervise(argv: list[str], workers: int) -> int:
    env = dict(os.environ, PREPAID_SERVER_REUSE_PORT="true")

    def command(index: int) -> list[str]:
        return [sys.executable, "-m", "radiusd.main", *argv, "--worker", str(index)]

    children: list[subprocess.Popen[bytes]] = []
    started: list[float] = []
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(workers):
        children.append(subprocess.Popen(command(index), env=env))  # noqa: S603 - our own argv
        started.append(time.monotonic())
    quick_deaths = 0
    status = 0
    while not stopping:
        time.sleep(0.2)
        for i, child in enumerate(children):
            code = child.poll()
            if code is None or stopping:
                continue
            if time.monotonic() - started[i] < RESTART_WINDOW_SECONDS:
                quick_deaths += 1
            if quick_deaths >= MAX_QUICK_DEATHS:
                print(f"error: worker exited with {code} repeatedly; stopping", file=sys.stderr)
                stopping, status = True, 1
                break
            children[i] = subprocess.Popen(command(i), env=env)  # noqa: S603 - our own argv
            started[i] = time.monotonic()
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return status
