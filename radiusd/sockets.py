"""The listeners' sockets: the size of their receive buffers, and what the kernel dropped there.

While a process's batch threads are all busy its listeners do not read (see
:class:`radiusd.server.RadiusServer`): what arrives waits in each socket's receive buffer in
the kernel. What does not fit is dropped by the kernel before the server sees it, as a lost
packet on the NAS's side. So the buffer is sized by ``[radius] receive_buffer`` (SO_RCVBUF),
and the kernel's own count of those drops is a metric, ``prepaid_radius_socket_drops_total``,
next to the server's ``prepaid_radius_drops_total``.

The kernel caps SO_RCVBUF at ``net.core.rmem_max`` (Debian's default is 208 KiB): the size
granted is logged at start-up, and a warning says when it is less than the size asked for
(docs/DEPLOYMENT.md gives the sysctl). The kernel counts its bookkeeping too: on loopback a
buffer of 208 KiB held 256 datagrams of 150 bytes, and one of 4 MiB (the default asked for)
10,082.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Where Linux lists its UDP sockets, one line each, with the inode, the bytes queued and the
#: datagrams dropped.
PROC_UDP = (Path("/proc/net/udp"), Path("/proc/net/udp6"))


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of ``size`` bytes (0: keep the kernel's default) and return the
    size in effect. Linux grants at most ``net.core.rmem_max``, keeps twice that (the other
    half for its bookkeeping) and reports the double, so the figure returned is half of it, in
    the setting's terms; its default (``size`` 0) is returned as the kernel reports it."""
    if size <= 0:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return granted // 2 if sys.platform == "linux" else granted


def udp_socket_stats(
    inodes: set[int], tables: tuple[Path, ...] = PROC_UDP
) -> dict[int, tuple[int, int]]:
    """``{inode: (bytes queued, datagrams dropped)}`` for the sockets named, from the kernel's
    tables (empty where there are none: not Linux)."""
    found: dict[int, tuple[int, int]] = {}
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local rem st tx_queue:rx_queue tr:tm retrnsmt uid timeout inode ref ptr drops
            if len(fields) < 13 or int(fields[9]) not in inodes:
                continue
            queued = int(fields[4].split(":")[1], 16)
            found[int(fields[9])] = (queued, int(fields[12]))
    return found


class SocketCollector(Collector):
    """Prometheus series of the listeners' sockets, read from the kernel at each scrape."""

    def __init__(self, sockets: dict[str, socket.socket]) -> None:
        self._inodes = {name: os.fstat(sock.fileno()).st_ino for name, sock in sockets.items()}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = udp_socket_stats(set(self._inodes.values()))
        drops = CounterMetricFamily(
            "prepaid_radius_socket_drops",
            "Datagrams the kernel dropped at a listener's socket (its receive buffer was full)",
            labels=["listener"],
        )
        queued = GaugeMetricFamily(
            "prepaid_radius_socket_queued_bytes",
            "Bytes waiting in a listener's receive buffer",
            labels=["listener"],
        )
        for name, inode in self._inodes.items():
            if inode in stats:
                queued.add_metric([name], stats[inode][0])
                drops.add_metric([name], stats[inode][1])
        yield drops
        yield queued
