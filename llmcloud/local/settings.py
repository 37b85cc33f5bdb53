"""A local stack's settings: a stack config like a cloud stack's, through the same mapping, plus one overlay.

`stack_config()` writes the CLI flags (`llmcloud local up --topology ... --engine ... --extra-model ...`) as a
stack config and validates it with the same schema as `stacks/Pulumi.<stack>.yaml` (config.parse, in its local
context). `group_vars()` turns it into the roles' variables with `contract.role_vars`, the mapping every cloud
stack uses, and adds `overlay()`: what only a local stack has, each key listed in LOCAL_ONLY.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmcloud import config, contract
from llmcloud.local import engine_ollama
from llmcloud.local.artifacts import IMAGE_CACHE, IMAGES_MOUNT, Images

if TYPE_CHECKING:
    from llmcloud.local.stack import LocalStack

#: The demo users of the local identity provider; only example.org addresses may sign in.
DEMO_USERS = [
    {"sub": "alice", "email": "alice@example.org", "email_verified": True, "groups": ["llm-users"]},
    # A second person the login lets in: one person's budget or quota must leave another's alone.
    {"sub": "bob", "email": "bob@example.org", "email_verified": True, "groups": ["llm-users"]},
    {"sub": "mallory", "email": "mallory@elsewhere.test", "email_verified": True, "groups": []},
]
CLIENT_ID = "llmcloud-local"
#: The model name of the main engine TEST DOUBLE.
DOUBLE_MODEL = "llmcloud/engine-test-double"
DOUBLE_HEALTHCHECK = ["CMD", "/engine-double", "-healthcheck", "--port", "80"]
#: The shared backup volume in every host: it plays the part of a Manila share.
BACKUP_MOUNT = "/srv/backup"

#: The variables only a local stack sets, beyond the mapping (contract.role_vars): where its images come from,
#: its engine TEST DOUBLE, its certificate and port on 127.0.0.1, its backup volume, a container's clock, and
#: faster scrapes. Nothing else: tests/unit/test_contract.py holds this list.
LOCAL_ONLY = (
    "llmcloud_private_cidr",
    "common_timesync_set_clock",
    "container_images_preload",
    "llm_engine_image",
    "llm_engine_healthcheck_test",
    "llm_engine_health_timeout",
    "oauth2_proxy_image",
    "open_webui_image",
    "nginx_public_https_port",
    "certbot_selfsigned_ip_addresses",
    "certbot_export_ca",
    "monitoring_scrape_interval",
    "monitoring_evaluation_interval",
    "restic_enabled",
    "restic_repository",
)


@dataclass(frozen=True)
class LocalNetwork:
    """The stack's Docker network as the settings need it."""

    gateway: str
    subnet: str
    #: The identity provider, on the gateway: one URL for a browser here and for oauth2-proxy on the edge.
    idp_url: str


def stack_config(
    stack: LocalStack, built: Images, network: LocalNetwork, deploy_public_key: str, secrets: dict[str, str]
) -> config.StackConfig:
    """The flags as a stack config, validated by the schema of every stack (its local context)."""
    if stack.engine == "ollama":
        model, sha256 = built.tiny_model
        engine = {
            "kind": "ollama",
            "modelId": engine_ollama.MODEL_NAME,
            "modelSource": {"file": str(model), "sha256": sha256},
        }
    else:
        engine = {"kind": "tgi", "modelId": DOUBLE_MODEL}
    raw = {
        "topology": stack.topology,
        "replicas": stack.engines,
        # SSH reaches the hosts through Docker's port forwarding, from the bridge gateway.
        "adminCidrs": [f"{network.gateway}/32"],
        "sshPublicKey": deploy_public_key,
        "domain": "localhost",
        "reach": {},  # 127.0.0.1 and Docker's port forwarding
        "engineNode": {"gpu": False},
        "engine": engine,
        # More models: one more TEST DOUBLE per name on every engine host, routed by the edge.
        "models": [{"modelId": name} for name in stack.extra_models],
        "auth": {
            "provider": "oidc",
            "issuerUrl": network.idp_url,
            "clientId": CLIENT_ID,
            "allowedEmailDomains": ["example.org"],
        },
        "tls": {"mode": "selfsigned"},
        # Prometheus's UI at /prometheus/ for alice only (mallory is refused at the login anyway).
        "monitoring": {"admins": [DEMO_USERS[0]["email"]]},
        "chatUi": {"enabled": stack.chat_ui},
        "oauthClientSecret": secrets["oauth2_proxy_client_secret"],
        "cookieSecret": secrets["oauth2_proxy_cookie_secret"],
        "hfToken": secrets["llm_engine_hf_token"],
        "resticPassword": secrets["restic_password"],
    }
    return config.parse(raw, local=True)


