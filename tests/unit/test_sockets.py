"""The listeners' sockets: the receive buffer asked for is the one in effect (up to the
kernel's cap), and the kernel's drops at a full buffer show in the metrics."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from radiusd.sockets import SocketCollector, set_receive_buffer, udp_socket_stats

linux = pytest.mark.skipif(sys.platform != "linux", reason="the kernel's tables are Linux's")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


@linux
def test_the_buffer_asked_for_is_granted(listener: socket.socket) -> None:
    assert set_receive_buffer(listener, 65536) == 65536
    # What the kernel holds is twice that: the other half is its bookkeeping.
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 131072


@linux
def test_the_kernel_caps_the_buffer_and_the_figure_says_so(listener: socket.socket) -> None:
    cap = rmem_max()
    assert set_receive_buffer(listener, cap * 4) == cap


def test_zero_keeps_the_kernels_default(listener: socket.socket) -> None:
    default = listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert set_receive_buffer(listener, 0) == default
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == default


@linux
def test_what_overflows_a_full_buffer_is_counted(listener: socket.socket) -> None:
    set_receive_buffer(listener, 4096)  # a few datagrams' worth
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(200):  # nothing reads: most of them find the buffer full
            sender.sendto(b"\x01" * 100, listener.getsockname())
    finally:
        sender.close()
    registry = CollectorRegistry()
    registry.register(SocketCollector({"auth": listener}))
    text = generate_latest(registry).decode()
    drops = next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith('prepaid_radius_socket_drops_total{listener="auth"}')
    )
    queued = next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith('prepaid_radius_socket_queued_bytes{listener="auth"}')
    )
    held = 0
    listener.setblocking(False)
    while True:
        try:
            listener.recv(4096)
        except BlockingIOError:
            break
        held += 1
    assert 0 < held < 200 and drops == 200 - held
    assert queued > 0


def test_stats_of_sockets_the_kernel_does_not_list_are_absent(tmp_path: Path) -> None:
    table = tmp_path / "udp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        "  216: 0100007F:0714 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0 "
        "       0 4242 2 000000006a1d4f81 7\n"
    )
    assert udp_socket_stats({4242, 4343}, (table, tmp_path / "missing")) == {4242: (2560, 7)}
