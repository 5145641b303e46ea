"""The RADIUS codec: the one module that touches pyrad.

Bytes in, a verified :class:`Request` out; a :class:`Reply` in, signed bytes out. Everything
else in ``radiusd`` sees these plain objects.

Before anything is decoded, :func:`check_structure` walks the packet itself: pyrad accepts a
top-level attribute whose length runs past the end of the packet (it silently truncates the
value), and older releases looped forever on a Vendor-Specific sub-attribute of length 0
(pyrad issue 234). Our walk refuses both, so no datagram can stall the reactor or be read
differently from what the NAS signed.

pyrad's :class:`~pyrad.dictionary.Dictionary` says what every attribute is (name, code, vendor,
data type, named values) and pyrad's :mod:`~pyrad.tools` converts every value. Its packet
objects are not used on the request path: building one per request, reading each attribute
through it, and ``CreateReply``, ``AddAttribute`` and ``ReplyPacket`` for the answer took about
28 % of the CPU of an Access-Request in a profile of the authorization path (their name lookups
and type checks run again for every attribute). So the codec frames attributes itself
(RFC 2865 section 5, Vendor-Specific as section 5.26), checks and makes the Request and
Response Authenticators (RFC 2865 section 3, RFC 2866 section 3) and the Message-Authenticator
(RFC 2869 section 5.14, RFC 3579 section 3.2), and reveals the User-Password (RFC 2865
section 5.2), with the choices pyrad makes: the same attribute order, the same length limits,
the same authenticator for each reply code. ``python -m bench.codec`` measures it, and the
tests compare its replies byte for byte with pyrad's. A request's attribute values are decoded
when they are read, most never are; a value that would not decode still makes the request
malformed at once. What the codec does not frame itself goes through pyrad's packets: a
dictionary with TLV, tagged or salt-encrypted attributes (for decoding), and a reply attribute
of such a type or of another data type (for encoding).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from pyrad import packet as rp
from pyrad import tools
from pyrad.dictionary import Attribute, Dictionary

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
PROXY_STATE = 33
MAX_VALUE = 253  # octets of value in one attribute: its Length field is one octet

ZERO_VECTOR = bytes(16)
_MA_ZEROED = bytes((MESSAGE_AUTHENTICATOR, 18)) + ZERO_VECTOR
#: Decoded into Request.password and Request.message_authenticator, never into Request.attrs.
_NOT_ATTRS = ("User-Password", "Message-Authenticator")
_DECODE_ERRORS = (KeyError, ValueError, UnicodeDecodeError, struct.error, IndexError)

#: pyrad's converters of the data types the codec frames itself.
_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "string": tools.DecodeString,
    "octets": tools.DecodeOctets,
    "integer": tools.DecodeInteger,
    "date": tools.DecodeDate,
    "ipaddr": tools.DecodeAddress,
}
_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "string": tools.EncodeString,
    "octets": tools.EncodeOctets,
    "integer": tools.EncodeInteger,
    "date": tools.EncodeDate,
    "ipaddr": tools.EncodeAddress,
}
#: Data types whose values decode at this length and fail at any other (and only then).
_FIXED_LENGTH = {"integer": 4, "date": 4, "ipaddr": 4}


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


class Attributes(Mapping[str, list[Any]]):
    """A request's attributes by name, in the order they came; values are decoded when read.

    Every value was checked to decode when the request was, so reading one never fails.
    """

    __slots__ = ("_raw", "_values")

    def __init__(self, raw: dict[str, tuple[Callable[[bytes], Any], list[bytes]]]) -> None:
        self._raw = raw
        self._values: dict[str, list[Any]] = {}

    def __getitem__(self, name: str) -> list[Any]:
        values = self._values.get(name)
        if values is None:
            decode, raw = self._raw[name]
            values = self._values[name] = [decode(value) for value in raw]
        return values

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[name] if name in self._raw else default

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Attributes({dict(self.items())!r})"


@dataclass(slots=True)
class Request:
    """A decoded, verified request. ``attrs`` maps attribute names to decoded values."""

    code: int
    identifier: int
    authenticator: bytes
    attrs: Mapping[str, list[Any]]
    message_authenticator: bool  # present (and, since we got here, valid)
    password: str | None = field(default=None, repr=False)  # decrypted User-Password
    chap: bool = False
    secret: bytes = field(default=b"", repr=False)  # the NAS's, to sign the reply
    proxy_state: tuple[bytes, ...] = ()  # echoed in the reply, in order (RFC 2865 5.33)
    data: bytes = field(default=b"", repr=False)  # the packet, up to its Length field

    def first(self, name: str, default: Any = None) -> Any:
        values = self.attrs.get(name)
        return values[0] if values else default


@dataclass(slots=True)
class Reply:
    code: int
    attrs: list[tuple[str, Any]] = field(default_factory=list)


class _Reader(NamedTuple):
    """How the values of one attribute are decoded."""

    name: str
    decode: Callable[[bytes], Any]
    size: int  # the one length at which values decode, 0 when any does
    lazy: bool  # False: decoding is the only check, so it is done with the request


class _Writer(NamedTuple):
    """How the values of one attribute are encoded and framed."""

    key: int | tuple[int, int]  # what pyrad groups repeated attributes by
    code: int
    vendor: bytes  # the Vendor-Id (4 octets) of a vendor attribute, else empty
    limit: int  # the longest value it can frame, plus 2
    encode: Callable[[Any], bytes]
    named: dict[str, bytes]  # the dictionary's VALUEs, already encoded


def _named(named: dict[bytes, str], convert: Callable[[bytes], Any], value: bytes) -> Any:
    return named[value] if value in named else convert(value)


def _reader(attr: Attribute) -> _Reader:
    convert = _DECODERS.get(attr.type) or partial(tools.DecodeAttr, attr.type)
    named = attr.values.backward
    decode = partial(_named, named, convert) if named else convert
    return _Reader(attr.name, decode, _FIXED_LENGTH.get(attr.type, 0), attr.type in _DECODERS)


def _pyrad_only(attr: Attribute) -> bool:
    """Whether pyrad's packets alone read or write this attribute (its framing or value is
    transformed: TLV, RFC 2868 tag, salt encryption)."""
    return attr.type == "tlv" or attr.is_sub_attribute or attr.has_tag or attr.encrypt == 2


def _split(data: bytes) -> tuple[dict[Any, list[bytes]], int]:
    """The raw values of a packet :func:`check_structure` accepted, keyed as pyrad keys them
    (code, or (vendor, type) inside a Vendor-Specific of at least 6 octets of value) and grouped
    in order of first appearance; and the offset of the Message-Authenticator (0: none)."""
    raw: dict[Any, list[bytes]] = {}
    ma_at = 0
    pos, end = 20, len(data)
    while pos < end:
        kind, size = data[pos], data[pos + 1]
        if kind == VENDOR_SPECIFIC and size >= 8:
            vendor = int.from_bytes(data[pos + 2 : pos + 6], "big")
            sub, stop = pos + 6, pos + size
            while sub < stop:
                sub_size = data[sub + 1]
                raw.setdefault((vendor, data[sub]), []).append(data[sub + 2 : sub + sub_size])
                sub += sub_size
        else:
            if kind == MESSAGE_AUTHENTICATOR:
                ma_at = pos
            raw.setdefault(kind, []).append(data[pos + 2 : pos + size])
        pos += size
    return raw, ma_at


def _ma_vector(code: int, authenticator: bytes, request_code: int = 0) -> bytes:
    """The authenticator a packet's Message-Authenticator is computed with (RFC 2869 5.14,
    RFC 5176 3.3, RFC 5997 3): zeros for accounting and dynamic-authorization requests and for
    an Accounting-Response other than to Status-Server; else the Request Authenticator."""
    if code in (ACCOUNTING_REQUEST, rp.DisconnectRequest, rp.CoARequest) or (
        code == ACCOUNTING_RESPONSE and request_code != STATUS_SERVER
    ):
        return ZERO_VECTOR
    return authenticator


def _md5(data: bytes) -> bytes:
    """MD5, which RADIUS's authenticators and password hiding are defined on (RFC 2865)."""
    return hashlib.md5(data).digest()  # noqa: S324