def overlay(stack: LocalStack, built: Images, network: LocalNetwork) -> dict[str, Any]:
    """What only a local stack has (LOCAL_ONLY)."""
    preloaded = [
        built.double,
        built.oauth2_proxy,
        *([built.ollama] if stack.engine == "ollama" else []),
        *([built.open_webui] if stack.chat_ui else []),
    ]
    engine = (
        # Ollama's own health check (`ollama list`); the tiny model's import is copied from this machine once.
        {"llm_engine_image": built.ollama[0]}
        if stack.engine == "ollama"
        # The engine TEST DOUBLE: selected only by local and test inventories, delivered like an air-gapped
        # image. It speaks TGI's flags and routes; it is not a model.
        else {"llm_engine_image": built.double[0], "llm_engine_healthcheck_test": DOUBLE_HEALTHCHECK}
    )
    return {
        "llmcloud_private_cidr": str(ipaddress.ip_network(network.subnet, strict=False)),
        # A container must not steer the clock of the machine it runs on.
        "common_timesync_set_clock": False,
        "container_images_preload": [preload(*item) for item in preloaded],
        **engine,
        "llm_engine_health_timeout": 300,
        "oauth2_proxy_image": built.oauth2_proxy[0],
        **({"open_webui_image": built.open_webui[0]} if stack.chat_ui else {}),
        # The edge: https://localhost:<https_port>/ with a certificate from an internal CA that names
        # localhost and 127.0.0.1, exported for clients.
        "nginx_public_https_port": stack.https_port,
        "certbot_selfsigned_ip_addresses": ["127.0.0.1"],
        "certbot_export_ca": str(stack.inventory_dir / "tls" / "ca.pem"),
        # Prometheus scrapes and evaluates every 5 s: figures and alerts show within seconds.
        "monitoring_scrape_interval": "5s",
        "monitoring_evaluation_interval": "5s",
        # Backups to the shared backup volume, one repository per host.
        "restic_enabled": True,
        "restic_repository": BACKUP_MOUNT + "/{{ inventory_hostname }}",
    }


def group_vars(
    stack: LocalStack, built: Images, network: LocalNetwork, cfg: config.StackConfig
) -> dict[str, Any]:
    """The roles' variables of a local stack: the mapping of its stack config, then overlay()."""
    engines = [name for name, groups in stack.hosts() if contract.ENGINE_GROUP in groups]
    settings = {**contract.role_vars(cfg, engines), **overlay(stack, built, network)}
    if "llmcloud_extra_models" in settings:
        # Each of them is one more engine TEST DOUBLE.
        double = {"image": built.double[0], "healthcheck_test": DOUBLE_HEALTHCHECK, "health_timeout": 300}
        settings["llmcloud_extra_models"] = [{**m, **double} for m in settings["llmcloud_extra_models"]]
    return settings


def secret_vars(cfg: config.StackConfig, api_keys: list[dict[str, str]]) -> dict[str, Any]:
    """The secrets as written to the inventory: the stack config's, revealed, and the API keys."""
    revealed = {var: value.get_secret_value() for var, value in contract.secret_vars(cfg).items()}
    return {**revealed, "oauth2_proxy_api_keys": api_keys}


def preload(ref: str, tarball: Path) -> dict[str, str]:
    """An item of container_images_preload: the tarball here and, in the image cache, where hosts see it."""
    item = {"path": str(tarball), "name": ref}
    if tarball.parent == IMAGE_CACHE:
        item["host_path"] = f"{IMAGES_MOUNT}/{tarball.name}"
    return item
