"""The RADIUS codec: structural checks, verification on decode, signed replies, and fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as rp

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
    check_structure,
    load_dictionary,
)

DICT = load_dictionary()
CODEC = Codec(DICT)
SECRET = b"s3cret"
AUTH = bytes(range(16))


def raw(
    code: int = ACCESS_REQUEST,
    attrs: bytes = b"",
    length: int | None = None,
    ident: int = 7,
    pad: bytes = b"",
) -> bytes:
    """A hand-built packet; ``length`` overrides the Length field."""
    size = 20 + len(attrs) if length is None else length
    return struct.pack("!BBH", code, ident, size) + AUTH + attrs + pad


def attr(kind: int, value: bytes) -> bytes:
    return bytes([kind, 2 + len(value)]) + value


def vsa(vendor: int, sub: bytes) -> bytes:
    return attr(26, struct.pack("!I", vendor) + sub)


MA = attr(80, bytes(16))


def malformed(data: bytes) -> str:
    with pytest.raises(Malformed) as info:
        check_structure(data)
    return info.value.reason


# -- check_structure -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4, 19])
def test_short_packet(size: int) -> None:
    assert malformed(raw()[:size]) == "short-packet"


@pytest.mark.parametrize("length", [0, 4, 19])
def test_length_field_below_header(length: int) -> None:
    assert malformed(raw(length=length)) == "bad-length"


def test_length_field_beyond_the_data() -> None:
    assert malformed(raw(attrs=attr(1, b"alice"), length=20 + 7 + 1)) == "bad-length"


def test_length_field_beyond_the_maximum() -> None:
    body = attr(1, b"x" * 200) * 21  # 4242 octets of well-formed attributes
    assert len(body) + 20 > 4096
    assert malformed(raw(attrs=body)) == "bad-length"


def test_maximum_length_is_accepted() -> None:
    body = attr(1, b"x" * 253) * 15 + attr(1, b"x" * (4076 - 15 * 255 - 2))
    assert len(body) + 20 == 4096
    assert check_structure(raw(attrs=body))[0] == ACCESS_REQUEST


@pytest.mark.parametrize("attr_len", [0, 1])
def test_attribute_length_below_two(attr_len: int) -> None:
    data = raw(attrs=attr(1, b"alice") + bytes([4, attr_len]) + b"\x00" * 4)
    assert malformed(data) == "bad-attribute"


def test_attribute_running_past_the_end() -> None:
    body = attr(1, b"alice") + bytes([31, 10]) + b"123"
    assert malformed(raw(attrs=body)) == "bad-attribute"


def test_attribute_running_past_the_length_field_into_padding() -> None:
    # The value would be complete if the padding counted; it must not.
    body = attr(1, b"alice")
    data = raw(attrs=body[:-2], length=20 + len(body) - 2, pad=body[-2:])
    assert malformed(data) == "bad-attribute"


def test_lone_trailing_octet() -> None:
    assert malformed(raw(attrs=attr(1, b"alice") + b"\x01")) == "bad-attribute"


def test_vendor_sub_attribute_of_length_zero() -> None:
    # pyrad issue 234: older releases looped forever on this
    body = vsa(9, bytes([1, 0]) + b"abcd")
    assert malformed(raw(attrs=body)) == "bad-vendor-attribute"


@pytest.mark.parametrize(
    "sub",
    [
        bytes([1, 1]) + b"abcd",  # length 1
        bytes([1, 9]) + b"abc",  # runs past the VSA
        attr(1, b"ok") + b"\x01",  # a lone octet after a good sub-attribute
    ],
)
def test_vendor_sub_attribute_bad_lengths(sub: bytes) -> None:
    assert malformed(raw(attrs=vsa(9, sub))) == "bad-vendor-attribute"


def test_well_formed_vendor_attribute_is_accepted() -> None:
    body = vsa(9, attr(1, b"h323-conf-id=1") + attr(1, b"x=2"))
    check_structure(raw(attrs=body))


def test_two_message_authenticators() -> None:
    assert malformed(raw(attrs=MA + attr(1, b"alice") + MA)) == "bad-message-authenticator"


@pytest.mark.parametrize("size", [0, 15, 17])
def test_message_authenticator_of_wrong_length(size: int) -> None:
    assert malformed(raw(attrs=attr(80, bytes(size)))) == "bad-message-authenticator"


def test_padding_after_length_is_accepted() -> None:
    body = MA + attr(1, b"alice")
    code, ident, authenticator = check_structure(raw(attrs=body, ident=42, pad=b"\xff" * 9))
    assert (code, ident, authenticator) == (ACCESS_REQUEST, 42, AUTH)


# -- decode ----------------------------------------------------------------------------------


def access_request(
    secret: bytes = SECRET, ma: bool = True, password: str | None = "1234", **attrs: object
) -> rp.AuthPacket:
    pkt = rp.AuthPacket(code=rp.AccessRequest, secret=secret, dict=DICT)
    pkt["User-Name"] = "alice"
    if password is not None:
        pkt["User-Password"] = pkt.PwCrypt(password)
    pkt["Calling-Station-Id"] = "447700900123"
    pkt["Called-Station-Id"] = "442071234567"
    for key, value in attrs.items():
        pkt[key.replace("_", "-")] = value
    if ma:
        pkt.add_message_authenticator()
    return pkt


def accounting_request(secret: bytes = SECRET) -> rp.AcctPacket:
    pkt = rp.AcctPacket(code=rp.AccountingRequest, secret=secret, dict=DICT)
    pkt["Acct-Status-Type"] = "Start"
    pkt["Acct-Session-Id"] = "abc-1"
    pkt["User-Name"] = "alice"
    return pkt


def status_server(ma: bool) -> bytes:
    pkt = rp.AuthPacket(code=rp.StatusServer, secret=SECRET, dict=DICT)
    if ma:
        pkt.add_message_authenticator()
    return pkt.RequestPacket()


def reason_of(data: bytes, secret: bytes = SECRET, require_ma: bool = False) -> str:
    with pytest.raises(Malformed) as info:
        CODEC.decode(data, secret, require_ma)
    return info.value.reason


def test_access_request_decodes_the_password() -> None:
    pkt = access_request(password="123456789012345678")  # longer than one 16-octet block
    request = CODEC.decode(pkt.RequestPacket(), SECRET, require_ma=True)
    assert request.code == ACCESS_REQUEST
    assert request.identifier == pkt.id
    assert request.authenticator == pkt.authenticator
    assert request.password == "123456789012345678"
    assert request.message_authenticator is True
    assert request.first("User-Name") == "alice"
    assert request.first("Called-Station-Id") == "442071234567"
    assert "User-Password" not in request.attrs
    assert "Message-Authenticator" not in request.attrs
    assert request.chap is False


def test_access_request_without_password() -> None:
    request = CODEC.decode(access_request(password=None).RequestPacket(), SECRET, True)
    assert request.password is None


def test_wrong_secret_fails_the_message_authenticator() -> None:
    data = access_request().RequestPacket()
    assert reason_of(data, secret=b"other", require_ma=False) == "bad-message-authenticator"


def test_tampered_request_fails_the_message_authenticator() -> None:
    data = bytearray(access_request().RequestPacket())
    data[-1] ^= 0x01  # last octet of Called-Station-Id
    assert reason_of(bytes(data)) == "bad-message-authenticator"


def test_missing_message_authenticator_when_required() -> None:
    data = access_request(ma=False).RequestPacket()
    assert reason_of(data, require_ma=True) == "missing-message-authenticator"


def test_missing_message_authenticator_allowed_when_not_required() -> None:
    request = CODEC.decode(access_request(ma=False).RequestPacket(), SECRET, require_ma=False)
    assert request.message_authenticator is False
    assert request.password == "1234"


def test_accounting_request_verifies() -> None:
    request = CODEC.decode(accounting_request().RequestPacket(), SECRET, require_ma=False)
    assert request.code == ACCOUNTING_REQUEST
    assert request.first("Acct-Status-Type") == "Start"
    assert request.first("Acct-Session-Id") == "abc-1"


def test_accounting_request_with_wrong_secret_has_bad_authenticator() -> None:
    data = accounting_request(secret=b"other").RequestPacket()
    assert reason_of(data) == "bad-authenticator"


def test_accounting_request_tampered_has_bad_authenticator() -> None:
    data = bytearray(accounting_request().RequestPacket())
    data[-1] ^= 0x01
    assert reason_of(bytes(data)) == "bad-authenticator"


def test_status_server_without_message_authenticator() -> None:
    assert reason_of(status_server(ma=False)) == "missing-message-authenticator"


def test_status_server_with_message_authenticator() -> None:
    assert CODEC.decode(status_server(ma=True), SECRET, require_ma=False).code == STATUS_SERVER


@pytest.mark.parametrize("code", [ACCESS_ACCEPT, ACCESS_REJECT, ACCOUNTING_RESPONSE, 43, 255])
def test_unsupported_code(code: int) -> None:
    assert reason_of(raw(code=code, attrs=attr(1, b"x"))) == "unsupported-code"


def test_structure_is_checked_before_decoding() -> None:
    assert reason_of(raw(attrs=vsa(9, bytes([1, 0]) + b"abcd"))) == "bad-vendor-attribute"


def test_bad_attribute_value_is_malformed() -> None:
    # NAS-Port (5) is an integer: three octets cannot be one
    data = raw(attrs=attr(1, b"alice") + attr(5, b"\x00\x00\x01"))
    assert reason_of(data) == "bad-attribute-value"


def test_user_password_of_bad_length_is_malformed() -> None:
    data = raw(attrs=attr(1, b"alice") + attr(2, b"12345"))
    assert reason_of(data) == "bad-password"


# -- encode ----------------------------------------------------------------------------------


def test_reply_verifies_and_has_message_authenticator_first() -> None:
    pkt = access_request()
    request = CODEC.decode(pkt.RequestPacket(), SECRET, require_ma=True)
    data = CODEC.encode(
        request, Reply(ACCESS_ACCEPT, [("Session-Timeout", 4242), ("Class", b"token-1")])
    )
    reply = pkt.CreateReply(packet=data)
    assert pkt.VerifyReply(reply, data, enforce_ma=True)
    assert data[0] == ACCESS_ACCEPT
    assert data[1] == pkt.id
    assert data[20] == 80 and data[21] == 18
    assert reply["Session-Timeout"] == [4242]
    assert reply["Class"] == [b"token-1"]


def test_reject_verifies() -> None:
    pkt = access_request(ma=False)
    request = CODEC.decode(pkt.RequestPacket(), SECRET, require_ma=False)
    data = CODEC.encode(request, Reply(ACCESS_REJECT, [("Reply-Message", "Invalid PIN")]))
    reply = pkt.CreateReply(packet=data)
    assert pkt.VerifyReply(reply, data, enforce_ma=True)
    assert data[0] == ACCESS_REJECT and data[20] == 80
    assert reply["Reply-Message"] == ["Invalid PIN"]


def test_reply_echoes_proxy_state_in_order() -> None:
    pkt = access_request()
    pkt.AddAttribute("Proxy-State", b"first")
    pkt.AddAttribute("Proxy-State", b"second")
    request = CODEC.decode(pkt.RequestPacket(), SECRET, require_ma=True)
    data = CODEC.encode(request, Reply(ACCESS_ACCEPT, [("Session-Timeout", 60)]))
    reply = pkt.CreateReply(packet=data)
    assert pkt.VerifyReply(reply, data, enforce_ma=True)
    assert data[20] == 80
    assert reply["Proxy-State"] == [b"first", b"second"]


def test_accounting_response_verifies() -> None:
    pkt = accounting_request()
    pkt.AddAttribute("Proxy-State", b"ps")
    request = CODEC.decode(pkt.RequestPacket(), SECRET, require_ma=False)
    data = CODEC.encode(request, Reply(ACCOUNTING_RESPONSE))
    reply = pkt.CreateReply(packet=data)
    assert pkt.VerifyReply(reply, data, enforce_ma=True)
    assert data[0] == ACCOUNTING_RESPONSE and data[20] == 80
    assert reply["Proxy-State"] == [b"ps"]


def test_status_server_reply_verifies() -> None:
    pkt = rp.AuthPacket(code=rp.StatusServer, secret=SECRET, dict=DICT)
    pkt.add_message_authenticator()
    request = CODEC.decode(pkt.RequestPacket(), SECRET, require_ma=False)
    data = CODEC.encode(request, Reply(ACCESS_ACCEPT, [("Reply-Message", "ok")]))
    reply = pkt.CreateReply(packet=data)
    assert pkt.VerifyReply(reply, data, enforce_ma=True)
    assert data[20] == 80


# -- fuzzing ---------------------------------------------------------------------------------


def decode_or_malformed(data: bytes, secret: bytes, require_ma: bool) -> None:
    try:
        check_structure(data)
    except Malformed:
        pass
    try:
        CODEC.decode(data, secret, require_ma)
    except Malformed:
        pass


SEEDS = [
    access_request().RequestPacket(),
    access_request(ma=False, password="0000111122223333444455556666").RequestPacket(),
    accounting_request().RequestPacket(),
    status_server(ma=True),
    raw(attrs=MA + vsa(9, attr(1, b"h323-conf-id=ABC") + attr(25, b"h323-setup-time=x"))),
]

FUZZ = settings(
    max_examples=300,
    deadline=1000,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


@FUZZ
@given(
    data=st.binary(max_size=600), secret=st.sampled_from([SECRET, b"x"]), require_ma=st.booleans()
)
def test_fuzz_random_bytes(data: bytes, secret: bytes, require_ma: bool) -> None:
    decode_or_malformed(data, secret, require_ma)


@FUZZ
@given(
    code=st.sampled_from([ACCESS_REQUEST, ACCOUNTING_REQUEST, STATUS_SERVER]),
    attrs=st.lists(
        st.tuples(
            st.one_of(
                st.integers(0, 255),
                st.sampled_from([1, 2, 4, 5, 26, 30, 31, 33, 40, 44, 55, 61, 80]),
            ),
            st.binary(max_size=40),
        ),
        max_size=12,
    ),
    pad=st.binary(max_size=8),
    require_ma=st.booleans(),
)
def test_fuzz_well_framed_attributes(
    code: int, attrs: list[tuple[int, bytes]], pad: bytes, require_ma: bool
) -> None:
    # Correct framing gets past check_structure, so pyrad's value decoding is exercised.
    body = b"".join(attr(kind, value) for kind, value in attrs)
    decode_or_malformed(raw(code=code, attrs=body, pad=pad), SECRET, require_ma)


@FUZZ
@given(
    cisco=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=30)), max_size=6),
    require_ma=st.booleans(),
)
def test_fuzz_vendor_attributes(cisco: list[tuple[int, bytes]], require_ma: bool) -> None:
    sub = b"".join(attr(kind, value) for kind, value in cisco)
    decode_or_malformed(raw(attrs=attr(1, b"alice") + vsa(9, sub)), SECRET, require_ma)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 2, 0xFF, 0x7F, 80, 26, 18]))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
    if draw(st.booleans()) and len(data) >= 4:
        struct.pack_into("!H", data, 2, len(data))  # keep the Length field consistent
    return bytes(data)


@FUZZ
@given(data=mutated(), secret=st.sampled_from([SECRET, b"x"]), require_ma=st.booleans())
def test_fuzz_mutated_packets(data: bytes, secret: bytes, require_ma: bool) -> None:
    decode_or_malformed(data, secret, require_ma)
