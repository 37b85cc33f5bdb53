"""The Pulumi program under mocks: the properties that matter, for each topology and way in."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pulumi
import pytest
import yaml

from llmcloud.config import parse
from llmcloud.contract import ENGINE_PORT
from tests.unit.test_config import BASE, KEY

GOLDEN = Path(__file__).parent / "golden"


class Mocks(pulumi.runtime.Mocks):
    """Answers like an OpenStack cloud would, and records every resource."""

    def __init__(self):
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    @staticmethod
    def host_number(resource_name: str) -> int:
        """edge1 → 10, llmN → 10 + N: addresses that do not depend on registration order."""
        host = resource_name.rsplit("-", 2)[-2]
        return 10 if host.startswith("edge") else 10 + int(host.removeprefix("llm"))

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ == "openstack:networking/port:Port":
            state["allFixedIps"] = [f"10.42.0.{self.host_number(args.name)}"]
        elif args.typ == "openstack:networking/floatingIp:FloatingIp":
            state["address"] = f"203.0.113.{self.host_number(args.name)}"
        elif args.typ == "openstack:sharedfilesystem/share:Share":
            state["exportLocations"] = [{"path": "10.0.5.5:/volumes/_nogroup/backup", "preferred": True}]
        return [f"{args.name}-id", state]

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "openstack:networking/getNetwork:getNetwork":
            return {"id": f"net-{args.args['name']}", "name": args.args["name"]}
        if args.token == "openstack:images/getImage:getImage":
            return {"id": "img-" + (args.args.get("name") or "pattern"), "name": "Ubuntu-24.04-20240913-gpu"}
        if args.token == "openstack:compute/getKeypair:getKeypair":
            return {"id": args.args["name"], "name": args.args["name"], "publicKey": KEY}
        if args.token == "openstack:sharedfilesystem/getShareNetwork:getShareNetwork":
            return {"id": "sharenet-1"}
        raise NotImplementedError(args.token)

    def of_type(self, token: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == token]


def deploy(tmp_path: Path, stack: str = "test", **changes):
    """Run the program under fresh mocks; return (mocks, resolved outputs, inventory directory)."""
    from llmcloud.provision.program import program

    cfg = parse({**BASE, **changes})
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="llmcloud", stack=stack, preview=False)
    resolved: dict = {}

    @pulumi.runtime.test
    def run():
        outputs = program(cfg, inventory_root=tmp_path)
        return pulumi.Output.all(**outputs).apply(resolved.update)

    run()
    return mocks, resolved, tmp_path / stack


SINGLE = {}
SPLIT = {"topology": "split", "replicas": 2}
JUMP = {"reach": {"jumpHost": "alice@jump.example.org"}, "network": {"existing": "proj-network-2"}}


def rules(mocks) -> list[dict]:
    return [r.inputs for r in mocks.of_type("openstack:networking/secGroupRule:SecGroupRule")]


def group_id(mocks, suffix: str) -> str:
    (group,) = [r for r in mocks.of_type("openstack:networking/secGroup:SecGroup") if r.name.endswith(suffix)]
    return f"{group.name}-id"


@pytest.mark.parametrize(
    "changes", [SINGLE, SPLIT, JUMP, {**SPLIT, **JUMP}], ids=["single", "split", "jump", "split-jump"]
)
def test_no_rule_opens_ssh_or_engine_to_the_world(tmp_path, changes):
    mocks, _, _ = deploy(tmp_path, **changes)
    for rule in rules(mocks):
        if rule["portRangeMin"] in (22, ENGINE_PORT):
            prefix = rule.get("remoteIpPrefix")
            assert prefix is None or ipaddress.ip_network(prefix).prefixlen > 0, rule
    ssh_sources = {
        r.get("remoteIpPrefix") for r in rules(mocks) if r["portRangeMin"] == 22 and r.get("remoteIpPrefix")
    }
    assert ssh_sources == {"192.0.2.0/24"}


@pytest.mark.parametrize("changes", [SINGLE, SPLIT], ids=["single", "split"])
def test_engine_port_only_from_the_edge_group(tmp_path, changes):
    mocks, _, _ = deploy(tmp_path, **changes)
    engine_rules = [r for r in rules(mocks) if r["portRangeMin"] == ENGINE_PORT]
    assert engine_rules, "no rule for the engine port"
    for rule in engine_rules:
        assert rule["remoteGroupId"] == group_id(mocks, "-edge")
        assert rule["securityGroupId"] == group_id(mocks, "-engine")
        assert "remoteIpPrefix" not in rule


def test_web_ports_public_only_on_the_edge_vm_in_split(tmp_path):
    mocks, _, _ = deploy(tmp_path, **SPLIT)
    edge = group_id(mocks, "-edge")
    ports = {(r["portRangeMin"], r["remoteIpPrefix"]) for r in rules(mocks) if r["securityGroupId"] == edge}
    assert ports == {(80, "0.0.0.0/0"), (80, "::/0"), (443, "0.0.0.0/0"), (443, "::/0")}
    groups_of = {
        r.name: r.inputs["securityGroupIds"] for r in mocks.of_type("openstack:networking/port:Port")
    }
    assert edge in groups_of["llm-test-edge1-port"]
    assert all(edge not in ids for name, ids in groups_of.items() if "llm" in name.split("-")[2])


def test_behind_a_load_balancer_the_web_ports_open_to_it_alone(tmp_path):
    """tls.mode external: a client that skipped the load balancer could choose its own X-Forwarded-For."""
    tls = {"mode": "external", "trustedProxies": ["10.0.0.5/32", "2001:db8::5/128"]}
    mocks, _, _ = deploy(tmp_path, tls=tls, **SPLIT)
    edge = group_id(mocks, "-edge")
    ports = {(r["portRangeMin"], r["remoteIpPrefix"]) for r in rules(mocks) if r["securityGroupId"] == edge}
    assert ports == {(p, cidr) for p in (80, 443) for cidr in ("10.0.0.5/32", "2001:db8::5/128")}


@pytest.mark.parametrize(("allow", "protected"), [(False, True), (True, False)])
def test_data_volume_protected_and_attached_at_boot(tmp_path, allow, protected):
    mocks, _, _ = deploy(tmp_path, allowDataLoss=allow, **SPLIT)
    volumes = mocks.of_type("openstack:blockstorage/volume:Volume")
    assert len(volumes) == 2
    for volume in volumes:
        assert volume.inputs["size"] == 100
        assert bool(getattr(volume, "custom_timeouts", None) is None)  # plain resource
    instances = {r.name: r.inputs for r in mocks.of_type("openstack:compute/instance:Instance")}
    for name in ("llm-test-llm1", "llm-test-llm2"):
        data = [b for b in instances[name]["blockDevices"] if b.get("bootIndex") == -1]
        assert data == [
            {
                "sourceType": "volume",
                "destinationType": "volume",
                "uuid": f"{name}-data-id",
                "bootIndex": -1,
                "deleteOnTermination": False,
            }
        ]
    assert not [b for b in instances["llm-test-edge1"]["blockDevices"] if b.get("bootIndex") == -1]
    from llmcloud.provision.nodes import Node  # noqa: F401  (protect is a resource option: checked below)

    assert _protected_names(tmp_path, allow) == (
        {"llm-test-llm1-data", "llm-test-llm2-data"} if protected else set()
    )


def _protected_names(tmp_path, allow) -> set[str]:
    """Names of resources registered with protect=True (read from the mock monitor's requests)."""
    seen: set[str] = set()
    original = pulumi.runtime.mocks.MockMonitor.RegisterResource

    def spy(self, request):
        if request.protect:
            seen.add(request.name)
        return original(self, request)

    pulumi.runtime.mocks.MockMonitor.RegisterResource = spy
    try:
        deploy(tmp_path / "spy", allowDataLoss=allow, **SPLIT)
    finally:
        pulumi.runtime.mocks.MockMonitor.RegisterResource = original
    return seen


def test_user_data_has_what_cloud_init_needs(tmp_path):
    mocks, _, _ = deploy(tmp_path)
    (instance,) = mocks.of_type("openstack:compute/instance:Instance")
    user_data = instance.inputs["userData"]
    assert user_data.startswith("#cloud-config\n")
    doc = yaml.safe_load(user_data)
    deploy_user = next(u for u in doc["users"] if isinstance(u, dict))
    assert deploy_user["name"] == "deploy"
    assert deploy_user["ssh_authorized_keys"] == [KEY]
    assert deploy_user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert doc["ssh_pwauth"] is False
    script = doc["write_files"][0]["content"]
    assert 'dev="/dev/disk/by-id/virtio-llm-test-llm1-data-i"' in script  # volume id cut to 20 characters
    assert "mkfs.ext4" in script and "nofail" in script
    # The ready marker only after the data volume is ready: one command, stopping at the first failure.
    (command,) = doc["runcmd"]
    assert command[:2] == ["sh", "-ec"]
    assert command[2].startswith("/usr/local/sbin/llmcloud-prepare-data && ")
    assert command[2].endswith("touch /var/lib/llmcloud/cloud-init.done")


def test_existing_keypair_key_reaches_the_deploy_user(tmp_path):
    mocks, _, _ = deploy(tmp_path, sshPublicKey=None, keypairName="alice")
    assert not mocks.of_type("openstack:compute/keypair:Keypair")
    (instance,) = mocks.of_type("openstack:compute/instance:Instance")
    assert instance.inputs["keyPair"] == "alice"
    assert KEY in instance.inputs["userData"]


def test_existing_network_is_reused_not_created(tmp_path):
    mocks, _, _ = deploy(tmp_path, **JUMP)
    assert not mocks.of_type("openstack:networking/network:Network")
    assert not mocks.of_type("openstack:networking/router:Router")
    (port,) = mocks.of_type("openstack:networking/port:Port")
    assert port.inputs["networkId"] == "net-proj-network-2"
    assert not mocks.of_type("openstack:networking/floatingIp:FloatingIp")


def test_created_network_is_routed_to_the_external_network(tmp_path):
    mocks, _, _ = deploy(tmp_path)
    (subnet,) = mocks.of_type("openstack:networking/subnet:Subnet")
    assert subnet.inputs["cidr"] == "10.42.0.0/24"
    (router,) = mocks.of_type("openstack:networking/router:Router")
    assert router.inputs["externalNetworkId"] == "net-public"
    assert mocks.of_type("openstack:networking/routerInterface:RouterInterface")


def test_outputs(tmp_path):
    _, out, inv = deploy(tmp_path, **SPLIT)
    assert out["url"] == "https://llm.example.org/"
    assert out["entry_address"] == "203.0.113.10"
    assert out["ssh_command"] == "ssh deploy@203.0.113.10"
    assert set(out["private_ips"]) == {"edge1", "llm1", "llm2"}
    assert out["hostnames"]["llm2"] == "llm-test-llm2"
    assert out["inventory"] == str(inv)
    assert len(out["configuration_digest"]) == 64


def test_secrets_stay_out_of_the_main_inventory(tmp_path):
    _, _, inv = deploy(tmp_path, hfToken="hf_secret_token")
    main = (inv / "group_vars" / "all" / "00-llmcloud.yml").read_text()
    secrets_file = inv / "group_vars" / "all" / "01-secrets.yml"
    assert "hf_secret_token" not in main and "s3cret" not in main
    assert secrets_file.stat().st_mode & 0o077 == 0
    secrets = yaml.safe_load(secrets_file.read_text())
    assert secrets["llm_engine_hf_token"] == "hf_secret_token"
    assert secrets["oauth2_proxy_client_secret"] == "s3cret"
    # No pulumi-random: without cookieSecret the oauth2_proxy role makes the cookie secret on the edge.
    assert "oauth2_proxy_cookie_secret" not in secrets


def test_a_given_cookie_secret_reaches_the_role(tmp_path):
    _, _, inv = deploy(tmp_path, cookieSecret="c" * 32)
    secrets = yaml.safe_load((inv / "group_vars" / "all" / "01-secrets.yml").read_text())
    assert secrets["oauth2_proxy_cookie_secret"] == "c" * 32


def test_backup_share_granted_to_every_node(tmp_path):
    mocks, out, inv = deploy(tmp_path, backup={"target": "manila", "size": 20}, resticPassword="pw", **SPLIT)
    (share,) = mocks.of_type("openstack:sharedfilesystem/share:Share")
    assert share.inputs["shareProto"] == "NFS" and share.inputs["size"] == 20
    granted = {
        r.inputs["accessTo"] for r in mocks.of_type("openstack:sharedfilesystem/shareAccess:ShareAccess")
    }
    assert granted == set(out["private_ips"].values())
    assert out["backup_repository"] == "10.0.5.5:/volumes/_nogroup/backup"
    main = yaml.safe_load((inv / "group_vars" / "all" / "00-llmcloud.yml").read_text())
    assert main["restic_nfs_export"] == "10.0.5.5:/volumes/_nogroup/backup"
    assert main["restic_repository"] == "/mnt/llmcloud-backup/{{ inventory_hostname }}"
    assert main["restic_enabled"] is True


def test_monitoring_settings_cost_and_alert_webhook_reach_the_inventory(tmp_path):
    _, _, inv = deploy(
        tmp_path,
        **SPLIT,
        engineNode={"costPerHour": 1.5},
        edgeNode={"costPerHour": 0.05},
        monitoring={"admins": ["ops@example.org"], "retentionDays": 30},
        alertWebhook="https://hooks.example.org/T0K3N",
    )
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())["all"]["hosts"]
    assert {name: h.get("llmcloud_cost_per_hour") for name, h in hosts.items()} == {
        "edge1": 0.05,
        "llm1": 1.5,
        "llm2": 1.5,
    }
    main_text = (inv / "group_vars" / "all" / "00-llmcloud.yml").read_text()
    main = yaml.safe_load(main_text)
    assert main["nginx_admin_emails"] == ["ops@example.org"] and main["monitoring_retention_time"] == "30d"
    assert main["monitoring_enabled"] is True
    # The webhook URL carries a token: only in the secrets file.
    assert "T0K3N" not in main_text
    secrets = yaml.safe_load((inv / "group_vars" / "all" / "01-secrets.yml").read_text())
    assert secrets["monitoring_alert_webhook"] == "https://hooks.example.org/T0K3N"


