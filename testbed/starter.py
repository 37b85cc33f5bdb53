"""The test cloud's start sequence, in the order the services need each other (for Cloud.up)."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from typing import TYPE_CHECKING

from testbed import hypervisor
from testbed.configs import COMPUTE_HOST
from testbed.processes import (
    DATABASES,
    HERE,
    CloudError,
    Launcher,
    _alive,
    _group,
    _listener_pid,
    _rabbitmq_sbin,
    _sbin,
    _tail,
    _user,
)

if TYPE_CHECKING:
    pass


class ServiceStarter(Launcher):
    """The start sequence, in the order the services need each other."""

    def infrastructure(self) -> None:
        etc, data, logs, run = self.configs.etc, self.configs.data, self.configs.logs, self.configs.run
        my_cnf = etc / "my.cnf"
        my_cnf.write_text(self.configs.mariadb() + (f"user={_user()}\n" if os.geteuid() == 0 else ""))
        self.check(
            [
                "mariadb-install-db",
                f"--defaults-file={my_cnf}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            "MariaDB's data directory",
            "mariadb-install.log",
        )
        self.start("mariadb", [_sbin("mariadbd"), f"--defaults-file={my_cnf}"])
        rabbit = _rabbitmq_sbin()
        (etc / "rabbitmq").mkdir(exist_ok=True)
        (etc / "rabbitmq" / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.ports.rabbitmq}\nloopback_users = none\n"
            "vm_memory_high_watermark.absolute = 512MB\ndisk_free_limit.absolute = 200MB\n"
            f"default_user = openstack\ndefault_pass = {self.settings.rabbit_password}\n"
        )
        (etc / "rabbitmq" / "rabbitmq.conf").chmod(0o600)
        (etc / "rabbitmq" / "enabled_plugins").write_text("[].\n")
        self.rabbit_env = {
            "HOME": str(data / "rabbitmq"),
            "RABBITMQ_NODENAME": f"llmcloud{self.ports.base}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.ports.rabbitmq),
            "RABBITMQ_DIST_PORT": str(self.ports.rabbitmq_dist),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.ports.epmd),
            "RABBITMQ_MNESIA_BASE": str(data / "rabbitmq" / "mnesia"),
            "RABBITMQ_LOG_BASE": str(logs / "rabbitmq"),
            "RABBITMQ_CONFIG_FILE": str(etc / "rabbitmq" / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(etc / "rabbitmq" / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(run / "rabbitmq.daemonpid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "PATH": f"{rabbit}:{os.environ.get('PATH', '')}",
        }
        (data / "rabbitmq").mkdir(exist_ok=True)
        self.start("rabbitmq", [f"{rabbit}/rabbitmq-server"], env=self.rabbit_env)
        self.start(
            "memcached",
            ["memcached", "-l", "127.0.0.1", "-p", str(self.ports.memcached), "-U", "0", "-m", "64"]
            + (["-u", _user()] if os.geteuid() == 0 else []),
        )
        deadline = time.monotonic() + 60
        while self.sql("SELECT 1") != "1":
            if time.monotonic() > deadline or not _alive(int((run / "mariadb.pid").read_text())):
                raise CloudError(
                    f"MariaDB did not start; see {logs / 'mysqld.log'}", _tail(logs / "mysqld.log")
                )
            time.sleep(0.3)
        self.check(
            [f"{rabbit}/rabbitmqctl", "wait", "--timeout", "90", str(run / "rabbitmq.daemonpid")],
            "RabbitMQ",
            "rabbitmq-wait.log",
            env=self.rabbit_env,
        )
        # epmd daemonizes itself; record it so `down` stops it too.
        epmd = _listener_pid(self.ports.epmd)
        if epmd:
            (run / "epmd.pid").write_text(str(epmd))
        statements = [
            f"CREATE USER IF NOT EXISTS 'openstack'@'127.0.0.1' IDENTIFIED BY '{self.settings.db_password}'",
            "GRANT ALL PRIVILEGES ON *.* TO 'openstack'@'127.0.0.1'",
            *(f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8" for db in DATABASES),
        ]
        self.sql_file(";\n".join(statements) + ";\n")

    def identity_and_databases(self) -> None:
        ks = ["--config-file", self.conf("keystone")]
        keystone_manage = str(self.bin / "keystone-manage")
        self.check([keystone_manage, *ks, "db_sync"], "keystone db_sync", "dbsync-keystone.log")
        user = ["--keystone-user", _user(), "--keystone-group", _group()]
        self.check(
            [keystone_manage, *ks, "fernet_setup", *user], "keystone fernet_setup", "keystone-setup.log"
        )
        self.check(
            [keystone_manage, *ks, "credential_setup", *user],
            "keystone credential_setup",
            "keystone-setup.log",
        )
        url = self.settings.keystone_url
        self.check(
            [
                keystone_manage,
                *ks,
                "bootstrap",
                "--bootstrap-admin-url",
                url,
                "--bootstrap-internal-url",
                url,
                "--bootstrap-public-url",
                url,
                "--bootstrap-region-id",
                "RegionOne",
            ],
            "keystone bootstrap",
            "keystone-setup.log",
            # The password through the environment, never on a command line.
            env={"OS_BOOTSTRAP_PASSWORD": self.settings.admin_password},
        )
        self.api(
            "keystone",
            self.ports.keystone,
            "keystone.wsgi.api",
            env={"OS_KEYSTONE_CONFIG_DIR": str(self.configs.etc / "keystone")},
        )
        nova = ["--config-file", self.conf("nova")]
        syncs = {
            "placement": [
                [str(self.bin / "placement-manage"), "--config-file", self.conf("placement"), "db", "sync"]
            ],
            "glance": [
                [
                    str(self.bin / "glance-manage"),
                    "--config-file",
                    self.conf("glance", "glance-api.conf"),
                    "db_sync",
                ]
            ],
            "neutron": [
                [
                    str(self.bin / "neutron-db-manage"),
                    "--config-file",
                    self.conf("neutron"),
                    "--config-file",
                    str(self.configs.etc / "neutron/plugins/ml2/ml2_conf.ini"),
                    "upgrade",
                    "heads",
                ]
            ],
            "cinder": [[str(self.bin / "cinder-manage"), "--config-file", self.conf("cinder"), "db", "sync"]],
            "manila": [[str(self.bin / "manila-manage"), "--config-file", self.conf("manila"), "db", "sync"]],
            "nova": [
                [str(self.bin / "nova-manage"), *nova, "api_db", "sync"],
                [str(self.bin / "nova-manage"), *nova, "cell_v2", "map_cell0"],
                [str(self.bin / "nova-manage"), *nova, "cell_v2", "create_cell", "--name", "cell1"],
                [str(self.bin / "nova-manage"), *nova, "db", "sync"],
            ],
        }

        def run_all(name: str) -> None:
            for argv in syncs[name]:
                self.check(argv, f"{name} database migration", f"dbsync-{name}.log")

        # The schema migrations run in parallel while Keystone starts: about 15 s instead of a minute.
        with concurrent.futures.ThreadPoolExecutor(len(syncs)) as pool:
            futures = [pool.submit(run_all, name) for name in syncs]
            self.wait_http("keystone", self.ports.keystone, "/v3")
            self.bootstrap("catalog")
            for future in futures:
                future.result()

    def services(self) -> None:
        etc, logs = self.configs.etc, self.configs.logs
        ml2 = str(etc / "neutron/plugins/ml2/ml2_conf.ini")
        nova, cinder, manila = self.conf("nova"), self.conf("cinder"), self.conf("manila")
        self.api(
            "placement",
            self.ports.placement,
            "placement.wsgi.api",
            env={"OS_PLACEMENT_CONFIG_DIR": str(etc / "placement")},
        )
        self.api(
            "glance-api",
            self.ports.glance,
            "glance.wsgi.api",
            env={"OS_GLANCE_CONFIG_DIR": str(etc / "glance")},
        )
        self.api(
            "neutron-server",
            self.ports.neutron,
            "neutron.wsgi.api",
            f"--config-file {self.conf('neutron')} --config-file {ml2}",
            env={"OS_NEUTRON_CONFIG_DIR": str(etc / "neutron")},
        )
        self.api(
            "cinder-api",
            self.ports.cinder,
            "cinder.wsgi.api",
            f"--config-file {cinder} --log-file {logs / 'cinder-api.log'}",
        )
        self.api(
            "nova-api",
            self.ports.nova,
            "nova.wsgi.osapi_compute",
            f"--config-file {nova} --log-file {logs / 'nova-api.log'}",
            env={"OS_NOVA_CONFIG_DIR": str(etc / "nova")},
        )
        self.api(
            "manila-api",
            self.ports.manila,
            "manila.wsgi.api",
            f"--config-file {manila} --log-file {logs / 'manila-api.log'}",
        )
        b = self.bin
        self.start(
            "nova-conductor",
            [
                str(b / "nova-conductor"),
                "--config-file",
                nova,
                "--log-file",
                str(logs / "nova-conductor.log"),
            ],
        )
        self.start(
            "nova-scheduler",
            [
                str(b / "nova-scheduler"),
                "--config-file",
                nova,
                "--log-file",
                str(logs / "nova-scheduler.log"),
            ],
        )
        self.start(
            "cinder-volume",
            [
                str(b / "cinder-volume"),
                "--config-file",
                cinder,
                "--log-file",
                str(logs / "cinder-volume.log"),
            ],
        )
        self.start(
            "manila-share",
            [str(b / "manila-share"), "--config-file", manila, "--log-file", str(logs / "manila-share.log")],
        )
        self.swift()
        for name, port in (
            ("placement", self.ports.placement),
            ("glance-api", self.ports.glance),
            ("neutron-server", self.ports.neutron),
            ("cinder-api", self.ports.cinder),
            ("nova-api", self.ports.nova),
            ("manila-api", self.ports.manila),
        ):
            self.wait_http(name, port)
        self.wait_http("swift-proxy", self.ports.swift_proxy, "/healthcheck")
        # nova-compute after the conductor consumes (else it sleeps 10 s waiting for it); the schedulers of
        # Cinder and Manila after their backends report (else their first requests wait up to 60 s).
        self.wait_sql("SELECT count(*) FROM nova.services WHERE `binary`='nova-conductor'", "nova-conductor")
        self.start(
            "nova-compute",
            [
                str(b / "nova-compute"),
                "--config-file",
                self.conf("nova", "nova-compute.conf"),
                "--log-file",
                str(logs / "nova-compute.log"),
            ],
        )
        self.wait_sql(
            "SELECT count(*) FROM cinder.services WHERE topic='cinder-volume' AND updated_at IS NOT NULL",
            "cinder-volume reporting",
        )
        self.start(
            "cinder-scheduler",
            [
                str(b / "cinder-scheduler"),
                "--config-file",
                cinder,
                "--log-file",
                str(logs / "cinder-scheduler.log"),
            ],
        )
        self.wait_sql(
            "SELECT count(*) FROM manila.services WHERE topic='manila-share' AND updated_at IS NOT NULL",
            "manila-share reporting",
        )
        self.start(
            "manila-scheduler",
            [
                str(b / "manila-scheduler"),
                "--config-file",
                manila,
                "--log-file",
                str(logs / "manila-scheduler.log"),
            ],
        )

    def swift(self) -> None:
        sw = self.configs.etc / "swift"
        builder = str(self.bin / "swift-ring-builder")
        for kind in ("account", "container", "object"):
            port = getattr(self.ports, f"swift_{kind}")
            ring = str(sw / f"{kind}.builder")
            self.check([builder, ring, "create", "8", "1", "1"], "swift ring", "swift-rings.log")
            self.check(
                [builder, ring, "add", f"r1z1-127.0.0.1:{port}/d1", "1"], "swift ring", "swift-rings.log"
            )
            self.check([builder, ring, "rebalance"], "swift ring", "swift-rings.log")
        sock = self.configs.run / "swift-log.sock"
        self.start(
            "swift-log",
            [
                str(self.bin / "python"),
                str(HERE / "syslog_sink.py"),
                str(sock),
                str(self.configs.logs / "swift.log"),
            ],
        )
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for kind in ("account", "container", "object"):
            self.start(
                f"swift-{kind}", [str(self.bin / f"swift-{kind}-server"), str(sw / f"{kind}-server.conf")]
            )
        self.start("swift-proxy", [str(self.bin / "swift-proxy-server"), str(sw / "proxy-server.conf")])

    def hypervisor(self) -> None:
        # llmcloud's own interpreter (Docker's and OpenStack's SDKs), not the services' venv.
        pid = self.start(
            "hypervisor",
            [sys.executable, "-m", "testbed.hypervisor", str(self.cloud.work)],
            {"PYTHONPATH": ""},
        )
        status = self.cloud.work / hypervisor.STATUS_FILE
        deadline = time.monotonic() + 60
        while not status.is_file():
            if not _alive(pid) or time.monotonic() > deadline:
                log = self.cloud.logs / "hypervisor.out"
                raise CloudError(f"the hypervisor did not start; see {log}", _tail(log))
            time.sleep(0.5)

    def ready(self) -> None:
        nova = ["--config-file", self.conf("nova")]
        self.wait_sql("SELECT count(*) FROM nova.compute_nodes WHERE deleted=0", "the fake compute node")
        self.check(
            [str(self.bin / "nova-manage"), *nova, "cell_v2", "discover_hosts"],
            "nova discover_hosts",
            "nova-discover.log",
        )
        self.wait_sql("SELECT count(*) FROM nova_api.host_mappings", "the compute host mapping")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.bootstrap("gpu", COMPUTE_HOST)
                break
            except CloudError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        self.bootstrap("ready")


# ---------------------------------------------------------------- helpers
