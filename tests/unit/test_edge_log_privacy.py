"""The edge's access log keeps no full client address: nginx's map, read from the role's template."""

from __future__ import annotations

import ipaddress
import re

import pytest

from llmcloud import REPO_ROOT

TEMPLATE = REPO_ROOT / "roles" / "nginx" / "templates" / "llmcloud-http.conf.j2"


def client_map() -> list[tuple[re.Pattern | None, str]]:
    """The map of $remote_addr to $llmcloud_client: (regex, or None for default; value) in nginx's order."""
    found = re.search(r"map \$remote_addr \$llmcloud_client \{\n(.*?)\n\}", TEMPLATE.read_text(), re.S)
    body = found.group(1)
    rules = []
    for line in body.splitlines():
        key, value = line.rsplit(None, 1)
        key, value = key.strip().strip('"'), value.rstrip(";")
        if key == "default":
            rules.append((None, value))
            continue
        flags = re.I if key.startswith("~*") else 0
        rules.append((re.compile(key.lstrip("~*").replace("(?<", "(?P<"), flags), value))
    return rules


def logged(address: str) -> str:
    """What nginx writes for a client address: the first matching regex, its captures put in."""
    for regex, value in client_map():
        if regex is None:
            return value
        if match := regex.search(address):
            return re.sub(r"\$(\w+)", lambda m: match.group(m.group(1)), value)
    raise AssertionError("no default")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.77", "192.0.2.0"),
        ("2001:db8:1234:5678:9abc:def0:1:2", "2001:db8:1234::"),
        ("2001:db8::a:b:c:d", "2001:db8::"),  # logged as 2001:db8::a before: an interface bit
        ("2001::a:b:c:d:e", "2001::"),
        ("2001:db8:0:1::5", "2001:db8:0::"),
        ("::1", "::"),
        ("::ffff:198.51.100.23", "::ffff:198.51.100.0"),
        ("2001:DB8:ABCD:12::1", "2001:DB8:ABCD::"),
    ],
)
def test_client_addresses_are_cut_to_their_network(address, expected):
    assert logged(address) == expected


@pytest.mark.parametrize(
    "address",
    ["2001:db8::a:b:c:d", "2001:db8:1234:5678::9", "fe80::1:2:3:4", "::ffff:198.51.100.23", "192.0.2.9"],
)
def test_what_is_logged_is_a_network_that_holds_the_address_and_at_least_a_48(address):
    shown = logged(address)
    ip = ipaddress.ip_address(address)
    v4 = ip if ip.version == 4 else ip.ipv4_mapped
    if v4:  # an IPv4 client, also as IPv6 sees it (::ffff:a.b.c.d): its /24
        assert v4 in ipaddress.ip_network(f"{shown.removeprefix('::ffff:')}/24")
        return
    network = ipaddress.ip_network(f"{shown}/48", strict=False)
    assert ipaddress.ip_address(address) in network
    assert ipaddress.ip_address(shown) == network.network_address, "bits below the /48 were logged"


def signin_path(request_uri: str) -> str:
    """Where the sign-in sends a person back ($llmcloud_signin_path), by the role's map."""
    found = re.search(r"map \$request_uri \$llmcloud_signin_path \{\n(.*?)\n\}", TEMPLATE.read_text(), re.S)
    rule, default = found.group(1).splitlines()
    key, value = rule.strip().rsplit(None, 1)
    regex = re.compile(key.strip('"').lstrip("~").replace("(?<", "(?P<"))
    if match := regex.search(request_uri):
        return re.sub(r"\$(\w+)", lambda m: match.group(m.group(1)), value.rstrip(";"))
    return default.split()[-1].rstrip(";")


@pytest.mark.parametrize(
    ("request_uri", "back_to"),
    [
        ("/c/0b1e?q=my+secret+prompt&lang=en", "/c/0b1e"),  # the query never reaches the provider's logs
        ("/", "/"),
        ("/?q=secret", "/"),
        ("/workspace/models", "/workspace/models"),
        ("//evil.example/x", "/"),  # would read as another site
        ("/a%20b", "/"),  # anything to escape: back to /
        ("/x&rd=https://evil.example", "/"),
        ("/x\\evil", "/"),
    ],
)
def test_the_sign_in_comes_back_to_the_path_only(request_uri, back_to):
    assert signin_path(request_uri) == back_to
