"""Summarize a ``py-spy record --format raw`` profile: the top functions by own and total samples.

    python -m bench.pyspy_top PROFILE.txt [--top 25] [--include-idle]

Samples where a thread only waits (idle thread-pool workers, the reactor in epoll) are left out
unless ``--include-idle``, so the shares are of the CPU actually spent.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

IDLE = ("wait (threading.py", "_worker (twisted/_threads", "poll (twisted/internet/epollreactor")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """``func (path/file.py:123)`` without the line number, so one function is one entry."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def summarize(path: str, include_idle: bool = False) -> tuple[int, Counter[str], Counter[str]]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            leaf = frames[-1]
            if not include_idle and any(marker in leaf for marker in IDLE):
                continue
            samples += n
            names = [short(f) for f in frames if not f.startswith(("process ", "thread "))]
            if names:
                own[names[-1]] += n
            for name in set(names):
                total[name] += n
    return samples, own, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--include-idle", action="store_true")
    args = parser.parse_args(argv)
    samples, own, total = summarize(args.profile, args.include_idle)
    print(f"{samples} busy samples")
    print("\nown time (the function itself)")
    for name, n in own.most_common(args.top):
        print(f"{n / samples:6.1%}  {name}")
    print("\ntotal time (the function and what it calls)")
    for name, n in total.most_common(args.top):
        print(f"{n / samples:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
