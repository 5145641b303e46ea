"""The codec against pyrad's packets: the same reply bytes, the same reading of every request,
and replies that pyrad and FreeRADIUS's radclient accept.

The reference is pyrad's own packet path: a packet decoded with ``AuthPacket``/``AcctPacket``,
read by name; a reply made with ``CreateReply``, ``AddAttribute`` and ``ReplyPacket``.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as rp
from pyrad.dictionary import Dictionary
from support import radclient
from test_codec import mutated

import dictionaries
from billing.calls import Accepted, Rejected
from billing.domain import RejectReason
from radiusd import translate
from radiusd.codec import (
    ACCESS_ACCEPT,
    ACCESS_REJECT,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    STATUS_SERVER,
    Codec,
    Malformed,
    Reply,
    Request,
    check_structure,
    load_dictionary,
)
from radiusd.profiles import PROFILES

DICT = load_dictionary()
CODEC = Codec(DICT)
SECRET = b"s3cret"
AUTHENTICATOR = bytes(range(100, 116))

# -- the reference ---------------------------------------------------------------------------


def pyrad_packet(data: bytes, secret: bytes = SECRET, dictionary: Dictionary = DICT) -> rp.Packet:
    cls = rp.AcctPacket if data[0] == ACCOUNTING_REQUEST else rp.AuthPacket
    return cls(packet=data, secret=secret, dict=dictionary)


def pyrad_encode(data: bytes, reply: Reply, dictionary: Dictionary = DICT) -> bytes:
    out = pyrad_packet(data, dictionary=dictionary).CreateReply(message_authenticator=True)
    out.code = reply.code
    for name, value in reply.attrs:
        out.AddAttribute(name, value)
    return bytes(out.ReplyPacket())


def pyrad_decode(
    data: bytes, secret: bytes, require_ma: bool, dictionary: Dictionary = DICT
) -> Any:
    """What reading the request through pyrad's packet gives, or the Malformed reason."""
    try:
        code = check_structure(data)[0]
    except Malformed as exc:
        return exc.reason
    if code not in (ACCESS_REQUEST, ACCOUNTING_REQUEST, STATUS_SERVER):
        return "unsupported-code"
    try:
        pkt = pyrad_packet(data, secret, dictionary)
    except (rp.PacketError, struct.error, ValueError):
        return "undecodable"
    if code == ACCOUNTING_REQUEST and not pkt.VerifyAcctRequest():
        return "bad-authenticator"
    if pkt.message_authenticator:
        if not pkt.verify_message_authenticator():
            return "bad-message-authenticator"
    elif require_ma or code == STATUS_SERVER:
        return "missing-message-authenticator"
    attrs = []
    try:
        for key in pkt.keys():
            if isinstance(key, str) and key not in ("User-Password", "Message-Authenticator"):
                attrs.append((key, pkt[key]))
    except (KeyError, ValueError, UnicodeDecodeError, struct.error, IndexError):
        return "bad-attribute-value"
    password = None
    if "User-Password" in pkt and code != ACCOUNTING_REQUEST:  # AcctPacket has no PwDecrypt
        try:
            password = pkt.PwDecrypt(pkt.get(2)[0])
        except rp.PacketError:
            return "bad-password"
    chap = "CHAP-Password" in dict(attrs)
    return (
        pkt.code,
        pkt.id,
        pkt.authenticator,
        attrs,
        bool(pkt.message_authenticator),
        password,
        chap,
    )


def codec_decode(data: bytes, secret: bytes, require_ma: bool, codec: Codec = CODEC) -> Any:
    try:
        r = codec.decode(data, secret, require_ma)
    except Malformed as exc:
        return exc.reason
    return (
        r.code,
        r.identifier,
        r.authenticator,
        list(r.attrs.items()),
        r.message_authenticator,
        r.password,
        r.chap,
    )


def outcome(fn: Callable[[], bytes]) -> bytes | type[BaseException]:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the kind of failure is what is compared
        return type(exc)


