"""The outbound guard (infra/outbound_guard.py): which addresses keel refuses to send to on a
client's behalf, what the allow-list allows, and where a checked request connects.

Pure checks: nothing here opens a socket. Names resolve through a stub resolver."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from infra.outbound_guard import (
    CLOUD_METADATA,
    DestinationInvalid,
    DestinationRefused,
    DestinationUnresolved,
    OutboundPolicy,
    blocked_class,
    check_url,
    pinned_request,
)
from infra.settings import KeelSettings
from tests.outbound import StubResolver

SETTING = "KEEL_CALLBACK_ALLOWED_DESTINATIONS"
NOTHING_ALLOWED = OutboundPolicy(setting=SETTING)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private (unique local)"),
        ("169.254.169.254", CLOUD_METADATA),
        ("fd00:ec2::254", CLOUD_METADATA),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT (shared)"),
        ("100.100.100.200", CLOUD_METADATA),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved (documentation)"),
        ("fec0::1", "reserved (site-local)"),
    ],
)
def test_non_public_addresses_are_classified(address: str, expected: str) -> None:
    assert blocked_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.5", "private"),
        ("::ffff:169.254.169.254", CLOUD_METADATA),
        ("::ffff:100.64.1.1", "carrier-grade NAT (shared)"),
        ("64:ff9b::a9fe:a9fe", CLOUD_METADATA),  # NAT64 of 169.254.169.254
        ("2002:a00:5::1", "private"),  # 6to4 of 10.0.0.5
    ],
)
def test_ipv4_addresses_dressed_as_ipv6_are_judged_by_the_ipv4_address(
    address: str, inner: str
) -> None:
    found = blocked_class(ipaddress.ip_address(address))
    assert found is not None and found.startswith(inner)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_class(ipaddress.ip_address(address)) is None


async def test_every_resolved_address_must_pass_and_the_refusal_names_class_and_setting() -> None:
    resolver = StubResolver(
        {"mixed.internal.test": ["93.184.216.34", "10.0.0.5"], "public.test": ["93.184.216.34"]}
    )
    with pytest.raises(DestinationRefused) as refused:
        await check_url("https://mixed.internal.test/hook", NOTHING_ALLOWED, resolver, "cb")
    message = str(refused.value)
    assert "cb points at mixed.internal.test (10.0.0.5), a private address" in message
    assert SETTING in message
    assert resolver.asked == [("mixed.internal.test", 443)]

    checked = await check_url("http://public.test:8080/x", NOTHING_ALLOWED, resolver)
    assert checked.addresses == ("93.184.216.34",) and checked.port == 8080


async def test_address_literals_are_checked_without_resolving() -> None:
    resolver = StubResolver({})
    for url in (
        "http://127.0.0.1:9/hook",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:80/",
    ):
        with pytest.raises(DestinationRefused):
            await check_url(url, NOTHING_ALLOWED, resolver)
    assert resolver.asked == []


async def test_the_allow_list_allows_named_hosts_networks_and_loopback() -> None:
    resolver = StubResolver(
        {
            "hooks.internal.test": ["10.0.0.5"],
            "other.internal.test": ["10.0.0.6"],
            "localhost": ["127.0.0.1", "::1"],
            "metadata.internal.test": ["169.254.169.254"],
        }
    )
    policy = OutboundPolicy.parse(SETTING, ["Hooks.Internal.Test.", "loopback", "192.168.0.0/16"])
    await check_url("http://hooks.internal.test/", policy, resolver)
    await check_url("http://localhost:8300/", policy, resolver)
    await check_url("http://192.168.7.7/", policy, resolver)
    with pytest.raises(DestinationRefused, match=r"10\.0\.0\.6"):
        await check_url("http://other.internal.test/", policy, resolver)
    with pytest.raises(DestinationRefused, match="cloud metadata"):
        await check_url("http://metadata.internal.test/", policy, resolver)


async def test_urls_the_guard_cannot_check_are_invalid() -> None:
    resolver = StubResolver({})
    with pytest.raises(DestinationInvalid, match="http:// or https://"):
        await check_url("file:///etc/passwd", NOTHING_ALLOWED, resolver)
    with pytest.raises(DestinationInvalid, match="no host"):
        await check_url("http:///hook", NOTHING_ALLOWED, resolver)
    with pytest.raises(DestinationUnresolved, match=r"cannot resolve nowhere\.test"):
        await check_url("http://nowhere.test/", NOTHING_ALLOWED, resolver)


async def test_a_checked_request_connects_to_the_checked_address_under_the_given_name() -> None:
    resolver = StubResolver({"hooks.example.test": ["93.184.216.34", "2606:2800::1"]})
    checked = await check_url(
        "https://user:pw@hooks.example.test/cb?x=1", NOTHING_ALLOWED, resolver
    )
    assert pinned_request(checked, "93.184.216.34") == (
        "https://user:pw@93.184.216.34:443/cb?x=1",
        "hooks.example.test",
        "hooks.example.test",
    )
    assert pinned_request(checked, "2606:2800::1") == (
        "https://user:pw@[2606:2800::1]:443/cb?x=1",
        "hooks.example.test",
        "hooks.example.test",
    )
    checked = await check_url("http://hooks.example.test:8080/cb", NOTHING_ALLOWED, resolver)
    assert pinned_request(checked, "93.184.216.34")[1] == "hooks.example.test:8080"


def test_the_setting_is_parsed_and_a_bad_entry_is_named() -> None:
    settings = KeelSettings(
        _env_file=None,
        callback_allowed_destinations="hooks.internal, 10.1.0.0/16,loopback",
        temporal_address="temporal:7233",
    )
    assert settings.effective_callback_allowed_destinations == [
        "hooks.internal",
        "10.1.0.0/16",
        "loopback",
    ]
    off = KeelSettings(_env_file=None, callback_allowed_destinations="none")
    assert off.effective_callback_allowed_destinations == []
    with pytest.raises(ValidationError, match=f"{SETTING}: '10.1.0.0/33'"):
        KeelSettings(_env_file=None, callback_allowed_destinations="10.1.0.0/33")


def test_loopback_is_allowed_by_default_only_for_the_zero_setup_stack() -> None:
    dev = KeelSettings(_env_file=None, temporal_address=None)
    cluster = KeelSettings(_env_file=None, temporal_address="temporal:7233")
    assert dev.effective_callback_allowed_destinations == ["loopback"]
    assert cluster.effective_callback_allowed_destinations == []
