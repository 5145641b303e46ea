"""Live state: short-lived facts shared by the server's request handlers.

Two adapters with one interface:

* :class:`InProcessLiveState` — the embedded default, for a single server process. Time comes
  from an injected clock (the reactor's ``seconds``), so tests drive it with ``task.Clock``.
* :class:`RedisLiveState` — production: shared by every process and host, with TTLs in Redis.

What lives here: the reply cache for retransmissions, and PIN-failure counters and lockouts.
Money never lives here: reservations and exactly-once keys are in the database, so losing this
state can cost a replayed reply or a forgotten failure count, never money.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import hiredis
import redis

#: The reply-cache value of a request being processed; no RADIUS packet starts with a zero octet.
PENDING = b"\x00pending"


class LiveState(Protocol):
    def reply_get(self, key: str) -> bytes | None: ...

    def reply_put(self, key: str, data: bytes, ttl_seconds: float) -> None: ...

    def reply_claim(self, key: str, ttl_seconds: float) -> tuple[bool, bytes | None]:
        """Claim a request for processing: (True, None) when this caller got it; else
        (False, reply) when it was answered already, or (False, None) while another process
        is still working on it."""
        ...

    def reply_release(self, key: str) -> None:
        """Give up a claim (processing failed), so a retransmission is processed again."""
        ...

    def count_failure(self, key: str, window_seconds: int) -> int: ...

    def reset_failures(self, key: str) -> None: ...

    def lock_out(self, key: str, seconds: int) -> None: ...

    def is_locked_out(self, *keys: str) -> bool:
        """Whether any of ``keys`` is locked out (one round trip for all)."""
        ...

    def throttle_state(self, keys: tuple[str, ...], failure_key: str | None) -> tuple[bool, bool]:
        """One round trip before an authorization: whether any of ``keys`` is locked out, and
        whether ``failure_key`` has failures counted (so a success need not reset it otherwise).
        """
        ...

    def claim_many(
        self, claims: list[Claim], ttl_seconds: float
    ) -> list[tuple[tuple[bool, bytes | None], tuple[bool, bool] | None]]:
        """:meth:`reply_claim` for a batch of requests, in one round trip. Each claim is
        ``(key, lockout_keys, failure_key)``; with ``lockout_keys`` (an authorization) its
        throttling state comes back in the same round trip (:meth:`throttle_state`), else
        None."""
        ...

    def reply_put_many(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> None:
        """:meth:`reply_put` for a batch, in one round trip."""
        ...

    def reply_put_later(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> None:
        """:meth:`reply_put_many`, sent with the process's next command (on any thread), or by
        :meth:`flush`: no round trip of its own when another follows soon."""
        ...

    def flush(self) -> None:
        """Send what :meth:`reply_put_later` left waiting."""
        ...

    def reply_release_many(self, keys: list[str]) -> None:
        """:meth:`reply_release` for a batch."""
        ...

    def ping(self) -> bool: ...


#: A request to claim: its reply-cache key, and for an authorization the keys of
#: :meth:`LiveState.throttle_state` (lockouts, failure counter).
Claim = tuple[str, tuple[str, ...] | None, str | None]
ClaimResult = tuple[tuple[bool, bytes | None], tuple[bool, bool] | None]


class InProcessLiveState:
    """Dictionaries with expiry times, guarded by one lock (batches may run on worker threads)."""

    def __init__(self, clock: Callable[[], float], max_replies: int = 100_000) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._replies: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._failures: dict[str, tuple[float, int]] = {}
        self._lockouts: dict[str, float] = {}
        self._max_replies = max_replies

    def reply_get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._replies.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._replies[key]
                return None
            return None if entry[1] == PENDING else entry[1]

    def reply_put(self, key: str, data: bytes, ttl_seconds: float) -> None:
        now = self._clock()
        with self._lock:
            self._replies[key] = (now + ttl_seconds, data)
            self._replies.move_to_end(key)
            # Entries are appended in time order with one TTL, so expired ones sit at the front.
            while self._replies:
                first_key, (expires, _) = next(iter(self._replies.items()))
                if expires > now and len(self._replies) <= self._max_replies:
                    break
                del self._replies[first_key]

    def reply_claim(self, key: str, ttl_seconds: float) -> tuple[bool, bytes | None]:
        with self._lock:
            entry = self._replies.get(key)
            if entry is not None and entry[0] > self._clock():
                return False, None if entry[1] == PENDING else entry[1]
        self.reply_put(key, PENDING, ttl_seconds)
        return True, None

    def reply_release(self, key: str) -> None:
        with self._lock:
            entry = self._replies.get(key)
            if entry is not None and entry[1] == PENDING:
                del self._replies[key]

    def count_failure(self, key: str, window_seconds: int) -> int:
        now = self._clock()
        with self._lock:
            expires, count = self._failures.get(key, (0.0, 0))
            if expires <= now:
                expires, count = now + window_seconds, 0
            count += 1
            self._failures[key] = (expires, count)
            if len(self._failures) > 100_000:
                self._failures = {k: v for k, v in self._failures.items() if v[0] > now}
            return count

    def reset_failures(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def lock_out(self, key: str, seconds: int) -> None:
        with self._lock:
            self._lockouts[key] = self._clock() + seconds

    def is_locked_out(self, *keys: str) -> bool:
        now = self._clock()
        with self._lock:
            for key in keys:
                until = self._lockouts.get(key)
                if until is None:
                    continue
                if until <= now:
                    del self._lockouts[key]
                    continue
                return True
            return False

    def throttle_state(self, keys: tuple[str, ...], failure_key: str | None) -> tuple[bool, bool]:
        locked = self.is_locked_out(*keys)
        if failure_key is None:
            return locked, False
        with self._lock:
            entry = self._failures.get(failure_key)
            return locked, entry is not None and entry[0] > self._clock()

    # The batch methods, one by one: in this process a call costs no round trip.
    def claim_many(self, claims: list[Claim], ttl_seconds: float) -> list[ClaimResult]:
        return [
            (
                self.reply_claim(key, ttl_seconds),
                None if keys is None else self.throttle_state(keys, failure_key),
            )
            for key, keys, failure_key in claims
        ]

    def reply_put_many(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> None:
        for key, data in replies:
            self.reply_put(key, data, ttl_seconds)

    reply_put_later = reply_put_many  # nothing to save: no round trip here

    def flush(self) -> None:
        pass

    def reply_release_many(self, keys: list[str]) -> None:
        for key in keys:
            self.reply_release(key)

    def ping(self) -> bool:
        return True


class RedisLiveState:
    """The same facts in Redis, each key with a TTL, shared by every server process."""

    def __init__(
        self,
        url: str,
        prefix: str = "paaa:",
        sentinels: list[str] | None = None,
        sentinel_service: str = "",
    ) -> None:
        options: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        self._redis: redis.Redis
        if sentinels:
            from redis.sentinel import Sentinel

            hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in sentinels]
            parsed = redis.connection.parse_url(url or "redis://")
            parsed.pop("host", None)
            parsed.pop("port", None)
            sentinel = Sentinel(hosts, sentinel_kwargs=options, **options)
            self._redis = sentinel.master_for(sentinel_service, **parsed)
        else:
            self._redis = redis.Redis.from_url(url, health_check_interval=30, **options)
        self._prefix = prefix
        self._threads = threading.local()
        self._later: list[bytes] = []  # the replies' copies waiting for the next command
        self._later_lock = threading.Lock()

    def _run(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write on this thread's connection and read their replies.

        Every command goes this way: redis-py's connection API without its client layer, which
        cost about twice as much CPU per command here (a connection held per long-lived handler
        thread also spares the pool's checkout). The commands are packed by hiredis, in C:
        redis-py's own packing took ten times as long (230 against 24 µs for 32 commands), the
        largest share of a batch's Redis work; hiredis parses the replies too.
        Replies are Redis's own (``b"OK"``, ``None``, integers, bytes). On any error the
        connection is closed, so no reply is left unread; the next command reconnects.
        What :meth:`reply_put_later` left waiting (on any thread) goes first, in the same write;
        its replies are read and dropped (an error among them fails the call, as its own would).
        """
        conn = getattr(self._threads, "conn", None)
        if conn is None:
            conn = self._threads.conn = self._redis.connection_pool.get_connection()
        with self._later_lock:
            later, self._later = self._later, []
        try:
            conn.send_packed_command(
                [b"".join(later + [hiredis.pack_command(c) for c in commands])]
            )
            for _ in later:
                conn.read_response()
            return [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()
            raise

    def _k(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    def reply_get(self, key: str) -> bytes | None:
        (value,) = self._run(("GET", self._k("reply", key)))
        return value if isinstance(value, bytes) and value != PENDING else None

    def reply_put(self, key: str, data: bytes, ttl_seconds: float) -> None:
        self._run(("SET", self._k("reply", key), data, "PX", max(1, int(ttl_seconds * 1000))))

    def _claim(self, name: str, ttl_seconds: float) -> tuple[Any, ...]:
        return ("SET", name, PENDING, "PX", max(1, int(ttl_seconds * 1000)), "NX")

    @staticmethod
    def _claimed(claimed: Any, value: Any) -> tuple[bool, bytes | None] | None:
        """The claim's outcome from SET NX and GET sent together; None: the key expired between
        the two, so claim again."""
        if claimed:
            return True, None
        if value is None:
            return None
        if value == PENDING:
            return False, None
        return False, value if isinstance(value, bytes) else str(value).encode()

    def reply_claim(self, key: str, ttl_seconds: float) -> tuple[bool, bytes | None]:
        name = self._k("reply", key)
        for _ in range(2):
            claimed, value = self._run(self._claim(name, ttl_seconds), ("GET", name))
            outcome = self._claimed(claimed, value)
            if outcome is not None:
                return outcome
        return False, None  # taken and gone twice in a row: leave it to whoever has it

    def claim_many(self, claims: list[Claim], ttl_seconds: float) -> list[ClaimResult]:
        commands: list[tuple[Any, ...]] = []
        for key, keys, failure_key in claims:
            name = self._k("reply", key)
            commands += (self._claim(name, ttl_seconds), ("GET", name))
            if keys is not None:
                commands += self._throttle(keys, failure_key)
        replies = iter(self._run(*commands)) if commands else iter(())
        results: list[ClaimResult] = []
        for key, keys, failure_key in claims:
            claimed, value = next(replies), next(replies)
            throttle = None
            if keys is not None:
                count = 2 if failure_key is not None else 1
                throttle = self._throttled([next(replies) for _ in range(count)])
            outcome = self._claimed(claimed, value)
            results.append((outcome or self.reply_claim(key, ttl_seconds), throttle))
        return results

    def _puts(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> list[tuple[Any, ...]]:
        ttl = max(1, int(ttl_seconds * 1000))
        return [("SET", self._k("reply", key), data, "PX", ttl) for key, data in replies]

    def reply_put_many(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> None:
        if replies:
            self._run(*self._puts(replies, ttl_seconds))

    def reply_put_later(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> None:
        """The replies wait until the process's next command (the next batch's claims, on
        whichever thread) or :meth:`flush`. Until then another process that gets a
        retransmission finds the request still in flight and drops it; the NAS's next try
        finds the reply."""
        if replies:
            packed = [hiredis.pack_command(c) for c in self._puts(replies, ttl_seconds)]
            with self._later_lock:
                self._later += packed

    def flush(self) -> None:
        if self._later:
            self._run()

    def reply_release(self, key: str) -> None:
        self.reply_release_many([key])

    def reply_release_many(self, keys: list[str]) -> None:
        names = [self._k("reply", key) for key in keys]
        if not names:
            return
        values = self._run(*(("GET", name) for name in names))
        pending = [name for name, value in zip(names, values, strict=True) if value == PENDING]
        if pending:
            self._run(("DEL", *pending))

    def count_failure(self, key: str, window_seconds: int) -> int:
        name = self._k("fail", key)
        *_, (count, _) = self._run(
            ("MULTI",), ("INCR", name), ("EXPIRE", name, window_seconds, "NX"), ("EXEC",)
        )
        return int(count)

    def reset_failures(self, key: str) -> None:
        self._run(("DEL", self._k("fail", key)))

    def lock_out(self, key: str, seconds: int) -> None:
        self._run(("SET", self._k("lockout", key), b"1", "EX", seconds))

    def is_locked_out(self, *keys: str) -> bool:
        (count,) = self._run(("EXISTS", *(self._k("lockout", key) for key in keys)))
        return bool(count)

    def _throttle(self, keys: tuple[str, ...], failure_key: str | None) -> list[tuple[Any, ...]]:
        """The commands of :meth:`throttle_state`; :meth:`_throttled` reads their replies."""
        commands: list[tuple[Any, ...]] = [("EXISTS", *(self._k("lockout", k) for k in keys))]
        if failure_key is not None:
            commands.append(("EXISTS", self._k("fail", failure_key)))
        return commands

    @staticmethod
    def _throttled(replies: list[Any]) -> tuple[bool, bool]:
        locked, *failures = replies
        return bool(locked), bool(failures and failures[0])

    def throttle_state(self, keys: tuple[str, ...], failure_key: str | None) -> tuple[bool, bool]:
        return self._throttled(self._run(*self._throttle(keys, failure_key)))

    def ping(self) -> bool:
        return self._run(("PING",)) == [b"PONG"]


#: After Redis fails, how long a process uses its own state before it tries Redis again.
REDIS_RETRY_SECONDS = 1.0


class FallbackLiveState:
    """Redis first; while Redis is unreachable, this process's own state, so service goes on.

    ``on_error`` is told of each failure (for logs and metrics). What falls back is only
    throttling state and replay: money is in the database either way.

    After a failure the process leaves Redis alone for ``retry_seconds``, then tries again. A
    Redis that refuses connections fails at once, but one that does not answer at all (a host
    gone, a partition) costs its socket timeout (0.5 s) per call: a batch makes two calls, and
    every request of the process queued behind the batch would wait for both.
    """

    def __init__(
        self,
        primary: LiveState,
        fallback: LiveState,
        on_error: Callable[[Exception], None],
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = REDIS_RETRY_SECONDS,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._on_error = on_error
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._retry_at = float("-inf")  # Redis is left alone until then

    def _call(self, name: str, *args: object) -> object:
        if self._clock() >= self._retry_at:
            try:
                return getattr(self._primary, name)(*args)
            except redis.RedisError as exc:
                self._retry_at = self._clock() + self._retry_seconds
                self._on_error(exc)
        return getattr(self._fallback, name)(*args)

    def reply_get(self, key: str) -> bytes | None:
        return self._call("reply_get", key)  # type: ignore[return-value]

    def reply_put(self, key: str, data: bytes, ttl_seconds: float) -> None:
        self._call("reply_put", key, data, ttl_seconds)

    def reply_claim(self, key: str, ttl_seconds: float) -> tuple[bool, bytes | None]:
        return self._call("reply_claim", key, ttl_seconds)  # type: ignore[return-value]

    def reply_release(self, key: str) -> None:
        self._call("reply_release", key)

    def count_failure(self, key: str, window_seconds: int) -> int:
        return self._call("count_failure", key, window_seconds)  # type: ignore[return-value]

    def reset_failures(self, key: str) -> None:
        self._call("reset_failures", key)

    def lock_out(self, key: str, seconds: int) -> None:
        self._call("lock_out", key, seconds)

    def is_locked_out(self, *keys: str) -> bool:
        return self._call("is_locked_out", *keys)  # type: ignore[return-value]

    def throttle_state(self, keys: tuple[str, ...], failure_key: str | None) -> tuple[bool, bool]:
        return self._call("throttle_state", keys, failure_key)  # type: ignore[return-value]

    def claim_many(self, claims: list[Claim], ttl_seconds: float) -> list[ClaimResult]:
        return self._call("claim_many", claims, ttl_seconds)  # type: ignore[return-value]

    def reply_put_many(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> None:
        self._call("reply_put_many", replies, ttl_seconds)

    def reply_put_later(self, replies: list[tuple[str, bytes]], ttl_seconds: float) -> None:
        self._call("reply_put_later", replies, ttl_seconds)

    def flush(self) -> None:
        self._call("flush")

    def reply_release_many(self, keys: list[str]) -> None:
        self._call("reply_release_many", keys)

    def ping(self) -> bool:
        return self._primary.ping()
