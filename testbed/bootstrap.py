"""Bootstrap and seed the local test cloud. Runs with the services' venv (openstacksdk from there).

    python bootstrap.py SETTINGS_JSON catalog   # service users, roles, catalog
    python bootstrap.py SETTINGS_JSON ready     # wait until the schedulers can place things
    python bootstrap.py SETTINGS_JSON seed      # a de.NBI-like project (writes clouds.yaml)

Standalone on purpose: the services' venv does not have the llmcloud package.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import openstack
from keystoneauth1 import identity, session

REGION = "RegionOne"
PROJECT = "my-project"
USER = "alice"
#: The names a de.NBI project sees, so the example stacks run unmodified against this cloud.
FLAVORS = [
    # name, vcpus, ram MiB, disk GB, GPU
    ("m1.small", 1, 2048, 20, False),
    ("de.NBI default", 2, 4096, 20, False),
    ("de.NBI large", 8, 16384, 20, False),
    ("gpu.medium", 8, 32768, 50, True),
    ("de.NBI GPU T4 medium", 14, 65536, 50, True),
]
GPU_TRAIT = "CUSTOM_GPU_T4"
#: Uploaded in this order, a second apart: `imagePattern` must pick the newest match, not any match.
IMAGES = [
    "Ubuntu-24.04-20260901",
    "Ubuntu-24.04-20260901-gpu",
    "Ubuntu-22.04-20261115",
    "Ubuntu-24.04-20261115-gpu",
    "Ubuntu-24.04-20261115",
]
#: External networks: the public one, and Berlin's private floating-IP pool.
EXTERNAL = {
    # Not 203.0.113.0/24: some sandboxes resolve package mirrors there (see hypervisor.machine_addresses).
    "public": ("public", "198.51.100.0/24", "198.51.100.100", "198.51.100.250"),
    "dmz-int": ("dmz", "172.16.102.0/24", "172.16.102.100", "172.16.102.250"),
}
#: A de.NBI project comes with a routed network of its own.
PROJECT_NETWORK = ("my-project-network-2", "192.168.2.0/24", "dmz-int")
QUOTAS = {"instances": 20, "cores": 400, "ram": 1024 * 1024, "volumes": 40, "gigabytes": 5000}


def admin_session(s: dict) -> session.Session:
    auth = identity.v3.Password(
        auth_url=f"http://127.0.0.1:{s['port_base'] + 10}/v3",
        username="admin",
        password=s["admin_password"],
        project_name="admin",
        user_domain_id="default",
        project_domain_id="default",
    )
    return session.Session(auth=auth)


def ports(s: dict) -> dict[str, int]:
    b = s["port_base"]
    return {
        "keystone": b + 10,
        "placement": b + 11,
        "glance": b + 12,
        "neutron": b + 13,
        "cinder": b + 14,
        "nova": b + 15,
        "manila": b + 16,
        "swift": b + 20,
    }


def catalog(s: dict) -> None:
    """Service project, users with admin and service roles (2026.1 policies), and endpoints."""
    conn = openstack.connection.Connection(session=admin_session(s), region_name=REGION)
    idn = conn.identity
    service_project = idn.find_project("service") or idn.create_project(name="service", domain_id="default")
    roles = {}
    for name in ("admin", "service", "member", "reader"):
        roles[name] = idn.find_role(name) or idn.create_role(name=name)
    p = ports(s)
    h = "http://127.0.0.1"
    services = {
        "nova": [("compute", "nova", f"{h}:{p['nova']}/v2.1")],
        "placement": [("placement", "placement", f"{h}:{p['placement']}")],
        "glance": [("image", "glance", f"{h}:{p['glance']}")],
        "neutron": [("network", "neutron", f"{h}:{p['neutron']}")],
        "cinder": [
            ("block-storage", "cinderv3", f"{h}:{p['cinder']}/v3/%(project_id)s"),
            ("volumev3", "cinderv3-legacy", f"{h}:{p['cinder']}/v3/%(project_id)s"),
        ],
        "manila": [
            ("sharev2", "manilav2", f"{h}:{p['manila']}/v2"),
            ("shared-file-system", "manila", f"{h}:{p['manila']}/v2"),
        ],
        "swift": [("object-store", "swift", f"{h}:{p['swift']}/v1/AUTH_%(project_id)s")],
    }
    for user, entries in services.items():
        u = idn.find_user(user, domain_id="default") or idn.create_user(
            name=user, password=s["service_password"], domain_id="default"
        )
        for role in ("admin", "service"):
            idn.assign_project_role_to_user(service_project, u, roles[role])
        for stype, sname, url in entries:
            svc = next((x for x in idn.services() if x.type == stype), None) or idn.create_service(
                name=sname, type=stype
            )
            have = {e.interface for e in idn.endpoints(service_id=svc.id)}
            for iface in ("public", "internal", "admin"):
                if iface not in have:
                    idn.create_endpoint(service_id=svc.id, url=url, interface=iface, region_id=REGION)


def gpu_provider(s: dict, host: str) -> None:
    """A nested 'physical GPU' resource provider with VGPU inventory and a trait under the fake compute node,
    so GPU flavors (resources:VGPU=1, trait:CUSTOM_GPU_T4=required) schedule on the fake driver."""
    sess = admin_session(s)
    ep = {"service_type": "placement", "interface": "public", "region_name": REGION}
    hdr = {"OpenStack-API-Version": "placement 1.39"}

    def get(path):
        return sess.get(path, endpoint_filter=ep, headers=hdr).json()

    root = get(f"/resource_providers?name={host}")["resource_providers"][0]
    name = f"{host}_pgpu_0000"
    found = get(f"/resource_providers?name={name}")["resource_providers"]
    child = (
        found[0]
        if found
        else sess.post(
            "/resource_providers",
            json={"name": name, "parent_provider_uuid": root["uuid"]},
            endpoint_filter=ep,
            headers=hdr,
        ).json()
    )
    sess.put(f"/traits/{GPU_TRAIT}", endpoint_filter=ep, headers=hdr, raise_exc=False)
    child = get(f"/resource_providers/{child['uuid']}")
    inv = sess.put(
        f"/resource_providers/{child['uuid']}/inventories",
        endpoint_filter=ep,
        headers=hdr,
        json={"resource_provider_generation": child["generation"], "inventories": {"VGPU": {"total": 8}}},
    ).json()
    sess.put(
        f"/resource_providers/{child['uuid']}/traits",
        endpoint_filter=ep,
        headers=hdr,
        json={"resource_provider_generation": inv["resource_provider_generation"], "traits": [GPU_TRAIT]},
    )


def share_type(s: dict) -> None:
    sess = admin_session(s)
    ep = {"service_type": "sharev2", "interface": "public", "region_name": REGION}
    hdr = {"X-OpenStack-Manila-API-Version": "2.65"}
    types = sess.get("/types", endpoint_filter=ep, headers=hdr).json()["share_types"]
    if not any(t["name"] == "default" for t in types):
        sess.post(
            "/types",
            endpoint_filter=ep,
            headers=hdr,
            json={
                "share_type": {
                    "name": "default",
                    "share_type_access:is_public": True,
                    "extra_specs": {"driver_handles_share_servers": False, "snapshot_support": True},
                }
            },
        )


def ready(s: dict) -> None:
    """Wait until the schedulers can place things: pools known, hypervisor mapped, GPU provider there."""
    sess = admin_session(s)
    checks = {
        "cinder pools": lambda: (
            sess.get(
                "/scheduler-stats/get_pools",
                endpoint_filter={"service_type": "block-storage"},
                raise_exc=False,
            )
            .json()
            .get("pools")
        ),
        "nova hypervisors": lambda: (
            sess.get("/os-hypervisors", endpoint_filter={"service_type": "compute"}, raise_exc=False)
            .json()
            .get("hypervisors")
        ),
        "manila pools": lambda: (
            sess.get(
                "/scheduler-stats/pools",
                endpoint_filter={"service_type": "sharev2"},
                headers={"X-OpenStack-Manila-API-Version": "2.65"},
                raise_exc=False,
            )
            .json()
            .get("pools")
        ),
    }
    t0 = time.monotonic()
    for name, check in checks.items():
        while True:
            try:
                if check():
                    break
            except Exception:  # not answering yet
                pass
            if time.monotonic() - t0 > 180:
                sys.exit(f"{name}: not ready after 180 s")
            time.sleep(0.5)


def seed(s: dict) -> None:
    """A de.NBI-like project: flavors, images, external networks, the project, its network, a user with an
    application credential (written to clouds.yaml), quotas and a share type."""
    work = Path(s["workdir"])
    conn = openstack.connection.Connection(session=admin_session(s), region_name=REGION)
    idn, net = conn.identity, conn.network
    project = idn.find_project(PROJECT) or idn.create_project(
        name=PROJECT, domain_id="default", description="a de.NBI-like project"
    )
    user = idn.find_user(USER, domain_id="default") or idn.create_user(
        name=USER, password=s["admin_password"], domain_id="default", default_project_id=project.id
    )
    for role in ("member", "reader"):
        idn.assign_project_role_to_user(project, user, idn.find_role(role))
    # The admin also works in the project (the tests read back what the user made, and set quotas).
    idn.assign_project_role_to_user(
        project, idn.find_user("admin", domain_id="default"), idn.find_role("admin")
    )

    for name, vcpus, ram, disk, gpu in FLAVORS:
        if conn.compute.find_flavor(name) is None:
            flavor = conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)
            if gpu:
                conn.compute.create_flavor_extra_specs(
                    flavor, {"resources:VGPU": "1", f"trait:{GPU_TRAIT}": "required"}
                )
    for i, name in enumerate(IMAGES):
        if conn.image.find_image(name) is None:
            if i:
                time.sleep(1.1)  # created_at has a resolution of one second
            conn.image.create_image(
                name=name,
                disk_format="raw",
                container_format="bare",
                visibility="public",
                data=b"\0" * 1024,
                os_distro="ubuntu",
                os_version=name.split("-")[1],
            )

    for name, (physnet, cidr, start, end) in EXTERNAL.items():
        if net.find_network(name) is None:
            ext = net.create_network(
                name=name,
                is_router_external=True,
                is_shared=False,
                provider_network_type="flat",
                provider_physical_network=physnet,
            )
            net.create_subnet(
                network_id=ext.id,
                name=f"{name}-subnet",
                cidr=cidr,
                ip_version=4,
                enable_dhcp=False,
                allocation_pools=[{"start": start, "end": end}],
            )

    user_conn = openstack.connection.Connection(
        auth_url=f"http://127.0.0.1:{s['port_base'] + 10}/v3",
        username=USER,
        password=s["admin_password"],
        project_name=PROJECT,
        user_domain_id="default",
        project_domain_id="default",
        region_name=REGION,
    )
    name, cidr, external = PROJECT_NETWORK
    if user_conn.network.find_network(name) is None:
        pnet = user_conn.network.create_network(name=name)
        subnet = user_conn.network.create_subnet(
            network_id=pnet.id, name=f"{name}-subnet", cidr=cidr, ip_version=4
        )
        router = user_conn.network.create_router(
            name=f"{name}-router", external_gateway_info={"network_id": net.find_network(external).id}
        )
        user_conn.network.add_interface_to_router(router, subnet_id=subnet.id)

    conn.set_compute_quotas(
        project.id, **{k: v for k, v in QUOTAS.items() if k in ("instances", "cores", "ram")}
    )
    conn.set_volume_quotas(project.id, volumes=QUOTAS["volumes"], gigabytes=QUOTAS["gigabytes"])
    share_type(s)

    cred = user_conn.identity.create_application_credential(
        user=user_conn.current_user_id, name=f"llmcloud-{int(time.time())}", description="llmcloud tests"
    )
    clouds = {
        "clouds": {
            # What a de.NBI user downloads from Horizon: an application credential for the project.
            "llmcloud-local": {
                "auth_type": "v3applicationcredential",
                "auth": {
                    "auth_url": f"http://127.0.0.1:{s['port_base'] + 10}/v3",
                    "application_credential_id": cred.id,
                    "application_credential_secret": cred.secret,
                },
                "region_name": REGION,
                "interface": "public",
                "identity_api_version": 3,
            },
            # The cloud's operator, for reading back what the user made and for setting quotas.
            "llmcloud-local-admin": {
                "auth": {
                    "auth_url": f"http://127.0.0.1:{s['port_base'] + 10}/v3",
                    "username": "admin",
                    "password": s["admin_password"],
                    "project_name": "admin",
                    "user_domain_name": "Default",
                    "project_domain_name": "Default",
                },
                "region_name": REGION,
                "identity_api_version": 3,
            },
        }
    }
    path = work / "clouds.yaml"
    path.touch(mode=0o600)
    path.write_text(json.dumps(clouds, indent=2) + "\n")  # JSON is YAML


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    action = sys.argv[2]
    if action == "catalog":
        catalog(settings)
    elif action == "gpu":
        gpu_provider(settings, sys.argv[3])
    elif action == "ready":
        ready(settings)
    elif action == "seed":
        seed(settings)
    else:
        sys.exit(f"unknown action {action}")


if __name__ == "__main__":
    main()
