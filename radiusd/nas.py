"""NAS trust: which source addresses are answered, with which secret and vendor profile."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from billing.calls import Nas

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NasTable:
    """Known NAS clients by address or CIDR; the most specific network wins."""

    def __init__(self, clients: Iterable[Nas] = ()) -> None:
        self._exact: dict[str, Nas] = {}
        self._networks: list[tuple[Network, Nas]] = []
        self._seen_ma: set[int] = set()
        self.replace(clients)

    def replace(self, clients: Iterable[Nas]) -> None:
        exact: dict[str, Nas] = {}
        networks: list[tuple[Network, Nas]] = []
        for nas in clients:
            net = ipaddress.ip_network(nas.address, strict=False)
            if net.num_addresses == 1:
                exact[str(net.network_address)] = nas
            else:
                networks.append((net, nas))
            if nas.message_authenticator_seen:
                self._seen_ma.add(nas.id)
        networks.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._exact, self._networks = exact, networks

    def __len__(self) -> int:
        return len(self._exact) + len(self._networks)

    def lookup(self, host: str) -> Nas | None:
        if host.startswith("::ffff:"):
            host = host[7:]
        nas = self._exact.get(host)
        if nas is not None or not self._networks:
            return nas
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None
        for net, candidate in self._networks:
            if addr.version == net.version and addr in net:
                return candidate
        return None

    def requires_message_authenticator(self, nas: Nas) -> bool:
        """``yes``: always; ``no``: never; ``auto``: once the NAS has sent one."""
        policy = nas.require_message_authenticator
        if policy == "yes":
            return True
        if policy == "no":
            return False
        return nas.id in self._seen_ma

    def saw_message_authenticator(self, nas: Nas) -> bool:
        """Remember that this NAS signs its requests; True the first time."""
        if nas.id in self._seen_ma:
            return False
        self._seen_ma.add(nas.id)
        return True
