"""The contract between provisioning and configuration, in one place.

- **The topology plan**: which hosts a stack has, their names and groups. The names are the same on every
  target (OpenStack VMs and local containers): ``llm1`` is the single host, ``edge1`` and ``llm1..N`` split.
- **The shared values**: ports the cloud opens for the roles, where the data volume and a backup share are
  mounted, the login user. What a role owns (its ports, its paths) is read from the role's
  ``defaults/main.yml``: one home.
- **The mapping** from the typed stack config (``config.StackConfig``) to the roles' inventory variables:
  ``role_vars()``. ``provision/program.py`` (OpenStack) and ``local/`` (containers) both call it; a stack
  setting becomes a role variable here and nowhere else.

The mapping passes what the user set. A role's default stays in the role (``roles/<role>/defaults``); the few
values passed always are the contract itself: the topology, the domain, who may log in over SSH, the engine's
kind, model and port, and where the data volume is.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import yaml

from llmcloud import REPO_ROOT

if TYPE_CHECKING:  # config imports this module for the roles' defaults
    from llmcloud.config import StackConfig

#: The login user on every host, made by cloud-init (OpenStack) or the base image (local).
DEPLOY_USER = "deploy"
EDGE_GROUP, ENGINE_GROUP = "edge", "llm"


@functools.cache
def role_defaults(role: str) -> dict[str, Any]:
    """A role's ``defaults/main.yml``, as written (templated values stay strings)."""
    return yaml.safe_load((REPO_ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}


def role_default(role: str, name: str) -> Any:
    return role_defaults(role)[name]


@functools.cache
def role_plugin(role: str, module: str) -> ModuleType:
    """A role's filter plugin module, for rules the stack config checks the same way as the role."""
    path = REPO_ROOT / "roles" / role / "filter_plugins" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"llmcloud_role_{role}_{module}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


#: Where the engine VMs' data volume (model cache) is mounted: where role llm_engine keeps its models.
DATA_MOUNT: str = role_default("llm_engine", "llm_engine_data_dir")
#: Where the restic role mounts a Manila backup share.
NFS_MOUNT: str = role_default("restic", "restic_nfs_mount")
#: The ports the cloud opens between the VMs, as the roles listen on them.
ENGINE_PORT: int = role_default("llm_engine", "llm_engine_port")
NODE_EXPORTER_PORT: int = role_default("node_exporter", "node_exporter_port")
DCGM_EXPORTER_PORT: int = role_default("dcgm_exporter", "dcgm_exporter_port")


@dataclass(frozen=True)
class PlannedHost:
    """One host of a topology: its name (the same on every target) and its inventory groups."""

    name: str
    groups: tuple[str, ...]

    @property
    def is_edge(self) -> bool:
        return EDGE_GROUP in self.groups

    @property
    def is_engine(self) -> bool:
        return ENGINE_GROUP in self.groups

    @property
    def role(self) -> str:
        """What the host does, as its metadata says: llm, edge or llm+edge."""
        return "+".join(g for g in (ENGINE_GROUP, EDGE_GROUP) if g in self.groups)


def plan(topology: str, engines: int = 1) -> list[PlannedHost]:
    """The hosts of a topology, the edge first: single is one host in both groups; split is one edge and
    ``engines`` engine hosts behind it."""
    if topology == "single":
        return [PlannedHost("llm1", (ENGINE_GROUP, EDGE_GROUP))]
    return [PlannedHost("edge1", (EDGE_GROUP,))] + [
        PlannedHost(f"llm{i}", (ENGINE_GROUP,)) for i in range(1, engines + 1)
    ]


def entry_host(hosts: list[PlannedHost]) -> PlannedHost:
    """The host clients and the controller reach first: the (first) edge."""
    return next(h for h in hosts if h.is_edge)


def role_vars(cfg: StackConfig, engine_hosts: list[str]) -> dict[str, Any]:
    """The stack's settings as the roles' inventory variables (group_vars/all), secrets aside.

    ``engine_hosts``: the names of the engine hosts, which serve the extra models too. Unset settings are left
    out (the roles' defaults apply)."""
    engine = cfg.engine
    settings = {
        "llmcloud_topology": cfg.topology,
        "llmcloud_domain": cfg.domain,
        "admin_cidrs": list(cfg.admin_cidrs),
        "nvidia_required": cfg.engine_node.gpu,
        "llm_engine_kind": engine.kind,
        "llm_engine_model_id": engine.model_id,
        "llm_engine_revision": engine.revision,
        "llm_engine_quantize": engine.quantize,
        "llm_engine_max_input_tokens": engine.max_input_tokens,
        "llm_engine_max_total_tokens": engine.max_total_tokens,
        "llm_engine_port": ENGINE_PORT,
        "llm_engine_data_dir": DATA_MOUNT,
        **(engine.model_source.role_vars() if engine.model_source else {}),
        "llmcloud_extra_models": _extra_models(cfg, engine_hosts),
        "certbot_mode": cfg.tls.mode,
        "certbot_email": cfg.tls.acme_email,
        "certbot_acme_directory": cfg.tls.acme_directory,
        "nginx_trusted_proxies": list(cfg.tls.trusted_proxies),
        "oauth2_proxy_provider": cfg.auth.provider,
        "oauth2_proxy_issuer_url": cfg.auth.issuer_url,
        "oauth2_proxy_client_id": cfg.auth.client_id,
        "oauth2_proxy_allowed_emails": list(cfg.auth.allowed_emails),
        "oauth2_proxy_allowed_email_domains": list(cfg.auth.allowed_email_domains),
        "oauth2_proxy_allowed_groups": list(cfg.auth.allowed_groups),
        "oauth2_proxy_github_org": cfg.auth.github_org,
        "restic_enabled": cfg.backup.target != "none",
        "restic_keep_daily": cfg.backup.keep_daily,
        "restic_keep_weekly": cfg.backup.keep_weekly,
        "restic_keep_monthly": cfg.backup.keep_monthly,
        "monitoring_enabled": cfg.monitoring.enabled,
        "monitoring_retention_time": (
            f"{cfg.monitoring.retention_days}d" if cfg.monitoring.retention_days else None
        ),
        "monitoring_alert_email_to": cfg.monitoring.alert_email,
        "monitoring_alert_email_smarthost": cfg.monitoring.alert_smarthost,
        "nginx_admin_emails": list(cfg.monitoring.admins),
        "nginx_admin_groups": list(cfg.monitoring.admin_groups),
        "nginx_usage_enabled": cfg.usage.enabled,
        "nginx_usage_retention_days": cfg.usage.retention_days,
        "nginx_usage_pseudonymous": cfg.usage.pseudonymous,
        "nginx_usage_quotas": cfg.quotas.role_form() if cfg.quotas else None,
        "nginx_usage_alert_fraction": cfg.quotas.alert_at if cfg.quotas else None,
        "open_webui_enabled": cfg.chat_ui.enabled,
        "open_webui_admin_email": cfg.chat_ui.admin,
        # Off unless the user turned them on: the role's default (off) has one home.
        "open_webui_admin_chat_access": cfg.chat_ui.admin_chat_access or None,
        "open_webui_code_features": cfg.chat_ui.code_features or None,
    }
    return {k: v for k, v in settings.items() if v is not None}


def _extra_models(cfg: StackConfig, engine_hosts: list[str]) -> list[dict[str, Any]] | None:
    """More models: ports after the main engine's, on every engine host."""
    models = []
    for i, m in enumerate(cfg.models, start=1):
        optional = {
            "revision": m.revision,
            "quantize": m.quantize,
            "max_input_tokens": m.max_input_tokens,
            "max_total_tokens": m.max_total_tokens,
        }
        models.append(
            {
                "model_id": m.model_id,
                "kind": m.kind,
                "port": ENGINE_PORT + i,
                "hosts": list(engine_hosts),
                **{k: v for k, v in optional.items() if v},
                **(m.model_source.role_vars(prefix="") if m.model_source else {}),
            }
        )
    return models or None


def backup_vars(target: str, repository: str) -> dict[str, str]:
    """Where the restic role keeps each host's repository: one per host, below the share or container."""
    per_host = "{{ inventory_hostname }}"
    if target == "manila":
        return {"restic_nfs_export": repository, "restic_repository": f"{NFS_MOUNT}/{per_host}"}
    if target == "swift":
        # Swift also needs restic_backend_env (OS_AUTH_URL, OS_APPLICATION_CREDENTIAL_*): see README.
        return {"restic_repository": f"{repository.rstrip('/')}/{per_host}"}
    return {}


#: The stack config's secrets as the roles' variables.
SECRET_VARS = {
    "oauth_client_secret": "oauth2_proxy_client_secret",
    "cookie_secret": "oauth2_proxy_cookie_secret",
    "hf_token": "llm_engine_hf_token",
    "restic_password": "restic_password",
    "alert_webhook": "monitoring_alert_webhook",
}


def secret_vars(cfg: StackConfig) -> dict[str, Any]:
    """The secrets the user set, by role variable (SecretStr: revealed only where they are written)."""
    return {var: getattr(cfg, key) for key, var in SECRET_VARS.items() if getattr(cfg, key) is not None}
