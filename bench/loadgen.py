"""A RADIUS load generator that is cheap enough not to be the bottleneck.

- Every packet of a transaction that can be known in advance is encoded before the clock starts:
  the Access-Request complete (own Identifier, random Request Authenticator, User-Password
  encrypted, Message-Authenticator signed), the Start and Stop as attribute bytes. Only the
  ``Class`` echoed from the Access-Accept is appended at run time (one MD5 for the accounting
  authenticator), as a NAS must.
- Identifiers never collide: a transaction is bound to a *slot* — one (socket, Identifier) pair,
  256 per socket — before it is encoded, and a slot carries one request at a time.
- Closed loop (``window`` slots, each running its transactions back to back) measures the
  highest throughput; open loop (transactions started at a fixed rate, whatever the replies do)
  measures latency at a given load.
- Every reply is checked against its request (Response Authenticator); a request without a valid
  reply within ``timeout`` seconds is lost. Nothing is retransmitted.

Transactions: ``auth`` (one Access-Request), ``call`` (Access-Request, then on Accept a Start
and a Stop echoing the Accept's Class; done when the Stop is acknowledged) and ``fail`` (an
Access-Request with a wrong PIN, expected to be rejected).
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import os
import random
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT = 1, 2, 3
ACCOUNTING_REQUEST, ACCOUNTING_RESPONSE = 4, 5

USER_NAME, USER_PASSWORD, NAS_IP_ADDRESS, NAS_PORT = 1, 2, 4, 5
CLASS, CALLED_STATION_ID, CALLING_STATION_ID = 25, 30, 31
ACCT_STATUS_TYPE, ACCT_SESSION_ID, ACCT_SESSION_TIME = 40, 44, 46
ACCT_TERMINATE_CAUSE, MESSAGE_AUTHENTICATOR = 49, 80
START, STOP = 1, 2
USER_REQUEST = 1

_MA_ZERO = bytes((MESSAGE_AUTHENTICATOR, 18)) + bytes(16)
_md5 = hashlib.md5


def attr(kind: int, value: bytes) -> bytes:
    return bytes((kind, len(value) + 2)) + value


def attr_int(kind: int, value: int) -> bytes:
    return bytes((kind, 6)) + struct.pack("!I", value)


def luhn_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def pw_crypt(secret: bytes, authenticator: bytes, password: bytes) -> bytes:
    """RFC 2865 section 5.2 User-Password hiding."""
    padded = password + bytes(-len(password) % 16 or (16 if not password else 0))
    out, last = b"", authenticator
    for i in range(0, len(padded), 16):
        key = _md5(secret + last).digest()
        block = (int.from_bytes(padded[i : i + 16], "big") ^ int.from_bytes(key, "big")).to_bytes(
            16, "big"
        )
        out += block
        last = block
    return out


def encode_access_request(
    ident: int, secret: bytes, attrs: bytes, password: bytes | None
) -> tuple[bytes, bytes]:
    """An Access-Request with a random authenticator and a Message-Authenticator (first)."""
    authenticator = os.urandom(16)
    if password is not None:
        attrs = attrs + attr(USER_PASSWORD, pw_crypt(secret, authenticator, password))
    header = struct.pack("!BBH", ACCESS_REQUEST, ident, 20 + 18 + len(attrs)) + authenticator
    mac = hmac.digest(secret, header + _MA_ZERO + attrs, "md5")
    return header + bytes((MESSAGE_AUTHENTICATOR, 18)) + mac + attrs, authenticator


def encode_accounting(ident: int, secret: bytes, attrs: bytes) -> tuple[bytes, bytes]:
    header = struct.pack("!BBH", ACCOUNTING_REQUEST, ident, 20 + len(attrs))
    authenticator = _md5(header + bytes(16) + attrs + secret).digest()
    return header + authenticator + attrs, authenticator


def reply_valid(reply: bytes, request_authenticator: bytes, secret: bytes) -> bool:
    if len(reply) < 20:
        return False
    return _md5(reply[:4] + request_authenticator + reply[20:] + secret).digest() == reply[4:20]


def classes_of(reply: bytes) -> bytes:
    """The Class attributes of a reply, encoded again for an accounting request."""
    out, pos, end = b"", 20, len(reply)
    while pos + 2 <= end:
        length = reply[pos + 1]
        if length < 2:
            break
        if reply[pos] == CLASS:
            out += reply[pos : pos + length]
        pos += length
    return out


# ------------------------------------------------------------------------------ transactions
@dataclass(slots=True)
class Txn:
    kind: str  # auth, call, fail
    auth_packet: bytes
    auth_authenticator: bytes
    start_attrs: bytes = b""
    stop_attrs: bytes = b""


class Workload:
    """Builds the transactions of one scenario: which card, which numbers, which PIN.

    ``fail_share`` of the transactions are ``fail`` (a well-formed, Luhn-valid PIN that is none
    of ``issued``, each from its own Calling-Station-Id); the others are ``kind``. Cards are
    taken from ``pins`` starting at ``first_card`` (see :meth:`LoadGenerator.plan`), so a card
    a previous scenario left held (an authorization without accounting holds its card until the
    grant times out) is not used again soon.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        pins: Sequence[str],
        secret: bytes,
        fail_share: float = 0.0,
        seed: int = 1,
        first_card: int = 0,
        call_seconds: int = 60,
        issued: Container[str] = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self.pins = pins
        self.secret = secret
        self.fail_share = fail_share
        self.rng = random.Random(seed)
        self.call_seconds = call_seconds
        self.next_card = first_card
        self.issued = issued
        self.counter = 0
        self.tag = f"{name}-{seed}-{os.getpid()}"

    def _number(self, prefix: str, digits: int) -> bytes:
        return (prefix + "".join(self.rng.choices("0123456789", k=digits))).encode()

    def wrong_pin(self) -> str:
        """A well-formed, Luhn-valid 12-digit PIN that is none of ``issued``."""
        while True:
            payload = "9" + "".join(self.rng.choices("0123456789", k=10))
            pin = payload + luhn_digit(payload)
            if pin not in self.issued:
                return pin

    def make(self, ident: int, card: int | None = None) -> Txn:
        """One transaction on Identifier ``ident``; its card is ``pins[card]`` (modulo their
        number) when given, else the next in turn."""
        self.counter += 1
        called = self._number("44", 10)
        calling = self._number("1555", 8)
        if self.fail_share and self.rng.random() < self.fail_share:
            pin = self.wrong_pin().encode()
            kind = "fail"
        else:
            if card is None:
                card = self.next_card
                self.next_card += 1
            pin = self.pins[card % len(self.pins)].encode()
            kind = self.kind
        common = (
            attr(USER_NAME, pin)
            + attr(NAS_IP_ADDRESS, socket.inet_aton("127.0.0.1"))
            + attr_int(NAS_PORT, self.counter & 0xFFFF)
            + attr(CALLED_STATION_ID, called)
            + attr(CALLING_STATION_ID, calling)
        )
        packet, authenticator = encode_access_request(ident, self.secret, common, pin)
        txn = Txn(kind, packet, authenticator)
        if kind == "call":
            session = attr(ACCT_SESSION_ID, f"{self.tag}-{self.counter}".encode())
            txn.start_attrs = attr_int(ACCT_STATUS_TYPE, START) + session + common
            txn.stop_attrs = (
                attr_int(ACCT_STATUS_TYPE, STOP)
                + session
                + common
                + attr_int(ACCT_SESSION_TIME, self.call_seconds)
                + attr_int(ACCT_TERMINATE_CAUSE, USER_REQUEST)
            )
        return txn


