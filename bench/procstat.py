"""CPU accounting from /proc: a process tree's CPU seconds, PostgreSQL's, the machine's idle time.

Figures are read before and after a run and subtracted, so only the run's own work counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime in seconds) of a live process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime = int(fields[11]), int(fields[12])
    return ppid, (utime + stime) / TICK


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it (worker processes of a supervisor)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            out[pid] = st[1]
    return out


def tree_cpu(root: int) -> dict[int, float]:
    return cpu_seconds(descendants(root))


def delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two samples by the processes present in ``after``.

    A process born during the run counts from zero; one that died during the run is lost
    (the benchmark keeps its processes and connection pools alive, so none should).
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def machine_idle() -> tuple[float, float]:
    """(idle seconds summed over all CPUs, total seconds summed over all CPUs) since boot."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return idle / TICK, sum(values) / TICK
