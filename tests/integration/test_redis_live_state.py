"""The Redis live state on a real Redis: claims, replies, failure counters and lockouts."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from billing.storage.live import PENDING, RedisLiveState


@pytest.fixture
def state(redis_url: str):
    prefix = f"paaa-test-{uuid.uuid4().hex[:8]}:"
    yield RedisLiveState(redis_url, prefix)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def test_claims_are_exclusive_across_clients(state: RedisLiveState, redis_url: str) -> None:
    other = RedisLiveState(redis_url, state._prefix)  # another server process
    assert state.reply_claim("k", 5) == (True, None)
    assert other.reply_claim("k", 5) == (False, None)
    assert other.reply_get("k") is None
    state.reply_put("k", b"\x02reply", 5)
    assert other.reply_claim("k", 5) == (False, b"\x02reply")
    assert other.reply_get("k") == b"\x02reply"


def test_released_claim_can_be_taken_again(state: RedisLiveState) -> None:
    assert state.reply_claim("r", 5) == (True, None)
    state.reply_release("r")
    assert state.reply_claim("r", 5) == (True, None)
    state.reply_put("r", b"\x05ack", 5)
    state.reply_release("r")  # a finished reply is never released
    assert state.reply_get("r") == b"\x05ack"


def test_keys_expire(state: RedisLiveState, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    state.reply_claim("t", 2)
    state.count_failure("ani:1555", 300)
    state.lock_out("ani:1555", 900)
    for name in (
        f"{state._prefix}reply:t",
        f"{state._prefix}fail:ani:1555",
        f"{state._prefix}lockout:ani:1555",
    ):
        ttl = client.pttl(name)
        assert ttl > 0, name
    assert client.get(f"{state._prefix}reply:t") == PENDING


def test_failures_count_within_window_and_lockout(state: RedisLiveState) -> None:
    assert [state.count_failure("nas:1", 300) for _ in range(3)] == [1, 2, 3]
    state.reset_failures("nas:1")
    assert state.count_failure("nas:1", 300) == 1
    assert not state.is_locked_out("nas:1")
    state.lock_out("nas:1", 60)
    assert state.is_locked_out("nas:1")
    assert state.ping()


def test_lockout_of_any_key_in_one_call(state: RedisLiveState) -> None:
    assert not state.is_locked_out("ani:1", "nas:9")
    state.lock_out("nas:9", 60)
    assert state.is_locked_out("ani:1", "nas:9")
    assert not state.is_locked_out("ani:1")


def test_throttle_state_in_one_round_trip(state: RedisLiveState) -> None:
    assert state.throttle_state(("ani:1", "nas:9"), "ani:1") == (False, False)
    state.count_failure("ani:1", 300)
    assert state.throttle_state(("ani:1", "nas:9"), "ani:1") == (False, True)
    state.lock_out("nas:9", 60)
    assert state.throttle_state(("ani:1", "nas:9"), "ani:1") == (True, True)
    assert state.throttle_state(("nas:9",), None) == (True, False)
    state.reset_failures("ani:1")
    assert state.throttle_state(("ani:1",), "ani:1") == (False, False)


def test_a_batch_is_claimed_with_its_throttling_state(
    state: RedisLiveState, redis_url: str
) -> None:
    other = RedisLiveState(redis_url, state._prefix)  # another server process
    state.count_failure("ani:2", 300)
    other.lock_out("nas:3", 60)
    assert state.claim_many([("q", ("ani:2",), "ani:2"), ("acct", None, None)], 5) == [
        ((True, None), (False, True)),
        ((True, None), None),  # no authorization, no throttling state
    ]
    state.reply_put_many([("q", b"\x02reply")], 5)
    assert other.claim_many(
        [("acct", ("ani:2", "nas:3"), None), ("q", ("nas:9",), "ani:9"), ("new", None, None)], 5
    ) == [
        ((False, None), (True, False)),
        ((False, b"\x02reply"), (False, False)),
        ((True, None), None),
    ]
    state.reply_release_many(["acct", "q", "new"])  # pending claims go, a reply stays
    assert other.claim_many([("acct", None, None), ("q", None, None)], 5) == [
        ((True, None), None),
        ((False, b"\x02reply"), None),
    ]


def test_a_dropped_connection_fails_one_call_and_the_next_reconnects(
    state: RedisLiveState, redis_url: str
) -> None:
    assert state.reply_claim("d", 5) == (True, None)
    (own_id,) = state._run(("CLIENT", "ID"))  # this thread's connection
    admin = redis.Redis.from_url(redis_url)
    assert admin.client_kill_filter(_id=own_id) == 1  # the server drops it
    with pytest.raises(redis.ConnectionError):  # the caller (FallbackLiveState) falls back
        state.reply_put("d", b"\x02reply", 5)
    state.reply_put("d", b"\x02reply", 5)  # a fresh connection, nothing left half-read
    assert state.reply_claim("d", 5) == (False, b"\x02reply")
    assert state.claim_many([("e", ("nas:1",), "ani:1")], 5) == [((True, None), (False, False))]


def test_replies_put_later_go_with_the_next_command_or_a_flush(
    state: RedisLiveState, redis_url: str
) -> None:
    other = RedisLiveState(redis_url, state._prefix)  # another server process
    client = redis.Redis.from_url(redis_url)
    for key in ("a", "b", "c"):
        assert state.reply_claim(key, 5) == (True, None)
    state.reply_put_later([("a", b"\x02a"), ("b", b"\x02b")], 5)
    assert other.reply_claim("a", 5) == (False, None)  # still in flight, as far as others see
    # The next batch's claims carry them: its own results are not mixed up with theirs.
    results = state.claim_many([("d", None, None), ("a", None, None)], 5)
    assert results == [((True, None), None), ((False, b"\x02a"), None)]
    assert other.reply_get("b") == b"\x02b"
    assert 0 < client.pttl(f"{state._prefix}reply:b") <= 5000
    state.reply_put_later([("c", b"\x02c")], 5)
    assert other.reply_get("c") is None
    state.flush()
    assert other.reply_get("c") == b"\x02c"
    state.flush()  # nothing waits: the connection stays in step for the next command
    assert state.reply_get("c") == b"\x02c"


def test_replies_put_later_on_one_thread_go_with_a_command_on_another(
    state: RedisLiveState, redis_url: str
) -> None:
    other = RedisLiveState(redis_url, state._prefix)  # another server process
    assert state.reply_claim("t", 5) == (True, None)
    batch_thread = threading.Thread(target=state.reply_put_later, args=([("t", b"\x02t")], 5))
    batch_thread.start()
    batch_thread.join()
    assert other.reply_get("t") is None
    state.flush()  # on this thread: what the other one left goes too
    assert other.reply_get("t") == b"\x02t"