def same_reply(
    data: bytes, reply: Reply, codec: Codec = CODEC, dictionary: Dictionary = DICT
) -> bytes:
    """The codec's reply, after checking it is pyrad's, byte for byte, and that pyrad accepts it."""
    request = codec.decode(data, SECRET, require_ma=False)
    ours = codec.encode(request, reply)
    assert ours == pyrad_encode(data, reply, dictionary)
    assert verifies(data, reply, ours, dictionary)
    return ours


def verifies(data: bytes, reply: Reply, raw: bytes, dictionary: Dictionary = DICT) -> bool:
    """pyrad's check of a reply. One to an Access-Request or Status-Server that adds a Proxy-State
    the request did not carry is refused (the BlastRADIUS countermeasure) however it is signed."""
    pkt = pyrad_packet(data, dictionary=dictionary)
    valid = pkt.VerifyReply(pkt.CreateReply(packet=raw), raw, enforce_ma=True)
    added = [value for name, value in reply.attrs if name == "Proxy-State" and value != []]
    return valid != bool(data[0] != ACCOUNTING_REQUEST and added)


# -- requests --------------------------------------------------------------------------------


def access_request(ma: bool = True, proxy_state: tuple[bytes, ...] = ()) -> bytes:
    pkt = rp.AuthPacket(code=rp.AccessRequest, id=9, secret=SECRET, dict=DICT)
    pkt["User-Name"] = "123456789012"
    pkt["User-Password"] = pkt.PwCrypt("123456789012")
    pkt["Calling-Station-Id"] = "447700900123"
    for value in proxy_state:
        pkt.AddAttribute("Proxy-State", value)
    if ma:
        pkt.add_message_authenticator()
    return pkt.RequestPacket()


def accounting_request(proxy_state: tuple[bytes, ...] = ()) -> bytes:
    pkt = rp.AcctPacket(code=rp.AccountingRequest, id=10, secret=SECRET, dict=DICT)
    pkt["Acct-Status-Type"] = "Stop"
    pkt["Acct-Session-Id"] = "abc-1"
    pkt["Class"] = b"paaa:token"
    for value in proxy_state:
        pkt.AddAttribute("Proxy-State", value)
    return pkt.RequestPacket()


def status_server() -> bytes:
    pkt = rp.AuthPacket(code=rp.StatusServer, id=11, secret=SECRET, dict=DICT)
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


REQUESTS = {
    "access": access_request(),
    "access-no-ma": access_request(ma=False),
    "access-proxied": access_request(proxy_state=(b"first", b"\x00second")),
    "accounting": accounting_request(),
    "accounting-proxied": accounting_request(proxy_state=(b"ps",)),
    "status": status_server(),
}

ACCEPTED = Accepted("tok-0123456789abcdef", "S1", 4242, Decimal("12.3456"), "GBP", "pin")


def replies() -> Iterator[tuple[str, Reply]]:
    for profile in PROFILES.values():
        for places, interim in ((2, 0), (4, 300)):
            yield f"{profile.name}-accept", translate.auth_reply(ACCEPTED, profile, places, interim)
        for reason in RejectReason:
            yield f"{profile.name}-{reason}", translate.auth_reply(Rejected(reason), profile, 2)
    yield "non-ascii", Reply(ACCESS_REJECT, [("Reply-Message", "Guthaben erschöpft — ¥0 ✓")])
    yield "class-octets", Reply(ACCESS_ACCEPT, [("Class", bytes(range(256))[:253])])
    yield (
        "integers",
        Reply(
            ACCESS_ACCEPT,
            [("Session-Timeout", 0), ("Idle-Timeout", 2**32 - 1), ("Acct-Interim-Interval", 60)],
        ),
    )
    yield (
        "named-values",
        Reply(
            ACCESS_ACCEPT,
            [("Service-Type", "Framed-User"), ("Termination-Action", "RADIUS-Request")],
        ),
    )
    yield (
        "ipaddr-date",
        Reply(
            ACCESS_ACCEPT, [("Framed-IP-Address", "192.0.2.7"), ("Event-Timestamp", 1_700_000_000)]
        ),
    )
    yield (
        "several-values",
        Reply(ACCESS_ACCEPT, [("Reply-Message", ["one", "two"]), ("Class", (b"a", b"b"))]),
    )
    yield (
        "repeated-apart",
        Reply(
            ACCESS_ACCEPT,
            [
                ("Reply-Message", "a"),
                ("Class", b"x"),
                ("h323-return-code", "h323-return-code=0"),
                ("Reply-Message", "b"),
                ("Class", b"y"),
            ],
        ),
    )
    yield "reply-proxy-state", Reply(ACCESS_ACCEPT, [("Proxy-State", b"added")])
    yield "vendor-specific-raw", Reply(ACCESS_ACCEPT, [("Vendor-Specific", b"\x00\x00\x00\x09ab")])
    yield "empty", Reply(ACCESS_ACCEPT)
    yield "octets-hex", Reply(ACCESS_ACCEPT, [("Class", b"0x6869"), ("State", "0x6869")])


