"""The stack configuration: one typed schema, the single source of truth for every setting.

Users write it under the `llmcloud:` namespace of `stacks/Pulumi.<stack>.yaml`, in camelCase
(`llmcloud:engineNode: {flavor: ...}`). It is validated before any cloud call; every error names the
key, the bad value and the fix. Defaults suit a de.NBI project.

What the roles do by default lives in the roles (`roles/<role>/defaults/main.yml`): a setting left out here is
left out of the inventory (contract.role_vars); where validation needs the value (the engine's kind and model,
the TLS mode, the login provider) it is read from the role's defaults. The local stack (`llmcloud local`)
validates its settings with this schema too, with the context {"local": True}: it alone may name `localhost`,
an http:// identity provider on its private network, and no cloud way in (`reach`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmcloud.config.checks import _DOMAIN, _NAME, _check_url, _local, _local_file, _Model
from llmcloud.config.parts import (
    Auth,
    AuthProvider,
    Backup,
    BackupTarget,
    ChatUi,
    EdgeNode,
    Engine,
    EngineKind,
    EngineNode,
    ExtraModel,
    ModelSource,
    Monitoring,
    Network,
    Node,
    Reach,
    Tls,
    TlsMode,
    Topology,
)
from llmcloud.config.quotas import Quotas, Usage

__all__ = [
    "Auth",
    "AuthProvider",
    "Backup",
    "BackupTarget",
    "ChatUi",
    "ConfigError",
    "EdgeNode",
    "Engine",
    "EngineKind",
    "EngineNode",
    "ExtraModel",
    "ModelSource",
    "Monitoring",
    "Network",
    "Node",
    "Reach",
    "StackConfig",
    "Tls",
    "TlsMode",
    "Topology",
    "from_pulumi",
    "parse",
]

NAMESPACE = "llmcloud"
#: Config keys that must be Pulumi secrets (`pulumi config set --secret`).
SECRET_KEYS = ("hfToken", "oauthClientSecret", "resticPassword", "cookieSecret", "alertWebhook")


class ConfigError(ValueError):
    """Every problem of a stack configuration, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class StackConfig(_Model):
    #: Prefix of every cloud resource name.
    name_prefix: str = "llm"
    topology: Topology = Topology.single
    #: Engine VMs behind the edge (split topology only).
    replicas: int = Field(default=1, ge=1, le=16)
    #: Networks allowed to reach SSH (for a jump host: its address).
    admin_cidrs: list[str] = Field(min_length=1)
    allow_ssh_from_world: bool = False
    #: Public key for a new keypair, or the name of an existing keypair.
    ssh_public_key: str | None = None
    keypair_name: str | None = None
    #: The private key `pulumi up` and Ansible log in with; default: your ssh-agent and ~/.ssh/id_*.
    ssh_private_key_file: str | None = None
    #: The public DNS name of the service.
    domain: str
    network: Network = Network()
    reach: Reach
    engine_node: EngineNode = EngineNode()
    edge_node: EdgeNode = EdgeNode()
    engine: Engine = Engine()
    #: More models next to `engine` (e.g. an embeddings model): clients pick one by the request's `model`.
    models: list[ExtraModel] = Field(default=[], max_length=8)
    auth: Auth
    tls: Tls = Field(default={}, validate_default=True)  # validated: acme modes need acmeEmail
    backup: Backup = Backup()
    monitoring: Monitoring = Monitoring()
    chat_ui: ChatUi = ChatUi()
    #: Quotas per person, group and API key (role nginx: 429 past one); needs usage accounting.
    quotas: Quotas | None = None
    usage: Usage = Usage()
    #: Run Ansible and the checks after the VMs exist.
    configure: bool = True
    #: Seconds `pulumi up` waits for each VM's SSH and cloud-init before it fails.
    configure_timeout: int = Field(default=1200, ge=10, le=7200)
    #: Let `pulumi destroy` delete data volumes and backup storage.
    allow_data_loss: bool = False
    # Secrets: set with `pulumi config set --secret`; never printed.
    hf_token: SecretStr | None = None
    oauth_client_secret: SecretStr | None = None
    restic_password: SecretStr | None = None
    cookie_secret: SecretStr | None = None
    #: Alertmanager posts alerts here (webhook URLs often carry a token, hence a secret).
    alert_webhook: SecretStr | None = None

    @field_validator("alert_webhook")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_url(
                value.get_secret_value(), ("https", "http"), "https://chat.example.org/hooks/...", show=False
            )
        return value

    @field_validator("name_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} must be lower-case letters, digits and dashes, starting with a letter"
            )
        return value

    @field_validator("admin_cidrs")
    @classmethod
    def _admin(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a network in CIDR notation; fix: e.g. 192.0.2.0/24"
                ) from None
            if "/" not in value:
                raise ValueError(f"{value!r} has no prefix length; fix: {value}/32 for one address")
        return values

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str, info: ValidationInfo) -> str:
        if value == "localhost" and _local(info):
            return value
        if not _DOMAIN.match(value):
            raise ValueError(f"{value!r} is not a DNS name; fix: e.g. llm.uni-example.de (lower case)")
        return value

    @field_validator("ssh_public_key")
    @classmethod
    def _pubkey(cls, value: str | None) -> str | None:
        if value is not None and not re.match(
            r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$", value
        ):
            raise ValueError("sshPublicKey is not an OpenSSH public key; fix: paste ~/.ssh/id_ed25519.pub")
        return value

    @field_validator("ssh_private_key_file")
    @classmethod
    def _private_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return str(_local_file(value, "the private half of sshPublicKey, e.g. ~/.ssh/id_ed25519"))

    @model_validator(mode="after")
    def _cross_checks(self):
        problems = []
        if self.topology == Topology.single and self.replicas != 1:
            problems.append("replicas > 1 needs topology split: the edge VM balances the engine VMs")
        world = [c for c in self.admin_cidrs if ipaddress.ip_network(c, strict=False).prefixlen == 0]
        if world and not self.allow_ssh_from_world:
            problems.append(
                f"adminCidrs contains {world}, which opens SSH to everyone; use your own networks "
                "or set allowSshFromWorld: true if you really mean it"
            )
        if (self.ssh_public_key is None) == (self.keypair_name is None):
            problems.append(
                "set exactly one of sshPublicKey (a new keypair) and keypairName (an existing one)"
            )
        if (
            self.network.existing is None
            and self.reach.floating_ip_pool
            and not self.network.external_network
        ):
            problems.append("network.externalNetwork is required to route floating IPs to a created network")
        if self.backup.target != BackupTarget.none and self.restic_password is None:
            problems.append(
                "backup.target needs resticPassword: pulumi config set --secret resticPassword ..."
            )
        names = [self.engine.model_id] + [m.model_id for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(
                f"models: {', '.join(twice)} served twice (engine.modelId and models[].modelId name "
                "one model each; clients pick by that name)"
            )
        admin = self.chat_ui.admin or self.monitoring.admins or self.auth.allowed_emails
        if self.chat_ui.enabled is not False and not admin:
            problems.append(
                "chatUi needs an admin: set chatUi.admin (an e-mail the login lets in), or "
                "monitoring.admins or auth.allowedEmails, or turn the chat UI off with chatUi.enabled: false"
            )
        if self.quotas is not None and self.usage.enabled is False:
            problems.append("quotas need usage accounting: remove usage.enabled: false, or the quotas")
        if self.oauth_client_secret is None:
            problems.append("oauthClientSecret is required: pulumi config set --secret oauthClientSecret ...")
        if self.cookie_secret is not None and len(self.cookie_secret.get_secret_value()) not in (16, 24, 32):
            problems.append("cookieSecret must be 16, 24 or 32 bytes; leave it unset to have one generated")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _format(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    key = f"{NAMESPACE}:{loc}" if loc else f"{NAMESPACE} (stack config)"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = (
        ""
        if isinstance(given, dict)
        or error["type"] == "missing"
        or "secret" in loc.lower()
        or str(error["loc"][0] if error["loc"] else "") in SECRET_KEYS
        else f" (got {given!r})"
    )
    if repr(given) in message:
        shown = ""
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a known setting; check its spelling against stacks/Pulumi.example.yaml"
    return f"{key}: {message}{shown}"


def parse(raw: dict[str, Any], secret_keys: set[str] | None = None, *, local: bool = False) -> StackConfig:
    """Validate a stack's settings ({camelCase key: value}); raise ConfigError listing every problem.

    ``secret_keys``, when given, are the keys Pulumi holds encrypted: a secret setting given in
    plain text is refused, so it cannot leak through the stack file or `pulumi config`. ``local``: the
    settings of a local stack (see the top of this module).
    """
    problems = []
    if secret_keys is not None:
        for key in SECRET_KEYS:
            if key in raw and key not in secret_keys:
                problems.append(
                    f"{NAMESPACE}:{key}: must be a secret; fix: pulumi config set --secret {key} ..."
                )
    values = {}
    for key, value in raw.items():
        if isinstance(value, str) and value[:1] in "{[" and key not in SECRET_KEYS:
            try:
                value = json.loads(value)  # Pulumi hands structured config to programs as JSON
            except json.JSONDecodeError:
                problems.append(f"{NAMESPACE}:{key}: is not valid JSON/YAML structure")
                continue
        values[key] = value
    try:
        config = StackConfig.model_validate(values, context={"local": local})
    except ValidationError as exc:
        problems.extend(_format(e) for e in exc.errors(include_url=False))
        config = None
    if problems:
        raise ConfigError(problems)
    return config


def from_pulumi() -> StackConfig:
    """Read and validate the `llmcloud:` namespace of the current stack."""
    from pulumi.runtime import config as runtime_config

    prefix = f"{NAMESPACE}:"
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    raw = {k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)}
    secret = {k for k in raw if runtime_config.is_config_secret(prefix + k)}
    secret |= {k[len(prefix) :] for k in runtime_config.get_config_secret_keys_env() if k.startswith(prefix)}
    return parse(raw, secret)
