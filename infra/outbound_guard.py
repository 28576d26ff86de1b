"""Where keel may send a request on someone else's behalf: the guard against server-side request
forgery (SSRF) for every URL a client hands keel (job callbacks today, image URLs next).

A client that names a URL makes keel's own process connect to it, from inside keel's network. The
guard refuses destinations that only make sense from there: loopback, private networks (RFC 1918,
unique-local fc00::/7), link-local (169.254/16 and fe80::/10, home of the cloud metadata services
169.254.169.254 and fd00:ec2::254), carrier-grade NAT (100.64/10), unspecified, multicast and
reserved addresses, and the same addresses dressed as IPv6 (IPv4-mapped ``::ffff:a.b.c.d``,
NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``). An operator allows named hosts or networks with one
setting per use (e.g. ``KEEL_CALLBACK_ALLOWED_DESTINATIONS``).

The check runs twice: when the URL is accepted (a 400 that names the field, the address class and
the setting) and when keel connects, on the addresses the name resolves to *then*. Every address
must pass, and the connection goes to the address that was checked (:func:`pinned_request`): a
DNS answer that changes between check and connect (rebinding) cannot redirect it. Callers do not
follow redirects: a ``Location`` would be a destination nobody checked.

The resolver is a parameter (:data:`Resolver`), so tests map made-up names to private addresses
and see the refusal without any packet leaving the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (host, port) -> the IP addresses the host resolves to, as text.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Allow-list entries that name a class of addresses rather than a host or network.
LOOPBACK = "loopback"
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")

CLOUD_METADATA = "cloud metadata"
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)

# The first match names the class in the refusal. Order matters only where ranges nest.
_BLOCKED_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "carrier-grade NAT (shared)"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved (documentation)"),
    ("198.18.0.0/15", "reserved (benchmarking)"),
    ("198.51.100.0/24", "reserved (documentation)"),
    ("203.0.113.0/24", "reserved (documentation)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "reserved (IPv4-compatible)"),
    ("100::/64", "reserved (discard)"),
    ("2001:db8::/32", "reserved (documentation)"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "reserved (site-local)"),
    ("ff00::/8", "multicast"),
)
_BLOCKED = tuple((ipaddress.ip_network(net), name) for net, name in _BLOCKED_NETWORKS)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def blocked_class(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination (e.g. "private", "cloud metadata"), or None.

    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by that address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = blocked_class(embedded)
            return f"{inner} (as IPv6 {address})" if inner else None
    if address in _METADATA_ADDRESSES:
        return CLOUD_METADATA
    for network, name in _BLOCKED:
        if address.version == network.version and address in network:
            return name
    # Whatever Python's table knows beyond the list above (new IANA special-purpose blocks).
    if address.is_reserved or address.is_multicast or address.is_link_local:
        return "reserved"
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """What one use of the guard allows beyond public addresses, and the setting that says so."""

    setting: str
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, setting: str, entries: Iterable[str]) -> OutboundPolicy:
        """Entries are host names (``hooks.internal``), addresses or CIDR networks
        (``10.1.0.0/16``), or ``loopback``. Raises ValueError naming a bad entry."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry.lower() == LOOPBACK:
                networks += [ipaddress.ip_network(n) for n in LOOPBACK_NETWORKS]
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or ":" in entry or not _looks_like_host(entry):
                raise ValueError(
                    f"{setting}: {entry!r} is neither a host name, an IP address, a CIDR "
                    "network (10.1.0.0/16) nor 'loopback'"
                )
            hosts.add(_normal_host(entry))
        return cls(setting=setting, hosts=frozenset(hosts), networks=tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        if _normal_host(host) in self.hosts:
            return True
        return any(address.version == n.version and address in n for n in self.networks)

    def describe(self) -> str:
        entries = sorted(self.hosts) + [str(n) for n in self.networks]
        return ", ".join(entries) if entries else "nothing"


class DestinationRefused(Exception):
    """A URL whose host is, or resolves to, an address the policy does not allow."""

    def __init__(self, what: str, host: str, address: str, address_class: str, setting: str):
        self.what = what
        self.host = host
        self.address = address
        self.address_class = address_class
        self.setting = setting
        shown = host if host == address else f"{host} ({address})"
        super().__init__(
            f"{what} points at {shown}, a {address_class} address: keel does not send requests "
            f"there unless {setting} allows it (a host name, an address or a CIDR network, "
            "comma-separated)"
        )


class DestinationInvalid(Exception):
    """A URL the guard cannot check: not http(s), no host, or a host that does not resolve."""


class DestinationUnresolved(DestinationInvalid):
    """The URL's host has no address now (it may later: a caller may accept it and check again
    when it connects)."""


@dataclass(frozen=True)
class CheckedDestination:
    """A URL whose host was checked, and the addresses it was found at (connect to these)."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The operating system's resolver (getaddrinfo), every address of the host."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def split_url(url: str, what: str) -> tuple[str, int]:
    """The host and port of an http(s) URL; DestinationInvalid otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise DestinationInvalid(f"{what} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise DestinationInvalid(f"{what} must be an http:// or https:// URL")
    if not parts.hostname:
        raise DestinationInvalid(f"{what} has no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_address(what: str, host: str, address: str, policy: OutboundPolicy) -> None:
    """Refuse (DestinationRefused) one address ``host`` stands for, unless public or allowed."""
    parsed = _literal(address)
    if parsed is None:
        raise DestinationInvalid(f"{what}: the resolver returned {address!r}, not an address")
    address_class = blocked_class(parsed)
    if address_class is not None and not policy.allows(host, parsed):
        raise DestinationRefused(what, host, str(parsed), address_class, policy.setting)


async def check_url(
    url: str,
    policy: OutboundPolicy,
    resolver: Resolver = system_resolver,
    what: str = "the URL",
) -> CheckedDestination:
    """Resolve ``url``'s host and check every address it has (all must pass).

    Raises DestinationRefused, or DestinationInvalid when the URL is malformed or its host does
    not resolve. Nothing is sent anywhere."""
    host, port = split_url(url, what)
    literal = _literal(host)
    if literal is not None:
        addresses: Sequence[str] = [str(literal)]
    else:
        try:
            addresses = await resolver(host, port)
        except (OSError, UnicodeError) as error:
            raise DestinationUnresolved(f"{what}: cannot resolve {host}: {error}") from None
        if not addresses:
            raise DestinationUnresolved(f"{what}: {host} has no address")
    for address in addresses:
        check_address(what, host, address, policy)
    return CheckedDestination(url=url, host=host, port=port, addresses=tuple(addresses))


def pinned_request(destination: CheckedDestination, address: str) -> tuple[str, str, str]:
    """(URL to connect to, Host header, TLS server name) for sending to ``destination`` at the
    checked ``address``: the connection goes to that IP whatever DNS says next, while the
    receiver sees (and TLS verifies) the name the client gave."""
    parts = urlsplit(destination.url)
    literal = _literal(address)
    assert literal is not None
    netloc_host = f"[{literal}]" if literal.version == 6 else str(literal)
    netloc = f"{netloc_host}:{destination.port}"
    if "@" in parts.netloc:  # keep credentials the URL carries (user:password@)
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    default_port = 443 if parts.scheme == "https" else 80
    host_header = _host_header(destination.host, destination.port, default_port)
    return parts._replace(netloc=netloc).geturl(), host_header, destination.host


def _host_header(host: str, port: int, default_port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


def _normal_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _looks_like_host(entry: str) -> bool:
    labels = _normal_host(entry).split(".")
    return all(label and all(c.isalnum() or c in "-_" for c in label) for label in labels)