CASES = [
    (f"{req}/{name}", data, reply) for req, data in REQUESTS.items() for name, reply in replies()
]


# -- encode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,reply", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_reply_is_pyrads_byte_for_byte(data: bytes, reply: Reply) -> None:
    ours = same_reply(data, reply)
    assert ours[20:22] == bytes((80, 18))  # Message-Authenticator first


def test_accounting_response_is_signed_with_a_zero_vector_status_with_the_request() -> None:
    # RFC 5997 section 3, as pyrad and FreeRADIUS do
    for data, vector in (
        (REQUESTS["accounting"], bytes(16)),
        (REQUESTS["status"], REQUESTS["status"][4:20]),
    ):
        reply = same_reply(data, Reply(ACCOUNTING_RESPONSE))
        signed = reply[:4] + vector + reply[20:22] + bytes(16) + reply[38:]
        assert hmac.digest(SECRET, signed, "md5") == reply[22:38]


def test_repeated_attributes_are_grouped_where_the_first_is() -> None:
    reply = same_reply(
        REQUESTS["access-proxied"],
        Reply(
            ACCESS_ACCEPT,
            [
                ("Reply-Message", "a"),
                ("Class", b"x"),
                ("Reply-Message", "b"),
                ("Proxy-State", b"z"),
            ],
        ),
    )
    assert reply[38:] == (b"\x21\x07first\x21\x09\x00second\x21\x03z\x12\x03a\x12\x03b\x19\x03x")


def test_cisco_vsa_layout() -> None:
    reply = same_reply(REQUESTS["access"], Reply(ACCESS_ACCEPT, [("h323-credit-time", "x=1")]))
    assert reply[38:] == bytes((26, 11, 0, 0, 0, 9, 102, 5)) + b"x=1"


