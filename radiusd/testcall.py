"""A whole test call played against a running server, as a NAS would play it.

Access-Request, then (when accepted) Accounting Start and Stop echoing the Class, each sent over
UDP from the NAS's address with its secret, retransmitted on silence like a NAS, and every reply
verified (Response Authenticator and Message-Authenticator). Used by ``prepaidctl call``.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field

from pyrad import packet as rp
from pyrad.dictionary import Dictionary

from radiusd.codec import load_dictionary

CODE_NAMES = {
    rp.AccessAccept: "Access-Accept",
    rp.AccessReject: "Access-Reject",
    rp.AccountingResponse: "Accounting-Response",
}


class NoAnswer(RuntimeError):
    """The server did not answer (unknown NAS address, wrong secret, server down)."""


@dataclass(frozen=True)
class Step:
    request: str
    answer: str
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class TestCall:
    host: str
    auth_port: int
    acct_port: int
    secret: bytes
    source: str = "127.0.0.1"
    timeout: float = 2.0
    retries: int = 2
    dictionary: Dictionary | None = None

    def _send(self, sock: socket.socket, pkt: rp.Packet, port: int) -> rp.Packet:
        data = pkt.RequestPacket()
        sock.settimeout(self.timeout)
        for _ in range(self.retries + 1):
            sock.sendto(data, (self.host, port))
            try:
                raw, _ = sock.recvfrom(8192)
            except TimeoutError:
                continue
            reply = pkt.CreateReply(packet=raw)
            if pkt.VerifyReply(reply, raw, enforce_ma=pkt.code == rp.AccessRequest):
                return reply
        raise NoAnswer(
            f"no answer from {self.host}:{port} after {self.retries + 1} tries "
            f"(is the server running, and is {self.source} a NAS with this secret?)"
        )

    def play(self, pin: str | None, ani: str | None, to: str, seconds: int | None) -> list[Step]:
        dictionary = self.dictionary or load_dictionary()
        steps: list[Step] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.source, 0))
            auth = rp.AuthPacket(code=rp.AccessRequest, secret=self.secret, dict=dictionary)
            if pin:
                auth["User-Name"] = pin
            if ani:
                auth["Calling-Station-Id"] = ani
            auth["Called-Station-Id"] = to
            auth.add_message_authenticator()
            reply = self._send(sock, auth, self.auth_port)
            details = {}
            for name in (
                "Session-Timeout",
                "Reply-Message",
                "h323-credit-amount",
                "h323-return-code",
            ):
                if name in reply:
                    value = str(reply[name][0])
                    details[name] = value.split("=", 1)[1] if value.startswith("h323-") else value
            steps.append(
                Step("Access-Request", CODE_NAMES.get(reply.code, str(reply.code)), details)
            )
            if reply.code != rp.AccessAccept:
                return steps
            granted = int(reply["Session-Timeout"][0])
            duration = min(granted, 60) if seconds is None else seconds
            session_id = "prepaidctl-" + secrets.token_hex(6)
            for status, extra in (("Start", {}), ("Stop", {"Acct-Session-Time": duration})):
                acct = rp.AcctPacket(code=rp.AccountingRequest, secret=self.secret, dict=dictionary)
                acct["Acct-Status-Type"] = status
                acct["Acct-Session-Id"] = session_id
                acct["Called-Station-Id"] = to
                if ani:
                    acct["Calling-Station-Id"] = ani
                for value in reply.get("Class", []):
                    acct["Class"] = value
                for name, number in extra.items():
                    acct[name] = number
                if status == "Stop":
                    acct["Acct-Terminate-Cause"] = "User-Request"
                answer = self._send(sock, acct, self.acct_port)
                info = {"Acct-Session-Id": session_id}
                if status == "Stop":
                    info["Acct-Session-Time"] = str(duration)
                steps.append(
                    Step(f"Accounting-Request {status}", CODE_NAMES.get(answer.code, "?"), info)
                )
        return steps