def test_more_models_reach_the_inventory_with_their_hosts_and_open_ports(tmp_path):
    mocks, _, inv = deploy(
        tmp_path,
        **SPLIT,
        models=[
            {"kind": "tei", "modelId": "BAAI/bge-small-en-v1.5"},
            {"kind": "vllm", "modelId": "org/coder"},
        ],
    )
    main = yaml.safe_load((inv / "group_vars" / "all" / "00-llmcloud.yml").read_text())
    engines = ["llm1", "llm2"]
    assert main["llmcloud_extra_models"] == [
        {"model_id": "BAAI/bge-small-en-v1.5", "kind": "tei", "port": ENGINE_PORT + 1, "hosts": engines},
        {"model_id": "org/coder", "kind": "vllm", "port": ENGINE_PORT + 2, "hosts": engines},
    ]
    # Each engine port, and the exporters Prometheus scrapes, from the edge group only.
    engine, edge = group_id(mocks, "-engine"), group_id(mocks, "-edge")
    from_edge = {r["portRangeMin"] for r in rules(mocks) if r.get("remoteGroupId") == edge}
    assert {ENGINE_PORT, ENGINE_PORT + 1, ENGINE_PORT + 2, 9100, 9400} <= from_edge
    assert all(r["securityGroupId"] == engine for r in rules(mocks) if r.get("remoteGroupId") == edge)
    _, _, plain = deploy(tmp_path / "one", **SPLIT)
    assert "llmcloud_extra_models" not in (plain / "group_vars" / "all" / "00-llmcloud.yml").read_text()


