"""The parts of a stack config: the VMs, the network, the engine and its models, the login, TLS, backups,
monitoring and the chat UI. `StackConfig` (llmcloud/config/__init__.py) puts them together."""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmcloud.config.checks import (
    _DOMAIN,
    _EMAIL,
    _HF_MODEL,
    _OLLAMA_MODEL,
    _check_emails,
    _check_regex,
    _check_url,
    _local,
    _local_file,
    _Model,
)
from llmcloud.contract import role_default


class Topology(StrEnum):
    single = "single"
    split = "split"


class EngineKind(StrEnum):
    tgi = "tgi"
    vllm = "vllm"
    ollama = "ollama"
    #: text-embeddings-inference: embeddings only (e.g. one of `models`, next to the chat model).
    tei = "tei"


class AuthProvider(StrEnum):
    lifescience = "lifescience"
    oidc = "oidc"
    github = "github"


class TlsMode(StrEnum):
    acme_http01 = "acme_http01"
    acme_dns01 = "acme_dns01"
    selfsigned = "selfsigned"
    external = "external"


class BackupTarget(StrEnum):
    none = "none"
    manila = "manila"
    swift = "swift"


class Node(_Model):
    flavor: str = Field(min_length=1, max_length=255)
    #: Exact image name, or ``imagePattern``: a regex; the most recent matching image is used.
    image: str | None = None
    image_pattern: str | None = None
    #: Boot from a new volume of this size (GB) instead of the flavor's disk.
    boot_volume_size: int | None = Field(default=None, ge=10, le=2000)
    #: What one VM of this kind costs per hour (any currency): `llmcloud status` shows cost per hour and per
    #: million generated tokens.
    cost_per_hour: float | None = Field(default=None, ge=0)

    @field_validator("image_pattern")
    @classmethod
    def _pattern_compiles(cls, value):
        return _check_regex(value, "imagePattern")

    @model_validator(mode="before")
    @classmethod
    def _image_replaces_the_default_pattern(cls, data):
        """`image: <name>` alone means that image: the default imagePattern steps aside."""
        explicit = isinstance(data, dict) and ({"imagePattern", "image_pattern"} & set(data))
        if isinstance(data, dict) and data.get("image") is not None and not explicit:
            data = {**data, "imagePattern": None}
        return data

    @model_validator(mode="after")
    def _one_image(self):
        if (self.image is None) == (self.image_pattern is None):
            raise ValueError("set exactly one of image (a name) and imagePattern (a regex)")
        return self


class EngineNode(Node):
    flavor: str = Field(default="de.NBI GPU T4 medium", min_length=1, max_length=255)
    image_pattern: str | None = r"^Ubuntu-24\.04-.*-gpu$"
    #: The persistent model cache (GB). Kept on `pulumi destroy` unless allowDataLoss is true.
    data_volume_size: int = Field(default=100, ge=10, le=10000)
    data_volume_type: str | None = None
    #: The flavor has a GPU: the nvidia role then fails instead of skipping when none is found.
    gpu: bool = True


class EdgeNode(Node):
    flavor: str = Field(default="de.NBI default", min_length=1, max_length=255)
    image_pattern: str | None = r"^Ubuntu-24\.04-\d{8}$"


class Network(_Model):
    #: Reuse this project network (de.NBI projects come with `<project>-network-2`) instead of creating one.
    existing: str | None = None
    cidr: str = "10.42.0.0/24"
    #: The external network the router of a created network connects to.
    external_network: str | None = "public"
    dns_nameservers: list[str] = []

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a network in CIDR notation ({exc}); fix: e.g. 10.42.0.0/24"
            ) from None
        if not net.is_private or net.version != 4 or not 16 <= net.prefixlen <= 28:
            raise ValueError(
                f"{value!r} must be a private IPv4 network between /16 and /28, e.g. 10.42.0.0/24"
            )
        return value

    @field_validator("dns_nameservers")
    @classmethod
    def _dns(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address; fix: e.g. 8.8.8.8") from None
        return values


class Reach(_Model):
    #: Give each VM reached from outside a floating IP from this pool.
    floating_ip_pool: str | None = None
    #: Or reach the VMs through a jump host: `user@host` or `user@host:port` (ProxyJump).
    jump_host: str | None = None

    @field_validator("jump_host")
    @classmethod
    def _jump(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z_][a-z0-9_.-]*@[A-Za-z0-9.-]+(:\d{1,5})?$", value):
            raise ValueError(
                f"{value!r} is not user@host[:port]; fix: e.g. alice@denbi-jumphost-01.bihealth.org"
            )
        return value

    @model_validator(mode="after")
    def _one_way_in(self, info: ValidationInfo):
        if not self.floating_ip_pool and not self.jump_host and not _local(info):
            raise ValueError(
                "set floatingIpPool (a pool name) or jumpHost (user@host): nothing else can reach the VMs"
            )
        return self


_MODEL_FILE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.xz|txz|zip|gguf)$")


