"""The systemd units in systemd/ pass ``systemd-analyze verify`` (where systemd is installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
BIN = Path(sys.executable).parent


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path: Path) -> None:
    names = sorted(p.name for p in UNITS.glob("*.service")) + sorted(
        p.name for p in UNITS.glob("*.timer")
    )
    assert {"prepaid-radiusd.service", "prepaid-expire.service", "prepaid-expire.timer"} <= set(
        names
    )
    for name in names:
        # verify checks that ExecStart exists: point it at this virtualenv's console scripts
        text = (UNITS / name).read_text().replace("/opt/prepaid-aaa/bin", str(BIN))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *[str(tmp_path / n) for n in names]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(tmp_path) in line or "prepaid" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_server_unit_is_hardened() -> None:
    unit = (UNITS / "prepaid-radiusd.service").read_text()
    for directive in (
        "User=prepaid-aaa",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=prepaid-aaa",
        "Restart=on-failure",
    ):
        assert directive in unit.splitlines(), directive
    assert "OnCalendar=" in (UNITS / "prepaid-expire.timer").read_text()
