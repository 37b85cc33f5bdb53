"""Bring local target hosts up and down, and describe them as an inventory."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import shutil
import socket
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from llmcloud import REPO_ROOT, inventory
from llmcloud.errors import UserError
from llmcloud.keys import ensure_ed25519
from llmcloud.local import engine_double, engine_ollama, image, peers, system
from llmcloud.progress import Progress

LABEL = "llmcloud.stack"
TOPOLOGIES = ("single", "split")
# Every capability Docker 20.10 knows except SYS_RESOURCE, which this machine's bounding set lacks
# (that is why --privileged fails here). systemd, nftables and Docker inside the host need the rest.
CAPABILITIES = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
]
STATE_FILE = "local-stack.json"
#: The demo users of the local identity provider; only example.org addresses may sign in.
DEMO_USERS = [
    {"sub": "alice", "email": "alice@example.org", "email_verified": True, "groups": ["llm-users"]},
    # A second person the login lets in: one person's budget or quota must leave another's alone.
    {"sub": "bob", "email": "bob@example.org", "email_verified": True, "groups": ["llm-users"]},
    {"sub": "mallory", "email": "mallory@elsewhere.test", "email_verified": True, "groups": []},
]
CLIENT_ID = "llmcloud-local"
#: The model name of the main engine TEST DOUBLE, and what names of more models (--extra-model) may look like.
DOUBLE_MODEL = "llmcloud/engine-test-double"
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63})?$")
#: Engine ports of more models: 8081, 8082, ... (the main engine has 8080).
EXTRA_MODEL_PORT = 8081
DOUBLE_HEALTHCHECK = ["CMD", "/engine-double", "-healthcheck", "--port", "80"]
#: What serves the main model: the engine TEST DOUBLE (fast, the default) or a real Ollama with a tiny model.
ENGINES = ("double", "ollama")
PEER_LABEL = "llmcloud.peer"  # a container of the stack that is not a target host
BACKUP_MOUNT = "/srv/backup"
#: The image cache (the tarballs below), mounted read-only in every host: role docker loads them in place
#: (host_path) instead of copying 1.5 GB over SSH (44 s of a fresh converge).
IMAGE_CACHE = image.IMAGE_CACHE
IMAGES_MOUNT = "/srv/llmcloud-images"


@dataclass
class LocalStack:
    name: str = "local"
    topology: str = "single"
    engines: int = 1
    ssh_port: int = 2222
    http_port: int = 8080
    https_port: int = 8443
    idp_port: int = 9400
    #: Lifetime of the identity provider's tokens (seconds).
    idp_token_max_age: int = 3600
    inventory_root: Path = REPO_ROOT / "inventory"
    #: More models (llmcloud_extra_models), each one more engine TEST DOUBLE per engine host under this name.
    extra_models: tuple[str, ...] = ()
    #: The main engine: "double" (the engine TEST DOUBLE), "ollama" (Ollama built here, a tiny random model).
    engine: str = "double"
    #: The chat UI for people (Open WebUI at /, role open_webui): its image is built here from PyPI (1.5 GB).
    chat_ui: bool = True

    def __post_init__(self) -> None:
        self.inventory_root = Path(self.inventory_root).resolve()
        if self.engine not in ENGINES:
            raise UserError(f"--engine {self.engine!r} is not known", f"use one of: {', '.join(ENGINES)}")
        self.extra_models = tuple(self.extra_models)
        for name in self.extra_models:
            if not MODEL_NAME.match(name) or name == DOUBLE_MODEL:
                raise UserError(
                    f"--extra-model {name!r} is not a usable model name",
                    f"use a name like llmcloud/embeddings-double, other than {DOUBLE_MODEL}",
                )
        if len(set(self.extra_models)) != len(self.extra_models):
            raise UserError("--extra-model names a model twice", "give each model once")
        if self.topology not in TOPOLOGIES:
            raise UserError(
                f"--topology {self.topology!r} is not known",
                f"use one of: {', '.join(TOPOLOGIES)}",
            )
        if not 1 <= self.engines <= 8:
            raise UserError(f"--engines {self.engines} is out of range", "use 1 to 8 engine hosts")
        if self.topology == "single" and self.engines != 1:
            raise UserError(
                "--engines only applies to the split topology",
                "add --topology split, or drop --engines",
            )
        if not inventory._HOSTNAME.match(self.name):
            raise UserError(
                f"--stack {self.name!r} is not a valid stack name",
                "use lower-case letters, digits and dashes, starting with a letter",
            )
        for flag, port in (
            ("--ssh-port", self.ssh_port),
            ("--http-port", self.http_port),
            ("--https-port", self.https_port),
            ("--idp-port", self.idp_port),
        ):
            if not 1024 <= port <= 65535 - 8:
                raise UserError(f"{flag} {port} is out of range", f"pass {flag} between 1024 and 65527")

    # ---- naming -------------------------------------------------------------------------------
    @property
    def inventory_dir(self) -> Path:
        return self.inventory_root / self.name

    @property
    def network_name(self) -> str:
        return f"llmcloud-{self.name}"

    @property
    def backup_volume(self) -> str:
        return f"llmcloud-{self.name}-backup"

    def container_name(self, host: str) -> str:
        return f"llmcloud-{self.name}-{host}"

    def nginx_site_vars(self) -> dict:
        """What site.yml passes role nginx beyond the inventory (vars/site.yml), for the role applied alone
        (tests, benchmarks): without them the chat UI would leave the edge's configuration."""
        if not self.chat_ui:
            return {}
        site = yaml.safe_load((REPO_ROOT / "vars" / "site.yml").read_text())
        return {
            "nginx_chat_ui_address": "unix:" + site["__site_chat_ui_socket"],
            "nginx_chat_ui_engine_key_file": site["__site_chat_ui_engine_key_file"],
        }

    def hosts(self) -> list[tuple[str, tuple[str, ...]]]:
        """The planned hosts as (name, groups)."""
        if self.topology == "single":
            return [("node1", ("llm", "edge"))]
        return [("edge1", ("edge",))] + [(f"llm{i}", ("llm",)) for i in range(1, self.engines + 1)]

    def ports(self, index: int, groups: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        """Published ports, always on 127.0.0.1: SSH per host, HTTP(S) on the edge."""
        ports = {"22/tcp": ("127.0.0.1", self.ssh_port + index)}
        if "edge" in groups:
            ports["80/tcp"] = ("127.0.0.1", self.http_port)
            ports["443/tcp"] = ("127.0.0.1", self.https_port)
        return ports

    def labels(self, host: str | None = None) -> dict[str, str]:
        labels = {LABEL: self.name, "llmcloud.topology": self.topology}
        if host:
            labels["llmcloud.host"] = host
        return labels

    # ---- up -----------------------------------------------------------------------------------
    def up(self, progress: Progress) -> inventory.Inventory:
        with progress.step("packages and the Docker engine"):
            system.ensure_packages(system.LOCAL_PACKAGES)
            client = system.docker_client()
        self._refuse_other_topology(client)
        self._built = build_images(progress, ollama=self.engine == "ollama", chat_ui=self.chat_ui)
        ref = self._built.base
        ssh_dir = self.inventory_dir / "ssh"
        with progress.step("SSH keys"):
            deploy_pub = ensure_ed25519(ssh_dir / "deploy_ed25519", f"deploy@llmcloud-{self.name}")
            host_keys = {
                name: ensure_ed25519(ssh_dir / "hostkeys" / f"{name}_ed25519", f"root@{name}")
                for name, _ in self.hosts()
            }
        self._refuse_orphaned_backups(client)
        with progress.step(f"private network {self.network_name}"):
            network = self._network(client)
        containers = {}
        for index, (name, groups) in enumerate(self.hosts()):
            with progress.step(f"host {name} ({', '.join(groups)})"):
                containers[name] = self._host(
                    client,
                    ref,
                    network,
                    index,
                    name,
                    groups,
                    deploy_pub,
                    ssh_dir / "hostkeys" / f"{name}_ed25519",
                )
        with progress.step(f"identity provider on {self.idp_url(network)} (demo user alice)"):
            self._idp(client, self._built.idp, network)
        with progress.step("wait for systemd and sshd on every host"):
            for name, container in containers.items():
                self._wait_ready(container, name)
        inv = self._inventory(client, network, containers, host_keys)
        with progress.step(f"inventory {self._display(self.inventory_dir)}"):
            # A stand-in token: the checks prove it never shows in `docker inspect` or to other users.
            inventory.write(inv, self.inventory_dir, self._secrets())
            (self.inventory_dir / STATE_FILE).write_text(json.dumps(self._state(), indent=2) + "\n")
        return inv

    def _refuse_orphaned_backups(self, client) -> None:
        """A backup volume of this stack name without the inventory that holds its password: never adopt it.

        A new inventory makes a new restic password, which cannot open the backups already in the volume; the
        converge would stop at the backup role much later. Stop here, before anything is created.
        """
        if self.secrets().get("restic_password"):
            return
        volume = self.backup_volume
        if any(v.name == volume for v in client.volumes.list(filters={"name": volume})):
            raise UserError(
                f"the backup volume {volume} of an earlier stack {self.name!r} is still there, and the "
                f"inventory with its restic password is not ({self._display(self.inventory_dir)})",
                "restore that inventory and re-run, or remove the old backups with "
                f"`llmcloud local down --stack {self.name}` (or `docker volume rm {volume}`) first",
            )

    def secrets(self) -> dict:
        """The stack's secrets as written to the inventory (empty before the first `up`)."""
        path = self.inventory_dir / "group_vars" / "all" / "01-secrets.yml"
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    def _secrets(self) -> dict:
        """The stack's secrets; a generated one is made once and kept across re-runs of `up`."""
        old = self.secrets()
        keys = old.get("oauth2_proxy_api_keys") or [
            {"name": "demo", "key": "llmc_" + secrets.token_urlsafe(32)}
        ]
        return {
            # A stand-in token: the checks prove it never shows in `docker inspect` or to other users.
            "llm_engine_hf_token": f"hf_local_{self.name}_not_a_token",
            "restic_password": old.get("restic_password") or secrets.token_urlsafe(32),
            "oauth2_proxy_client_secret": old.get("oauth2_proxy_client_secret") or secrets.token_urlsafe(24),
            "oauth2_proxy_cookie_secret": old.get("oauth2_proxy_cookie_secret") or secrets.token_hex(16),
            "oauth2_proxy_api_keys": keys,
        }

    # ---- the identity provider ----------------------------------------------------------------
    @property
    def idp_container(self) -> str:
        return f"llmcloud-{self.name}-idp"

    def idp_url(self, network) -> str:
        """On the stack network's gateway: one URL for a browser here and for oauth2-proxy on the edge."""
        network.reload()
        return f"http://{network.attrs['IPAM']['Config'][0]['Gateway']}:{self.idp_port}"

    def _idp(self, client, idp_image: str, network) -> None:
        from docker.errors import NotFound

        try:
            container = client.containers.get(self.idp_container)
            if container.status != "running":
                container.start()
            return
        except NotFound:
            pass
        _require_free_port(self.idp_port, "identity provider")
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        command = ["--host", gateway, "--port", str(self.idp_port)]
        command += ["--token-max-age", str(self.idp_token_max_age)]
        for user in DEMO_USERS:
            command += ["--user-claims", json.dumps(user)]
        client.containers.run(
            idp_image,
            command,
            name=self.idp_container,
            detach=True,
            network_mode="host",
            labels={**self.labels(), PEER_LABEL: "idp"},
            restart_policy={"Name": "unless-stopped"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((gateway, self.idp_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise UserError(
            f"the identity provider did not start on {gateway}:{self.idp_port}",
            f"see `docker logs {self.idp_container}`",
        )

    def _state(self) -> dict:
        state = asdict(self)
        state["inventory_root"] = str(self.inventory_root)
        return state

    @staticmethod
    def _display(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def _refuse_other_topology(self, client) -> None:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"}):
            if c.labels.get("llmcloud.topology") != self.topology:
                raise UserError(
                    f"stack {self.name!r} is already up with topology "
                    f"{c.labels.get('llmcloud.topology')!r}, not {self.topology!r}",
                    f"keep --topology {c.labels.get('llmcloud.topology')} (make: TOPOLOGY=...), "
                    f"or run `llmcloud local down --stack {self.name}` first",
                )
        planned = {self.container_name(n) for n, _ in self.hosts()}
        extra = [
            c.name
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"})
            if c.name not in planned and PEER_LABEL not in c.labels
        ]
        if extra:
            raise UserError(
                f"stack {self.name!r} has hosts this plan does not ({', '.join(sorted(extra))})",
                f"run `llmcloud local down --stack {self.name}` first, or keep --engines as before",
            )

    def _network(self, client):
        existing = client.networks.list(names=[self.network_name])
        if existing:
            return existing[0]
        return client.networks.create(self.network_name, driver="bridge", labels=self.labels())

    def _host(self, client, ref, network, index, name, groups, deploy_pub, host_key_path):
        from docker.errors import NotFound

        try:
            container = client.containers.get(self.container_name(name))
        except NotFound:
            container = None
        if container is not None:
            if container.status != "running":
                container.start()
            return container
        ports = self.ports(index, groups)
        for container_port, (_, host_port) in ports.items():
            _require_free_port(host_port, f"{name} {container_port}")
        volume = client.volumes.create(f"llmcloud-{self.name}-{name}-docker", labels=self.labels(name))
        if not client.volumes.list(filters={"name": self.backup_volume}):
            client.volumes.create(self.backup_volume, labels=self.labels())
        container = client.containers.create(
            ref,
            name=self.container_name(name),
            hostname=name,
            detach=True,
            stop_signal="SIGRTMIN+3",  # systemd's clean shutdown
            labels=self.labels(name),
            cap_add=CAPABILITIES,
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            device_cgroup_rules=["a *:* rwm"],
            cgroupns="host",
            tmpfs={"/run": "", "/run/lock": ""},
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                # Docker inside the host needs a real file system for overlay2.
                volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
                # Plays the part of a Manila share: shared by the hosts, it outlives any one of them.
                self.backup_volume: {"bind": BACKUP_MOUNT, "mode": "rw"},
                str(IMAGE_CACHE): {"bind": IMAGES_MOUNT, "mode": "ro"},
            },
            ports=ports,
            network=network.name,
        )
        container.put_archive("/", _first_boot_files(deploy_pub, host_key_path))
        container.start()
        return container

    def _wait_ready(self, container, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = container.exec_run(["systemctl", "is-system-running"]).output.decode().strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise UserError(
                f"host {name}: systemd did not finish booting within {timeout:.0f}s ({state or 'no answer'})",
                f"inspect it with `docker exec {container.name} systemctl --failed`",
            )
        container.reload()
        port = int(container.ports["22/tcp"][0]["HostPort"])
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                    if sock.recv(64).startswith(b"SSH-2.0"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise UserError(
                    f"host {name}: sshd does not answer on 127.0.0.1:{port}",
                    f"inspect it with `docker exec {container.name} journalctl -u ssh`",
                )
            time.sleep(0.5)

    def _inventory(self, client, network, containers, host_keys) -> inventory.Inventory:
        network.reload()
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        subnet = network.attrs["IPAM"]["Config"][0]["Subnet"]
        hosts, known = [], []
        for name, groups in self.hosts():
            container = containers[name]
            container.reload()
            ip = self._address_of(container)
            port = int(container.ports["22/tcp"][0]["HostPort"])
            hosts.append(inventory.InventoryHost(name, groups, "127.0.0.1", ip, port))
            key_type, key_b64 = host_keys[name].split()[:2]
            known.append(f"[127.0.0.1]:{port} {key_type} {key_b64}")
        ssh_dir = self.inventory_dir / "ssh"
        (ssh_dir / "known_hosts").write_text("\n".join(known) + "\n")
        return inventory.Inventory(
            stack=self.name,
            hosts=hosts,
            ssh_private_key_file=str(ssh_dir / "deploy_ed25519"),
            known_hosts_file=str(ssh_dir / "known_hosts"),
            strict_host_key_checking="yes",
            vars={
                "llmcloud_topology": self.topology,
                "llmcloud_private_cidr": str(ipaddress.ip_network(subnet, strict=False)),
                # SSH reaches the hosts through Docker's port forwarding, from the bridge gateway.
                "admin_cidrs": [f"{gateway}/32"],
                # A container must not steer the clock of the machine it runs on.
                "common_timesync_set_clock": False,
                "nvidia_required": False,
                # The engine TEST DOUBLE: selected only by local and test inventories, delivered like an
                # air-gapped image. It speaks TGI's flags and routes; it is not a model.
                "container_images_preload": [
                    _preload(*image)
                    for image in (
                        self._built.double,
                        self._built.oauth2_proxy,
                        *([self._built.ollama] if self.engine == "ollama" else []),
                        *([self._built.open_webui] if self.chat_ui else []),
                    )
                ],
                # The chat UI at / (Open WebUI, built here from its PyPI package at the pinned version).
                "open_webui_enabled": self.chat_ui,
                **({"open_webui_image": self._built.open_webui[0]} if self.chat_ui else {}),
                **self._engine_vars(),
                # More models: one more TEST DOUBLE per name on every engine host, routed by the edge.
                "llmcloud_extra_models": [
                    {
                        "model_id": model,
                        "port": EXTRA_MODEL_PORT + i,
                        "hosts": [n for n, groups in self.hosts() if "llm" in groups],
                        "image": self._built.double[0],
                        "healthcheck_test": DOUBLE_HEALTHCHECK,
                        "health_timeout": 300,
                    }
                    for i, model in enumerate(self.extra_models)
                ],
                # The edge: https://localhost:<https_port>/ with a certificate from an internal CA that names
                # localhost, exported for clients; login through the local identity provider.
                "llmcloud_domain": "localhost",
                "nginx_public_https_port": self.https_port,
                "certbot_mode": "selfsigned",
                "certbot_selfsigned_ip_addresses": ["127.0.0.1"],
                "certbot_export_ca": str(self.inventory_dir / "tls" / "ca.pem"),
                "oauth2_proxy_image": self._built.oauth2_proxy[0],
                "oauth2_proxy_provider": "oidc",
                "oauth2_proxy_issuer_url": self.idp_url(network),
                "oauth2_proxy_client_id": CLIENT_ID,
                "oauth2_proxy_allowed_email_domains": ["example.org"],
                # Prometheus's UI at /prometheus/ for alice only (mallory is refused at the login anyway).
                "nginx_admin_emails": [DEMO_USERS[0]["email"]],
                # Prometheus scrapes and evaluates every 5 s: figures and alerts show within seconds.
                "monitoring_scrape_interval": "5s",
                "monitoring_evaluation_interval": "5s",
                # Backups to the shared backup volume, one repository per host.
                "restic_enabled": True,
                "restic_repository": BACKUP_MOUNT + "/{{ inventory_hostname }}",
            },
        )

    def _engine_vars(self) -> dict:
        """The main engine's inventory variables: the TEST DOUBLE, or Ollama with the tiny model's file."""
        if self.engine == "ollama":
            # A real engine, and the role's import of a model without a hub: copied from this machine once.
            return {
                "llm_engine_kind": "ollama",
                "llm_engine_image": self._built.ollama[0],
                "llm_engine_model_id": engine_ollama.MODEL_NAME,
                "llm_engine_model_source": "controller",
                "llm_engine_model_path": str(self._built.tiny_model[0]),
                "llm_engine_model_sha256": self._built.tiny_model[1],
                "llm_engine_health_timeout": 300,
            }
        return {
            "llm_engine_kind": "tgi",
            "llm_engine_image": self._built.double[0],
            "llm_engine_model_id": DOUBLE_MODEL,
            "llm_engine_healthcheck_test": DOUBLE_HEALTHCHECK,
            "llm_engine_health_timeout": 300,
        }

    @property
    def main_model(self) -> str:
        return engine_ollama.MODEL_NAME if self.engine == "ollama" else DOUBLE_MODEL

    # ---- down and status ----------------------------------------------------------------------
    def down(self, progress: Progress) -> None:
        with progress.step("Docker engine"):
            client = system.docker_client()
        with progress.step(f"remove hosts of stack {self.name!r}"):
            for container in client.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"}):
                progress.log(f"  removing {container.name}")
                container.remove(force=True)
            for volume in client.volumes.list(filters={"label": f"{LABEL}={self.name}"}):
                volume.remove(force=True)
            for network in client.networks.list(filters={"label": f"{LABEL}={self.name}"}):
                network.remove()
        # Only an inventory this command wrote (it carries the state file) is removed.
        if (self.inventory_dir / STATE_FILE).is_file():
            with progress.step(f"remove {self._display(self.inventory_dir)}"):
                shutil.rmtree(self.inventory_dir)

    def status(self) -> dict:
        client = system.docker_client()
        hosts, topology = [], None
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"}):
            if PEER_LABEL in c.labels:
                continue
            topology = c.labels.get("llmcloud.topology")
            ports = {k: f"{v[0]['HostIp']}:{v[0]['HostPort']}" for k, v in (c.ports or {}).items() if v}
            hosts.append(
                {
                    "host": c.labels.get("llmcloud.host"),
                    "container": c.name,
                    "state": c.status,
                    "ports": ports,
                }
            )
        state_path = self.inventory_dir / STATE_FILE
        engine_host = next(n for n, groups in self.hosts() if "llm" in groups)
        engine = {
            "host": engine_host,
            # 127.0.0.1 on a host that is its own edge, the private address otherwise.
            "address": "127.0.0.1" if self.topology == "single" else self._private_ip(client, engine_host),
            "note": (
                engine_ollama.MODEL_NOTE
                if self.engine == "ollama"
                else "the engine TEST DOUBLE (not a model)"
            )
            + " on port 8080, private: forward it over SSH",
        }
        endpoint = None
        if state_path.is_file():
            keys = self.secrets().get("oauth2_proxy_api_keys") or [{}]
            endpoint = {
                "url": f"https://localhost:{self.https_port}/",
                "ca_bundle": str(self.inventory_dir / "tls" / "ca.pem"),
                "api_key": keys[0].get("key"),
                "openai_base_url": f"https://localhost:{self.https_port}/v1",
                "models": [self.main_model, *self.extra_models],
                "login": {"user": DEMO_USERS[0]["sub"], "provider": self._idp_url_of(client)},
                "chat_ui": self.chat_ui,
            }
        return {
            "stack": self.name,
            "topology": topology,
            **(endpoint or {"url": None, "ca_bundle": None, "api_key": None}),
            "inventory": str(self.inventory_dir) if state_path.is_file() else None,
            "ssh_config": str(self.inventory_dir / "ssh_config") if state_path.is_file() else None,
            "hosts": sorted(hosts, key=lambda h: h["host"] or ""),
            "engine": engine,
        }

    def _idp_url_of(self, client) -> str | None:
        from docker.errors import NotFound

        try:
            return self.idp_url(client.networks.get(self.network_name))
        except NotFound:
            return None

    def _private_ip(self, client, host: str) -> str | None:
        from docker.errors import NotFound

        try:
            return self._address_of(client.containers.get(self.container_name(host)))
        except NotFound:
            return None

    def _address_of(self, container) -> str | None:
        """The host's address on the stack's private network."""
        networks = container.attrs["NetworkSettings"]["Networks"]
        return networks.get(self.network_name, {}).get("IPAddress")


@dataclass(frozen=True)
class Images:
    """What `build_images` built or found: references, and (reference, tarball) for the preloaded ones."""

    base: str
    idp: str
    double: tuple[str, Path]
    oauth2_proxy: tuple[str, Path]
    ollama: tuple[str, Path] | None = None
    tiny_model: tuple[Path, str] | None = None
    open_webui: tuple[str, Path] | None = None


def build_images(progress: Progress, *, ollama: bool = False, chat_ui: bool = True) -> Images:
    """Build or find every image a local stack needs, side by side.

    Most of a first build is waiting on downloads and disks, so the independent ones run at once: the base
    image (debootstrap), the Go builds, and the PyPI downloads of the identity provider and the chat UI,
    whose images then wait for the base image they are built on. A failed step is named; nothing it left
    half done is cached (images are tagged and tarballs renamed only when whole)."""
    base_ref = image.image_ref()
    base: Future[str] = Future()

    def base_image(p: Progress) -> str:
        try:
            base.set_result(image.ensure(p))
        except BaseException as exc:
            base.set_exception(exc)
            raise
        return base.result()

    def on_base() -> str:
        try:
            return base.result()
        except BaseException:
            raise UserError("the base image failed (see its step)", "fix that step first") from None

    def client():  # one Docker client per step: they run in threads
        return system.docker_client()

    steps = {
        "base": ("base image (Debian 12 + systemd, debootstrap)", base_image),
        "double": (
            "engine TEST DOUBLE image (tests/fixtures/engine-double)",
            lambda p: engine_double.ensure(client(), p, IMAGE_CACHE),
        ),
        "oauth2_proxy": (
            f"oauth2-proxy image ({peers.OAUTH2_PROXY_VERSION}, built from its Go module)",
            lambda p: peers.oauth2_proxy(client(), p, IMAGE_CACHE),
        ),
        "idp": (
            "identity provider image (oidc-provider-mock)",
            lambda p: peers.oidc_mock(client(), p, base_ref, on_base),
        ),
    }
    if ollama:
        steps["ollama"] = (
            f"Ollama image ({engine_ollama.OLLAMA_VERSION}, built from its Go module)",
            lambda p: engine_ollama.ensure(client(), p, IMAGE_CACHE),
        )
        steps["tiny_model"] = (
            "tiny random model for Ollama (GGUF)",
            lambda p: engine_ollama.tiny_model(p, REPO_ROOT / ".cache" / "models"),
        )
    if chat_ui:
        steps["open_webui"] = (
            f"chat UI image (Open WebUI {peers.OPEN_WEBUI_VERSION} from PyPI)",
            lambda p: peers.open_webui(client(), p, base_ref, IMAGE_CACHE, on_base),
        )
    built = progress.side_by_side({title: fn for title, fn in steps.values()})
    return Images(**{field: built[title] for field, (title, _) in steps.items()})


def load(stack: str, inventory_root: Path) -> LocalStack:
    """The settings a stack was brought up with, so re-runs and `down` need only its name."""
    path = Path(inventory_root) / stack / STATE_FILE
    if path.is_file():
        state = json.loads(path.read_text())
        return LocalStack(**{**state, "inventory_root": Path(state["inventory_root"])})
    return LocalStack(name=stack, inventory_root=inventory_root)


def _require_free_port(port: int, what: str) -> None:
    if system.port_taken(port):
        raise UserError(
            f"port 127.0.0.1:{port} (for {what}) is already in use by another program",
            "stop that program, or pick other ports with --ssh-port/--http-port/--https-port",
        )


def _preload(ref: str, tarball: Path) -> dict[str, str]:
    """An item of container_images_preload: the tarball here and, in the image cache, where hosts see it."""
    item = {"path": str(tarball), "name": ref}
    if tarball.parent == IMAGE_CACHE:
        item["host_path"] = f"{IMAGES_MOUNT}/{tarball.name}"
    return item


def _first_boot_files(deploy_pub: str, host_key_path: Path) -> bytes:
    """A tar with this host's own SSH host key and the deploy user's authorized key."""
    pub = host_key_path.with_name(host_key_path.name + ".pub").read_bytes()
    return system.tar_of(
        {
            "etc/ssh/ssh_host_ed25519_key": (host_key_path.read_bytes(), 0o600, 0),
            "etc/ssh/ssh_host_ed25519_key.pub": (pub, 0o644, 0),
            "home/deploy/.ssh": (None, 0o700, image.DEPLOY_UID),
            "home/deploy/.ssh/authorized_keys": ((deploy_pub + "\n").encode(), 0o600, image.DEPLOY_UID),
        }
    )
