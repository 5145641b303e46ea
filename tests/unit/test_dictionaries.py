"""Tests of the RADIUS dictionaries in the ``dictionaries`` package."""

import logging
import time

import pytest
from pyrad import packet
from pyrad.dictionary import Dictionary

import dictionaries

MASTER = dictionaries.path()
FOLDER = MASTER.parent
DICTIONARY_FILES = sorted(
    p for p in FOLDER.iterdir() if p.is_file() and p.name.startswith("dictionary")
)

CISCO = 9

# (name, key in the packet: the code, or (vendor, code), type)
EXPECTED_ATTRIBUTES = [
    # RFC 2865
    ("User-Name", 1, "string"),
    ("User-Password", 2, "string"),
    ("CHAP-Password", 3, "octets"),
    ("NAS-IP-Address", 4, "ipaddr"),
    ("NAS-Port", 5, "integer"),
    ("Service-Type", 6, "integer"),
    ("Framed-Protocol", 7, "integer"),
    ("Reply-Message", 18, "string"),
    ("State", 24, "octets"),
    ("Class", 25, "octets"),
    ("Vendor-Specific", 26, "octets"),
    ("Session-Timeout", 27, "integer"),
    ("Idle-Timeout", 28, "integer"),
    ("Called-Station-Id", 30, "string"),
    ("Calling-Station-Id", 31, "string"),
    ("NAS-Identifier", 32, "string"),
    ("Proxy-State", 33, "octets"),
    ("CHAP-Challenge", 60, "octets"),
    ("NAS-Port-Type", 61, "integer"),
    ("Port-Limit", 62, "integer"),
    ("Login-LAT-Port", 63, "string"),
    # RFC 2866
    ("Acct-Status-Type", 40, "integer"),
    ("Acct-Delay-Time", 41, "integer"),
    ("Acct-Input-Octets", 42, "integer"),
    ("Acct-Output-Octets", 43, "integer"),
    ("Acct-Session-Id", 44, "string"),
    ("Acct-Authentic", 45, "integer"),
    ("Acct-Session-Time", 46, "integer"),
    ("Acct-Input-Packets", 47, "integer"),
    ("Acct-Output-Packets", 48, "integer"),
    ("Acct-Terminate-Cause", 49, "integer"),
    ("Acct-Multi-Session-Id", 50, "string"),
    ("Acct-Link-Count", 51, "integer"),
    # RFC 2869
    ("Acct-Input-Gigawords", 52, "integer"),
    ("Acct-Output-Gigawords", 53, "integer"),
    ("Event-Timestamp", 55, "date"),
    ("ARAP-Password", 70, "octets"),
    ("Connect-Info", 77, "string"),
    ("EAP-Message", 79, "octets"),
    ("Message-Authenticator", 80, "octets"),
    ("ARAP-Challenge-Response", 84, "octets"),
    ("Acct-Interim-Interval", 85, "integer"),
    ("NAS-Port-Id", 87, "string"),
    ("Framed-Pool", 88, "string"),
    # RFC 5176
    ("Error-Cause", 101, "integer"),
    # Cisco
    ("Cisco-AVPair", (CISCO, 1), "string"),
    ("Cisco-NAS-Port", (CISCO, 2), "string"),
    ("h323-remote-address", (CISCO, 23), "string"),
    ("h323-conf-id", (CISCO, 24), "string"),
    ("h323-setup-time", (CISCO, 25), "string"),
    ("h323-call-origin", (CISCO, 26), "string"),
    ("h323-call-type", (CISCO, 27), "string"),
    ("h323-connect-time", (CISCO, 28), "string"),
    ("h323-disconnect-time", (CISCO, 29), "string"),
    ("h323-disconnect-cause", (CISCO, 30), "string"),
    ("h323-voice-quality", (CISCO, 31), "string"),
    ("h323-gw-id", (CISCO, 33), "string"),
    ("h323-incoming-conf-id", (CISCO, 35), "string"),
    ("h323-credit-amount", (CISCO, 101), "string"),
    ("h323-credit-time", (CISCO, 102), "string"),
    ("h323-return-code", (CISCO, 103), "string"),
    ("h323-prompt-id", (CISCO, 104), "string"),
    ("h323-time-and-day", (CISCO, 105), "string"),
    ("h323-redirect-number", (CISCO, 106), "string"),
    ("h323-preferred-lang", (CISCO, 107), "string"),
    ("h323-redirect-ip-address", (CISCO, 108), "string"),
    ("h323-billing-model", (CISCO, 109), "string"),
    ("h323-currency", (CISCO, 110), "string"),
]

