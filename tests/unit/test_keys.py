"""The PIN key file: created once, whole, whoever starts first."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest

from billing.storage.keys import KeyError_, load_or_create_pin_key


def test_created_on_first_use_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pin.key"
    key = load_or_create_pin_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_pin_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["pin.key"]  # no scratch file left


def test_not_created_when_told_not_to(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="PIN key file not found"):
        load_or_create_pin_key(tmp_path / "pin.key", create=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not hex\n", "does not hold a hex key"), (b"00ff\n", "shorter than 16 bytes")],
)
def test_a_bad_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "pin.key"
    path.write_bytes(content)
    with pytest.raises(KeyError_, match=message):
        load_or_create_pin_key(path)


def _load(path: str, start: Any, out: Any) -> None:
    start.wait()
    try:
        out.put(load_or_create_pin_key(Path(path)).hex())
    except KeyError_ as exc:
        out.put(f"error: {exc}")


def test_processes_starting_together_all_get_the_one_key(tmp_path: Path) -> None:
    """The workers of ``workers = N`` start at once; none may read a half-written key."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(15):
        path = tmp_path / f"round-{round_}" / "pin.key"
        start = ctx.Barrier(6)
        out = ctx.Queue()
        procs = [ctx.Process(target=_load, args=(str(path), start, out)) for _ in range(6)]
        for p in procs:
            p.start()
        keys = {out.get(timeout=20) for _ in procs}
        for p in procs:
            p.join(10)
        assert keys == {path.read_text().strip()}, keys
