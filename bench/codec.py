"""Micro-benchmark of the RADIUS codec: CPU time per decode and per encode.

    python -m bench.codec [--iterations N] [--repeat N]

Three exchanges, the ones every call makes, built as the load generator (:mod:`bench.loadgen`)
builds them:

- ``access``: an Access-Request with a Message-Authenticator, User-Name, NAS-IP-Address,
  NAS-Port, Called- and Calling-Station-Id and a User-Password; decoded, then answered with the
  Access-Accept of the Cisco profile (Session-Timeout, Class, Acct-Interim-Interval and the
  five h323 VSAs);
- ``reject``: the same request answered with an Access-Reject (Reply-Message, h323-return-code);
- ``stop``: an Accounting-Request Stop echoing the Class; decoded, then answered with an empty
  Accounting-Response (Message-Authenticator only).

Each figure is ``time.process_time`` over ``--iterations`` runs, the best of ``--repeat``, in
microseconds per operation.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from decimal import Decimal

from bench.loadgen import Workload, attr, encode_accounting
from billing.calls import Accepted, Rejected
from billing.domain import RejectReason
from radiusd import translate
from radiusd.codec import (
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    Codec,
    Reply,
    Request,
    load_dictionary,
)
from radiusd.profiles import PROFILES

SECRET = b"bench-secret"
PIN = "123456789012"


def per_call(fn: Callable[[], object], iterations: int, repeat: int) -> float:
    """Best CPU time of ``repeat`` runs of ``iterations`` calls, in µs per call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(iterations):
            fn()
        best = min(best, time.process_time() - started)
    return best / iterations * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    codec = Codec(load_dictionary())
    cisco = PROFILES["cisco"]
    txn = Workload("bench", "call", [PIN], SECRET).make(ident=42)
    accept = translate.auth_reply(
        Accepted("tok-0123456789abcdef", "S1", 3600, Decimal("12.50"), "GBP", "pin"),
        cisco,
        places=2,
        interim_interval=60,
    )
    reject = translate.auth_reply(Rejected(RejectReason.ZERO_BALANCE), cisco, places=2)
    stop, _ = encode_accounting(43, SECRET, txn.stop_attrs + attr(25, b"paaa:tok-0123456789abcdef"))

    auth_request = codec.decode(txn.auth_packet, SECRET, True)
    assert auth_request.password == PIN
    stop_request = codec.decode(stop, SECRET, False)
    response = Reply(ACCOUNTING_RESPONSE)
    cases = [
        ("access", txn.auth_packet, auth_request, accept),
        ("reject", txn.auth_packet, auth_request, reject),
        ("stop", stop, stop_request, response),
    ]
    print(f"{'exchange':<8} {'decode µs':>10} {'encode µs':>10}")
    for name, data, request, reply in cases:
        require_ma = request.code != ACCOUNTING_REQUEST

        def decode(data: bytes = data, require_ma: bool = require_ma) -> object:
            return codec.decode(data, SECRET, require_ma)

        def encode(request: Request = request, reply: Reply = reply) -> bytes:
            return codec.encode(request, reply)

        dec = per_call(decode, args.iterations, args.repeat)
        enc = per_call(encode, args.iterations, args.repeat)
        print(f"{name:<8} {dec:>10.1f} {enc:>10.1f}")


if __name__ == "__main__":
    main()