def test_a_model_from_a_file_reaches_the_engine_role_without_a_hub(tmp_path):
    archive = tmp_path / "qwen.tar.gz"
    archive.write_bytes(b"not really an archive")
    digest = "AB" * 32
    _, _, inv = deploy(
        tmp_path,
        engine={
            "modelId": "Qwen/Qwen2.5-1.5B-Instruct",
            "modelSource": {"file": str(archive), "sha256": digest},
        },
        models=[
            {"kind": "tei", "modelId": "org/embed", "modelSource": {"url": "https://o.example.org/e.tgz"}}
        ],
    )
    main = yaml.safe_load((inv / "group_vars" / "all" / "00-llmcloud.yml").read_text())
    assert main["llm_engine_model_source"] == "controller"
    assert main["llm_engine_model_path"] == str(archive) and main["llm_engine_model_sha256"] == digest.lower()
    (extra,) = main["llmcloud_extra_models"]
    assert extra["model_source"] == "url" and extra["model_url"] == "https://o.example.org/e.tgz"


def test_configure_resource_follows_the_switch(tmp_path):
    mocks, _, _ = deploy(tmp_path)
    assert len(mocks.of_type("pulumi-python:dynamic:Resource")) == 1
    mocks, _, _ = deploy(tmp_path / "off", configure=False)
    assert not mocks.of_type("pulumi-python:dynamic:Resource")