class ModelSource(_Model):
    """A model without a hub (air-gapped clouds): imported once onto the data volume, then served offline."""

    #: An archive (.tar, .tar.gz, .tgz, .tar.xz, .zip) or .gguf file on this machine, copied once.
    file: str | None = None
    #: Or an http(s) URL of one (e.g. an S3 presigned URL or a Swift temp URL), downloaded once by the VM.
    url: str | None = None
    #: Or a model directory, archive or .gguf file already on the engine VM (e.g. on its data volume).
    host_path: str | None = None
    #: The archive's or file's SHA-256 (sha256sum): the import stops when it differs.
    sha256: str | None = None

    @field_validator("file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        if value is None:
            return value
        path = _local_file(value, "the path of the model archive")
        if not _MODEL_FILE.search(path.name):
            raise ValueError(f"{value!r} is not an archive (.tar, .tar.gz, .tgz, .tar.xz, .zip) or .gguf")
        return str(path.resolve())

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value, ("https", "http"), "https://objects.example.org/m.tar.gz", path=True)
        return value

    @field_validator("host_path")
    @classmethod
    def _host_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path on the VM; fix: e.g. /srv/llmcloud/m")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[0-9a-fA-F]{64}$", value):
            raise ValueError("sha256 must be 64 hexadecimal digits, as sha256sum prints them")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("file", "url", "host_path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of file, url and hostPath (where the model comes from)")
        return self

    def role_vars(self, prefix: str = "llm_engine_") -> dict[str, str]:
        """The llm_engine role's settings for this source."""
        if self.file:
            source = {"model_source": "controller", "model_path": self.file}
        elif self.url:
            source = {"model_source": "url", "model_url": self.url}
        else:
            source = {"model_source": "host", "model_path": self.host_path}
        if self.sha256:
            source["model_sha256"] = self.sha256
        return {prefix + k: v for k, v in source.items()}


class Engine(_Model):
    kind: EngineKind = Field(default_factory=lambda: role_default("llm_engine", "llm_engine_kind"))
    model_id: str = Field(default_factory=lambda: role_default("llm_engine", "llm_engine_model_id"))
    #: Without it the engine downloads modelId from the hub; with it, the model comes from a file (modelId is
    #: then the name clients use).
    model_source: ModelSource | None = None
    revision: str | None = None
    quantize: str | None = None
    max_input_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_total_tokens: int | None = Field(default=None, ge=2, le=1_000_000)

    @model_validator(mode="after")
    def _model_id_matches_engine(self):
        pattern = _OLLAMA_MODEL if self.kind == EngineKind.ollama else _HF_MODEL
        example = "llama3.1:8b" if self.kind == EngineKind.ollama else "Qwen/Qwen2.5-1.5B-Instruct"
        if not pattern.match(self.model_id):
            raise ValueError(
                f"modelId {self.model_id!r} is not a model id for {self.kind}; fix: e.g. {example}"
            )
        if self.max_input_tokens and self.max_total_tokens and self.max_input_tokens >= self.max_total_tokens:
            raise ValueError("maxInputTokens must be smaller than maxTotalTokens")
        return self


class ExtraModel(Engine):
    """One more model (`models:`): its own engine container on each engine VM, picked by `model`."""

    model_id: str