# ------------------------------------------------------------------------------ the engine
@dataclass
class Result:
    mode: str
    duration: float  # the measured window, seconds
    done: int = 0  # transactions completed inside the window
    done_total: int = 0  # ... including the drain after the window
    accepted: int = 0  # Access-Accepts to valid PINs (auth and call transactions)
    rejected: int = 0  # Access-Rejects to valid PINs
    fail_rejected: int = 0  # wrong PINs rejected, as they must be
    fail_accepted: int = 0  # wrong PINs accepted (must stay 0)
    calls_billed: int = 0
    sent: int = 0
    answered: int = 0
    answered_in_window: int = 0  # replies received before the end of the measured window
    lost: int = 0
    invalid: int = 0  # replies that failed verification or came too late
    slot_busy: int = 0  # open loop: a transaction could not start (its slot still busy)
    exhausted: bool = False  # closed loop ran out of pre-encoded transactions
    rounds: int = 0  # closed loop: the most transactions any one slot started
    latencies: list[float] = field(default_factory=list)  # seconds, per request, in window
    loadgen_cpu: float = 0.0
    wall: float = 0.0

    def rate(self) -> float:
        return self.done / self.duration if self.duration else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Slot:
    __slots__ = ("sock", "ident", "queue", "txn", "stage", "sent_at", "authenticator", "seq")

    def __init__(self, sock: socket.socket, ident: int) -> None:
        self.sock = sock
        self.ident = ident
        self.queue: deque[Txn] = deque()
        self.txn: Txn | None = None
        self.stage = 0
        self.sent_at = 0.0
        self.authenticator = b""
        self.seq = 0


