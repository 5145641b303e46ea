"""Spread datagrams over the worker processes one by one, not flow by flow.

With SO_REUSEPORT alone, Linux picks the socket of a datagram by a hash of its source and
destination address and port, so one flow always reaches the same process. A NAS usually sends
all its RADIUS from one socket: a softswitch that carries most of an operator's traffic would
load one worker and leave the others idle, and a few NAS would load them unevenly.

Each worker therefore attaches a classic BPF program to its port's reuseport group
(``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5 and later) that picks a socket at random for every
datagram: ``random % workers``. The kernel runs it for each datagram; an index with no socket
behind it (a worker being restarted) falls back to the hash, so nothing is lost. A
retransmission may then reach another worker than the original: the shared reply cache in Redis
answers it, or drops it while the original is in flight, as for a NAS that retransmits to
another host.
"""

from __future__ import annotations

import ctypes
import socket

#: From <linux/socket.h> / <asm-generic/socket.h>; Python's socket module does not name it.
SO_ATTACH_REUSEPORT_CBPF = 51

# Classic BPF opcodes (<linux/bpf_common.h>) and the ancillary load of a random number
# (<linux/filter.h>: SKF_AD_OFF is -0x1000, SKF_AD_RANDOM 56).
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00
_BPF_RET_A = 0x06 | 0x10
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF


class _Instruction(ctypes.Structure):  # struct sock_filter
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def spread_per_datagram(sock: socket.socket, sockets: int) -> None:
    """Make the reuseport group of ``sock`` (bound) hand each datagram to one of its first
    ``sockets`` sockets at random. Raises ``OSError`` where the kernel cannot."""
    if sockets < 1:
        raise ValueError("sockets must be at least 1")
    code = (_Instruction * 3)(
        _Instruction(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM),
        _Instruction(_BPF_ALU_MOD_K, 0, 0, sockets),
        _Instruction(_BPF_RET_A, 0, 0, 0),
    )
    program = _Program(len(code), code)
    # The kernel copies the program; ``code`` only has to live through the call.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(program))