@pytest.mark.parametrize(
    "name,fits",
    [("Reply-Message", 253), ("Class", 253), ("h323-credit-amount", 247), ("Cisco-AVPair", 247)],
)
def test_value_length_limits_are_pyrads(name: str, fits: int) -> None:
    data = REQUESTS["access"]
    request = CODEC.decode(data, SECRET, require_ma=True)
    for value in ("x" * fits, b"y" * fits):
        same_reply(data, Reply(ACCESS_ACCEPT, [(name, value)]))
    for value in ("x" * (fits + 1), b"y" * (fits + 1), "é" * (fits // 2 + 1)):
        reply = Reply(ACCESS_ACCEPT, [(name, value)])
        with pytest.raises(ValueError):
            CODEC.encode(request, reply)
        with pytest.raises(ValueError):
            pyrad_encode(data, reply)


@pytest.mark.parametrize(
    "attrs,error",
    [
        ([("No-Such-Attribute", "x")], KeyError),
        ([("Session-Timeout", 2**32)], ValueError),
        ([("Session-Timeout", "soon")], TypeError),
        ([("Framed-IP-Address", "2001:db8::1")], ValueError),
        ([("Reply-Message", 42)], TypeError),
    ],
)
def test_bad_reply_values_fail_as_in_pyrad(attrs: list[tuple[str, Any]], error: type) -> None:
    data = REQUESTS["access"]
    request = CODEC.decode(data, SECRET, require_ma=True)
    with pytest.raises(error):
        CODEC.encode(request, Reply(ACCESS_ACCEPT, attrs))
    with pytest.raises(error):
        pyrad_encode(data, Reply(ACCESS_ACCEPT, attrs))


WRITABLE = {
    "Session-Timeout": st.integers(0, 2**32 + 1),
    "Event-Timestamp": st.integers(-1, 2**32),
    "Service-Type": st.sampled_from(["Framed-User", "Login-User", 7]),
    "Class": st.binary(max_size=260),
    "State": st.one_of(st.binary(max_size=30), st.text(max_size=30)),
    "Reply-Message": st.text(max_size=140),
    "Framed-IP-Address": st.ip_addresses(v=4).map(str),
    "Proxy-State": st.binary(max_size=20),
    "h323-credit-time": st.text(max_size=130),
    "Cisco-AVPair": st.binary(max_size=250),
}


@st.composite
def reply_attrs(draw: st.DrawFn) -> list[tuple[str, Any]]:
    attrs = []
    for name in draw(st.lists(st.sampled_from(sorted(WRITABLE)), max_size=8)):
        value = WRITABLE[name]
        attrs.append((name, draw(st.one_of(value, st.lists(value, max_size=3)))))
    return attrs


@settings(max_examples=300, deadline=None)
@given(
    request=st.sampled_from(sorted(REQUESTS)),
    code=st.sampled_from([2, 3, 5, 11]),
    attrs=reply_attrs(),
)
def test_fuzz_replies_match_pyrad(request: str, code: int, attrs: list[tuple[str, Any]]) -> None:
    data = REQUESTS[request]
    reply = Reply(code, attrs)
    decoded = CODEC.decode(data, SECRET, require_ma=False)
    ours = outcome(lambda: CODEC.encode(decoded, reply))
    assert ours == outcome(lambda: pyrad_encode(data, reply))
    if isinstance(ours, bytes):
        assert verifies(data, reply, ours)


# -- decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_requests_read_as_pyrad_reads_them(name: str) -> None:
    decoded = codec_decode(REQUESTS[name], SECRET, False)
    assert decoded == pyrad_decode(REQUESTS[name], SECRET, False)
    assert isinstance(decoded, tuple)  # not malformed


def test_attributes_decode_on_reading_and_act_as_a_mapping() -> None:
    request = CODEC.decode(REQUESTS["accounting"], SECRET, require_ma=False)
    assert list(request.attrs) == ["Acct-Status-Type", "Acct-Session-Id", "Class"]
    assert len(request.attrs) == 3 and "Class" in request.attrs and "State" not in request.attrs
    assert request.attrs["Acct-Status-Type"] == ["Stop"]
    assert request.attrs["Acct-Status-Type"] is request.attrs["Acct-Status-Type"]
    assert request.attrs.get("State") is None and request.attrs.get("State", []) == []
    assert request.first("Class") == b"paaa:token"
    assert dict(request.attrs) == {
        "Acct-Status-Type": ["Stop"],
        "Acct-Session-Id": ["abc-1"],
        "Class": [b"paaa:token"],
    }
    with pytest.raises(KeyError):
        request.attrs["State"]


def test_the_password_is_not_in_the_representation() -> None:
    request = CODEC.decode(REQUESTS["access"], SECRET, require_ma=True)
    assert request.password == "123456789012"
    assert "123456789012" not in repr(request).replace("'User-Name': ['123456789012']", "")
    assert "s3cret" not in repr(request)


@pytest.mark.parametrize("kind,value", [(4, b"\x01\x02\x03"), (55, b"\x00" * 5), (40, b"")])
def test_undecodable_values_nobody_reads_are_still_malformed(kind: int, value: bytes) -> None:
    # NAS-IP-Address, Event-Timestamp, Acct-Status-Type of the wrong length
    data = struct.pack("!BBH", ACCESS_REQUEST, 1, 20 + 2 + len(value)) + AUTHENTICATOR
    data += bytes((kind, 2 + len(value))) + value
    assert codec_decode(data, SECRET, False) == "bad-attribute-value"
    assert pyrad_decode(data, SECRET, False) == "bad-attribute-value"


def signed(
    code: int, attrs: bytes, ma_at: int | None, secret: bytes = SECRET, ident: int = 5
) -> bytes:
    """A request with a Message-Authenticator inserted at ``ma_at`` (octets into ``attrs``)
    and, for an Accounting-Request, the Request Authenticator, both as RFC 2869 and 2866 say."""
    if ma_at is not None:
        attrs = attrs[:ma_at] + bytes((80, 18)) + bytes(16) + attrs[ma_at:]
    header = struct.pack("!BBH", code, ident, 20 + len(attrs))
    vector = bytes(16) if code == ACCOUNTING_REQUEST else AUTHENTICATOR
    if ma_at is not None:
        mac = hmac.digest(secret, header + vector + attrs, "md5")
        attrs = attrs[: ma_at + 2] + mac + attrs[ma_at + 18 :]
    if code == ACCOUNTING_REQUEST:
        vector = hashlib.md5(header + bytes(16) + attrs + secret).digest()
    return header + vector + attrs


def attribute(kind: int, value: bytes) -> bytes:
    return bytes((kind, 2 + len(value))) + value


VALUE = st.one_of(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=16, max_size=16),
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
)
KINDS = st.sampled_from([1, 2, 3, 4, 5, 8, 25, 30, 31, 33, 40, 44, 46, 49, 55, 60, 61, 87, 200])
VENDOR_ATTR = st.builds(
    lambda vendor, subs: attribute(
        26, struct.pack("!I", vendor) + b"".join(attribute(kind, value) for kind, value in subs)
    ),
    st.sampled_from([9, 311]),
    st.lists(st.tuples(st.sampled_from([1, 24, 26, 101, 250]), VALUE), min_size=1, max_size=3),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    code = draw(st.sampled_from([ACCESS_REQUEST, ACCOUNTING_REQUEST, STATUS_SERVER]))
    parts = draw(
        st.lists(
            st.one_of(
                st.builds(attribute, KINDS, VALUE),
                VENDOR_ATTR,
                st.binary(max_size=5).map(lambda v: attribute(26, v)),
            ),
            max_size=10,
        )
    )
    ma_at = draw(st.one_of(st.none(), st.integers(0, len(parts))))
    position = None if ma_at is None else len(b"".join(parts[:ma_at]))
    secret = draw(st.sampled_from([SECRET, b"other"]))
    return signed(code, b"".join(parts), position, secret), draw(st.booleans())


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(case=requests())
def test_fuzz_signed_requests_read_as_pyrad_reads_them(case: tuple[bytes, bool]) -> None:
    data, require_ma = case
    assert codec_decode(data, SECRET, require_ma) == pyrad_decode(data, SECRET, require_ma)


@FUZZ
@given(data=mutated(), secret=st.sampled_from([SECRET, b"x"]), require_ma=st.booleans())
def test_fuzz_mutated_requests_read_as_pyrad_reads_them(
    data: bytes, secret: bytes, require_ma: bool
) -> None:
    assert codec_decode(data, secret, require_ma) == pyrad_decode(data, secret, require_ma)


def test_signed_requests_of_the_fuzzer_verify() -> None:
    # the generator above signs as a NAS does: its requests are not all rejected
    body = attribute(1, b"alice") + attribute(2, bytes(16)) + attribute(5, bytes(4))
    for code in (ACCESS_REQUEST, ACCOUNTING_REQUEST, STATUS_SERVER):
        for ma_at in (None, 0, len(body)):
            expected = (
                "missing-message-authenticator"
                if (code == STATUS_SERVER and ma_at is None)
                else code
            )
            result = codec_decode(signed(code, body, ma_at), SECRET, False)
            assert (result if isinstance(result, str) else result[0]) == expected


def test_user_password_in_accounting_is_ignored() -> None:
    data = signed(
        ACCOUNTING_REQUEST, attribute(40, bytes((0, 0, 0, 2))) + attribute(2, b"12345"), None
    )
    request = CODEC.decode(data, SECRET, require_ma=False)
    assert request.password is None
    assert dict(request.attrs) == {"Acct-Status-Type": ["Stop"]}


# -- what the codec leaves to pyrad ----------------------------------------------------------


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Codec, Dictionary]:
    """The shipped dictionary plus RFC 2868 tunnel attributes (tagged, salt-encrypted)."""
    path = tmp_path_factory.mktemp("tagged") / "dictionary"
    path.write_text(
        f"$INCLUDE {dictionaries.path()}\n"
        "ATTRIBUTE\tTunnel-Type\t\t64\tinteger\thas_tag\n"
        "ATTRIBUTE\tTunnel-Medium-Type\t65\tinteger\thas_tag\n"
        "ATTRIBUTE\tTunnel-Password\t\t69\tstring\thas_tag,encrypt=2\n"
        "VALUE\tTunnel-Type\t\tL2TP\t\t3\n"
    )
    dictionary = Dictionary(str(path))
    return Codec(dictionary), dictionary


def test_tagged_attributes_are_written_by_pyrad(tagged: tuple[Codec, Dictionary]) -> None:
    codec, dictionary = tagged
    data = access_request(proxy_state=(b"ps",))
    reply = Reply(
        ACCESS_ACCEPT, [("Session-Timeout", 60), ("Tunnel-Type:1", "L2TP"), ("Reply-Message", "ok")]
    )
    ours = same_reply(data, reply, codec, dictionary)
    assert bytes((64, 6, 1, 0, 0, 3)) in ours


def test_dictionary_with_tagged_attributes_reads_as_pyrad(
    tagged: tuple[Codec, Dictionary],
) -> None:
    codec, dictionary = tagged
    body = attribute(1, b"alice") + attribute(64, b"\x01\x00\x00\x03") + attribute(5, bytes(3))
    for attrs, expected in ((body[:-5], ("User-Name", ["alice"])), (body, "bad-attribute-value")):
        data = signed(ACCESS_REQUEST, attrs, 0)
        ours = codec_decode(data, SECRET, True, codec)
        assert ours == pyrad_decode(data, SECRET, True, dictionary)
        assert (ours if isinstance(ours, str) else ours[3][0]) == expected


# -- FreeRADIUS ------------------------------------------------------------------------------


@pytest.fixture
def responder() -> Iterator[tuple[int, list[Reply]]]:
    """A UDP port answering each request with the next reply of the list, through the codec."""
    if shutil.which("radclient") is None:
        pytest.skip("radclient (freeradius-utils) is not installed")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    queue: list[Reply] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
            except TimeoutError:
                continue
            request: Request = CODEC.decode(data, SECRET, require_ma=False)
            sock.sendto(CODEC.encode(request, queue.pop(0)), addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], queue
    stop.set()
    thread.join()
    sock.close()


def test_radclient_accepts_the_replies(responder: tuple[int, list[Reply]]) -> None:
    port, queue = responder
    access = 'User-Name = "123456789012"\nUser-Password = "123456789012"\n'
    accept = translate.auth_reply(ACCEPTED, PROFILES["cisco"], 2, 300)
    reject = Reply(
        ACCESS_REJECT,
        [("Reply-Message", "Guthaben erschöpft"), ("h323-return-code", "h323-return-code=4")],
    )
    exchanges = [
        (
            "auth",
            access + "Proxy-State = 0x6869\n",
            accept,
            [
                "Received Access-Accept",
                "Session-Timeout = 4242",
                "Acct-Interim-Interval = 300",
                'h323-credit-amount = "h323-credit-amount=12.35"',
                "Proxy-State = 0x6869",
            ],
        ),
        (
            "auth",
            access + "Response-Packet-Type = Access-Reject\n",
            reject,
            [
                "Received Access-Reject",
                'Reply-Message = "Guthaben erschöpft"',
                'h323-return-code = "h323-return-code=4"',
            ],
        ),
        (
            "acct",
            'Acct-Status-Type = Stop\nAcct-Session-Id = "x"\nClass = 0x7061\n',
            Reply(ACCOUNTING_RESPONSE),
            ["Received Accounting-Response"],
        ),
        (
            "status",
            "Message-Authenticator = 0x00\n",
            Reply(ACCESS_ACCEPT, [("Reply-Message", "up")]),
            ['Reply-Message = "up"'],
        ),
    ]
    for kind, attrs, reply, expected in exchanges:
        queue.append(reply)
        out = radclient(port, kind, attrs)
        assert out.returncode == 0, out.stdout + out.stderr
        for line in expected:
            assert line in out.stdout, out.stdout