def _reveal(secret: bytes, authenticator: bytes, hidden: bytes) -> str:
    """The User-Password (RFC 2865 section 5.2), as pyrad's ``PwDecrypt`` reads it: NULs at the
    end removed, UTF-8 with what does not decode left out. ``PwDecrypt`` (a method of a packet
    object) XORs octet by octet and measured three to four times as long as this."""
    if len(hidden) % 16:
        raise Malformed("bad-password")
    plain, last = b"", authenticator
    for at in range(0, len(hidden), 16):
        block = hidden[at : at + 16]
        key = _md5(secret + last)
        plain += (int.from_bytes(block, "big") ^ int.from_bytes(key, "big")).to_bytes(16, "big")
        last = block
    return plain.rstrip(b"\x00").decode("utf-8", errors="ignore")


class Codec:
    def __init__(self, dictionary: Dictionary) -> None:
        self.dictionary = dictionary
        attributes = list(dictionary.attributes.values())
        self._pyrad_decode = any(_pyrad_only(attr) for attr in attributes)
        self._readers: dict[Any, _Reader] = {}
        self._writers: dict[str, _Writer] = {}
        for attr in attributes:
            if attr.is_sub_attribute:
                continue
            vendor = dictionary.vendors.GetForward(attr.vendor) if attr.vendor else 0
            key = (vendor, attr.code) if vendor else attr.code
            if attr.name not in _NOT_ATTRS:
                self._readers[key] = _reader(attr)
            if attr.type in _ENCODERS and not _pyrad_only(attr) and key != MESSAGE_AUTHENTICATOR:
                self._writers[attr.name] = _Writer(
                    key,
                    attr.code,
                    vendor.to_bytes(4, "big") if vendor else b"",
                    MAX_VALUE + 2 - (6 if vendor else 0),
                    _ENCODERS[attr.type],
                    attr.values.forward,
                )
        self._password_key = dictionary.attrindex.forward.get("User-Password")

    def decode(self, data: bytes, secret: bytes, require_ma: bool) -> Request:
        """Decode and verify a request from a known NAS, or raise :class:`Malformed`.

        Verification: Accounting-Request authenticator (RFC 2866); Message-Authenticator whenever
        present, and required when ``require_ma`` or for Status-Server (RFC 5997).
        """
        code, ident, authenticator = check_structure(data)
        if code not in (ACCESS_REQUEST, STATUS_SERVER, ACCOUNTING_REQUEST):
            raise Malformed("unsupported-code")
        data = data[: int.from_bytes(data[2:4], "big")]  # what follows is padding
        raw, ma_at = _split(data)
        packet = self._pyrad_packet(data, secret, code) if self._pyrad_decode else None
        if code == ACCOUNTING_REQUEST:
            expected = _md5(data[:4] + ZERO_VECTOR + data[20:] + secret)
            if not hmac.compare_digest(expected, authenticator):
                raise Malformed("bad-authenticator")
        if ma_at:
            signed = data[:4] + _ma_vector(code, authenticator) + data[20 : ma_at + 2]
            signed += ZERO_VECTOR + data[ma_at + 18 :]
            if not hmac.compare_digest(
                hmac.digest(secret, signed, "md5"), data[ma_at + 2 : ma_at + 18]
            ):
                raise Malformed("bad-message-authenticator")
        elif require_ma or code == STATUS_SERVER:
            raise Malformed("missing-message-authenticator")
        attrs = self._attributes(raw) if packet is None else _pyrad_attributes(packet)
        # RFC 2866 has no User-Password in accounting, and its hiding uses the Request
        # Authenticator, which for accounting is a signature: one there is ignored.
        hidden = raw.get(self._password_key) if code != ACCOUNTING_REQUEST else None
        return Request(
            code=code,
            identifier=ident,
            authenticator=authenticator,
            attrs=attrs,
            message_authenticator=bool(ma_at),
            password=_reveal(secret, authenticator, hidden[0]) if hidden else None,
            chap="CHAP-Password" in attrs,
            secret=secret,
            proxy_state=tuple(raw.get(PROXY_STATE, ())),
            data=data,
        )

    def _attributes(self, raw: dict[Any, list[bytes]]) -> Attributes:
        fields: dict[str, tuple[Callable[[bytes], Any], list[bytes]]] = {}
        eager = []
        for key, values in raw.items():
            reader = self._readers.get(key)
            if reader is None:
                continue  # not in the dictionary, or not an attribute of Request.attrs
            if reader.size:
                for value in values:
                    if len(value) != reader.size:
                        raise Malformed("bad-attribute-value")
            elif not reader.lazy:
                eager.append(reader.name)
            fields[reader.name] = (reader.decode, values)
        attrs = Attributes(fields)
        try:
            for name in eager:
                attrs[name]
        except _DECODE_ERRORS:
            raise Malformed("bad-attribute-value") from None
        return attrs

    def _pyrad_packet(self, data: bytes, secret: bytes, code: int) -> rp.Packet:
        cls = rp.AcctPacket if code == ACCOUNTING_REQUEST else rp.AuthPacket
        try:
            return cls(packet=data, secret=secret, dict=self.dictionary)
        except (rp.PacketError, struct.error, ValueError):
            raise Malformed("undecodable") from None

    def encode(self, request: Request, reply: Reply) -> bytes:
        """Sign a reply to ``request``; Message-Authenticator always, and always first.

        The attributes follow in pyrad's order: the request's Proxy-State, then the reply's,
        repeated ones together where the first of them is.
        """
        groups: dict[Any, list[bytes]] = {}
        if request.proxy_state:
            groups[PROXY_STATE] = [
                bytes((PROXY_STATE, len(value) + 2)) + value for value in request.proxy_state
            ]
        writers = self._writers
        for name, value in reply.attrs:
            writer = writers.get(name)
            if writer is None:
                return self._encode_with_pyrad(request, reply)
            key, code, vendor, limit, encode, named = writer
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            for one in value if isinstance(value, (list, tuple)) else (value,):
                encoded = named[one] if one in named else encode(one)
                size = len(encoded) + 2
                if size > limit:
                    raise ValueError(f"{name} is too long ({size - 2} octets, {limit - 2} fit)")
                if vendor:
                    encoded = bytes((code, size)) + encoded
                    group.append(bytes((VENDOR_SPECIFIC, size + 6)) + vendor + encoded)
                else:
                    group.append(bytes((code, size)) + encoded)
        attrs = b"".join([b"".join(group) for group in groups.values()])
        header = struct.pack("!BBH", reply.code, request.identifier, 20 + 18 + len(attrs))
        vector = _ma_vector(reply.code, request.authenticator, request.code)
        ma = hmac.digest(request.secret, header + vector + _MA_ZEROED + attrs, "md5")
        body = bytes((MESSAGE_AUTHENTICATOR, 18)) + ma + attrs
        signed = _md5(header + request.authenticator + body + request.secret)
        return header + signed + body

    def _encode_with_pyrad(self, request: Request, reply: Reply) -> bytes:
        pkt = self._pyrad_packet(request.data, request.secret, request.code)
        out = pkt.CreateReply(message_authenticator=True)
        out.code = reply.code
        for name, value in reply.attrs:
            out.AddAttribute(name, value)
        return bytes(out.ReplyPacket())


def _pyrad_attributes(packet: rp.Packet) -> dict[str, list[Any]]:
    attrs: dict[str, list[Any]] = {}
    try:
        for key in packet.keys():
            if isinstance(key, str) and key not in _NOT_ATTRS:
                attrs[key] = packet[key]
    except _DECODE_ERRORS:
        raise Malformed("bad-attribute-value") from None
    return attrs