class LoadGenerator:
    def __init__(
        self,
        host: str,
        auth_port: int,
        acct_port: int,
        secret: bytes,
        slots: int,
        timeout: float = 2.0,
        per_socket: int = 8,
    ) -> None:
        """``slots`` (socket, Identifier) pairs spread over sockets of ``per_socket`` each
        (at most 256): more sockets give the kernel more flows to spread over server workers."""
        per_socket = max(1, min(256, per_socket))
        self.auth_addr = (host, auth_port)
        self.acct_addr = (host, acct_port)
        self.secret = secret
        self.timeout = timeout
        self.sockets: list[socket.socket] = []
        self.slots: list[_Slot] = []
        self._by_key: dict[tuple[int, int], _Slot] = {}
        count = -(-slots // per_socket)
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((host, 0))
            sock.setblocking(False)
            self.sockets.append(sock)
        for i in range(slots):
            sock = self.sockets[i % count]
            slot = _Slot(sock, i // count)
            self.slots.append(slot)
            self._by_key[(sock.fileno(), slot.ident)] = slot

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def plan(self, workload: Workload, count: int) -> list[Txn]:
        """Encode ``count`` transactions; transaction i belongs to slot i % slots.

        Each slot has cards of its own, from the workload's cursor on: in its round r, slot s
        uses card s + slots * (r mod rounds), where ``rounds`` is how many cards each slot can
        have. A slot runs one transaction at a time, so with at least as many cards as slots a
        card is never in two transactions at once, however few the cards: they are only
        reused, each by its own slot. (Taken in one turn over all slots, as before, a few cards
        came back to a card still in a call on a slot that had fallen behind, and the server
        rightly refused it as in use.)
        """
        n = len(self.slots)
        rounds = max(1, len(workload.pins) // n)
        base = workload.next_card
        txns = [
            workload.make(self.slots[i % n].ident, card=base + i % n + n * ((i // n) % rounds))
            for i in range(count)
        ]
        workload.next_card = base + min(count, rounds * n)
        return txns

    # -------------------------------------------------------------------------- running
    def closed_loop(self, txns: list[Txn], duration: float) -> Result:
        n = len(self.slots)
        for slot in self.slots:
            slot.queue.clear()
        for i, txn in enumerate(txns):
            self.slots[i % n].queue.append(txn)
        planned = [len(slot.queue) for slot in self.slots]
        res = self._run(Result("closed", duration), duration, None, txns)
        res.rounds = max(
            (p - len(slot.queue) for p, slot in zip(planned, self.slots, strict=True)), default=0
        )
        return res

    def open_loop(self, txns: list[Txn], rate: float, duration: float) -> Result:
        """Start transaction i at i / ``rate`` seconds, on slot i % slots."""
        return self._run(Result("open", duration), duration, rate, txns)

    def _run(self, res: Result, duration: float, rate: float | None, txns: list[Txn]) -> Result:
        secret, timeout = self.secret, self.timeout
        auth_addr, acct_addr = self.auth_addr, self.acct_addr
        by_key = self._by_key
        pending: deque[tuple[float, _Slot, int]] = deque()
        latencies = res.latencies
        clock = time.perf_counter
        busy = 0
        closed = rate is None

        gc.collect()
        gc.disable()
        cpu0 = time.process_time()
        t0 = clock()
        end = t0 + duration
        hard_end = end + timeout + 0.5

        def send(slot: _Slot, data: bytes, authenticator: bytes, addr: tuple[str, int]) -> None:
            slot.seq += 1
            slot.authenticator = authenticator
            now = clock()
            slot.sent_at = now
            pending.append((now + timeout, slot, slot.seq))
            res.sent += 1
            slot.sock.sendto(data, addr)

        def begin(slot: _Slot, txn: Txn) -> None:
            nonlocal busy
            slot.txn = txn
            slot.stage = 0
            busy += 1
            send(slot, txn.auth_packet, txn.auth_authenticator, auth_addr)

        def finish(slot: _Slot, ok: bool) -> None:
            nonlocal busy
            busy -= 1
            slot.txn = None
            if ok:
                res.done_total += 1
                if clock() <= end:
                    res.done += 1
            if closed and slot.queue and clock() < end:
                begin(slot, slot.queue.popleft())
            elif closed and not slot.queue and clock() < end:
                res.exhausted = True  # this slot stops early; the window shrinks

        def on_reply(slot: _Slot, data: bytes) -> None:
            txn = slot.txn
            if txn is None or not reply_valid(data, slot.authenticator, secret):
                res.invalid += 1
                return
            now = clock()
            if slot.sent_at <= end:
                latencies.append(now - slot.sent_at)
            res.answered += 1
            if now <= end:
                res.answered_in_window += 1
            slot.seq += 1  # whatever is pending for this send is answered
            code = data[0]
            if slot.stage == 0:
                if txn.kind == "fail":
                    if code == ACCESS_ACCEPT:
                        res.fail_accepted += 1
                    else:
                        res.fail_rejected += 1
                    finish(slot, True)
                    return
                if code != ACCESS_ACCEPT:
                    res.rejected += 1
                    finish(slot, True)
                    return
                res.accepted += 1
                if txn.kind == "auth":
                    finish(slot, True)
                    return
                slot.stage = 1
                cls = classes_of(data)
                packet, auth = encode_accounting(slot.ident, secret, txn.start_attrs + cls)
                txn.stop_attrs += cls
                send(slot, packet, auth, acct_addr)
            elif slot.stage == 1:
                slot.stage = 2
                packet, auth = encode_accounting(slot.ident, secret, txn.stop_attrs)
                send(slot, packet, auth, acct_addr)
            else:
                res.calls_billed += 1
                finish(slot, True)

        poller = select.epoll()
        fds = {}
        for sock in self.sockets:
            poller.register(sock.fileno(), select.EPOLLIN)
            fds[sock.fileno()] = sock
        try:
            next_i = 0
            if closed:
                for slot in self.slots:
                    if slot.queue:
                        begin(slot, slot.queue.popleft())
            n_slots = len(self.slots)
            while True:
                now = clock()
                wait = 0.05
                if not closed:
                    assert rate is not None
                    while next_i < len(txns) and now < end:
                        due = t0 + next_i / rate
                        if due > now:
                            wait = min(wait, due - now)
                            break
                        slot = self.slots[next_i % n_slots]
                        if slot.txn is None:
                            begin(slot, txns[next_i])
                        else:
                            res.slot_busy += 1
                        next_i += 1
                    if next_i >= len(txns) and len(txns) < rate * duration - 1:
                        res.exhausted = True
                if busy == 0 and (now >= end or (closed and res.exhausted)):
                    break
                if now >= hard_end:
                    break
                for fd, _ in poller.poll(max(wait, 0.0)):
                    sock = fds[fd]
                    while True:
                        try:
                            data = sock.recv(4096)
                        except BlockingIOError:
                            break
                        if len(data) < 20:
                            res.invalid += 1
                            continue
                        replied = by_key.get((fd, data[1]))
                        if replied is None:
                            res.invalid += 1
                            continue
                        on_reply(replied, data)
                now = clock()
                while pending and pending[0][0] <= now:
                    _, slot, seq = pending.popleft()
                    if slot.seq == seq and slot.txn is not None:
                        res.lost += 1
                        finish(slot, False)
            # Anything still unanswered at the hard end is lost too.
            for slot in self.slots:
                if slot.txn is not None:
                    res.lost += 1
                    slot.txn = None
        finally:
            poller.close()
            res.wall = clock() - t0
            res.loadgen_cpu = time.process_time() - cpu0
            if res.exhausted and closed and res.wall < duration:
                # Ran out before the end: the rate is over the time it actually ran.
                res.duration, res.done = res.wall, res.done_total
                res.answered_in_window = res.answered
            gc.enable()
        return res
