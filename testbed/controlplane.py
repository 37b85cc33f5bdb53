"""The local test cloud: real OpenStack services (Keystone, Placement, Nova with the fake virt driver,
Neutron, Glance, Cinder, Manila, Swift) from pinned PyPI packages, MariaDB, RabbitMQ and memcached from
Debian.

Every listener is on 127.0.0.1; state, logs, pids and configs live below one work dir. `up` starts from a
clean state in about a minute; `down` stops every process it started and removes the state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.local.system import ensure_packages
from llmcloud.progress import Progress
from testbed import hypervisor
from testbed.configs import Configs, Ports, Settings
from testbed.processes import (
    CloudError,
    _alive,
    _check_ports_free,
    _group_alive,
    _signal_group,
    _which,
)
from testbed.starter import ServiceStarter
from testbed.venv import services_venv

__all__ = ["DEBIAN_PACKAGES", "DEFAULT_WORKDIR", "Cloud", "CloudError", "Service"]

DEFAULT_WORKDIR = REPO_ROOT / ".cloud"
DEBIAN_PACKAGES = {
    "mariadbd": "mariadb-server",
    "rabbitmq-server": "rabbitmq-server",
    "memcached": "memcached",
    "qemu-img": "qemu-utils",
}


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
                            f"another `llmcloud-testbed up` or `down` is working on {self.work}: "
                            "waiting for it"
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
        starter = ServiceStarter(self, settings, configs)
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
            ServiceStarter(self, settings, configs).hypervisor()

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
