"""Role common: what a user relies on for every host (SSH, firewall, updates, time, logs)."""

from __future__ import annotations

import pytest
from conftest import address_in, in_group, listener, private_reachable_from_controller, reachable_from

CLOSED_PROBE_PORT = 47813  # a port no role opens


_SSHD_T: dict[str, dict[str, str]] = {}


def _sshd_effective(host) -> dict[str, str]:
    """`sshd -T`: the configuration sshd really uses, after every drop-in (asked once per host)."""
    name = host.backend.get_hostname()
    if name not in _SSHD_T:
        lines = host.check_output("sshd -T").splitlines()
        _SSHD_T[name] = dict(line.split(" ", 1) for line in lines if " " in line)
    return _SSHD_T[name]


# ---- SSH --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("permitrootlogin", "no"),
        ("passwordauthentication", "no"),
        ("kbdinteractiveauthentication", "no"),
        ("pubkeyauthentication", "yes"),
        ("permitemptypasswords", "no"),
        ("authenticationmethods", "publickey"),
        ("x11forwarding", "no"),
    ],
)
def test_sshd_effective_setting(host, key, value):
    # `sshd -T` prints the configuration sshd really uses, after every drop-in.
    effective = dict(line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line)
    assert effective.get(key) == value, f"sshd {key} is {effective.get(key)!r}, want {value!r}"


def test_sshd_offers_publickey_only(host, hostvars):
    """Ask the server which methods it accepts, as an attacker would."""
    import paramiko

    if "ProxyJump" in str(hostvars.get("ansible_ssh_common_args", "")):
        pytest.skip("host is reached through a jump host; checked by sshd -T above")
    transport = paramiko.Transport((hostvars["ansible_host"], int(hostvars.get("ansible_port", 22))))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as denied:
            transport.auth_none("root")
        assert denied.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_sshd_running_and_enabled(host):
    ssh = host.service("ssh")
    assert ssh.is_running
    assert ssh.is_enabled


# ---- Firewall ---------------------------------------------------------------------------------
def test_firewall_policy_drops_by_default(host):
    ruleset = host.check_output("nft list chain inet llmcloud_filter input")
    assert "policy drop;" in ruleset
    assert host.service("llmcloud-firewall").is_enabled


def test_firewall_web_ports_only_on_edge(host, hostvars):
    ruleset = host.check_output("nft list chain inet llmcloud_filter input")
    opens_web = "443" in ruleset and "80" in ruleset and '"public"' in ruleset
    assert opens_web == in_group(hostvars, "edge")


def test_unlisted_port_is_closed_from_another_host(host, hostvars, peers):
    usable = [
        p for p in peers if p.remote is not None or private_reachable_from_controller(hostvars["private_ip"])
    ]
    if not usable:
        pytest.skip("no peer can reach this host's private_ip (run from inside the cloud network)")
    with listener(host, CLOSED_PROBE_PORT):
        opened = reachable_from(usable, hostvars["private_ip"], CLOSED_PROBE_PORT)
    assert not any(opened.values()), (
        f"port {CLOSED_PROBE_PORT} on {hostvars['private_ip']} is reachable: {opened}"
    )


def test_https_closed_from_peers_on_engine_only_hosts(host, hostvars, peers):
    if in_group(hostvars, "edge"):
        pytest.skip("edge hosts serve HTTPS")
    remote_peers = [p for p in peers if p.remote is not None]
    if not remote_peers:
        pytest.skip("needs a second inventory host")
    with listener(host, 443):
        opened = reachable_from(remote_peers, hostvars["private_ip"], 443)
    assert not any(opened.values()), f"443 on an engine-only host is reachable: {opened}"


def test_ssh_closed_to_hosts_outside_admin_cidrs(host, hostvars, peers):
    outsiders = [
        p for p in peers if p.remote is not None and not address_in(p.address, hostvars["admin_cidrs"])
    ]
    if not outsiders:
        pytest.skip("every peer is inside admin_cidrs")
    opened = reachable_from(outsiders, hostvars["private_ip"], 22)
    assert not any(opened.values()), f"SSH reachable from outside admin_cidrs: {opened}"


# ---- Updates, time, logs ----------------------------------------------------------------------
def test_unattended_upgrades_enabled(host):
    assert host.package("unattended-upgrades").is_installed
    config = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert 'APT::Periodic::Update-Package-Lists "1";' in config
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.service(timer).is_enabled
        assert host.service(timer).is_running


def test_unattended_upgrades_include_security_origin(host, hostvars):
    # The distribution's policy must still name its security archive.
    policy = host.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    assert "security" in policy.lower()


def test_time_sync_daemon_running(host):
    chrony = host.service("chrony")
    assert chrony.is_running
    assert chrony.is_enabled
    assert host.run("chronyc -n tracking").rc == 0, "chronyd does not answer chronyc"


def test_time_sync_sources_configured(host, hostvars):
    sources = host.check_output("chronyc -n -c sources")
    servers = hostvars.get("common_timesync_servers", [])
    for server in servers:
        assert server in sources, f"NTP server {server} missing from chronyc sources"
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert ("pool " in conf) or servers


def test_clock_synchronised(host, hostvars):
    if hostvars.get("common_timesync_set_clock", True) is False:
        pytest.skip("this host must not steer its clock (container on a shared kernel)")
    # waitsync: up to 20 tries 3 s apart, until chrony has a selected source.
    assert host.run("chronyc waitsync 20 0 0 3").rc == 0, "chrony did not synchronise within 60 s"


def test_journald_limits(host):
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=" in config
    assert "MaxRetentionSec=" in config
    assert host.service("systemd-journald").is_running
