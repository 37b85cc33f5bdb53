"""The service configs of the local test cloud, as data: one function per service, rendered to INI files.

Every listener is on 127.0.0.1 at a port of `Ports`; every path is below the cloud's work dir.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

Sections = dict[str, dict[str, Any]]

#: The fake compute node's name; the GPU resource provider hangs below it.
COMPUTE_HOST = "compute1"
REGION = "RegionOne"


@dataclass(frozen=True)
class Ports:
    """Every port the cloud listens on (127.0.0.1 only), as offsets from one base port."""

    base: int = 27100

    OFFSETS: ClassVar[dict[str, int]] = {
        "mariadb": 0,
        "rabbitmq": 1,
        "rabbitmq_dist": 2,
        "epmd": 3,
        "memcached": 4,
        "keystone": 10,
        "placement": 11,
        "glance": 12,
        "neutron": 13,
        "cinder": 14,
        "nova": 15,
        "manila": 16,
        "swift_proxy": 20,
        "swift_account": 21,
        "swift_container": 22,
        "swift_object": 23,
        "jumphost": 24,  # SSH of the site jump host on `dmz-int` (testbed/hypervisor.py)
    }

    def __getattr__(self, name: str) -> int:
        if name in Ports.OFFSETS:
            return self.base + Ports.OFFSETS[name]
        raise AttributeError(name)

    def all(self) -> dict[str, int]:
        return {name: self.base + offset for name, offset in Ports.OFFSETS.items()}


@dataclass(frozen=True)
class Settings:
    """What a running cloud is: its ports and generated passwords (kept in the work dir, mode 0600)."""

    workdir: str
    venv: str
    port_base: int
    db_password: str
    service_password: str
    admin_password: str
    rabbit_password: str

    @property
    def ports(self) -> Ports:
        return Ports(self.port_base)

    @property
    def keystone_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.keystone}/v3"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def render_ini(sections: Sections) -> str:
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                value = str(value).lower()
            out.append(f"{key} = {value}")
        out.append("")
    return "\n".join(out)


class Configs:
    """Writes every service's config file below <workdir>/etc."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ports = settings.ports
        self.work = Path(settings.workdir)
        self.etc = self.work / "etc"
        self.data = self.work / "data"
        self.logs = self.work / "logs"
        self.run = self.work / "run"
        self.venv = Path(settings.venv)

    # -- shared pieces
    def db(self, name: str) -> str:
        return f"mysql+pymysql://openstack:{self.settings.db_password}@127.0.0.1:{self.ports.mariadb}/{name}?charset=utf8"

    @property
    def transport_url(self) -> str:
        return f"rabbit://openstack:{self.settings.rabbit_password}@127.0.0.1:{self.ports.rabbitmq}/"

    @property
    def memcached(self) -> str:
        return f"127.0.0.1:{self.ports.memcached}"

    def service_auth(self, user: str, **extra: Any) -> dict[str, Any]:
        return {
            "auth_url": f"http://127.0.0.1:{self.ports.keystone}",
            "auth_type": "password",
            "project_domain_name": "Default",
            "user_domain_name": "Default",
            "project_name": "service",
            "username": user,
            "password": self.settings.service_password,
            **extra,
        }

    def authtoken(self, user: str) -> dict[str, Any]:
        return {
            "www_authenticate_uri": f"http://127.0.0.1:{self.ports.keystone}",
            **self.service_auth(user),
            "service_token_roles_required": True,
            "memcached_servers": self.memcached,
        }

    def locks(self) -> dict[str, Any]:
        return {"lock_path": self.data / "locks"}

    def write(self) -> None:
        for sub in (
            "keystone",
            "placement",
            "glance",
            "nova",
            "neutron/plugins/ml2",
            "cinder",
            "manila",
            "swift",
        ):
            (self.etc / sub).mkdir(parents=True, exist_ok=True)
        for sub in (
            "glance/images",
            "glance/staging",
            "glance/tasks",
            "nova",
            "neutron",
            "cinder",
            "manila",
            "locks",
            "swift/node/d1",
        ):
            (self.data / sub).mkdir(parents=True, exist_ok=True)
        files: dict[str, Sections] = {
            "keystone/keystone.conf": self.keystone(),
            "placement/placement.conf": self.placement(),
            "glance/glance-api.conf": self.glance(),
            "nova/nova.conf": self.nova(),
            "nova/nova-compute.conf": self.nova(with_database=False),
            "neutron/neutron.conf": self.neutron(),
            "neutron/plugins/ml2/ml2_conf.ini": self.ml2(),
            "cinder/cinder.conf": self.cinder(),
            "manila/manila.conf": self.manila(),
            "swift/swift.conf": self.swift(),
            "swift/proxy-server.conf": self.swift_proxy(),
        }
        for kind in ("account", "container", "object"):
            files[f"swift/{kind}-server.conf"] = self.swift_storage(kind)
        for name, sections in files.items():
            path = self.etc / name
            path.write_text(render_ini(sections))
            path.chmod(0o600)
        # The API pipelines ship with each service; the services find them next to their config.
        for service, paste in (
            ("glance", "glance-api-paste.ini"),
            ("nova", "api-paste.ini"),
            ("neutron", "api-paste.ini"),
            ("cinder", "api-paste.ini"),
            ("manila", "api-paste.ini"),
        ):
            (self.etc / service / paste).write_text((self.venv / "etc" / service / paste).read_text())

    # -- one function per service
    def keystone(self) -> Sections:
        keys = self.etc / "keystone"
        return {
            "DEFAULT": {"log_file": self.logs / "keystone.log"},
            "database": {"connection": self.db("keystone")},
            "token": {"provider": "fernet"},
            "fernet_tokens": {"key_repository": keys / "fernet-keys"},
            "fernet_receipts": {"key_repository": keys / "fernet-keys"},
            "credential": {"key_repository": keys / "credential-keys"},
            "cache": {"enabled": True, "backend": "dogpile.cache.memory"},
        }

    def placement(self) -> Sections:
        return {
            "DEFAULT": {"log_file": self.logs / "placement.log"},
            "placement_database": {"connection": self.db("placement")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": self.authtoken("placement"),
        }

    def glance(self) -> Sections:
        glance = self.data / "glance"
        return {
            "DEFAULT": {
                "log_file": self.logs / "glance-api.log",
                "workers": 1,
                "enabled_backends": "fs:file",
                "image_cache_dir": glance / "cache",
            },
            "glance_store": {"default_backend": "fs"},
            "fs": {"filesystem_store_datadir": glance / "images"},
            "os_glance_staging_store": {"filesystem_store_datadir": glance / "staging"},
            "os_glance_tasks_store": {"filesystem_store_datadir": glance / "tasks"},
            "database": {"connection": self.db("glance")},
            "paste_deploy": {"flavor": "keystone"},
            "oslo_concurrency": self.locks(),
            "keystone_authtoken": self.authtoken("glance"),
        }

    def nova(self, with_database: bool = True) -> Sections:
        sections: Sections = {
            "DEFAULT": {
                "host": COMPUTE_HOST,
                "my_ip": "127.0.0.1",
                "transport_url": self.transport_url,
                # Servers become ACTIVE and nothing boots: the fake virt driver.
                "compute_driver": "fake.FakeDriver",
                "graceful_shutdown_timeout": 3,
                "state_path": self.data / "nova",
                "instances_path": self.data / "nova" / "instances",
                "osapi_compute_workers": 1,
                "metadata_workers": 1,
                "enabled_apis": "osapi_compute",
                "use_rootwrap_daemon": False,
                "allow_resize_to_same_host": True,
                "block_device_allocate_retries_interval": 1,
                # No L2 agent reports the VIF as plugged: do not wait for it.
                "vif_plugging_is_fatal": False,
                "vif_plugging_timeout": 0,
            },
            "api": {"auth_strategy": "keystone"},
            "api_database": {"connection": self.db("nova_api")},
            "database": {"connection": self.db("nova")},
            "conductor": {"workers": 1},
            "scheduler": {"workers": 1, "discover_hosts_in_cells_interval": 5},
            "oslo_concurrency": self.locks(),
            "oslo_messaging_notifications": {"driver": "noop"},
            "vnc": {"enabled": False},
            "keystone_authtoken": self.authtoken("nova"),
            "placement": self.service_auth("placement", region_name=REGION),
            "neutron": self.service_auth("neutron", region_name=REGION, default_floating_pool="public"),
            "cinder": {**self.service_auth("cinder", region_name=REGION), "os_region_name": REGION},
            "glance": {"region_name": REGION},
            "service_user": {"send_service_user_token": True, **self.service_auth("nova")},
        }
        if not with_database:
            # nova-compute gets no database credentials, as in a real deployment.
            del sections["api_database"], sections["database"]
        return sections

    def neutron(self) -> Sections:
        return {
            "DEFAULT": {
                "log_file": self.logs / "neutron-server.log",
                "core_plugin": "ml2",
                "service_plugins": "router",
                "auth_strategy": "keystone",
                "transport_url": self.transport_url,
                "state_path": self.data / "neutron",
                "api_workers": 1,
                "rpc_workers": 0,
                "rpc_state_report_workers": 0,
                "dhcp_agent_notification": False,
                "notify_nova_on_port_status_changes": True,
                "notify_nova_on_port_data_changes": True,
                "allow_overlapping_ips": True,
            },
            "database": {"connection": self.db("neutron")},
            "oslo_concurrency": self.locks(),
            "agent": {"root_helper": "true"},
            "keystone_authtoken": self.authtoken("neutron"),
            "nova": self.service_auth("nova", region_name=REGION),
        }

    @staticmethod
    def ml2() -> Sections:
        return {
            "ml2": {
                "type_drivers": "flat,vlan,vxlan",
                "tenant_network_types": "vxlan",
                "mechanism_drivers": "llmcloud_bindall",
                "extension_drivers": "port_security",
            },
            # Two external networks, as at de.NBI Berlin: the public one and a private floating-IP pool.
            "ml2_type_flat": {"flat_networks": "public,dmz"},
            "ml2_type_vxlan": {"vni_ranges": "1:10000"},
            "securitygroup": {"enable_security_group": True},
        }

    def cinder(self) -> Sections:
        helper = f"{self.venv}/bin/privsep-helper --config-file {self.etc}/cinder/cinder.conf"
        return {
            "DEFAULT": {
                "transport_url": self.transport_url,
                "auth_strategy": "keystone",
                "my_ip": "127.0.0.1",
                "state_path": self.data / "cinder",
                "osapi_volume_workers": 1,
                "enabled_backends": "test",
                "default_volume_type": "__DEFAULT__",
                "graceful_shutdown_timeout": 3,
                "image_conversion_dir": self.data / "cinder" / "conversion",
                "api_paste_config": self.etc / "cinder" / "api-paste.ini",
            },
            # Privsep without sudo: the cloud runs as one user.
            "cinder_sys_admin": {"helper_command": helper},
            "privsep_osbrick": {"helper_command": helper},
            "test": {
                "volume_driver": "llmcloud_cloud_glue.cinder_driver.TestVolumeDriver",
                "volume_backend_name": "test",
            },
            "database": {"connection": self.db("cinder")},
            "oslo_concurrency": self.locks(),
            "keystone_authtoken": self.authtoken("cinder"),
            "nova": self.service_auth("nova", region_name=REGION),
            "service_user": {"send_service_user_token": True, **self.service_auth("cinder")},
        }

    def manila(self) -> Sections:
        conf = self.etc / "manila" / "manila.conf"
        return {
            "DEFAULT": {
                "transport_url": self.transport_url,
                "auth_strategy": "keystone",
                "my_ip": "127.0.0.1",
                "state_path": self.data / "manila",
                "osapi_share_workers": 1,
                "api_paste_config": self.etc / "manila" / "api-paste.ini",
                "enabled_share_backends": "dummy",
                "graceful_shutdown_timeout": 3,
                "enabled_share_protocols": "NFS,CIFS",
                "default_share_type": "default",
            },
            # Manila's own dummy driver (shipped in its tests): shares exist in the API, nothing is exported.
            "dummy": {
                "share_driver": "manila.tests.share.drivers.dummy.DummyDriver",
                "driver_handles_share_servers": False,
                "share_backend_name": "dummy",
                "dummy_driver_default_driver_method_delay": 0,
            },
            "manila_sys_admin": {"helper_command": f"{self.venv}/bin/privsep-helper --config-file {conf}"},
            "database": {"connection": self.db("manila")},
            "oslo_concurrency": self.locks(),
            "keystone_authtoken": self.authtoken("manila"),
        }

    @staticmethod
    def swift() -> Sections:
        return {
            "swift-hash": {"swift_hash_path_prefix": "llmcloud", "swift_hash_path_suffix": "llmcloud"},
            "storage-policy:0": {"name": "Policy-0", "default": "yes"},
        }

    def swift_storage(self, kind: str) -> Sections:
        return {
            "DEFAULT": {
                "bind_ip": "127.0.0.1",
                "bind_port": getattr(self.ports, f"swift_{kind}"),
                "workers": 0,
                "devices": self.data / "swift" / "node",
                "mount_check": False,
                "swift_dir": self.etc / "swift",
                "log_name": f"{kind}-server",
                # Swift logs only to syslog: a socket of ours, written to logs/swift.log.
                "log_address": self.run / "swift-log.sock",
            },
            "pipeline:main": {"pipeline": f"{kind}-server"},
            f"app:{kind}-server": {"use": f"egg:swift#{kind}"},
        }

    def swift_proxy(self) -> Sections:
        return {
            "DEFAULT": {
                "bind_ip": "127.0.0.1",
                "bind_port": self.ports.swift_proxy,
                "workers": 0,
                "swift_dir": self.etc / "swift",
                "log_name": "proxy-server",
                "log_address": self.run / "swift-log.sock",
            },
            # No proxy-logging: its access logger opens a UDP syslog socket on 0.0.0.0.
            "pipeline:main": {"pipeline": "catch_errors cache authtoken keystoneauth proxy-server"},
            "app:proxy-server": {"use": "egg:swift#proxy", "account_autocreate": True},
            "filter:catch_errors": {"use": "egg:swift#catch_errors"},
            "filter:cache": {"use": "egg:swift#memcache", "memcache_servers": self.memcached},
            "filter:keystoneauth": {"use": "egg:swift#keystoneauth", "operator_roles": "admin, member"},
            "filter:authtoken": {
                "paste.filter_factory": "keystonemiddleware.auth_token:filter_factory",
                **self.authtoken("swift"),
                "delay_auth_decision": True,
            },
        }

    def mariadb(self) -> str:
        return render_ini(
            {
                "client": {"socket": self.run / "mysql.sock", "user": "root"},
                "mysqld": {
                    "datadir": self.data / "mysql",
                    "socket": self.run / "mysql.sock",
                    "pid-file": self.run / "mysqld.daemonpid",
                    "log-error": self.logs / "mysqld.log",
                    "bind-address": "127.0.0.1",
                    "port": self.ports.mariadb,
                    "skip-name-resolve": 1,
                    "max_connections": 1000,
                    # Throwaway data: no durability, fast schema migrations.
                    "performance_schema": "OFF",
                    "innodb_buffer_pool_size": "128M",
                    "innodb_log_file_size": "64M",
                    "innodb_flush_log_at_trx_commit": 0,
                    "innodb_doublewrite": 0,
                    "character-set-server": "utf8mb3",
                    "collation-server": "utf8mb3_general_ci",
                },
            }
        )
