"""Live state in the process (driven by a Twisted task.Clock) and the Redis fallback."""

from __future__ import annotations

import pytest
import redis
from twisted.internet.task import Clock

from billing.storage.live import FallbackLiveState, InProcessLiveState


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_700_000_000)  # a realistic epoch; the state must not care
    return c


@pytest.fixture
def state(clock: Clock) -> InProcessLiveState:
    return InProcessLiveState(clock.seconds)


# -- reply cache -----------------------------------------------------------------------------


def test_reply_cache_returns_until_ttl(clock: Clock, state: InProcessLiveState) -> None:
    assert state.reply_get("k") is None
    state.reply_put("k", b"reply", 30)
    assert state.reply_get("k") == b"reply"
    clock.advance(29.9)
    assert state.reply_get("k") == b"reply"
    clock.advance(0.1)
    assert state.reply_get("k") is None


def test_reply_cache_keys_are_independent(clock: Clock, state: InProcessLiveState) -> None:
    state.reply_put("a", b"A", 10)
    clock.advance(5)
    state.reply_put("b", b"B", 10)
    clock.advance(5)
    assert state.reply_get("a") is None
    assert state.reply_get("b") == b"B"
    clock.advance(5)
    assert state.reply_get("b") is None


def test_reply_put_again_replaces_and_renews(clock: Clock, state: InProcessLiveState) -> None:
    state.reply_put("k", b"old", 10)
    clock.advance(8)
    state.reply_put("k", b"new", 10)
    clock.advance(8)
    assert state.reply_get("k") == b"new"


def test_reply_cache_is_bounded(clock: Clock) -> None:
    state = InProcessLiveState(clock.seconds, max_replies=3)
    for i in range(5):
        state.reply_put(f"k{i}", bytes([i]), 30)
    assert state.reply_get("k0") is None
    assert state.reply_get("k1") is None
    assert [state.reply_get(f"k{i}") for i in (2, 3, 4)] == [b"\x02", b"\x03", b"\x04"]


# -- failure counting and lockouts -----------------------------------------------------------


def test_failures_count_within_the_window(clock: Clock, state: InProcessLiveState) -> None:
    assert state.count_failure("ani:44", 300) == 1
    clock.advance(100)
    assert state.count_failure("ani:44", 300) == 2
    clock.advance(199)
    assert state.count_failure("ani:44", 300) == 3
    assert state.count_failure("nas:1", 300) == 1  # another key counts apart


def test_failures_reset_after_the_window(clock: Clock, state: InProcessLiveState) -> None:
    state.count_failure("ani:44", 300)
    state.count_failure("ani:44", 300)
    clock.advance(300)
    assert state.count_failure("ani:44", 300) == 1
    clock.advance(299)
    assert state.count_failure("ani:44", 300) == 2


def test_reset_failures(state: InProcessLiveState) -> None:
    state.count_failure("ani:44", 300)
    state.count_failure("ani:44", 300)
    state.reset_failures("ani:44")
    assert state.count_failure("ani:44", 300) == 1
    state.reset_failures("never-counted")  # no error


def test_lockout_expires(clock: Clock, state: InProcessLiveState) -> None:
    assert state.is_locked_out("ani:44") is False
    state.lock_out("ani:44", 900)
    assert state.is_locked_out("ani:44") is True
    assert state.is_locked_out("ani:45") is False
    clock.advance(899)
    assert state.is_locked_out("ani:44") is True
    clock.advance(1)
    assert state.is_locked_out("ani:44") is False


def test_throttle_state_reports_lockouts_and_counted_failures(
    clock: Clock, state: InProcessLiveState
) -> None:
    assert state.throttle_state(("ani:44", "nas:1"), "ani:44") == (False, False)
    state.count_failure("ani:44", 300)
    assert state.throttle_state(("ani:44", "nas:1"), "ani:44") == (False, True)
    state.lock_out("nas:1", 60)
    assert state.throttle_state(("ani:44", "nas:1"), None) == (True, False)
    clock.advance(300)  # the failure window and the lockout are both over
    assert state.throttle_state(("ani:44", "nas:1"), "ani:44") == (False, False)


def test_claim_many_is_each_claim_with_its_throttling_state(state: InProcessLiveState) -> None:
    state.lock_out("nas:1", 60)
    assert state.claim_many([("k", ("ani:4", "nas:1"), "ani:4"), ("a", None, None)], 30) == [
        ((True, None), (True, False)),
        ((True, None), None),
    ]
    state.reply_put_many([("a", b"\x02reply")], 30)
    assert state.claim_many([("k", ("ani:4",), None), ("a", None, None)], 30) == [
        ((False, None), (False, False)),
        ((False, b"\x02reply"), None),
    ]
    state.reply_release_many(["k", "a"])  # the pending claim goes, the reply stays
    assert state.claim_many([("k", None, None), ("a", None, None)], 30) == [
        ((True, None), None),
        ((False, b"\x02reply"), None),
    ]