class Auth(_Model):
    provider: AuthProvider = Field(
        default_factory=lambda: role_default("oauth2_proxy", "oauth2_proxy_provider")
    )
    issuer_url: str | None = None
    client_id: str | None = None
    allowed_emails: list[str] = []
    allowed_email_domains: list[str] = []
    allowed_groups: list[str] = []
    github_org: str | None = None

    @field_validator("allowed_emails")
    @classmethod
    def _emails(cls, values: list[str]) -> list[str]:
        return _check_emails(values)

    @field_validator("allowed_email_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        for value in values:
            if value != "*" and not _DOMAIN.match(value):
                raise ValueError(f"{value!r} is not a domain; fix: e.g. uni-example.de")
        return values

    @field_validator("issuer_url")
    @classmethod
    def _issuer(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            # The local stack's identity provider answers plain HTTP on the stack's own network.
            schemes = ("https", "http") if _local(info) else ("https",)
            _check_url(value, schemes, "https://keycloak.example.org/realms/lab")
        return value

    @model_validator(mode="after")
    def _provider_settings(self):
        if not self.client_id:
            raise ValueError(
                f"clientId is required for provider {self.provider}; register a client at your provider"
            )
        if self.provider == AuthProvider.oidc and not self.issuer_url:
            raise ValueError(
                "issuerUrl is required for provider oidc; fix: your provider's issuer, https://..."
            )
        if self.provider == AuthProvider.github and not self.github_org:
            raise ValueError(
                "githubOrg is required for provider github; fix: the organisation allowed to log in"
            )
        if self.provider != AuthProvider.github and self.github_org:
            raise ValueError("githubOrg only applies to provider github")
        if not (self.allowed_emails or self.allowed_email_domains or self.allowed_groups or self.github_org):
            raise ValueError(
                "nobody is allowed in: set allowedEmails, allowedEmailDomains or allowedGroups "
                '(allowedEmailDomains: ["*"] admits every account of the provider)'
            )
        return self


class Backup(_Model):
    target: BackupTarget = BackupTarget.none
    #: Manila share size (GB).
    size: int = Field(default=50, ge=1, le=100000)
    share_network: str | None = None
    share_type: str | None = None
    container: str = "llmcloud-backup"
    #: Snapshots restic keeps; unset: role restic's defaults (restic_keep_*).
    keep_daily: int | None = Field(default=None, ge=0, le=366)
    keep_weekly: int | None = Field(default=None, ge=0, le=104)
    keep_monthly: int | None = Field(default=None, ge=0, le=120)

    @model_validator(mode="after")
    def _keeps_something(self):
        keeps = [self.keep_daily, self.keep_weekly, self.keep_monthly]
        if self.target != BackupTarget.none and keeps == [0, 0, 0]:
            raise ValueError(
                "keepDaily, keepWeekly and keepMonthly are all 0: every snapshot would be pruned"
            )
        return self


class Monitoring(_Model):
    """Prometheus, Alertmanager and the exporters (roles monitoring, node_exporter, dcgm_exporter)."""

    enabled: bool = True
    #: Who may open Prometheus at https://<domain>/prometheus/ (signed in): e-mails, or else groups.
    admins: list[str] = []
    admin_groups: list[str] = []
    #: Where alerts go: an e-mail address through a mail relay, and/or the secret alertWebhook (top level).
    alert_email: str | None = None
    alert_smarthost: str | None = None
    #: How long samples are kept; unset: role monitoring's monitoring_retention_time.
    retention_days: int | None = Field(default=None, ge=1, le=3650)

    @field_validator("admins")
    @classmethod
    def _admins(cls, values: list[str]) -> list[str]:
        return _check_emails(values)

    @model_validator(mode="after")
    def _one_kind_of_admin(self):
        if self.admins and self.admin_groups:
            raise ValueError("set admins or adminGroups, not both (a person would have to be in both lists)")
        if self.alert_email and not self.alert_smarthost:
            raise ValueError("alertEmail needs alertSmarthost: your mail relay as host:port")
        return self


class ChatUi(_Model):
    """Open WebUI for people at https://<domain>/ behind the same login (role open_webui)."""

    #: Unset: on (site.yml's default, also for inventories written by hand); false turns it off.
    enabled: bool | None = None
    #: The chat UI's admin (an e-mail the login lets in); default the first of monitoring.admins or
    #: auth.allowedEmails.
    admin: str | None = None
    #: Let that admin open and export other people's chats (Open WebUI allows it by default; here it is off).
    admin_chat_access: bool = False
    #: Let Open WebUI run code: Tools and Functions (Python inside its container on the edge) and code
    #: execution in chats. Off: nothing anyone pastes into the chat UI runs on the edge.
    code_features: bool = False

    @field_validator("admin")
    @classmethod
    def _admin(cls, value: str | None) -> str | None:
        return _check_emails([value])[0] if value is not None else None


class Tls(_Model):
    mode: TlsMode = Field(default_factory=lambda: role_default("certbot", "certbot_mode"))
    acme_email: str | None = None
    #: Unset: role certbot's certbot_acme_directory (Let's Encrypt).
    acme_directory: str | None = None
    #: Proxies allowed to set X-Forwarded-* (mode external).
    trusted_proxies: list[str] = []

    @field_validator("acme_directory")
    @classmethod
    def _directory(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return _check_url(value, ("https",), "https://acme-v02.api.letsencrypt.org/directory")

    @field_validator("acme_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError(f"{value!r} is not an e-mail address; fix: e.g. admin@uni-example.de")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an address or CIDR; fix: e.g. 10.0.0.5/32") from None
            if network.prefixlen == 0:
                raise ValueError(
                    f"{value!r} trusts every address on the internet to say who the client is; fix: the load "
                    "balancer's own addresses, e.g. 10.0.0.5/32"
                )
        return values

    @model_validator(mode="after")
    def _acme_needs_email(self):
        if self.mode in (TlsMode.acme_http01, TlsMode.acme_dns01) and not self.acme_email:
            raise ValueError(
                f"acmeEmail is required for mode {self.mode}: the ACME server sends expiry notices there"
            )
        if self.mode == TlsMode.external and not self.trusted_proxies:
            raise ValueError("trustedProxies is required for mode external: the load balancer's addresses")
        return self
