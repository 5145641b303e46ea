"""NAS trust: lookup by address or CIDR, and the Message-Authenticator policy."""

from __future__ import annotations

import pytest

from billing.calls import Nas
from radiusd.nas import NasTable


def nas(nas_id: int, address: str, policy: str = "auto", seen: bool = False) -> Nas:
    return Nas(
        id=nas_id,
        name=f"gw{nas_id}",
        address=address,
        secret=f"secret{nas_id}".encode(),
        profile="cisco",
        require_message_authenticator=policy,
        message_authenticator_seen=seen,
    )


EXACT = nas(1, "192.0.2.10")
SLASH24 = nas(2, "192.0.2.0/24")
SLASH16 = nas(3, "192.0.0.0/16")
SLASH28 = nas(4, "192.0.2.16/28")
V6 = nas(5, "2001:db8::1")
V6NET = nas(6, "2001:db8:1::/48")


@pytest.fixture
def table() -> NasTable:
    return NasTable([SLASH16, EXACT, SLASH24, SLASH28, V6, V6NET])


def test_exact_address(table: NasTable) -> None:
    assert table.lookup("192.0.2.10") == EXACT
    assert table.lookup("2001:db8::1") == V6


def test_cidr(table: NasTable) -> None:
    assert table.lookup("192.0.2.99") == SLASH24
    assert table.lookup("192.0.77.1") == SLASH16
    assert table.lookup("2001:db8:1:2::3") == V6NET


def test_most_specific_wins(table: NasTable) -> None:
    assert table.lookup("192.0.2.17") == SLASH28  # in /28, /24 and /16
    assert table.lookup("192.0.2.32") == SLASH24  # just past the /28
    assert table.lookup("192.0.2.10") == EXACT  # an exact address beats every network


def test_most_specific_wins_whatever_the_order() -> None:
    for order in (
        [SLASH16, SLASH24, SLASH28],
        [SLASH28, SLASH24, SLASH16],
        [SLASH24, SLASH16, SLASH28],
    ):
        table = NasTable(order)
        assert table.lookup("192.0.2.20") == SLASH28
        assert table.lookup("192.0.2.200") == SLASH24
        assert table.lookup("192.0.3.1") == SLASH16


def test_single_host_cidr_is_an_exact_address() -> None:
    host = nas(7, "198.51.100.7/32")
    table = NasTable([host])
    assert table.lookup("198.51.100.7") == host
    assert table.lookup("198.51.100.8") is None


def test_ipv4_mapped_ipv6_source(table: NasTable) -> None:
    assert table.lookup("::ffff:192.0.2.10") == EXACT
    assert table.lookup("::ffff:192.0.2.99") == SLASH24
    assert table.lookup("::ffff:192.0.2.17") == SLASH28
    assert table.lookup("::ffff:203.0.113.1") is None


@pytest.mark.parametrize(
    "host", ["203.0.113.1", "10.0.0.1", "2001:db8::2", "2001:db9::1", "::1", "not-an-address", ""]
)
def test_unknown_source_is_none(table: NasTable, host: str) -> None:
    assert table.lookup(host) is None


def test_empty_table() -> None:
    table = NasTable()
    assert len(table) == 0
    assert table.lookup("127.0.0.1") is None


def test_len_and_replace(table: NasTable) -> None:
    assert len(table) == 6
    table.replace([nas(9, "203.0.113.1")])
    assert len(table) == 1
    assert table.lookup("192.0.2.10") is None
    assert table.lookup("203.0.113.1").id == 9  # type: ignore[union-attr]


# -- Message-Authenticator policy ------------------------------------------------------------


def test_policy_yes_always_requires() -> None:
    client = nas(1, "192.0.2.1", policy="yes")
    table = NasTable([client])
    assert table.requires_message_authenticator(client) is True


def test_policy_no_never_requires_even_after_one_was_seen() -> None:
    client = nas(1, "192.0.2.1", policy="no", seen=True)
    table = NasTable([client])
    table.saw_message_authenticator(client)
    assert table.requires_message_authenticator(client) is False


def test_policy_auto_requires_once_seen() -> None:
    client = nas(1, "192.0.2.1", policy="auto")
    other = nas(2, "192.0.2.2", policy="auto")
    table = NasTable([client, other])
    assert table.requires_message_authenticator(client) is False
    assert table.saw_message_authenticator(client) is True  # first time: persist it
    assert table.requires_message_authenticator(client) is True
    assert table.saw_message_authenticator(client) is False  # already known
    assert table.requires_message_authenticator(client) is True
    assert table.requires_message_authenticator(other) is False


def test_policy_auto_loaded_as_seen_requires_it() -> None:
    client = nas(1, "192.0.2.1", policy="auto", seen=True)
    table = NasTable([client])
    assert table.requires_message_authenticator(client) is True
    assert table.saw_message_authenticator(client) is False


def test_seen_survives_a_reload_of_the_table() -> None:
    client = nas(1, "192.0.2.1", policy="auto")
    table = NasTable([client])
    table.saw_message_authenticator(client)
    table.replace([client])  # reloaded before the database had recorded it
    assert table.requires_message_authenticator(client) is True
