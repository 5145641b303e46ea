"""Test support: run ``prepaidctl`` and ``prepaid-radiusd`` as a user would, and speak RADIUS.

Everything here drives the real programs: the CLI as a subprocess, the server as a subprocess
listening on ephemeral loopback ports, and RADIUS over real UDP with pyrad packets (and
FreeRADIUS ``radclient`` where the tests say so).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyrad import packet as rp
from pyrad.dictionary import Dictionary

import dictionaries

BIN = Path(sys.executable).parent
DICTIONARY = Dictionary(str(dictionaries.path()))
SECRET = b"s3cret"


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


class ServerProcess:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "prepaid-radiusd")],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_for("server.listening", timeout=20)
        self.auth_port = int(listening["auth_port"])
        self.acct_port = int(listening["acct_port"])
        self.metrics_port = listening.get("metrics_port")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if name is None or record.get("event") == name:
                out.append(record)
        return out

    def wait_for(self, name: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.events(name):
                if all(record.get(k) == v for k, v in match.items()):
                    return record
            if self.proc.poll() is not None and name == "server.listening":
                break
            time.sleep(0.02)
        raise AssertionError(f"no {name} {match} event; output:\n" + "\n".join(self.lines[-30:]))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def metrics(self) -> str:
        """The Prometheus endpoint's text, as a scraper reads it."""
        assert self.metrics_port, "metrics are off for this server"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as resp:
            return str(resp.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


class Deployment:
    """One installation: a state directory, a database, the CLI, and server processes."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.dir = tmp_path
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREPAID_") or k.startswith("PREPAID_TEST")
        }
        self.env.update(
            {
                "PREPAID_RADIUS_AUTH_PORT": "0",
                "PREPAID_RADIUS_ACCT_PORT": "0",
                "PREPAID_RADIUS_BIND": "127.0.0.1",
                "PREPAID_SERVER_NAS_REFRESH_SECONDS": "0.2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env)
        self.servers: list[ServerProcess] = []

    def ctl(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> CliResult:
        """Run ``prepaidctl`` with this deployment's environment.

        In-process through the CLI's own entry point (typer's runner): the same code, output and
        exit status as the console script, without paying the interpreter start-up per command.
        ``ctl_process`` runs the installed console script itself.
        """
        from typer.testing import CliRunner

        from admin_cli.main import app

        environment: dict[str, str | None] = {
            k: None for k in os.environ if k.startswith("PREPAID_") and k not in self.env
        }
        environment.update(self.env)
        environment.update(env or {})
        cwd = os.getcwd()
        os.chdir(self.dir)
        try:
            run = CliRunner().invoke(app, list(args), env=environment, catch_exceptions=False)
        finally:
            os.chdir(cwd)
        result = CliResult(run.exit_code, run.stdout, run.stderr)
        if check and result.returncode != 0:
            raise AssertionError(
                f"prepaidctl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def ctl_process(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """Run the installed ``prepaidctl`` console script in a child process."""
        proc = subprocess.run(
            [str(BIN / "prepaidctl"), *args],
            env={**self.env, **(env or {})},
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def ctl_json(self, *args: str) -> Any:
        return json.loads(self.ctl(*args, "--format", "json").stdout)

    def start_server(self, **settings: str) -> ServerProcess:
        env = dict(self.env)
        env.update(settings)
        server = ServerProcess(env, self.dir)
        self.servers.append(server)
        return server

    def run_server(self, **settings: str) -> subprocess.CompletedProcess[str]:
        """``prepaid-radiusd`` run until it exits (one that must refuse to start), its output
        captured."""
        return subprocess.run(
            [str(BIN / "prepaid-radiusd")],
            env={**self.env, **settings},
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    # -- setting up what the Done-when scenarios need, with the CLI ---------------------------
    def add_nas(
        self, name: str = "gw1", profile: str = "cisco", secret: str = "s3cret", **opts: str
    ) -> None:
        args = [
            "nas",
            "add",
            name,
            "--address",
            opts.pop("address", "127.0.0.1"),
            "--secret",
            secret,
            "--profile",
            profile,
        ]
        for key, value in opts.items():
            args += [f"--{key.replace('_', '-')}", value]
        self.ctl(*args)

    def add_rates(self, group: str = "retail", rows: list[str] | None = None) -> None:
        self.ctl("rategroup", "add", group, "--currency", "USD")
        sheet = self.dir / f"{group}-rates.csv"
        sheet.write_text(
            "prefix,description,price_per_minute,connection_fee,first_increment,next_increment,grace_seconds\n"
            + "\n".join(rows or ["44,United Kingdom,0.07,0.05,30,6,0"])
            + "\n"
        )
        self.ctl("rates", "import", group, str(sheet))

    def create_cards(
        self,
        count: int = 1,
        value: str = "5.00",
        group: str = "retail",
        activate: bool = True,
        **opts: str,
    ) -> list[dict[str, str]]:
        out = self.dir / f"batch-{time.monotonic_ns()}.csv"
        args = [
            "batch",
            "create",
            "--rate-group",
            group,
            "--type",
            opts.pop("type", "standard"),
            "--value",
            value,
            "--count",
            str(count),
            "--output",
            str(out),
        ]
        for key, val in opts.items():
            args += [f"--{key.replace('_', '-')}", val]
        self.ctl(*args)
        with out.open() as fh:
            cards = list(csv.DictReader(fh))
        if activate:
            self.ctl("card", "activate", *[c["serial"] for c in cards])
        return cards


class Radius:
    """A NAS: one UDP socket (one source port, so retransmissions look like retransmissions)."""

    def __init__(self, secret: bytes = SECRET, host: str = "127.0.0.1") -> None:
        self.secret = secret
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))

    def close(self) -> None:
        self.sock.close()

    def access_request(
        self,
        user: str | None = None,
        password: str | None = None,
        message_authenticator: bool = True,
        **attrs: Any,
    ) -> rp.AuthPacket:
        pkt = rp.AuthPacket(code=rp.AccessRequest, secret=self.secret, dict=DICTIONARY)
        if user is not None:
            pkt["User-Name"] = user
        if password is not None:
            pkt["User-Password"] = pkt.PwCrypt(password)
        for key, value in attrs.items():
            pkt[key.replace("_", "-")] = value
        if message_authenticator:
            pkt.add_message_authenticator()
        return pkt

    def accounting_request(self, **attrs: Any) -> rp.AcctPacket:
        pkt = rp.AcctPacket(code=rp.AccountingRequest, secret=self.secret, dict=DICTIONARY)
        for key, value in attrs.items():
            pkt[key.replace("_", "-")] = value
        return pkt

    def send_raw(self, data: bytes, port: int, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        self.sock.sendto(data, (self.host, port))
        try:
            reply, _ = self.sock.recvfrom(8192)
        except TimeoutError:
            return None
        return reply

    def send(self, pkt: rp.Packet, port: int, timeout: float = 2.0) -> rp.Packet | None:
        """Send (encoding once) and return the verified reply, or None after ``timeout``."""
        data = pkt.RequestPacket()
        raw = self.send_raw(data, port, timeout)
        if raw is None:
            return None
        reply = pkt.CreateReply(packet=raw)
        assert pkt.VerifyReply(reply, raw, enforce_ma=True), "reply failed verification"
        assert raw[20] == 80, "Message-Authenticator must be the first attribute"
        return reply


def radclient(
    port: int, kind: str, attributes: str, secret: str = "s3cret", *extra: str
) -> subprocess.CompletedProcess[str]:
    """Send with FreeRADIUS radclient (-x prints the reply attributes)."""
    return subprocess.run(
        ["radclient", "-x", "-r", "1", "-t", "2", *extra, f"127.0.0.1:{port}", kind, secret],
        input=attributes,
        capture_output=True,
        text=True,
        timeout=30,
    )
