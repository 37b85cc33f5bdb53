"""The local test cloud: real OpenStack services (Keystone, Placement, Nova with the fake virt driver,
Neutron, Glance, Cinder, Manila, Swift) from pinned PyPI packages, MariaDB, RabbitMQ and memcached from
Debian.

Every listener is on 127.0.0.1; state, logs, pids and configs live below one work dir. `up` starts from a
clean state in about a minute; `down` stops every process it started and removes the state.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.errors import UserError
from llmcloud.local.system import ensure_packages, port_taken
from llmcloud.progress import Progress
from testbed import hypervisor
from testbed.configs import COMPUTE_HOST, Configs, Ports, Settings
from testbed.venv import services_venv

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = REPO_ROOT / ".cloud"
DATABASES = (
    "keystone",
    "placement",
    "glance",
    "neutron",
    "cinder",
    "nova_api",
    "nova",
    "nova_cell0",
    "manila",
)
DEBIAN_PACKAGES = {
    "mariadbd": "mariadb-server",
    "rabbitmq-server": "rabbitmq-server",
    "memcached": "memcached",
    "qemu-img": "qemu-utils",
}


class CloudError(UserError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    alive: bool
    port: int | None
    log: str


class Cloud:
    def __init__(self, workdir: Path = DEFAULT_WORKDIR):
        self.work = workdir.resolve()
        self.run_dir = self.work / "run"
        self.logs = self.work / "logs"
        self.settings_file = self.work / "settings.json"

    # ---------------------------------------------------------------- state
    @property
    def clouds_yaml(self) -> Path:
        return self.work / "clouds.yaml"

    def settings(self) -> Settings:
        if not self.settings_file.exists():
            raise CloudError(f"no local cloud in {self.work}", "start one: llmcloud-testbed up")
        return Settings.from_dict(json.loads(self.settings_file.read_text()))

    def services(self) -> list[Service]:
        if not self.run_dir.is_dir():
            return []
        ports = self.settings().ports.all() if self.settings_file.exists() else {}
        out = []
        for pidfile in sorted(self.run_dir.glob("*.pid")):
            name = pidfile.stem
            pid = int(pidfile.read_text().strip() or 0)
            port_key = name.replace("-server", "").replace("-api", "").replace("-", "_")
            out.append(Service(name, pid, _alive(pid), ports.get(port_key), str(self.logs / f"{name}.out")))
        return out

    def is_up(self) -> bool:
        services = self.services()
        return bool(services) and all(s.alive for s in services)

    # ---------------------------------------------------------------- up
    #: How long `up`, `down` or `start_hypervisor` waits for another one on the same work dir (a cold `up`
    #: on a busy machine takes minutes); past it, the error names the lock.
    lock_wait_s: float = 1200.0

    @contextlib.contextmanager
    def _exclusive(self, progress: Progress | None = None) -> Iterator[None]:
        """One `up` or `down` at a time per work dir: two would start or stop each other's processes.

        A second caller waits for the first (then usually finds the cloud up), up to ``lock_wait_s``."""
        self.work.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.work / ".lock", "w") as lock:
            deadline = time.monotonic() + self.lock_wait_s
            waiting = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CloudError(
                            f"another `llmcloud-testbed up` or `down` has been working on {self.work} "
                            f"for more than {self.lock_wait_s:.0f} s",
                            "wait for it to finish (or stop it), then try again",
                        ) from None
                    if not waiting:
                        (progress or Progress("llmcloud-testbed")).log(
                            f"another `llmcloud-testbed up` or `down` works on {self.work}: waiting for it"
                        )
                        waiting = True
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            yield

    def up(
        self,
        port_base: int = Ports.base,
        progress: Progress | None = None,
        install_packages: bool = True,
        boot: bool = True,
    ) -> Settings:
        """Start the cloud; with ``boot``, its hypervisor too: every ACTIVE server boots as a target host."""
        with self._exclusive(progress):
            return self._up(port_base, progress, install_packages, boot)

    def _up(self, port_base: int, progress: Progress | None, install_packages: bool, boot: bool) -> Settings:
        progress = progress or Progress("llmcloud-testbed up")
        if self.is_up():
            progress.log(f"the local cloud in {self.work} is already up")
            return self.settings()
        if install_packages:
            with progress.step("Debian packages (MariaDB, RabbitMQ, memcached, qemu-utils)"):
                ensure_packages(DEBIAN_PACKAGES)
        elif missing := [cmd for cmd in DEBIAN_PACKAGES if not _which(cmd)]:
            raise CloudError(
                f"{', '.join(missing)} not installed", f"apt-get install {' '.join(DEBIAN_PACKAGES.values())}"
            )
        with progress.step("OpenStack services' venv (cached by a hash of its pins)"):
            venv = services_venv(progress)
        if boot:
            with progress.step("the VM image (Debian 12, systemd, cloud-init; cached)"):
                from llmcloud.local import image, system

                image.ensure_vm(system.docker_client(), progress)
        ports = Ports(port_base)
        self._down(quiet=True)
        _check_ports_free(ports)
        self.work.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("data", "logs", "run", "etc"):
            shutil.rmtree(self.work / sub, ignore_errors=True)
            (self.work / sub).mkdir(mode=0o700)
        # Stacks of an earlier cloud name resources this one never had: their state goes with it.
        shutil.rmtree(self.work / "pulumi", ignore_errors=True)
        settings = Settings(
            workdir=str(self.work),
            venv=str(venv),
            port_base=port_base,
            db_password=secrets.token_hex(16),
            service_password=secrets.token_hex(16),
            admin_password=secrets.token_hex(16),
            rabbit_password=secrets.token_hex(16),
        )
        self.settings_file.touch(mode=0o600)
        self.settings_file.write_text(json.dumps(settings.to_dict(), indent=2))
        configs = Configs(settings)
        configs.write()
        starter = _Starter(self, settings, configs)
        try:
            with progress.step("MariaDB, RabbitMQ, memcached"):
                starter.infrastructure()
            with progress.step("Keystone and the databases of every service"):
                starter.identity_and_databases()
            with progress.step("APIs and workers (Placement, Glance, Neutron, Cinder, Nova, Manila, Swift)"):
                starter.services()
            with progress.step("schedulers ready, GPU resource provider"):
                starter.ready()
            with progress.step("seed: a de.NBI-like project, flavors, images, networks, clouds.yaml"):
                starter.bootstrap("seed")
            if boot:
                self._start_hypervisor(settings, configs, progress)
        except CloudError:
            self._down(quiet=True, keep_state=True)
            raise
        progress.log(f"clouds.yaml: {self.clouds_yaml} (clouds llmcloud-local, llmcloud-local-admin)")
        return settings

    def start_hypervisor(self, progress: Progress | None = None) -> None:
        """Start the hypervisor of a cloud started without it (`up --no-boot`); nothing if it runs."""
        with self._exclusive(progress):
            settings = self.settings()
            self._start_hypervisor(settings, Configs(settings), progress or Progress("hypervisor"))

    def _start_hypervisor(self, settings: Settings, configs: Configs, progress: Progress) -> None:
        if any(s.name == "hypervisor" and s.alive for s in self.services()):
            return
        from llmcloud.local import image, system

        image.ensure_vm(system.docker_client(), progress)
        with progress.step("hypervisor: a target host for every ACTIVE server, the site jump host"):
            _Starter(self, settings, configs).hypervisor()

    def down(self, quiet: bool = False, keep_state: bool = False) -> int:
        """Stop every process the cloud started (TERM to its process group, then KILL)."""
        with self._exclusive():
            return self._down(quiet, keep_state)

    # ---------------------------------------------------------------- down
    def _down(self, quiet: bool = False, keep_state: bool = False) -> int:
        services = [s for s in self.services() if s.alive or _group_alive(s.pid)]
        for s in services:
            _signal_group(s.pid, signal.SIGTERM)
        # Wait for whole process groups: a service's forked workers can outlive its first process.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(s.pid) or _group_alive(s.pid) for s in services):
            time.sleep(0.2)
        for s in services:
            if _alive(s.pid) or _group_alive(s.pid):
                _signal_group(s.pid, signal.SIGKILL)
        for pidfile in self.run_dir.glob("*.pid") if self.run_dir.is_dir() else []:
            pidfile.unlink()
        # The VMs go with the cloud; their volumes' files stay with the state (or go with it below).
        vms = hypervisor.teardown(self.work)
        if not keep_state:
            for sub in ("data", "run", "etc"):
                shutil.rmtree(self.work / sub, ignore_errors=True)
            self.settings_file.unlink(missing_ok=True)
            self.clouds_yaml.unlink(missing_ok=True)
        if not quiet:
            print(
                f"stopped {len(services)} processes and {vms} target hosts of the local cloud in {self.work}"
            )
        return len(services)


class _Starter:
    """The start sequence, in the order the services need each other."""

    def __init__(self, cloud: Cloud, settings: Settings, configs: Configs):
        self.cloud = cloud
        self.s = settings
        self.c = configs
        self.p = settings.ports
        self.venv = Path(settings.venv)
        self.bin = self.venv / "bin"

    # -- processes
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        log = self.cloud.logs / f"{name}.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=HERE,
                env={**os.environ, "PYTHONPATH": str(HERE), **(env or {})},
                start_new_session=True,  # its own process group: `down` stops its workers too
            )
        (self.cloud.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def check(self, argv: list[str], what: str, log: str, env: dict[str, str] | None = None) -> None:
        path = self.cloud.logs / log
        with open(path, "ab") as out:
            result = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=HERE
            )
        if result.returncode != 0:
            raise CloudError(f"{what} failed (exit {result.returncode}); see {path}", _tail(path))

    def api(
        self, name: str, port: int, module: str, args: str = "", env: dict[str, str] | None = None
    ) -> None:
        self.start(
            name,
            [
                str(self.bin / "gunicorn"),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--timeout",
                "300",
                # One request per connection. The OpenStack provider keeps idle connections without limit and
                # does not retry a POST, so a server that closes idle ones (gunicorn: after 2 s) races the
                # provider's next request on them: "connection reset by peer" fails `pulumi up` now and then.
                "--keep-alive",
                "0",
                "--name",
                name,
                "--access-logfile",
                str(self.cloud.logs / f"{name}-access.log"),
                "wsgi_host:application",
            ],
            env={"WSGI_NAME": name, "WSGI_TARGET": module, "WSGI_ARGV": args, **(env or {})},
        )

    def wait_http(self, name: str, port: int, path: str = "/", timeout: float = 120) -> None:
        pidfile = self.cloud.run_dir / f"{name}.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).close()
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                pass
            if not _alive(int(pidfile.read_text())):
                log = self.cloud.logs / f"{name}.out"
                raise CloudError(f"{name} exited while starting; see {log}", _tail(log))
            time.sleep(0.3)
        raise CloudError(
            f"{name} did not answer on 127.0.0.1:{port} within {timeout:.0f} s",
            f"see {self.cloud.logs / (name + '.out')}",
        )

    def sql(self, statement: str) -> str:
        return subprocess.run(
            ["mariadb", f"--defaults-file={self.c.etc / 'my.cnf'}", "-N", "-e", statement],
            capture_output=True,
            text=True,
        ).stdout.strip()

    def wait_sql(self, statement: str, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sql(statement) not in ("", "0"):
                return
            time.sleep(0.3)
        raise CloudError(f"{what} not seen within {timeout:.0f} s", f"see the logs in {self.cloud.logs}")

    def bootstrap(self, *args: str) -> None:
        self.check(
            [str(self.bin / "python"), str(HERE / "bootstrap.py"), str(self.cloud.settings_file), *args],
            f"bootstrap {' '.join(args)}",
            "bootstrap.log",
        )

    def conf(self, service: str, name: str | None = None) -> str:
        return str(self.c.etc / service / (name or f"{service}.conf"))

    # -- the sequence
    def infrastructure(self) -> None:
        etc, data, logs, run = self.c.etc, self.c.data, self.c.logs, self.c.run
        my_cnf = etc / "my.cnf"
        my_cnf.write_text(self.c.mariadb() + (f"user={_user()}\n" if os.geteuid() == 0 else ""))
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
            f"listeners.tcp.1 = 127.0.0.1:{self.p.rabbitmq}\nloopback_users = none\n"
            "vm_memory_high_watermark.absolute = 512MB\ndisk_free_limit.absolute = 200MB\n"
            f"default_user = openstack\ndefault_pass = {self.s.rabbit_password}\n"
        )
        (etc / "rabbitmq" / "rabbitmq.conf").chmod(0o600)
        (etc / "rabbitmq" / "enabled_plugins").write_text("[].\n")
        self.rabbit_env = {
            "HOME": str(data / "rabbitmq"),
            "RABBITMQ_NODENAME": f"llmcloud{self.p.base}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.p.rabbitmq),
            "RABBITMQ_DIST_PORT": str(self.p.rabbitmq_dist),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.p.epmd),
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
            ["memcached", "-l", "127.0.0.1", "-p", str(self.p.memcached), "-U", "0", "-m", "64"]
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
        epmd = _listener_pid(self.p.epmd)
        if epmd:
            (run / "epmd.pid").write_text(str(epmd))
        statements = [
            f"CREATE USER IF NOT EXISTS 'openstack'@'127.0.0.1' IDENTIFIED BY '{self.s.db_password}'",
            "GRANT ALL PRIVILEGES ON *.* TO 'openstack'@'127.0.0.1'",
            *(f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8" for db in DATABASES),
        ]
        self.sql_file(";\n".join(statements) + ";\n")

    def sql_file(self, script: str) -> None:
        # Through stdin, so the password is never on a command line.
        result = subprocess.run(
            ["mariadb", f"--defaults-file={self.c.etc / 'my.cnf'}"],
            input=script,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CloudError(f"creating the databases failed: {result.stderr.strip()}", "see the message")

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
        url = self.s.keystone_url
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
            env={"OS_BOOTSTRAP_PASSWORD": self.s.admin_password},
        )
        self.api(
            "keystone",
            self.p.keystone,
            "keystone.wsgi.api",
            env={"OS_KEYSTONE_CONFIG_DIR": str(self.c.etc / "keystone")},
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
                    str(self.c.etc / "neutron/plugins/ml2/ml2_conf.ini"),
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
            self.wait_http("keystone", self.p.keystone, "/v3")
            self.bootstrap("catalog")
            for future in futures:
                future.result()

    def services(self) -> None:
        etc, logs = self.c.etc, self.c.logs
        ml2 = str(etc / "neutron/plugins/ml2/ml2_conf.ini")
        nova, cinder, manila = self.conf("nova"), self.conf("cinder"), self.conf("manila")
        self.api(
            "placement",
            self.p.placement,
            "placement.wsgi.api",
            env={"OS_PLACEMENT_CONFIG_DIR": str(etc / "placement")},
        )
        self.api(
            "glance-api", self.p.glance, "glance.wsgi.api", env={"OS_GLANCE_CONFIG_DIR": str(etc / "glance")}
        )
        self.api(
            "neutron-server",
            self.p.neutron,
            "neutron.wsgi.api",
            f"--config-file {self.conf('neutron')} --config-file {ml2}",
            env={"OS_NEUTRON_CONFIG_DIR": str(etc / "neutron")},
        )
        self.api(
            "cinder-api",
            self.p.cinder,
            "cinder.wsgi.api",
            f"--config-file {cinder} --log-file {logs / 'cinder-api.log'}",
        )
        self.api(
            "nova-api",
            self.p.nova,
            "nova.wsgi.osapi_compute",
            f"--config-file {nova} --log-file {logs / 'nova-api.log'}",
            env={"OS_NOVA_CONFIG_DIR": str(etc / "nova")},
        )
        self.api(
            "manila-api",
            self.p.manila,
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
            ("placement", self.p.placement),
            ("glance-api", self.p.glance),
            ("neutron-server", self.p.neutron),
            ("cinder-api", self.p.cinder),
            ("nova-api", self.p.nova),
            ("manila-api", self.p.manila),
        ):
            self.wait_http(name, port)
        self.wait_http("swift-proxy", self.p.swift_proxy, "/healthcheck")
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
        sw = self.c.etc / "swift"
        builder = str(self.bin / "swift-ring-builder")
        for kind in ("account", "container", "object"):
            port = getattr(self.p, f"swift_{kind}")
            ring = str(sw / f"{kind}.builder")
            self.check([builder, ring, "create", "8", "1", "1"], "swift ring", "swift-rings.log")
            self.check(
                [builder, ring, "add", f"r1z1-127.0.0.1:{port}/d1", "1"], "swift ring", "swift-rings.log"
            )
            self.check([builder, ring, "rebalance"], "swift ring", "swift-rings.log")
        sock = self.c.run / "swift-log.sock"
        self.start(
            "swift-log",
            [
                str(self.bin / "python"),
                str(HERE / "syslog_sink.py"),
                str(sock),
                str(self.c.logs / "swift.log"),
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
def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still runs (zombies aside)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getpgid(int(proc.name)) == pgid and _alive(int(proc.name)):
                    return True
            except ProcessLookupError:
                continue
    return False


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (services start in sessions of their own), else the process."""
    try:
        os.killpg(pid, sig)
        return
    except ProcessLookupError:
        pass
    except PermissionError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _check_ports_free(ports: Ports) -> None:
    for name, port in ports.all().items():
        if port_taken(port):
            raise CloudError(
                f"port {port} ({name}) on 127.0.0.1 is taken by another program",
                f"stop that program, or give the cloud other ports: llmcloud-testbed up --port-base N "
                f"(it uses N..N+{max(Ports.OFFSETS.values())}; now {ports.base})",
            )


def _listener_pid(port: int) -> int | None:
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"see {path}"
    return "last lines of the log:\n    " + "\n    ".join(text[-lines:])


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _group() -> str:
    import grp

    return grp.getgrgid(os.getegid()).gr_name


def _which(cmd: str) -> str | None:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin:/usr/local/sbin")


def _sbin(cmd: str) -> str:
    found = shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")
    if not found:
        raise CloudError(f"{cmd} not found", "apt-get install mariadb-server rabbitmq-server memcached")
    return found


def _rabbitmq_sbin() -> str:
    candidates = sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/sbin"))
    if not candidates:
        raise CloudError(
            "RabbitMQ's scripts not found in /usr/lib/rabbitmq", "apt-get install rabbitmq-server"
        )
    return str(candidates[-1])
