"""The RADIUS codec: the one module that touches pyrad.

Bytes in, a verified :class:`Request` out; a :class:`Reply` in, signed bytes out. Everything
else in ``radiusd`` sees these plain objects.

Before pyrad decodes anything, :func:`check_structure` walks the packet itself: pyrad accepts a
top-level attribute whose length runs past the end of the packet (it silently truncates the
value), and older releases looped forever on a Vendor-Specific sub-attribute of length 0
(pyrad issue 234). Our walk refuses both, so no datagram can stall the reactor or be read
differently from what the NAS signed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from pyrad import packet as rp
from pyrad.dictionary import Dictionary

import dictionaries

ACCESS_REQUEST = rp.AccessRequest
ACCESS_ACCEPT = rp.AccessAccept
ACCESS_REJECT = rp.AccessReject
ACCOUNTING_REQUEST = rp.AccountingRequest
ACCOUNTING_RESPONSE = rp.AccountingResponse
STATUS_SERVER = rp.StatusServer

MAX_PACKET = 4096  # RFC 2865 section 3
MESSAGE_AUTHENTICATOR = 80
VENDOR_SPECIFIC = 26


class Malformed(ValueError):
    """The datagram is not a well-formed RADIUS packet; ``reason`` is a short metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_structure(data: bytes) -> tuple[int, int, bytes]:
    """Validate header and attribute lengths; return (code, identifier, authenticator)."""
    if len(data) < 20:
        raise Malformed("short-packet")
    code, ident, length = struct.unpack_from("!BBH", data)
    if length < 20 or length > MAX_PACKET or length > len(data):
        raise Malformed("bad-length")
    pos = 20
    has_ma = False
    while pos < length:
        if pos + 2 > length:
            raise Malformed("bad-attribute")
        attr_type, attr_len = data[pos], data[pos + 1]
        if attr_len < 2 or pos + attr_len > length:
            raise Malformed("bad-attribute")
        if attr_type == MESSAGE_AUTHENTICATOR:
            if attr_len != 18 or has_ma:
                raise Malformed("bad-message-authenticator")
            has_ma = True
        elif attr_type == VENDOR_SPECIFIC and attr_len > 6:
            sub, end = pos + 6, pos + attr_len
            while sub < end:
                if sub + 2 > end or data[sub + 1] < 2 or sub + data[sub + 1] > end:
                    raise Malformed("bad-vendor-attribute")
                sub += data[sub + 1]
        pos += attr_len
    return code, ident, data[4:20]


def load_dictionary(path: str = "") -> Dictionary:
    return Dictionary(path or str(dictionaries.path()))


@dataclass(slots=True)
class Request:
    """A decoded, verified request. ``attrs`` maps attribute names to decoded values."""

    code: int
    identifier: int
    authenticator: bytes
    attrs: dict[str, list[Any]]
    message_authenticator: bool  # present (and, since we got here, valid)
    password: str | None = None  # decrypted User-Password
    chap: bool = False
    raw: Any = field(default=None, repr=False)  # the pyrad packet, for building the reply

    def first(self, name: str, default: Any = None) -> Any:
        values = self.attrs.get(name)
        return values[0] if values else default


@dataclass(slots=True)
class Reply:
    code: int
    attrs: list[tuple[str, Any]] = field(default_factory=list)


class Codec:
    def __init__(self, dictionary: Dictionary) -> None:
        self.dictionary = dictionary

    def decode(self, data: bytes, secret: bytes, require_ma: bool) -> Request:
        """Decode and verify a request from a known NAS, or raise :class:`Malformed`.

        Verification: Accounting-Request authenticator (RFC 2866); Message-Authenticator whenever
        present, and required when ``require_ma`` or for Status-Server (RFC 5997).
        """
        code, _, _ = check_structure(data)
        cls: type[rp.Packet]
        if code in (ACCESS_REQUEST, STATUS_SERVER):
            cls = rp.AuthPacket
        elif code == ACCOUNTING_REQUEST:
            cls = rp.AcctPacket
        else:
            raise Malformed("unsupported-code")
        try:
            pkt = cls(packet=data, secret=secret, dict=self.dictionary)
        except (rp.PacketError, struct.error, ValueError):
            raise Malformed("undecodable") from None
        has_ma = bool(pkt.message_authenticator)
        if code == ACCOUNTING_REQUEST:
            if not pkt.VerifyAcctRequest():
                raise Malformed("bad-authenticator")
        if has_ma:
            if not pkt.verify_message_authenticator():
                raise Malformed("bad-message-authenticator")
        elif require_ma or code == STATUS_SERVER:
            raise Malformed("missing-message-authenticator")
        attrs: dict[str, list[Any]] = {}
        try:
            for key in pkt.keys():
                if isinstance(key, str):
                    if key in ("User-Password", "Message-Authenticator"):
                        continue
                    attrs[key] = pkt[key]
        except (KeyError, ValueError, UnicodeDecodeError, struct.error, IndexError):
            raise Malformed("bad-attribute-value") from None
        password = None
        if "User-Password" in pkt:
            raw_pw = pkt.get(2)
            try:
                password = pkt.PwDecrypt(raw_pw[0]) if raw_pw else ""
            except (rp.PacketError, ValueError, IndexError):
                raise Malformed("bad-password") from None
        return Request(
            code=code,
            identifier=pkt.id,
            authenticator=pkt.authenticator,
            attrs=attrs,
            message_authenticator=has_ma,
            password=password,
            chap="CHAP-Password" in attrs,
            raw=pkt,
        )

    def encode(self, request: Request, reply: Reply) -> bytes:
        """Sign a reply to ``request``; Message-Authenticator always, and always first."""
        pkt = request.raw
        out = pkt.CreateReply(message_authenticator=True)
        out.code = reply.code
        for name, value in reply.attrs:
            out.AddAttribute(name, value)
        return bytes(out.ReplyPacket())
