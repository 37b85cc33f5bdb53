"""Bring a local stack up and down, and describe it as an inventory.

The hosts (hosts.py), the identity provider (idp.py) and the images (artifacts.py) each have their module; the
stack's settings are a stack config through the contract's mapping (settings.py). This module holds the flags,
the names of what a stack owns in Docker, and the order of `up`, `down` and `status`.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from llmcloud import REPO_ROOT, contract, inventory
from llmcloud.errors import UserError
from llmcloud.keys import ensure_ed25519
from llmcloud.local import engine_ollama, hosts, idp, settings, system
from llmcloud.local.artifacts import Images, build_images
from llmcloud.local.hosts import CAPABILITIES
from llmcloud.local.idp import PEER_LABEL
from llmcloud.local.settings import CLIENT_ID, DEMO_USERS, DOUBLE_MODEL
from llmcloud.progress import Progress

__all__ = [
    "CAPABILITIES",
    "CLIENT_ID",
    "DEMO_USERS",
    "DOUBLE_MODEL",
    "PEER_LABEL",
    "Images",
    "LocalStack",
    "load",
]

LABEL = "llmcloud.stack"
TOPOLOGIES = ("single", "split")
STATE_FILE = "local-stack.json"
#: What names of more models (--extra-model) may look like: a Hugging Face-style organisation/name.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}/[a-z0-9][a-z0-9._-]{0,63}$")
#: What serves the main model: the engine TEST DOUBLE (fast, the default) or a real Ollama with a tiny model.
ENGINES = ("double", "ollama")


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
        """What site.yml passes role nginx beyond the inventory, for the role applied alone (tests,
        benchmarks): without it the chat UI, the models and Prometheus would leave the edge's settings."""
        from llmcloud import converge

        path = self.inventory_dir / "group_vars" / "all" / "00-llmcloud.yml"
        return converge.role_wiring("nginx", yaml.safe_load(path.read_text()) if path.is_file() else {})

    def hosts(self) -> list[tuple[str, tuple[str, ...]]]:
        """The planned hosts as (name, groups)."""
        return [(h.name, h.groups) for h in contract.plan(self.topology, self.engines)]

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
        ssh_dir = self.inventory_dir / "ssh"
        with progress.step("SSH keys"):
            deploy_pub = ensure_ed25519(ssh_dir / "deploy_ed25519", f"deploy@llmcloud-{self.name}")
            host_keys = {
                name: ensure_ed25519(ssh_dir / "hostkeys" / f"{name}_ed25519", f"root@{name}")
                for name, _ in self.hosts()
            }
        self._refuse_orphaned_backups(client)
        with progress.step(f"private network {self.network_name}"):
            network = hosts.network(self, client)
        containers = {}
        for index, (name, groups) in enumerate(self.hosts()):
            with progress.step(f"host {name} ({', '.join(groups)})"):
                key = ssh_dir / "hostkeys" / f"{name}_ed25519"
                containers[name] = hosts.start(
                    self, client, self._built.base, network, index, name, groups, deploy_pub, key
                )
        with progress.step(f"identity provider on {idp.url(self, network)} (demo user alice)"):
            idp.start(self, client, self._built.idp, network)
        with progress.step("wait for systemd and sshd on every host"):
            for name, container in containers.items():
                hosts.wait_ready(container, name)
        with progress.step(f"inventory {self._display(self.inventory_dir)}"):
            inv, secret_values = self._inventory(network, containers, host_keys, deploy_pub)
            inventory.write(inv, self.inventory_dir, secret_values)
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

    def _inventory(self, network, containers, host_keys, deploy_pub) -> tuple[inventory.Inventory, dict]:
        """The inventory (and its secrets) of the running hosts: the stack config through the contract's
        mapping, plus the local overlay (settings.py)."""
        network.reload()
        ipam = network.attrs["IPAM"]["Config"][0]
        local_net = settings.LocalNetwork(ipam["Gateway"], ipam["Subnet"], idp.url(self, network))
        reached, known = [], []
        for name, groups in self.hosts():
            container = containers[name]
            container.reload()
            port = int(container.ports["22/tcp"][0]["HostPort"])
            reached.append(
                inventory.InventoryHost(
                    name, groups, "127.0.0.1", hosts.address_of(container, self.network_name), port
                )
            )
            key_type, key_b64 = host_keys[name].split()[:2]
            known.append(f"[127.0.0.1]:{port} {key_type} {key_b64}")
        ssh_dir = self.inventory_dir / "ssh"
        (ssh_dir / "known_hosts").write_text("\n".join(known) + "\n")
        return self.inventory_of(reached, local_net, deploy_pub)

    def inventory_of(
        self, reached: list[inventory.InventoryHost], network: settings.LocalNetwork, deploy_pub: str
    ) -> tuple[inventory.Inventory, dict]:
        """The inventory of hosts reached at these addresses, and its secrets (no Docker needed)."""
        secret_values = self._secrets()
        cfg = settings.stack_config(self, self._built, network, deploy_pub, secret_values)
        ssh_dir = self.inventory_dir / "ssh"
        inv = inventory.Inventory(
            stack=self.name,
            hosts=reached,
            ssh_user=contract.DEPLOY_USER,
            ssh_private_key_file=str(ssh_dir / "deploy_ed25519"),
            known_hosts_file=str(ssh_dir / "known_hosts"),
            strict_host_key_checking="yes",
            vars=settings.group_vars(self, self._built, network, cfg),
        )
        return inv, settings.secret_vars(cfg, secret_values["oauth2_proxy_api_keys"])

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
            + f" on port {contract.ENGINE_PORT}, private: forward it over SSH",
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
            return idp.url(self, client.networks.get(self.network_name))
        except NotFound:
            return None

    def _private_ip(self, client, host: str) -> str | None:
        from docker.errors import NotFound

        try:
            return hosts.address_of(client.containers.get(self.container_name(host)), self.network_name)
        except NotFound:
            return None


def load(stack: str, inventory_root: Path) -> LocalStack:
    """The settings a stack was brought up with, so re-runs and `down` need only its name."""
    path = Path(inventory_root) / stack / STATE_FILE
    if path.is_file():
        state = json.loads(path.read_text())
        return LocalStack(**{**state, "inventory_root": Path(state["inventory_root"])})
    return LocalStack(name=stack, inventory_root=inventory_root)