# ---- inventory golden files ------------------------------------------------------------------
CASES = {"single": SINGLE, "split": SPLIT, "jump": JUMP, "split-jump": {**SPLIT, **JUMP}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_inventory_matches_golden(tmp_path, case, request):
    _, _, inv = deploy(tmp_path, stack=case, **CASES[case])
    # Which server each host is (hostkeys.py's record, the mocks' ids) is bookkeeping, not inventory.
    assert json.loads((inv / "ssh" / "servers.json").read_text())["llm1"].endswith("-llm1-id")
    actual = {}
    bookkeeping = {"01-secrets.yml", "servers.json", "servers.lock"}
    for path in sorted(p for p in inv.rglob("*") if p.is_file() and p.name not in bookkeeping):
        actual[str(path.relative_to(inv))] = path.read_text().replace(str(tmp_path), "<root>")
    golden = GOLDEN / f"inventory-{case}.json"
    if request.config.getoption("--update-golden", default=False) or not golden.exists():
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
        if not request.config.getoption("--update-golden", default=False):
            pytest.fail(f"wrote missing golden file {golden.name}; review and commit it")
    assert actual == json.loads(golden.read_text())


def test_ansible_reads_the_provisioned_inventory(tmp_path):
    import subprocess

    from llmcloud.provision import rolling

    _, _, inv = deploy(tmp_path, **SPLIT, **JUMP)
    # What else lives in the inventory folder is no inventory source (ansible.cfg's ignore_patterns).
    rolling.record_configured(inv, {"edge1": "e1", "llm1": "s1", "llm2": "s2"})
    read = subprocess.run(
        ["ansible-inventory", "-i", str(inv), "--list"], check=True, capture_output=True, text=True
    )
    assert "WARNING" not in read.stderr, read.stderr
    view = json.loads(read.stdout)
    assert set(view) == {"_meta", "all", "llm", "edge"}
    llm1 = view["_meta"]["hostvars"]["llm1"]
    assert llm1["ansible_ssh_common_args"].endswith("-o ProxyJump=alice@jump.example.org,deploy@10.42.0.10")
    assert llm1["admin_cidrs"] == ["192.0.2.0/24", "10.42.0.10/32"]
    assert view["_meta"]["hostvars"]["edge1"]["admin_cidrs"] == ["192.0.2.0/24"]
    assert llm1["oauth2_proxy_client_secret"] == "s3cret"  # from 01-secrets.yml
    assert sorted(view["llm"]["hosts"]) == ["llm1", "llm2"]


def test_a_replaced_vm_loses_its_recorded_host_key_at_the_next_up(tmp_path):
    """Same address, new machine: the key recorded for the old server goes as soon as `up` sees the new one,
    whoever connects first; the other hosts' keys stay."""
    _, _, inv = deploy(tmp_path, **SPLIT)
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())["all"]["hosts"]
    known = inv / "ssh" / "known_hosts"
    llm1, llm2 = hosts["llm1"]["ansible_host"], hosts["llm2"]["ansible_host"]
    known.write_text(f"{llm1} ssh-ed25519 AAAAold1\n{llm2} ssh-ed25519 AAAAkept\n")
    record = json.loads((inv / "ssh" / "servers.json").read_text())
    (inv / "ssh" / "servers.json").write_text(json.dumps({**record, "llm1": "the-server-before"}))
    deploy(tmp_path, **SPLIT)
    assert "AAAAold1" not in known.read_text() and "AAAAkept" in known.read_text()
