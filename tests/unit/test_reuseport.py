"""The reuseport program that spreads datagrams over workers, on real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from radiusd.reuseport import spread_per_datagram

SENT = 120  # well inside a socket's default receive buffer


def _group(size: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    port = 0
    for _ in range(size):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _received(socks: list[socket.socket], count: int = SENT) -> list[int]:
    """Send ``count`` datagrams from one socket (one flow) and count what each socket got."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for i in range(count):
            sender.sendto(i.to_bytes(2, "big"), socks[0].getsockname())
    counts = []
    for sock in socks:
        got = 0
        while True:
            try:
                sock.recv(16)
            except BlockingIOError:
                break
            got += 1
        counts.append(got)
    return counts


@pytest.fixture
def groups() -> Iterator[list[list[socket.socket]]]:
    made: list[list[socket.socket]] = []
    yield made
    for group in made:
        for sock in group:
            sock.close()


def test_without_the_program_one_flow_reaches_one_socket(
    groups: list[list[socket.socket]],
) -> None:
    group = _group(2)
    groups.append(group)
    assert sorted(_received(group)) == [0, SENT]


@pytest.mark.parametrize("size", [2, 3])
def test_one_flow_is_spread_over_every_socket(groups: list[list[socket.socket]], size: int) -> None:
    group = _group(size)
    groups.append(group)
    spread_per_datagram(group[-1], size)  # any member attaches it for the whole group
    counts = _received(group)
    assert sum(counts) == SENT
    # Uniform at random: each of ``size`` gets SENT/size on average; under a quarter of that
    # has odds below 10^-8 for any of them.
    assert min(counts) > SENT / size / 4, counts


def test_a_missing_socket_falls_back_to_the_others(groups: list[list[socket.socket]]) -> None:
    """Three workers configured, two running (one being restarted): nothing is lost."""
    group = _group(2)
    groups.append(group)
    spread_per_datagram(group[0], 3)
    assert sum(_received(group)) == SENT


def test_a_joining_socket_gets_its_share(groups: list[list[socket.socket]]) -> None:
    """A restarted worker binds again and attaches the same program: it takes its share."""
    group = _group(1)
    groups.append(group)
    spread_per_datagram(group[0], 2)
    port = group[0].getsockname()[1]
    late = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    late.bind(("127.0.0.1", port))
    late.setblocking(False)
    group.append(late)
    spread_per_datagram(late, 2)
    counts = _received(group)
    assert sum(counts) == SENT and min(counts) > SENT / 8, counts


def test_at_least_one_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError):
            spread_per_datagram(sock, 0)
