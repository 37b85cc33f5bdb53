"""Filters the common role uses to check networks before it touches the firewall."""

import ipaddress


def invalid_cidrs(values):
    """The entries of ``values`` that are not an IPv4 or IPv6 network in CIDR notation."""
    bad = []
    for value in values or []:
        try:
            ipaddress.ip_network(str(value), strict=False)
            if "/" not in str(value):
                raise ValueError(value)
        except ValueError:
            bad.append(value)
    return bad


def world_cidrs(values):
    """The entries of ``values`` that match every address (0.0.0.0/0, ::/0); invalid entries are skipped."""
    bad = invalid_cidrs(values)
    valid = [v for v in values or [] if v not in bad]
    return [v for v in valid if ipaddress.ip_network(str(v), strict=False).prefixlen == 0]


def cidrs_of_family(values, version):
    """The networks of ``values`` in IP version 4 or 6, in canonical form."""
    return [
        str(ipaddress.ip_network(str(v), strict=False))
        for v in values or []
        if ipaddress.ip_network(str(v), strict=False).version == int(version)
    ]


class FilterModule:
    def filters(self):
        return {
            "llmcloud_invalid_cidrs": invalid_cidrs,
            "llmcloud_world_cidrs": world_cidrs,
            "llmcloud_cidrs_of_family": cidrs_of_family,
        }