def test_lockout_can_be_extended(clock: Clock, state: InProcessLiveState) -> None:
    state.lock_out("ani:44", 100)
    clock.advance(90)
    state.lock_out("ani:44", 100)
    clock.advance(90)
    assert state.is_locked_out("ani:44") is True


def test_ping(state: InProcessLiveState) -> None:
    assert state.ping() is True


# -- fallback --------------------------------------------------------------------------------


class DownRedis:
    """A primary whose every call fails as an unreachable Redis does."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):  # noqa: ANN204 - any LiveState method
        def fail(*args: object) -> object:
            self.calls.append(name)
            raise redis.ConnectionError("connection refused")

        return fail


class UpStub:
    """A primary that answers, to show the fallback is not used while Redis works."""

    def __init__(self) -> None:
        self.replies: dict[str, bytes] = {}

    def reply_get(self, key: str) -> bytes | None:
        return self.replies.get(key)

    def reply_put(self, key: str, data: bytes, ttl_seconds: float) -> None:
        self.replies[key] = data

    def count_failure(self, key: str, window_seconds: int) -> int:
        return 42

    def is_locked_out(self, key: str) -> bool:
        return True


def test_fallback_uses_in_process_state_when_redis_fails(
    clock: Clock, state: InProcessLiveState
) -> None:
    errors: list[Exception] = []
    primary = DownRedis()
    live = FallbackLiveState(primary, state, errors.append, clock.seconds, retry_seconds=1.0)

    live.reply_put("k", b"reply", 30)
    assert live.reply_get("k") == b"reply"
    assert state.reply_get("k") == b"reply"  # it went to the in-process state
    assert live.count_failure("ani:44", 300) == 1
    assert live.count_failure("ani:44", 300) == 2
    live.reset_failures("ani:44")
    assert live.count_failure("ani:44", 300) == 1
    live.lock_out("ani:44", 60)
    assert live.is_locked_out("ani:44") is True
    clock.advance(60)
    assert live.is_locked_out("ani:44") is False

    # Redis was tried at the first call, and again once the retry time had passed.
    assert primary.calls == ["reply_put", "is_locked_out"]
    assert len(errors) == 2 and all(isinstance(e, redis.RedisError) for e in errors)


def test_after_a_failure_redis_is_left_alone_for_the_retry_time(clock: Clock) -> None:
    """A Redis that does not answer costs a timeout per call: after one failure the process
    uses its own state for ``retry_seconds``, then tries Redis again, and uses it once it
    answers."""
    state = InProcessLiveState(clock.seconds)
    errors: list[Exception] = []
    down = DownRedis()
    live = FallbackLiveState(down, state, errors.append, clock.seconds, retry_seconds=1.0)
    live.reply_put("a", b"1", 30)
    clock.advance(0.5)
    live.reply_put("b", b"2", 30)  # within the retry time: Redis left alone
    assert down.calls == ["reply_put"] and len(errors) == 1
    clock.advance(0.5)
    live.reply_put("c", b"3", 30)  # tried again, and failed again
    assert down.calls == ["reply_put", "reply_put"] and len(errors) == 2
    up = UpStub()
    live._primary = up  # Redis is back
    live.reply_put("d", b"4", 30)  # still within the retry time: the process's own state
    assert up.replies == {} and state.reply_get("d") == b"4"
    clock.advance(1.0)
    live.reply_put("e", b"5", 30)
    assert up.replies == {"e": b"5"} and state.reply_get("e") is None


def test_fallback_prefers_the_primary_while_it_works(state: InProcessLiveState) -> None:
    errors: list[Exception] = []
    primary = UpStub()
    live = FallbackLiveState(primary, state, errors.append)
    live.reply_put("k", b"reply", 30)
    assert live.reply_get("k") == b"reply"
    assert primary.replies == {"k": b"reply"}
    assert state.reply_get("k") is None
    assert live.count_failure("ani:44", 300) == 42
    assert live.is_locked_out("x") is True
    assert errors == []


def test_reply_claim_is_exclusive_until_answered_or_released() -> None:
    clock = Clock()
    state = InProcessLiveState(clock.seconds)
    assert state.reply_claim("k", 30) == (True, None)
    assert state.reply_claim("k", 30) == (False, None)  # someone is processing it
    assert state.reply_get("k") is None  # a claim is never replayed as a reply
    state.reply_put("k", b"\x02reply", 30)
    assert state.reply_claim("k", 30) == (False, b"\x02reply")
    assert state.reply_claim("other", 30) == (True, None)
    state.reply_release("other")
    assert state.reply_claim("other", 30) == (True, None)
    clock.advance(31)
    assert state.reply_claim("k", 30) == (True, None)  # expired