# (attribute, value name, number)
EXPECTED_VALUES = [
    ("Service-Type", "Login-User", 1),
    ("Service-Type", "Authenticate-Only", 8),
    ("Service-Type", "Authorize-Only", 17),
    ("Framed-Protocol", "PPP", 1),
    ("NAS-Port-Type", "Async", 0),
    ("NAS-Port-Type", "Virtual", 5),
    ("Acct-Status-Type", "Start", 1),
    ("Acct-Status-Type", "Stop", 2),
    ("Acct-Status-Type", "Interim-Update", 3),
    ("Acct-Status-Type", "Accounting-On", 7),
    ("Acct-Status-Type", "Accounting-Off", 8),
    ("Acct-Terminate-Cause", "User-Request", 1),
    ("Acct-Terminate-Cause", "Session-Timeout", 5),
    ("Acct-Terminate-Cause", "Host-Request", 18),
    ("Error-Cause", "Residual-Session-Context-Removed", 201),
    ("Error-Cause", "Session-Context-Not-Found", 503),
    ("Error-Cause", "Session-Context-Not-Removable", 504),
    ("Error-Cause", "Resources-Unavailable", 506),
    ("Error-Cause", "Multiple-Session-Selection-Unsupported", 508),
]


@pytest.fixture(scope="module")
def master():
    return Dictionary(str(MASTER))


def test_path_is_the_master_file():
    assert MASTER.is_absolute()
    assert MASTER.name == "dictionary"
    assert MASTER.is_file()


def test_all_files_are_found():
    names = {p.name for p in DICTIONARY_FILES}
    assert {
        "dictionary",
        "dictionary.rfc2865",
        "dictionary.rfc2866",
        "dictionary.rfc2869",
        "dictionary.rfc5176",
        "dictionary.cisco",
    } <= names


@pytest.mark.parametrize("dict_file", DICTIONARY_FILES, ids=lambda p: p.name)
def test_file_loads_alone(dict_file):
    d = Dictionary(str(dict_file))
    assert len(d) > 0
    # nothing pyrad cannot encode
    assert d.skipped_attributes == set()


def test_master_includes_every_file():
    included = {
        line.split()[1] for line in MASTER.read_text().splitlines() if line.startswith("$INCLUDE")
    }
    others = {p.name for p in DICTIONARY_FILES if p != MASTER}
    assert included == others


def test_master_loads_without_warnings(caplog):
    with caplog.at_level(logging.WARNING, logger="pyrad"):
        d = Dictionary(str(MASTER))
    assert [r.getMessage() for r in caplog.records] == []
    assert d.skipped_attributes == set()


@pytest.mark.parametrize(
    "name, key, datatype", EXPECTED_ATTRIBUTES, ids=[a[0] for a in EXPECTED_ATTRIBUTES]
)
def test_master_defines_attribute(master, name, key, datatype):
    assert name in master
    assert master.attrindex.GetForward(name) == key
    assert master.attrindex.GetBackward(key) == name
    assert master[name].type == datatype
    if isinstance(key, tuple):
        assert master[name].vendor == "Cisco"


def test_cisco_vendor(master):
    assert master.vendors.GetForward("Cisco") == CISCO


def test_user_password_is_encrypted(master):
    assert master["User-Password"].encrypt == 1


def test_no_duplicate_codes(master):
    keys = [master.attrindex.GetForward(name) for name in master.attributes]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("attr, name, number", EXPECTED_VALUES)
def test_master_defines_value(master, attr, name, number):
    values = master[attr].values
    encoded = values.GetForward(name)
    assert int.from_bytes(encoded, "big") == number
    # the name is also what a received number decodes to
    assert values.GetBackward(encoded) == name


def test_round_trip(master):
    secret = b"testing123"
    now = int(time.time())
    conf_id = "3A1B2C4D 11223344 55667788 99AABBCC"
    request = packet.AuthPacket(dict=master, secret=secret)
    request["User-Name"] = "4155551234"
    request["Called-Station-Id"] = "0049301234567"
    request["h323-conf-id"] = conf_id
    request["Cisco-AVPair"] = ["h323-ivr-out=accesscode:1234", "xpgk-src-number=5551234"]
    request["Event-Timestamp"] = now
    request["Service-Type"] = "Authorize-Only"
    raw = request.RequestPacket()

    received = packet.AuthPacket(packet=raw, dict=master, secret=secret)
    assert received.code == packet.AccessRequest
    assert received["User-Name"] == ["4155551234"]
    assert received["Called-Station-Id"] == ["0049301234567"]
    assert received["h323-conf-id"] == [conf_id]
    assert received["Cisco-AVPair"] == [
        "h323-ivr-out=accesscode:1234",
        "xpgk-src-number=5551234",
    ]
    assert received["Event-Timestamp"] == [now]
    assert received["Service-Type"] == ["Authorize-Only"]
    # the vendor attributes travel inside Vendor-Specific (26) as vendor 9
    assert (CISCO, 24) in received
    assert (CISCO, 1) in received


def test_round_trip_user_password(master):
    secret = b"testing123"
    request = packet.AuthPacket(dict=master, secret=secret)
    request["User-Name"] = "card-0001"
    request["User-Password"] = request.PwCrypt("1234")
    raw = request.RequestPacket()

    received = packet.AuthPacket(packet=raw, dict=master, secret=secret)
    assert received.PwDecrypt(received["User-Password"][0]) == "1234"
